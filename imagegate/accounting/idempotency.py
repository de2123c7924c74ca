"""Idempotency keys: a retried request with the same key and body gets the
first result again (no second generation, no second charge); the same key
with a different body is a 409.

Keys are scoped per caller (a database key, a static key, the master key,
or an anonymous caller's address), so one caller never gets another's
result; the fingerprint covers the body and the virtual key.

A key is claimed by inserting its row (the primary key makes the claim
atomic across replicas) with an owner process and a lease (the request's
deadline). While the first request runs, a retry waits for it; a failed
first request releases the key so a retry runs afresh. A claim whose lease
has ended, or whose owner process is known to be gone (a crash, a restart),
is taken over by the next retry and cleared by the sweep. Completed results
are kept for ``TTL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from imagegate.accounting.owner import is_gone, this_process
from imagegate.db.engine import Database, rowcount
from imagegate.db.models import IdempotencyRecord, aware, utcnow
from imagegate.errors import ImagegateError

TTL_SECONDS = 24 * 3600
POLL_SECONDS = 0.2
LEASE_MARGIN_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    headers: dict[str, str]
    body: bytes


class Conflict(ImagegateError):
    status = 409
    type = "invalid_request_error"
    default_code = "idempotency_key_reused"


class IdempotencyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim(self, scope: str, key: str, fingerprint: str, wait_seconds: float, lease_seconds: float) -> Replay | None:
        """None: the key is ours, run the request. A Replay: it ran already.
        Waits while another live request holds the key; raises Conflict for
        a different body."""
        deadline = time.monotonic() + wait_seconds
        while True:
            lease = utcnow() + timedelta(seconds=lease_seconds + LEASE_MARGIN_SECONDS)
            try:
                async with self._db.transaction() as session:
                    session.add(
                        IdempotencyRecord(
                            scope=scope,
                            key=key,
                            fingerprint=fingerprint,
                            done=False,
                            created_at=utcnow(),
                            owner=this_process(),
                            lease_expires_at=lease,
                        )  # fmt: skip
                    )
                return None
            except IntegrityError:
                pass
            async with self._db.read() as session:
                row = await session.get(IdempotencyRecord, (scope, key))
                if row is None:
                    continue  # released in between: try to claim again
                if row.fingerprint != fingerprint:
                    raise Conflict("This Idempotency-Key was used with a different request body.", param="Idempotency-Key")
                if row.done:
                    return Replay(row.status or 200, dict(row.headers or {}), row.body or b"")
                holder, until = row.owner, row.lease_expires_at
            if _abandoned(holder, until) and await self._take_over(scope, key, holder, lease):
                return None
            if time.monotonic() > deadline:
                raise Conflict(
                    "A request with this Idempotency-Key is still running.",
                    param="Idempotency-Key",
                    code="idempotency_key_in_use",
                )
            await asyncio.sleep(POLL_SECONDS)

    async def _take_over(self, scope: str, key: str, holder: str | None, lease: datetime) -> bool:
        """Claim a pending key whose holder is gone; only one retry wins."""
        async with self._db.transaction() as session:
            result = await session.execute(
                update(IdempotencyRecord)
                .where(
                    IdempotencyRecord.scope == scope,
                    IdempotencyRecord.key == key,
                    IdempotencyRecord.done.is_(False),
                    IdempotencyRecord.owner.is_(None) if holder is None else IdempotencyRecord.owner == holder,
                )
                .values(owner=this_process(), lease_expires_at=lease, created_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return rowcount(result) == 1

    async def complete(self, scope: str, key: str, status: int, headers: dict[str, str], body: bytes) -> None:
        async with self._db.transaction() as session:
            row = await session.get(IdempotencyRecord, (scope, key))
            if row is not None:
                row.done, row.status, row.headers, row.body = True, status, headers, body

    async def release(self, scope: str, key: str) -> None:
        async with self._db.transaction() as session:
            await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.scope == scope, IdempotencyRecord.key == key))

    async def sweep(self) -> None:
        """Forget results past their TTL and pending claims whose lease ended
        or whose process is gone."""
        now = utcnow()
        cutoff = now - timedelta(seconds=TTL_SECONDS)
        host = this_process().rsplit(":", 2)[0]
        async with self._db.transaction() as session:
            await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff))
            await session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.done.is_(False),
                    or_(IdempotencyRecord.lease_expires_at.is_(None), IdempotencyRecord.lease_expires_at < now),
                )
            )
        async with self._db.read() as session:
            mine = (
                await session.execute(
                    select(IdempotencyRecord.scope, IdempotencyRecord.key, IdempotencyRecord.owner).where(
                        and_(IdempotencyRecord.done.is_(False), IdempotencyRecord.owner.like(f"{host}:%"))
                    )
                )
            ).all()
        for scope, key, owner in mine:
            if owner is not None and is_gone(owner):
                async with self._db.transaction() as session:
                    await session.execute(
                        delete(IdempotencyRecord).where(
                            IdempotencyRecord.scope == scope,
                            IdempotencyRecord.key == key,
                            IdempotencyRecord.owner == owner,
                            IdempotencyRecord.done.is_(False),
                        )  # fmt: skip
                    )


def _abandoned(owner: str | None, lease_expires_at: datetime | None) -> bool:
    if lease_expires_at is None or aware(lease_expires_at) < utcnow():
        return True
    return owner is not None and is_gone(owner)
