"""The ``openai`` provider against a stand-in OpenAI upstream on loopback,
called with the official SDK: fidelity, errors, usage, url mode, streaming."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from standin_openai import USAGE, Fault, OpenAIStandIn

from support import SIGNING_KEY, Running, data_url, decode_b64, decode_bytes, make_image, make_mask, run_server

UPSTREAM_KEY = "sk-upstream-secret-123"


def gateway_config(base_url: str) -> dict[str, Any]:
    up = {"type": "openai", "base_url": base_url, "api_key": UPSTREAM_KEY, "headers": {"OpenAI-Organization": "org-test"}}
    return {
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {"max_attempts": 1},  # these tests are about one exchange; routing has its own
        "providers": {
            "up": {**up, "timeout_seconds": 20},
            "slow": {**up, "timeout_seconds": 1},
            "dead": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"},
            "keyless": {"type": "openai", "base_url": base_url},
        },
        "models": {
            "gpt-image-1": [{"provider": "up"}],
            "my-fast-model": [{"provider": "up", "model": "gpt-image-1-mini"}],
            "dall-e-3": [{"provider": "up"}],
            "dall-e-2": [{"provider": "up"}],
            "flux-pro": [{"provider": "up", "model": "black-forest-labs/flux-pro"}],
            "slow-model": {"rules": "gpt-image-1", "deployments": [{"provider": "slow"}]},
            "dead-model": {"rules": "gpt-image-1", "deployments": [{"provider": "dead"}]},
            "open-model": {"rules": "gpt-image-1", "deployments": [{"provider": "keyless"}]},
        },
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def gateway(upstream: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with run_server(gateway_config(upstream.base_url), tmp_path_factory.mktemp("gw")) as running:
        yield running


@pytest.fixture
def up(upstream: OpenAIStandIn) -> OpenAIStandIn:
    upstream.received.clear()
    upstream.script.clear()
    upstream.gate_released_in_time = None
    upstream.served.clear()
    return upstream


@pytest.fixture
def sdk(gateway: Running) -> openai.OpenAI:
    return gateway.sdk(api_key="sk-client-key")


def _upstream_b64(up: OpenAIStandIn) -> str:
    return base64.b64encode(up.image).decode()


# -- fidelity -------------------------------------------------------------------


def test_generation_fields_arrive_unchanged_with_the_upstream_model_name(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    sent = dict(
        prompt="a red fox",
        n=2,
        size="1536x1024",
        quality="high",
        background="opaque",
        moderation="low",
        output_format="png",
        user="user-1234",
    )
    result = sdk.images.generate(model="my-fast-model", **sent)
    (rec,) = up.received
    assert rec.path == "/v1/images/generations"
    assert rec.json == {**sent, "model": "gpt-image-1-mini"}
    assert rec.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert rec.headers["openai-organization"] == "org-test"
    # the answer passes through: bytes, revised prompt, usage, metadata
    assert [d.b64_json for d in result.data] == [base64.b64encode(up.served[0]).decode()] * 2
    assert result.data[0].revised_prompt == "revised: a red fox"
    assert result.usage is not None and result.usage.model_dump(exclude_none=True) == USAGE
    assert result.created == 1_700_000_123
    assert result.quality == "medium" and result.background == "opaque"


def test_typed_json_values_stay_typed(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="gpt-image-1", prompt="x", output_format="webp", output_compression=55, partial_images=0)
    assert up.received[0].json == {
        "model": "gpt-image-1",
        "prompt": "x",
        "output_format": "webp",
        "output_compression": 55,
        "partial_images": 0,
    }


def test_dalle3_fields_and_revised_prompt(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    sent = dict(prompt="a cat", size="1792x1024", quality="hd", style="natural", response_format="b64_json", user="u")
    result = sdk.images.generate(model="dall-e-3", **sent)
    assert up.received[0].json == {**sent, "model": "dall-e-3"}
    assert result.data[0].revised_prompt == "revised: a cat"


def test_extension_fields_reach_an_openai_compatible_upstream(up: OpenAIStandIn, gateway: Running) -> None:
    body = {"model": "flux-pro", "prompt": "x", "seed": 7, "negative_prompt": "blur", "num_inference_steps": 28,
            "guidance_scale": 3.5, "size": "1440x816"}  # fmt: skip
    r = httpx.post(f"{gateway.base_url}/v1/images/generations", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert up.received[0].json == {**body, "model": "black-forest-labs/flux-pro"}


def test_edit_with_image_list_and_mask_byte_exact(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    images = [make_image(128, 128, "PNG"), make_image(128, 128, "JPEG"), make_image(64, 64, "WEBP")]
    mask = make_mask(128, 128, (0, 0, 64, 64))
    sent = dict(prompt="combine", n=1, size="1024x1024", quality="low", input_fidelity="high", background="opaque",
                output_format="jpeg", output_compression=70, user="u-9")  # fmt: skip
    sdk.images.edit(
        model="gpt-image-1",
        image=[("a.png", images[0], "image/png"), ("b.jpg", images[1], "image/jpeg"), ("c.webp", images[2], "image/webp")],
        mask=("m.png", mask, "image/png"),
        **sent,
    )
    (rec,) = up.received
    assert rec.path == "/v1/images/edits"
    assert rec.fields == {k: str(v) for k, v in {**sent, "model": "gpt-image-1"}.items()}
    assert [(f[0], f[2], f[3]) for f in rec.files] == [
        ("image[]", "image/png", images[0]),
        ("image[]", "image/jpeg", images[1]),
        ("image[]", "image/webp", images[2]),
        ("mask", "image/png", mask),
    ]
    assert rec.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_edit_single_image_is_sent_as_image(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    src = make_image(100, 80)
    sdk.images.edit(model="gpt-image-1", image=("a.png", src, "image/png"), prompt="x", stream=False)
    rec = up.received[0]
    assert [(f[0], f[3]) for f in rec.files] == [("image", src)]
    assert rec.fields == {"model": "gpt-image-1", "prompt": "x", "stream": "false"}


def test_json_edit_reaches_upstream_as_multipart_bytes(up: OpenAIStandIn, gateway: Running) -> None:
    src = make_image(32, 32)
    body = {"model": "gpt-image-1", "prompt": "x", "images": [{"image_url": data_url(src)}], "quality": "high"}
    r = httpx.post(f"{gateway.base_url}/v1/images/edits", json=body, timeout=30)
    assert r.status_code == 200, r.text
    rec = up.received[0]
    assert rec.files[0][3] == src
    assert rec.fields == {"model": "gpt-image-1", "prompt": "x", "quality": "high"}


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_variation_fields_and_bytes(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    src = make_image(256, 256)
    sdk.images.create_variation(model="dall-e-2", image=("v.png", src, "image/png"), n=2, size="512x512",
                                response_format="b64_json", user="u")  # fmt: skip
    rec = up.received[0]
    assert rec.path == "/v1/images/variations"
    assert rec.fields == {"model": "dall-e-2", "n": "2", "size": "512x512", "response_format": "b64_json", "user": "u"}
    assert [(f[0], f[3]) for f in rec.files] == [("image", src)]


def test_no_authorization_header_without_api_key(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="open-model", prompt="x")
    assert "authorization" not in up.received[0].headers


# -- url mode -----------------------------------------------------------------------


def test_url_for_gpt_image_model_is_hosted_by_the_gateway(up: OpenAIStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    result = sdk.images.generate(model="gpt-image-1", prompt="x", response_format="url")
    assert "response_format" not in up.received[0].json  # OpenAI refuses it for GPT image models
    url = result.data[0].url
    assert url.startswith(gateway.base_url)
    assert httpx.get(url).content == up.image


def test_upstream_url_answers_are_downloaded_and_rehosted(up: OpenAIStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    up.script.append(Fault("url"))
    result = sdk.images.generate(model="dall-e-2", prompt="x", size="256x256")
    assert up.received[0].json == {"model": "dall-e-2", "prompt": "x", "size": "256x256"}
    url = result.data[0].url
    assert url.startswith(gateway.base_url + "/v1/images/files/")
    assert httpx.get(url).content == up.served[-1]
    assert decode_bytes(up.served[-1]).size == (256, 256)
    assert result.data[0].revised_prompt == "r"


def test_gateway_converts_when_upstream_ignores_output_format(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    # the stand-in always answers PNG; the client asked webp
    result = sdk.images.generate(model="gpt-image-1", prompt="x", output_format="webp")
    img = decode_b64(result.data[0].b64_json)
    assert img.format == "WEBP" and img.size == decode_bytes(up.image).size
    assert result.output_format == "webp"


# -- errors -------------------------------------------------------------------------

ERROR_CASES = [
    # (fault, status, type, code, param, message fragment)
    (Fault("status", 400, {"error": {"message": "Your request was rejected by the safety system.", "type": "image_generation_user_error",
                                     "param": None, "code": "moderation_blocked"}}),
     400, "image_generation_user_error", "moderation_blocked", None, "safety system"),
    (Fault("status", 400, {"error": {"message": "Invalid size", "type": "invalid_request_error", "param": "size", "code": "invalid_value"}}),
     400, "invalid_request_error", "invalid_value", "size", "Invalid size"),
    (Fault("status", 429, {"error": {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit_exceeded"}},
           headers={"Retry-After": "7"}),
     429, "requests", "rate_limit_exceeded", None, "Rate limit"),
    (Fault("status", 500, {"error": {"message": "The server had an error", "type": "server_error", "param": None, "code": None}}),
     500, "server_error", None, None, "server had an error"),
    (Fault("status", 401, {"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY[:6]}***123", "type": "invalid_request_error",
                                     "param": None, "code": "invalid_api_key"}}),
     502, "api_error", "upstream_auth_error", None, "rejected this gateway's credentials"),
    (Fault("status", 403, {"error": {"message": "forbidden", "type": "invalid_request_error", "param": None, "code": None}}),
     502, "api_error", "upstream_auth_error", None, "credentials"),
    (Fault("garbage", 503), 502, "api_error", "invalid_upstream_response", None, "without an error envelope"),
    (Fault("garbage", 200), 502, "api_error", "invalid_upstream_response", None, "not JSON"),
    (Fault("json", 200, {"created": 1}), 502, "api_error", "invalid_upstream_response", None, "no 'data'"),
    (Fault("json", 200, {"data": [{"b64_json": "%%%"}]}), 502, "api_error", "invalid_upstream_response", None, "base64"),
    (Fault("json", 200, {"data": [{"b64_json": base64.b64encode(b"not an image").decode()}]}),
     502, "api_error", "invalid_upstream_response", None, "not PNG"),
    (Fault("truncated"), 502, "api_error", "upstream_connection_error", None, "broke off"),
    (Fault("reset"), 502, "api_error", "upstream_connection_error", None, "broke off"),
]  # fmt: skip


@pytest.mark.parametrize(
    "fault,status,kind,code,param,fragment", ERROR_CASES, ids=[f"{c[0].kind}-{c[1]}-{i}" for i, c in enumerate(ERROR_CASES)]
)
def test_upstream_error_mapping(up: OpenAIStandIn, sdk: openai.OpenAI, fault: Fault, status: int, kind: str,
                                code: str | None, param: str | None, fragment: str) -> None:  # fmt: skip
    up.script.append(fault)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="gpt-image-1", prompt="x")
    err = info.value
    assert err.status_code == status
    body = err.response.json()["error"]
    assert (body["type"], body["code"], body["param"]) == (kind, code, param)
    assert fragment in body["message"]
    assert UPSTREAM_KEY[:6] not in err.response.text
    if status == 429:
        assert err.response.headers["retry-after"] == "7"


def test_upstream_timeout_is_504(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    up.script.append(Fault("hang", seconds=3))
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="slow-model", prompt="x")
    assert info.value.status_code == 504
    assert info.value.response.json()["error"]["code"] == "upstream_timeout"


def test_unreachable_upstream_is_502(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="dead-model", prompt="x")
    assert info.value.status_code == 502
    assert info.value.response.json()["error"]["code"] == "upstream_unreachable"


# -- streaming ---------------------------------------------------------------------------


def _events(up: OpenAIStandIn, prefix: str, gate: threading.Event) -> list[dict[str, Any]]:
    b64 = _upstream_b64(up)
    common = {"created_at": 1_700_000_200, "size": "1024x1024", "quality": "high", "background": "opaque", "output_format": "png"}
    return [
        {"type": f"{prefix}.partial_image", "b64_json": b64, "partial_image_index": 0, **common},
        {"type": f"{prefix}.completed", "b64_json": b64, "usage": USAGE, **common},
    ]


def test_generation_stream_passes_through_event_by_event(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    gate = threading.Event()
    events = _events(up, "image_generation", gate)
    up.script.append(Fault("stream", events=events, gate=gate))
    received = []
    for event in sdk.images.generate(model="gpt-image-1", prompt="x", stream=True, partial_images=1):
        received.append(event.model_dump(exclude_none=True))
        gate.set()  # the upstream sends the completion only after we hold the partial
    assert up.gate_released_in_time is True, "the gateway buffered the stream"
    assert up.received[0].json == {"model": "gpt-image-1", "prompt": "x", "stream": True, "partial_images": 1}
    assert [{k: v for k, v in e.items() if k != "usage"} for e in received] == [
        {k: v for k, v in e.items() if k != "usage"} for e in events
    ]
    assert received[1]["usage"] == USAGE


def test_edit_stream_passes_through(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    gate = threading.Event()
    up.script.append(Fault("stream", events=_events(up, "image_edit", gate), gate=gate))
    kinds = []
    for event in sdk.images.edit(model="gpt-image-1", image=("a.png", make_image(), "image/png"), prompt="x", stream=True):
        kinds.append(event.type)
        gate.set()
    assert kinds == ["image_edit.partial_image", "image_edit.completed"]
    assert up.gate_released_in_time is True


def test_error_event_mid_stream_reaches_the_client(up: OpenAIStandIn, gateway: Running) -> None:
    b64 = _upstream_b64(up)
    events = [
        {"type": "image_generation.partial_image", "b64_json": b64, "partial_image_index": 0},
        {"type": "error", "error": {"message": "generation failed upstream", "code": "server_error", "param": None}},
    ]
    up.script.append(Fault("stream", events=events))
    with httpx.stream("POST", f"{gateway.base_url}/v1/images/generations", timeout=30,
                      json={"model": "gpt-image-1", "prompt": "x", "stream": True, "partial_images": 1}) as r:  # fmt: skip
        assert r.status_code == 200
        text = r.read().decode()
    assert "event: image_generation.partial_image" in text
    assert "event: error" in text and "generation failed upstream" in text


def test_stream_error_before_first_event_is_a_plain_json_error(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    up.script.append(Fault("status", 429, {"error": {"message": "slow down", "type": "requests", "param": None,
                                                     "code": "rate_limit_exceeded"}}, headers={"Retry-After": "3"}))  # fmt: skip
    with pytest.raises(openai.RateLimitError) as info:
        list(sdk.images.generate(model="gpt-image-1", prompt="x", stream=True))
    assert info.value.response.headers["retry-after"] == "3"


def test_stream_with_format_conversion(up: OpenAIStandIn, sdk: openai.OpenAI) -> None:
    gate = threading.Event()
    gate.set()
    up.script.append(Fault("stream", events=_events(up, "image_generation", gate)))
    events = list(sdk.images.generate(model="gpt-image-1", prompt="x", stream=True, output_format="jpeg"))
    final = decode_b64(events[-1].b64_json)
    assert final.format == "JPEG" and events[-1].output_format == "jpeg"
    original = decode_bytes(up.image).convert("RGB")
    assert np.abs(np.asarray(final).astype(int) - np.asarray(original).astype(int)).mean() < 3


# -- indistinguishable ------------------------------------------------------------------


def test_sdk_sees_the_same_answer_as_from_the_upstream_directly(
    up: OpenAIStandIn, sdk: openai.OpenAI, request: pytest.FixtureRequest
) -> None:
    direct = openai.OpenAI(base_url=up.base_url, api_key=UPSTREAM_KEY, max_retries=0)
    request.addfinalizer(direct.close)
    kwargs = dict(model="gpt-image-1", prompt="a lighthouse", size="1024x1024", quality="medium", n=2)
    assert sdk.images.generate(**kwargs).model_dump() == direct.images.generate(**kwargs).model_dump()
    edit = dict(model="gpt-image-1", image=[("a.png", make_image(), "image/png")], prompt="x", size="1024x1536")
    assert sdk.images.edit(**edit).model_dump() == direct.images.edit(**edit).model_dump()
    error = Fault("status", 400, {"error": {"message": "bad", "type": "invalid_request_error", "param": "prompt", "code": "x"}})
    answers = []
    for client in (sdk, direct):
        up.script.append(error)
        with pytest.raises(openai.BadRequestError) as info:
            client.images.generate(model="gpt-image-1", prompt="x")
        answers.append((info.value.status_code, info.value.body, info.value.code, info.value.param, info.value.message))
    assert answers[0] == answers[1]
