"""Answers are what the upstream said, or what the gateway knows: no
invented ``quality: auto``, no values outside OpenAI's schema; and every
answer, errors included, says what was tried. Against the stand-in OpenAI
upstream, with the official SDK."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from standin_openai import USAGE, Fault, OpenAIStandIn, png_of

from support import SIGNING_KEY, Running, decode_b64, png_with_idat, run_server

ERR500 = Fault("status", 500, {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
ERR400 = Fault("status", 400, {"error": {"message": "Invalid size", "type": "invalid_request_error", "param": "size",
                                         "code": "invalid_value"}})  # fmt: skip


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def gateway(upstream: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    config = {
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {
            "max_attempts": 3,
            "backoff_initial_seconds": 0.01,
            "backoff_max_seconds": 0.02,
            "cooldown_failures": 100,
        },  # fmt: skip
        "providers": {"up": {"type": "openai", "base_url": upstream.base_url, "api_key": "sk-upstream"}},
        "models": {"gpt-image-1": [{"provider": "up"}]},
    }
    with run_server(config, tmp_path_factory.mktemp("gw")) as running:
        yield running


@pytest.fixture
def up(upstream: OpenAIStandIn) -> OpenAIStandIn:
    upstream.received.clear()
    upstream.script.clear()
    return upstream


@pytest.fixture
def sdk(gateway: Running) -> openai.OpenAI:
    return gateway.sdk()


def _answer(image: bytes, **meta: Any) -> Fault:
    """An upstream answer with only the metadata given."""
    body = {"created": 1_700_000_001, "data": [{"b64_json": base64.b64encode(image).decode()}], "usage": USAGE, **meta}
    return Fault("json", body=body)


def _post(gateway: Running, **body: Any) -> httpx.Response:
    r = httpx.post(f"{gateway.base_url}/v1/images/generations", json={"model": "gpt-image-1", "prompt": "x", **body}, timeout=30)
    assert r.status_code == 200, r.text
    return r


# -- item: no invented fields --------------------------------------------------------


def test_upstream_without_metadata_gets_none_invented(up: OpenAIStandIn, gateway: Running, sdk: openai.OpenAI) -> None:
    up.script.append(_answer(png_of(64, 48)))
    r = _post(gateway, quality="high", background="opaque")  # asked, but the upstream did not confirm
    doc = r.json()
    assert "quality" not in doc and "background" not in doc
    # what the gateway knows: the image it returns is a 64x48 PNG
    assert (doc["size"], doc["output_format"]) == ("64x48", "png")
    up.script.append(_answer(png_of(64, 48)))
    result = sdk.images.generate(model="gpt-image-1", prompt="x")  # quality "auto" by default
    assert result.quality is None and result.background is None


def test_values_outside_the_schema_are_not_passed_on(up: OpenAIStandIn, gateway: Running) -> None:
    up.script.append(_answer(png_of(64, 48), quality="auto", background="auto", size="auto", output_format="gif"))
    doc = _post(gateway).json()
    assert "quality" not in doc and "background" not in doc
    assert (doc["size"], doc["output_format"]) == ("64x48", "png")  # the image's own, not "auto"/"gif"


def test_the_upstreams_metadata_passes_through(up: OpenAIStandIn, gateway: Running, sdk: openai.OpenAI) -> None:
    up.script.append(_answer(png_of(1024, 1536), quality="low", background="transparent", size="1024x1536", output_format="png"))
    result = sdk.images.generate(model="gpt-image-1", prompt="x", size="1024x1536", quality="high")
    assert (result.quality, result.background, result.size, result.output_format) == ("low", "transparent", "1024x1536", "png")


def test_what_the_gateway_changed_it_reports(up: OpenAIStandIn, gateway: Running) -> None:
    up.script.append(_answer(png_of(64, 48), quality="medium"))  # the wrong size, and PNG
    r = _post(gateway, size="1024x1536", output_format="jpeg")
    doc = r.json()
    assert (doc["size"], doc["output_format"], doc["quality"]) == ("1024x1536", "jpeg", "medium")
    assert r.headers["x-imagegate-resized"] == "64x48->1024x1536; crop"
    assert decode_b64(doc["data"][0]["b64_json"]).size == (1024, 1536)


def test_stream_events_carry_the_upstreams_value_or_the_requests_setting(up: OpenAIStandIn, gateway: Running) -> None:
    b64 = base64.b64encode(png_of(64, 48)).decode()
    up.script.append(Fault("stream", events=[{"type": "image_generation.completed", "b64_json": b64, "usage": USAGE,
                                              "created_at": 1, "output_format": "png"}]))  # fmt: skip
    body = {"model": "gpt-image-1", "prompt": "x", "stream": True, "quality": "low"}
    with httpx.stream("POST", f"{gateway.base_url}/v1/images/generations", json=body, timeout=30) as r:
        lines = [line for line in r.read().decode().splitlines() if line.startswith("data:")]
    event = json.loads(lines[-1][5:])
    # required by the events' schema, which allows "auto": the setting asked (or auto), never a guess
    assert (event["quality"], event["background"], event["size"]) == ("low", "auto", "64x48")


# -- item: every answer says what was tried --------------------------------------------


def _tried(headers: httpx.Headers) -> tuple[str | None, str | None, str | None]:
    return headers.get("x-imagegate-model"), headers.get("x-imagegate-provider"), headers.get("x-imagegate-attempts")


def test_an_upstream_500_retried_three_times_says_so(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    up.script.extend([ERR500] * 3)
    with pytest.raises(openai.InternalServerError) as info:
        sdk.images.generate(model="gpt-image-1", prompt="x")
    assert info.value.status_code == 500 and info.value.body["message"] == "boom"  # type: ignore[index]
    assert _tried(info.value.response.headers) == ("gpt-image-1", "up", "3") and len(up.received) == 3


def test_an_upstream_without_an_envelope_is_a_502_that_says_what_was_tried(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    up.script.extend([Fault("garbage", 503)] * 3)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="gpt-image-1", prompt="x")
    assert info.value.status_code == 502
    assert _tried(info.value.response.headers) == ("gpt-image-1", "up", "3")


def test_an_upstream_400_is_one_attempt(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    up.script.append(ERR400)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model="gpt-image-1", prompt="x")
    assert info.value.body["param"] == "size"  # type: ignore[index]
    assert _tried(info.value.response.headers) == ("gpt-image-1", "up", "1") and len(up.received) == 1


def test_a_failure_after_the_upstream_answered_says_what_was_tried(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    """An answer whose image cannot be converted fails in the gateway, after routing."""
    up.script.append(_answer(png_with_idat(b"\x00not zlib data" * 16)))
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="gpt-image-1", prompt="x", output_format="jpeg")
    assert info.value.status_code == 502 and info.value.body["code"] == "invalid_upstream_image"  # type: ignore[index]
    assert _tried(info.value.response.headers) == ("gpt-image-1", "up", "1")


def test_errors_before_routing_claim_no_attempt(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model="gpt-image-1", prompt="x", size="7x7")
    assert _tried(info.value.response.headers) == (None, None, None)
