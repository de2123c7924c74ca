"""The ``recraft`` provider against a stand-in Recraft API on loopback
(tests/standin_recraft.py), called with the official SDK: Recraft's own fields
as declared extension fields, raster and SVG output, image to image and
inpainting, errors, cost."""

from __future__ import annotations

import base64
import io
import json
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from standin_recraft import Fault, RecraftStandIn

from support import SIGNING_KEY, Running, data_url, decode_b64, decode_bytes, make_image, make_mask, run_server, standin_fixtures

KEY = "rc-upstream-secret-0123456789"
SVG_ROOT = "{http://www.w3.org/2000/svg}svg"


def gateway_config(base_url: str) -> dict[str, Any]:
    up = {"type": "recraft", "base_url": base_url, "api_key": KEY}
    return {
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {"max_attempts": 1},  # one exchange per test; routing has its own tests
        "providers": {"rc": {**up, "timeout_seconds": 20}, "rc-slow": {**up, "timeout_seconds": 1}},
        "models": {
            "recraftv3": [{"provider": "rc"}],
            "recraftv3_vector": [{"provider": "rc"}],
            "recraftv2": [{"provider": "rc"}],
            "recraftv4": [{"provider": "rc"}],
            "recraftv4_vector": [{"provider": "rc"}],
            "logos": {"rules": "recraftv3_vector", "deployments": [{"provider": "rc", "model": "recraftv3_vector"}]},
            "slow": {"rules": "recraftv3", "deployments": [{"provider": "rc-slow", "model": "recraftv3"}]},
            "vector-meta": {"rules": "vector-meta", "deployments": [{"provider": "rc", "model": "recraftv4_vector"}]},
        },
        # A config entry of its own: a vector model whose answers report their metadata.
        "catalog": {"vector-meta": {"extends": "recraftv4_vector", "reports_output_meta": True}},
    }


upstream, gateway, up = standin_fixtures(lambda: RecraftStandIn(token=KEY), gateway_config, "recraft")


@pytest.fixture
def sdk(gateway: Running) -> openai.OpenAI:
    return gateway.sdk(api_key="sk-client")


def _raw(gateway: Running, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/v1/images/{path}", json=body, timeout=30)


CONTROLS = {"colors": [{"rgb": [255, 142, 60]}, {"rgb": [80, 180, 110]}], "background_color": {"rgb": [250, 250, 240]},
            "artistic_level": 3, "no_text": True}  # fmt: skip
TEXT_LAYOUT = [{"text": "Recraft", "bbox": [[0.3, 0.45], [0.6, 0.45], [0.6, 0.55], [0.3, 0.55]]}]


# -- generations: fidelity --------------------------------------------------------


def test_recraft_fields_reach_the_upstream_as_sent(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    own = {"style": "digital_illustration", "substyle": "hand_drawn", "negative_prompt": "blur", "controls": CONTROLS,
           "text_layout": TEXT_LAYOUT, "random_seed": 42}  # fmt: skip
    raw = sdk.images.with_raw_response.generate(
        model="recraftv3", prompt="a fox", n=2, size="1365x1024", response_format="b64_json", extra_body=own
    )
    result = raw.parse()
    (rec,) = up.received
    assert rec.path == "/v1/images/generations"
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    assert rec.json == {
        "model": "recraftv3",
        "prompt": "a fox",
        "n": 2,
        "size": "1365x1024",
        "response_format": "b64_json",
        **own,
    }
    images = [decode_b64(d.b64_json or "") for d in result.data]
    assert [(i.format, i.size, i.mode) for i in images] == [("PNG", (1365, 1024), "RGB")] * 2
    assert [base64.b64decode(d.b64_json or "") for d in result.data] == up.served
    assert raw.headers["x-imagegate-cost-usd"] == "0.080000"  # two images at $0.04 (the catalog's price)


def test_aspect_ratio_sizes_and_the_default_url_answer(up: RecraftStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    result = sdk.images.generate(model="recraftv3", prompt="x", size="16:9")  # type: ignore[arg-type]
    assert up.received[0].json == {"model": "recraftv3", "prompt": "x", "size": "16:9"}
    # Recraft answered a URL on its own host: fetched through the SSRF-checked fetcher, without the key, and hosted here.
    (fetch,) = up.fetched
    assert fetch.path.startswith("/files/") and "authorization" not in fetch.headers
    url = result.data[0].url or ""
    assert url.startswith(gateway.base_url + "/v1/images/files/")
    got = httpx.get(url)
    assert got.headers["content-type"] == "image/png" and got.content == up.served[0]
    assert decode_bytes(got.content).size == (1820, 1024)


def test_output_format_is_the_gateways_own(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    result = sdk.images.generate(model="recraftv3", prompt="x", output_format="webp", response_format="b64_json")
    assert "output_format" not in (up.received[0].json or {})
    img = decode_b64(result.data[0].b64_json or "")
    assert (img.format, img.size) == ("WEBP", (1024, 1024))


def test_recraftv2_and_v4_sizes(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    v2 = sdk.images.generate(model="recraftv2", prompt="x", size="1024x1707", response_format="b64_json")  # type: ignore[arg-type]
    v4 = sdk.images.generate(model="recraftv4", prompt="x", size="1344x768", response_format="b64_json")  # type: ignore[arg-type]
    assert decode_b64(v2.data[0].b64_json or "").size == (1024, 1707)
    assert decode_b64(v4.data[0].b64_json or "").size == (1344, 768)
    assert [r.json["model"] for r in up.received if r.json] == ["recraftv2", "recraftv4"]


# -- vector output --------------------------------------------------------------------


def test_a_vector_model_answers_svg_untouched(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    result = sdk.images.generate(model="recraftv3_vector", prompt="a logo", size="1:1", response_format="b64_json",
                                 extra_body={"style": "vector_illustration"})  # fmt: skip
    svg = base64.b64decode(result.data[0].b64_json or "")
    assert svg == up.served[0]  # byte for byte: never decoded, resized or converted
    assert ET.fromstring(svg).tag == SVG_ROOT
    assert up.received[0].json == {"model": "recraftv3_vector", "prompt": "a logo", "size": "1:1",
                                   "response_format": "b64_json", "style": "vector_illustration"}  # fmt: skip


def test_svg_asked_by_output_format_is_hosted_as_svg(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    result = sdk.images.generate(model="logos", prompt="a logo", output_format="svg", response_format="url")  # type: ignore[arg-type]
    rec = up.received[0].json or {}
    assert rec["model"] == "recraftv3_vector" and "output_format" not in rec
    got = httpx.get(result.data[0].url or "")
    assert got.status_code == 200 and got.headers["content-type"] == "image/svg+xml"
    assert "sandbox" in got.headers["content-security-policy"] and got.headers["x-content-type-options"] == "nosniff"
    assert got.content == up.served[0] and ET.fromstring(got.content).tag == SVG_ROOT


def test_an_svg_answers_metadata_is_the_specs(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    """OpenAI's output_format enum has no svg: an SVG answer reports its size, not its format."""
    result = sdk.images.generate(model="vector-meta", prompt="x", size="16:9", response_format="b64_json")
    assert result.size == "1344x768" and result.output_format is None
    assert ET.fromstring(base64.b64decode(result.data[0].b64_json or "")).tag == SVG_ROOT


def test_a_vector_model_takes_no_raster_format(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model="recraftv4_vector", prompt="x", output_format="png")
    assert info.value.param == "output_format" and "'svg'" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model="recraftv3", prompt="x", output_format="svg")  # type: ignore[arg-type]
    assert info.value.param == "output_format"
    assert up.received == []


def test_a_raster_answer_to_an_svg_request_is_a_502(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    png = base64.b64encode(make_image(32, 32)).decode()
    up.script.append(Fault("json", body={"created": 1, "credits": 80, "data": [{"image_id": "i", "b64_json": png}]}))
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="recraftv3_vector", prompt="x", output_format="svg", response_format="b64_json")  # type: ignore[arg-type]
    assert info.value.status_code == 502 and info.value.code == "invalid_upstream_image"


# -- what the catalog refuses, before anything is sent ------------------------------------------

REFUSED = [
    # (model, extra fields, param, code)
    ("recraftv3", {"style": "x" * 65}, "style", "string_above_max_length"),
    ("recraftv3", {"style": 3}, "style", "invalid_type"),
    ("recraftv3", {"controls": {"artistic_level": 6}}, "controls.artistic_level", "integer_above_max_value"),
    ("recraftv3", {"controls": {"colors": [{"rgb": [1, 2]}]}}, "controls.colors[0].rgb", "array_below_min_length"),
    ("recraftv3", {"controls": {"colors": [{"rgb": [1, 2, 300]}]}}, "controls.colors[0].rgb[2]", "integer_above_max_value"),
    ("recraftv3", {"controls": {"contrast": 1}}, "controls.contrast", "unknown_parameter"),
    ("recraftv3", {"controls": "bold"}, "controls", "invalid_type"),
    ("recraftv3", {"text_layout": [{"text": "x"}]}, "text_layout[0].bbox", "missing_required_parameter"),
    ("recraftv3", {"seed": 1}, "seed", "unknown_parameter"),
    ("recraftv3", {"strength": 0.5}, "strength", "unsupported_parameter"),  # an edit's field
    ("recraftv4", {"style": "realistic_image"}, "style", "invalid_value"),  # V2/V3 only: on V4 it is OpenAI's style...
    ("recraftv4", {"style": "vivid"}, "style", "unsupported_parameter"),  # ...which no Recraft model takes
    ("recraftv4", {"text_layout": TEXT_LAYOUT}, "text_layout", "unknown_parameter"),  # V3 only
    ("recraftv2", {"text_layout": TEXT_LAYOUT}, "text_layout", "unknown_parameter"),
]  # fmt: skip


@pytest.mark.parametrize("model,extra,param,code", REFUSED, ids=[f"{r[0]}-{r[2]}-{r[3]}" for r in REFUSED])
def test_recraft_fields_are_checked(up: RecraftStandIn, gateway: Running, model: str, extra: dict[str, Any], param: str,
                                    code: str) -> None:  # fmt: skip
    r = _raw(gateway, "generations", {"model": model, "prompt": "x", **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code), err
    assert up.received == []


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": "recraftv3", "prompt": "x", "size": "1792x1024"}, "size"),
        ({"model": "recraftv4", "prompt": "x", "size": "1365x1024"}, "size"),
        ({"model": "recraftv3", "prompt": "x", "n": 7}, "n"),
        ({"model": "recraftv3", "prompt": "x" * 1001}, "prompt"),
        ({"model": "recraftv3", "prompt": "x", "quality": "high"}, "quality"),
        ({"model": "recraftv3", "prompt": "x", "background": "transparent"}, "background"),
        ({"model": "recraftv3", "prompt": "x", "stream": True}, "stream"),
        ({"model": "recraftv3", "prompt": "x", "user": "u-1"}, "user"),  # Recraft has no counterpart
    ],
)
def test_spec_fields_outside_recrafts_rules_are_refused(up: RecraftStandIn, gateway: Running, body: dict[str, Any],
                                                        param: str) -> None:  # fmt: skip
    r = _raw(gateway, "generations", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert up.received == []


def test_recraft_judges_a_style_name(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    """Styles are family or style names (Recraft's list grows): a string reaches Recraft, whose refusal comes back."""
    sdk.images.generate(model="recraftv3", prompt="x", response_format="b64_json", extra_body={"style": "Photorealism"})
    assert (up.received[0].json or {})["style"] == "Photorealism"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model="recraftv3", prompt="x", extra_body={"style": "watercolour"})
    assert info.value.code == "invalid_style" and "watercolour" in info.value.message


def test_a_v4_prompt_may_be_long(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="recraftv4", prompt="x" * 5000, response_format="b64_json")
    assert len((up.received[0].json or {})["prompt"]) == 5000


# -- edits ------------------------------------------------------------------------------------------


def test_an_edit_without_a_mask_is_image_to_image(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    src = make_image(320, 256, "JPEG")
    # A multipart form carries a nested field as JSON text (the SDK would flatten a dict into controls[colors][]...).
    result = sdk.images.edit(model="recraftv3", image=("a.jpg", src, "image/jpeg"), prompt="as a watercolour", n=2,
                             response_format="b64_json",
                             extra_body={"strength": 0.4, "style": "digital_illustration", "controls": json.dumps(CONTROLS)})  # fmt: skip
    (rec,) = up.received
    assert rec.path == "/v1/images/imageToImage" and rec.headers["authorization"] == f"Bearer {KEY}"
    assert [(f[0], f[2], f[3]) for f in rec.files] == [("image", "image/jpeg", src)]
    assert rec.fields == {"model": "recraftv3", "prompt": "as a watercolour", "n": "2", "response_format": "b64_json",
                          "strength": "0.4", "style": "digital_illustration", "controls": rec.fields["controls"]}  # fmt: skip
    assert rec.field_types == {"controls": "application/json"} and rec.params["controls"] == CONTROLS
    assert [decode_b64(d.b64_json or "").size for d in result.data] == [(320, 256)] * 2


def test_image_to_image_needs_strength(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model="recraftv3", image=("a.png", make_image(), "image/png"), prompt="x")
    assert (info.value.param, info.value.code) == ("strength", "missing_required_parameter")
    for bad in (1.5, -0.1):
        with pytest.raises(openai.BadRequestError) as info:
            sdk.images.edit(
                model="recraftv3", image=("a.png", make_image(), "image/png"), prompt="x", extra_body={"strength": bad}
            )
        assert info.value.param == "strength"
    assert up.received == []


def test_an_edit_with_a_mask_is_inpainting_with_recrafts_mask(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    src = make_image(256, 192)
    mask = make_mask(256, 192, (0, 0, 100, 50))  # transparent = edit here (OpenAI's convention)
    result = sdk.images.edit(model="recraftv3", image=("a.png", src, "image/png"), mask=("m.png", mask, "image/png"),
                             prompt="a bicycle", response_format="b64_json", extra_body={"negative_prompt": "cars"})  # fmt: skip
    (rec,) = up.received
    assert rec.path == "/v1/images/inpaint"
    assert rec.fields == {"model": "recraftv3", "prompt": "a bicycle", "response_format": "b64_json", "negative_prompt": "cars"}
    (image,) = [f for f in rec.files if f[0] == "image"]
    (sent_mask,) = [f for f in rec.files if f[0] == "mask"]
    assert image[3] == src
    got = decode_bytes(sent_mask[3])
    assert (got.format, got.mode, got.size) == ("PNG", "L", (256, 192))  # white = regenerate, black = keep (Recraft's)
    assert got.getpixel((10, 10)) == 255 and got.getpixel((99, 49)) == 255
    assert got.getpixel((100, 50)) == 0 and got.getpixel((255, 191)) == 0
    assert {v for v, count in enumerate(got.histogram()) if count} == {0, 255}
    assert decode_b64(result.data[0].b64_json or "").size == (256, 192)


def test_inpainting_takes_no_strength_or_controls(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    for extra, param in (({"strength": 0.5}, "strength"), ({"controls": json.dumps(CONTROLS)}, "controls")):
        with pytest.raises(openai.BadRequestError) as info:
            sdk.images.edit(model="recraftv3", image=("a.png", make_image(), "image/png"),
                            mask=("m.png", make_mask(64, 64, (0, 0, 8, 8)), "image/png"), prompt="x", extra_body=extra)  # fmt: skip
        assert info.value.param == param
    assert up.received == []


def test_an_edits_size_is_the_gateways_to_make(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.edit(model="recraftv3", image=("a.png", make_image(300, 300), "image/png"),
                                            prompt="x", size="1024x1024", response_format="b64_json",
                                            extra_body={"strength": 0.2})  # fmt: skip
    assert "size" not in up.received[0].fields  # Recraft's edits keep the input's size
    assert decode_b64(raw.parse().data[0].b64_json or "").size == (1024, 1024)
    assert raw.headers["x-imagegate-resized"] == "300x300->1024x1024; scale"


def test_a_vector_edit_answers_svg_and_takes_no_size(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    result = sdk.images.edit(model="recraftv3_vector", image=("a.png", make_image(256, 256), "image/png"), prompt="x",
                             response_format="b64_json", extra_body={"strength": 0.5})  # fmt: skip
    assert ET.fromstring(base64.b64decode(result.data[0].b64_json or "")).tag == SVG_ROOT
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model="recraftv3_vector", image=("a.png", make_image(256, 256), "image/png"), prompt="x",
                        size="1024x1024", extra_body={"strength": 0.5})  # fmt: skip
    assert info.value.param == "size"


def test_edits_are_v3_only_and_there_are_no_variations(up: RecraftStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model="recraftv4", image=("a.png", make_image(), "image/png"), prompt="x", extra_body={"strength": 0.5})
    assert info.value.param == "model"
    r = httpx.post(f"{gateway.base_url}/v1/images/variations", data={"model": "recraftv3"},
                   files={"image": ("a.png", make_image(), "image/png")}, timeout=30)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert up.received == []


def test_a_json_edit_carries_nested_fields_as_json_parts(up: RecraftStandIn, gateway: Running) -> None:
    src = make_image(128, 96)
    body = {"model": "recraftv3", "prompt": "x", "images": [{"image_url": data_url(src)}], "strength": 0.7,
            "controls": CONTROLS, "text_layout": TEXT_LAYOUT, "random_seed": 7, "response_format": "b64_json"}  # fmt: skip
    r = _raw(gateway, "edits", body)
    assert r.status_code == 200, r.text
    (rec,) = up.received
    assert rec.path == "/v1/images/imageToImage" and [f[3] for f in rec.files] == [src]
    assert rec.field_types == {"controls": "application/json", "text_layout": "application/json"}
    assert rec.params == {"model": "recraftv3", "prompt": "x", "strength": "0.7", "controls": CONTROLS,
                          "text_layout": TEXT_LAYOUT, "random_seed": "7", "response_format": "b64_json"}  # fmt: skip
    assert decode_b64(r.json()["data"][0]["b64_json"]).size == (128, 96)


def test_a_multipart_client_sends_controls_as_json_text(up: RecraftStandIn, gateway: Running) -> None:
    """A form has only text: a declared object field arrives as JSON text and is checked as the object."""
    files = {"image": ("a.png", make_image(), "image/png")}
    form = {"model": "recraftv3", "prompt": "x", "strength": "0.3", "controls": '{"no_text": true, "artistic_level": 2}',
            "response_format": "b64_json"}  # fmt: skip
    r = httpx.post(f"{gateway.base_url}/v1/images/edits", data=form, files=files, timeout=30)
    assert r.status_code == 200, r.text
    assert up.received[0].params["controls"] == {"no_text": True, "artistic_level": 2}
    assert up.received[0].params["strength"] == "0.3"
    r = httpx.post(f"{gateway.base_url}/v1/images/edits", data={**form, "controls": "{not json"}, files=files, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "controls"


# -- errors ------------------------------------------------------------------------------------------

ERRORS = [
    # (fault, status, code, message fragment)
    (Fault("status", 400, {"code": "invalid_size", "message": "size 7:1 is not supported"}), 400, "invalid_size", "not supported"),
    (Fault("status", 400, "prompt is too long"), 400, None, "prompt is too long"),
    (Fault("status", 402, {"error": "not enough API units"}), 402, None, "not enough API units"),
    (Fault("status", 429, {"code": "rate_limit", "message": "Too many requests"}, headers={"Retry-After": "5"}), 429, "rate_limit", "Too many"),
    (Fault("status", 500, "internal error"), 500, None, "internal error"),
    (Fault("status", 401, "request unauthorized"), 502, "upstream_auth_error", "credentials"),
    (Fault("garbage", 502), 502, "invalid_upstream_response", "without an error envelope"),
    (Fault("json", body={"created": 1, "credits": 40}), 502, "invalid_upstream_response", "no 'data'"),
    (Fault("json", body={"data": [{"image_id": "i", "b64_json": base64.b64encode(b"<html>no</html>").decode()}]}),
     502, "invalid_upstream_response", "not PNG, JPEG, WebP or SVG"),
    (Fault("json", body={"data": [{"image_id": "i", "url": "ftp://example.com/x.png"}]}), 502, "invalid_upstream_response", "url"),
    (Fault("reset"), 502, "upstream_connection_error", "broke off"),
]  # fmt: skip


@pytest.mark.parametrize("fault,status,code,fragment", ERRORS, ids=[f"{e[0].kind}-{e[1]}-{i}" for i, e in enumerate(ERRORS)])
def test_upstream_errors(
    up: RecraftStandIn, sdk: openai.OpenAI, fault: Fault, status: int, code: str | None, fragment: str
) -> None:
    up.script.append(fault)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="recraftv3", prompt="x", response_format="b64_json")
    err = info.value
    assert err.status_code == status
    body = err.response.json()["error"]
    assert body["code"] == code and fragment in body["message"], body
    if status == 429:
        assert err.response.headers["retry-after"] == "5"


def test_the_key_never_comes_back(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    up.script.append(Fault("status", 400, f"bad request from Bearer {KEY}"))
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model="recraftv3", prompt="x")
    assert KEY not in info.value.response.text


def test_a_bad_key_is_the_gateways_problem(up: RecraftStandIn, gateway: Running, tmp_path: Any) -> None:
    cfg = gateway_config(up.base_url)
    cfg["providers"]["rc"]["api_key"] = "wrong-key-123456789"
    with run_server(cfg, tmp_path / "bad-key") as gw:
        with pytest.raises(openai.APIStatusError) as info:
            gw.sdk().images.generate(model="recraftv3", prompt="x")
    assert info.value.status_code == 502 and info.value.code == "upstream_auth_error"
    assert up.received[0].headers["authorization"] == "Bearer wrong-key-123456789"


def test_timeout_is_504(up: RecraftStandIn, sdk: openai.OpenAI) -> None:
    up.script.append(Fault("hang", seconds=3))
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="slow", prompt="x")
    assert info.value.status_code == 504 and info.value.code == "upstream_timeout"


# -- prices -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model,n,cost",
    [("recraftv3_vector", 1, "0.080000"), ("recraftv2", 3, "0.066000"), ("recraftv4", 1, "0.040000"),
     ("recraftv4_vector", 2, "0.160000")],
)  # fmt: skip
def test_cost_is_the_catalogs_price_per_image(up: RecraftStandIn, sdk: openai.OpenAI, model: str, n: int, cost: str) -> None:
    raw = sdk.images.with_raw_response.generate(model=model, prompt="x", n=n, response_format="b64_json")
    assert raw.headers["x-imagegate-cost-usd"] == cost
    assert len(raw.parse().data) == n


def test_the_stand_in_speaks_what_the_official_sdk_expects(up: RecraftStandIn, request: pytest.FixtureRequest) -> None:
    """Recraft documents the OpenAI SDK as a client of its API: the stand-in answers it."""
    direct = openai.OpenAI(base_url=up.base_url, api_key=KEY, max_retries=0)
    request.addfinalizer(direct.close)
    result = direct.images.generate(model="recraftv3", prompt="x", size="1024x1365", response_format="b64_json",  # type: ignore[arg-type]
                                    extra_body={"style": "realistic_image"})  # fmt: skip
    img = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert (img.format, img.size) == ("PNG", (1024, 1365))
