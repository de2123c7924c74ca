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

from sqlalchemy import ColumnElement, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.accounting import budgets
from imagegate.accounting.money import usd_str
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


async def _release_where(session: AsyncSession, *conditions: ColumnElement[bool]) -> tuple[int, int]:
    """Delete the matching rows and give their amounts back, in the caller's
    transaction. A settlement racing with this finds its row gone and gives
    nothing back twice."""
    rows = (
        await session.execute(
            delete(Reservation)
            .where(*conditions)
            .returning(Reservation.key_id, Reservation.team, Reservation.amount_nusd)
            .execution_options(synchronize_session=False)
        )
    ).all()
    for key_id, team, amount in rows:
        await budgets.release(session, key_id, team, amount)
    return len(rows), sum(amount for _, _, amount in rows)


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
    if not stale:
        return 0, 0
    async with db.transaction() as session:
        count, total = await _release_where(session, Reservation.id.in_(stale))
    if count:
        log.warning("released %d stale budget reservation(s) worth %d nano-USD (expired or left by a stopped process)",
                    count, total)  # fmt: skip
    return count, total


async def release_all(session: AsyncSession, key_id: str | None = None, *, expired_only: bool = False) -> tuple[int, int]:
    """An administrator's release: every reservation (of one key; only the
    expired ones if asked), live or not. A live request settles later
    without giving anything back twice."""
    conditions: list[ColumnElement[bool]] = []
    if key_id is not None:
        conditions.append(Reservation.key_id == key_id)
    if expired_only:
        conditions.append(Reservation.expires_at < utcnow())
    return await _release_where(session, *conditions)


async def list_held(session: AsyncSession, key_id: str | None = None) -> list[dict[str, object]]:
    query = select(Reservation).order_by(Reservation.created_at)
    if key_id is not None:
        query = query.where(Reservation.key_id == key_id)
    return [
        {
            "id": r.id,
            "request_id": r.request_id,
            "key_id": r.key_id,
            "team": r.team,
            "reserved_usd": usd_str(r.amount_nusd),
            "owner": r.owner,
            "created_at": aware(r.created_at).isoformat(),
            "expires_at": aware(r.expires_at).isoformat(),
        }
        for r in (await session.execute(query)).scalars()
    ]
