"""The sweeper: housekeeping every ``storage.sweep_interval_seconds``.

Each pass deletes hosted images whose URLs have expired (and the oldest over
``storage.max_gb``), forgets idempotency records past their time, ends
queued jobs past their queue time and deletes finished ones past their
results' lifetime, and lets
accounting apply journaled settlements and drop stale reservations. Each
sweep runs on its own: one failing (a storage error every pass) never stops
the others, and costs one log line per pass, not a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from imagegate.storage.base import Storage

log = logging.getLogger("imagegate.gateway")


class Sweeps(Protocol):
    async def sweep(self) -> None: ...


class Housekeeps(Protocol):
    async def housekeeping(self) -> None: ...


class Sweeper:
    def __init__(
        self, storage: Storage, keep_seconds: float, idempotency: Sweeps, accounting: Housekeeps, interval_seconds: float
    ) -> None:
        self.storage = storage
        self.keep_seconds = keep_seconds  # how long a hosted image stays: its URL's lifetime
        self.idempotency = idempotency
        self.accounting = accounting
        self.interval_seconds = interval_seconds
        self.jobs: Sweeps | None = None  # asynchronous jobs (gateway/jobs/), set by the service

    async def forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            await self.once()

    async def once(self) -> None:
        """One pass of the sweeper."""
        try:
            removed = await self.storage.sweep(time.time() - self.keep_seconds)
            if removed:
                log.info("swept %d image(s): expired, or the oldest over storage.max_gb", removed)
        except Exception as exc:
            log.warning("sweeping expired images failed, retrying on the next sweep: %s", exc)
        try:
            await self.idempotency.sweep()
        except Exception as exc:
            log.warning("sweeping idempotency records failed, retrying on the next sweep: %s", exc)
        if self.jobs is not None:
            try:
                await self.jobs.sweep()
            except Exception as exc:
                log.warning("sweeping jobs failed, retrying on the next sweep: %s", exc)
        try:  # journaled settlements, stale budget reservations
            await self.accounting.housekeeping()
        except Exception as exc:
            log.warning("accounting housekeeping failed, retrying on the next sweep: %s", exc)
