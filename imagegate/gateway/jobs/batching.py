"""Group commit: calls made while a batch is being written go in the next one.

A burst of small writes, one transaction each, queues on the database
(SQLite's one writer; every transaction's fixed cost). :class:`GroupCommit`
hands ``write`` every item waiting when it starts (up to ``max_batch``) and
answers each caller with its own outcome, so the callers see one call each
and the database sees few transactions. Used for job submissions
(intake.py) and for marking claimed jobs started (execute.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# What ``write`` answers for each item, in order: its result, or the exception that refused it.
Write = Callable[[list[T]], Awaitable[list[R | Exception]]]


class GroupCommit(Generic[T, R]):
    def __init__(self, write: Write[T, R], max_batch: int = 256) -> None:
        self._write = write
        self.max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """``item`` written with those waiting with it: its outcome (raised
        when it is an exception). Cancelling the caller does not cancel the
        write; a failure of the whole write is every item's."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_all())
        return await asyncio.shield(future)

    async def aclose(self) -> None:
        """Wait until everything submitted is written."""
        while self._writer is not None and not self._writer.done():
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _write_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            try:
                outcomes = await self._write([item for item, _ in batch])
            except Exception as exc:  # the write failed as a whole: every one of them
                outcomes = [exc] * len(batch)
            except BaseException:  # this task was cancelled (the loop is closing): nothing more is written
                stopped = RuntimeError("the server stopped before this was written")
                for _, future in [*batch, *self._waiting]:
                    if not future.done():
                        future.set_exception(stopped)
                self._waiting = []
                raise
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
