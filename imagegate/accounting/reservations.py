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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, bindparam, delete, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.accounting import budgets
from imagegate.accounting.money import usd_str
from imagegate.accounting.owner import is_gone, this_process
from imagegate.db.engine import Database
from imagegate.db.models import Reservation, aware, utcnow

log = logging.getLogger("imagegate.accounting")

# Beyond the request's deadline: time for its settlement to be written.
EXPIRY_MARGIN_SECONDS = 30.0


# Hot-path statements, built once (building SQL costs more than running it).
_TABLE = Reservation.__table__
_INSERT = insert(_TABLE)
_TAKE = delete(_TABLE).where(_TABLE.c.id == bindparam("rid")).returning(_TABLE.c.team, _TABLE.c.amount_nusd)


@dataclass(frozen=True, slots=True)
class Held:
    id: str | None  # None: nothing was reserved
    amount: int


# One reservation to make: (amount, request id, lifetime in seconds, made at
# (None: now), owner (None: this process)).
Hold = tuple[int, str, float, datetime | None, str | None]


def _row(key_id: str, team: str | None, hold: Hold, now: datetime) -> dict[str, object]:
    amount, request_id, lifetime_seconds, created, owner = hold
    return {
        "id": f"rsv_{secrets.token_hex(12)}",
        "request_id": request_id[:128],
        "key_id": key_id,
        "team": team,
        "amount_nusd": amount,
        "owner": owner or this_process(),
        "created_at": created or now,
        "expires_at": (created or now) + timedelta(seconds=lifetime_seconds + EXPIRY_MARGIN_SECONDS),
    }


async def hold_many(
    session: AsyncSession, key: tuple[str, str, str | None], holds: Sequence[Hold], now: datetime
) -> tuple[str | None, list[Held]]:
    """Reserve every one of ``holds`` on ``key`` (its id, budget period and
    team as last read), in the caller's transaction: the budgets asked once
    for their sum (one conditional UPDATE each, not one per hold), then a
    row per hold (one INSERT of them all), so the key's ``reserved_nusd``
    stays the sum of its rows. Returns (refused, held): refused names the
    budget that said no to the sum ("key"/"team"), and then nothing is
    held or changed."""
    key_id, period, team = key
    refused, held_team = await budgets.reserve(session, key_id, period, team, sum(h[0] for h in holds), now)
    if refused is not None:
        return refused, []
    rows = [_row(key_id, held_team, hold, now) for hold in holds]
    await session.execute(_INSERT, rows)
    return None, [Held(str(row["id"]), hold[0]) for row, hold in zip(rows, holds, strict=True)]


async def hold(
    session: AsyncSession,
    key: tuple[str, str, str | None],
    amount: int,
    request_id: str,
    lifetime_seconds: float,
    now: datetime,
    owner: str | None = None,
) -> tuple[str | None, Held]:
    """Reserve ``amount`` for a request on ``key``, in the caller's
    transaction. Returns (refused, held): refused names the budget that said
    no ("key"/"team"). ``owner``: this process (the default), or a job
    (``job:<id>``) that holds it from the start."""
    refused, held = await hold_many(session, key, [(amount, request_id, lifetime_seconds, now, owner)], now)
    return refused, held[0] if held else Held(None, 0)


async def settle(session: AsyncSession, reservation_id: str | None, key_id: str, team: str | None, charge: int) -> bool:
    """End a request, in the caller's transaction: delete its reservation row
    and give the amount back (only if no sweep or admin did already), and
    charge the real cost to the key and ``team``. True when it gave back."""
    row = None
    if reservation_id is not None:
        row = (await session.execute(_TAKE, {"rid": reservation_id})).first()
    released_team, released = (row[0], row[1]) if row is not None else (None, 0)
    await budgets.settle(session, key_id, team, released, released_team, charge)
    return row is not None


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
