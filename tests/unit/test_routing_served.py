"""The router's result: the attempt's value as it was typed, what served it,
and a concurrency slot held for a stream until ``async with served`` ends."""

from __future__ import annotations

import asyncio

import pytest

from imagegate.config import RoutingConfig
from imagegate.contract import catalog
from imagegate.contract.requests import GenerationFields, ImageRequest
from imagegate.contract.results import Deployment
from imagegate.errors import InvalidRequestError
from imagegate.gateway.routing import Leg, Pool, Served, Slot, execute

POLICY = RoutingConfig(backoff_initial_seconds=0, deadline_seconds=5)


def _leg() -> tuple[Leg, Slot]:
    spec = catalog.lookup("gpt-image-1")
    assert spec is not None
    request = ImageRequest("generations", "gpt-image-1", spec, GenerationFields(prompt="a lighthouse"))
    slot = Slot(Deployment("upstream", "gpt-image-1"), 1.0, asyncio.Semaphore(1), 1)
    return Leg(request, Pool([slot], POLICY), frozenset()), slot


async def _answer(request: ImageRequest, deployment: Deployment) -> tuple[str, int]:
    return deployment.model, len(request.params.prompt or "")


def test_served_carries_the_value_and_what_served_it() -> None:
    async def go() -> tuple[Served[tuple[str, int]], int]:
        leg, slot = _leg()
        served = await execute([leg], _answer, POLICY)
        return served, slot.in_flight

    served, in_flight = asyncio.run(go())
    model, length = served.value  # typed as the attempt returned it: tuple[str, int]
    assert (model, length) == ("gpt-image-1", len("a lighthouse"))
    assert (served.model, served.provider, served.attempts) == ("gpt-image-1", "upstream", 1)
    assert served.headers() == {
        "x-imagegate-model": "gpt-image-1",
        "x-imagegate-attempts": "1",
        "x-imagegate-provider": "upstream",
    }
    assert in_flight == 0, "without hold the slot is given back at once"


def test_a_held_slot_is_released_when_async_with_ends() -> None:
    async def go() -> list[int]:
        leg, slot = _leg()
        seen = []
        served = await execute([leg], _answer, POLICY, hold=True)
        seen.append(slot.in_flight)
        async with served:
            seen.append(slot.in_flight)
            # The slot (max_concurrency 1) is taken: another request waits for it.
            waiting = asyncio.ensure_future(execute([leg], _answer, POLICY))
            await asyncio.sleep(0.05)
            seen.append(int(waiting.done()))
        seen.append(slot.in_flight)
        await waiting  # it gets the slot once the stream let go
        await served.release()  # a second release is a no-op
        seen.append(slot.in_flight)
        return seen

    assert asyncio.run(go()) == [1, 1, 0, 0, 0]


def test_a_failed_attempt_gives_its_slot_back() -> None:
    async def refuse(request: ImageRequest, deployment: Deployment) -> str:
        raise InvalidRequestError("no", param="prompt")

    async def go() -> int:
        leg, slot = _leg()
        with pytest.raises(InvalidRequestError) as caught:
            await execute([leg], refuse, POLICY, hold=True)
        assert caught.value.headers["x-imagegate-provider"] == "upstream"
        return slot.in_flight

    assert asyncio.run(go()) == 0


@pytest.mark.parametrize(
    ("header", "seconds"), [("7", 7.0), ("1e12", 3600.0), ("inf", None), ("nan", None), ("-5", 0.0), ("soon", None)]
)
def test_an_upstreams_retry_after_is_finite_and_benches_a_deployment_for_at_most_an_hour(
    header: str, seconds: float | None
) -> None:
    from imagegate.errors import ImagegateError
    from imagegate.gateway.routing import retry_after

    assert retry_after(ImagegateError("slow down", status=429, headers={"Retry-After": header})) == seconds
