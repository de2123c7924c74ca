"""Budget reservations as rows.

Admission reserves a request's worst case on its key (and team) with the
conditional UPDATE of ``budgets.reserve`` and, in the same transaction,
writes a :class:`~imagegate.db.models.Reservation` row naming the request,
the process that owns it and when it expires (the request's deadline plus a
margin). The key's ``reserved_nusd`` is always the sum of its rows.

A reservation is given back exactly once, by whoever deletes its row first:

* the request's settlement (which then charges the real cost);
* a sweep of expired rows, or of rows whose owner process is known to be
  gone, run at start and periodically (a crash, a kill -9, a failed
  settlement);
* an administrator (``imagegate keys release-reservations``).

A settlement that finds its row already gone still charges the real cost but
releases nothing, so nothing is ever given back twice.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.accounting import budgets
from imagegate.accounting.owner import is_gone, this_process
from imagegate.db.engine import Database
from imagegate.db.models import ApiKey, Reservation, aware, utcnow

log = logging.getLogger("imagegate.accounting")

# Beyond the request's deadline: time for its settlement to be written.
EXPIRY_MARGIN_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Held:
    id: str | None  # None: nothing was reserved
    amount: int


async def hold(
    session: AsyncSession, key: ApiKey, amount: int, request_id: str, lifetime_seconds: float, now: datetime
) -> tuple[str | None, Held]:
    """Reserve ``amount`` for a request, in the caller's transaction. Returns
    (refused, held): refused names the budget that said no ("key"/"team")."""
    refused, team = await budgets.reserve(session, key, amount, now)
    if refused is not None:
        return refused, Held(None, 0)
    rid = f"rsv_{secrets.token_hex(12)}"
    session.add(
        Reservation(
            id=rid,
            request_id=request_id[:128],
            key_id=key.id,
            team=team,
            amount_nusd=amount,
            owner=this_process(),
            created_at=now,
            expires_at=now + timedelta(seconds=lifetime_seconds + EXPIRY_MARGIN_SECONDS),
        )
    )
    return None, Held(rid, amount)


async def take(session: AsyncSession, reservation_id: str) -> Held | None:
    """Delete one reservation's row and give its amount back, in the caller's
    transaction; None when it was already released (by a sweep or an admin)."""
    row = (
        await session.execute(
            delete(Reservation)
            .where(Reservation.id == reservation_id)
            .returning(Reservation.key_id, Reservation.team, Reservation.amount_nusd)
            .execution_options(synchronize_session=False)
        )
    ).first()
    if row is None:
        return None
    key_id, team, amount = row
    await budgets.release(session, key_id, team, amount)
    return Held(reservation_id, amount)


async def _release_each(db: Database, ids: list[str]) -> tuple[int, int]:
    count = total = 0
    for rid in ids:
        async with db.transaction() as session:
            row = await take(session, rid)
        if row is not None:
            count, total = count + 1, total + row.amount
    return count, total


async def release_stale(db: Database, now: datetime | None = None) -> tuple[int, int]:
    """Release expired reservations and those of processes known to be gone.
    Returns (how many, nano-dollars)."""
    now = now or utcnow()
    host = this_process().rsplit(":", 2)[0]
    async with db.read() as session:
        rows = (
            await session.execute(
                select(Reservation.id, Reservation.owner, Reservation.expires_at).where(
                    or_(Reservation.expires_at < now, Reservation.owner.like(f"{host}:%"))
                )
            )
        ).all()
    stale = [rid for rid, owner, expires in rows if aware(expires) < now or is_gone(owner)]
    count, total = await _release_each(db, stale)
    if count:
        log.warning("released %d stale budget reservation(s) worth %d nano-USD (expired or left by a stopped process)",
                    count, total)  # fmt: skip
    return count, total


async def release_all(db: Database, key_id: str | None = None) -> tuple[int, int]:
    """An administrator's release: every reservation (of one key), live or
    not. A live request settles later without giving anything back twice."""
    async with db.read() as session:
        query = select(Reservation.id)
        if key_id is not None:
            query = query.where(Reservation.key_id == key_id)
        ids = list((await session.execute(query)).scalars())
    return await _release_each(db, ids)

