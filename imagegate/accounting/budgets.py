"""Budgets: reserve the worst case at admission, settle to the real cost.

Both steps are single conditional UPDATEs, so concurrent requests can never
overspend: the database admits a reservation only while
``spent + reserved + amount <= budget`` holds for the row, and PostgreSQL
re-checks that condition on the locked row while SQLite serialises writers.
A key's reservation and its team's commit or fail together.

Budgets run over a period (``total``, ``daily``, ``weekly``, ``monthly``,
UTC); at the start of a new period, spending starts again from zero.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db.models import ApiKey, Team


def period_start(period: str, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day
    if period == "weekly":
        return day - timedelta(days=day.weekday())
    if period == "monthly":
        return day.replace(day=1)
    return datetime(1970, 1, 1, tzinfo=UTC)


def next_period(period: str, now: datetime) -> datetime | None:
    start = period_start(period, now)
    if period == "daily":
        return start + timedelta(days=1)
    if period == "weekly":
        return start + timedelta(days=7)
    if period == "monthly":
        return (start + timedelta(days=32)).replace(day=1)
    return None


def _pk(table: type[ApiKey] | type[Team]):  # noqa: ANN202 - a column
    return ApiKey.id if table is ApiKey else Team.name


async def _roll(session: AsyncSession, table: type[ApiKey] | type[Team], ident: object, period: str, now: datetime) -> None:
    start = period_start(period, now)
    await session.execute(
        update(table)
        .where(_pk(table) == ident, table.budget_period == period, table.period_start < start)
        .values(spent_nusd=0, period_start=start)
        .execution_options(synchronize_session=False)
    )


async def _reserve_row(session: AsyncSession, table, ident: object, amount: int) -> bool:  # noqa: ANN001
    result = await session.execute(
        update(table)
        .where(_pk(table) == ident)
        .where((table.budget_nusd.is_(None)) | (table.spent_nusd + table.reserved_nusd + amount <= table.budget_nusd))
        .values(reserved_nusd=table.reserved_nusd + amount)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


async def reserve(session: AsyncSession, key: ApiKey, amount: int, now: datetime) -> tuple[str | None, str | None]:
    """Reserve ``amount`` on the key and its team, in the caller's transaction.
    Returns (refused, team): refused is None when admitted, else which budget
    refused ("key" or "team"); team is the team that holds the amount too."""
    await _roll(session, ApiKey, key.id, key.budget_period, now)
    if not await _reserve_row(session, ApiKey, key.id, amount):
        return "key", None
    if key.team is not None:
        team = await session.get(Team, key.team)
        if team is not None:
            await _roll(session, Team, team.name, team.budget_period, now)
            if not await _reserve_row(session, Team, team.name, amount):
                return "team", None
            return None, team.name
    return None, None


async def release(session: AsyncSession, key_id: str, team: str | None, amount: int) -> None:
    """Give back a reservation held on the key (and the team that holds it too)."""
    for table, ident in ((ApiKey, key_id), (Team, team)):
        if ident is not None and amount:
            await session.execute(
                update(table)
                .where(_pk(table) == ident)
                .values(reserved_nusd=table.reserved_nusd - amount)
                .execution_options(synchronize_session=False)
            )


async def charge(session: AsyncSession, key_id: str, team: str | None, amount: int) -> None:
    """Add a real cost to the key's and its team's spending."""
    for table, ident in ((ApiKey, key_id), (Team, team)):
        if ident is not None and amount:
            await session.execute(
                update(table)
                .where(_pk(table) == ident)
                .values(spent_nusd=table.spent_nusd + amount)
                .execution_options(synchronize_session=False)
            )
