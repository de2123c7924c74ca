"""The jobs' SQL: inserts, claims, leases and fenced state changes.

Every change a worker makes to a running job is fenced: it names the lease
owner (``lease_owner = this process``) and the state it expects, and the
caller checks that one row changed. A worker that lost its lease (it stalled
past it, another replica took the job over) changes nothing.

Claims are one statement: PostgreSQL ``UPDATE ... WHERE id IN (SELECT ...
FOR UPDATE SKIP LOCKED)``, so replicas never claim the same row; SQLite
the same ``UPDATE ... RETURNING`` under its single writer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from imagegate.accounting.owner import is_gone
from imagegate.db.engine import Database, rowcount
from imagegate.db.models import ImageJob, JobInput, Reservation, aware, utcnow
from imagegate.gateway.jobs.view import ACTIVE, FINAL

T = ImageJob.__table__
_CLAIMED = (
    T.c.id, T.c.status, T.c.model, T.c.upstream_started, T.c.queue_expires_at, T.c.request, T.c.caller,
    T.c.request_id, T.c.base_url, T.c.reservation_id, T.c.reserved_nusd, T.c.outcome, T.c.created_at, T.c.cancel_requested,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Claimed:
    """What a worker needs of a job it claimed."""

    id: str
    status: str  # running (fresh, or taken over) or settling (taken over)
    model: str
    upstream_started: bool
    queue_expires_at: datetime
    request: dict[str, Any]
    caller: dict[str, Any]
    request_id: str
    base_url: str
    reservation_id: str | None
    reserved_nusd: int
    outcome: dict[str, Any] | None
    created_at: datetime
    cancel_requested: bool  # asked while another server ran it (a takeover, a job handed back): not run


# -- submission ----------------------------------------------------------------


async def insert(
    session: AsyncSession,
    job: dict[str, Any],
    inputs: Sequence[tuple[str, dict[str, Any], bytes]],
    reservation_expires: datetime,
) -> None:
    """The job, its inputs, and its reservation re-owned by it (``job:<id>``,
    expiring with the job), in the caller's transaction."""
    session.add(ImageJob(**job))
    await session.flush()
    for position, (field, info, data) in enumerate(inputs):
        session.add(JobInput(job_id=job["id"], position=position, field=field, info=info, data=data))
    if job.get("reservation_id") is not None:
        await session.execute(
            update(Reservation)
            .where(Reservation.id == job["reservation_id"])
            .values(owner=f"job:{job['id']}", expires_at=reservation_expires)
            .execution_options(synchronize_session=False)
        )


async def find_idempotent(session: AsyncSession, scope: str, key: str) -> ImageJob | None:
    query = (
        select(ImageJob)
        .options(defer(ImageJob.result))
        .where(ImageJob.idempotency_scope == scope, ImageJob.idempotency_key == key)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def count_queued(session: AsyncSession, scope: str) -> int:
    query = select(func.count()).select_from(T).where(T.c.scope == scope, T.c.status == "queued")
    return int((await session.execute(query)).scalar_one())


# -- reading -------------------------------------------------------------------


async def get(session: AsyncSession, job_id: str, *, with_result: bool = True) -> ImageJob | None:
    query = select(ImageJob).where(ImageJob.id == job_id)
    if not with_result:
        query = query.options(defer(ImageJob.result))
    return (await session.execute(query)).scalar_one_or_none()


async def page(session: AsyncSession, visible: ColumnElement[bool], limit: int, after: ImageJob | None) -> list[ImageJob]:
    """Visible jobs, newest first, after the job ``after`` (a cursor); one
    more than ``limit`` tells the caller there are more."""
    query = select(ImageJob).options(defer(ImageJob.result)).where(visible)
    if after is not None:
        when = after.created_at
        query = query.where(or_(ImageJob.created_at < when, and_(ImageJob.created_at == when, ImageJob.id < after.id)))
    query = query.order_by(ImageJob.created_at.desc(), ImageJob.id.desc()).limit(limit + 1)
    return list((await session.execute(query)).scalars())


async def inputs(session: AsyncSession, job_id: str) -> list[tuple[str, dict[str, Any], bytes]]:
    query = select(JobInput.field, JobInput.info, JobInput.data).where(JobInput.job_id == job_id).order_by(JobInput.position)
    return [(field, info, data) for field, info, data in (await session.execute(query)).all()]


# -- claims and leases -----------------------------------------------------------


async def claim(db: Database, me: str, lease_seconds: float, limit: int, running: Iterable[str] = ()) -> list[Claimed]:
    """Up to ``limit`` jobs for this process: queued ones still within their
    queue time, and running or settling ones whose lease has lapsed (taken
    over), but never one of ``running`` (the jobs this process runs now: its
    own lease lapsed when its heartbeat failed or came late; claiming it
    again would run it twice). A queued job becomes running; the others keep
    their state."""
    now = utcnow()
    claimable = or_(
        and_(T.c.status == "queued", T.c.queue_expires_at > now),
        and_(T.c.status.in_(ACTIVE), T.c.lease_until < now),
    )
    busy = list(running)
    if busy:
        claimable = and_(claimable, T.c.id.not_in(busy))
    pick = select(T.c.id).where(claimable).order_by(T.c.created_at).limit(limit)
    if db.url.startswith("postgresql"):
        pick = pick.with_for_update(skip_locked=True)
    statement = (
        update(T)
        .where(T.c.id.in_(pick.scalar_subquery()))
        .values(
            status=case((T.c.status == "queued", "running"), else_=T.c.status),
            started_at=case((T.c.status == "settling", T.c.started_at), else_=now),
            lease_owner=me,
            lease_until=now + timedelta(seconds=lease_seconds),
            attempts=T.c.attempts + 1,
        )
        .returning(*_CLAIMED)
    )
    async with db.transaction() as session:
        rows = (await session.execute(statement)).all()
    return [Claimed(*row) for row in rows]


async def renew(db: Database, me: str, ids: Iterable[str], lease_seconds: float) -> tuple[set[str], set[str]]:
    """Renew this process's leases on ``ids``. Returns (still ours, cancel requested)."""
    wanted = list(ids)
    if not wanted:
        return set(), set()
    async with db.transaction() as session:
        await session.execute(
            update(T)
            .where(T.c.id.in_(wanted), T.c.lease_owner == me, T.c.status.in_(ACTIVE))
            .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
        )
        rows = (
            await session.execute(
                select(T.c.id, T.c.cancel_requested).where(T.c.id.in_(wanted), T.c.lease_owner == me, T.c.status.in_(ACTIVE))
            )
        ).all()
    return {row[0] for row in rows}, {row[0] for row in rows if row[1]}


async def _fenced(db: Database, job_id: str, me: str, expect: str, **values: Any) -> bool:
    async with db.transaction() as session:
        result = await session.execute(
            update(T).where(T.c.id == job_id, T.c.lease_owner == me, T.c.status == expect).values(**values)
        )
        return rowcount(result) == 1


async def mark_started(db: Database, job_id: str, me: str) -> bool:
    """Durably, before the first upstream call: the upstream may see this job
    from now on, so it is never run again by a takeover."""
    return await _fenced(db, job_id, me, "running", upstream_started=True)


async def to_settling(db: Database, job_id: str, me: str, expect: str, lease_seconds: float, **values: Any) -> bool:
    """Store how the job ended (``outcome``, with its final status, and the
    result or error) and move it to ``settling``: its settlement comes next."""
    lease = utcnow() + timedelta(seconds=lease_seconds)
    async with db.transaction() as session:
        result = await session.execute(
            update(T)
            .where(T.c.id == job_id, T.c.status == expect, *((T.c.lease_owner == me,) if expect != "queued" else ()))
            .values(status="settling", lease_owner=me, lease_until=lease, **values)
        )
        return rowcount(result) == 1


async def finish(db: Database, job_id: str, me: str, final: str, cost: int) -> bool:
    """The settlement went through: the final state, and the inputs deleted."""
    async with db.transaction() as session:
        result = await session.execute(
            update(T)
            .where(T.c.id == job_id, T.c.lease_owner == me, T.c.status == "settling")
            .values(status=final, cost_nusd=cost, finished_at=utcnow(), lease_owner=None, lease_until=None)
        )
        if rowcount(result) != 1:
            return False
        await session.execute(delete(JobInput).where(JobInput.job_id == job_id))
    return True


async def request_cancel(db: Database, job_id: str) -> bool:
    async with db.transaction() as session:
        result = await session.execute(update(T).where(T.c.id == job_id, T.c.status.in_(ACTIVE)).values(cancel_requested=True))
        return rowcount(result) == 1


async def hand_back(db: Database, me: str, ids: Iterable[str]) -> None:
    """A graceful stop: jobs that never reached the upstream go back to the
    queue; the others' leases end now, for a takeover (which settles them)."""
    wanted = list(ids)
    if not wanted:
        return
    mine = and_(T.c.id.in_(wanted), T.c.lease_owner == me)
    async with db.transaction() as session:
        await session.execute(
            update(T)
            .where(mine, T.c.status == "running", T.c.upstream_started.is_(False))
            .values(status="queued", lease_owner=None, lease_until=None)
        )
        await session.execute(update(T).where(mine, T.c.status.in_(ACTIVE)).values(lease_until=utcnow()))


async def end_leases_of_gone_processes(db: Database, host: str) -> int:
    """Leases held by processes of this host that are known to be gone (a
    crash, a restart) end now instead of at their expiry."""
    async with db.read() as session:
        rows = (
            await session.execute(
                select(T.c.id, T.c.lease_owner).where(T.c.status.in_(ACTIVE), T.c.lease_owner.like(f"{host}:%"))
            )
        ).all()
    gone = [(job_id, owner) for job_id, owner in rows if is_gone(owner)]
    for job_id, owner in gone:
        async with db.transaction() as session:
            await session.execute(update(T).where(T.c.id == job_id, T.c.lease_owner == owner).values(lease_until=utcnow()))
    return len(gone)


async def overdue_queued(db: Database, limit: int = 100) -> list[str]:
    """Queued jobs past their queue time (they will never run)."""
    async with db.read() as session:
        query = select(T.c.id).where(T.c.status == "queued", T.c.queue_expires_at <= utcnow()).limit(limit)
        return [row[0] for row in (await session.execute(query)).all()]


async def delete_finished(db: Database, before: datetime) -> int:
    """Finished jobs whose results have expired."""
    async with db.transaction() as session:
        result = await session.execute(delete(T).where(T.c.status.in_(FINAL), T.c.finished_at < before))
        return rowcount(result)


def lease_lapsed(lease_until: datetime | None, now: datetime | None = None) -> bool:
    return lease_until is None or aware(lease_until) < (now or utcnow())
