"""What an upstream says is checked before it reaches a client, a log or a
budget: image counts and usage, secrets echoed in its errors, the image URLs
it hands out (SSRF, credentials), and statuses no images API sends. Real
servers on loopback, stand-in upstreams, the official SDK."""

from __future__ import annotations

import base64
import logging
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from cryptography.fernet import Fernet
from standin_openai import USAGE, Fault, OpenAIStandIn

from support import SIGNING_KEY, Running, make_image, run_server

MASTER = "master-key-for-the-trust-tests-0123456789"
# Neither looks like an sk- key: only redaction by value can catch them.
UPSTREAM_KEY = "upstream-credential-7f3a9c2e5d1b"
HEADER_SECRET = "azure-style-api-key-4b8e2f6a0c9d"
VIRTUAL_SECRET = "virtual-credential-81d4c7a2e6f0"
SECRETS = (UPSTREAM_KEY, HEADER_SECRET, VIRTUAL_SECRET)


def config(upstream: str, *, allow_private: bool) -> dict[str, Any]:
    return {
        "auth": {"master_key": MASTER, "encryption_key": Fernet.generate_key().decode()},
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {"max_attempts": 1},  # one exchange per request: what it answered is what is judged
        "server": {"fetch": {"allow_private_networks": allow_private, "timeout_seconds": 5}},
        "pricing": {"per-image": {"per_image": 0.25}},
        "providers": {
            "up": {"type": "openai", "base_url": upstream, "api_key": UPSTREAM_KEY, "headers": {"api-key": HEADER_SECRET}},
        },
        "models": {
            "gpt-image-1": [{"provider": "up"}],
            "dall-e-2": [{"provider": "up"}],
            "per-image": {"rules": "dall-e-2", "deployments": [{"provider": "up"}]},
        },
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[OpenAIStandIn]:
    """Another host (port) on loopback that serves images: where a hostile
    upstream would point the gateway."""
    with OpenAIStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def gw(upstream: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Private addresses refused, the default."""
    with run_server(config(upstream.base_url, allow_private=False), tmp_path_factory.mktemp("trust")) as running:
        yield running


@pytest.fixture(scope="module")
def open_gw(upstream: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Private addresses allowed (an intranet deployment)."""
    with run_server(config(upstream.base_url, allow_private=True), tmp_path_factory.mktemp("open")) as running:
        yield running


@pytest.fixture
def up(upstream: OpenAIStandIn, elsewhere: OpenAIStandIn) -> OpenAIStandIn:
    for standin in (upstream, elsewhere):
        standin.received.clear()
        standin.fetched.clear()
        standin.script.clear()
    return upstream


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def admin(gw: Running, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gw.base_url + path, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30, **kwargs)


def new_key(gw: Running, budget_usd: float) -> dict[str, Any]:
    r = admin(gw, "POST", "/admin/keys", json={"name": "trust", "budget_usd": budget_usd})
    assert r.status_code == 201, r.text
    return r.json()


def spend(gw: Running, key: dict[str, Any]) -> tuple[str, str]:
    state = admin(gw, "GET", f"/admin/keys/{key['id']}").json()
    return state["spent_usd"], state["reserved_usd"]


def post(gw: Running, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    headers = headers or {"Authorization": f"Bearer {MASTER}"}
    return httpx.post(f"{gw.base_url}/v1/images/{path}", json=body, headers=headers, timeout=30)


B64 = base64.b64encode(make_image(32, 32)).decode()


# -- item 3: numbers and images from an upstream ------------------------------------


def test_more_images_than_asked_are_dropped_and_charged_as_asked(
    up: OpenAIStandIn, gw: Running, logs: pytest.LogCaptureFixture
) -> None:
    key = new_key(gw, budget_usd=1)
    up.script.append(Fault("json", body={"created": 1, "data": [{"b64_json": B64}] * 500}))
    raw = gw.sdk(api_key=key["key"]).images.with_raw_response.generate(model="per-image", prompt="x", n=1, size="256x256")
    assert len(raw.parse().data) == 1
    assert raw.headers["x-imagegate-cost-usd"] == "0.250000"
    assert spend(gw, key) == ("0.250000", "0.000000")
    warned = [r for r in logs.records if r.levelno == logging.WARNING and "500 images for n=1" in r.getMessage()]
    assert len(warned) == 1


def test_extra_images_of_a_token_priced_model_are_not_charged(up: OpenAIStandIn, gw: Running) -> None:
    """Usage for 4 images when 1 was asked: the output tokens are shared out, the client pays for 1."""
    key = new_key(gw, budget_usd=1)
    four = {**USAGE, "output_tokens": 4 * 1056, "total_tokens": 200 + 4 * 1056,
            "output_tokens_details": {"image_tokens": 4 * 1056, "text_tokens": 0}}  # fmt: skip
    up.script.append(Fault("json", body={"created": 1, "data": [{"b64_json": B64}] * 4, "usage": four}))
    raw = gw.sdk(api_key=key["key"]).images.with_raw_response.generate(model="gpt-image-1", prompt="x", n=1)
    assert len(raw.parse().data) == 1
    # One image's worth: 40 text + 160 image input tokens, 1056 output tokens at gpt-image-1's rates.
    assert raw.headers["x-imagegate-cost-usd"] == "0.044040"
    assert spend(gw, key) == ("0.044040", "0.000000")


def test_a_stream_with_more_completions_than_asked_returns_and_charges_n(up: OpenAIStandIn, gw: Running) -> None:
    key = new_key(gw, budget_usd=1)
    done = {"type": "image_generation.completed", "b64_json": B64, "usage": USAGE}
    up.script.append(Fault("stream", events=[done, done, done]))
    events = list(gw.sdk(api_key=key["key"]).images.generate(model="gpt-image-1", prompt="x", n=1, stream=True))
    assert [e.type for e in events] == ["image_generation.completed"]
    assert spend(gw, key) == ("0.044040", "0.000000")  # one completion's usage, not three


BAD_USAGE = {
    "negative output": {**USAGE, "output_tokens": -100_000_000},
    "negative as a float": {**USAGE, "output_tokens": -1e8},
    "absurd output": {**USAGE, "output_tokens": 10_000_001, "total_tokens": 10_000_201},
    "negative input detail": {**USAGE, "input_tokens_details": {"text_tokens": -5, "image_tokens": 160}},
    "details above the total": {**USAGE, "output_tokens_details": {"image_tokens": 9_000_000, "text_tokens": 0}},
    "total below its parts": {**USAGE, "total_tokens": 10},
    "not a number": {**USAGE, "output_tokens": "1056"},
}


@pytest.mark.parametrize("usage", BAD_USAGE.values(), ids=BAD_USAGE.keys())
def test_impossible_usage_is_502_and_charged_nothing(up: OpenAIStandIn, gw: Running, usage: dict[str, Any]) -> None:
    key = new_key(gw, budget_usd=5)
    up.script.append(Fault("json", body={"created": 1, "data": [{"b64_json": B64}], "usage": usage}))
    with pytest.raises(openai.APIStatusError) as info:
        gw.sdk(api_key=key["key"]).images.generate(model="gpt-image-1", prompt="x")
    assert info.value.status_code == 502
    assert info.value.response.json()["error"]["code"] == "invalid_upstream_response"
    assert info.value.response.headers["x-imagegate-cost-usd"] == "0.000000"
    assert spend(gw, key) == ("0.000000", "0.000000")


def test_impossible_usage_in_a_stream_is_502_before_it_starts(up: OpenAIStandIn, gw: Running) -> None:
    done = {"type": "image_generation.completed", "b64_json": B64, "usage": {**USAGE, "output_tokens": -100_000_000}}
    up.script.append(Fault("stream", events=[done]))
    r = post(gw, "generations", {"model": "gpt-image-1", "prompt": "x", "stream": True})
    assert r.status_code == 502 and r.json()["error"]["code"] == "invalid_upstream_response"


# -- item 8: secrets echoed in upstream errors ------------------------------------

ECHO = "Invalid request. Authorization: $AUTHORIZATION; key $TOKEN; headers $HEADERS"


def _assert_no_secret(text: str, logs: pytest.LogCaptureFixture) -> None:
    logged = "\n".join(logs.text.splitlines() + [r.getMessage() for r in logs.records])
    for secret in SECRETS:
        assert secret not in text
        assert secret not in logged


@pytest.mark.parametrize("status", [400, 429, 500])
def test_secrets_echoed_in_an_upstream_error_never_reach_client_or_log(
    up: OpenAIStandIn, gw: Running, logs: pytest.LogCaptureFixture, status: int
) -> None:
    envelope = {"error": {"message": ECHO, "type": "invalid_request_error", "param": None, "code": "echoed"}}
    up.script.append(Fault("status", status, envelope, echo=True))
    r = post(gw, "generations", {"model": "gpt-image-1", "prompt": "x"})
    assert r.status_code == status
    assert up.received[-1].headers["api-key"] == HEADER_SECRET  # the echo did contain the secrets
    message = r.json()["error"]["message"]
    assert message.startswith("Invalid request.") and "[redacted]" in message
    _assert_no_secret(r.text, logs)


def test_secrets_echoed_in_a_stream_error_event_never_reach_client_or_log(
    up: OpenAIStandIn, gw: Running, logs: pytest.LogCaptureFixture
) -> None:
    events = [
        {"type": "image_generation.partial_image", "b64_json": B64, "partial_image_index": 0},
        {"type": "error", "error": {"message": ECHO, "code": "server_error", "param": None}},
    ]
    up.script.append(Fault("stream", events=events, echo=True))
    with httpx.stream("POST", f"{gw.base_url}/v1/images/generations", timeout=30, headers={"Authorization": f"Bearer {MASTER}"},
                      json={"model": "gpt-image-1", "prompt": "x", "stream": True, "partial_images": 1}) as r:  # fmt: skip
        assert r.status_code == 200
        text = r.read().decode()
    assert "event: error" in text and "Invalid request." in text
    _assert_no_secret(text, logs)


def test_a_virtual_keys_secret_echoed_upstream_is_redacted(
    up: OpenAIStandIn, gw: Running, logs: pytest.LogCaptureFixture
) -> None:
    key = new_key(gw, budget_usd=5)
    r = admin(gw, "PUT", "/admin/virtual-keys/trust-vk", json={"provider": "up", "secret": VIRTUAL_SECRET, "keys": [key["id"]]})
    assert r.status_code in (200, 201), r.text
    envelope = {"error": {"message": "No access for key $TOKEN.", "type": "invalid_request_error", "param": None, "code": None}}
    up.script.append(Fault("status", 500, envelope, echo=True))
    r = post(gw, "generations", {"model": "gpt-image-1", "prompt": "x"},
             **{"x-portkey-api-key": key["key"], "x-portkey-virtual-key": "trust-vk"})  # fmt: skip
    assert up.received[-1].headers["authorization"] == f"Bearer {VIRTUAL_SECRET}"
    assert r.status_code == 500 and r.json()["error"]["message"] == "No access for key [redacted]."
    _assert_no_secret(r.text, logs)


# -- item 9: image URLs an upstream hands out ---------------------------------------


def test_an_upstream_image_url_elsewhere_is_fetched_without_provider_headers(
    up: OpenAIStandIn, elsewhere: OpenAIStandIn, open_gw: Running
) -> None:
    up.script.append(Fault("url", body=f"{elsewhere.base_url.removesuffix('/v1')}/files/a.png"))
    result = open_gw.sdk(api_key=MASTER).images.generate(model="dall-e-2", prompt="x", response_format="b64_json")
    assert base64.b64decode(result.data[0].b64_json) == elsewhere.image
    (fetch,) = elsewhere.fetched
    assert "api-key" not in fetch.headers and "authorization" not in fetch.headers
    assert up.fetched == []


def test_provider_headers_go_to_its_own_origin_but_not_across_a_redirect(
    up: OpenAIStandIn, elsewhere: OpenAIStandIn, open_gw: Running
) -> None:
    target = f"{elsewhere.base_url.removesuffix('/v1')}/files/b.png"
    own = f"{up.base_url.removesuffix('/v1')}/redirect/{urllib.parse.quote(target, safe='')}"
    up.script.append(Fault("url", body=own))
    open_gw.sdk(api_key=MASTER).images.generate(model="dall-e-2", prompt="x", response_format="b64_json")
    (first,) = up.fetched
    assert first.headers["api-key"] == HEADER_SECRET and "authorization" not in first.headers
    (second,) = elsewhere.fetched
    assert "api-key" not in second.headers and "authorization" not in second.headers


def test_an_upstream_image_url_to_a_private_address_is_refused_without_fetching(
    up: OpenAIStandIn, elsewhere: OpenAIStandIn, gw: Running
) -> None:
    up.script.append(Fault("url", body=f"{elsewhere.base_url.removesuffix('/v1')}/files/c.png"))
    r = post(gw, "generations", {"model": "dall-e-2", "prompt": "x", "size": "256x256"})
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_upstream_response"
    assert "'up'" in err["message"] and "non-public address" in err["message"]
    assert elsewhere.fetched == []


# -- item 10: SSRF through IPv6 transition forms ------------------------------------


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "[::7f00:1]", "[::ffff:7f00:1]"])
def test_json_edit_refuses_ipv6_forms_of_loopback(up: OpenAIStandIn, elsewhere: OpenAIStandIn, gw: Running, host: str) -> None:
    port = urllib.parse.urlsplit(elsewhere.base_url).port
    body = {"model": "gpt-image-1", "prompt": "x", "images": [{"image_url": f"http://{host}:{port}/files/x.png"}]}
    r = post(gw, "edits", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == ("images[0]", "invalid_image_url")
    assert "non-public address" in err["message"]
    assert elsewhere.fetched == [] and up.received == []


# -- item 13: statuses no images API sends ------------------------------------------

ODD = {"error": {"message": "odd", "type": "invalid_request_error", "param": None, "code": "odd"}}


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", 201, ODD),
        Fault("status", 302, ODD, headers={"Location": "http://127.0.0.1:9/elsewhere"}),
        Fault("status", 999, ODD),
        Fault("status", 399, ODD),
    ],
    ids=lambda f: str(f.status),
)
def test_statuses_outside_200_and_4xx_5xx_are_502(up: OpenAIStandIn, gw: Running, fault: Fault) -> None:
    up.script.append(fault)
    with pytest.raises(openai.APIStatusError) as info:
        gw.sdk(api_key=MASTER).images.generate(model="gpt-image-1", prompt="x")
    assert info.value.status_code == 502
    err = info.value.response.json()["error"]
    assert err["code"] == "invalid_upstream_response" and f"HTTP status {fault.status}" in err["message"]
