"""The ``stability`` provider against a stand-in Stability AI v2beta API
(tests/standin_stability.py), through the real server, called with the
official ``openai`` SDK (httpx for JSON edits and the refusals): every call
multipart with ``accept: image/*`` and the Bearer key, sizes as the nearest
aspect ratio and the image made the asked size, n calls with their own
seeds, OpenAI's mask converted to Stability's, image to image with
strength, the edit tools' own fields, finish-reason and Stability's errors
mapped, and the cost (credits x $0.01 per image) charged to a key."""

from __future__ import annotations

import io
from typing import Any

import httpx
import openai
import pytest
from cryptography.fernet import Fernet
from PIL import Image
from standin_stability import KEY, Fault, StabilityStandIn

from support import SIGNING_KEY, Running, admin, data_url, decode_b64, make_image, make_mask, standin_fixtures

MASTER = "master-key-for-the-stability-tests-0123"
MODELS = (
    "stable-image-ultra", "stable-image-core", "sd3.5-large", "sd3.5-flash", "stability-inpaint", "stability-outpaint",
    "stability-erase", "stability-search-and-replace", "stability-search-and-recolor", "stability-remove-background",
)  # fmt: skip


def gateway_config(base_url: str) -> dict[str, Any]:
    return {
        "auth": {"master_key": MASTER, "encryption_key": Fernet.generate_key().decode()},
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {"max_attempts": 1},  # one call per image: what Stability answered is what is judged
        "providers": {"stability": {"type": "stability", "base_url": base_url, "api_key": KEY}},
        "models": {name: [{"provider": "stability"}] for name in MODELS},
    }


upstream, gateway, up = standin_fixtures(StabilityStandIn, gateway_config, "stability")


@pytest.fixture
def sdk(gateway: Running) -> openai.OpenAI:
    return gateway.sdk(api_key=MASTER)


def _post(gateway: Running, body: dict[str, Any], endpoint: str = "generations", key: str = MASTER) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/images/{endpoint}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def _edit(gateway: Running, model: str, image: bytes, body: dict[str, Any], mask: bytes | None = None) -> httpx.Response:
    refs: dict[str, Any] = {"images": [{"image_url": data_url(image)}]}
    if mask is not None:
        refs["mask"] = {"image_url": data_url(mask)}
    return _post(gateway, {"model": model, **refs, **body}, "edits")


def _key(gateway: Running) -> dict[str, Any]:
    r = admin(gateway.base_url, MASTER, "POST", "/admin/keys", json={"name": "stability", "budget_usd": 5})
    assert r.status_code == 201, r.text
    return r.json()


def _spend(gateway: Running, key: dict[str, Any]) -> tuple[str, str]:
    state = admin(gateway.base_url, MASTER, "GET", f"/admin/keys/{key['id']}").json()
    return state["spent_usd"], state["reserved_usd"]


def _rgba_with_hole(width: int, height: int, box: tuple[int, int, int, int]) -> bytes:
    img = Image.new("RGBA", (width, height), (40, 120, 200, 255))
    img.paste((0, 0, 0, 0), box)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# -- generations ---------------------------------------------------------------------------


@pytest.mark.parametrize("size,ratio", [("1024x1024", "1:1"), ("1536x1024", "3:2"), ("1024x1536", "2:3"), ("1792x768", "21:9")])
def test_core_makes_each_size_exactly_from_the_nearest_ratio(
    up: StabilityStandIn, sdk: openai.OpenAI, size: str, ratio: str
) -> None:
    raw = sdk.images.with_raw_response.generate(model="stable-image-core", prompt="a lighthouse", size=size)
    (call,) = up.calls()
    assert call.path == "generate/core" and call.multipart and call.files == {}  # multipart even without files
    assert call.headers["authorization"] == f"Bearer {KEY}" and call.headers["accept"] == "image/*"
    assert call.fields == {"prompt": "a lighthouse", "aspect_ratio": ratio, "output_format": "png"}
    img = decode_b64(raw.parse().data[0].b64_json)
    assert (img.format, img.size, img.mode) == ("PNG", tuple(int(v) for v in size.split("x")), "RGB")
    assert raw.headers["x-imagegate-cost-usd"] == "0.030000"  # 3 credits


def test_n_calls_with_their_own_seeds_charged_credits_to_the_key(up: StabilityStandIn, gateway: Running) -> None:
    key = _key(gateway)
    extra = {"seed": 7, "style_preset": "cinematic", "cfg_scale": 5.5, "negative_prompt": "fog", "aspect_ratio": "16:9"}
    raw = gateway.sdk(api_key=key["key"]).images.with_raw_response.generate(
        model="sd3.5-large", prompt="three foxes", n=3, output_format="webp", user="end-user-42", extra_body=extra
    )
    data = raw.parse().data
    assert len(data) == 3 and all(decode_b64(d.b64_json).format == "WEBP" for d in data)
    calls = up.calls("generate/sd3")
    assert sorted(int(c.fields["seed"]) for c in calls) == [7, 8, 9]
    assert {c.headers["stability-client-user-id"] for c in calls} == {"end-user-42"}  # OpenAI's user, Stability's header
    assert {k: v for k, v in calls[0].fields.items() if k != "seed"} == {
        "prompt": "three foxes", "model": "sd3.5-large", "mode": "text-to-image", "style_preset": "cinematic",
        "cfg_scale": "5.5", "negative_prompt": "fog", "aspect_ratio": "16:9", "output_format": "webp",
    }  # fmt: skip
    assert raw.headers["x-imagegate-cost-usd"] == "0.195000"  # 3 x 6.5 credits
    assert _spend(gateway, key) == ("0.195000", "0.000000")


def test_a_compressed_jpeg_is_asked_as_png_and_encoded_once(up: StabilityStandIn, sdk: openai.OpenAI) -> None:
    result = sdk.images.generate(model="sd3.5-flash", prompt="x", output_format="jpeg", output_compression=40)
    assert up.calls()[0].fields["output_format"] == "png"
    assert decode_b64(result.data[0].b64_json).format == "JPEG"
    up.reset()
    sdk.images.generate(model="sd3.5-flash", prompt="x", output_format="jpeg")
    assert up.calls()[0].fields["output_format"] == "jpeg"  # no compression asked: Stability's own jpeg


# -- edits -----------------------------------------------------------------------------------


def test_inpaint_sends_stabilitys_mask_white_where_openais_is_transparent(up: StabilityStandIn, sdk: openai.OpenAI) -> None:
    source = make_image(64, 48, "PNG")
    raw = sdk.images.with_raw_response.edit(
        model="stability-inpaint",
        image=("a.png", source, "image/png"),
        mask=("m.png", make_mask(64, 48, (8, 8, 24, 16)), "image/png"),
        prompt="a window",
        extra_body={"grow_mask": 3, "seed": 11},
    )
    (call,) = up.calls("edit/inpaint")
    assert call.files["image"] == source and call.file_names["image"] == "image.png"  # the client's exact bytes
    assert call.fields == {"prompt": "a window", "grow_mask": "3", "seed": "11", "output_format": "png"}
    mask = Image.open(io.BytesIO(call.files["mask"]))
    assert mask.mode == "L" and mask.size == (64, 48)
    assert mask.getpixel((10, 10)) == 255 and mask.getpixel((23, 15)) == 255  # repaint where OpenAI's was transparent
    assert mask.getpixel((7, 8)) == 0 and mask.getpixel((40, 30)) == 0  # keep elsewhere
    assert decode_b64(raw.parse().data[0].b64_json).size == (64, 48)
    assert raw.headers["x-imagegate-cost-usd"] == "0.050000"


def test_inpaint_without_a_mask_sends_the_image_and_its_alpha(up: StabilityStandIn, gateway: Running) -> None:
    source = _rgba_with_hole(64, 64, (0, 0, 32, 32))
    r = _edit(gateway, "stability-inpaint", source, {"prompt": "sky"})
    assert r.status_code == 200, r.text
    (call,) = up.calls()
    assert call.files == {"image": source}  # Stability reads the transparent area itself
    up.reset()
    r = _edit(gateway, "stability-inpaint", make_image(64, 64), {"prompt": "sky"})
    assert (r.status_code, r.json()["error"]["param"], r.json()["error"]["code"]) == (400, "mask", "missing_mask")
    assert up.received == []


def test_image_to_image_with_strength(up: StabilityStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    source = make_image(96, 64, "JPEG")
    raw = sdk.images.with_raw_response.edit(
        model="stable-image-ultra", image=("a.jpg", source, "image/jpeg"), prompt="as a painting", size="1024x1024",
        extra_body={"strength": 0.6},
    )  # fmt: skip
    (call,) = up.calls("generate/ultra")
    assert call.files == {"image": source} and call.file_names["image"] == "image.jpg"
    assert call.fields == {"prompt": "as a painting", "strength": "0.6", "output_format": "png"}  # no aspect_ratio
    img = decode_b64(raw.parse().data[0].b64_json)
    assert img.size == (1024, 1024) and raw.headers["x-imagegate-resized"] == "96x64->1024x1024; crop"
    assert raw.headers["x-imagegate-cost-usd"] == "0.080000"
    up.reset()
    r = _edit(gateway, "sd3.5-large", source, {"prompt": "x", "strength": 1})
    assert r.status_code == 200, r.text
    assert {k: up.calls()[0].fields[k] for k in ("mode", "model", "strength")} == {
        "mode": "image-to-image", "model": "sd3.5-large", "strength": "1",
    }  # fmt: skip


# -- the edit tools --------------------------------------------------------------------------


def test_the_tools_own_fields_reach_stability(up: StabilityStandIn, gateway: Running) -> None:
    source = make_image(64, 64)
    r = _edit(gateway, "stability-outpaint", source, {"prompt": "more field", "left": 32, "down": 16, "creativity": 0.3})
    assert r.status_code == 200, r.text
    assert up.calls()[0].fields == {
        "prompt": "more field",
        "left": "32",
        "down": "16",
        "creativity": "0.3",
        "output_format": "png",
    }
    assert decode_b64(r.json()["data"][0]["b64_json"]).size == (96, 80)  # grown as asked
    assert r.headers["x-imagegate-cost-usd"] == "0.040000"
    up.reset()
    r = _edit(gateway, "stability-search-and-replace", source, {"prompt": "a cat", "search_prompt": "dog", "grow_mask": 4})
    assert r.status_code == 200, r.text
    assert up.calls()[0].fields == {"prompt": "a cat", "search_prompt": "dog", "grow_mask": "4", "output_format": "png"}
    up.reset()
    r = _edit(gateway, "stability-search-and-recolor", source, {"prompt": "red", "select_prompt": "the car"})
    assert r.status_code == 200, r.text
    assert (up.calls()[0].path, up.calls()[0].fields["select_prompt"]) == ("edit/search-and-recolor", "the car")


def test_tools_without_a_prompt_take_the_placeholder_and_refuse_a_real_one(up: StabilityStandIn, gateway: Running) -> None:
    source = make_image(64, 64)
    r = _edit(gateway, "stability-erase", source, {"prompt": "-", "grow_mask": 2}, mask=make_mask(64, 64, (0, 0, 16, 16)))
    assert r.status_code == 200, r.text
    (call,) = up.calls("edit/erase")
    assert call.fields == {"grow_mask": "2", "output_format": "png"} and set(call.files) == {"image", "mask"}
    up.reset()
    r = _edit(gateway, "stability-remove-background", source, {"prompt": "-", "output_format": "webp"})
    assert r.status_code == 200, r.text
    assert up.calls()[0].fields == {"output_format": "webp"}
    img = decode_b64(r.json()["data"][0]["b64_json"])
    assert (img.format, img.mode) == ("WEBP", "RGBA") and img.getpixel((0, 0))[3] == 0  # the background is gone
    up.reset()
    r = _edit(gateway, "stability-remove-background", source, {"prompt": "remove the background"})
    err = r.json()["error"]
    assert (r.status_code, err["param"], err["code"]) == (400, "prompt", "unsupported_parameter"), err
    assert "send prompt '-'" in err["message"] and up.received == []


# -- refusals and errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["[filtered]", "[moderated]", "[public-figure]"])
def test_a_refusal_is_a_content_policy_400_and_costs_nothing(up: StabilityStandIn, gateway: Running, trigger: str) -> None:
    key = _key(gateway)
    r = _post(gateway, {"model": "stable-image-ultra", "prompt": f"x {trigger}", "n": 2}, key=key["key"])
    assert (r.status_code, r.json()["error"]["code"]) == (400, "content_policy_violation"), r.text
    assert "Nothing was charged" in r.json()["error"]["message"]
    assert len(up.calls()) == 2 and r.headers["x-imagegate-cost-usd"] == "0.000000"
    assert _spend(gateway, key) == ("0.000000", "0.000000")


def test_a_429_is_a_429_with_retry_after(up: StabilityStandIn, gateway: Running) -> None:
    r = _post(gateway, {"model": "stable-image-core", "prompt": "x [busy]"})
    assert (r.status_code, r.json()["error"]["type"]) == (429, "rate_limit_error"), r.text
    assert r.headers["retry-after"] == "60"  # Stability's documented penalty when it names none
    up.reset()
    up.script.append(Fault(429, "rate_limit_exceeded", ["slow down"], {"Retry-After": "7"}))
    r = _post(gateway, {"model": "stable-image-core", "prompt": "x"})
    assert (r.status_code, r.headers["retry-after"]) == (429, "7"), r.text


ERRORS = [
    ("x [too-large]", 400, "image", "image_too_large"),
    ("x [invalid]", 400, "prompt", "invalid_value"),
    ("x [bad-ratio]", 400, "size", "bad_request"),  # Stability's aspect_ratio came from the client's size
    ("x [no-credits]", 502, None, "upstream_insufficient_credits"),
    ("x [crash]", 502, None, "upstream_error"),
    ("x [error]", 502, None, "upstream_error"),
]


@pytest.mark.parametrize("prompt,status,param,code", ERRORS, ids=[e[0] for e in ERRORS])
def test_stabilitys_errors_are_mapped(
    up: StabilityStandIn, gateway: Running, prompt: str, status: int, param: str | None, code: str
) -> None:
    r = _post(gateway, {"model": "stable-image-core", "prompt": prompt, "size": "1536x1024"})
    err = r.json()["error"]
    assert (r.status_code, err["param"], err["code"]) == (status, param, code), err
    assert r.headers["x-imagegate-cost-usd"] == "0.000000"


def test_a_rejected_key_is_a_502_that_repeats_nothing(up: StabilityStandIn, gateway: Running) -> None:
    up.script.append(Fault(401, "unauthorized", [f"authorization: bad key {KEY}"]))
    r = _post(gateway, {"model": "stable-image-core", "prompt": "x"})
    assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_auth_error"), r.text
    assert KEY not in r.text and "bad key" not in r.text
    up.reset()
    up.script.append(Fault(403, "forbidden", ["no access"]))
    r = _post(gateway, {"model": "stable-image-core", "prompt": "x"})
    assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_auth_error"), r.text


REFUSED = [
    # (model, body, param, code): each a 400 before anything is sent
    ("stable-image-core", {"seed": "7"}, "seed", "invalid_type"),
    ("stable-image-core", {"seed": 4294967295}, "seed", "integer_above_max_value"),
    ("stable-image-core", {"style_preset": "watercolour"}, "style_preset", "invalid_value"),
    ("stable-image-core", {"aspect_ratio": "7:3"}, "aspect_ratio", "invalid_value"),
    ("stable-image-core", {"size": "1024x1024", "aspect_ratio": "1:1"}, "aspect_ratio", "conflicting_parameters"),
    ("stable-image-core", {"quality": "high"}, "quality", "unsupported_parameter"),
    ("stable-image-core", {"cfg_scale": 4}, "cfg_scale", "unknown_parameter"),
    ("stable-image-core", {"size": "3000x1000"}, "size", "invalid_value"),
    ("sd3.5-large", {"cfg_scale": 10.5}, "cfg_scale", "number_above_max_value"),
    ("sd3.5-large", {"strength": 0.5}, "strength", "unsupported_parameter"),
    ("sd3.5-large", {"n": 11}, "n", "integer_above_max_value"),
    ("stable-image-ultra", {"negative_prompt": 3}, "negative_prompt", "invalid_type"),
    ("stable-image-ultra", {"user": "é" * 3}, "user", "invalid_value"),  # a header: ASCII only
    ("stable-image-ultra", {"user": "u" * 257}, "user", "invalid_value"),
]


@pytest.mark.parametrize("model,body,param,code", REFUSED, ids=[f"{m}-{p}-{c}" for m, _, p, c in REFUSED])
def test_what_stability_cannot_take_is_a_400_naming_it(
    up: StabilityStandIn, gateway: Running, model: str, body: dict[str, Any], param: str, code: str
) -> None:
    r = _post(gateway, {"model": model, "prompt": "x", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code), err
    assert up.received == []


EDITS_REFUSED = [
    ("stable-image-ultra", {"prompt": "x"}, "strength", "missing_required_parameter"),
    ("stable-image-ultra", {"prompt": "x", "strength": 0.5, "aspect_ratio": "1:1"}, "aspect_ratio", "unsupported_parameter"),
    ("stable-image-core", {"prompt": "x"}, "model", "unsupported_model"),
    ("stability-outpaint", {"prompt": "x"}, "left", "missing_required_parameter"),
    ("stability-outpaint", {"prompt": "x", "left": 2001}, "left", "integer_above_max_value"),
    ("stability-search-and-replace", {"prompt": "x"}, "search_prompt", "missing_required_parameter"),
    ("stability-search-and-recolor", {"prompt": "x", "grow_mask": "wide"}, "grow_mask", "invalid_type"),
    ("stability-remove-background", {"prompt": "-", "seed": 1}, "seed", "unknown_parameter"),
]


@pytest.mark.parametrize("model,body,param,code", EDITS_REFUSED, ids=[f"{m}-{p}-{c}" for m, _, p, c in EDITS_REFUSED])
def test_edits_stability_cannot_take_are_a_400_naming_the_field(
    up: StabilityStandIn, gateway: Running, model: str, body: dict[str, Any], param: str, code: str
) -> None:
    r = _edit(gateway, model, make_image(64, 64), body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code), err
    assert up.received == []


def test_a_mask_or_a_second_image_is_refused_where_stability_takes_none(up: StabilityStandIn, gateway: Running) -> None:
    image = make_image(64, 64)
    r = _edit(gateway, "sd3.5-large", image, {"prompt": "x", "strength": 0.5}, mask=make_mask(64, 64, (0, 0, 8, 8)))
    assert (r.status_code, r.json()["error"]["param"]) == (400, "mask"), r.text
    body = {"model": "stability-inpaint", "prompt": "x", "images": [{"image_url": data_url(image)}] * 2}
    r = _post(gateway, body, "edits")
    assert (r.status_code, r.json()["error"]["param"]) == (400, "images"), r.text  # the JSON edit's field
    assert up.received == []


def test_stabilitys_field_errors_name_the_clients_field(up: StabilityStandIn, gateway: Running) -> None:
    up.script.append(Fault(400, "bad_request", ["style_preset: not available for this model"]))
    r = _post(gateway, {"model": "stable-image-core", "prompt": "x", "style_preset": "anime"})
    err = r.json()["error"]
    assert (r.status_code, err["param"], err["code"]) == (400, "style_preset", "bad_request"), err
    assert "not available for this model" in err["message"]


def test_inpaints_grow_mask_takes_stabilitys_whole_range(up: StabilityStandIn, gateway: Running) -> None:
    # edit/inpaint documents grow_mask 0..100 (erase's is 0..20): a 50 must reach Stability, not be refused.
    image, mask = make_image(64, 64), make_mask(64, 64, (0, 0, 8, 8))
    r = _edit(gateway, "stability-inpaint", image, {"prompt": "x", "grow_mask": 50}, mask=mask)
    assert r.status_code == 200, r.text
    assert up.calls("edit/inpaint")[0].fields["grow_mask"] == "50"
    up.reset()
    r = _edit(gateway, "stability-inpaint", image, {"prompt": "x", "grow_mask": 101}, mask=mask)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "grow_mask"), r.text
    r = _edit(gateway, "stability-erase", image, {"prompt": "-", "grow_mask": 21}, mask=mask)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "grow_mask"), r.text
    assert up.received == []


def test_n_calls_one_failing_return_and_charge_only_the_others(up: StabilityStandIn, gateway: Running) -> None:
    key = _key(gateway)
    up.script.append(Fault(500, "internal_error", ["An unexpected server error has occurred."]))
    r = _post(gateway, {"model": "stable-image-core", "prompt": "x", "n": 3}, key=key["key"])
    assert r.status_code == 200, r.text
    assert len(up.calls()) == 3 and len(r.json()["data"]) == 2  # the failed call is not retried, nor billed
    assert r.headers["x-imagegate-cost-usd"] == "0.060000"  # 2 x 3 credits
    assert _spend(gateway, key) == ("0.060000", "0.000000")


@pytest.mark.parametrize(
    "headers,body",
    [({"finish-reason": "SUCCESS"}, b"<html>not an image</html>"), ({}, make_image(64, 64))],
    ids=["not-an-image", "no-finish-reason"],
)
def test_an_answer_that_is_no_usable_image_is_a_502_and_costs_nothing(
    up: StabilityStandIn, gateway: Running, headers: dict[str, str], body: bytes
) -> None:
    key = _key(gateway)
    up.script.append(Fault(200, "", [], headers, body=body))
    r = _post(gateway, {"model": "stable-image-core", "prompt": "x"}, key=key["key"])
    assert (r.status_code, r.json()["error"]["code"]) == (502, "invalid_upstream_response"), r.text
    assert _spend(gateway, key) == ("0.000000", "0.000000")
