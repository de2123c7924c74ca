"""gateway/jobs/batching.py: calls made while a batch is written share the next one."""

from __future__ import annotations

import asyncio

import pytest

from imagegate.gateway.jobs.batching import GroupCommit


def test_calls_made_during_a_write_share_the_next_and_each_gets_its_own_outcome() -> None:
    writes: list[list[int]] = []

    async def write(items: list[int]) -> list[int | Exception]:
        writes.append(items)
        await asyncio.sleep(0.05)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    async def go() -> list[int | BaseException]:
        batches: GroupCommit[int, int] = GroupCommit(write)
        first = asyncio.ensure_future(batches.submit(0))
        await asyncio.sleep(0.01)  # the first write is under way
        rest = [asyncio.ensure_future(batches.submit(i)) for i in range(1, 6)]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    answers = asyncio.run(go())
    assert writes == [[0], [1, 2, 3, 4, 5]]
    assert [a if isinstance(a, int) else str(a) for a in answers] == [0, "odd 1", 20, "odd 3", 40, "odd 5"]


def test_a_failed_write_is_every_items_and_the_next_batch_still_runs() -> None:
    async def write(items: list[str]) -> list[str | Exception]:
        if "boom" in items:
            raise OSError("the database went away")
        return [s.upper() for s in items]

    async def go() -> tuple[list[str | BaseException], str]:
        batches: GroupCommit[str, str] = GroupCommit(write, max_batch=2)
        failed = await asyncio.gather(*(batches.submit(s) for s in ("boom", "a")), return_exceptions=True)
        return failed, await batches.submit("b")

    failed, later = asyncio.run(go())
    assert [type(e) for e in failed] == [OSError, OSError]
    assert later == "B"


def test_a_cancelled_writer_fails_what_waits_instead_of_leaving_it_hanging() -> None:
    started = asyncio.Event()

    async def write(items: list[int]) -> list[int | Exception]:
        started.set()
        await asyncio.sleep(60)
        return list(items)

    async def go() -> None:
        batches: GroupCommit[int, int] = GroupCommit(write)
        first = asyncio.ensure_future(batches.submit(1))
        await started.wait()
        second = asyncio.ensure_future(batches.submit(2))  # waits for the next batch
        await asyncio.sleep(0)
        assert batches._writer is not None
        batches._writer.cancel()
        for waiting in (first, second):
            with pytest.raises(RuntimeError, match="stopped"):
                await asyncio.wait_for(waiting, 2)
        await batches.aclose()

    asyncio.run(go())


def test_cancelling_a_caller_does_not_cancel_its_write() -> None:
    written: list[int] = []

    async def write(items: list[int]) -> list[int | Exception]:
        await asyncio.sleep(0.05)
        written.extend(items)
        return list(items)

    async def go() -> None:
        batches: GroupCommit[int, int] = GroupCommit(write)
        caller = asyncio.ensure_future(batches.submit(7))
        await asyncio.sleep(0.01)
        caller.cancel()
        await batches.aclose()

    asyncio.run(go())
    assert written == [7]
