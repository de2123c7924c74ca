"""Idempotency keys: a retried request with the same key and body gets the
first result again (no second generation, no second charge); the same key
with a different body is a 409.

A key is claimed by inserting its row (the primary key makes the claim
atomic across replicas). While the first request runs, a retry waits for it;
a failed first request releases the key so a retry runs afresh. Completed
results are kept for ``TTL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from imagegate.db.engine import Database
from imagegate.db.models import IdempotencyRecord, utcnow
from imagegate.errors import ImagegateError

TTL_SECONDS = 24 * 3600
POLL_SECONDS = 0.2


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

    async def claim(self, scope: str, key: str, fingerprint: str, wait_seconds: float) -> Replay | None:
        """None: the key is ours, run the request. A Replay: it ran already.
        Waits while another request holds the key; raises Conflict for a
        different body."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                async with self._db.transaction() as session:
                    session.add(IdempotencyRecord(scope=scope, key=key, fingerprint=fingerprint, done=False, created_at=utcnow()))
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
            if time.monotonic() > deadline:
                raise Conflict(
                    "A request with this Idempotency-Key is still running.",
                    param="Idempotency-Key",
                    code="idempotency_key_in_use",
                )
            await asyncio.sleep(POLL_SECONDS)

    async def complete(self, scope: str, key: str, status: int, headers: dict[str, str], body: bytes) -> None:
        async with self._db.transaction() as session:
            row = await session.get(IdempotencyRecord, (scope, key))
            if row is not None:
                row.done, row.status, row.headers, row.body = True, status, headers, body

    async def release(self, scope: str, key: str) -> None:
        async with self._db.transaction() as session:
            await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.scope == scope, IdempotencyRecord.key == key))

    async def sweep(self) -> None:
        cutoff = utcnow() - timedelta(seconds=TTL_SECONDS)
        async with self._db.transaction() as session:
            await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff))
