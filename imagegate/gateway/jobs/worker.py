"""A replica's job workers: claim, lease, heartbeat, run.

Up to ``jobs.workers`` jobs run at once in this process, each in its own
task. The claim loop takes jobs when a slot is free: at once when this
process accepted one (:meth:`JobWorkers.wake`), else every
``jobs.poll_seconds`` (jittered, so replicas do not poll in step; an idle
poll is one indexed query). The heartbeat renews this process's leases every
third of ``jobs.lease_seconds`` and acts on what it reads back: a job
whose cancellation was asked is cancelled; a job no longer ours (we stalled
past the lease and another replica took it over) is dropped without
writing anything.

A graceful stop lets running jobs finish for ``jobs.drain_seconds``, then
cancels the rest and hands them back: those that never reached the upstream
return to the queue, the others' leases end at once (a takeover fails them
``job_interrupted``, uncharged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from imagegate.config import JobsConfig
from imagegate.db.engine import Database
from imagegate.gateway.jobs import store
from imagegate.gateway.jobs.execute import JobExecutor
from imagegate.gateway.jobs.store import Claimed

log = logging.getLogger("imagegate.jobs")


class JobWorkers:
    def __init__(self, db: Database, executor: JobExecutor, config: JobsConfig, me: str) -> None:
        self.db = db
        self.executor = executor
        self.config = config
        self.me = me
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    def wake(self) -> None:
        """A job was accepted: look now, not at the next poll."""
        self._wake.set()

    def runs(self, job_id: str) -> bool:
        return job_id in self._tasks

    def cancel(self, job_id: str, reason: str) -> bool:
        """Cancel the task running ``job_id`` here (``reason``: cancel, lost, shutdown)."""
        task = self._tasks.get(job_id)
        if task is None or task.done():
            return False
        self.executor.cancel_reasons.setdefault(job_id, reason)
        task.cancel()
        return True

    async def start(self) -> None:
        if self.config.workers == 0:
            return
        host = self.me.rsplit(":", 2)[0]
        ended = await store.end_leases_of_gone_processes(self.db, host)
        if ended:
            log.warning("%d job(s) of a stopped process on this host are taken over now", ended)
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="imagegate-jobs-claim"),
            asyncio.create_task(self._heartbeat(), name="imagegate-jobs-heartbeat"),
        ]

    # -- claiming ---------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before looking: a wake-up from now on ends the wait below
            free = self.config.workers - len(self._tasks)
            claimed: list[Claimed] = []
            if free > 0:
                try:
                    claimed = await store.claim(self.db, self.me, self.config.lease_seconds, free, list(self._tasks))
                except Exception as exc:  # the database is away: try again at the next poll
                    log.warning("claiming jobs failed: %s", exc)
                for job in claimed:
                    self._spawn(job)
                if len(claimed) == free:
                    continue  # there may be more
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.poll_seconds * random.uniform(0.8, 1.2)):
                    await self._wake.wait()

    def _spawn(self, job: Claimed) -> None:
        task = asyncio.create_task(self._run(job), name=f"imagegate-job-{job.id}")
        self._tasks[job.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._tasks.pop(job.id, None)
            self.executor.cancel_reasons.pop(job.id, None)
            self._wake.set()  # a slot is free

        task.add_done_callback(done)

    async def _run(self, job: Claimed) -> None:
        try:
            await self.executor.run(job)
        except asyncio.CancelledError:
            raise
        except Exception:  # the database went away mid-way: the lease lapses and a takeover finishes it
            log.exception("job %s stopped on an error; it is taken over when its lease lapses", job.id)

    # -- leases -----------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.lease_seconds / 3)
            ids = list(self._tasks)
            if not ids:
                continue
            try:
                ours, cancels = await store.renew(self.db, self.me, ids, self.config.lease_seconds)
            except Exception as exc:
                log.warning("renewing job leases failed: %s", exc)
                continue
            for job_id in ids:
                if job_id not in ours and self.cancel(job_id, "lost"):
                    log.warning("job %s: its lease was taken over by another server; stopped here", job_id)
            for job_id in cancels:
                self.cancel(job_id, "cancel")

    # -- stopping ---------------------------------------------------------------------

    async def aclose(self) -> None:
        self._stopping = True
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        if self._tasks and self.config.drain_seconds > 0:
            await asyncio.wait(list(self._tasks.values()), timeout=self.config.drain_seconds)
        left = list(self._tasks)
        for job_id in left:
            self.cancel(job_id, "shutdown")
        if left:
            await asyncio.gather(*[t for t in list(self._tasks.values())], return_exceptions=True)
        await self.executor.drain()
        try:
            await store.hand_back(self.db, self.me, left)
        except Exception as exc:  # their leases lapse instead
            log.warning("handing back %d job(s) failed: %s", len(left), exc)
