"""Money under faults: crashes, upstreams that bill more than asked, a
database that goes away while a request runs, administrators releasing
reservations. Every budget figure is read back through the admin API."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from standin_openai import USAGE, Fault, OpenAIStandIn, png_of

from support import SIGNING_KEY, Running, decode_b64, serve_process

MASTER = "master-key-for-the-money-tests-0123"
# gpt-image-1's most expensive 1024x1024 image (high quality, 4160 tokens at $40/1M) plus the prompt's bytes at $5/1M.
WORST_1024 = Decimal("0.1664")


def config(upstream: str, **extra: Any) -> dict[str, Any]:
    return {
        "auth": {"master_key": MASTER},
        "storage": {"signing_key": SIGNING_KEY, "sweep_interval_seconds": 0.3},
        "providers": {"up": {"type": "openai", "base_url": upstream, "api_key": "sk-upstream-secret"}},
        "models": {"gpt-image-1": {"deployments": [{"provider": "up"}], "routing": {"max_attempts": 1}}},
        **extra,
    }


def admin(base: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, base + path, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30, **kwargs)


def new_key(base: str, **body: Any) -> dict[str, Any]:
    r = admin(base, "POST", "/admin/keys", json={"name": "money", **body})
    assert r.status_code == 201, r.text
    return r.json()


def state(base: str, key_id: str) -> tuple[Decimal, Decimal]:
    view = admin(base, "GET", f"/admin/keys/{key_id}").json()
    return Decimal(view["spent_usd"]), Decimal(view["reserved_usd"])


def generate(base: str, secret: str, timeout: float = 60, **body: Any) -> httpx.Response:
    payload = {"model": "gpt-image-1", "prompt": "x", "size": "1024x1024", "quality": "low", **body}
    return httpx.post(f"{base}/v1/images/generations", json=payload, headers={"Authorization": f"Bearer {secret}"},
                      timeout=timeout)  # fmt: skip


def usage_with(output_tokens: int) -> dict[str, Any]:
    return {**USAGE, "output_tokens": output_tokens, "total_tokens": 200 + output_tokens,
            "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0}}  # fmt: skip


def answer_with_usage(output_tokens: int, size: int = 64) -> Fault:
    b64 = base64.b64encode(png_of(size, size)).decode()
    body = {"created": 1, "data": [{"b64_json": b64}], "usage": usage_with(output_tokens), "quality": "high", "size": "1024x1024"}
    return Fault("json", body=body)


def wait_until(check: Any, seconds: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- 1. a crash never holds a budget -------------------------------------------


def test_kill_9_mid_request_then_restart_gives_the_budget_back(tmp_path: Path) -> None:
    with OpenAIStandIn() as upstream:
        upstream.script.extend(Fault("hang", seconds=30) for _ in range(4))
        cfg = config(upstream.base_url)
        with serve_process(cfg, tmp_path / "a") as first:
            key = new_key(first.base_url, budget_usd=0.8)  # room for 4 worst cases, not 5
            threads = [
                threading.Thread(target=lambda: _swallow(generate, first.base_url, key["key"], 40), daemon=True) for _ in range(4)
            ]
            for t in threads:
                t.start()
            wait_until(lambda: len(upstream.received) == 4, what="4 requests upstream")
            spent, reserved = state(first.base_url, key["id"])
            assert spent == 0 and reserved >= 4 * WORST_1024
            # The budget is held: a fifth request does not fit.
            assert generate(first.base_url, key["key"]).status_code == 429
            first.kill()
        with serve_process(cfg, tmp_path / "a") as second:  # same data directory, a new process
            assert state(second.base_url, key["id"]) == (0, 0)
            assert "released 4 stale budget reservation(s)" in second.log()
            upstream.script.clear()
            r = generate(second.base_url, key["key"])
            assert r.status_code == 200, r.text
            assert decode_b64(r.json()["data"][0]["b64_json"]).format == "PNG"
            spent, reserved = state(second.base_url, key["id"])
            assert (spent, reserved) == (Decimal(r.headers["x-imagegate-cost-usd"]), 0)


def _swallow(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except httpx.HTTPError:
        pass


def test_admin_releases_reservations_once_even_while_the_request_runs(tmp_path: Path) -> None:
    with OpenAIStandIn() as upstream:
        upstream.script.append(Fault("slow", seconds=2.5))
        with serve_process(config(upstream.base_url), tmp_path) as gw:
            key = new_key(gw.base_url, budget_usd=1)
            done: list[httpx.Response] = []
            t = threading.Thread(target=lambda: done.append(generate(gw.base_url, key["key"])), daemon=True)
            t.start()
            wait_until(lambda: len(upstream.received) == 1, what="the request upstream")
            held = admin(gw.base_url, "GET", "/admin/reservations", params={"key": key["id"]}).json()["data"]
            assert len(held) == 1 and Decimal(held[0]["reserved_usd"]) >= WORST_1024
            out = subprocess.run(
                [sys.executable, "-m", "imagegate", "keys", "release-reservations", key["id"], "--json",
                 "--config", str(gw.config_path)],
                capture_output=True, text=True, timeout=60,
                env={k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")},
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["released"] == 1
            assert state(gw.base_url, key["id"])[1] == 0
            t.join(timeout=30)
            assert done[0].status_code == 200
            # Charged its real cost, and the reservation was not given back a second time.
            assert state(gw.base_url, key["id"]) == (Decimal(done[0].headers["x-imagegate-cost-usd"]), 0)
            again = admin(gw.base_url, "POST", "/admin/reservations/release", json={}).json()
            assert again == {"released": 0, "released_usd": "0.000000"}


def test_release_reservations_needs_a_key_or_all(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"server: {{data_dir: {tmp_path / 'data'}}}\n")
    out = subprocess.run([sys.executable, "-m", "imagegate", "keys", "release-reservations", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "give a key" in out.stderr


# -- 2. the worst case is an upper bound --------------------------------------


@pytest.fixture
def upstream() -> Any:
    with OpenAIStandIn() as standin:
        yield standin


def test_low_quality_requests_billed_at_high_never_overspend(upstream: OpenAIStandIn, make_server: Any) -> None:
    """The issue's scenario: 200 concurrent low-quality requests on a small
    budget, each billed as high (4160 output tokens) by the upstream."""
    upstream.script.extend(answer_with_usage(4160) for _ in range(200))
    gw: Running = make_server(config(upstream.base_url))
    key = new_key(gw.base_url, budget_usd=0.5)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=200)) as http:
            payload = {"model": "gpt-image-1", "prompt": "x", "size": "1024x1024", "quality": "low"}
            headers = {"Authorization": f"Bearer {key['key']}"}
            return await asyncio.gather(
                *(http.post(f"{gw.base_url}/v1/images/generations", json=payload, headers=headers) for _ in range(200))
            )

    answers = asyncio.run(run())
    ok = [r for r in answers if r.status_code == 200]
    assert {r.status_code for r in answers} <= {200, 429}
    spent, reserved = state(gw.base_url, key["id"])
    assert reserved == 0
    assert spent == sum(Decimal(r.headers["x-imagegate-cost-usd"]) for r in ok)
    assert spent <= Decimal("0.5")  # the reservation covered the real bill: not a cent over
    assert len(ok) == 2  # 0.5 / 0.171525 (the worst case): exactly what fits, no more
    # What each one cost: 4160 output tokens at $40/1M, 200 input tokens (40 text at $5, 160 image at $10).
    assert {r.headers["x-imagegate-cost-usd"] for r in ok} == {"0.168200"}


def test_a_bill_above_its_reservation_is_charged_and_blocks_the_key(
    upstream: OpenAIStandIn, make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gw: Running = make_server(config(upstream.base_url))
    key = new_key(gw.base_url, budget_usd=1)
    upstream.script.extend(answer_with_usage(30_000) for _ in range(2))  # $1.20 each, far above any size's maximum
    with caplog.at_level(logging.ERROR, logger="imagegate.accounting"):
        first = generate(gw.base_url, key["key"])
    assert first.status_code == 200 and Decimal(first.headers["x-imagegate-cost-usd"]) > 1
    assert any("above its reservation" in r.getMessage() for r in caplog.records)
    spent, reserved = state(gw.base_url, key["id"])
    assert spent == Decimal(first.headers["x-imagegate-cost-usd"]) and reserved == 0
    refused = generate(gw.base_url, key["key"])
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert len(upstream.received) == 1  # the blocked request never reached the upstream


# -- 4. the database fails while settling --------------------------------------


def _settle_while_the_database_is_down(upstream: OpenAIStandIn, gw: Running, pg: Any, key: dict[str, Any]) -> httpx.Response:
    """A request whose upstream answers after PostgreSQL has been stopped."""
    upstream.script.append(Fault("slow", seconds=2.0))
    done: list[httpx.Response] = []
    t = threading.Thread(target=lambda: done.append(generate(gw.base_url, key["key"])), daemon=True)
    t.start()
    wait_until(lambda: len(upstream.received) == 1, what="the request upstream")
    pg.stop()
    t.join(timeout=60)
    return done[0]


def test_database_down_while_settling_journals_and_replays(upstream: OpenAIStandIn, make_server: Any) -> None:
    from pg import postgres_instance

    with postgres_instance() as pg:
        gw: Running = make_server(config(upstream.base_url, database={"url": pg.url}))
        key = new_key(gw.base_url, budget_usd=1)
        answer = _settle_while_the_database_is_down(upstream, gw, pg, key)
        # The image was made and billed upstream: the client gets it, the charge waits in the journal.
        assert answer.status_code == 200, answer.text
        assert decode_b64(answer.json()["data"][0]["b64_json"]).format == "PNG"
        cost = Decimal(answer.headers["x-imagegate-cost-usd"])
        journal = gw.data_dir / "pending-settlements.jsonl"
        assert journal.stat().st_size > 0
        # While the database is down, new requests get a clear 503, not a 500.
        down = generate(gw.base_url, key["key"])
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "database_unavailable" and "retry-after" in down.headers
        pg.start()
        wait_until(lambda: journal.stat().st_size == 0, seconds=30, what="the journal replayed")
        assert state(gw.base_url, key["id"]) == (cost, 0)
        (row,) = admin(gw.base_url, "GET", "/admin/usage", params={"key": key["id"], "group_by": "key"}).json()["data"]
        assert (row["requests"], Decimal(row["cost_usd"])) == (1, cost)  # one usage row, charged once


def test_settlement_that_cannot_be_journaled_is_a_503(upstream: OpenAIStandIn, make_server: Any) -> None:
    from pg import postgres_instance

    with postgres_instance() as pg:
        gw: Running = make_server(config(upstream.base_url, database={"url": pg.url}))
        key = new_key(gw.base_url, budget_usd=1)
        (gw.data_dir / "pending-settlements.jsonl").mkdir()  # the journal cannot be written
        answer = _settle_while_the_database_is_down(upstream, gw, pg, key)
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "accounting_unavailable"
        assert "x-request-id" in answer.headers
        pg.start()
        # The reservation is not left behind: it expires with the request's deadline, or a restart
        # releases it; an administrator can release it now.
        assert admin(gw.base_url, "POST", "/admin/reservations/release", json={"key": key["id"]}).json()["released"] == 1
        assert state(gw.base_url, key["id"]) == (0, 0)


def test_clients_hanging_up_at_any_moment_leave_nothing_reserved(upstream: OpenAIStandIn, make_server: Any) -> None:
    """Hang-ups land before, during and after the reservation's commit, the
    upstream call and the settlement: every reservation is given back, and
    what was charged is what the usage records say."""
    gw: Running = make_server(config(upstream.base_url))
    key = new_key(gw.base_url, budget_usd=100)

    async def hang_up(delay: float) -> None:
        async with httpx.AsyncClient(timeout=delay) as http:
            try:
                await http.post(f"{gw.base_url}/v1/images/generations", headers={"Authorization": f"Bearer {key['key']}"},
                                json={"model": "gpt-image-1", "prompt": "x", "size": "1024x1024"})  # fmt: skip
            except httpx.TimeoutException:
                pass

    async def run() -> None:
        for round_ in range(3):
            await asyncio.gather(*(hang_up(0.001 * (i + 1) + 0.0003 * round_) for i in range(60)))

    asyncio.run(run())
    wait_until(lambda: state(gw.base_url, key["id"])[1] == 0, seconds=30, what="every reservation given back")
    rows = admin(gw.base_url, "GET", "/admin/usage", params={"key": key["id"], "group_by": "key"}).json()["data"]
    assert state(gw.base_url, key["id"]) == (sum(Decimal(r["cost_usd"]) for r in rows), 0)
