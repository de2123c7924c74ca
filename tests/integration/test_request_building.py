"""Building a request: a fallback is held to the same input checks as the
first model (one ``check_inputs``), and a JSON edit's image URLs are fetched
concurrently. Real server on loopback, stand-in upstream and image host."""

from __future__ import annotations

import io
import random
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from PIL import Image
from standin_openai import Fault, OpenAIStandIn

from imagegate.contract import catalog
from imagegate.contract.catalog import FreeSizeRule, permissive
from support import SIGNING_KEY, Running, make_image, make_mask, run_server

SMALL_MASK_LIMIT = 2000  # bytes
ERR500 = Fault("status", status=500, body={"error": {"message": "boom", "type": "server_error"}})


def _noisy_mask(size: int) -> bytes:
    """An RGBA PNG mask of random pixels: it does not compress, so it is large."""
    rng = random.Random(5)
    img = Image.frombytes("RGBA", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 4)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn(image=make_image(64, 64)) as standin:
        yield standin


@pytest.fixture(scope="module")
def gateway(upstream: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    # Two test-pattern entries that differ only in the mask size they take.
    catalog.register(permissive("test-large-masks", FreeSizeRule()))
    catalog.register(replace(permissive("test-small-masks", FreeSizeRule()), mask_max_bytes=SMALL_MASK_LIMIT))
    config: dict[str, Any] = {
        "storage": {"signing_key": SIGNING_KEY},
        "server": {"fetch": {"allow_private_networks": True}},  # the image host is on loopback
        "routing": {"max_attempts": 2, "backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.02, "cooldown_failures": 100},
        "providers": {"up": {"type": "openai", "base_url": upstream.base_url}, "demo": {"type": "test-pattern"}},
        "models": {
            "inpaint": {"rules": "test-large-masks", "deployments": [{"provider": "up", "model": "inpainter"}],
                        "fallbacks": ["inpaint-small"]},
            "inpaint-small": {"rules": "test-small-masks", "deployments": [{"provider": "demo"}]},
            "test-pattern": [{"provider": "demo"}],
        },
    }  # fmt: skip
    with run_server(config, tmp_path_factory.mktemp("building")) as running:
        yield running


@pytest.fixture
def up(upstream: OpenAIStandIn) -> OpenAIStandIn:
    upstream.received.clear()
    upstream.script.clear()
    upstream.fetched.clear()
    upstream.get_delay = 0.0
    upstream.max_gets_in_flight = 0
    return upstream


def _inpaint(gateway: Running, mask: bytes) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/images/edits",
        files=[("image", ("a.png", make_image(64, 64), "image/png")), ("mask", ("m.png", mask, "image/png"))],
        data={"model": "inpaint", "prompt": "x"},
        timeout=30,
    )


def test_a_fallback_with_a_smaller_mask_limit_is_skipped_for_a_larger_mask(up: OpenAIStandIn, gateway: Running) -> None:
    small, large = make_mask(64, 64, (0, 0, 32, 32)), _noisy_mask(64)
    assert len(small) < SMALL_MASK_LIMIT < len(large)
    up.script.append(ERR500)
    r = _inpaint(gateway, small)
    assert r.status_code == 200 and r.headers["x-imagegate-model"] == "inpaint-small", r.text  # the fallback serves
    up.script.extend([ERR500, ERR500])
    r = _inpaint(gateway, large)
    assert r.status_code == 500, r.text  # the primary's own error: the fallback could not take this mask
    assert r.headers["x-imagegate-model"] == "inpaint" and r.headers["x-imagegate-attempts"] == "2"
    assert len(up.received) == 3


def test_a_too_large_mask_sent_to_the_small_model_itself_is_refused(gateway: Running) -> None:
    r = httpx.post(
        f"{gateway.base_url}/v1/images/edits",
        files=[("image", ("a.png", make_image(64, 64), "image/png")), ("mask", ("m.png", _noisy_mask(64), "image/png"))],
        data={"model": "inpaint-small", "prompt": "x"},
        timeout=30,
    )
    assert r.status_code == 400 and (r.json()["error"]["param"], r.json()["error"]["code"]) == ("mask", "image_too_large")


def test_json_edit_image_urls_are_fetched_concurrently(up: OpenAIStandIn, gateway: Running) -> None:
    up.get_delay = 0.5
    host = up.base_url.removesuffix("/v1")
    body = {"model": "test-pattern", "prompt": "x", "images": [{"image_url": f"{host}/files/{i}.png"} for i in range(3)]}
    started = time.monotonic()
    r = httpx.post(f"{gateway.base_url}/v1/images/edits", json=body, timeout=30)
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert sorted(f.path for f in up.fetched) == ["/files/0.png", "/files/1.png", "/files/2.png"]
    assert up.max_gets_in_flight == 3
    assert elapsed < 1.2, f"3 fetches of 0.5 s took {elapsed:.2f} s: one after another"


def test_a_failing_url_among_concurrent_ones_is_named(up: OpenAIStandIn, gateway: Running) -> None:
    host = up.base_url.removesuffix("/v1")
    images = [{"image_url": f"{host}/files/0.png"}, {"image_url": f"{host}/nope"}, {"image_url": f"{host}/files/2.png"}]
    r = httpx.post(f"{gateway.base_url}/v1/images/edits", json={"model": "test-pattern", "prompt": "x", "images": images},
                   timeout=30)  # fmt: skip
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("images[1]", "image_url_unreachable")
