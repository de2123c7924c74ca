"""Job leases on real databases (SQLite and PostgreSQL): a process never
claims again a job it is running itself, when its own lease lapsed (a
heartbeat that failed or came late): the job runs once, not twice at the
upstream. On PostgreSQL leases and queue times are the database's clock: a
replica whose clock is off (the store's clock moved, as on another host)
neither takes over live jobs nor hands out lapsed leases. A claim takes at
most its limit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql

from imagegate.config import JobsConfig
from imagegate.db.engine import Database
from imagegate.db.migrate import upgrade_async
from imagegate.db.models import ImageJob, utcnow
from imagegate.gateway.jobs import store
from imagegate.gateway.jobs.store import Claimed
from imagegate.gateway.jobs.worker import JobWorkers


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'j.db'}"
    return request.getfixturevalue("postgres_url")


def job_row(job_id: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": job_id, "scope": "key:k", "key_id": None, "team": None, "caller": {}, "endpoint": "generations",
        "model": "m", "request": {}, "request_id": "r", "base_url": "http://x", "status": "queued",
        "created_at": now, "queue_expires_at": now + timedelta(hours=1), "attempts": 0,
        "upstream_started": False, "cancel_requested": False, "reservation_id": None, "reserved_nusd": 0,
    }  # fmt: skip


class HangingExecutor:
    """Runs each claimed job until cancelled, counting the runs per job."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.cancel_reasons: dict[str, str] = {}

    async def run(self, job: Claimed) -> None:
        self.runs[job.id] = self.runs.get(job.id, 0) + 1
        await asyncio.Event().wait()

    async def drain(self) -> None:
        return None


async def test_a_process_does_not_claim_again_a_job_it_runs_when_its_own_lease_lapsed(database_url: str) -> None:
    await upgrade_async(database_url)
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            await session.execute(delete(ImageJob))  # the session's PostgreSQL is shared
            await store.insert(session, job_row("imgjob_lease"), [])
        executor = HangingExecutor()
        config = JobsConfig(workers=4, lease_seconds=0.2, poll_seconds=0.05, drain_seconds=0)
        workers = JobWorkers(db, executor, config, "host:1:me")  # type: ignore[arg-type]
        # The claim loop alone: no heartbeat renews the lease (as when renewing fails), so it lapses.
        loop = asyncio.create_task(workers._claim_loop())
        await asyncio.sleep(1.0)  # five lease periods
        assert executor.runs == {"imgjob_lease": 1}
        # Another process does take it over once the lease has lapsed.
        other = await store.claim(db, "host:2:other", 60, 4)
        assert [job.id for job in other] == ["imgjob_lease"]
        workers._stopping = True
        loop.cancel()
        for task in [loop, *workers._tasks.values()]:
            task.cancel()
        await asyncio.gather(loop, *workers._tasks.values(), return_exceptions=True)
    finally:
        await db.aclose()


# -- clock skew: leases and queue times by the database's clock (PostgreSQL) ----------------


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """The session's PostgreSQL, migrated, with no jobs."""

    async def empty() -> None:
        await upgrade_async(postgres_url)
        async with opened(postgres_url) as db, db.transaction() as session:
            await session.execute(delete(ImageJob))

    asyncio.run(empty())
    return postgres_url


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Database]:
    db = Database(url)
    try:
        yield db
    finally:
        await db.aclose()


def skew(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """This process's clock, as the jobs' store reads it, off by ``seconds`` (a replica on another host)."""
    monkeypatch.setattr(store, "utcnow", lambda: utcnow() + timedelta(seconds=seconds))


async def db_now(db: Database) -> datetime:
    async with db.read() as session:
        return (await session.execute(select(func.now()))).scalar_one()


async def lease_of(db: Database, job_id: str) -> datetime:
    async with db.read() as session:
        job = await store.get(session, job_id, with_result=False)
    assert job is not None and job.lease_until is not None
    return job.lease_until


async def test_a_replica_whose_clock_runs_ahead_does_not_take_over_a_live_job(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(pg_url) as pg:
        async with pg.transaction() as session:
            await store.insert(session, job_row("imgjob_ahead"), [])
        assert [j.id for j in await store.claim(pg, "host:1:a", 60, 4)] == ["imgjob_ahead"]
        # Its lease ends 60 s after the database's now, whatever this process's clock says.
        lease = await lease_of(pg, "imgjob_ahead")
        assert abs((lease - await db_now(pg)).total_seconds() - 60) < 5
        skew(monkeypatch, 300)  # replica b's clock: five minutes ahead
        assert await store.claim(pg, "host:2:b", 60, 4) == []
        # b's heartbeat of a job of its own sets its lease by the database's clock too.
        async with pg.transaction() as session:
            await store.insert(session, job_row("imgjob_b"), [])
        assert [j.id for j in await store.claim(pg, "host:2:b", 60, 4)] == ["imgjob_b"]
        assert await store.renew(pg, "host:2:b", ["imgjob_b"], 60) == ({"imgjob_b"}, set())
        assert abs((await lease_of(pg, "imgjob_b") - await db_now(pg)).total_seconds() - 60) < 5


async def test_a_replica_whose_clock_runs_behind_gives_no_lapsed_lease(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with opened(pg_url) as pg:
        async with pg.transaction() as session:
            await store.insert(session, job_row("imgjob_behind"), [])
        skew(monkeypatch, -300)  # replica a: five minutes behind; its lease of 60 s would have ended 4 minutes ago
        assert [j.id for j in await store.claim(pg, "host:1:a", 60, 4)] == ["imgjob_behind"]
        monkeypatch.undo()
        assert await store.claim(pg, "host:2:b", 60, 4) == []  # a's job is still a's
        skew(monkeypatch, -300)
        ours, _ = await store.renew(pg, "host:1:a", ["imgjob_behind"], 60)
        monkeypatch.undo()
        assert ours == {"imgjob_behind"} and await store.claim(pg, "host:2:b", 60, 4) == []


async def test_queue_times_are_measured_by_the_databases_clock(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with opened(pg_url) as pg:
        skew(monkeypatch, 300)  # the accepting replica runs ahead: the job still has its full queue time
        row = job_row("imgjob_queued")
        row["queue_expires_at"] = row["created_at"] + timedelta(seconds=120)
        async with pg.transaction() as session:
            await store.insert(session, row, [])
        async with pg.read() as session:
            job = await store.get(session, "imgjob_queued", with_result=False)
        assert job is not None and abs((job.queue_expires_at - await db_now(pg)).total_seconds() - 120) < 5
        # A replica five minutes ahead neither sweeps it as expired nor skips it (two minutes of queue time left).
        assert await store.overdue_queued(pg) == []
        claimed = await store.claim(pg, "host:2:b", 60, 4)
        assert [j.id for j in claimed] == ["imgjob_queued"] and claimed[0].queue_expired is False


async def test_a_claim_takes_at_most_its_limit(database_url: str) -> None:
    await upgrade_async(database_url)
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            await session.execute(delete(ImageJob))
            for i in range(5):
                await store.insert(session, job_row(f"imgjob_n{i}"), [])
        first, second = await asyncio.gather(store.claim(db, "host:1:a", 60, 2), store.claim(db, "host:2:b", 60, 2))
        assert len(first) == 2 and len(second) == 2 and not {j.id for j in first} & {j.id for j in second}
        async with db.read() as session:
            statuses = (await session.execute(select(ImageJob.status).order_by(ImageJob.id))).scalars().all()
        assert sorted(statuses) == ["queued", "running", "running", "running", "running"]
    finally:
        await db.aclose()


def test_the_postgresql_claim_picks_its_ids_once_in_a_materialized_cte() -> None:
    sql = str(store.claim_statement(True, "me", 60, 3).compile(dialect=postgresql.asyncpg.dialect()))
    assert sql.startswith("WITH picked AS MATERIALIZED") and "FOR UPDATE SKIP LOCKED" in sql
    assert "FROM picked WHERE image_jobs.id = picked.id" in sql and " IN (SELECT" not in sql
    assert "now() + " in sql  # the lease ends by the database's clock
