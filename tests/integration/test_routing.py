"""Routing against fault-injecting stand-in upstreams on loopback: weights,
retries, Retry-After, fallbacks, cooldowns, timeouts, deadlines, concurrency
limits, client disconnects, idempotency, and a chaos run."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from standin_openai import Fault, OpenAIStandIn

from support import Running, run_server

MASTER = "master-key-for-the-tests-0123456789"
ERR500 = Fault("status", 500, {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
POLICY400 = Fault("status", 400, {"error": {"message": "blocked", "type": "image_generation_user_error", "param": None,
                                            "code": "moderation_blocked"}})  # fmt: skip


def rate_limited(seconds: int) -> Fault:
    body = {"error": {"message": "slow down", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    return Fault("status", 429, body, headers={"Retry-After": str(seconds)})


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, OpenAIStandIn]]:
    with OpenAIStandIn() as a, OpenAIStandIn() as b:
        yield {"a": a, "b": b}


def _dep(provider: str, **extra: Any) -> dict[str, Any]:
    return {"provider": provider, "model": "gpt-image-1", **extra}


def _model(*deps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"rules": "gpt-image-1", "deployments": list(deps), **extra}


@pytest.fixture(scope="module")
def gw(ups: dict[str, OpenAIStandIn], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    cfg = {
        "auth": {"master_key": MASTER},
        "pricing": {"test-pattern": {"per_image": 0.01}, "cheap": {"per_image": 0.01}, "pricey": {"per_image": 0.5}},
        "routing": {
            "backoff_initial_seconds": 0.01,
            "backoff_max_seconds": 0.05,
            "cooldown_failures": 3,
            "cooldown_seconds": 1,
            "deadline_seconds": 10,
            "max_attempts": 3,
        },  # fmt: skip
        "providers": {
            "a": {"type": "openai", "base_url": ups["a"].base_url},
            "b": {"type": "openai", "base_url": ups["b"].base_url},
            "local": {"type": "test-pattern"},
        },
        "models": {
            "balanced": _model(_dep("a", weight=3), _dep("b", weight=1)),
            "single": _model(_dep("a")),
            "sticky": _model(_dep("a", weight=1_000_000), _dep("b", weight=1)),
            "with-fallback": _model(_dep("a"), fallbacks=["backup"]),
            "backup": _model(_dep("b")),
            "strict": _model(_dep("a"), fallbacks=["backup"], fallback_on=["server_error"]),
            "lenient": _model(_dep("a"), fallbacks=["backup"], fallback_on=["server_error", "content_policy"]),
            "quick": _model(_dep("a", timeout_seconds=0.5)),
            "short": _model(
                _dep("a", timeout_seconds=5), routing={"deadline_seconds": 1, "max_attempts": 10, "backoff_initial_seconds": 0.01}
            ),  # fmt: skip
            "limited": _model(_dep("a", max_concurrency=1)),
            "chaos": _model(_dep("a", timeout_seconds=0.5), _dep("b", timeout_seconds=0.5), fallbacks=["test-pattern"]),
            "test-pattern": [{"provider": "local"}],
            "cheap": _model(_dep("a"), fallbacks=["pricey"]),
            "pricey": _model(_dep("b")),
        },
    }
    with run_server(cfg, tmp_path_factory.mktemp("routing")) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(ups: dict[str, OpenAIStandIn]) -> None:
    for up in ups.values():
        up.received.clear()
        up.script.clear()
        up.served.clear()
        up.max_in_flight = 0
        up.aborted = 0


def gen(gw: Running, model: str, timeout: float = 30, **extra: Any) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/images/generations", json={"model": model, "prompt": "x", **extra},
                      headers={"Authorization": f"Bearer {MASTER}"}, timeout=timeout)  # fmt: skip


def test_weights_are_honoured(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    for _ in range(200):
        assert gen(gw, "balanced").status_code == 200
    a, b = len(ups["a"].received), len(ups["b"].received)
    assert a + b == 200
    assert 0.64 <= a / 200 <= 0.86, (a, b)  # weight 3:1: 0.75, binomial sd 0.031, so +-3.6 sd


def test_retry_after_a_server_error(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    ups["a"].script.append(ERR500)
    r = gen(gw, "single")
    assert r.status_code == 200
    assert (r.headers["x-imagegate-attempts"], r.headers["x-imagegate-model"], r.headers["x-imagegate-provider"]) == (
        "2",
        "single",
        "a",
    )
    assert len(ups["a"].received) == 2


def test_no_retry_on_a_client_error(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    ups["a"].script.append(POLICY400)
    r = gen(gw, "single")
    assert r.status_code == 400 and r.json()["error"]["code"] == "moderation_blocked"
    assert len(ups["a"].received) == 1


def test_retry_after_is_honoured(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    ups["a"].script.append(rate_limited(1))
    started = time.monotonic()
    r = gen(gw, "single")
    assert r.status_code == 200 and r.headers["x-imagegate-attempts"] == "2"
    assert time.monotonic() - started >= 0.95


def test_a_too_long_retry_after_is_not_waited_for(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    ups["a"].script.append(rate_limited(120))
    started = time.monotonic()
    r = gen(gw, "single")
    assert r.status_code == 429 and r.headers["retry-after"] == "120"
    assert time.monotonic() - started < 2
    assert len(ups["a"].received) == 1


def test_fallback_model_serves_when_deployments_are_exhausted(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    ups["a"].script.extend([ERR500] * 5)
    r = gen(gw, "with-fallback")
    assert r.status_code == 200
    assert (r.headers["x-imagegate-model"], r.headers["x-imagegate-provider"], r.headers["x-imagegate-attempts"]) == (
        "backup",
        "b",
        "2",
    )


@pytest.mark.parametrize("model,status,answered_by", [("strict", 400, "strict"), ("lenient", 200, "backup")])
def test_fallback_only_for_the_listed_error_kinds(gw: Running, ups: dict[str, OpenAIStandIn], model: str, status: int,
                                                  answered_by: str) -> None:  # fmt: skip
    ups["a"].script.append(POLICY400)
    r = gen(gw, model)
    assert r.status_code == status
    assert r.headers.get("x-imagegate-model") == answered_by  # an error answer too says which model's it is


def test_fallbacks_respect_the_keys_allowed_models(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    admin = {"Authorization": f"Bearer {MASTER}"}

    def key(models: list[str], **extra: Any) -> dict[str, Any]:
        body = {"name": "allow-list", "models": models, **extra}
        return httpx.post(f"{gw.base_url}/admin/keys", headers=admin, json=body).json()

    def call(secret: str) -> httpx.Response:
        ups["a"].script.clear()
        ups["a"].script.extend([ERR500] * 5)  # the primary's one deployment fails every attempt
        return httpx.post(f"{gw.base_url}/v1/images/generations", json={"model": "cheap", "prompt": "x"},
                          headers={"Authorization": f"Bearer {secret}"}, timeout=30)  # fmt: skip

    def usage(key_id: str) -> list[tuple[str, int, int]]:
        rows = httpx.get(f"{gw.base_url}/admin/usage", headers=admin, params={"key": key_id, "group_by": "model"})
        return [(row["model"], row["requests"], row["errors"]) for row in rows.json()["data"]]

    # allowed only `cheap`: the primary's own error, never an answer from the fallback it may not use
    only_cheap = key(["cheap"])
    r = call(only_cheap["key"])
    assert r.status_code == 500 and r.json()["error"]["message"] == "boom", r.text
    assert r.headers["x-imagegate-model"] == "cheap" and ups["b"].received == []  # the error is cheap's own
    assert usage(only_cheap["id"]) == [("cheap", 1, 1)]

    # and its reservation is cheap's $0.01, not the fallback's $0.50, which a $0.05 budget could not cover
    budgeted = key(["cheap"], budget_usd=0.05)
    r = call(budgeted["key"])
    assert r.status_code == 500 and r.json()["error"]["message"] == "boom", r.text
    state = httpx.get(f"{gw.base_url}/admin/keys/{budgeted['id']}", headers=admin).json()
    assert (state["spent_usd"], state["reserved_usd"]) == ("0.000000", "0.000000")
    assert usage(budgeted["id"]) == [("cheap", 1, 1)] and ups["b"].received == []

    # allowed both: the fallback serves, and the reservation covers it
    both = key(["cheap", "pricey"], budget_usd=0.05)
    r = call(both["key"])
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"  # it could cost the fallback's $0.50
    httpx.patch(f"{gw.base_url}/admin/keys/{both['id']}", headers=admin, json={"budget_usd": 1}).raise_for_status()
    r = call(both["key"])
    assert r.status_code == 200 and r.headers["x-imagegate-model"] == "pricey"
    assert len(ups["b"].received) == 1


def test_cooldown_takes_a_failing_deployment_out_then_probes_it(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    ups["a"].script.extend([ERR500] * 50)
    results = [gen(gw, "sticky") for _ in range(8)]
    assert all(r.status_code == 200 for r in results)
    assert len(ups["a"].received) == 3  # three consecutive failures, then out of rotation
    assert [r.headers["x-imagegate-attempts"] for r in results[3:]] == ["1"] * 5  # straight to b
    ups["a"].script.clear()
    time.sleep(1.1)  # the cooldown ends: a is probed, succeeds, and is back
    r = gen(gw, "sticky")
    assert (r.status_code, r.headers["x-imagegate-provider"]) == (200, "a")


def test_per_deployment_timeout_then_retry(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    ups["a"].script.append(Fault("slow", seconds=3))
    started = time.monotonic()
    r = gen(gw, "quick")
    assert r.status_code == 200 and r.headers["x-imagegate-attempts"] == "2"
    assert time.monotonic() - started < 2.5


def test_the_deadline_bounds_the_whole_request(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    ups["a"].script.extend([Fault("slow", seconds=3)] * 10)
    started = time.monotonic()
    r = gen(gw, "short")
    elapsed = time.monotonic() - started
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert elapsed < 2.0


def test_concurrency_limit_queues_requests(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    ups["a"].script.extend([Fault("slow", seconds=0.3)] * 3)

    async def three() -> list[int]:
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {MASTER}"}) as client:
            body = {"model": "limited", "prompt": "x"}
            rs = await asyncio.gather(*(client.post(f"{gw.base_url}/v1/images/generations", json=body) for _ in range(3)))
            return [r.status_code for r in rs]

    assert asyncio.run(three()) == [200, 200, 200]
    assert ups["a"].max_in_flight == 1


def test_a_client_that_disconnects_cancels_the_upstream_call(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    key = httpx.post(f"{gw.base_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}, json={"name": "quitter"}).json()
    ups["a"].script.append(Fault("slow", seconds=5))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw.base_url}/v1/images/generations", json={"model": "single", "prompt": "x"}, timeout=0.5,
                   headers={"Authorization": f"Bearer {key['key']}"})  # fmt: skip
    deadline = time.monotonic() + 3
    while ups["a"].aborted == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ups["a"].aborted == 1, "the upstream call was not cancelled"
    usage = httpx.get(f"{gw.base_url}/admin/usage", headers={"Authorization": f"Bearer {MASTER}"},
                      params={"key": key["id"], "group_by": "key"}).json()["data"]  # fmt: skip
    assert (usage[0]["errors"], usage[0]["cost_usd"]) == (1, "0.000000")


def test_idempotency_key_replays_without_a_second_generation(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    headers = {"Authorization": f"Bearer {MASTER}", "Idempotency-Key": f"order-{random.random()}"}
    body = {"model": "single", "prompt": "a single lighthouse"}
    first = httpx.post(f"{gw.base_url}/v1/images/generations", json=body, headers=headers, timeout=30)
    second = httpx.post(f"{gw.base_url}/v1/images/generations", json=body, headers=headers, timeout=30)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert second.headers["x-imagegate-idempotent-replay"] == "true"
    assert second.headers["x-imagegate-cost-usd"] == "0.000000"
    assert second.headers["x-imagegate-model"] == "single"
    assert len(ups["a"].received) == 1
    other = httpx.post(f"{gw.base_url}/v1/images/generations", json={**body, "prompt": "another"}, headers=headers, timeout=30)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"


def test_concurrent_retries_with_one_idempotency_key_generate_once(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    ups["a"].script.append(Fault("slow", seconds=0.5))
    headers = {"Authorization": f"Bearer {MASTER}", "Idempotency-Key": f"k-{random.random()}"}

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, headers=headers) as client:
            body = {"model": "single", "prompt": "x"}
            return await asyncio.gather(*(client.post(f"{gw.base_url}/v1/images/generations", json=body) for _ in range(2)))

    one, two = asyncio.run(both())
    assert one.status_code == two.status_code == 200 and one.content == two.content
    assert len(ups["a"].received) == 1


def test_failed_idempotent_request_can_be_retried(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    ups["a"].script.append(POLICY400)
    headers = {"Authorization": f"Bearer {MASTER}", "Idempotency-Key": f"f-{random.random()}"}
    body = {"model": "single", "prompt": "x"}
    assert httpx.post(f"{gw.base_url}/v1/images/generations", json=body, headers=headers, timeout=30).status_code == 400
    assert httpx.post(f"{gw.base_url}/v1/images/generations", json=body, headers=headers, timeout=30).status_code == 200


def test_chaos_every_request_is_answered_in_time_and_charged_once(gw: Running, ups: dict[str, OpenAIStandIn]) -> None:
    admin = {"Authorization": f"Bearer {MASTER}"}
    key = httpx.post(f"{gw.base_url}/admin/keys", headers=admin, json={"name": "chaos", "budget_usd": 100}).json()
    rng = random.Random(7)
    faults = [ERR500, rate_limited(0), Fault("slow", seconds=2), Fault("reset"), Fault("garbage"), Fault("truncated"), None, None]
    for up in ups.values():
        up.script.extend(f or Fault("json") for f in (rng.choice(faults) for _ in range(200)))

    async def storm() -> list[tuple[int, float, dict[str, str]]]:
        sem = asyncio.Semaphore(8)
        async with httpx.AsyncClient(timeout=20, headers={"Authorization": f"Bearer {key['key']}"}) as client:

            async def one() -> tuple[int, float, dict[str, str]]:
                async with sem:
                    started = time.monotonic()
                    r = await client.post(
                        f"{gw.base_url}/v1/images/generations", json={"model": "chaos", "prompt": "x", "size": "1024x1024"}
                    )
                    return r.status_code, time.monotonic() - started, dict(r.headers)

            return await asyncio.gather(*(one() for _ in range(60)))

    results = asyncio.run(storm())
    assert [status for status, _, _ in results] == [200] * 60  # every fault was retried away or fell back
    assert max(elapsed for _, elapsed, _ in results) < 10  # the deadline
    charged = sum(Decimal(h["x-imagegate-cost-usd"]) for _, _, h in results)
    state = httpx.get(f"{gw.base_url}/admin/keys/{key['id']}", headers=admin).json()
    assert Decimal(state["spent_usd"]) == charged and state["reserved_usd"] == "0.000000"
    usage = httpx.get(f"{gw.base_url}/admin/usage", headers=admin, params={"key": key["id"], "group_by": "key"}).json()["data"]
    assert usage[0]["requests"] == 60 and usage[0]["images"] == 60  # one row each: nothing lost, nothing twice
    served = {h["x-imagegate-model"] for _, _, h in results}
    assert served <= {"chaos", "test-pattern"}
    retried = sum(1 for _, _, h in results if h["x-imagegate-attempts"] != "1")
    assert retried >= 10, retried  # the faults really were met
    assert sum(len(up.received) for up in ups.values()) > 60
