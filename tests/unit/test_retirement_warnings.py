"""The start-up warning for deployments that send a vendor a model name it has
shut down: OpenAI at api.openai.com, Google's Gemini API and Vertex AI at
Google's hosts; the upstream name's own catalog date; never for a proxy or a
stand-in, nor for a date further off than 90 days."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import yaml
from standin_google_oauth import service_account

from imagegate.config import load_settings
from imagegate.gateway.models_view import retirement_warnings
from imagegate.gateway.routes import build_routes

TODAY = datetime.date(2026, 11, 30)
ACCOUNT = json.dumps(service_account("https://oauth2.googleapis.com/token"))


def warnings_for(tmp_path: Path, providers: dict[str, Any], models: dict[str, Any], today: datetime.date = TODAY) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"storage": {"signing_key": "k" * 32}, "providers": providers, "models": models}))
    settings = load_settings(path, environ={})
    return retirement_warnings(settings, build_routes(settings), today=today)


def test_imagen_sent_to_google_is_named_with_its_shutdown_date(tmp_path: Path) -> None:
    providers = {
        "google": {"type": "gemini", "api_key": "never-used"},  # Google's own host: never called here
        "standin": {"type": "gemini", "api_key": "never-used", "base_url": "http://127.0.0.1:9/v1beta"},
    }
    models = {
        "imagen-4.0-fast-generate-001": [{"provider": "google"}],
        "pictures": [{"provider": "google", "model": "imagen-4.0-ultra-generate-001"}],
        "local-imagen": [{"provider": "standin", "model": "imagen-4.0-generate-001"}],
        "gemini-nano-banana-2.1": [{"provider": "google"}],
        "gemini-3.1-flash-image": [{"provider": "google"}],
    }
    lines = warnings_for(tmp_path, providers, models)
    assert lines == [
        "model 'imagen-4.0-fast-generate-001' (deployment google/imagen-4.0-fast-generate-001): Google shut down "
        "'imagen-4.0-fast-generate-001' on 2026-08-17; point it at a current model (e.g. gemini-nano-banana-2.1) "
        "or at an upstream that still serves it",
        "model 'pictures' (deployment google/imagen-4.0-ultra-generate-001): Google shut down "
        "'imagen-4.0-ultra-generate-001' on 2026-08-17; point it at a current model (e.g. gemini-nano-banana-2.1) "
        "or at an upstream that still serves it",
    ]


def test_a_shutdown_within_90_days_is_announced_and_later_ones_are_not(tmp_path: Path) -> None:
    providers = {"google": {"type": "gemini", "api_key": "never-used"}}
    models = {"gemini-2.5-flash-image": [{"provider": "google"}]}
    assert warnings_for(tmp_path, providers, models) == []  # 2027-03-15 is 105 days off
    (line,) = warnings_for(tmp_path, providers, models, today=datetime.date(2027, 1, 1))
    assert "Google shuts down 'gemini-2.5-flash-image' on 2027-03-15" in line
    (line,) = warnings_for(tmp_path, providers, models, today=datetime.date(2027, 3, 15))
    assert "Google shut down 'gemini-2.5-flash-image' on 2027-03-15" in line


def test_vertex_hosts_are_google_and_a_private_endpoint_is_not(tmp_path: Path) -> None:
    vertex = {"type": "vertex", "project": "p", "credentials_json": ACCOUNT}
    providers = {
        "vx": {**vertex, "location": "europe-west4"},  # https://europe-west4-aiplatform.googleapis.com/v1
        "vx-eu": {**vertex, "location": "eu", "base_url": "https://aiplatform.eu.rep.googleapis.com/v1"},
        "vx-private": {**vertex, "base_url": "https://vertex.internal.example/v1"},
    }
    rules = "vertex/imagen-4.0-fast-generate-001"
    models = {
        "imagen-4.0-fast-generate-001": {"rules": rules, "deployments": [{"provider": "vx"}]},
        "imagen-eu": {"rules": rules, "deployments": [{"provider": "vx-eu", "model": "imagen-4.0-fast-generate-001"}]},
        "imagen-private": {"rules": rules, "deployments": [{"provider": "vx-private", "model": "imagen-4.0-fast-generate-001"}]},
    }
    lines = warnings_for(tmp_path, providers, models)
    assert [line.split(":")[0] for line in lines] == [
        "model 'imagen-4.0-fast-generate-001' (deployment vx/imagen-4.0-fast-generate-001)",
        "model 'imagen-eu' (deployment vx-eu/imagen-4.0-fast-generate-001)",
    ]
    assert all("Google shut down 'imagen-4.0-fast-generate-001' on 2026-08-17" in line for line in lines)


def test_the_upstream_names_date_counts_not_the_public_names(tmp_path: Path) -> None:
    providers = {"openai": {"type": "openai", "api_key": "sk-never-used"}}
    models = {
        # a public name that OpenAI retired, served by a current model: nothing to warn about
        "gpt-image-1": [{"provider": "openai", "model": "gpt-image-2"}],
        "house": [{"provider": "openai", "model": "gpt-image-1.5"}],
    }
    (line,) = warnings_for(tmp_path, providers, models)
    assert line.startswith("model 'house' (deployment openai/gpt-image-1.5): OpenAI shuts down 'gpt-image-1.5' on 2026-12-01;")
    assert line.endswith("point it at a current model (e.g. gpt-image-2) or at an upstream that still serves it")
