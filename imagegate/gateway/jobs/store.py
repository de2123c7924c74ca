"""The jobs' SQL: inserts, claims, leases and fenced state changes.

Every change a worker makes to a running job is fenced: it names the lease
owner (``lease_owner = this process``) and the state it expects, and the
caller checks that one row changed. A worker that lost its lease (it stalled
past it, another replica took the job over) changes nothing.

Claims are one statement: PostgreSQL ``WITH picked AS MATERIALIZED (SELECT
id ... FOR UPDATE SKIP LOCKED LIMIT n) UPDATE ... FROM picked``, so replicas
never claim the same row and one claim never takes more than ``n`` (the
picked ids are computed once); SQLite ``UPDATE ... WHERE id IN (SELECT ...)
RETURNING`` under its single writer.

Time: on PostgreSQL every lease and queue time is the database's clock
(``now()``, the transaction's start): when a lease ends, whether it lapsed,
when a queued job expires. A replica whose clock runs ahead would otherwise
take over live jobs, and one whose clock runs behind would hand out leases
that lapsed already. On SQLite (one file, one host, one clock) it is the
process's clock.

A submission is one transaction that holds the key's lock
(:func:`lock_scope`): the per-key caps checked (concurrent submissions of one
key cannot all pass the same count), the budget reserved (a reservation row
owned by the job from the start), the job and its inputs inserted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Interval, Update, and_, bindparam, case, delete, func, or_, select, update
from sqlalchemy import insert as insert_into
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from imagegate.accounting.owner import is_gone
from imagegate.db.engine import Database, rowcount
from imagegate.db.models import ImageJob, JobInput, utcnow
from imagegate.gateway.jobs.view import ACTIVE, FINAL

T = ImageJob.__table__
_CLAIMED = (
    T.c.id, T.c.status, T.c.model, T.c.upstream_started, T.c.queue_expires_at, T.c.request, T.c.caller,
    T.c.request_id, T.c.base_url, T.c.reservation_id, T.c.reserved_nusd, T.c.outcome, T.c.created_at, T.c.cancel_requested,
)  # fmt: skip
Now = datetime | ColumnElement[datetime]
Inputs = Sequence[tuple[str, dict[str, Any], bytes]]  # a job's images and mask: (field, info, bytes)


def _now(postgres: bool) -> Now:
    """The time leases and queue times are measured by: the database's clock
    on PostgreSQL (replicas on several hosts), the process's on SQLite."""
    return func.now() if postgres else utcnow()


def _pg(db: Database) -> bool:
    return db.url.startswith("postgresql")


def _session_pg(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


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
    queue_expired: bool  # past its queue time by the database's clock (a takeover of a job never started)


# -- submission ----------------------------------------------------------------


# Built once (building SQL costs more than running it). On PostgreSQL the
# queue time runs from the database's clock: ``now()`` plus its length.
_INSERT_JOB = insert_into(T)
_INSERT_JOB_PG = insert_into(T).values(queue_expires_at=func.now() + bindparam("queue_length", type_=Interval()))
_INSERT_INPUT = insert_into(JobInput.__table__)


async def insert(session: AsyncSession, job: dict[str, Any], inputs: Inputs) -> None:
    """The job (``job``: its columns; its reservation, if any, already made
    in this transaction and owned by it) and its inputs, in the caller's
    transaction."""
    await insert_many(session, [(job, inputs)])


async def insert_many(session: AsyncSession, jobs: Sequence[tuple[dict[str, Any], Inputs]]) -> None:
    """Jobs (their columns; their reservations already made in this
    transaction) and their inputs, in the caller's transaction: one Core
    INSERT of all the jobs and one of all their inputs (executemany), no
    ORM objects."""
    if not jobs:
        return
    pg = _session_pg(session)
    rows = []
    for job, inputs in jobs:
        row = {**job, "input_bytes": input_size(inputs)}
        if pg:
            row["queue_length"] = row.pop("queue_expires_at") - job["created_at"]
        rows.append(row)
    await session.execute(_INSERT_JOB_PG if pg else _INSERT_JOB, rows)
    held = [
        {"job_id": job["id"], "position": position, "field": field, "info": info, "data": data}
        for job, inputs in jobs
        for position, (field, info, data) in enumerate(inputs)
    ]
    if held:
        await session.execute(_INSERT_INPUT, held)


async def find_idempotent(session: AsyncSession, scope: str, key: str) -> ImageJob | None:
    query = (
        select(ImageJob)
        .options(defer(ImageJob.result))
        .where(ImageJob.idempotency_scope == scope, ImageJob.idempotency_key == key)
    )
    return (await session.execute(query)).scalar_one_or_none()


def input_size(inputs: Inputs) -> int:
    """The bytes a job's inputs (images, mask) hold in ``job_inputs``."""
    return sum(len(data) for _, _, data in inputs)


async def lock_scope(session: AsyncSession, scope: str) -> None:
    """Serialise submissions of one caller until the transaction ends, so its
    caps are checked and its job inserted atomically. PostgreSQL: a
    transaction-level advisory lock on a 64-bit hash of the scope (callers
    without an ``api_keys`` row, anonymous or master, have one too); SQLite:
    nothing to do, the write transaction (BEGIN IMMEDIATE) already excludes
    every other writer."""
    if _session_pg(session):
        digest = hashlib.sha256(f"imagegate.jobs.submit:{scope}".encode()).digest()
        await session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))


_LOAD_OF = select(
    func.coalesce(func.sum(case((T.c.status == "queued", 1), else_=0)), 0),
    func.coalesce(func.sum(T.c.input_bytes), 0),
).where(T.c.scope == bindparam("scope"), T.c.status.in_(("queued", *ACTIVE)))


async def load_of(session: AsyncSession, scope: str) -> tuple[int, int]:
    """(queued jobs, input bytes of unfinished jobs) of a caller: what its caps count."""
    queued, held = (await session.execute(_LOAD_OF, {"scope": scope})).one()
    return int(queued), int(held)


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
    statement = claim_statement(_pg(db), me, lease_seconds, limit, running)
    async with db.transaction() as session:
        rows = (await session.execute(statement)).all()
    return [Claimed(*(*row[:-1], bool(row[-1]))) for row in rows]


def claim_statement(postgres: bool, me: str, lease_seconds: float, limit: int, running: Iterable[str] = ()) -> Update:
    """The claim: PostgreSQL picks the ids once, in a materialised CTE
    (``FOR UPDATE SKIP LOCKED LIMIT n``), and updates ``FROM`` it: a subquery
    under ``IN`` may be evaluated again by the planner and claim more than
    ``n`` rows. SQLite (one writer) keeps ``WHERE id IN (SELECT ...)``."""
    now = _now(postgres)
    claimable = or_(
        and_(T.c.status == "queued", T.c.queue_expires_at > now),
        and_(T.c.status.in_(ACTIVE), T.c.lease_until < now),
    )
    busy = list(running)
    if busy:
        claimable = and_(claimable, T.c.id.not_in(busy))
    pick = select(T.c.id).where(claimable).order_by(T.c.created_at).limit(limit)
    statement = update(T)
    if postgres:
        picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        statement = statement.where(T.c.id == picked.c.id)
    else:
        statement = statement.where(T.c.id.in_(pick.scalar_subquery()))
    return statement.values(
        status=case((T.c.status == "queued", "running"), else_=T.c.status),
        started_at=case((T.c.status == "settling", T.c.started_at), else_=now),
        lease_owner=me,
        lease_until=now + timedelta(seconds=lease_seconds),
        attempts=T.c.attempts + 1,
    ).returning(*_CLAIMED, (T.c.queue_expires_at <= now).label("queue_expired"))


async def renew(db: Database, me: str, ids: Iterable[str], lease_seconds: float) -> tuple[set[str], set[str]]:
    """Renew this process's leases on ``ids``. Returns (still ours, cancel requested)."""
    wanted = list(ids)
    if not wanted:
        return set(), set()
    async with db.transaction() as session:
        await session.execute(
            update(T)
            .where(T.c.id.in_(wanted), T.c.lease_owner == me, T.c.status.in_(ACTIVE))
            .values(lease_until=_now(_pg(db)) + timedelta(seconds=lease_seconds))
        )
        rows = (
            await session.execute(
                select(T.c.id, T.c.cancel_requested).where(T.c.id.in_(wanted), T.c.lease_owner == me, T.c.status.in_(ACTIVE))
            )
        ).all()
    return {row[0] for row in rows}, {row[0] for row in rows if row[1]}


async def mark_started(db: Database, job_ids: Sequence[str], me: str) -> set[str]:
    """Durably, before their first upstream call: the upstream may see these
    jobs from now on, so none is run again by a takeover. Those still
    running here (fenced by the lease) are marked, in one UPDATE; their ids."""
    async with db.transaction() as session:
        result = await session.execute(
            update(T)
            .where(T.c.id.in_(job_ids), T.c.lease_owner == me, T.c.status == "running")
            .values(upstream_started=True)
            .returning(T.c.id)
        )
        return {job_id for (job_id,) in result.all()}


async def to_settling(db: Database, job_id: str, me: str, expect: str, lease_seconds: float, **values: Any) -> bool:
    """Store how the job ended (``outcome``, with its final status, and the
    result or error) and move it to ``settling``: its settlement comes next."""
    lease = _now(_pg(db)) + timedelta(seconds=lease_seconds)
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
        await session.execute(update(T).where(mine, T.c.status.in_(ACTIVE)).values(lease_until=_now(_pg(db))))


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
            await session.execute(update(T).where(T.c.id == job_id, T.c.lease_owner == owner).values(lease_until=_now(_pg(db))))
    return len(gone)


async def overdue_queued(db: Database, limit: int = 100) -> list[str]:
    """Queued jobs past their queue time (they will never run)."""
    async with db.read() as session:
        query = select(T.c.id).where(T.c.status == "queued", T.c.queue_expires_at <= _now(_pg(db))).limit(limit)
        return [row[0] for row in (await session.execute(query)).all()]


async def delete_finished(db: Database, before: datetime) -> int:
    """Finished jobs whose results have expired."""
    async with db.transaction() as session:
        result = await session.execute(delete(T).where(T.c.status.in_(FINAL), T.c.finished_at < before))
        return rowcount(result)
