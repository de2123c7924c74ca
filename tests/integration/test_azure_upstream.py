"""The ``azure`` provider against a stand-in Azure OpenAI resource on loopback,
called with the official SDK: the v1 and deployments paths, api-version, the
api-key header and Entra bearer tokens, bodies as sent with the deployment
name, decoded images, content-filter refusals in each of Azure's shapes,
rate limits, credentials kept out of answers, and prices that follow the
route's ``rules:`` although the deployment is called ``prod-img``."""

from __future__ import annotations

import base64
import logging
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from standin_azure import (
    ACCESS_DENIED,
    API_KEY,
    CONTENT_FILTER_IMAGE,
    CONTENT_FILTER_INNER_ERROR,
    CONTENT_FILTER_INNER_ONLY,
    CONTENT_FILTER_INNERERROR,
    CONTENT_FILTER_PROMPT,
    DEPLOYMENT_NOT_FOUND,
    ENTRA_TOKEN,
    MODERATION_BLOCKED,
    RATE_LIMIT_HEADERS,
    RATE_LIMITED,
    AzureStandIn,
    route_of,
)
from standin_openai import USAGE, Fault

from imagegate.config import load_settings
from imagegate.errors import ConfigError
from imagegate.gateway.routes import rules_for
from support import SIGNING_KEY, Running, decode_b64, decode_bytes, make_image, make_mask, standin_fixtures

DATED = "2025-04-01-preview"


def gateway_config(endpoint: str) -> dict[str, Any]:
    az = {"type": "azure", "endpoint": endpoint, "api_key": API_KEY}

    def route(provider: str, model: str = "prod-img", rules: str = "gpt-image-2") -> dict[str, Any]:
        return {"rules": rules, "deployments": [{"provider": provider, "model": model}]}

    return {
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {"max_attempts": 1},  # one exchange per request: these tests are about it
        "providers": {
            "az": az,  # the v1 API
            "az-dated": {**az, "api_version": DATED},  # the deployments API
            "az-preview": {**az, "api_version": "preview"},  # the v1 API, preview features
            "az-entra": {"type": "azure", "endpoint": endpoint, "api_key": ENTRA_TOKEN, "auth": "entra"},
            "az-badkey": {**az, "api_key": "wrong-key-0123456789abcdef", "api_version": DATED},
        },
        "models": {
            "azure-image": route("az"),
            "azure-dated": route("az-dated"),
            "azure-preview": route("az-preview"),
            "azure-entra": route("az-entra"),
            "azure-badkey": route("az-badkey"),
            "azure-missing": route("az-dated", model="no-such-deployment"),
            "azure-any": route("az", rules="openai-compatible"),  # its rules take variations; Azure has none
        },
    }


upstream, gateway, up = standin_fixtures(AzureStandIn, gateway_config, "azure")  # the stand-in's base_url is its endpoint


@pytest.fixture
def sdk(gateway: Running) -> openai.OpenAI:
    return gateway.sdk(api_key="sk-client-key")


# -- where requests go, with what -------------------------------------------------


def test_v1_generation_sends_the_deployment_as_model_with_the_api_key(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    sent = dict(prompt="a red fox", n=2, size="1536x1024", quality="high", background="opaque", moderation="low",
                output_format="png", user="user-1234")  # fmt: skip
    result = sdk.images.generate(model="azure-image", **sent)
    (rec,) = up.received
    assert route_of(rec) == ("/openai/v1/images/generations", {})
    assert rec.json == {**sent, "model": "prod-img"}
    assert rec.headers["api-key"] == API_KEY and "authorization" not in rec.headers
    images = [decode_b64(d.b64_json or "") for d in result.data]
    assert [(i.format, i.size, i.mode) for i in images] == [("PNG", (1536, 1024), "RGB")] * 2
    assert result.usage is not None and result.usage.model_dump(exclude_none=True) == USAGE


def test_dated_api_version_uses_the_deployments_path(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="azure-dated", prompt="x", size="1024x1024", output_compression=60, output_format="jpeg")
    (rec,) = up.received
    assert route_of(rec) == ("/openai/deployments/prod-img/images/generations", {"api-version": DATED})
    # the body names the deployment too, as the official AzureOpenAI client sends it
    assert rec.json == {
        "model": "prod-img",
        "prompt": "x",
        "size": "1024x1024",
        "output_compression": 60,
        "output_format": "jpeg",
    }
    assert rec.headers["api-key"] == API_KEY


def test_preview_api_version_stays_on_v1(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="azure-preview", prompt="x")
    assert route_of(up.received[0]) == ("/openai/v1/images/generations", {"api-version": "preview"})


def test_entra_token_goes_as_bearer(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="azure-entra", prompt="x")
    rec = up.received[0]
    assert rec.headers["authorization"] == f"Bearer {ENTRA_TOKEN}" and "api-key" not in rec.headers


def test_edit_with_several_images_and_mask_on_the_deployments_path(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    images = [make_image(128, 128, "PNG"), make_image(128, 128, "JPEG"), make_image(64, 64, "WEBP")]
    mask = make_mask(128, 128, (0, 0, 64, 64))
    sent = dict(prompt="combine", n=1, size="1024x1024", quality="low", input_fidelity="high", output_format="png")
    result = sdk.images.edit(
        model="azure-dated",
        image=[("a.png", images[0], "image/png"), ("b.jpg", images[1], "image/jpeg"), ("c.webp", images[2], "image/webp")],
        mask=("m.png", mask, "image/png"),
        **sent,
    )
    (rec,) = up.received
    assert route_of(rec) == ("/openai/deployments/prod-img/images/edits", {"api-version": DATED})
    assert rec.headers["content-type"].startswith("multipart/form-data")
    assert rec.fields == {k: str(v) for k, v in {**sent, "model": "prod-img"}.items()}
    assert [(f[0], f[2], f[3]) for f in rec.files] == [
        ("image[]", "image/png", images[0]),
        ("image[]", "image/jpeg", images[1]),
        ("image[]", "image/webp", images[2]),
        ("mask", "image/png", mask),
    ]
    assert decode_b64(result.data[0].b64_json or "").size == (1024, 1024)


def test_single_image_edit_on_v1(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    src = make_image(100, 80)
    sdk.images.edit(model="azure-image", image=("a.png", src, "image/png"), prompt="x")
    rec = up.received[0]
    assert route_of(rec) == ("/openai/v1/images/edits", {})
    assert [(f[0], f[3]) for f in rec.files] == [("image", src)]
    assert rec.fields == {"model": "prod-img", "prompt": "x"}


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_variations_are_refused_before_azure(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.create_variation(model="azure-any", image=("v.png", make_image(256, 256), "image/png"))
    assert (info.value.code, info.value.param) == ("unsupported_endpoint", "model")
    assert up.received == []


def test_the_official_azure_client_gets_what_the_gateway_gets(
    up: AzureStandIn, sdk: openai.OpenAI, request: pytest.FixtureRequest
) -> None:
    """The stand-in takes the official AzureOpenAI client's requests (path,
    api-version, api-key), and the gateway's answer is the same one."""
    direct = openai.AzureOpenAI(azure_endpoint=up.endpoint, api_key=API_KEY, api_version=DATED, max_retries=0)
    request.addfinalizer(direct.close)
    kwargs: dict[str, Any] = dict(prompt="a lighthouse", size="1024x1024", quality="medium", n=2)
    through = sdk.images.generate(model="azure-dated", **kwargs)
    straight = direct.images.generate(model="prod-img", **kwargs)
    assert through.model_dump() == straight.model_dump()
    assert route_of(up.received[0]) == route_of(up.received[1])
    assert up.received[0].json == up.received[1].json


# -- answers ---------------------------------------------------------------------


def test_generation_stream_passes_through(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    gate = threading.Event()
    b64 = base64.b64encode(up.image).decode()
    events = [
        {
            "type": "image_generation.partial_image",
            "b64_json": b64,
            "partial_image_index": 0,
            "created_at": 1,
            "size": "1024x1024",
        },
        {"type": "image_generation.completed", "b64_json": b64, "usage": USAGE, "created_at": 1, "size": "1024x1024"},
    ]
    up.script.append(Fault("stream", events=events, gate=gate))
    kinds = []
    for event in sdk.images.generate(model="azure-image", prompt="x", stream=True, partial_images=1):
        kinds.append(event.type)
        gate.set()
    assert kinds == ["image_generation.partial_image", "image_generation.completed"]
    assert up.gate_released_in_time is True, "the gateway buffered the stream"
    assert route_of(up.received[0]) == ("/openai/v1/images/generations", {})
    assert up.received[0].json == {"model": "prod-img", "prompt": "x", "stream": True, "partial_images": 1}


def test_content_filter_event_mid_stream(up: AzureStandIn, gateway: Running) -> None:
    b64 = base64.b64encode(up.image).decode()
    events = [
        {"type": "image_generation.partial_image", "b64_json": b64, "partial_image_index": 0},
        {"type": "error", "error": MODERATION_BLOCKED["error"]},
    ]
    up.script.append(Fault("stream", events=events))
    body = {"model": "azure-image", "prompt": "x", "stream": True, "partial_images": 1}
    with httpx.stream("POST", f"{gateway.base_url}/v1/images/generations", json=body, timeout=30) as r:
        text = r.read().decode()
    assert "event: image_generation.partial_image" in text
    assert "event: error" in text and "content_policy_violation" in text and "rejected by the safety system" in text


def test_dalle_style_answer_with_filter_annotations_and_url(up: AzureStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    """Azure's DALL-E answers carry content_filter_results and a 24-hour URL:
    the image is fetched (without the key) and hosted by the gateway."""
    url = f"{up.endpoint}/files/generated_00.png"
    annotations = {"sexual": {"severity": "safe", "filtered": False}}
    answer = {"created": 1698342300, "data": [{"url": url, "revised_prompt": "r", "content_filter_results": annotations,
                                               "prompt_filter_results": annotations}]}  # fmt: skip
    up.script.append(Fault("json", body=answer))
    result = sdk.images.generate(model="azure-image", prompt="x", response_format="url")
    assert result.data[0].url is not None and result.data[0].url.startswith(gateway.base_url)
    assert decode_bytes(httpx.get(result.data[0].url).content).format == "PNG"
    assert "api-key" not in up.fetched[-1].headers


# -- errors ----------------------------------------------------------------------

CONTENT_FILTERS = {
    "contentFilter-prompt": CONTENT_FILTER_PROMPT,
    "contentFilter-image": CONTENT_FILTER_IMAGE,
    "content_filter-innererror": CONTENT_FILTER_INNERERROR,
    "inner_error-dalle": CONTENT_FILTER_INNER_ERROR,
    "inner_error-only": CONTENT_FILTER_INNER_ONLY,
    "moderation_blocked": MODERATION_BLOCKED,
}


@pytest.mark.parametrize("shape", list(CONTENT_FILTERS))
def test_content_filter_refusals_are_content_policy_violations(up: AzureStandIn, sdk: openai.OpenAI, shape: str) -> None:
    body = CONTENT_FILTERS[shape]
    up.script.append(Fault("status", 400, body))
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model="azure-dated", prompt="x")
    err = info.value.response.json()["error"]
    assert (err["type"], err["code"]) == ("invalid_request_error", "content_policy_violation")
    assert err["message"] == body["error"]["message"]
    assert err["param"] == body["error"].get("param")
    assert len(up.received) == 1


def test_content_filter_on_an_edit(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    up.script.append(Fault("status", 400, CONTENT_FILTER_INNERERROR))
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model="azure-image", image=("a.png", make_image(), "image/png"), prompt="x")
    assert (info.value.code, info.value.param) == ("content_policy_violation", "prompt")


def test_other_refusals_pass_through_unchanged(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    body = {"error": {"message": "Invalid size", "type": "invalid_request_error", "param": "size", "code": "invalid_value"}}
    up.script.append(Fault("status", 400, body))
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model="azure-image", prompt="x")
    assert info.value.response.json() == body


def test_rate_limit_passes_through_with_retry_after(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    up.script.append(Fault("status", 429, RATE_LIMITED, headers=RATE_LIMIT_HEADERS))
    with pytest.raises(openai.RateLimitError) as info:
        sdk.images.generate(model="azure-dated", prompt="x")
    err = info.value.response.json()["error"]
    assert (err["code"], err["type"], err["message"]) == ("429", "rate_limit_error", RATE_LIMITED["error"]["message"])
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_unknown_deployment_is_azures_404(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk.images.generate(model="azure-missing", prompt="x")
    assert info.value.response.json()["error"] == {
        **DEPLOYMENT_NOT_FOUND["error"],
        "type": "invalid_request_error",
        "param": None,
    }
    assert route_of(up.received[0])[0] == "/openai/deployments/no-such-deployment/images/generations"


def test_a_wrong_key_is_a_502_without_azures_text(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="azure-badkey", prompt="x")
    assert info.value.status_code == 502
    err = info.value.response.json()["error"]
    assert err["code"] == "upstream_auth_error"
    assert ACCESS_DENIED["error"]["message"][:30] not in info.value.response.text
    assert up.received[0].headers["api-key"] == "wrong-key-0123456789abcdef"


def test_a_blocked_resource_403_is_a_502(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    blocked = {"error": {"code": "Forbidden", "message": "Your resource has been temporarily blocked because we detected "
                         "behavior that may violate our content policy."}}  # fmt: skip
    up.script.append(Fault("status", 403, blocked))
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="azure-image", prompt="x")
    assert (info.value.status_code, info.value.code) == (502, "upstream_auth_error")
    assert "temporarily blocked" not in info.value.response.text


ECHOES = {
    "400": ("azure-image", 400, {"error": {"code": "BadRequest", "message": "Request had api-key $APIKEY (key=$APIKEY)."}}),
    "429": ("azure-dated", 429, {"error": {"code": "429", "message": "Slow down, $APIKEY."}}),
    "500": ("azure-image", 500, {"error": {"code": "InternalServerError", "message": "Failed for $APIKEY."}}),
    "content-filter": ("azure-image", 400, {"error": {"code": "contentFilter", "message": "Filtered for $APIKEY."}}),
    "entra": ("azure-entra", 400, {"error": {"code": "BadRequest", "message": "Token $TOKEN was used."}}),
}


@pytest.mark.parametrize("case", list(ECHOES))
def test_an_echoed_credential_reaches_neither_client_nor_log(
    up: AzureStandIn, sdk: openai.OpenAI, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.DEBUG)
    model, status, body = ECHOES[case]
    up.script.append(Fault("status", status, body, echo=True))
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model=model, prompt="x")
    assert info.value.status_code == status
    assert "[redacted]" in info.value.response.json()["error"]["message"]
    logged = "\n".join([caplog.text, *(r.getMessage() for r in caplog.records)])
    for secret in (API_KEY, ENTRA_TOKEN):
        assert secret not in info.value.response.text and secret not in logged


# -- rules and prices ----------------------------------------------------------------


def test_price_follows_the_rules_entry_not_the_deployment_name(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model="azure-image", prompt="x", size="1024x1024", quality="high")
    assert raw.parse().usage is not None
    # gpt-image-2 (imagegate/catalog/openai.yaml), per 1M tokens: text in $5, image in $8, image out $30,
    # text out $10; USAGE: 40 text + 160 image tokens in, 1056 image tokens out.
    expected = (40 * Decimal(5) + 160 * Decimal(8) + 1056 * Decimal(30)) / 1_000_000
    assert Decimal(raw.headers["x-imagegate-cost-usd"]) == expected == Decimal("0.03316")


def test_rules_also_bound_what_reaches_azure(up: AzureStandIn, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model="azure-image", prompt="x", size="1000x1000")  # gpt-image-2: edges multiples of 16
    assert info.value.param == "size"
    assert up.received == []


def test_the_documented_config_loads(tmp_path: Path) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "upstreams" / "azure.md").read_text()
    block = page.split("```yaml\n", 1)[1].split("```\n", 1)[0]
    path = tmp_path / "imagegate.yaml"
    path.write_text(block)
    env = {"AZURE_OPENAI_API_KEY": "k1", "AZURE_OPENAI_API_KEY_SWC": "k2", "OPENAI_API_KEY": "k3"}
    settings = load_settings(path, environ=env)
    assert rules_for(settings, "gpt-image-2").name == "gpt-image-2" and rules_for(settings, "images").name == "gpt-image-1.5"


def test_a_route_without_rules_is_refused_at_start(tmp_path: Path) -> None:
    config = {
        "providers": {"az": {"type": "azure", "endpoint": "https://res.openai.azure.com", "api_key": "k"}},
        "models": {"pictures": [{"provider": "az", "model": "prod-img"}]},
    }
    path = tmp_path / "imagegate.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path, environ={})
    with pytest.raises(ConfigError, match=r"models\.pictures: 'prod-img' is an Azure deployment name.*rules:"):
        rules_for(settings, "pictures")
