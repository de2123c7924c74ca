"""Job leases on real databases (SQLite and PostgreSQL): a process never
claims again a job it is running itself, when its own lease lapsed (a
heartbeat that failed or came late): the job runs once, not twice at the
upstream."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from imagegate.config import JobsConfig
from imagegate.db.engine import Database
from imagegate.db.migrate import upgrade_async
from imagegate.db.models import utcnow
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
            await store.insert(session, job_row("imgjob_lease"), [], utcnow())
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
