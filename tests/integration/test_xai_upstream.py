"""The ``xai`` provider against a stand-in xAI upstream (tests/standin_xai.py),
through the real server, called with the official ``openai`` SDK: ``size``
becomes xAI's aspect ratio and resolution, OpenAI's multipart edit becomes
xAI's JSON edit with ``data:`` URIs, fields xAI does not take are 400s,
xAI's errors are mapped, and a request costs the catalog's price."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import pytest
from standin_xai import KEY, Fault, XAIStandIn

from support import SIGNING_KEY, Running, data_url, decode_b64, decode_bytes, make_image, make_mask, standin_fixtures

INVALID = "Client specified an invalid argument"


def gateway_config(base_url: str) -> dict[str, Any]:
    xai = {"type": "xai", "base_url": base_url, "api_key": KEY}
    return {
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {"max_attempts": 1},
        "providers": {"x": xai, "wrong-key": {**xai, "api_key": "xai-wrong-key-9876543210"}},
        "models": {
            "grok-imagine-image": [{"provider": "x"}],
            "grok-2-image-1212": [{"provider": "x"}],
            "my-grok": [{"provider": "x", "model": "grok-imagine-image"}],
            # An xAI model the catalog does not list: grok-imagine-image's rules.
            "grok-imagine-image-next": [{"provider": "x"}],
            "badly-keyed": {"rules": "grok-imagine-image", "deployments": [{"provider": "wrong-key"}]},
        },
    }


upstream, gateway, up = standin_fixtures(XAIStandIn, gateway_config, "xai")


@pytest.fixture
def sdk(gateway: Running) -> openai.OpenAI:
    return gateway.sdk()


def _post(gateway: Running, endpoint: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/v1/images/{endpoint}", json=body, timeout=30)


def _refs(up: XAIStandIn) -> list[dict[str, str]]:
    body = up.received[0].json
    assert body is not None
    return [body["image"]] if "image" in body else body["images"]


def _uri_bytes(uri: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert uri.startswith(prefix), uri[:40]
    return base64.b64decode(uri.removeprefix(prefix), validate=True)


# -- generations: size, aspect ratio, resolution -----------------------------------------


def test_size_becomes_the_nearest_aspect_ratio_and_resolution(up: XAIStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(
        model="my-grok", prompt="a red fox", size="1536x1024", n=2, response_format="b64_json", user="u-1"
    )
    (rec,) = up.received
    assert rec.path == "/v1/images/generations" and rec.content_type == "application/json"
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    # size is not sent (xAI: "Argument not supported: size"); the upstream model name is
    assert rec.json == {"model": "grok-imagine-image", "prompt": "a red fox", "n": 2, "user": "u-1",
                        "aspect_ratio": "3:2", "resolution": "2k", "response_format": "b64_json"}  # fmt: skip
    result = raw.parse()
    assert len(result.data) == 2
    served = decode_bytes(up.served[0])
    assert served.size[0] / served.size[1] == pytest.approx(1.5, rel=0.02) and served.size[0] * served.size[1] > 1536 * 1024
    for item in result.data:
        img = decode_b64(item.b64_json)
        assert (img.format, img.size, img.mode) == ("JPEG", (1536, 1024), "RGB")
        assert item.revised_prompt == "revised: a red fox"
    assert raw.headers["x-imagegate-resized"] == f"{served.size[0]}x{served.size[1]}->1536x1024; crop"
    assert result.usage is None  # xAI reports a price, not tokens


@pytest.mark.parametrize(
    "size,ratio,resolution",
    [("1024x1024", "1:1", "1k"), ("1024x1792", "9:16", "2k"), ("720x1600", "9:20", "2k"), ("800x600", "4:3", "1k"),
     ("1950x900", "19.5:9", "2k"), ("300x200", "3:2", "1k")],
)  # fmt: skip
def test_sizes_map_to_documented_ratios(up: XAIStandIn, sdk: openai.OpenAI, size: str, ratio: str, resolution: str) -> None:
    result = sdk.images.generate(model="grok-imagine-image", prompt="x", size=size, response_format="b64_json")
    assert up.received[0].json is not None
    assert (up.received[0].json["aspect_ratio"], up.received[0].json["resolution"]) == (ratio, resolution)
    assert decode_b64(result.data[0].b64_json).size == tuple(int(v) for v in size.split("x"))


def test_the_clients_own_aspect_ratio_and_resolution_go_upstream(up: XAIStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(
        model="grok-imagine-image",
        prompt="x",
        response_format="b64_json",
        extra_body={"aspect_ratio": "19.5:9", "resolution": "2k"},
    )
    assert up.received[0].json == {"model": "grok-imagine-image", "prompt": "x", "aspect_ratio": "19.5:9",
                                   "resolution": "2k", "response_format": "b64_json"}  # fmt: skip
    # no size asked: xAI's own dimensions come back, not resized
    img = decode_b64(raw.parse().data[0].b64_json)
    assert img.size == decode_bytes(up.served[0]).size and img.size[0] / img.size[1] == pytest.approx(19.5 / 9, rel=0.02)
    assert "x-imagegate-resized" not in raw.headers


def test_no_size_sends_no_shape(up: XAIStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="grok-imagine-image", prompt="x", size="auto")
    assert up.received[0].json == {"model": "grok-imagine-image", "prompt": "x", "response_format": "b64_json"}


REFUSED = [
    # (body, param, code): each a 400 before anything is sent
    ({"size": "1024x1024", "aspect_ratio": "1:1"}, "aspect_ratio", "conflicting_parameters"),
    ({"size": "1536x1024", "resolution": "1k"}, "resolution", "conflicting_parameters"),
    ({"aspect_ratio": "5:7"}, "aspect_ratio", "invalid_value"),
    ({"resolution": "4k"}, "resolution", "invalid_value"),
    ({"size": "3000x1000"}, "size", "invalid_value"),  # 3:1, wider than 20:9
    ({"size": "3072x2048"}, "size", "invalid_value"),  # beyond 2k's pixels
    ({"quality": "high"}, "quality", "unsupported_parameter"),
    ({"style": "vivid"}, "style", "unsupported_parameter"),
    ({"background": "opaque"}, "background", "unsupported_parameter"),
    ({"output_format": "png"}, "output_format", "unsupported_parameter"),
    ({"stream": True}, "stream", "unsupported_parameter"),
    ({"moderation": "low"}, "moderation", "unsupported_parameter"),
    ({"seed": 7}, "seed", "unknown_parameter"),
    ({"n": 11}, "n", "integer_above_max_value"),
]


@pytest.mark.parametrize("body,param,code", REFUSED, ids=[f"{p}-{c}" for _, p, c in REFUSED])
def test_what_xai_cannot_take_is_a_400_naming_it(
    up: XAIStandIn, gateway: Running, body: dict[str, Any], param: str, code: str
) -> None:
    r = _post(gateway, "generations", {"model": "grok-imagine-image", "prompt": "x", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code), err
    assert up.received == []


def test_a_model_without_aspect_ratios_takes_no_size(up: XAIStandIn, gateway: Running, sdk: openai.OpenAI) -> None:
    r = _post(gateway, "generations", {"model": "grok-2-image-1212", "prompt": "x", "size": "1024x1024"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "size", r.text
    r = _post(gateway, "generations", {"model": "grok-2-image-1212", "prompt": "x", "aspect_ratio": "1:1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "aspect_ratio", r.text
    assert up.received == []
    raw = sdk.images.with_raw_response.generate(model="grok-2-image-1212", prompt="x", response_format="b64_json")
    assert up.received[0].json == {"model": "grok-2-image-1212", "prompt": "x", "response_format": "b64_json"}
    assert raw.headers["x-imagegate-cost-usd"] == "0.070000"


def test_an_unlisted_xai_model_gets_grok_imagine_rules(up: XAIStandIn, gateway: Running, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="grok-imagine-image-next", prompt="x", size="1024x1024")
    assert up.received[0].json is not None and up.received[0].json["aspect_ratio"] == "1:1"
    r = _post(gateway, "generations", {"model": "grok-imagine-image-next", "prompt": "x", "quality": "high"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "quality"


# -- edits: multipart in, JSON with data URIs out --------------------------------------------


def test_multipart_edit_becomes_a_json_edit_with_data_uris(up: XAIStandIn, sdk: openai.OpenAI) -> None:
    images = [make_image(96, 64, "PNG"), make_image(64, 64, "JPEG"), make_image(48, 48, "WEBP")]
    result = sdk.images.edit(
        model="grok-imagine-image",
        image=[("a.png", images[0], "image/png"), ("b.jpg", images[1], "image/jpeg"), ("c.webp", images[2], "image/webp")],
        prompt="put <IMAGE_1> next to <IMAGE_0>",
        n=2,
        size="1024x1024",
        response_format="b64_json",
    )
    (rec,) = up.received
    assert rec.path == "/v1/images/edits" and rec.content_type == "application/json"
    body = dict(rec.json or {})
    refs = body.pop("images")
    assert body == {"model": "grok-imagine-image", "prompt": "put <IMAGE_1> next to <IMAGE_0>", "n": 2,
                    "aspect_ratio": "1:1", "resolution": "1k", "response_format": "b64_json"}  # fmt: skip
    assert [ref["type"] for ref in refs] == ["image_url"] * 3
    mimes = ["image/png", "image/jpeg", "image/webp"]
    assert [_uri_bytes(ref["url"], mime) for ref, mime in zip(refs, mimes, strict=True)] == images
    assert [decode_b64(d.b64_json).size for d in result.data] == [(1024, 1024)] * 2


def test_a_single_image_edit_is_sent_as_image(up: XAIStandIn, sdk: openai.OpenAI) -> None:
    src = make_image(120, 80, "JPEG")
    result = sdk.images.edit(
        model="grok-imagine-image", image=("a.jpg", src, "image/jpeg"), prompt="sketch it", response_format="b64_json"
    )
    assert up.received[0].json is not None and "images" not in up.received[0].json
    (ref,) = _refs(up)
    assert ref["type"] == "image_url" and _uri_bytes(ref["url"], "image/jpeg") == src
    # no size asked: xAI's image follows the input's 3:2, returned as it is
    img = decode_b64(result.data[0].b64_json)
    assert img.format == "JPEG" and img.size[0] / img.size[1] == pytest.approx(1.5, rel=0.02)


def test_a_json_edit_with_image_urls_reaches_xai_as_data_uris(up: XAIStandIn, gateway: Running) -> None:
    srcs = [make_image(32, 32, "PNG"), make_image(40, 30, "WEBP")]
    body = {"model": "grok-imagine-image", "prompt": "x", "images": [{"image_url": data_url(srcs[0])},
                                                                      {"image_url": data_url(srcs[1], "image/webp")}]}  # fmt: skip
    r = _post(gateway, "edits", body)
    assert r.status_code == 200, r.text
    refs = _refs(up)
    assert [_uri_bytes(refs[0]["url"], "image/png"), _uri_bytes(refs[1]["url"], "image/webp")] == srcs


def test_more_references_than_xai_takes_is_a_400_naming_image(up: XAIStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model="grok-imagine-image", image=[(f"{i}.png", make_image(), "image/png") for i in range(4)], prompt="x")
    assert (info.value.param, info.value.code) == ("image", "too_many_images")
    assert "at most 3" in info.value.message
    assert up.received == []


def test_a_mask_is_a_400_naming_mask(up: XAIStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model="grok-imagine-image", image=("a.png", make_image(64, 64), "image/png"),
                        mask=("m.png", make_mask(64, 64, (0, 0, 32, 32)), "image/png"), prompt="x")  # fmt: skip
    assert (info.value.param, info.value.code) == ("mask", "unsupported_mask")
    assert up.received == []


def test_variations_are_refused(up: XAIStandIn, gateway: Running) -> None:
    r = httpx.post(f"{gateway.base_url}/v1/images/variations", files={"image": ("a.png", make_image(), "image/png")},
                   data={"model": "grok-imagine-image"}, timeout=30)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
    assert up.received == []


# -- answers: url mode, upstream URLs, data URIs, moderation, cost -----------------------------


def test_url_answers_are_hosted_by_the_gateway(up: XAIStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    result = sdk.images.generate(model="grok-imagine-image", prompt="x")  # xAI's default: url
    assert up.received[0].json is not None and up.received[0].json["response_format"] == "b64_json"
    url = result.data[0].url
    assert url is not None and url.startswith(gateway.base_url)
    assert httpx.get(url).content == up.served[0]


def test_an_upstream_url_is_downloaded(up: XAIStandIn, sdk: openai.OpenAI) -> None:
    up.script.append(Fault("url"))
    result = sdk.images.generate(model="grok-imagine-image", prompt="x", response_format="b64_json")
    assert base64.b64decode(result.data[0].b64_json) == up.served[0]


def test_a_data_uri_in_b64_json_is_read(up: XAIStandIn, sdk: openai.OpenAI) -> None:
    up.script.append(Fault("data_uri"))
    result = sdk.images.generate(model="grok-imagine-image", prompt="x", response_format="b64_json")
    assert base64.b64decode(result.data[0].b64_json) == up.served[0]


def test_cost_is_what_xai_states_it_charged(up: XAIStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model="grok-imagine-image", prompt="x", n=3, response_format="b64_json")
    assert len(raw.parse().data) == 3
    assert raw.headers["x-imagegate-cost-usd"] == "0.060000"  # 3 x 2e8 ticks
    # an edit's input images are billed too (xAI publishes no price: the stand-in's is made up)
    up.ticks_per_input_image = 12_345_671  # $0.0012345671 each, rounded up to the nano-dollar
    images = [("a.png", make_image(64, 64), "image/png"), ("b.png", make_image(64, 64), "image/png")]
    raw = sdk.images.with_raw_response.edit(model="grok-imagine-image", prompt="x", image=images, response_format="b64_json")
    assert raw.headers["x-imagegate-cost-usd"] == "0.022469"  # 2e8 + 2 x 12_345_671 ticks = $0.0224691342
    # a stated cost above what the catalog price allows is charged at that bound
    up.ticks_per_input_image = 10**10  # $1 an input image
    raw = sdk.images.with_raw_response.edit(model="grok-imagine-image", prompt="x", image=images, response_format="b64_json")
    assert raw.headers["x-imagegate-cost-usd"] == "0.060000"  # $0.02 + 2 x $0.02 allowance


def test_input_moderation_block_is_a_400(up: XAIStandIn, sdk: openai.OpenAI) -> None:
    up.script.append(Fault("json", body={"block_reason": "The prompt violates the usage policy.", "data": [],
                                         "usage": {"cost_in_usd_ticks": 0}}))  # fmt: skip
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model="grok-imagine-image", prompt="x")
    assert (info.value.code, info.value.param) == ("moderation_blocked", "prompt")
    assert "violates the usage policy" in info.value.message
    assert info.value.response.headers["x-imagegate-cost-usd"] == "0.000000"


ERRORS = [
    # (fault, status, code, message fragment)
    (Fault("status", 400, {"code": INVALID, "error": "Generated image rejected by content moderation.",
                           "usage": {"cost_in_usd_ticks": 200000000}}),
     400, INVALID, "rejected by content moderation"),
    (Fault("status", 429, {"code": "Some resource has been exhausted", "error": "Too many requests"}, headers={"Retry-After": "4"}),
     429, "Some resource has been exhausted", "Too many requests"),
    (Fault("status", 500, {"code": "Internal error", "error": "Service temporarily unavailable"}),
     500, "Internal error", "temporarily unavailable"),
    (Fault("garbage", 502), 502, "invalid_upstream_response", "without an error envelope"),
    (Fault("json", 200, {"data": [{"mime_type": "image/jpeg"}]}), 502, "invalid_upstream_response", "neither b64_json nor"),
]  # fmt: skip


@pytest.mark.parametrize("fault,status,code,fragment", ERRORS, ids=[f"{e[0].kind}-{e[1]}" for e in ERRORS])
def test_xai_errors_are_mapped(up: XAIStandIn, sdk: openai.OpenAI, fault: Fault, status: int, code: str, fragment: str) -> None:
    up.script.append(fault)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="grok-imagine-image", prompt="x")
    assert info.value.status_code == status
    err = info.value.response.json()["error"]
    assert err["code"] == code and fragment in err["message"], err
    if status == 429:
        assert info.value.response.headers["retry-after"] == "4"


def test_a_wrong_key_is_the_gateways_fault_not_the_clients(up: XAIStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="badly-keyed", prompt="x")
    # xAI answers 400 "Incorrect API key provided: xa***10": not the client's 400
    assert info.value.status_code == 502
    err = info.value.response.json()["error"]
    assert err["code"] == "upstream_auth_error" and "Incorrect API key" not in err["message"]
    assert "xa***10" not in info.value.response.text
    assert up.received[0].headers["authorization"] == "Bearer xai-wrong-key-9876543210"
