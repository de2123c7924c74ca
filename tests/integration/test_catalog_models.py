"""The catalog as data through the real server: gpt-image-2 billed from a
recorded usage, a model added in ten lines of config, unknown fields
forwarded or refused as the entry says, retired names, and the views of
the effective rules and prices (/admin/models, `imagegate models`)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from standin_openai import Fault, OpenAIStandIn

from support import SIGNING_KEY, Running, data_url, make_image, serve_process, standin_fixtures
from support import admin as admin_api

MASTER = "master-key-for-the-catalog-tests-0001"
IMAGEGATE = [sys.executable, "-m", "imagegate"]

# A new model in ten lines of config: its rules (from gpt-image-2, but
# fixed sizes only), one field of its own, and a price.
TEN_LINES = """\
catalog:
  studio-model:
    extends: gpt-image-2
    free_size: null
    sizes: [1024x1024, 1536x1024]
    default_size: 1024x1024
    extra_fields:
      complexity: {type: str, enum: [low, medium, high]}
    price: {per_image: 0.05}
"""

# What OpenAI answered for a gpt-image-2 1024x1024 high-quality generation
# (recorded shape of ImagesResponse.usage; cached_tokens within input_tokens_details).
GPT_IMAGE_2_USAGE = {
    "total_tokens": 8326,
    "input_tokens": 1302,
    "output_tokens": 7024,
    "input_tokens_details": {"text_tokens": 38, "image_tokens": 1264, "cached_tokens": 512},
    "output_tokens_details": {"image_tokens": 7024, "text_tokens": 0},
}


def _rates(text: str, text_cached: str, image: str, image_cached: str, out: str) -> Decimal:
    """The recorded usage at OpenAI's per-1M rates; cached tokens taken from text first."""
    million = Decimal(1_000_000)
    return (
        38 * Decimal(text_cached)  # all 38 text tokens cached
        + (1264 - 474) * Decimal(image)
        + 474 * Decimal(image_cached)  # the other 474 cached tokens are image tokens
        + 7024 * Decimal(out)
        + 0 * Decimal(text)
    ) / million


def gateway_config(base_url: str) -> dict[str, Any]:
    up = {"type": "openai", "base_url": base_url, "api_key": "sk-upstream-catalog"}
    return {
        "storage": {"signing_key": SIGNING_KEY},
        "auth": {"master_key": MASTER, "required": False},
        "routing": {"max_attempts": 1},
        "providers": {"up": up, "open": {**up, "unknown_fields": "forward"}, "x": {"type": "xai", "base_url": base_url}},
        **yaml.safe_load(TEN_LINES),
        "models": {
            "gpt-image-2": [{"provider": "up"}],
            "gpt-image-1": [{"provider": "up"}],
            "studio-model": [{"provider": "up"}],
            "house-flux": [{"provider": "up", "model": "vendor/flux-dev"}],  # unlisted: openai-compatible rules
            "gpt-image-2-open": {"rules": "gpt-image-2", "deployments": [{"provider": "open", "model": "gpt-image-2"}]},
            # rules: names the model a deployment serves, whatever the deployment is called
            "renamed": {"rules": "gpt-image-1.5", "deployments": [{"provider": "up", "model": "gpt-image-1"}]},
            "grok-imagine-image-pro": [{"provider": "x"}],  # unlisted: xAI's fallback rules, no price
        },
    }


upstream, gw, up = standin_fixtures(OpenAIStandIn, gateway_config, "catalog")


def admin(gw: Running, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return admin_api(gw.base_url, MASTER, method, path, **kwargs)


def test_gpt_image_2_costs_what_openai_charges_from_its_usage(gw: Running, up: OpenAIStandIn) -> None:
    key = admin(gw, "POST", "/admin/keys", json={"name": "g2", "budget_usd": 10}).json()
    answer = {
        "created": 1_790_000_000,
        "data": [{"b64_json": base64.b64encode(make_image(1024, 1024)).decode()}],
        "size": "1024x1024",
        "quality": "high",
        "output_format": "png",
        "usage": GPT_IMAGE_2_USAGE,
    }
    up.script.append(Fault("json", body=answer))
    raw = gw.sdk(api_key=key["key"]).images.with_raw_response.generate(
        model="gpt-image-2", prompt="a lighthouse", size="1024x1024", quality="high"
    )
    expected = _rates("5.00", "1.25", "8.00", "2.00", "30.00")
    assert Decimal(raw.headers["x-imagegate-cost-usd"]) == expected.quantize(Decimal("0.000001"))
    state = admin(gw, "GET", f"/admin/keys/{key['id']}").json()
    assert Decimal(state["spent_usd"]) == expected.quantize(Decimal("0.000001"))
    assert Decimal(state["reserved_usd"]) == 0
    assert up.received[-1].json is not None and up.received[-1].json["model"] == "gpt-image-2"


def test_gpt_image_2_without_usage_is_estimated_from_the_pixel_count(gw: Running, up: OpenAIStandIn) -> None:
    answer = {"created": 1, "data": [{"b64_json": base64.b64encode(make_image(1536, 1024)).decode()}]}
    up.script.append(Fault("json", body=answer))
    raw = gw.sdk().images.with_raw_response.generate(model="gpt-image-2", prompt="x", size="1536x1024", quality="high")
    # 5488 output tokens at $30/1M (OpenAI's example: $0.165) plus the prompt's 1 token at $5/1M
    assert raw.headers["x-imagegate-cost-usd"] == "0.164645"


def test_gpt_image_2_sizes(gw: Running, up: OpenAIStandIn) -> None:
    sdk = gw.sdk()
    image = sdk.images.generate(model="gpt-image-2", prompt="x", size="1536x864")  # type: ignore[arg-type]
    assert image.data and up.received[-1].json is not None and up.received[-1].json["size"] == "1536x864"
    for size, why in (("1000x1000", "multiples of 16"), ("3840x1024", "aspect ratio"), ("4096x2048", "longest edge")):
        with pytest.raises(openai.BadRequestError) as err:
            sdk.images.generate(model="gpt-image-2", prompt="x", size=size)  # type: ignore[arg-type]
        body: Any = err.value.body
        assert body["param"] == "size" and why in body["message"], body


def test_unknown_fields_follow_the_entry(gw: Running, up: OpenAIStandIn) -> None:
    sdk = gw.sdk()
    sent = len(up.received)
    with pytest.raises(openai.BadRequestError) as err:  # a listed model: refused, nothing sent
        sdk.images.generate(model="gpt-image-2", prompt="x", extra_body={"complexity": "high"})
    assert (err.value.code, err.value.param) == ("unknown_parameter", "complexity")
    assert len(up.received) == sent
    # an unlisted model behind an OpenAI-compatible upstream: forwarded untouched, any JSON type
    sdk.images.generate(model="house-flux", prompt="x", extra_body={"lora": {"name": "ink", "scale": 0.7}, "steps_x": [1, 2]})
    got = up.received[-1].json
    assert got is not None and got["lora"] == {"name": "ink", "scale": 0.7} and got["steps_x"] == [1, 2]
    assert got["model"] == "vendor/flux-dev"
    # multipart edits forward them as form fields
    sdk.images.edit(model="house-flux", prompt="x", image=("a.png", make_image(64, 64)), extra_body={"strength": "0.4"})
    assert up.received[-1].fields["strength"] == "0.4"
    # the provider option forwards for a listed model too
    sdk.images.generate(model="gpt-image-2-open", prompt="x", extra_body={"complexity": "high"})
    assert up.received[-1].json is not None and up.received[-1].json["complexity"] == "high"
    # a spec field on the wrong endpoint is still the client's error, forwarded nowhere
    with pytest.raises(openai.BadRequestError) as err:
        sdk.images.generate(model="house-flux", prompt="x", extra_body={"input_fidelity": "high"})
    assert err.value.param == "input_fidelity"


def test_a_model_added_in_ten_lines_of_config(gw: Running, up: OpenAIStandIn) -> None:
    sdk = gw.sdk()
    raw = sdk.images.with_raw_response.generate(model="studio-model", prompt="x", extra_body={"complexity": "medium"})
    assert raw.headers["x-imagegate-cost-usd"] == "0.050000"
    got = up.received[-1].json
    assert got is not None and got["complexity"] == "medium" and got["model"] == "studio-model"
    with pytest.raises(openai.BadRequestError) as err:
        sdk.images.generate(model="studio-model", prompt="x", size="1536x864")  # type: ignore[arg-type]
    assert err.value.param == "size"
    with pytest.raises(openai.BadRequestError) as err:
        sdk.images.generate(model="studio-model", prompt="x", extra_body={"complexity": "extreme"})
    assert (err.value.param, err.value.code) == ("complexity", "invalid_value")
    with pytest.raises(openai.BadRequestError) as err:  # inherited from gpt-image-2
        sdk.images.generate(model="studio-model", prompt="x", output_format="svg")  # type: ignore[arg-type]
    assert err.value.param == "output_format" and "'png'" in str(err.value.body)


def test_v1_models_shows_retired_names(gw: Running) -> None:
    models = {m.id: m for m in gw.sdk().models.list().data}
    assert getattr(models["gpt-image-1"], "retired", None) == "2026-10-23"
    assert getattr(models["gpt-image-2"], "retired", None) is None


def test_admin_models_show_where_rules_and_prices_came_from(gw: Running) -> None:
    data = {m["id"]: m for m in admin(gw, "GET", "/admin/models").json()["data"]}
    g2 = data["gpt-image-2"]
    assert (g2["rules_origin"], g2["price_origin"]) == ("shipped (openai.yaml)", "gpt-image-2, shipped (openai.yaml)")
    assert g2["free_size"]["max_edge"] == 3840 and g2["price"]["image_output_per_1m"] == "30.000000"
    assert g2["price"]["text_input_cached_per_1m"] == "1.250000"
    studio = data["studio-model"]
    assert (studio["rules_origin"], studio["price_origin"]) == ("config", "studio-model, config (catalog)")
    assert studio["free_size"] is None and studio["extra_fields"] == ["complexity"]
    flux = data["house-flux"]
    assert (flux["rules"], flux["unknown_fields"], flux["price"]) == ("openai-compatible", "forward", None)
    assert data["gpt-image-2-open"]["unknown_fields"] == "forward"
    # explicit rules price the route; a provider's fallback rules never do
    assert data["renamed"]["price_origin"] == "gpt-image-1.5, shipped (openai.yaml)"
    pro = data["grok-imagine-image-pro"]
    assert (pro["rules"], pro["rules_origin"], pro["price"]) == (
        "grok-imagine-image",
        "provider default, shipped (xai.yaml)",
        None,
    )


# -- the command line and the start-up log ------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMAGEGATE, *args], capture_output=True, text=True, timeout=60)


def test_check_config_and_models_cli(tmp_path: Path) -> None:
    config = tmp_path / "ten.yaml"
    config.write_text(TEN_LINES + "models:\n  studio-model: [{provider: demo}]\nproviders:\n  demo: {type: test-pattern}\n")
    ok = _run("check-config", str(config))
    assert ok.returncode == 0 and "studio-model" in ok.stdout, ok.stderr
    shown = _run("models", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert "rules: studio-model, config;" in shown.stdout and "per image: default 0.050000" in shown.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(TEN_LINES.replace("extends: gpt-image-2", "extends: gpt-image-9"))
    refused = _run("check-config", str(bad))
    assert refused.returncode == 2 and "catalog.studio-model.extends: no catalog entry 'gpt-image-9'" in refused.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text(TEN_LINES.replace("sizes:", "sises:"))
    refused = _run("check-config", str(typo))
    assert refused.returncode == 2 and "catalog.studio-model.sises: unknown key" in refused.stderr


def test_retired_names_sent_to_openai_are_logged_at_start(tmp_path: Path) -> None:
    config = {
        "storage": {"signing_key": SIGNING_KEY},
        "providers": {"openai": {"type": "openai", "api_key": "sk-never-used"}},  # api.openai.com: never called here
        "models": {
            "old": [{"provider": "openai", "model": "gpt-image-1"}],
            "new": [{"provider": "openai", "model": "gpt-image-2"}],
        },
    }
    with serve_process(config, tmp_path) as served:
        log = served.log()
    assert "OpenAI shut down 'gpt-image-1' on 2026-10-23" in log
    assert "'gpt-image-2'" not in log


def test_retired_imagen_sent_to_google_is_logged_at_start(tmp_path: Path) -> None:
    config = {
        "storage": {"signing_key": SIGNING_KEY},
        "providers": {"google": {"type": "gemini", "api_key": "never-used"}},  # Google's host: never called here
        "models": {
            "imagen-4.0-fast-generate-001": [{"provider": "google"}],
            "gemini-nano-banana-2.1": [{"provider": "google"}],
        },
    }
    with serve_process(config, tmp_path) as served:
        log = served.log()
    assert "Google shut down 'imagen-4.0-fast-generate-001' on 2026-08-17" in log
    assert "(e.g. gemini-nano-banana-2.1)" in log and "'gemini-nano-banana-2.1' on" not in log


def test_images_a_stream_delivered_before_it_failed_are_charged(gw: Running, up: OpenAIStandIn) -> None:
    key = admin(gw, "POST", "/admin/keys", json={"name": "streamer", "budget_usd": 10}).json()
    b64 = base64.b64encode(make_image(1024, 1024)).decode()
    done = {"type": "image_generation.completed", "b64_json": b64, "size": "1024x1024", "quality": "high",
            "output_format": "png", "usage": GPT_IMAGE_2_USAGE}  # fmt: skip
    error = {"type": "error", "error": {"message": "the second image failed", "type": "server_error", "code": "internal"}}
    up.script.append(Fault("stream", events=[done, error]))
    received = []
    with pytest.raises(openai.APIError):
        for event in gw.sdk(api_key=key["key"]).images.generate(model="gpt-image-2", prompt="x", n=2, stream=True):
            received.append(event)
    assert [e.type for e in received] == ["image_generation.completed"]
    state = admin(gw, "GET", f"/admin/keys/{key['id']}").json()
    expected = _rates("5.00", "1.25", "8.00", "2.00", "30.00").quantize(Decimal("0.000001"))
    assert (Decimal(state["spent_usd"]), Decimal(state["reserved_usd"])) == (expected, 0)
    rows = admin(gw, "GET", "/admin/usage", params={"key": key["id"], "group_by": "key"}).json()["data"]
    assert (rows[0]["images"], rows[0]["errors"], Decimal(rows[0]["cost_usd"])) == (1, 1, expected)


def test_a_forwarded_field_cannot_pose_as_a_gateway_field_in_another_case(gw: Running, up: OpenAIStandIn) -> None:
    sent = len(up.received)
    for name, value in (("Model", "gpt-image-1"), ("N", 10), ("RESPONSE_FORMAT", "url"), ("Seed", 1), ("Mask", "x")):
        with pytest.raises(openai.BadRequestError) as err:
            gw.sdk().images.generate(model="house-flux", prompt="x", extra_body={name: value})
        assert (err.value.code, err.value.param) == ("unknown_parameter", name)
    assert len(up.received) == sent


def test_a_json_edits_nested_fields_reach_a_multipart_upstream_as_json(gw: Running, up: OpenAIStandIn) -> None:
    body = {"model": "house-flux", "prompt": "x", "images": [{"image_url": data_url(make_image(64, 64))}],
            "lora": {"name": "ink", "scale": 0.5}, "stops": [1, 2]}  # fmt: skip
    r = httpx.post(f"{gw.base_url}/v1/images/edits", json=body, timeout=30)
    assert r.status_code == 200, r.text
    fields = up.received[-1].fields
    assert json.loads(fields["lora"]) == {"name": "ink", "scale": 0.5} and json.loads(fields["stops"]) == [1, 2]
