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

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, Table, Update, bindparam, case, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from imagegate.db.engine import rowcount
from imagegate.db.models import ApiKey, Team


async def lock(session: AsyncSession, key_ids: Iterable[str], teams: Iterable[str]) -> None:
    """Lock the rows of ``key_ids``, then of ``teams``, each in sorted order,
    in the caller's transaction (PostgreSQL; SQLite's single writer needs
    none): the order every reservation and settlement takes them in (a
    key, then its team), so a transaction touching several keys and teams
    never waits on one that waits on it. One key (and its team) needs no
    lock beforehand: reserving takes them in that order already."""
    keys = sorted(set(key_ids))
    if len(keys) < 2 or session.get_bind().dialect.name != "postgresql":
        return
    for pk, wanted in ((ApiKey.id, keys), (Team.name, sorted(set(teams)))):
        if wanted:
            await session.execute(select(pk).where(pk.in_(wanted)).order_by(pk).with_for_update())


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


def _pk(table: type[ApiKey] | type[Team]) -> InstrumentedAttribute[str]:
    return ApiKey.id if table is ApiKey else Team.name


async def _roll(session: AsyncSession, table: type[ApiKey] | type[Team], ident: object, period: str, now: datetime) -> None:
    start = period_start(period, now)
    await session.execute(
        update(table)
        .where(_pk(table) == ident, table.budget_period == period, table.period_start < start)
        .values(spent_nusd=0, period_start=start)
        .execution_options(synchronize_session=False)
    )


async def _reserve_row(session: AsyncSession, table: type[ApiKey] | type[Team], ident: object, amount: int) -> bool:
    result = await session.execute(
        update(table)
        .where(_pk(table) == ident)
        .where((table.budget_nusd.is_(None)) | (table.spent_nusd + table.reserved_nusd + amount <= table.budget_nusd))
        .values(reserved_nusd=table.reserved_nusd + amount)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def _reserve_key_statement() -> Update:
    """Start a new period if one began, and reserve: one conditional UPDATE,
    built once (building SQL expressions costs more than running them)."""
    keys = ApiKey.__table__.c
    start = bindparam("start", type_=keys.period_start.type)
    amount = bindparam("amount", type_=BigInteger())
    stale = keys.period_start < start
    spent = case((stale, 0), else_=keys.spent_nusd)
    return (
        update(ApiKey.__table__)
        .where(keys.id == bindparam("key_id"), keys.budget_period == bindparam("period"))
        .where(keys.budget_nusd.is_(None) | (spent + keys.reserved_nusd + amount <= keys.budget_nusd))
        .values(
            spent_nusd=spent,
            period_start=case((stale, start), else_=keys.period_start),
            reserved_nusd=keys.reserved_nusd + amount,
        )  # fmt: skip
    )


_RESERVE_KEY = _reserve_key_statement()


async def _reserve_key(session: AsyncSession, key_id: str, period: str, amount: int, now: datetime) -> bool:
    params = {"key_id": key_id, "period": period, "amount": amount, "start": period_start(period, now)}
    return rowcount(await session.execute(_RESERVE_KEY, params)) == 1


async def reserve(
    session: AsyncSession, key_id: str, period: str, team: str | None, amount: int, now: datetime
) -> tuple[str | None, str | None]:
    """Reserve ``amount`` on the key and its team, in the caller's transaction.
    ``period`` and ``team`` are the key's as the caller last read them.
    Returns (refused, team): refused is None when admitted, else which budget
    refused ("key" or "team"), and nothing is left changed; team is the team
    that holds the amount too."""
    if not await _reserve_key(session, key_id, period, amount, now):
        key = await session.get(ApiKey, key_id)  # refused, or its period or team changed since it was read
        if key is None or key.budget_period == period or not await _reserve_key(session, key_id, key.budget_period, amount, now):
            return "key", None
        team = key.team
    if team is not None:
        row = await session.get(Team, team)
        if row is not None:
            await _roll(session, Team, row.name, row.budget_period, now)
            if not await _reserve_row(session, Team, row.name, amount):
                await release(session, key_id, None, amount)  # a refusal changes nothing: the key's share back
                return "team", None
            return None, row.name
    return None, None


async def release(session: AsyncSession, key_id: str | None, team: str | None, amount: int) -> None:
    """Give back a reservation held on the key (and the team that holds it too)."""
    for table, ident in ((ApiKey, key_id), (Team, team)):
        if ident is not None and amount:
            await session.execute(
                update(table)
                .where(_pk(table) == ident)
                .values(reserved_nusd=table.reserved_nusd - amount)
                .execution_options(synchronize_session=False)
            )


def _settle_statement(table: Table) -> Update:
    pk = table.c.id if "id" in table.c else table.c.name
    return (
        update(table)
        .where(pk == bindparam("ident"))
        .values(
            reserved_nusd=table.c.reserved_nusd - bindparam("give_back", type_=BigInteger()),
            spent_nusd=table.c.spent_nusd + bindparam("charge", type_=BigInteger()),
        )
    )


_SETTLE = {ApiKey: _settle_statement(ApiKey.__table__), Team: _settle_statement(Team.__table__)}


async def settle(
    session: AsyncSession, key_id: str, team: str | None, released: int, released_team: str | None, charge: int
) -> None:
    """Give back ``released`` (held on the key and on ``released_team``) and
    add ``charge`` to the key's and ``team``'s spending: one UPDATE each."""
    for table, ident in ((ApiKey, key_id), (Team, team)):
        give_back = released if (table is ApiKey or ident == released_team) else 0
        if ident is not None and (give_back or charge):
            await session.execute(_SETTLE[table], {"ident": ident, "give_back": give_back, "charge": charge})
    if released_team is not None and released_team != team and released:
        await release(session, None, released_team, released)
