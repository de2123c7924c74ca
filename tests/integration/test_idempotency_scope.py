"""Idempotency keys belong to one caller, survive a crash without blocking,
and replay hosted URLs that still work; rate limits come before any work
on the request's images."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from standin_openai import Fault, OpenAIStandIn

from imagegate.accounting.owner import is_gone, this_process
from imagegate.contract import catalog
from imagegate.contract.requests import GenerationFields, ImageRequest
from support import SIGNING_KEY, Running, decode_bytes, make_image, serve_process

MASTER = "master-key-for-the-idempotency-tests"
STATIC_A, STATIC_B = "sk-static-caller-a-0123456789", "sk-static-caller-b-0123456789"


def post(base: str, secret: str, key: str | None = None, **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    payload = {"model": "test-pattern", "prompt": "x", "size": "64x64", **body}
    return httpx.post(f"{base}/v1/images/generations", json=payload, headers=headers, timeout=60)


def test_static_keys_and_the_master_key_never_share_replays(make_server: Any) -> None:
    gw: Running = make_server(
        {"auth": {"api_keys": [STATIC_A, STATIC_B], "master_key": MASTER}, "storage": {"signing_key": SIGNING_KEY},
         "providers": {"demo": {"type": "test-pattern"}}, "models": {"test-pattern": [{"provider": "demo"}]}}
    )  # fmt: skip
    first = post(gw.base_url, STATIC_A, "same-key", seed=1)
    assert first.status_code == 200 and "x-imagegate-idempotent-replay" not in first.headers
    again = post(gw.base_url, STATIC_A, "same-key", seed=1)
    assert again.headers.get("x-imagegate-idempotent-replay") == "true" and again.content == first.content
    for other in (STATIC_B, MASTER):
        theirs = post(gw.base_url, other, "same-key", seed=1)
        assert theirs.status_code == 200
        assert "x-imagegate-idempotent-replay" not in theirs.headers  # ran for them, not replayed from A
        assert theirs.json()["created"] >= first.json()["created"]


def test_the_virtual_key_is_part_of_the_fingerprint() -> None:
    spec = catalog.lookup("gpt-image-1")
    assert spec is not None
    request = ImageRequest("generations", "gpt-image-1", spec, GenerationFields(prompt="x"))
    assert request.fingerprint(None) == request.fingerprint(None)
    assert len({request.fingerprint("vk-team-a"), request.fingerprint("vk-team-b"), request.fingerprint(None)}) == 3


def test_replayed_urls_are_signed_again_while_the_image_is_stored(make_server: Any) -> None:
    gw: Running = make_server(
        {"storage": {"signing_key": SIGNING_KEY, "url_ttl_seconds": 2},
         "providers": {"demo": {"type": "test-pattern"}}, "models": {"test-pattern": [{"provider": "demo"}]}}
    )  # fmt: skip
    first = post(gw.base_url, "anything", "url-key", response_format="url")
    url = first.json()["data"][0]["url"]
    time.sleep(2.2)
    assert httpx.get(url, timeout=10).status_code == 410  # the first link has expired
    replay = post(gw.base_url, "anything", "url-key", response_format="url")
    assert replay.headers.get("x-imagegate-idempotent-replay") == "true"
    fresh = replay.json()["data"][0]["url"]
    assert fresh != url
    got = httpx.get(fresh, timeout=10)
    assert got.status_code == 200 and decode_bytes(got.content).size == (64, 64)
    # Once the stored image is gone, a replay says so instead of handing out a dead link.
    key = fresh.split("/v1/images/files/")[1].split("?")[0]
    (gw.data_dir / "images" / key[:2] / key).unlink()
    gone = post(gw.base_url, "anything", "url-key", response_format="url")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "idempotent_result_expired"


def test_a_claim_left_by_a_killed_server_does_not_block_the_key(tmp_path: Path) -> None:
    with OpenAIStandIn() as upstream:
        upstream.script.append(Fault("hang", seconds=30))
        cfg = {
            "storage": {"signing_key": SIGNING_KEY},
            "providers": {"up": {"type": "openai", "base_url": upstream.base_url, "api_key": "sk-up"}},
            "models": {"gpt-image-1": {"deployments": [{"provider": "up"}], "routing": {"max_attempts": 1}}},
        }
        body = {"model": "gpt-image-1", "size": "1024x1024"}
        with serve_process(cfg, tmp_path) as first:
            threading.Thread(target=lambda: _quietly(post, first.base_url, "k", "crash-key", **body), daemon=True).start()
            deadline = time.monotonic() + 15
            while not upstream.received:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            first.kill()
        with serve_process(cfg, tmp_path) as second:
            started = time.monotonic()
            r = post(second.base_url, "k", "crash-key", **body)
            assert r.status_code == 200, r.text
            assert "x-imagegate-idempotent-replay" not in r.headers
            assert time.monotonic() - started < 10  # not a wait for the whole deadline, not a 409
            assert len(upstream.received) == 2


def _quietly(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except httpx.HTTPError:
        pass


def test_owner_identity() -> None:
    me = this_process()
    host, pid, token = me.rsplit(":", 2)
    assert not is_gone(me)
    assert is_gone(f"{host}:{pid}:{'0' * len(token)}")  # this pid, another life
    assert is_gone(f"{host}:999999999:abc")  # no such process here
    assert not is_gone(f"another-host:{pid}:abc")  # cannot know: left to the expiry
    assert not is_gone(f"{host}:1:abc")  # alive (init)
    assert not is_gone("garbage")


# -- 15. limits before expensive work -----------------------------------------


@pytest.fixture
def image_host() -> Any:
    with OpenAIStandIn(image=make_image(64, 64)) as standin:
        yield standin


def test_rate_limited_key_is_refused_before_its_image_urls_are_fetched(make_server: Any, image_host: OpenAIStandIn) -> None:
    gw: Running = make_server(
        {"auth": {"master_key": MASTER}, "storage": {"signing_key": SIGNING_KEY},
         "server": {"fetch": {"allow_private_networks": True}},
         "providers": {"demo": {"type": "test-pattern"}}, "models": {"test-pattern": [{"provider": "demo"}]}}
    )  # fmt: skip
    created = httpx.post(f"{gw.base_url}/admin/keys", json={"name": "slow", "rpm": 1},
                         headers={"Authorization": f"Bearer {MASTER}"}, timeout=30).json()  # fmt: skip
    secret = created["key"]
    url = image_host.base_url.removesuffix("/v1") + "/files/in.png"
    body = {"model": "test-pattern", "prompt": "x", "images": [{"image_url": url}]}
    headers = {"Authorization": f"Bearer {secret}"}
    ok = httpx.post(f"{gw.base_url}/v1/images/edits", json=body, headers=headers, timeout=30)
    assert ok.status_code == 200, ok.text
    assert len(image_host.fetched) == 1
    big = base64.b64encode(make_image(2048, 2048)).decode()
    refused = httpx.post(f"{gw.base_url}/v1/images/edits", json=body, headers=headers, timeout=30)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(image_host.fetched) == 1  # refused before fetching
    data_body = {**body, "images": [{"image_url": f"data:image/png;base64,{big}"}]}
    assert httpx.post(f"{gw.base_url}/v1/images/edits", json=data_body, headers=headers, timeout=30).status_code == 429
