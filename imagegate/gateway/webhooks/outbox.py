"""The webhook outbox: SQL for deliveries that wait, are claimed, attempted
and recorded.

A finished job's delivery is a row of ``webhook_deliveries`` (the body as
sent, the attempts so far, when it is next due). A replica's delivery loop
claims due rows by moving ``next_attempt_at`` past the attempt's timeout in
one statement: ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)
RETURNING`` on PostgreSQL, where replicas claim side by side without waiting
on each other; on SQLite the same statement without the row locks, atomic
under the one writer lock (SQLAlchemy renders no FOR UPDATE there). A replica
that dies mid-attempt leaves its rows due again once that time has passed,
so a delivery is sent at least once; receivers tell repeats apart by
``webhook-id``.

Every change to a delivery also writes its public view, ``{url, state,
attempts}``, into the job's ``webhook`` column, in the same transaction:
what the job object shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db.engine import Database, rowcount
from imagegate.db.models import ImageJob, WebhookDelivery, aware, utcnow

Attempt = dict[str, Any]  # {at, status_code | error, duration_ms}


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str  # the webhook-id
    job_id: str
    key_id: str
    url: str
    event: str
    payload: bytes
    attempts: list[Attempt]
    first_attempt_at: datetime | None
    claimed_until: datetime  # the claim: record() writes only while it still holds


def view(url: str, state: str, attempts: list[Attempt]) -> dict[str, Any]:
    """A delivery as the job object's ``webhook`` field shows it."""
    return {"url": url, "state": state, "attempts": attempts}


async def enqueue(
    session: AsyncSession, *, message_id: str, job_id: str, key_id: str, url: str, event: str, payload: bytes
) -> None:
    """Add a delivery, due now, in the caller's transaction."""
    now = utcnow()
    session.add(
        WebhookDelivery(
            id=message_id,
            job_id=job_id,
            key_id=key_id,
            url=url,
            event=event,
            payload=payload,
            attempts=[],
            state="pending",
            next_attempt_at=now,
            created_at=now,
        )  # fmt: skip
    )
    await session.flush()
    await session.execute(update(ImageJob).where(ImageJob.id == job_id).values(webhook=view(url, "pending", [])))


async def claim(db: Database, *, limit: int, lease_seconds: float) -> list[Delivery]:
    """Take up to ``limit`` due deliveries for one attempt each; they are not
    due again for ``lease_seconds`` unless :func:`record` says otherwise."""
    now = utcnow()
    until = now + timedelta(seconds=lease_seconds)
    due = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    t = WebhookDelivery
    statement = (
        update(t)
        .where(t.id.in_(due.scalar_subquery()))
        .values(next_attempt_at=until)
        .returning(t.id, t.job_id, t.key_id, t.url, t.event, t.payload, t.attempts, t.first_attempt_at)
        .execution_options(synchronize_session=False)
    )
    async with db.transaction() as session:
        rows = (await session.execute(statement)).all()
    return [
        Delivery(
            r.id,
            r.job_id,
            r.key_id,
            r.url,
            r.event,
            r.payload,
            list(r.attempts or []),
            aware(r.first_attempt_at) if r.first_attempt_at else None,
            until,
        )  # fmt: skip
        for r in rows
    ]


async def record(db: Database, delivery: Delivery, attempt: Attempt, *, state: str, next_attempt_at: datetime | None) -> bool:
    """Add one attempt's outcome; ``state`` pending (again at
    ``next_attempt_at``), delivered or failed. False, and nothing written,
    when the claim had lapsed and another replica took the delivery over."""
    attempts = [*delivery.attempts, attempt]
    values: dict[str, Any] = {"attempts": attempts, "state": state}
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    if delivery.first_attempt_at is None:
        values["first_attempt_at"] = datetime.fromisoformat(attempt["at"])
    t = WebhookDelivery
    held = (t.id == delivery.id, t.state == "pending", t.next_attempt_at == delivery.claimed_until)
    async with db.transaction() as session:
        if not rowcount(await session.execute(update(t).where(*held).values(**values))):
            return False
        await session.execute(
            update(ImageJob).where(ImageJob.id == delivery.job_id).values(webhook=view(delivery.url, state, attempts))
        )
    return True


async def next_due(db: Database) -> datetime | None:
    """When the earliest pending delivery is due (None: none is pending)."""
    async with db.read() as session:
        when = (
            await session.execute(select(func.min(WebhookDelivery.next_attempt_at)).where(WebhookDelivery.state == "pending"))
        ).scalar_one_or_none()
    return aware(when) if when is not None else None


async def prune(db: Database) -> int:
    """Forget the deliveries, delivered or given up, of jobs no longer stored."""
    t = WebhookDelivery
    gone = ~exists().where(ImageJob.id == t.job_id)
    async with db.transaction() as session:
        return rowcount(await session.execute(delete(t).where(t.state != "pending", gone)))
