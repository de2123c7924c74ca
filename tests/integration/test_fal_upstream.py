"""The ``fal`` provider against a stand-in fal queue (tests/standin_fal.py),
through the real server, called with the official ``openai`` SDK: OpenAI
fields become a FLUX model's input (``size`` -> ``image_size`` or Kontext's
``aspect_ratio``, ``n`` -> ``num_images`` in one job, the edit's images and
mask as ``data:`` URIs), fields the mapping does not take are 400s, the job
is polled through the URLs fal hands out and cancelled when the client goes
away, results are downloaded from the CDN without the key, fal's errors and
NSFW flags are mapped, and a request costs the catalog's price."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import openai
import pytest
from standin_fal import KEY, FalStandIn, Fault, Received

from support import SIGNING_KEY, Running, decode_b64, decode_bytes, make_image, make_mask, standin_fixtures


def gateway_config(base_url: str) -> dict[str, Any]:
    fal: dict[str, Any] = {
        "type": "fal",
        "base_url": base_url,
        "api_key": KEY,
        "poll_initial_seconds": 0.02,
        "poll_max_seconds": 0.05,
        # Models whose input the built-in FLUX mapping does not fit:
        "inputs": {"fal-ai/flux-pro/v1/fill": {"size": None}},
    }
    edit_input = {"formats": ["png", "jpeg", "webp"], "max_images": 4, "max_mb": 20}
    return {
        "storage": {"signing_key": SIGNING_KEY},
        "server": {"fetch": {"allow_private_networks": True}},  # the stand-in's CDN is on loopback
        "routing": {"max_attempts": 1},
        "providers": {
            "fal": fal,
            "wrong-key": {**fal, "api_key": "fal-wrong:key-9876543210"},
            "one-each": {**fal, "inputs": {"fal-ai/*": {"n": None}}},  # a model without num_images
        },
        "models": {
            "fal-ai/flux/dev": [{"provider": "fal"}],
            "flux-dev": [{"provider": "fal", "model": "fal-ai/flux/dev"}],
            "fal-ai/flux-pro/v1.1": [{"provider": "fal"}],
            "fal-ai/flux-pro/kontext": [{"provider": "fal"}],
            "kontext-multi": {"rules": "kontext-multi", "deployments": [{"provider": "fal", "model": "fal-ai/flux-pro/kontext/multi"}]},
            "fill": {"rules": "fal-fill", "deployments": [{"provider": "fal", "model": "fal-ai/flux-pro/v1/fill"}]},
            "one-at-a-time": {"rules": "fal-ai/flux/dev", "deployments": [{"provider": "one-each", "model": "fal-ai/flux/dev"}]},
            "impatient": {"rules": "fal-ai/flux/dev",
                          "deployments": [{"provider": "fal", "model": "fal-ai/flux/dev", "timeout_seconds": 0.5}]},
            "badly-keyed": {"rules": "fal-ai/flux/dev", "deployments": [{"provider": "wrong-key", "model": "fal-ai/flux/dev"}]},
        },
        "catalog": {
            "kontext-multi": {"extends": "fal-ai/flux-pro/kontext", "edit_input": edit_input},
            "fal-fill": {"extends": "fal-flux", "endpoints": ["edits"], "sizes": ["auto"], "default_size": "auto",
                         "free_size": None, "masks": True, "mask_max_mb": 20,
                         "edit_input": {**edit_input, "max_images": 1}, "price": {"per_image": 0.05}},
        },
    }  # fmt: skip


upstream, gateway, up = standin_fixtures(FalStandIn, gateway_config, "fal")


@pytest.fixture
def sdk(gateway: Running) -> openai.OpenAI:
    return gateway.sdk()


def _post(gateway: Running, endpoint: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/v1/images/{endpoint}", json=body, timeout=30)


def _input(up: FalStandIn) -> dict[str, Any]:
    (submission,) = up.submitted
    assert isinstance(submission.json, dict)
    return submission.json


def _uri_bytes(uri: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert uri.startswith(prefix), uri[:40]
    return base64.b64decode(uri.removeprefix(prefix), validate=True)


def _gets(up: FalStandIn, suffix: str = "") -> list[Received]:
    return [r for r in up.received if r.method == "GET" and r.path.endswith(suffix)]


# -- generations: the FLUX mapping -------------------------------------------------------


def test_a_generation_becomes_one_flux_job_polled_through_fals_urls(up: FalStandIn, sdk: openai.OpenAI) -> None:
    up.queue_polls, up.progress_polls = 2, 2
    raw = sdk.images.with_raw_response.generate(
        model="flux-dev", prompt="a red fox", size="1536x1024", n=2, output_format="png", response_format="b64_json",
        extra_body={"seed": 7, "guidance_scale": 4.5, "num_inference_steps": 20},
    )  # fmt: skip
    (submission,) = up.submitted  # n=2 is num_images 2 in one job
    assert submission.path == "/fal-ai/flux/dev" and submission.headers["authorization"] == f"Key {KEY}"
    assert submission.headers["content-type"] == "application/json"
    assert submission.json == {"prompt": "a red fox", "num_images": 2, "output_format": "png", "seed": 7,
                               "image_size": {"width": 1536, "height": 1024}, "guidance_scale": 4.5,
                               "num_inference_steps": 20}  # fmt: skip
    (job_id,) = up.jobs
    # status and result under the app (fal-ai/flux), not the sub-path; IN_QUEUE x2, IN_PROGRESS x2, COMPLETED
    assert [r.path for r in _gets(up, "/status")] == [f"/fal-ai/flux/requests/{job_id}/status"] * 5
    assert [r.path for r in _gets(up, job_id)] == [f"/fal-ai/flux/requests/{job_id}"]
    assert all(r.headers["authorization"] == f"Key {KEY}" for r in up.received)
    # the results come from the CDN, without the key
    assert len(up.cdn_gets) == 2 and all("authorization" not in r.headers for r in up.cdn_gets)
    result = raw.parse()
    images = [decode_b64(d.b64_json) for d in result.data]
    assert [(i.format, i.size, i.mode) for i in images] == [("PNG", (1536, 1024), "RGB")] * 2
    assert images[0].getpixel((0, 0)) != images[1].getpixel((0, 0))  # two different images
    assert raw.headers["x-imagegate-cost-usd"] == "0.100000"  # 2 x $0.025/MP x 2 MP


def test_no_size_is_the_models_default_at_one_megapixel(up: FalStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model="fal-ai/flux/dev", prompt="x")
    assert _input(up) == {"prompt": "x", "output_format": "png"}  # the gateway's default format, asked of fal
    img = decode_b64(raw.parse().data[0].b64_json)
    assert (img.format, img.size) == ("PNG", (1024, 768))  # FLUX's landscape_4_3, returned as it is
    assert raw.headers["x-imagegate-cost-usd"] == "0.025000"


@pytest.mark.parametrize(
    "model,size,cost",
    [("flux-dev", "1200x800", "0.025000"), ("flux-dev", "2048x1024", "0.050000"), ("flux-dev", "1600x1600", "0.075000"),
     ("fal-ai/flux-pro/v1.1", "1440x1024", "0.080000"), ("fal-ai/flux-pro/v1.1", "832x1216", "0.040000")],
)  # fmt: skip
def test_any_size_within_the_limits_is_sent_and_priced_per_megapixel(
    up: FalStandIn, sdk: openai.OpenAI, model: str, size: str, cost: str
) -> None:
    raw = sdk.images.with_raw_response.generate(model=model, prompt="x", size=size)  # type: ignore[arg-type]
    width, height = (int(v) for v in size.split("x"))
    assert _input(up)["image_size"] == {"width": width, "height": height}
    assert decode_b64(raw.parse().data[0].b64_json).size == (width, height)
    assert raw.headers["x-imagegate-cost-usd"] == cost  # megapixels (1024x1024 each) begun


def test_flux_pro_takes_its_own_fields(up: FalStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(
        model="fal-ai/flux-pro/v1.1", prompt="x", size="1024x1024", extra_body={"safety_tolerance": "5", "enhance_prompt": True}
    )
    assert _input(up) == {"prompt": "x", "output_format": "png", "image_size": {"width": 1024, "height": 1024},
                          "safety_tolerance": "5", "enhance_prompt": True}  # fmt: skip
    assert decode_b64(raw.parse().data[0].b64_json).size == (1024, 1024)
    assert raw.headers["x-imagegate-cost-usd"] == "0.040000"


def test_url_answers_are_hosted_by_the_gateway(up: FalStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    result = sdk.images.generate(model="flux-dev", prompt="x", response_format="url")
    url = result.data[0].url
    assert url is not None and url.startswith(gateway.base_url)  # never fal's expiring CDN URL
    assert decode_bytes(httpx.get(url).content).size == (1024, 768)
    assert "response_format" not in _input(up)


def test_a_stream_gets_the_image_after_keep_alives(up: FalStandIn, gateway: Running) -> None:
    up.queue_polls, up.progress_polls = 3, 3
    with httpx.stream("POST", f"{gateway.base_url}/v1/images/generations", timeout=30,
                      json={"model": "flux-dev", "prompt": "x", "stream": True}) as r:  # fmt: skip
        text = r.read().decode()
    assert r.status_code == 200, text
    assert "IN_QUEUE" in text and "IN_PROGRESS" in text  # the progress comments
    assert "image_generation.completed" in text
    assert "stream" not in _input(up)


# -- edits: Kontext, several images, a mask --------------------------------------------------


def test_a_kontext_edit_sends_the_image_as_a_data_uri_and_size_as_an_aspect_ratio(up: FalStandIn, sdk: openai.OpenAI) -> None:
    src = make_image(120, 80, "PNG")
    raw = sdk.images.with_raw_response.edit(
        model="fal-ai/flux-pro/kontext", image=("a.png", src, "image/png"), prompt="make it blue", size="1536x1024",
        response_format="b64_json", extra_body={"safety_tolerance": "4"},
    )  # fmt: skip
    body = dict(_input(up))
    assert up.submitted[0].path == "/fal-ai/flux-pro/kontext"
    assert _uri_bytes(body.pop("image_url"), "image/png") == src  # the client's exact bytes
    assert body == {"prompt": "make it blue", "output_format": "png", "aspect_ratio": "3:2", "safety_tolerance": "4"}
    (job_id,) = up.jobs
    assert _gets(up, "/status")[0].path == f"/fal-ai/flux-pro/requests/{job_id}/status"
    img = decode_b64(raw.parse().data[0].b64_json)
    assert (img.format, img.size) == ("PNG", (1536, 1024))
    assert raw.headers["x-imagegate-resized"] == "1248x832->1536x1024; scale"  # Kontext's ~1 MP at 3:2
    assert raw.headers["x-imagegate-cost-usd"] == "0.040000"


def test_a_kontext_edit_without_size_follows_the_input(up: FalStandIn, sdk: openai.OpenAI) -> None:
    result = sdk.images.edit(model="fal-ai/flux-pro/kontext", image=("a.jpg", make_image(90, 160, "JPEG"), "image/jpeg"),
                             prompt="x", n=2)  # fmt: skip
    assert set(_input(up)) == {"prompt", "image_url", "num_images", "output_format"} and _input(up)["num_images"] == 2
    assert [decode_b64(d.b64_json).size for d in result.data] == [(768, 1360)] * 2  # ~1 MP at the input's 9:16


def test_kontext_multi_takes_its_images_as_a_list(up: FalStandIn, sdk: openai.OpenAI) -> None:
    srcs = [make_image(64, 64, "PNG"), make_image(48, 48, "WEBP")]
    sdk.images.edit(model="kontext-multi", image=[("a.png", srcs[0], "image/png"), ("b.webp", srcs[1], "image/webp")],
                    prompt="put them together", size="1024x1024")  # fmt: skip
    body = _input(up)
    assert up.submitted[0].path == "/fal-ai/flux-pro/kontext/multi" and "image_url" not in body
    uris = body["image_urls"]
    assert [_uri_bytes(uris[0], "image/png"), _uri_bytes(uris[1], "image/webp")] == srcs
    assert body["aspect_ratio"] == "1:1"


def test_a_mask_goes_as_mask_url_in_flux_fills_convention(up: FalStandIn, sdk: openai.OpenAI) -> None:
    src, mask = make_image(64, 48, "PNG"), make_mask(64, 48, (0, 0, 32, 16))  # transparent (edit) top left
    raw = sdk.images.with_raw_response.edit(model="fill", image=("a.png", src, "image/png"), mask=("m.png", mask, "image/png"),
                                            prompt="a window", extra_body={"seed": 3})  # fmt: skip
    body = _input(up)
    assert _uri_bytes(body["image_url"], "image/png") == src  # the client's exact bytes
    # OpenAI's mask (transparent = edit) became FLUX Fill's: white = inpaint, black = keep, the image's size
    sent = decode_bytes(_uri_bytes(body["mask_url"], "image/png"))
    assert (sent.format, sent.mode, sent.size) == ("PNG", "L", (64, 48))
    assert [sent.getpixel(p) for p in [(0, 0), (31, 15), (32, 0), (0, 16), (63, 47)]] == [255, 255, 0, 0, 0]
    assert {k: body[k] for k in ("prompt", "seed")} == {"prompt": "a window", "seed": 3}
    assert raw.headers["x-imagegate-cost-usd"] == "0.050000"
    assert decode_b64(raw.parse().data[0].b64_json).size == (1184, 896)  # about a megapixel at the input's 4:3


def test_a_mask_fill_cannot_read_is_a_400(up: FalStandIn, sdk: openai.OpenAI) -> None:
    image = ("a.png", make_image(64, 48, "PNG"), "image/png")
    opaque = make_image(64, 48, "PNG")  # no alpha: nothing says where to edit
    for mask in (opaque, make_mask(48, 64, (0, 0, 8, 8))):
        with pytest.raises(openai.BadRequestError) as info:
            sdk.images.edit(model="fill", image=image, mask=("m.png", mask, "image/png"), prompt="x")
        assert info.value.param == "mask", info.value.message
    assert up.received == []


# -- what the mapping does not take: 400s naming the field ---------------------------------------

REFUSED = [
    # (model, body, param, code): each a 400 before anything is sent
    ("flux-dev", {"user": "u-1"}, "user", "unsupported_parameter"),  # fal has no user field
    ("flux-dev", {"quality": "high"}, "quality", "unsupported_parameter"),
    ("flux-dev", {"background": "opaque"}, "background", "unsupported_parameter"),
    ("flux-dev", {"output_format": "webp"}, "output_format", "invalid_value"),
    ("flux-dev", {"size": "1000x1000"}, "size", "invalid_value"),  # multiples of 16
    ("flux-dev", {"size": "auto"}, "size", "invalid_value"),  # no size is the model's default, 1024x768
    ("fal-ai/flux-pro/v1.1", {"size": "1536x1024"}, "size", "invalid_value"),  # FLUX1.1 [pro]: up to 1440
    ("flux-dev", {"n": 5}, "n", "integer_above_max_value"),  # num_images is 1-4
    ("flux-dev", {"sync_mode": True}, "sync_mode", "unknown_parameter"),  # would put data: URIs in the result
    ("flux-dev", {"safety_tolerance": "2"}, "safety_tolerance", "unknown_parameter"),  # a FLUX pro field
    ("flux-dev", {"guidance_scale": 50}, "guidance_scale", "integer_above_max_value"),
    ("fal-ai/flux-pro/v1.1", {"safety_tolerance": 2}, "safety_tolerance", "invalid_type"),  # fal's enum is strings
]


@pytest.mark.parametrize("model,body,param,code", REFUSED, ids=[f"{m}-{p}-{c}" for m, _, p, c in REFUSED])
def test_fields_the_mapping_does_not_take_are_400s(
    up: FalStandIn, gateway: Running, model: str, body: dict[str, Any], param: str, code: str
) -> None:
    r = _post(gateway, "generations", {"model": model, "prompt": "x", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code), err
    assert up.received == []


def test_an_edit_that_kontext_cannot_take_is_a_400(up: FalStandIn, sdk: openai.OpenAI) -> None:
    image = ("a.png", make_image(), "image/png")
    cases = [
        ({"size": "1024x1024", "extra_body": {"aspect_ratio": "1:1"}}, "aspect_ratio", "conflicting_parameters"),
        ({"mask": ("m.png", make_mask(64, 64, (0, 0, 8, 8)), "image/png")}, "mask", "unsupported_mask"),
        ({"size": "3000x1000"}, "size", "invalid_value"),  # wider than 21:9
    ]
    for kwargs, param, code in cases:
        with pytest.raises(openai.BadRequestError) as info:
            sdk.images.edit(model="fal-ai/flux-pro/kontext", image=image, prompt="x", **kwargs)
        assert (info.value.param, info.value.code) == (param, code), kwargs
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model="fal-ai/flux-pro/kontext", image=[image, image], prompt="x")
    assert (info.value.param, info.value.code) == ("image", "too_many_images")
    assert up.received == []


def test_a_model_without_num_images_gets_one_job_per_image(up: FalStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model="one-at-a-time", prompt="x", n=2)
    assert [r.json for r in up.submitted] == [{"prompt": "x", "output_format": "png"}] * 2
    assert len(up.jobs) == 2 and len(raw.parse().data) == 2
    assert raw.headers["x-imagegate-cost-usd"] == "0.050000"


# -- cancellation ------------------------------------------------------------------------------


def test_a_client_that_hangs_up_cancels_the_job(up: FalStandIn, gateway: Running) -> None:
    with pytest.raises(openai.APITimeoutError):
        gateway.sdk(timeout=0.6).images.generate(model="flux-dev", prompt="a job that never ends [never]")
    (job_id,) = up.jobs
    deadline = time.monotonic() + 5
    while not up.cancels and time.monotonic() < deadline:
        time.sleep(0.02)
    assert up.cancels == [job_id], "the job was not cancelled"
    (put,) = [r for r in up.received if r.method == "PUT"]
    assert put.path == f"/fal-ai/flux/requests/{job_id}/cancel" and put.headers["authorization"] == f"Key {KEY}"
    assert up.jobs[job_id].cancelled


def test_a_job_past_the_deployments_time_is_a_504_and_cancelled(up: FalStandIn, gateway: Running) -> None:
    r = _post(gateway, "generations", {"model": "impatient", "prompt": "[never]"})
    assert r.status_code == 504, r.text
    (job_id,) = up.jobs
    deadline = time.monotonic() + 5
    while not up.cancels and time.monotonic() < deadline:
        time.sleep(0.02)
    assert up.cancels == [job_id]


# -- failures --------------------------------------------------------------------------------

FAILURES = [
    # (prompt trigger, status, code, param, message fragment)
    ("[422]", 422, "value_error", "prompt", "too odd"),
    (
        "[bad-size]",
        422,
        "value_error",
        "size",
        "image_size: Width and height must be multiples of 8",
    ),  # fal's field, the client's name
    ("[policy]", 400, "content_policy_violation", "prompt", "flagged by the content checker"),
    ("[429]", 429, None, None, "Too many concurrent requests"),
    ("[fail]", 502, "runner_server_error", None, "Internal error while running the model"),
    ("[unsafe]", 400, "content_policy_violation", "prompt", "flagged as unsafe"),
    ("[nsfw-all]", 400, "content_policy_violation", None, "has_nsfw_concepts"),
    ("[foreign]", 502, "invalid_upstream_response", None, "does not send the credential to"),
    ("[expired]", 502, "upstream_error", None, "failed with HTTP 404"),
]


@pytest.mark.parametrize("trigger,status,code,param,fragment", FAILURES, ids=[f[0] for f in FAILURES])
def test_fal_failures_are_mapped(
    up: FalStandIn, sdk: openai.OpenAI, trigger: str, status: int, code: str | None, param: str | None, fragment: str
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="flux-dev", prompt=f"x {trigger}", size="1024x1024")
    assert info.value.status_code == status
    err = info.value.response.json()["error"]
    assert (err["code"], err["param"]) == (code, param) and fragment in err["message"], err
    assert KEY not in info.value.response.text
    if status == 429:
        assert info.value.response.headers["retry-after"] == "3"
    if trigger == "[foreign]":  # nothing was sent to the host the key does not go to
        assert [r.method for r in up.received] == ["POST"]


def test_a_flagged_image_is_left_out_and_not_charged(up: FalStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model="flux-dev", prompt="x [nsfw]", n=2)
    assert len(raw.parse().data) == 1
    assert raw.headers["x-imagegate-cost-usd"] == "0.025000"


def test_a_transient_status_failure_is_asked_again(up: FalStandIn, sdk: openai.OpenAI) -> None:
    result = sdk.images.generate(model="flux-dev", prompt="x [flaky]")
    assert len(result.data) == 1
    assert len(_gets(up, "/status")) == 4  # the 503, IN_QUEUE, IN_PROGRESS, COMPLETED


def test_an_unreadable_submission_answer_is_a_502(up: FalStandIn, sdk: openai.OpenAI) -> None:
    up.script.append(Fault(200, {"status": "IN_QUEUE"}))  # no request_id
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="flux-dev", prompt="x")
    assert info.value.status_code == 502 and info.value.code == "invalid_upstream_response"


def test_a_wrong_key_is_the_gateways_fault(up: FalStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="badly-keyed", prompt="x")
    assert info.value.status_code == 502 and info.value.code == "upstream_auth_error"
    assert up.received[0].headers["authorization"] == "Key fal-wrong:key-9876543210"
    assert "fal-wrong" not in info.value.response.text
