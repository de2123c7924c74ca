"""The ``gemini`` provider (Gemini image models and Imagen 4 on the Gemini API)
against a stand-in Google upstream on loopback, through the real server and
the official SDK: what Google receives, sizes to ratios and image sizes,
edits as inline images, refusals that arrive as HTTP 200, usage-based
costs, Imagen's sampleCount and filtered images, Google's errors and
RetryInfo, and check_route at start."""

from __future__ import annotations

import base64
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from standin_google import KEY, Fault, GoogleStandIn, dims, google_error, rate_limited

from imagegate.config import load_settings
from imagegate.errors import ConfigError
from imagegate.gateway.routes import rules_for
from support import SIGNING_KEY, Running, decode_b64, make_image, make_mask, standin_fixtures

FLASH, PRO, NB2 = "gemini-2.5-flash-image", "gemini-3-pro-image", "gemini-3.1-flash-image"
IMAGEN, FAST, ULTRA = "imagen-4.0-generate-001", "imagen-4.0-fast-generate-001", "imagen-4.0-ultra-generate-001"


def gateway_config(base_url: str) -> dict[str, Any]:
    google = {"type": "gemini", "base_url": base_url, "api_key": KEY, "timeout_seconds": 20}
    heavy = {"provider": "ga", "model": FLASH, "weight": 1000}
    return {
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {"max_attempts": 1, "cooldown_failures": 10},
        "providers": {
            "g": google,
            "bad": {**google, "api_key": "AIza-wrong-key-0123456789"},
            "ga": {**google, "headers": {"x-deployment": "a"}},
            "gb": {**google, "headers": {"x-deployment": "b"}},
        },
        "models": {
            **{m: [{"provider": "g"}] for m in (FLASH, PRO, NB2, IMAGEN, FAST, ULTRA)},
            "patient": {"rules": FLASH, "deployments": [{"provider": "g", "model": FLASH}], "routing": {"max_attempts": 2}},
            "pair": {"rules": FLASH, "deployments": [heavy, {"provider": "gb", "model": FLASH, "weight": 0.001}]},
            "misconfigured": {"rules": FLASH, "deployments": [{"provider": "bad", "model": FLASH}]},
            "unserved": {"rules": FLASH, "deployments": [{"provider": "g", "model": "gemini-9-image"}]},
        },
    }


upstream, gateway, up = standin_fixtures(lambda: GoogleStandIn(), gateway_config, "google")


@pytest.fixture
def sdk(gateway: Running) -> openai.OpenAI:
    return gateway.sdk()


def post(gateway: Running, **body: Any) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/v1/images/generations", json=body, timeout=30)


def usd(tokens: dict[str, int], rates: dict[str, str]) -> str:
    total = sum(Decimal(n) * Decimal(rates[k]) for k, n in tokens.items()) / Decimal(1_000_000)
    return f"{total:.6f}"


PRO_RATES = {"text_in": "2", "image_in": "2", "image_out": "120", "text_out": "12"}


# -- generations ---------------------------------------------------------------------


def test_a_generation_reaches_gemini_as_documented(up: GoogleStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model=FLASH, prompt="a red fox", size="1536x1024")
    (rec,) = up.received
    assert rec.path == f"/v1beta/models/{FLASH}:generateContent" and rec.headers["x-goog-api-key"] == KEY
    assert rec.json == {
        "contents": [{"role": "user", "parts": [{"text": "a red fox"}]}],
        "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "3:2"}, "maxOutputTokens": 4096},
    }
    image = decode_b64(raw.parse().data[0].b64_json or "")
    assert (image.format, image.size, image.mode) == ("PNG", (1536, 1024), "RGB")
    # the stand-in's usage: 2 prompt tokens (text), 1290 + 12 output tokens of which 1290 image
    expected = usd({"text_in": 2, "image_out": 1290, "text_out": 12}, {"text_in": "0.30", "image_out": "30", "text_out": "2.50"})
    assert raw.headers["x-imagegate-cost-usd"] == expected


@pytest.mark.parametrize(
    "size,ratio,image_size",
    [("1024x1024", "1:1", "1K"), ("1536x1024", "3:2", "2K"), ("1024x1536", "2:3", "2K"), ("3840x2160", "16:9", "4K")],
)
def test_sizes_become_the_nearest_ratio_and_the_smallest_covering_size(
    up: GoogleStandIn, sdk: openai.OpenAI, size: str, ratio: str, image_size: str
) -> None:
    result = sdk.images.generate(model=PRO, prompt="a lake", size=size)  # type: ignore[arg-type]
    config = up.received[0].json["generationConfig"]
    assert config["imageConfig"] == {"aspectRatio": ratio, "imageSize": image_size} and config["maxOutputTokens"] == 8192
    assert decode_b64(result.data[0].b64_json or "").size == tuple(int(x) for x in size.split("x"))


def test_auto_sends_no_image_config_and_extension_fields_pass_as_googles(up: GoogleStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model=NB2, prompt="x", size="auto")
    assert "imageConfig" not in up.received[0].json["generationConfig"]
    result = sdk.images.generate(model=NB2, prompt="x", extra_body={"aspect_ratio": "8:1", "image_size": "2K"})
    assert up.received[1].json["generationConfig"]["imageConfig"] == {"aspectRatio": "8:1", "imageSize": "2K"}
    assert decode_b64(result.data[0].b64_json or "").size == dims("8:1", 2048, 8)  # no size asked: the model's image as it is


@pytest.mark.parametrize(
    "model,fields,param",
    [
        (PRO, {"size": "1024x1024", "aspect_ratio": "1:1"}, "aspect_ratio"),  # conflicting_parameters
        (PRO, {"size": "1024x1024", "image_size": "2K"}, "image_size"),
        (FLASH, {"image_size": "2K"}, "image_size"),  # 2.5 Flash Image has no imageSize
        (FLASH, {"aspect_ratio": "8:1"}, "aspect_ratio"),
        (FLASH, {"user": "u-1"}, "user"),
        (FLASH, {"quality": "high"}, "quality"),
        (FAST, {"image_size": "2K"}, "image_size"),
        (IMAGEN, {"person_generation": "allow_all"}, "person_generation"),  # Vertex AI's
        (IMAGEN, {"n": 5}, "n"),
    ],
)
def test_what_google_cannot_take_is_a_400_naming_it(
    up: GoogleStandIn, gateway: Running, model: str, fields: dict[str, Any], param: str
) -> None:
    r = post(gateway, model=model, prompt="x", **fields)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    if "size" in fields:
        assert r.json()["error"]["code"] == "conflicting_parameters"
    assert up.received == []


def test_n_is_n_concurrent_calls_and_their_usage_adds_up(up: GoogleStandIn, sdk: openai.OpenAI) -> None:
    up.usage = {
        "promptTokenCount": 100, "candidatesTokenCount": 1300, "thoughtsTokenCount": 250, "totalTokenCount": 1650,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 60}, {"modality": "IMAGE", "tokenCount": 40}],
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120}],
    }  # fmt: skip
    raw = sdk.images.with_raw_response.generate(model=PRO, prompt="three foxes", n=3, size="1024x1024")
    result = raw.parse()
    assert len(up.received) == 3 and len(result.data) == 3
    assert {r.json["contents"][0]["parts"][0]["text"] for r in up.received} == {"three foxes"}
    # image tokens at the image rate; the rest of the output (180) and the thinking (250) at the text rate
    one = {"text_in": 60, "image_in": 40, "image_out": 1120, "text_out": 180 + 250}
    assert raw.headers["x-imagegate-cost-usd"] == usd({k: 3 * v for k, v in one.items()}, PRO_RATES)
    assert result.usage is not None and (result.usage.input_tokens, result.usage.output_tokens) == (300, 3 * 1550)


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (google_error(500, "INTERNAL", "An internal error has occurred."), 500, "internal"),
        (Fault(200, {"candidates": [{"content": {"role": "model", "parts": None}, "finishReason": "IMAGE_SAFETY"}]}),
         400, "content_policy_violation"),
    ],
    ids=["500", "image-safety"],
)  # fmt: skip
def test_n_calls_with_one_failing_fail_the_request_and_charge_nothing(
    up: GoogleStandIn, gateway: Running, fault: Fault, status: int, code: str
) -> None:
    # Known limit (docs/upstreams/google.md): Google bills the calls that finished; the client pays nothing.
    up.script.append(fault)
    r = post(gateway, model=PRO, prompt="three foxes", n=3, size="1024x1024")
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert "data" not in r.json() and 1 <= len(up.received) <= 3
    assert r.headers.get("x-imagegate-cost-usd") in (None, "0.000000")


@pytest.mark.parametrize(
    "usage",
    [
        {
            "promptTokenCount": 10,
            "candidatesTokenCount": 100,
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120}],
        },
        {"promptTokenCount": -5, "candidatesTokenCount": 1200},
        {"promptTokenCount": "many", "candidatesTokenCount": 1200},
        {"promptTokenCount": 10, "candidatesTokenCount": 1200, "totalTokenCount": 50},
    ],
    ids=["image-above-total", "negative", "not-a-number", "total-too-small"],
)
def test_impossible_usage_is_a_502_and_nothing_is_charged(up: GoogleStandIn, gateway: Running, usage: dict[str, Any]) -> None:
    up.usage = usage
    r = post(gateway, model=PRO, prompt="x", size="1024x1024")
    assert r.status_code == 502 and r.json()["error"]["code"] == "invalid_upstream_response", r.text
    assert r.headers.get("x-imagegate-cost-usd") in (None, "0.000000")


def test_thought_parts_are_skipped_the_last_image_is_the_result_and_text_is_the_revised_prompt(
    up: GoogleStandIn, sdk: openai.OpenAI
) -> None:
    result = sdk.images.generate(model=PRO, prompt="[thought] [two-images] [text] a lake", size="1024x1024")
    image = decode_b64(result.data[0].b64_json or "").convert("RGB")
    assert image.getpixel((5, 5)) == (30, 140, 90)  # the final image, not the red thought or the blue interim one
    assert result.data[0].revised_prompt == "A calm lake at dawn, as asked."


def test_snake_case_answers_are_read(up: GoogleStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model=FLASH, prompt="[snake] x", size="1024x1024")
    assert decode_b64(raw.parse().data[0].b64_json or "").size == (1024, 1024)
    assert raw.headers["x-imagegate-cost-usd"] != "0.000000"  # usage_metadata was read and charged


# -- edits ---------------------------------------------------------------------------


def test_an_edit_with_two_images_reaches_gemini_as_two_inline_parts(up: GoogleStandIn, sdk: openai.OpenAI) -> None:
    images = [make_image(64, 48, "PNG"), make_image(32, 32, "JPEG", color=(200, 10, 10))]
    result = sdk.images.edit(
        model=PRO, prompt="put the cat on the sofa", size="1024x1536",
        image=[("a.png", images[0], "image/png"), ("b.jpg", images[1], "image/jpeg")],
    )  # fmt: skip
    (rec,) = up.received
    parts = rec.json["contents"][0]["parts"]
    assert parts[0] == {"text": "put the cat on the sofa"} and [list(p) for p in parts[1:]] == [["inlineData"], ["inlineData"]]
    assert rec.images == [("image/png", images[0]), ("image/jpeg", images[1])]  # byte for byte, in order
    assert decode_b64(base64.b64encode(rec.images[1][1]).decode()).size == (32, 32)
    assert decode_b64(result.data[0].b64_json or "").size == (1024, 1536)


def test_a_mask_and_too_many_images_are_400s_before_google(up: GoogleStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model=PRO, prompt="x", image=("a.png", make_image(), "image/png"), mask=make_mask(64, 64, (0, 0, 8, 8)))
    assert info.value.param == "mask"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model=FLASH, prompt="x", image=[(f"{i}.png", make_image(), "image/png") for i in range(4)])
    assert info.value.param == "image"
    assert up.received == []


# -- refusals and errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    "model,prompt,reason",
    [
        (FLASH, "[block] x", "PROHIBITED_CONTENT"),
        (PRO, "[image-safety] x", "IMAGE_SAFETY"),
        (NB2, "[no-image] x", "NO_IMAGE"),
        (IMAGEN, "[filter-all] x", "safety filter"),
        (FAST, "[filter-silent] x", "filtered"),
    ],
)
def test_refusals_are_400_content_policy_violations(
    up: GoogleStandIn, gateway: Running, model: str, prompt: str, reason: str
) -> None:
    r = post(gateway, model=model, prompt=prompt, n=2 if model == IMAGEN else 1)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "content_policy_violation" and reason in r.json()["error"]["message"]
    assert r.headers.get("x-imagegate-cost-usd") in (None, "0.000000")


@pytest.mark.parametrize(
    "model,prompt,status,code",
    [
        (FLASH, "[max-tokens] x", 502, "upstream_no_image"),
        (FLASH, "[bad-json] x", 502, "invalid_upstream_response"),
        (FLASH, "[500] x", 500, "internal"),
        ("misconfigured", "x", 502, "upstream_auth_error"),
        ("unserved", "x", 502, "upstream_model_not_found"),
    ],
)
def test_googles_errors(up: GoogleStandIn, gateway: Running, model: str, prompt: str, status: int, code: str) -> None:
    r = post(gateway, model=model, prompt=prompt)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert "AIza" not in r.text  # no key is ever repeated


def test_invalid_argument_is_the_clients_400_with_googles_message(up: GoogleStandIn, gateway: Running) -> None:
    up.script.append(google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument."))
    r = post(gateway, model=FLASH, prompt="x")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_argument"
    assert "Request contains an invalid argument." in r.json()["error"]["message"]


def test_a_429_with_retry_info_makes_the_router_back_off_that_long(up: GoogleStandIn, gateway: Running) -> None:
    up.script.append(rate_limited("1.2s"))
    r = post(gateway, model=FLASH, prompt="x")  # one attempt: the client sees Google's delay, rounded up
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error" and r.headers["retry-after"] == "2"
    up.script.append(rate_limited("1.2s"))
    started = time.monotonic()
    r = post(gateway, model="patient", prompt="x")  # two attempts: the second after Google's delay
    assert r.status_code == 200 and r.headers["x-imagegate-attempts"] == "2"
    assert time.monotonic() - started >= 1.95


def test_a_rate_limited_deployment_cools_down_for_googles_delay(up: GoogleStandIn, gateway: Running) -> None:
    up.script.append(rate_limited("2s"))
    assert post(gateway, model="pair", prompt="x").status_code == 429  # a (weight 1000) was limited
    cooled_at = time.monotonic()
    served = [post(gateway, model="pair", prompt="x").headers["x-imagegate-provider"] for _ in range(3)]
    assert time.monotonic() - cooled_at < 1.8 and served == ["gb"] * 3  # a is cooling down: b serves
    time.sleep(max(0.0, 2.1 - (time.monotonic() - cooled_at)))
    assert post(gateway, model="pair", prompt="x").headers["x-imagegate-provider"] == "ga"  # a is back
    assert [r.headers.get("x-deployment") for r in up.received] == ["a", "b", "b", "b", "a"]


# -- Imagen ----------------------------------------------------------------------------


def test_imagen_takes_n_as_sample_count_and_is_charged_per_image(up: GoogleStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model=FAST, prompt="a fox", n=2, size="1024x1536")
    result = raw.parse()
    (rec,) = up.received
    assert rec.path == f"/v1beta/models/{FAST}:predict"
    assert rec.json == {
        "instances": [{"prompt": "a fox"}],
        "parameters": {"sampleCount": 2, "includeRaiReason": True, "aspectRatio": "3:4"},
    }
    assert [decode_b64(d.b64_json or "").size for d in result.data] == [(1024, 1536)] * 2
    assert raw.headers["x-imagegate-cost-usd"] == "0.040000"  # 2 x $0.02


def test_imagen_sizes_and_fields(up: GoogleStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model=ULTRA, prompt="x", size="1536x1024", extra_body={"person_generation": "dont_allow"})
    assert up.received[0].json["parameters"] == {
        "sampleCount": 1, "includeRaiReason": True, "aspectRatio": "4:3", "sampleImageSize": "2K", "personGeneration": "dont_allow",
    }  # fmt: skip
    sdk.images.generate(model=IMAGEN, prompt="x", extra_body={"aspect_ratio": "16:9", "image_size": "1K"})
    assert up.received[1].json["parameters"] == {
        "sampleCount": 1,
        "includeRaiReason": True,
        "aspectRatio": "16:9",
        "sampleImageSize": "1K",
    }


def test_imagen_delivers_and_charges_the_images_the_filter_left(up: GoogleStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model=IMAGEN, prompt="[filter-one] x", n=3, size="1024x1024")
    assert len(raw.parse().data) == 2 and raw.headers["x-imagegate-cost-usd"] == "0.080000"


def test_imagen_takes_no_edits(up: GoogleStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model=IMAGEN, prompt="x", image=("a.png", make_image(), "image/png"))
    assert info.value.param == "model" and up.received == []


def test_a_scripted_fault_body_that_is_not_googles_envelope_is_a_502(up: GoogleStandIn, gateway: Running) -> None:
    up.script.append(Fault(503, b"upstream connect error"))
    r = post(gateway, model=FLASH, prompt="x")
    assert r.status_code == 502 and r.json()["error"]["code"] == "invalid_upstream_response"


# -- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"wire": {"method": "stream"}}, r"wire\.method"),
        ({"wire": {"aspect_ratios": ["wide"]}}, r"wire\.aspect_ratios"),
        ({"wire": {"colour": "red"}}, r"wire\.colour"),
        ({"max_output_tokens": None}, r"max_output_tokens is required"),
        ({"extra_fields": {"negative_prompt": {"type": "str"}}}, r"negative_prompt.*Vertex AI"),
        ({"extra_fields": {"aspect_ratio": {"type": "str", "enum": ["7:3"]}}}, r"'7:3' is not in wire"),
    ],
)
def test_check_route_refuses_a_bad_catalog_entry_at_start(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    config = {
        "catalog": {"my-gemini": {"extends": FLASH, **entry}},
        "providers": {"g": {"type": "gemini", "api_key": "k"}},
        "models": {"mine": {"rules": "my-gemini", "deployments": [{"provider": "g", "model": FLASH}]}},
    }
    path = tmp_path / "imagegate.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=rf"models\.mine\.deployments\.0: catalog entry 'my-gemini'.*{message}"):
        rules_for(load_settings(path, environ={}), "mine")
