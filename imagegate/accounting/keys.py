"""API keys and teams in the database.

A key's secret is shown once, at creation; the database keeps its SHA-256
(keys are 256 random bits, so a fast hash is the right one) and a short
prefix to recognise it by.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.accounting.money import to_nano
from imagegate.db.models import ApiKey, Team, utcnow
from imagegate.errors import InvalidRequestError, NotFoundError

SECRET_PREFIX = "ig-"
PERIODS = ("total", "daily", "weekly", "monthly")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What a key may be created or updated with (None: leave as is / none)."""

    name: str | None = None
    team: str | None = None
    models: list[str] | None = None
    expires_at: datetime | None = None
    enabled: bool | None = None
    rpm: int | None = None
    ipm: int | None = None
    budget_usd: float | None = None
    budget_period: str | None = None
    is_admin: bool | None = None
    webhook_url: str | None = None  # checked by the caller (gateway/webhooks/urls.py)


# Upper bounds, so a value always fits the database's 64-bit integers (nano-dollars).
MAX_BUDGET_USD = 1_000_000_000
MAX_PER_MINUTE = 1_000_000_000


def _check_number(name: str, value: float | None, most: float) -> None:
    if value is not None and value < 0:
        raise InvalidRequestError(f"'{name}' cannot be negative.", param=name)
    if value is not None and not value <= most:  # NaN too
        raise InvalidRequestError(f"'{name}' cannot be more than {most:,}.", param=name)


def _check(spec: KeySpec) -> None:
    if spec.budget_period is not None and spec.budget_period not in PERIODS:
        raise InvalidRequestError(f"budget_period must be one of {', '.join(PERIODS)}.", param="budget_period")
    for name, most in (("rpm", MAX_PER_MINUTE), ("ipm", MAX_PER_MINUTE), ("budget_usd", MAX_BUDGET_USD)):
        _check_number(name, getattr(spec, name), most)


async def ensure_team(session: AsyncSession, name: str) -> Team:
    team = await session.get(Team, name)
    if team is None:
        team = Team(name=name, budget_period="total", period_start=utcnow(), spent_nusd=0, reserved_nusd=0)
        session.add(team)
        await session.flush()
    return team


async def create_key(session: AsyncSession, spec: KeySpec) -> tuple[ApiKey, str]:
    _check(spec)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id="key_" + secrets.token_hex(8),
        name=spec.name or "unnamed",
        prefix=secret[:11],
        key_hash=hash_secret(secret),
        team=spec.team,
        allowed_models=spec.models,
        expires_at=spec.expires_at,
        enabled=True if spec.enabled is None else spec.enabled,
        rpm=spec.rpm,
        ipm=spec.ipm,
        is_admin=bool(spec.is_admin),
        budget_nusd=to_nano(spec.budget_usd) if spec.budget_usd is not None else None,
        budget_period=spec.budget_period or "total",
        period_start=utcnow(),
        spent_nusd=0,
        reserved_nusd=0,
        created_at=utcnow(),
        webhook_url=spec.webhook_url,
    )
    if spec.team:
        await ensure_team(session, spec.team)
    session.add(key)
    await session.flush()
    return key, secret


async def find_by_secret(session: AsyncSession, secret: str) -> ApiKey | None:
    return (await session.execute(select(ApiKey).where(ApiKey.key_hash == hash_secret(secret)))).scalar_one_or_none()


async def any_exist(session: AsyncSession) -> bool:
    """Whether any key was ever created (revoked ones count: keys were meant to be required)."""
    return (await session.execute(select(ApiKey.id).limit(1))).first() is not None


async def get_key(session: AsyncSession, ref: str) -> ApiKey:
    """By id (key_...) or by the shown prefix (ig-...)."""
    column = ApiKey.prefix if ref.startswith(SECRET_PREFIX) else ApiKey.id
    found = (await session.execute(select(ApiKey).where(column == ref))).scalars().all()
    if len(found) != 1:
        raise NotFoundError(f"No key {ref!r}." if not found else f"{ref!r} matches several keys; use the id.", param="key")
    return found[0]


async def list_keys(session: AsyncSession, team: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if team is not None:
        query = query.where(ApiKey.team == team)
    return list((await session.execute(query)).scalars())


async def update_key(session: AsyncSession, ref: str, spec: KeySpec, *, clear: Set[str] = frozenset()) -> ApiKey:
    """Apply the given fields; names in ``clear`` are set to none (no limit)."""
    _check(spec)
    key = await get_key(session, ref)
    for name in ("name", "team", "expires_at", "enabled", "rpm", "ipm", "is_admin", "budget_period", "webhook_url"):
        value = getattr(spec, name)
        if value is not None:
            setattr(key, name, value)
    if spec.models is not None:
        key.allowed_models = spec.models
    if spec.budget_usd is not None:
        key.budget_nusd = to_nano(spec.budget_usd)
    for name in clear:
        setattr(key, {"budget": "budget_nusd", "models": "allowed_models"}.get(name, name), None)
    if spec.team:
        await ensure_team(session, spec.team)
    await session.flush()
    return key


async def revoke_key(session: AsyncSession, ref: str) -> ApiKey:
    key = await get_key(session, ref)
    key.enabled = False
    key.revoked_at = key.revoked_at or utcnow()
    await session.flush()
    return key


async def list_teams(session: AsyncSession) -> list[Team]:
    return list((await session.execute(select(Team).order_by(Team.name))).scalars())


async def update_team(
    session: AsyncSession, name: str, budget_usd: float | None, period: str | None, clear_budget: bool = False
) -> Team:
    if period is not None and period not in PERIODS:
        raise InvalidRequestError(f"budget_period must be one of {', '.join(PERIODS)}.", param="budget_period")
    _check_number("budget_usd", budget_usd, MAX_BUDGET_USD)
    team = await ensure_team(session, name)
    if budget_usd is not None:
        team.budget_nusd = to_nano(budget_usd)
    if clear_budget:
        team.budget_nusd = None
    if period is not None:
        team.budget_period = period
    await session.flush()
    return team


def key_view(key: ApiKey) -> dict[str, Any]:
    """A key as the admin API and CLI show it (never the secret or its hash)."""
    from imagegate.accounting.money import usd_str

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "team": key.team,
        "models": key.allowed_models,
        "expires_at": when(key.expires_at),
        "enabled": key.enabled,
        "admin": key.is_admin,
        "rpm": key.rpm,
        "ipm": key.ipm,
        "budget_usd": usd_str(key.budget_nusd) if key.budget_nusd is not None else None,
        "budget_period": key.budget_period,
        "spent_usd": usd_str(key.spent_nusd),
        "reserved_usd": usd_str(key.reserved_nusd),
        "created_at": when(key.created_at),
        "revoked_at": when(key.revoked_at),
        "webhook_url": key.webhook_url,
        "webhook_secret_set": key.webhook_secret_encrypted is not None,
    }


def team_view(team: Team) -> dict[str, Any]:
    from imagegate.accounting.money import usd_str

    return {
        "name": team.name,
        "budget_usd": usd_str(team.budget_nusd) if team.budget_nusd is not None else None,
        "budget_period": team.budget_period,
        "spent_usd": usd_str(team.spent_nusd),
        "reserved_usd": usd_str(team.reserved_nusd),
    }
