"""The keep-alive ticker (``gateway.keepalive.ticking``): a source's items in
order, a tick whenever nothing came for a while, the source's error, and a
close that cancels the pending wait and closes the source, leaving no task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

import pytest

from imagegate.contract.responses import KeepAlive
from imagegate.gateway.keepalive import ticking
from imagegate.gateway.runner import OpenedStream

T = TypeVar("T")
EVERY = 0.05


def _run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(make(), 10))


async def _slow(gaps: list[float], log: list[str], fail: Exception | None = None) -> AsyncGenerator[int, None]:
    """Items 0, 1, ... each after its gap; the ``log`` says how it ended."""
    try:
        for i, gap in enumerate(gaps):
            await asyncio.sleep(gap)
            yield i
        if fail is not None:
            raise fail
        log.append("ended")
    except asyncio.CancelledError:
        log.append("cancelled")
        raise
    except GeneratorExit:
        log.append("closed")
        raise


def test_items_come_in_order_with_a_tick_for_each_idle_period() -> None:
    async def go() -> tuple[list[int | None], list[float], list[str]]:
        log: list[str] = []
        got: list[int | None] = []
        times: list[float] = []
        start = time.monotonic()
        async for item in ticking(_slow([0, 0, 4.5 * EVERY, 0], log), EVERY):
            got.append(item)
            times.append(time.monotonic() - start)
        return got, times, log

    got, times, log = _run(go)
    assert got == [0, 1, None, None, None, None, 2, 3], got
    assert log == ["ended"]
    ticks = [t for item, t in zip(got, times, strict=True) if item is None]
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert all(0.6 * EVERY < g < 3 * EVERY for g in gaps), gaps  # one tick per period, none in a burst


def test_an_item_restarts_the_idle_timer() -> None:
    async def go() -> list[int | None]:
        log: list[str] = []
        return [item async for item in ticking(_slow([0.6 * EVERY] * 5, log), EVERY)]

    assert _run(go) == [0, 1, 2, 3, 4]  # never idle for a whole period: no tick


def test_the_sources_error_ends_it_after_the_items_before_it() -> None:
    async def go() -> tuple[list[int | None], list[str]]:
        log: list[str] = []
        got: list[int | None] = []
        with pytest.raises(ValueError, match="upstream broke"):
            async for item in ticking(_slow([0, 2.5 * EVERY], log, ValueError("upstream broke")), EVERY):
                got.append(item)
        return got, log

    got, log = _run(go)
    assert got == [0, None, None, 1]


def test_closing_it_while_it_waits_cancels_the_wait_and_closes_the_source() -> None:
    async def go() -> tuple[list[str], set[asyncio.Task[object]]]:
        log: list[str] = []
        before = asyncio.all_tasks()
        merged = ticking(_slow([0, 60], log), EVERY)
        assert await anext(merged) == 0
        assert await anext(merged) is None  # the source is waiting on its next item
        await merged.aclose()
        return log, asyncio.all_tasks() - before  # none left running: the wait and the closing ended

    log, left = _run(go)
    assert log == ["cancelled"]  # the pending anext was cancelled inside the source
    assert left == set()


def test_cancelling_its_consumer_cancels_the_source() -> None:
    async def go() -> list[str]:
        log: list[str] = []

        async def consume() -> None:
            async for _ in ticking(_slow([60], log), EVERY):
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(3 * EVERY)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return log

    assert _run(go) == ["cancelled"]


def test_closing_it_before_the_source_started_closes_the_source() -> None:
    class Source:
        """An iterator whose aclose must be called even when it was never iterated."""

        closed = False

        def __aiter__(self) -> Source:
            return self

        async def __anext__(self) -> int:
            await asyncio.sleep(60)
            return 1

        async def aclose(self) -> None:
            self.closed = True

    async def go() -> bool:
        source = Source()
        merged = ticking(source, EVERY)
        waiting = asyncio.ensure_future(anext(merged))
        await asyncio.sleep(0)  # the merged iterator started its wait; the source's step may not have
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return source.closed

    assert _run(go) is True


def test_a_stream_closed_before_its_events_started_is_settled_once() -> None:
    """The runner's OpenedStream: closed unstarted (a wait cancelled before
    its first step ran), it settles the request itself; once iterated, its
    events settle it (the runner's do, on every way out) and closing adds nothing."""

    async def go() -> tuple[int, int]:
        settled: list[str] = []

        async def settle() -> None:
            settled.append("cancelled")

        async def events() -> AsyncGenerator[KeepAlive, None]:
            yield KeepAlive("x")

        unstarted = OpenedStream(0, settle)
        unstarted.events = events()
        await unstarted.aclose()
        await unstarted.aclose()  # once only
        first = len(settled)

        started = OpenedStream(0, settle)
        started.events = events()
        assert [e async for e in ticking(started, EVERY)] == [KeepAlive("x")]
        await started.aclose()
        return first, len(settled)

    assert _run(go) == (1, 1)
