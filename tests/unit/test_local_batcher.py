"""The per-model queue and dynamic batching, driven with a recording runner."""

from __future__ import annotations

import asyncio

import pytest

from imagegate.providers.local.batcher import Batch, Batcher, QueueFull


class Recorder:
    def __init__(self, delay: float = 0.0, gate: asyncio.Event | None = None) -> None:
        self.calls: list[list[str]] = []
        self.delay = delay
        self.gate = gate

    async def __call__(self, batch: Batch) -> list[str]:
        self.calls.append(list(batch.payloads))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        return [f"done:{p}" for p in batch.payloads]


def make(runner: Recorder, **kwargs) -> Batcher:
    return Batcher(runner, **{"max_batch_size": 4, "max_wait": 0.05, "max_queue": 100, **kwargs})


async def test_concurrent_compatible_jobs_share_one_call_and_results_go_back() -> None:
    runner = Recorder()
    batcher = make(runner)
    results = await asyncio.gather(*(batcher.submit("k", 1, f"p{i}") for i in range(3)))
    assert results == ["done:p0", "done:p1", "done:p2"]
    assert runner.calls == [["p0", "p1", "p2"]]
    await batcher.aclose()


async def test_keys_and_sizes_decide_what_shares_a_call() -> None:
    runner = Recorder()
    batcher = make(runner)
    jobs = [("a", 2, "a1"), ("b", 1, "b1"), ("a", 2, "a2"), ("a", 1, "a3"), ("b", 1, "b2")]
    await asyncio.gather(*(batcher.submit(k, n, p) for k, n, p in jobs))
    # oldest first; a3 does not fit after a1+a2 (4 images), so it waits for the next call
    assert runner.calls == [["a1", "a2"], ["b1", "b2"], ["a3"]]
    assert batcher.stats.batches == 3 and batcher.stats.largest_batch == 4 and batcher.stats.images == 7
    await batcher.aclose()


async def test_a_full_batch_goes_at_once_without_waiting() -> None:
    runner = Recorder()
    batcher = make(runner, max_wait=30)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit("k", 1, i) for i in range(4))), 5)
    assert len(results) == 4 and len(runner.calls) == 1
    await batcher.aclose()


async def test_a_lone_job_waits_at_most_max_wait() -> None:
    runner = Recorder()
    batcher = make(runner, max_wait=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await batcher.submit("k", 1, "x") == "done:x"
    assert 0.18 <= loop.time() - started < 2
    await batcher.aclose()


async def test_jobs_arriving_during_a_call_form_the_next_one() -> None:
    gate = asyncio.Event()
    runner = Recorder(gate=gate)
    batcher = make(runner, max_wait=0)
    first = asyncio.ensure_future(batcher.submit("k", 1, "first"))
    await asyncio.sleep(0.01)
    later = [asyncio.ensure_future(batcher.submit("k", 1, f"l{i}")) for i in range(3)]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(first, *later)
    assert runner.calls == [["first"], ["l0", "l1", "l2"]]
    await batcher.aclose()


async def test_a_full_queue_is_refused_with_a_retry_estimate() -> None:
    gate = asyncio.Event()
    batcher = make(Recorder(gate=gate), max_batch_size=1, max_wait=0, max_queue=2)
    running = asyncio.ensure_future(batcher.submit("k", 1, "running"))
    await asyncio.sleep(0.01)
    queued = [asyncio.ensure_future(batcher.submit("k", 1, f"q{i}")) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as err:
        await batcher.submit("k", 1, "refused")
    assert err.value.retry_after >= 1 and batcher.stats.rejected == 1
    gate.set()
    await asyncio.gather(running, *queued)
    await batcher.aclose()


async def test_a_caller_that_leaves_is_dropped_from_the_queue() -> None:
    gate = asyncio.Event()
    runner = Recorder(gate=gate)
    batcher = make(runner, max_batch_size=1, max_wait=0)
    running = asyncio.ensure_future(batcher.submit("k", 1, "running"))
    await asyncio.sleep(0.01)
    leaving = asyncio.ensure_future(batcher.submit("k", 1, "leaving"))
    staying = asyncio.ensure_future(batcher.submit("k", 1, "staying"))
    await asyncio.sleep(0.01)
    leaving.cancel()
    await asyncio.sleep(0.01)
    assert batcher.queued == 1 and batcher.stats.dropped == 1
    gate.set()
    await asyncio.gather(running, staying)
    assert runner.calls == [["running"], ["staying"]]
    await batcher.aclose()


async def test_a_running_batch_knows_when_all_its_callers_left() -> None:
    seen: list[bool] = []
    gate = asyncio.Event()

    async def run(batch: Batch) -> list[str]:
        seen.append(batch.abandoned())
        await gate.wait()
        seen.append(batch.abandoned())
        return ["x"] * len(batch.jobs)

    batcher = Batcher(run, max_batch_size=2, max_wait=0, max_queue=10)
    job = asyncio.ensure_future(batcher.submit("k", 1, "p"))
    await asyncio.sleep(0.01)
    job.cancel()
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.sleep(0.01)
    assert seen == [False, True]
    await batcher.aclose()


async def test_a_failing_call_fails_each_of_its_jobs_and_the_queue_goes_on() -> None:
    calls = 0

    async def run(batch: Batch) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("device lost")
        return ["ok"] * len(batch.jobs)

    batcher = Batcher(run, max_batch_size=2, max_wait=0.05, max_queue=10)
    results = await asyncio.gather(*(batcher.submit("k", 1, i) for i in range(2)), return_exceptions=True)
    assert [str(r) for r in results] == ["device lost", "device lost"]
    assert await batcher.submit("k", 1, "again") == "ok"
    assert batcher.stats.failed_batches == 1
    await batcher.aclose()
