"""Dynamic batching for one model: a bounded queue of requests, each waiting
at most ``max_wait`` for companions with the same settings, run together as
one pipeline call of at most ``max_batch_size`` images.

Pure asyncio; what a batch *does* is the ``run`` callable. The rules:

* jobs are taken in arrival order; a batch is the oldest waiting job plus
  the later ones with the same ``key`` that fit (callers split what is larger
  than ``max_batch_size``; a job is never split here);
* the oldest job waits at most ``max_wait`` from its arrival; a full batch
  goes at once, and jobs arriving while a batch runs form the next one;
* more than ``max_queue`` waiting jobs: :class:`QueueFull` with a retry
  estimate from recent batch times;
* a job whose caller went away (its future cancelled) is dropped from the
  queue at once; a running batch is told through ``Batch.abandoned``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"queue full, retry after {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class Job:
    key: Hashable  # jobs with equal keys may share a pipeline call
    images: int
    payload: Any
    future: asyncio.Future[Any]
    arrived: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Batch:
    jobs: list[Job]

    @property
    def payloads(self) -> list[Any]:
        return [job.payload for job in self.jobs]

    def abandoned(self) -> bool:
        """Every caller of this batch has gone (safe to read from a worker thread)."""
        return all(job.future.cancelled() for job in self.jobs)


@dataclass
class Stats:
    requests: int = 0
    images: int = 0
    batches: int = 0  # pipeline calls
    largest_batch: int = 0  # images in the largest call
    dropped: int = 0  # callers gone while queued
    rejected: int = 0  # queue full
    failed_batches: int = 0


class Batcher:
    def __init__(
        self,
        run: Callable[[Batch], Awaitable[Sequence[Any]]],
        *,
        max_batch_size: int,
        max_wait: float,
        max_queue: int,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.max_queue = max_queue
        self._pending: deque[Job] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._batch_seconds = 0.0  # moving average of recent batch times
        self.running = 0  # images in the batch now running
        self.stats = Stats()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained enough to take a job."""
        queued_images = sum(job.images for job in self._pending)
        batches_ahead = math.ceil(queued_images / self.max_batch_size) + 1
        return max(1.0, math.ceil(batches_ahead * (self._batch_seconds or 1.0)))

    async def submit(self, key: Hashable, images: int, payload: Any) -> Any:
        """Queue a job and wait for its result; cancelling the caller drops it."""
        if len(self._pending) >= self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(self.retry_after())
        job = Job(key, images, payload, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self.stats.requests += 1
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="imagegate-batcher")
        try:
            return await job.future
        except asyncio.CancelledError:
            if job in self._pending:  # never started: forget it now
                self._pending.remove(job)
                self.stats.dropped += 1
            raise

    def _select(self, first: Job) -> list[Job]:
        batch, images = [first], first.images
        for job in self._pending:
            if job is not first and job.key == first.key and images + job.images <= self.max_batch_size:
                batch.append(job)
                images += job.images
        return batch

    async def _gather(self) -> list[Job] | None:
        """The next batch, once it is full or its oldest job has waited long enough."""
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self._pending[0]
            batch = self._select(first)
            remaining = first.arrived + self.max_wait - time.monotonic()
            if sum(job.images for job in batch) >= self.max_batch_size or remaining <= 0:
                return batch
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                pass

    async def _work(self) -> None:
        while True:
            jobs = await self._gather()
            if not jobs:
                continue
            for job in jobs:
                self._pending.remove(job)
            await self._execute(Batch(jobs))

    async def _execute(self, batch: Batch) -> None:
        images = sum(job.images for job in batch.jobs)
        self.running = images
        started = time.monotonic()
        try:
            results = await self._run(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to each caller
            self.stats.failed_batches += 1
            for job in batch.jobs:
                if not job.future.done():
                    job.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("batch cancelled"))
            if not isinstance(exc, Exception):
                raise
        else:
            for job, result in zip(batch.jobs, results, strict=True):
                if not job.future.done():
                    if isinstance(result, Exception):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
        finally:
            self.running = 0
            elapsed = time.monotonic() - started
            self._batch_seconds = elapsed if not self._batch_seconds else 0.7 * self._batch_seconds + 0.3 * elapsed
            self.stats.batches += 1
            self.stats.images += images
            self.stats.largest_batch = max(self.stats.largest_batch, images)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for job in self._pending:
            job.future.cancel()
        self._pending.clear()
