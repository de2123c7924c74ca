"""Keep-alives: a stream's items merged with an idle ticker.

A proxy or CDN in front of the gateway cuts a connection on which nothing
flows for a while (Cloudflare answers 524 after 100 s), while the upstream
still works, and bills. :func:`ticking` yields a source's items and, each
time ``every`` seconds pass with none, ``None``: the caller's turn to send
something (a stream writes the comment line ``: keep-alive``). The timer
starts again after every item and every tick, so a tick comes only when
nothing at all was sent for ``every`` seconds.

One task at a time waits for the source's next item (:func:`asyncio.wait`
with a timeout), and a tick leaves it waiting: nothing is lost, repeated or
reordered, and nothing runs between items (no polling). Closing the merged
iterator (the client went away, the consumer stopped) cancels that task and
then closes the source, so the work under it (an upstream call, the request's
settlement) unwinds as it would have without the ticker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

from imagegate.contract.responses import KeepAlive

T = TypeVar("T")

# The comment line a stream sends when nothing else was sent for a while.
IDLE = KeepAlive("keep-alive")

# Closings under way: held here so that a consumer cancelled while it waits
# for one (anyio cancels at every await) cannot leave it unreferenced.
_closing: set[asyncio.Task[None]] = set()


class _End:
    """The source has no more items."""


_END = _End()


async def _next(source: AsyncIterator[T]) -> T | _End:
    try:
        return await anext(source)
    except StopAsyncIteration:  # a task must not end with it: a value says so instead
        return _END


async def ticking(source: AsyncIterator[T], every: float) -> AsyncGenerator[T | None, None]:
    """``source``'s items, and ``None`` whenever ``every`` seconds pass
    without one; the source's error, when it fails, ends it. Closing it
    (``aclose``, or cancelling its consumer) cancels the pending wait and
    closes ``source`` (its ``aclose``, when it has one)."""
    waiting: asyncio.Task[T | _End] | None = None
    try:
        while True:
            if waiting is None:
                waiting = asyncio.ensure_future(_next(source))
            done, _ = await asyncio.wait((waiting,), timeout=every)
            if not done:
                yield None
                continue
            finished, waiting = waiting, None
            item = finished.result()  # raises what the source raised
            if isinstance(item, _End):
                return
            yield item
    finally:
        await _close(waiting, source)


async def _close(waiting: asyncio.Task[T | _End] | None, source: AsyncIterator[T]) -> None:
    """Cancel ``waiting`` and let it unwind, then close ``source``: in a task
    of its own, shielded, so a consumer that is cancelled again while it
    waits for this cannot cut it short."""

    async def close() -> None:
        if waiting is not None:
            waiting.cancel()
            await asyncio.wait((waiting,))
            if not waiting.cancelled():
                waiting.exception()  # seen: not reported as "never retrieved"
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()

    task = asyncio.ensure_future(close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    await asyncio.shield(task)
