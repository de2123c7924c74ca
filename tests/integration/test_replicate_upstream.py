"""The ``replicate`` provider against a stand-in Replicate API
(tests/standin_replicate.py), through the real server, called with the
official ``openai`` SDK: sync mode (``Prefer: wait``) answers without a poll,
slow predictions are polled, OpenAI's fields become the model's input
through the input map (``n`` -> ``num_outputs`` or ``n`` predictions, ``size``
-> the nearest aspect ratio or width/height, an edit's image -> a ``data:``
URI), unmapped fields are 400s, abandoned predictions are cancelled, and
Replicate's failures and errors are mapped."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from standin_replicate import KEY, REQUIRED, SCHEMAS, Fault, ReplicateStandIn

from support import SIGNING_KEY, Running, decode_b64, decode_bytes, make_image, standin_fixtures

WAIT = 5  # the provider's wait_seconds
SCHNELL = "black-forest-labs/flux-schnell"
VERSION = "5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637"


def gateway_config(base_url: str) -> dict[str, Any]:
    rep = {"type": "replicate", "base_url": base_url, "api_key": KEY, "wait_seconds": WAIT,
           "poll_initial_seconds": 0.02, "poll_max_seconds": 0.05}  # fmt: skip
    tiny = {"prompt": "text", "size": "width_height", "multiple_of": 8, "min_edge": 64, "max_edge": 512}
    return {
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {"max_attempts": 1},
        "providers": {
            "rep": rep,
            "rep-async": {**rep, "wait_seconds": 0},
            "rep-custom": {**rep, "inputs": {"acme/*": tiny}},
            "rep-wrong-key": {**rep, "api_key": "r8_wrong-key-9876543210fedcba"},
        },
        "catalog": {"acme/tiny": {"extends": SCHNELL, "source": "https://replicate.com/acme/tiny", "n_max": 3}},
        "models": {
            "flux-schnell": [{"provider": "rep", "model": SCHNELL}],
            "black-forest-labs/flux-dev": [{"provider": "rep"}],
            "flux-pro": [{"provider": "rep", "model": "black-forest-labs/flux-1.1-pro"}],
            "kontext": [{"provider": "rep", "model": "black-forest-labs/flux-kontext-pro"}],
            "schnell-async": [{"provider": "rep-async", "model": SCHNELL}],
            "schnell-pinned": {"rules": SCHNELL, "deployments": [{"provider": "rep", "model": f"{SCHNELL}:{VERSION}"}]},
            "acme/tiny": [{"provider": "rep-custom"}],
            "badly-keyed": {"rules": SCHNELL, "deployments": [{"provider": "rep-wrong-key", "model": SCHNELL}]},
            "typo": {"rules": SCHNELL, "deployments": [{"provider": "rep", "model": "flux schnell"}]},
        },
    }


upstream, gateway, up = standin_fixtures(ReplicateStandIn, gateway_config, "replicate")


@pytest.fixture(autouse=True, scope="module")
def tiny_model() -> Iterator[None]:
    """A model of the operator's own: its input takes ``text``, not ``prompt``."""
    SCHEMAS["acme/tiny"] = {
        "text": ("str", None),
        "width": ("int", (64, 512)),
        "height": ("int", (64, 512)),
        "seed": ("int", None),
    }
    REQUIRED["acme/tiny"] = "text"
    yield
    del SCHEMAS["acme/tiny"], REQUIRED["acme/tiny"]


@pytest.fixture
def sdk(gateway: Running) -> openai.OpenAI:
    return gateway.sdk()


def _post(gateway: Running, endpoint: str, body: dict[str, Any], timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/v1/images/{endpoint}", json=body, timeout=timeout)


def _inputs(up: ReplicateStandIn) -> list[dict[str, Any]]:
    return [r.json["input"] for r in up.requests("POST") if not r.path.endswith("/cancel")]


def _uri_bytes(uri: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert uri.startswith(prefix), uri[:40]
    return base64.b64decode(uri.removeprefix(prefix), validate=True)


# -- sync mode, polling, the input map ------------------------------------------------------


def test_a_quick_model_answers_within_the_wait_and_is_never_polled(up: ReplicateStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(
        model="flux-schnell", prompt="a red fox", size="1536x1024", n=2, output_format="jpeg", output_compression=70,
        response_format="b64_json", extra_body={"seed": 7, "go_fast": False},
    )  # fmt: skip
    (create,) = up.requests("POST")
    assert create.path == f"/v1/models/{SCHNELL}/predictions"
    assert create.headers["authorization"] == f"Bearer {KEY}"
    assert create.headers["prefer"] == f"wait={WAIT}"
    assert create.headers["cancel-after"] == f"{600 + WAIT}s"  # the job's deadline (job_timeout_seconds) and the wait
    # one prediction makes both images; the nearest ratio; jpeg as jpg; output_compression as output_quality
    assert create.json == {"input": {"prompt": "a red fox", "num_outputs": 2, "aspect_ratio": "3:2", "output_format": "jpg",
                                     "output_quality": 70, "seed": 7, "go_fast": False}}  # fmt: skip
    assert up.requests("GET") == []  # sync mode: no poll
    result = raw.parse()
    assert len(result.data) == 2
    served = decode_bytes(up.served[0])
    assert (served.format, served.size) == ("JPEG", (1216, 832))  # FLUX's 3:2 at one megapixel
    for item in result.data:
        img = decode_b64(item.b64_json)
        assert (img.format, img.size, img.mode) == ("JPEG", (1536, 1024), "RGB")
    assert raw.headers["x-imagegate-resized"] == "1216x832->1536x1024; crop"
    assert raw.headers["x-imagegate-cost-usd"] == "0.006000"  # 2 x $0.003: the catalog's price
    # resized, so re-encoded once, at the client's level (not the encoder's default)
    assert _quantization(base64.b64decode(result.data[0].b64_json)) == _quantization(_jpeg_at(70))


@pytest.mark.parametrize("fmt,size", [("jpeg", "1024x1024"), ("jpeg", None), ("webp", "1024x1024")])
def test_output_compression_applied_upstream_is_not_applied_again(
    up: ReplicateStandIn, sdk: openai.OpenAI, fmt: str, size: str | None
) -> None:
    kwargs: dict[str, Any] = {"size": size} if size else {}
    raw = sdk.images.with_raw_response.generate(model="flux-schnell", prompt="x", output_format=fmt,  # type: ignore[arg-type]
                                                output_compression=40, response_format="b64_json", **kwargs)  # fmt: skip
    assert _inputs(up)[0]["output_quality"] == 40
    (served,) = up.served
    if fmt == "jpeg":
        assert _quantization(served) == _quantization(_jpeg_at(40))  # the model compressed it as asked
    returned = base64.b64decode(raw.parse().data[0].b64_json)
    assert returned == served  # the model's bytes, not compressed a second time
    assert Image.open(io.BytesIO(returned)).getexif()[0x0131] == "replicate-standin"  # the stand-in's tag: never re-encoded
    assert "x-imagegate-resized" not in raw.headers


def _jpeg_at(quality: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _quantization(jpeg: bytes) -> dict[int, list[int]]:
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG"
    return {k: list(v) for k, v in img.quantization.items()}  # type: ignore[attr-defined]


def test_a_slow_prediction_is_polled_until_it_succeeds(up: ReplicateStandIn, sdk: openai.OpenAI) -> None:
    up.slow_polls = 2
    result = sdk.images.generate(model="flux-schnell", prompt="a slow lighthouse", response_format="b64_json")
    assert len(up.requests("POST")) == 1
    polls = up.requests("GET", "/v1/predictions/")
    assert len(polls) == 3  # starting, processing, succeeded
    assert all(p.headers["authorization"] == f"Bearer {KEY}" for p in polls)
    assert _inputs(up) == [{"prompt": "a slow lighthouse", "output_format": "png"}]  # png: the answer's default
    img = decode_b64(result.data[0].b64_json)
    assert (img.format, img.size) == ("PNG", (1024, 1024))  # the model's 1:1; no size asked
    assert base64.b64decode(result.data[0].b64_json) == up.served[0]  # not re-encoded


def test_without_a_wait_every_prediction_is_polled(up: ReplicateStandIn, sdk: openai.OpenAI) -> None:
    result = sdk.images.generate(model="schnell-async", prompt="x", response_format="b64_json")
    (create,) = up.requests("POST")
    assert "prefer" not in create.headers and create.headers["cancel-after"] == "600s"
    assert len(up.requests("GET", "/v1/predictions/")) == 1
    assert decode_b64(result.data[0].b64_json).format == "PNG"


def test_files_answered_before_the_final_status_need_no_poll(up: ReplicateStandIn, sdk: openai.OpenAI) -> None:
    result = sdk.images.generate(model="flux-schnell", prompt="files-early", response_format="b64_json")
    assert up.requests("GET", "/v1/predictions/") == []
    assert base64.b64decode(result.data[0].b64_json) == up.served[0]


def test_a_stream_keeps_alive_while_the_prediction_runs(up: ReplicateStandIn, gateway: Running) -> None:
    up.slow_polls = 3
    body = {"model": "flux-schnell", "prompt": "slow", "stream": True, "response_format": "b64_json"}
    with httpx.stream("POST", f"{gateway.base_url}/v1/images/generations", json=body, timeout=30) as r:
        text = r.read().decode()
    assert r.status_code == 200
    assert ": starting" in text and ": processing" in text  # keep-alive comments with Replicate's status
    assert "event: image_generation.completed" in text


def test_size_becomes_width_and_height_and_n_becomes_predictions(up: ReplicateStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(
        model="flux-pro", prompt="a tower", size="1536x1024", n=2, response_format="b64_json",
        extra_body={"safety_tolerance": 5, "prompt_upsampling": True},
    )  # fmt: skip
    # no num_outputs: two predictions of one image each, scaled into 256-1440 in multiples of 32
    assert _inputs(up) == [{"prompt": "a tower", "output_format": "png", "aspect_ratio": "custom", "width": 1440,
                            "height": 960, "safety_tolerance": 5, "prompt_upsampling": True}] * 2  # fmt: skip
    assert [decode_b64(d.b64_json).size for d in raw.parse().data] == [(1536, 1024)] * 2
    assert decode_bytes(up.served[0]).size == (1440, 960)
    assert raw.headers["x-imagegate-cost-usd"] == "0.080000"


def test_a_pinned_version_is_created_with_its_version(up: ReplicateStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="schnell-pinned", prompt="x", size="1024x1024")
    (create,) = up.requests("POST")
    assert create.path == "/v1/predictions"
    assert create.json == {
        "version": f"{SCHNELL}:{VERSION}",
        "input": {"prompt": "x", "output_format": "png", "aspect_ratio": "1:1"},
    }


def test_an_operators_own_input_map(up: ReplicateStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    result = sdk.images.generate(model="acme/tiny", prompt="a kite", size="1024x768", n=2, response_format="b64_json")
    # the prompt goes to `text`, the size to width/height within 64-512, n to two predictions
    assert _inputs(up) == [{"text": "a kite", "width": 512, "height": 384}] * 2
    assert [decode_b64(d.b64_json).size for d in result.data] == [(1024, 768)] * 2
    r = _post(gateway, "generations", {"model": "acme/tiny", "prompt": "x", "output_format": "png"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == ("output_format", "unsupported_parameter")
    assert "input mapping" in err["message"]
    assert len(up.requests("POST")) == 2


# -- edits ----------------------------------------------------------------------------------


def test_an_edit_sends_the_image_as_a_data_uri(up: ReplicateStandIn, sdk: openai.OpenAI) -> None:
    src = make_image(96, 64, "PNG")
    result = sdk.images.edit(model="kontext", image=("a.png", src, "image/png"), prompt="make it a watercolor", n=2,
                             response_format="b64_json")  # fmt: skip
    inputs = _inputs(up)
    assert len(inputs) == 2  # Kontext makes one image per prediction
    for sent in inputs:
        assert set(sent) == {"prompt", "output_format", "input_image"} and sent["prompt"] == "make it a watercolor"
        assert _uri_bytes(sent["input_image"], "image/png") == src  # the client's exact bytes
    assert up.requests("GET") == []
    for item in result.data:
        img = decode_b64(item.b64_json)
        assert img.format == "PNG" and img.size[0] / img.size[1] == pytest.approx(1.5, rel=0.05)  # follows the input


def test_an_image_to_image_edit_with_its_strength(up: ReplicateStandIn, sdk: openai.OpenAI) -> None:
    src = make_image(64, 64, "JPEG")
    result = sdk.images.edit(model="black-forest-labs/flux-dev", image=("a.jpg", src, "image/jpeg"), prompt="sketch",
                             size="1024x1024", extra_body={"prompt_strength": 0.6}, response_format="b64_json")  # fmt: skip
    (sent,) = _inputs(up)
    assert _uri_bytes(sent.pop("image"), "image/jpeg") == src
    assert sent == {"prompt": "sketch", "output_format": "png", "aspect_ratio": "1:1", "prompt_strength": 0.6}
    assert decode_b64(result.data[0].b64_json).size == (1024, 1024)


# -- what the map does not take -------------------------------------------------------------

REFUSED = [
    # (model, body, param, code): each a 400 before anything is sent
    ("flux-schnell", {"user": "u-1"}, "user", "unsupported_parameter"),
    ("flux-schnell", {"quality": "high"}, "quality", "unsupported_parameter"),
    ("flux-schnell", {"num_outputs": 2}, "num_outputs", "unknown_parameter"),
    ("flux-schnell", {"disable_safety_checker": True}, "disable_safety_checker", "unknown_parameter"),
    ("flux-schnell", {"size": "1024x1024", "aspect_ratio": "1:1"}, "aspect_ratio", "conflicting_parameters"),
    ("flux-schnell", {"n": 5}, "n", "integer_above_max_value"),
    ("flux-schnell", {"size": "2048x2048"}, "size", "invalid_value"),
    ("kontext", {"output_format": "webp"}, "output_format", "invalid_value"),
    ("kontext", {"output_compression": 50}, "output_compression", "unsupported_parameter"),
    ("flux-pro", {"aspect_ratio": "custom"}, "aspect_ratio", "invalid_value"),
]


@pytest.mark.parametrize("model,body,param,code", REFUSED, ids=[f"{m}-{p}-{c}" for m, _, p, c in REFUSED])
def test_a_field_the_model_does_not_take_is_a_400_naming_it(
    up: ReplicateStandIn, gateway: Running, model: str, body: dict[str, Any], param: str, code: str
) -> None:
    r = _post(gateway, "generations", {"model": model, "prompt": "x", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code), err
    assert up.received == []


def test_a_model_without_edits_and_masks_refuse(up: ReplicateStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model="flux-schnell", image=("a.png", make_image(), "image/png"), prompt="x")
    assert info.value.param == "model"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model="kontext", image=[("a.png", make_image(), "image/png")] * 2, prompt="x")
    assert (info.value.param, info.value.code) == ("image", "too_many_images")
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model="kontext", image=("a.png", make_image(), "image/png"), mask=("m.png", make_image(), "image/png"),
                        prompt="x")  # fmt: skip
    assert info.value.param == "mask"
    assert up.received == []


# -- cancellation ----------------------------------------------------------------------------


def test_a_client_that_hangs_up_cancels_the_prediction(up: ReplicateStandIn, gateway: Running) -> None:
    with pytest.raises(httpx.ReadTimeout):
        _post(gateway, "generations", {"model": "flux-schnell", "prompt": "never ending"}, timeout=0.6)
    deadline = time.monotonic() + 5
    while not up.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    (create,) = up.requests("POST", "/v1/models/")
    (cancel,) = up.requests("POST", "/v1/predictions/")
    assert up.cancelled == [cancel.path.split("/")[3]] and cancel.path.endswith("/cancel")
    assert cancel.headers["authorization"] == f"Bearer {KEY}"
    assert create.headers["cancel-after"] == f"{600 + WAIT}s"  # and Replicate's own deadline, were the cancel lost
    assert len(up.requests("GET", "/v1/predictions/")) >= 1


# -- failures and errors --------------------------------------------------------------------

FAILURES = [
    # (prompt, status, code, message fragment)
    ("fail", 502, "upstream_job_failed", "illegal memory access"),
    ("nsfw", 400, "content_policy_violation", "flagged as sensitive"),
    ("canceled", 502, "upstream_job_canceled", "canceled prediction"),
    ("invalid", 422, "input_validation_failed", "aspect_ratio must be one of"),
    ("throttle", 429, None, "Request was throttled"),
]


@pytest.mark.parametrize("prompt,status,code,fragment", FAILURES, ids=[f[0] for f in FAILURES])
@pytest.mark.parametrize("model", ["flux-schnell", "schnell-async"])
def test_replicate_failures_are_mapped(
    up: ReplicateStandIn, gateway: Running, model: str, prompt: str, status: int, code: str | None, fragment: str
) -> None:
    r = _post(gateway, "generations", {"model": model, "prompt": prompt, "size": "1024x1024"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and fragment in err["message"], err
    if prompt == "invalid":
        assert err["param"] == "size"  # Replicate's input.aspect_ratio, which the client's size set
    if prompt == "throttle":
        assert r.headers["retry-after"] == "7"
    assert r.headers["x-imagegate-cost-usd"] == "0.000000"
    assert up.cancelled == []


def test_a_transient_poll_failure_is_asked_again(up: ReplicateStandIn, sdk: openai.OpenAI) -> None:
    up.script.extend([Fault("pass"), Fault("status", 503, {"detail": "Service Unavailable", "status": 503})])
    result = sdk.images.generate(model="flux-schnell", prompt="slow", response_format="b64_json")
    assert decode_b64(result.data[0].b64_json).format == "PNG"
    assert len(up.requests("GET", "/v1/predictions/")) == up.slow_polls + 2  # one more for the 503


def test_an_expired_output_url_is_a_502(up: ReplicateStandIn, gateway: Running) -> None:
    up.expire_seconds = -1
    r = _post(gateway, "generations", {"model": "flux-schnell", "prompt": "x"})
    assert r.status_code == 502, r.text
    assert "HTTP 404" in r.json()["error"]["message"]


def test_a_poll_url_on_another_host_gets_no_credential(up: ReplicateStandIn, gateway: Running) -> None:
    elsewhere = "https://evil.example.net/v1/predictions/abc"
    up.script.append(Fault("json", 201, {"id": "abc", "status": "starting", "urls": {"get": elsewhere, "cancel": elsewhere}}))
    r = _post(gateway, "generations", {"model": "flux-schnell", "prompt": "x"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "invalid_upstream_response", r.text
    assert "does not send the credential" in r.json()["error"]["message"]
    assert len(up.received) == 1


def test_more_images_than_asked_is_an_invalid_answer(up: ReplicateStandIn, gateway: Running) -> None:
    urls = [f"{up.origin}/files/x/out-{i}.webp" for i in range(3)]
    prediction = {"id": "abc", "status": "succeeded", "output": urls,
                  "urls": {"get": f"{up.base_url}/predictions/abc", "cancel": f"{up.base_url}/predictions/abc/cancel"}}  # fmt: skip
    up.script.append(Fault("json", 201, prediction))
    r = _post(gateway, "generations", {"model": "flux-schnell", "prompt": "x", "n": 2})
    assert r.status_code == 502 and "3 images where 2 were asked" in r.json()["error"]["message"], r.text


def test_a_wrong_key_is_the_gateways_fault_not_the_clients(up: ReplicateStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="badly-keyed", prompt="x")
    assert info.value.status_code == 502
    err = info.value.response.json()["error"]
    assert err["code"] == "upstream_auth_error" and "authentication token" not in err["message"]
    assert up.received[0].headers["authorization"] == "Bearer r8_wrong-key-9876543210fedcba"


def test_a_deployment_model_that_is_no_replicate_model_is_a_502(up: ReplicateStandIn, gateway: Running) -> None:
    r = _post(gateway, "generations", {"model": "typo", "prompt": "x"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "invalid_model_id", r.text
    assert up.received == []


def test_a_prediction_that_vanished_is_a_502_without_asking_again(up: ReplicateStandIn, gateway: Running) -> None:
    up.script.extend([Fault("pass"), Fault("status", 404, {"detail": "Not found.", "status": 404})])
    r = _post(gateway, "generations", {"model": "flux-schnell", "prompt": "slow"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_job_lost", r.text
    assert len(up.requests("GET", "/v1/predictions/")) == 1 and up.cancelled == []
