"""Keep-alive streams (``server.keepalive_seconds``) through the real server.

Upstreams are stand-ins on loopback: the OpenAI stand-in behind the
``example`` provider (a plain JSON upstream: the gateway's default stream
runs, one image when the call returns) and behind the ``openai`` provider
(the upstream's own SSE stream), and the BFL stand-in (a job engine whose
progress comments already keep a stream alive). A raw SSE reader (httpx,
every chunk with the time it arrived) sees the exact ``: keep-alive`` lines;
the official ``openai`` SDK sees only the events.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from example_provider import ExampleProvider
from standin_bfl import KEY as BFL_KEY
from standin_bfl import BFLStandIn
from standin_openai import USAGE, Fault, OpenAIStandIn, png_of

from imagegate.providers import registry
from support import SIGNING_KEY, Running, admin, decode_b64, run_server

EVERY = 0.3  # server.keepalive_seconds here
KEEP_ALIVE = b": keep-alive\n\n"
MASTER = "master-key-for-the-keepalive-tests-01"
UPSTREAM_KEY = "example-upstream-key-0123456789"
NOTHING = (Decimal(0), Decimal(0))  # spent, reserved
REFUSAL = {"error": {"message": "The prompt was refused.", "type": "invalid_request_error", "param": "prompt", "code": "refused"}}


@pytest.fixture(scope="module")
def oa() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as up:
        yield up


@pytest.fixture(scope="module")
def bfl() -> Iterator[BFLStandIn]:
    with BFLStandIn() as up:
        yield up


@pytest.fixture(scope="module")
def gw(oa: OpenAIStandIn, bfl: BFLStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    registry.register(ExampleProvider.type_name, "example_provider:ExampleProvider")
    plain = {"provider": "ex", "model": "example-1", "max_concurrency": 1}
    once = {"max_attempts": 1, "backoff_initial_seconds": 0.01}
    cfg = {
        "server": {"keepalive_seconds": EVERY},
        "auth": {"master_key": MASTER},
        "storage": {"signing_key": SIGNING_KEY},
        "providers": {
            "ex": {"type": "example", "base_url": oa.base_url, "api_key": UPSTREAM_KEY},
            "oa": {"type": "openai", "base_url": oa.base_url, "api_key": "sk-upstream-secret"},
            # the first poll comes after 0.7 s: the idle ticker speaks before the job's own progress
            "bfl": {
                "type": "bfl",
                "base_url": bfl.base_url,
                "api_key": BFL_KEY,
                "poll_initial_seconds": 0.7,
                "poll_max_seconds": 0.7,
            },  # fmt: skip
        },
        "models": {
            # gpt-image-1's rules (they take stream=true) on a plain JSON upstream
            "plain": {"rules": "gpt-image-1", "deployments": [plain], "routing": once},
            "plain-twice": {"rules": "gpt-image-1", "deployments": [plain], "routing": {**once, "max_attempts": 2}},
            "plain-short": {"rules": "gpt-image-1", "deployments": [plain], "routing": {**once, "deadline_seconds": 1.0}},
            "gpt-image-1": {"deployments": [{"provider": "oa"}], "routing": once},
            "flux-kontext-pro": {"deployments": [{"provider": "bfl"}], "routing": once},
        },
    }
    try:
        with run_server(cfg, tmp_path_factory.mktemp("keepalive")) as running:
            yield running
    finally:
        registry.unregister(ExampleProvider.type_name)


@pytest.fixture
def up(oa: OpenAIStandIn) -> OpenAIStandIn:
    oa.reset()
    oa.aborted = 0
    return oa


@pytest.fixture
def key(gw: Running) -> dict[str, Any]:
    """A key with a budget: what it has reserved and spent is read back through the admin API."""
    r = admin(gw.base_url, MASTER, "POST", "/admin/keys", json={"name": "keepalive", "budget_usd": 100})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _money(gw: Running, key: dict[str, Any]) -> tuple[Decimal, Decimal]:  # (spent, reserved)
    view = admin(gw.base_url, MASTER, "GET", f"/admin/keys/{key['id']}").json()
    return Decimal(view["spent_usd"]), Decimal(view["reserved_usd"])


def _wait_until(check: Any, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- a raw SSE reader ---------------------------------------------------------------


@dataclass
class Read:
    status: int
    headers: httpx.Headers
    chunks: list[tuple[float, bytes]]  # (seconds since the request was sent, bytes as they came)

    @property
    def body(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)

    def keep_alives(self) -> list[float]:
        """When each ``: keep-alive`` comment arrived (each is a write of its own)."""
        return [t for t, chunk in self.chunks if chunk == KEEP_ALIVE]

    def first_event_at(self) -> float:
        return next(t for t, chunk in self.chunks if chunk.startswith(b"event: "))

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for block in self.body.decode().split("\n\n"):
            lines = block.split("\n")
            if lines[0].startswith("event: "):
                found.append((lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))))
        return found

    def comments(self) -> list[str]:
        return [block for block in self.body.decode().split("\n\n") if block.startswith(":")]


def _stream(gw: Running, body: dict[str, Any], secret: str) -> Read:
    headers = {"Authorization": f"Bearer {secret}"}
    start = time.monotonic()
    with httpx.stream("POST", f"{gw.base_url}/v1/images/generations", json=body, headers=headers, timeout=30) as r:
        chunks = [(time.monotonic() - start, chunk) for chunk in r.iter_raw()]
        return Read(r.status_code, r.headers, chunks)


def _body(model: str = "plain", **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "a lighthouse", "size": "1024x1024", "stream": True, **extra}


def _image_of(data: dict[str, Any], size: tuple[int, int] = (1024, 1024)) -> None:
    image = decode_b64(data["b64_json"])
    assert (image.format, image.size, image.mode) == ("PNG", size, "RGB")


# -- keep-alives before the first event, and between events -------------------------


def test_a_slow_first_image_is_preceded_by_a_keep_alive_each_period(gw: Running, up: OpenAIStandIn, key: dict[str, Any]) -> None:
    up.script.append(Fault("slow", seconds=1.4))
    read = _stream(gw, _body(), key["key"])
    assert read.status == 200 and read.headers["content-type"].startswith("text/event-stream")
    assert read.headers["cache-control"] == "no-cache" and "x-imagegate-cost-reserved-usd" in read.headers
    assert "x-imagegate-provider" not in read.headers  # answered before routing knew who serves it
    ticks = read.keep_alives()
    assert len(ticks) >= 3 and ticks[-1] < read.first_event_at(), read.chunks
    assert 0.8 * EVERY < ticks[0] < 2.5 * EVERY  # the answer started after one period, not at the image
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert all(0.7 * EVERY < g < 2 * EVERY for g in gaps), gaps
    ((kind, data),) = read.events()
    assert kind == "image_generation.completed" and data["usage"]["total_tokens"] == USAGE["total_tokens"]
    _image_of(data)
    assert read.comments() == [": keep-alive"] * len(ticks)  # nothing else is a comment
    (sent,) = up.received  # the example provider's plain call: the default stream ran
    assert sent.path == "/v1/images/generations" and sent.headers["x-api-key"] == UPSTREAM_KEY
    spent, reserved = _money(gw, key)
    assert spent > 0 and reserved == 0


def test_keep_alives_flow_between_events_of_an_upstream_stream(gw: Running, up: OpenAIStandIn, key: dict[str, Any]) -> None:
    gate = threading.Event()
    b64 = base64.b64encode(png_of(1024, 1024)).decode()
    partial = {"type": "image_generation.partial_image", "b64_json": b64, "partial_image_index": 0, "size": "1024x1024"}
    done = {"type": "image_generation.completed", "b64_json": b64, "usage": USAGE, "size": "1024x1024"}
    up.script.append(Fault("stream", events=[partial, done], gate=gate))
    timer = threading.Timer(1.2, gate.set)  # the upstream sends its second event 1.2 s after its first
    timer.start()
    try:
        read = _stream(gw, _body("gpt-image-1", partial_images=1), key["key"])
    finally:
        timer.cancel()
    assert up.gate_released_in_time is True
    assert read.status == 200 and read.headers["x-imagegate-provider"] == "oa"  # the first event came at once
    assert [kind for kind, _ in read.events()] == ["image_generation.partial_image", "image_generation.completed"]
    partial_at = read.first_event_at()
    assert partial_at < EVERY
    between = [t for t in read.keep_alives() if t > partial_at]
    assert len(between) >= 3 and len(between) == len(read.keep_alives()), read.chunks
    for _, data in read.events():
        _image_of(data)


def test_the_sdk_streams_through_keep_alives(gw: Running, up: OpenAIStandIn, key: dict[str, Any]) -> None:
    up.script.append(Fault("slow", seconds=1.0))
    events = list(gw.sdk(key["key"]).images.generate(model="plain", prompt="a lighthouse", size="1024x1024", stream=True))
    assert [event.type for event in events] == ["image_generation.completed"]  # the comments were skipped
    (event,) = events
    assert isinstance(event, openai.types.ImageGenCompletedEvent)
    assert event.usage.total_tokens == USAGE["total_tokens"]
    _image_of(event.model_dump())


def test_a_job_engine_keeps_its_progress_comments_and_gets_keep_alives_between_them(
    gw: Running, bfl: BFLStandIn, key: dict[str, Any]
) -> None:
    bfl.reset()
    bfl.polls_until_ready = 3
    read = _stream(gw, _body("flux-kontext-pro"), key["key"])
    assert read.status == 200
    comments = read.comments()
    assert comments[0] == ": keep-alive" and read.keep_alives()[0] < 0.7  # before the first poll
    progress = [c for c in comments if c != ": keep-alive"]
    assert len(progress) == 2 and all(c.startswith(": Pending") for c in progress), comments
    assert comments.count(": keep-alive") >= 3
    ((kind, data),) = read.events()
    assert kind == "image_generation.completed"
    assert decode_b64(data["b64_json"]).size == (1024, 1024)


# -- failures: before the answer, after it started -----------------------------------


def test_a_fast_failure_is_still_a_plain_json_error(gw: Running, up: OpenAIStandIn, key: dict[str, Any]) -> None:
    up.script.append(Fault("status", 400, REFUSAL))
    with pytest.raises(openai.BadRequestError) as info:
        list(gw.sdk(key["key"]).images.generate(model="plain", prompt="x", size="1024x1024", stream=True))
    assert info.value.status_code == 400 and info.value.param == "prompt" and info.value.code == "refused"
    assert info.value.response.headers["x-imagegate-provider"] == "ex"
    assert _money(gw, key) == NOTHING


def test_a_failure_after_keep_alives_started_is_an_in_band_error(gw: Running, up: OpenAIStandIn, key: dict[str, Any]) -> None:
    up.script.append(Fault("hang", seconds=1.0))  # the upstream closes without an answer after 1 s
    read = _stream(gw, _body(), key["key"])
    assert read.status == 200 and len(read.keep_alives()) >= 2
    ((kind, data),) = read.events()
    assert kind == "error" and data["error"]["code"] == "upstream_connection_error", data
    assert _money(gw, key) == NOTHING


def test_retries_before_the_first_event_run_while_keep_alives_flow(gw: Running, up: OpenAIStandIn, key: dict[str, Any]) -> None:
    up.script.extend([Fault("hang", seconds=0.7), Fault("slow", seconds=0.5)])
    read = _stream(gw, _body("plain-twice"), key["key"])
    assert len(up.received) == 2  # the first attempt broke off; the second served it
    assert len(read.keep_alives()) >= 3
    ((kind, data),) = read.events()
    assert kind == "image_generation.completed"
    _image_of(data)


def test_a_stream_still_ends_at_the_requests_deadline(gw: Running, up: OpenAIStandIn, key: dict[str, Any]) -> None:
    up.script.append(Fault("slow", seconds=10))
    read = _stream(gw, _body("plain-short"), key["key"])
    assert 2 <= len(read.keep_alives()) <= 4
    ((kind, data),) = read.events()
    assert kind == "error" and data["error"]["code"] == "upstream_timeout", data
    assert read.chunks[-1][0] < 2.0
    _wait_until(lambda: up.aborted == 1)  # the upstream call was given up
    assert _money(gw, key) == NOTHING


# -- a client that goes away ---------------------------------------------------------


def test_a_client_gone_during_the_keep_alive_wait_releases_everything(
    gw: Running, up: OpenAIStandIn, key: dict[str, Any]
) -> None:
    up.script.append(Fault("slow", seconds=10))
    body, headers = _body(), {"Authorization": f"Bearer {key['key']}"}
    with httpx.stream("POST", f"{gw.base_url}/v1/images/generations", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()  # kept: a dropped iterator closes the connection
        assert next(chunks) == KEEP_ALIVE
        assert _money(gw, key)[1] > 0  # held while the upstream works
    _wait_until(lambda: up.aborted == 1)  # the upstream request was cancelled
    _wait_until(lambda: _money(gw, key) == NOTHING)
    # the deployment's one slot (max_concurrency 1) is free again: the next request is served at once
    start = time.monotonic()
    result = gw.sdk(key["key"]).images.generate(model="plain", prompt="x", size="1024x1024")
    assert time.monotonic() - start < 2 and len(result.data or []) == 1


def test_clients_hanging_up_at_any_moment_leave_nothing_reserved(gw: Running, up: OpenAIStandIn, key: dict[str, Any]) -> None:
    """Hang-ups before the answer, during the first wait and during keep-alives:
    every reservation is given back, nothing was delivered, nothing charged."""
    up.script.extend([Fault("slow", seconds=3)] * 40)
    plain = {**_body(), "model": "plain-twice"}  # its slot (max_concurrency 1) queues the others

    async def hang_up(after: float) -> None:  # after that long in all (keep-alives would reset a read timeout)
        async with httpx.AsyncClient(timeout=30) as http:
            try:
                async with asyncio.timeout(after):
                    async with http.stream("POST", f"{gw.base_url}/v1/images/generations", json=plain,
                                           headers={"Authorization": f"Bearer {key['key']}"}) as r:  # fmt: skip
                        async for _ in r.aiter_raw():
                            pass
            except TimeoutError:
                pass

    async def run() -> None:
        await asyncio.gather(*(hang_up(0.002 + 0.03 * i) for i in range(24)))

    asyncio.run(run())
    _wait_until(lambda: _money(gw, key) == NOTHING, seconds=30)
    assert up.aborted >= 1  # some hung up while the upstream worked: its call was cancelled
