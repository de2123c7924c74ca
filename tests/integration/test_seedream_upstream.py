"""The ``seedream`` provider (ByteDance Seedream on Volcengine Ark / BytePlus
ModelArk) against a stand-in Ark upstream on loopback, through the real
server and the official SDK: what Ark receives, data URIs for edits, sizes,
n as a batch, streams of Ark's own events, partial failures, Ark's errors,
the watermark option and the catalog's prices."""

from __future__ import annotations

import base64
import threading
from typing import Any

import httpx
import openai
import pytest
from standin_seedream import Fault, SeedreamStandIn, ark_error

from support import SIGNING_KEY, Running, data_url, decode_b64, decode_bytes, make_image, make_mask, run_server, standin_fixtures

KEY = "ark-upstream-secret-0123456789abcdef"
V40, V45, V50, V30 = "seedream-4-0-250828", "seedream-4-5-251128", "seedream-5-0-260128", "seedream-3-0-t2i-250415"


def gateway_config(base_url: str) -> dict[str, Any]:
    ark = {"type": "seedream", "base_url": base_url, "api_key": KEY, "timeout_seconds": 20}
    return {
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {"max_attempts": 1},
        "providers": {"ark": ark, "marked": {**ark, "watermark": True}, "open": {**ark, "unknown_fields": "forward"}},
        "models": {
            V40: [{"provider": "ark"}],
            V45: [{"provider": "ark"}],
            V50: [{"provider": "ark"}],
            V30: [{"provider": "ark"}],
            "marked": {"rules": V40, "deployments": [{"provider": "marked", "model": V40}]},
            "my-endpoint": {"rules": V40, "deployments": [{"provider": "ark", "model": "ep-20250901-abcde"}]},
            "forwarding": {"rules": V40, "deployments": [{"provider": "open", "model": V40}]},
        },
    }


upstream, gateway, up = standin_fixtures(lambda: SeedreamStandIn(KEY), gateway_config, "seedream")


@pytest.fixture
def sdk(gateway: Running) -> openai.OpenAI:
    return gateway.sdk()


def _usage(width: int, height: int, images: int = 1) -> dict[str, int]:
    tokens = round(images * width * height / 256)
    return {"input_tokens": 0, "output_tokens": tokens, "total_tokens": tokens}


# -- generations ---------------------------------------------------------------------


def test_a_generation_reaches_ark_as_documented(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model=V40, prompt="a red fox", size="1280x720", response_format="b64_json")
    result = raw.parse()
    (rec,) = up.received
    assert rec.path == "/api/v3/images/generations"
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    # b64_json from Ark whatever the client asked (the gateway hosts URLs itself); no watermark by default
    assert rec.json == {
        "model": V40,
        "prompt": "a red fox",
        "size": "1280x720",
        "response_format": "b64_json",
        "watermark": False,
    }
    (image,) = [decode_b64(d.b64_json or "") for d in result.data]
    assert (image.format, image.size, image.mode) == ("JPEG", (1280, 720), "RGB")
    assert result.size == "1280x720" and result.output_format == "jpeg"
    assert result.usage is not None and result.usage.model_dump(
        include={"input_tokens", "output_tokens", "total_tokens"}
    ) == _usage(1280, 720)
    assert raw.headers["x-imagegate-cost-usd"] == "0.030000"  # the catalog's price


def test_named_sizes_pass_through_and_auto_is_arks_default(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    result = sdk.images.generate(model=V40, prompt="x", size="1K", response_format="b64_json")
    assert up.received[0].json["size"] == "1K"
    assert decode_b64(result.data[0].b64_json or "").size == (1024, 1024)
    sdk.images.generate(model=V40, prompt="x", size="auto", response_format="b64_json")
    assert "size" not in up.received[1].json


def test_url_answers_are_hosted_by_the_gateway(up: SeedreamStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    result = sdk.images.generate(model=V40, prompt="x", size="1K")  # Ark's default response_format: url
    assert up.received[0].json["response_format"] == "b64_json"
    url = result.data[0].url or ""
    assert url.startswith(gateway.base_url)
    assert decode_bytes(httpx.get(url).content).size == (1024, 1024)


def test_an_ark_url_answer_is_downloaded(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    up.url_answers = True
    result = sdk.images.generate(model=V40, prompt="x", size="1K", response_format="b64_json")
    assert decode_b64(result.data[0].b64_json or "").size == (1024, 1024)


def test_the_deployment_model_may_be_an_endpoint_id(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="my-endpoint", prompt="x", size="1K", response_format="b64_json")
    assert up.received[0].json["model"] == "ep-20250901-abcde"


def test_n_is_a_batch_and_each_image_is_charged(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model=V40, prompt="four seasons", n=3, size="1K", response_format="b64_json")
    result = raw.parse()
    rec = up.received[0].json
    assert (rec["sequential_image_generation"], rec["sequential_image_generation_options"]) == ("auto", {"max_images": 3})
    images = [decode_b64(d.b64_json or "").convert("RGB") for d in result.data]
    assert len({img.getpixel((0, 0)) for img in images}) == 3  # three different images
    assert raw.headers["x-imagegate-cost-usd"] == "0.090000"
    # Ark decides how many of the n it makes: fewer are delivered and charged
    up.batch = 2
    raw = sdk.images.with_raw_response.generate(model=V40, prompt="x", n=3, size="1K", response_format="b64_json")
    assert len(raw.parse().data) == 2 and raw.headers["x-imagegate-cost-usd"] == "0.060000"


def test_output_format_only_where_ark_takes_it(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    result = sdk.images.generate(model=V50, prompt="x", size="2K", output_format="png", response_format="b64_json")
    assert up.received[0].json["output_format"] == "png"
    assert decode_b64(result.data[0].b64_json or "").format == "PNG"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model=V40, prompt="x", output_format="png")
    assert info.value.param == "output_format"
    assert len(up.received) == 1


def test_seed_and_guidance_scale_only_on_seedream_3(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model=V30, prompt="x", size="1024x768", response_format="b64_json",
                        extra_body={"seed": 42, "guidance_scale": 3.5})  # fmt: skip
    assert up.received[0].json == {"model": V30, "prompt": "x", "size": "1024x768", "seed": 42, "guidance_scale": 3.5,
                                   "response_format": "b64_json", "watermark": False}  # fmt: skip
    for model, body in ((V40, {"seed": 1}), (V30, {"seed": -2}), (V30, {"guidance_scale": 11})):
        with pytest.raises(openai.BadRequestError) as info:
            sdk.images.generate(model=model, prompt="x", extra_body=body)
        assert info.value.param == next(iter(body))
    assert len(up.received) == 1


REFUSED = [
    # (model, fields, param): refused by the gateway before Ark is called
    (V40, {"size": "800x800"}, "size"),  # below 4.0's 1280x720 pixels
    (V40, {"size": "16384x512"}, "size"),  # aspect ratio over 16
    (V45, {"size": "1K"}, "size"),  # 4.5 has no 1K
    (V45, {"size": "1920x1080"}, "size"),  # below 4.5's 2560x1440 pixels
    (V40, {"quality": "high"}, "quality"),
    (V40, {"partial_images": 1, "stream": True}, "partial_images"),
    (V40, {"user": "user-1"}, "user"),  # Ark has no user field
    (V40, {"watermark": True}, "watermark"),  # the provider's config decides it
    (V40, {"n": 11}, "n"),
    (V30, {"n": 2}, "n"),  # no batches on 3.0
]


@pytest.mark.parametrize("model,fields,param", REFUSED, ids=[f"{m[-6:]}-{p}" for m, _, p in REFUSED])
def test_what_ark_cannot_take_is_a_400_naming_it(up: SeedreamStandIn, gateway: Running, model: str,
                                                  fields: dict[str, Any], param: str) -> None:  # fmt: skip
    r = httpx.post(f"{gateway.base_url}/v1/images/generations", json={"model": model, "prompt": "x", **fields}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert up.received == []


def test_the_watermark_is_the_providers_option(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="marked", prompt="x", size="1K", response_format="b64_json")
    assert up.received[0].json["watermark"] is True


def test_forwarded_fields_reach_ark_but_not_the_ones_it_sets_itself(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    options = {"optimize_prompt_options": {"mode": "fast"}}
    sdk.images.generate(model="forwarding", prompt="x", size="1K", response_format="b64_json", extra_body=options)
    assert up.received[0].json["optimize_prompt_options"] == {"mode": "fast"}
    for field in (
        {"watermark": True},
        {"sequential_image_generation": "auto"},
        {"Watermark": True},
        {"Sequential_Image_Generation": "auto"},
    ):
        with pytest.raises(openai.BadRequestError) as info:
            sdk.images.generate(model="forwarding", prompt="x", extra_body=field)
        assert info.value.param == next(iter(field))
    with pytest.raises(openai.BadRequestError) as info:  # the shipped entries reject what they do not declare
        sdk.images.generate(model=V40, prompt="x", extra_body=options)
    assert (info.value.param, info.value.code) == ("optimize_prompt_options", "unknown_parameter")
    assert len(up.received) == 1


# -- edits ---------------------------------------------------------------------------


def test_edit_images_go_as_data_uris_byte_for_byte(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    images = [make_image(64, 48, "PNG"), make_image(32, 32, "JPEG"), make_image(40, 40, "WEBP")]
    sdk.images.edit(
        model=V40,
        image=[("a.png", images[0], "image/png"), ("b.jpg", images[1], "image/jpeg"), ("c.webp", images[2], "image/webp")],
        prompt="put the cat of image 1 on the sofa of image 2",
        size="1K",
        response_format="b64_json",
    )
    rec = up.received[0]
    assert [uri.split(",")[0] for uri in rec.json["image"]] == [
        "data:image/png;base64",
        "data:image/jpeg;base64",
        "data:image/webp;base64",
    ]
    assert rec.images == images
    assert {k: v for k, v in rec.json.items() if k != "image"} == {
        "model": V40, "prompt": "put the cat of image 1 on the sofa of image 2", "size": "1K",
        "response_format": "b64_json", "watermark": False,
    }  # fmt: skip


def test_one_edit_image_is_a_string_and_a_json_edit_works_too(up: SeedreamStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    src = make_image(50, 30)
    result = sdk.images.edit(
        model=V45, image=("a.png", src, "image/png"), prompt="x", size="2560x1440", response_format="b64_json"
    )
    assert up.received[0].json["image"] == data_url(src)
    assert decode_b64(result.data[0].b64_json or "").size == (2560, 1440)
    body = {"model": V45, "prompt": "x", "size": "2K", "images": [{"image_url": data_url(src)}, {"image_url": data_url(src)}]}
    r = httpx.post(f"{gateway.base_url}/v1/images/edits", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert up.received[1].json["image"] == [data_url(src)] * 2


def test_edit_limits(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    src = ("a.png", make_image(16, 16), "image/png")
    with pytest.raises(openai.BadRequestError) as info:  # no masks on Ark
        sdk.images.edit(model=V40, image=src, mask=("m.png", make_mask(16, 16, (0, 0, 8, 8)), "image/png"), prompt="x")
    assert info.value.param == "mask"
    with pytest.raises(openai.BadRequestError):  # at most 14 references
        sdk.images.edit(model=V40, image=[src] * 15, prompt="x")
    with pytest.raises(openai.BadRequestError) as info:  # references + generated images <= 15
        sdk.images.edit(model=V40, image=[src] * 14, prompt="x", n=2)
    assert info.value.param == "n"
    with pytest.raises(openai.BadRequestError) as info:  # text to image only
        sdk.images.edit(model=V30, image=src, prompt="x")
    assert up.received == []
    sdk.images.edit(model=V40, image=[src] * 13, prompt="x", n=2, size="1K", response_format="b64_json")  # 13 + 2 = 15
    assert len(up.received[0].images) == 13


# -- streaming -----------------------------------------------------------------------


def test_a_stream_of_ark_events_becomes_openai_events(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    up.gate = threading.Event()  # Ark holds the rest of the batch until the client has the first image
    events = []
    for event in sdk.images.generate(model=V40, prompt="x", n=2, size="1K", stream=True):
        events.append(event)
        up.gate.set()
    assert up.gate_released_in_time is True, "the gateway held the whole stream back"
    rec = up.received[0].json
    assert rec["stream"] is True and rec["sequential_image_generation_options"] == {"max_images": 2}
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    images = [decode_b64(e.b64_json) for e in events]
    assert [(i.format, i.size) for i in images] == [("JPEG", (1024, 1024))] * 2
    assert images[0].convert("RGB").getpixel((0, 0)) != images[1].convert("RGB").getpixel((0, 0))
    assert [e.size for e in events] == ["1024x1024"] * 2
    # Ark's usage (from its completed event) rides on the last image
    assert events[0].usage is None
    assert events[1].usage is not None
    assert events[1].usage.model_dump(include={"input_tokens", "output_tokens", "total_tokens"}) == _usage(1024, 1024, 2)


def test_a_refused_image_of_a_batch_leaves_the_others(up: SeedreamStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    up.fail = {1: "OutputImageSensitiveContentDetected"}  # Ark goes on after a content-filter refusal
    raw = sdk.images.with_raw_response.generate(model=V40, prompt="x", n=3, size="1K", response_format="b64_json")
    colors = [decode_b64(d.b64_json or "").convert("RGB").getpixel((0, 0)) for d in raw.parse().data]
    assert len(colors) == 2 and colors[0] != colors[1]
    assert raw.headers["x-imagegate-cost-usd"] == "0.060000"  # two images made, two charged
    # streamed: Ark's partial_failed event is skipped, the two images arrive, no error
    body = {"model": V40, "prompt": "x", "n": 3, "size": "1K", "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}/v1/images/generations", json=body, timeout=30) as r:
        text = r.read().decode()
    assert r.status_code == 200
    assert text.count("event: image_generation.completed") == 2 and "error" not in text
    events = list(sdk.images.generate(model=V40, prompt="x", n=3, size="1K", stream=True))
    assert [decode_b64(e.b64_json).size for e in events] == [(1024, 1024)] * 2
    assert events[1].usage is not None and events[1].usage.output_tokens == round(2 * 1024 * 1024 / 256)


STREAM_FAILURES = [
    # (code of Ark's only image, status, error code)
    ("OutputImageSensitiveContentDetected", 400, "content_policy_violation"),
    ("InternalServiceError", 502, "InternalServiceError"),
]


@pytest.mark.parametrize("ark_code,status,code", STREAM_FAILURES)
def test_a_stream_without_any_image_is_a_json_error(up: SeedreamStandIn, sdk: openai.OpenAI, ark_code: str, status: int,
                                                     code: str) -> None:  # fmt: skip
    up.fail = {0: ark_code}
    with pytest.raises(openai.APIStatusError) as info:
        list(sdk.images.generate(model=V40, prompt="x", size="1K", stream=True))
    assert (info.value.status_code, info.value.code) == (status, code)
    assert ark_code in info.value.message
    # the same without streaming (Ark's data[] holds the error)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model=V40, prompt="x", size="1K")
    assert (info.value.status_code, info.value.code) == (status, code)


def test_an_error_event_mid_stream_reaches_the_client(up: SeedreamStandIn, gateway: Running) -> None:
    b64 = base64.b64encode(make_image(1024, 1024, "JPEG")).decode()
    events = [
        {
            "type": "image_generation.partial_succeeded",
            "model": V40,
            "created": 1,
            "image_index": 0,
            "b64_json": b64,
            "size": "1024x1024",
        },
        {"error": {"code": "InternalServiceError", "message": "The service encountered an unexpected internal error."}},
    ]
    up.script.append(Fault("events", events=events))
    body = {"model": V40, "prompt": "x", "n": 2, "size": "1K", "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}/v1/images/generations", json=body, timeout=30) as r:
        text = r.read().decode()
    assert text.index("event: image_generation.completed") < text.index("event: error")
    assert "unexpected internal error" in text


def test_a_stream_that_ends_early_delivers_what_it_had(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    b64 = base64.b64encode(make_image(1024, 1024, "JPEG")).decode()
    up.script.append(Fault("events", events=[
        {"type": "image_generation.partial_succeeded", "image_index": 0, "b64_json": b64, "size": "1024x1024"},
    ]))  # fmt: skip
    (event,) = list(sdk.images.generate(model=V40, prompt="x", size="1K", stream=True))
    assert event.b64_json == b64 and event.usage is None
    up.script.append(Fault("events", events=[]))
    with pytest.raises(openai.APIStatusError) as info:
        list(sdk.images.generate(model=V40, prompt="x", size="1K", stream=True))
    assert (info.value.status_code, info.value.code) == (502, "upstream_stream_incomplete")


def test_a_stream_request_answered_as_json_still_streams(up: SeedreamStandIn, sdk: openai.OpenAI) -> None:
    jpeg = base64.b64encode(make_image(1024, 1024, "JPEG")).decode()
    whole = {
        "model": V40,
        "created": 7,
        "data": [{"b64_json": jpeg, "size": "1024x1024"}] * 2,
        "usage": {"generated_images": 2, "output_tokens": 8192, "total_tokens": 8192},
    }
    up.script.append(Fault("json", 200, whole))
    events = list(sdk.images.generate(model=V40, prompt="x", n=2, size="1K", stream=True))
    assert [e.b64_json for e in events] == [jpeg, jpeg]
    assert events[0].usage is None and events[1].usage is not None and events[1].usage.total_tokens == 8192
    # Ark refuses a bad request with JSON, streaming or not
    up.script.append(ark_error(400, "InvalidParameter", "The parameter `prompt` is not valid.", "prompt"))
    with pytest.raises(openai.BadRequestError) as info:
        list(sdk.images.generate(model=V40, prompt="x", stream=True))
    assert (info.value.code, info.value.param) == ("InvalidParameter", "prompt")


# -- Ark's errors --------------------------------------------------------------------

ERRORS = [
    # (fault, status, type, code, param, message fragment)
    (ark_error(400, "InvalidParameter", "The parameter `size` specified in the request is not valid.", "size"),
     400, "invalid_request_error", "InvalidParameter", "size", "`size`"),
    (ark_error(400, "InputTextSensitiveContentDetected", "The request failed because the input text may contain sensitive information."),
     400, "invalid_request_error", "content_policy_violation", None, "InputTextSensitiveContentDetected"),
    (Fault("status", 429, {"error": {"code": "RateLimitExceeded.EndpointIPMExceeded", "message": "Too many images per minute.",
                                     "param": "", "type": "TooManyRequests"}}, headers={"Retry-After": "9"}),
     429, "invalid_request_error", "RateLimitExceeded.EndpointIPMExceeded", None, "per minute"),
    (ark_error(500, "InternalServiceError", "The service encountered an unexpected internal error.", kind="InternalServiceError"),
     500, "api_error", "InternalServiceError", None, "unexpected internal error"),
    (ark_error(401, "AuthenticationError", f"The API key {KEY} is invalid.", kind="Unauthorized"),
     502, "api_error", "upstream_auth_error", None, "credentials"),
    (Fault("garbage", 502), 502, "api_error", "invalid_upstream_response", None, "without an error envelope"),
    (Fault("json", 200, {"model": V40, "created": 1, "data": [{"b64_json": base64.b64encode(b"not an image").decode()}]}),
     502, "api_error", "invalid_upstream_response", None, "not PNG"),
    (Fault("json", 200, {"error": {"code": "InternalServiceError", "message": "no luck"}}),
     502, "api_error", "InternalServiceError", None, "no luck"),
]  # fmt: skip


@pytest.mark.parametrize(
    "fault,status,kind,code,param,fragment", ERRORS, ids=[f"{e[0].kind}-{e[1]}-{i}" for i, e in enumerate(ERRORS)]
)
def test_ark_errors_reach_the_client_in_openais_envelope(up: SeedreamStandIn, sdk: openai.OpenAI, fault: Fault, status: int,
                                                         kind: str, code: str, param: str | None, fragment: str) -> None:  # fmt: skip
    up.script.append(fault)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model=V40, prompt="x")
    body = info.value.response.json()["error"]
    assert info.value.status_code == status
    assert (body["type"], body["code"], body["param"]) == (kind, code, param)
    assert fragment in body["message"]
    assert KEY not in info.value.response.text
    if status == 429:
        assert info.value.response.headers["retry-after"] == "9"


def test_a_wrong_key_is_arks_401_and_a_502_here(
    up: SeedreamStandIn, gateway: Running, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = {"providers": {"ark": {"type": "seedream", "base_url": up.base_url, "api_key": "ark-wrong"}},
              "models": {V40: [{"provider": "ark"}]}, "routing": {"max_attempts": 1}}  # fmt: skip
    with run_server(config, tmp_path_factory.mktemp("wrongkey")) as other:
        with pytest.raises(openai.APIStatusError) as info:
            other.sdk().images.generate(model=V40, prompt="x")
    assert (info.value.status_code, info.value.code) == (502, "upstream_auth_error")
    assert up.received[0].headers["authorization"] == "Bearer ark-wrong"
