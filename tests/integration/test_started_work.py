"""An attempt that may have started paid work upstream is not sent again.

Two providers registered by this test stand in for submit-then-poll upstreams:
``Submitter`` (the plain provider contract) acts out a script of outcomes, and
``HostedSubmitter`` (the hosted base, ``exchange(..., starts_work=True)``)
submits to the OpenAI stand-in. Each model has two deployments and a fallback,
so every retry the router could make is visible; ``routing.resubmit_started``
turns resubmission back on. Ordinary failures keep being retried.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import openai
import pytest
from standin_openai import Fault, OpenAIStandIn, png_of

from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment, GeneratedImage, ProviderResult
from imagegate.errors import UpstreamTimeoutError
from imagegate.providers import registry
from imagegate.providers.base import Provider, work_may_have_started
from imagegate.providers.http import HostedProvider
from imagegate.providers.openai import wire
from support import Running, run_server

ROUTING = {
    "backoff_initial_seconds": 0.01,
    "backoff_max_seconds": 0.02,
    "max_attempts": 3,
    "deadline_seconds": 10,
    "cooldown_failures": 20,
}  # no cooldown carries over from one test to the next


class Submitter(Provider):
    """Each call is recorded, then does what the script's next step says:
    ``started-error`` raises a timeout that says work may have started,
    ``started-hang`` marks the attempt and hangs until the router's timeout,
    ``timeout`` raises a plain timeout; otherwise it returns an image."""

    type_name: ClassVar[str] = "test-submitter"
    calls: ClassVar[list[str]] = []
    script: ClassVar[deque[str]] = deque()

    async def generate(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        self.calls.append(self.name)
        step = self.script.popleft() if self.script else "ok"
        if step == "started-error":
            raise UpstreamTimeoutError("The job did not finish in time.", maybe_started=True)
        if step == "started-hang":
            work_may_have_started()
            await asyncio.sleep(30)
        if step == "timeout":
            raise UpstreamTimeoutError("The upstream did not answer.")
        return ProviderResult([GeneratedImage(png_of(32, 32), "png")])

    edit = variation = generate


class HostedSubmitter(HostedProvider):
    """A job submission to an OpenAI-shaped upstream through the hosted base."""

    type_name: ClassVar[str] = "test-hosted-submitter"

    async def generate(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        body = wire.json_body(request, deployment.model)
        call = self.build("POST", "/images/generations", deployment, content=body, headers={"Content-Type": "application/json"})
        async with self.exchange(call, deployment, starts_work=True) as response:
            payload = wire.parse_json(self.name, await self.read(response))
        images = [wire.decode_image(self.name, item.get("b64_json"), request) for item in wire.result_items(self.name, payload)]
        return wire.build_result(self.name, images, payload)

    edit = variation = generate


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as up:
        yield up


@pytest.fixture(scope="module")
def gw(upstream: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    registry.register(Submitter.type_name, Submitter)
    registry.register(HostedSubmitter.type_name, HostedSubmitter)
    hosted = {"type": HostedSubmitter.type_name, "base_url": upstream.base_url, "timeout_seconds": 0.5}

    def model(*providers: str, **extra: Any) -> dict[str, Any]:
        deployments = [{"provider": p, "model": "gpt-image-1", "timeout_seconds": 0.5} for p in providers]
        return {"rules": "test-pattern", "deployments": deployments, "fallbacks": ["test-pattern"], **extra}

    cfg = {
        "routing": ROUTING,
        "providers": {
            "s1": {"type": Submitter.type_name},
            "s2": {"type": Submitter.type_name},
            "h1": hosted,
            "h2": hosted,
            "nowhere": {**hosted, "base_url": _closed_port_url()},
            "local": {"type": "test-pattern"},
        },
        "models": {
            "jobs": model("s1", "s2"),
            "jobs-resubmitted": model("s1", "s2", routing={**ROUTING, "resubmit_started": True}),
            "hosted-jobs": model("h1", "h2"),
            "unreachable-jobs": {**model("nowhere"), "fallbacks": []},
            "test-pattern": [{"provider": "local"}],
        },
    }
    try:
        with run_server(cfg, tmp_path_factory.mktemp("started")) as running:
            yield running
    finally:
        registry.unregister(Submitter.type_name)
        registry.unregister(HostedSubmitter.type_name)


@pytest.fixture(autouse=True)
def _fresh(upstream: OpenAIStandIn) -> None:
    Submitter.calls.clear()
    Submitter.script.clear()
    upstream.received.clear()
    upstream.script.clear()


def generate(gw: Running, model: str) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/images/generations", json={"model": model, "prompt": "x"}, timeout=30)


@pytest.mark.parametrize("step", ["started-error", "started-hang"])
def test_an_attempt_that_may_have_started_work_is_not_sent_again(gw: Running, step: str) -> None:
    Submitter.script.extend([step, "ok", "ok"])
    with pytest.raises(openai.APIStatusError) as info:
        gw.sdk().images.generate(model="jobs", prompt="x")
    assert info.value.status_code == 504
    assert info.value.response.headers["x-imagegate-attempts"] == "1"
    assert len(Submitter.calls) == 1  # neither the other deployment nor the fallback was tried


def test_the_routing_policy_may_allow_resubmission(gw: Running) -> None:
    Submitter.script.extend(["started-error", "ok"])
    r = generate(gw, "jobs-resubmitted")
    assert r.status_code == 200 and r.headers["x-imagegate-attempts"] == "2"
    assert len(Submitter.calls) == 2


def test_an_attempt_that_started_nothing_is_retried_as_before(gw: Running) -> None:
    Submitter.script.extend(["timeout", "ok"])
    r = generate(gw, "jobs")
    assert r.status_code == 200 and r.headers["x-imagegate-attempts"] == "2"
    assert len(Submitter.calls) == 2


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault("hang", seconds=2), 504),  # sent, then no answer in time
        (Fault("reset"), 502),  # sent, then the connection broke
        (Fault("status", 502, {"error": {"message": "bad gateway", "type": "server_error", "param": None, "code": None}}), 502),
    ],
)
def test_a_hosted_submission_that_reached_the_upstream_is_not_sent_again(
    gw: Running, upstream: OpenAIStandIn, fault: Fault, status: int
) -> None:
    upstream.script.append(fault)
    r = generate(gw, "hosted-jobs")
    assert r.status_code == status and r.headers["x-imagegate-attempts"] == "1"
    assert len(upstream.received) == 1


def test_a_hosted_submission_the_upstream_refused_is_retried(gw: Running, upstream: OpenAIStandIn) -> None:
    body = {"error": {"message": "slow down", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    upstream.script.append(Fault("status", 429, body, headers={"Retry-After": "0"}))
    r = generate(gw, "hosted-jobs")
    assert r.status_code == 200 and r.headers["x-imagegate-attempts"] == "2"
    assert len(upstream.received) == 2


def test_a_hosted_submission_that_could_not_connect_is_retried(gw: Running) -> None:
    r = generate(gw, "unreachable-jobs")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
    assert r.headers["x-imagegate-attempts"] == "3"
