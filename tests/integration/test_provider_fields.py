"""Provider fields declared in a model's catalog entry (``extra_fields``):
accepted within their declaration and passed to the provider as sent, a 400
naming the field otherwise, and never sent to a model (or a fallback) whose
entry does not declare them. A made-up catalog entry served by the stand-in
OpenAI upstream, through the real server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from standin_openai import Fault, OpenAIStandIn

from imagegate.contract import catalog
from imagegate.contract.catalog import FreeSizeRule, permissive
from imagegate.contract.fields import FieldSpec
from support import SIGNING_KEY, Running, make_image, run_server

# Black Forest Labs-like fields (and a bool), declared the way a provider module would.
BFL_LIKE = replace(
    permissive("test-bfl-like", FreeSizeRule()),
    extra_fields={
        "safety_tolerance": FieldSpec("int", minimum=0, maximum=6),
        "style_preset": FieldSpec("str", enum=("photographic", "anime", "pixel-art")),
        "prompt_upsampling": FieldSpec("bool"),
    },
)
ERR500 = Fault("status", status=500, body={"error": {"message": "boom", "type": "server_error"}})


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def gateway(upstream: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    catalog.register(BFL_LIKE)
    config: dict[str, Any] = {
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {"max_attempts": 2, "backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.02, "cooldown_failures": 100},
        "providers": {"up": {"type": "openai", "base_url": upstream.base_url}},
        "models": {
            "flux-like": {"rules": "test-bfl-like", "deployments": [{"provider": "up", "model": "flux-pro-1.1"}],
                          "fallbacks": ["gpt-image-1"]},
            "gpt-image-1": [{"provider": "up"}],
        },
    }  # fmt: skip
    with run_server(config, tmp_path_factory.mktemp("fields")) as running:
        yield running


@pytest.fixture
def up(upstream: OpenAIStandIn) -> OpenAIStandIn:
    upstream.received.clear()
    upstream.script.clear()
    return upstream


def _generate(gateway: Running, **body: Any) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/v1/images/generations", json={"prompt": "x", **body}, timeout=30)


def test_declared_fields_reach_the_provider_as_sent(up: OpenAIStandIn, gateway: Running) -> None:
    sent = {"safety_tolerance": 6, "style_preset": "anime", "prompt_upsampling": True}
    result = gateway.sdk().images.generate(model="flux-like", prompt="a fox", extra_body=sent)
    assert result.data[0].b64_json
    (rec,) = up.received
    assert rec.json == {"model": "flux-pro-1.1", "prompt": "a fox", **sent}
    assert type(rec.json["safety_tolerance"]) is int and rec.json["prompt_upsampling"] is True


def test_declared_fields_in_a_multipart_edit_are_converted_and_passed_on(up: OpenAIStandIn, gateway: Running) -> None:
    r = httpx.post(
        f"{gateway.base_url}/v1/images/edits",
        files=[("image", ("a.png", make_image(64, 64), "image/png"))],
        data={"model": "flux-like", "prompt": "x", "safety_tolerance": "0", "prompt_upsampling": "false"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert up.received[0].fields == {
        "model": "flux-pro-1.1",
        "prompt": "x",
        "safety_tolerance": "0",
        "prompt_upsampling": "false",
    }


BAD = [
    ({"safety_tolerance": 7}, "integer_above_max_value"),
    ({"safety_tolerance": -1}, "integer_below_min_value"),
    ({"safety_tolerance": "2"}, "invalid_type"),
    ({"safety_tolerance": 2.5}, "invalid_type"),
    ({"safety_tolerance": True}, "invalid_type"),
    ({"style_preset": "watercolour"}, "invalid_value"),
    ({"style_preset": 3}, "invalid_type"),
    ({"prompt_upsampling": "yes"}, "invalid_type"),
]


@pytest.mark.parametrize("field,code", BAD, ids=[f"{next(iter(f))}-{c}" for f, c in BAD])
def test_a_value_outside_the_declaration_is_a_400_naming_the_field(
    up: OpenAIStandIn, gateway: Running, field: dict[str, Any], code: str
) -> None:
    r = _generate(gateway, model="flux-like", **field)
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (next(iter(field)), code)
    assert up.received == []


def test_a_near_miss_enum_value_is_named(gateway: Running) -> None:
    r = _generate(gateway, model="flux-like", style_preset="anim")
    assert r.status_code == 400 and r.json()["error"]["message"].endswith("Did you mean 'anime'?"), r.text


def test_a_multipart_value_outside_the_declaration_is_a_400(gateway: Running) -> None:
    r = httpx.post(
        f"{gateway.base_url}/v1/images/edits",
        files=[("image", ("a.png", make_image(64, 64), "image/png"))],
        data={"model": "flux-like", "prompt": "x", "safety_tolerance": "seven"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "safety_tolerance", r.text


@pytest.mark.parametrize("field", [{"safety_tolerance": 2}, {"style_preset": "anime"}, {"seed": 1}])
def test_a_model_that_does_not_declare_a_field_answers_unknown_parameter(
    up: OpenAIStandIn, gateway: Running, field: dict[str, Any]
) -> None:
    model = "flux-like" if "seed" in field else "gpt-image-1"  # flux-like declares its own three only
    r = _generate(gateway, model=model, **field)
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (next(iter(field)), "unknown_parameter")
    assert up.received == []


def test_a_fallback_that_does_not_declare_a_sent_field_is_skipped(up: OpenAIStandIn, gateway: Running) -> None:
    up.script.append(ERR500)
    plain = _generate(gateway, model="flux-like")
    assert plain.status_code == 200 and plain.headers["x-imagegate-model"] == "gpt-image-1"  # the fallback serves
    assert [rec.json["model"] for rec in up.received if rec.json] == ["flux-pro-1.1", "gpt-image-1"]
    up.received.clear()
    up.script.extend([ERR500, ERR500])
    r = _generate(gateway, model="flux-like", safety_tolerance=2)
    assert r.status_code == 500, r.text
    assert r.headers["x-imagegate-model"] == "flux-like"
    assert [rec.json["model"] for rec in up.received if rec.json] == ["flux-pro-1.1", "flux-pro-1.1"]  # never gpt-image-1
