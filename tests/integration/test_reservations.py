"""Reservations and budget periods on real databases (SQLite and PostgreSQL),
through the accounting functions the server uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from imagegate.accounting import keys, reservations
from imagegate.accounting.money import to_nano
from imagegate.db.engine import Database
from imagegate.db.migrate import upgrade_async
from imagegate.db.models import ApiKey, Reservation, utcnow

DOLLAR = to_nano(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    return request.getfixturevalue("postgres_url")


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Database]:
    await upgrade_async(url)
    db = Database(url)
    try:
        yield db
    finally:
        await db.aclose()


async def new_key(db: Database, budget: float, period: str = "total") -> ApiKey:
    async with db.transaction() as session:
        key, _ = await keys.create_key(session, keys.KeySpec(name="r", budget_usd=budget, budget_period=period))
    return key


async def budget_state(db: Database, key_id: str) -> tuple[int, int]:
    async with db.read() as session:
        key = await session.get(ApiKey, key_id)
        assert key is not None
        return key.spent_nusd, key.reserved_nusd


async def hold(db: Database, key: ApiKey, amount: int, lifetime: float = 600, period: str | None = None) -> tuple:
    async with db.transaction() as session:
        return await reservations.hold(session, (key.id, period or key.budget_period, None), amount, "req", lifetime, utcnow())


async def test_a_new_period_starts_from_zero_in_the_reserving_update(database_url: str) -> None:
    async with opened(database_url) as db:
        key = await new_key(db, 1, "daily")
        async with db.transaction() as session:  # yesterday's spending used the whole budget
            await session.execute(
                update(ApiKey).where(ApiKey.id == key.id).values(spent_nusd=DOLLAR, period_start=utcnow() - timedelta(days=1))
            )
        refused, held = await hold(db, key, DOLLAR // 10)
        assert refused is None and held.id is not None
        assert await budget_state(db, key.id) == (0, DOLLAR // 10)
        # Within the period, spending counts.
        async with db.transaction() as session:
            await reservations.settle(session, held.id, key.id, None, DOLLAR)
        assert await budget_state(db, key.id) == (DOLLAR, 0)
        refused, _ = await hold(db, key, 1)
        assert refused == "key"


async def test_a_period_changed_since_authentication_is_read_again(database_url: str) -> None:
    async with opened(database_url) as db:
        key = await new_key(db, 1, "daily")
        refused, held = await hold(db, key, DOLLAR // 2, period="monthly")  # what the caller read before an admin change
        assert refused is None and held.amount == DOLLAR // 2
        refused, _ = await hold(db, key, DOLLAR, period="monthly")
        assert refused == "key"  # still the budget that decides


async def test_expired_reservations_of_other_hosts_are_released_once(database_url: str) -> None:
    async with opened(database_url) as db:
        key = await new_key(db, 1)
        _, live = await hold(db, key, 100)
        _, stale = await hold(db, key, 200, lifetime=-60)  # its deadline passed long ago
        async with db.transaction() as session:  # and it belongs to a host we cannot see
            await session.execute(update(Reservation).where(Reservation.id == stale.id).values(owner="elsewhere:1:ab"))
        assert await reservations.release_stale(db) == (1, 200)
        assert await budget_state(db, key.id) == (0, 100)
        assert await reservations.release_stale(db) == (0, 0)
        # The stale request settles late: charged, nothing given back twice.
        async with db.transaction() as session:
            assert not await reservations.settle(session, stale.id, key.id, None, 50)
            assert await reservations.settle(session, live.id, key.id, None, 70)
        assert await budget_state(db, key.id) == (120, 0)


async def test_admin_release_of_one_key_leaves_the_others(database_url: str) -> None:
    async with opened(database_url) as db:
        a, b = await new_key(db, 1), await new_key(db, 1)
        await hold(db, a, 10)
        await hold(db, a, 20)
        await hold(db, b, 40)
        async with db.transaction() as session:
            assert await reservations.release_all(session, a.id) == (2, 30)
            assert await reservations.release_all(session, b.id, expired_only=True) == (0, 0)
        assert await budget_state(db, a.id) == (0, 0)
        assert await budget_state(db, b.id) == (0, 40)
