"""Browsers and methods: CORS (off by default, configurable, preflights
answered) and 405 answers whose ``Allow`` lists every method of the path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from support import BASE_CONFIG, Running

APP = "https://app.example.com"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/admin/keys/key_123", "GET, PATCH, DELETE"),
        ("POST", "/admin/keys/key_123", "GET, PATCH, DELETE"),
        ("DELETE", "/admin/keys", "GET, POST"),
        ("POST", "/admin/virtual-keys/openai-team", "GET, PUT, PATCH, DELETE"),
        ("GET", "/v1/images/generations", "POST"),
        ("PUT", "/v1/images/edits", "POST"),
        ("POST", "/v1/images/files/abc.png", "GET, HEAD"),
        ("POST", "/healthz", "GET"),
        ("DELETE", "/v1/models", "GET"),
    ],
)
def test_405_lists_every_method_of_the_path(server: Running, method: str, path: str, allowed: str) -> None:
    r = httpx.request(method, f"{server.base_url}{path}")
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allowed
    assert r.json()["error"]["code"] == "method_not_allowed"


@pytest.fixture
def cors_server(make_server: Callable[[dict[str, Any]], Running]) -> Running:
    return make_server({**BASE_CONFIG, "server": {"cors": {"allow_origins": [APP]}, "max_body_mb": 1}})


def _preflight(base_url: str, origin: str, path: str = "/v1/images/generations") -> httpx.Response:
    return httpx.options(
        f"{base_url}{path}",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-lang, idempotency-key",
        },
    )


def test_a_preflight_from_an_allowed_origin_is_answered(cors_server: Running) -> None:
    r = _preflight(cors_server.base_url, APP)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == APP
    assert "POST" in r.headers["access-control-allow-methods"].split(", ")
    asked = {h.strip() for h in r.headers["access-control-allow-headers"].lower().split(",")}
    assert {"authorization", "content-type", "x-stainless-lang", "idempotency-key"} <= asked
    assert r.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in r.headers


def test_a_disallowed_origin_gets_no_cors_headers(cors_server: Running) -> None:
    r = _preflight(cors_server.base_url, "https://evil.example.com")
    assert r.status_code == 400
    assert not any(h.startswith("access-control-") for h in r.headers)
    assert r.json()["error"] == {
        "message": "Disallowed CORS origin.",
        "type": "invalid_request_error",
        "param": None,
        "code": "cors_preflight_refused",
    }
    actual = httpx.post(
        f"{cors_server.base_url}/v1/images/generations",
        json={"model": "test-pattern", "prompt": "x", "size": "64x64"},
        headers={"Origin": "https://evil.example.com"},
    )
    assert actual.status_code == 200  # served (CORS is the browser's rule), but no page of that origin may read it
    assert "access-control-allow-origin" not in actual.headers


def test_an_allowed_origin_reads_the_answer_and_the_imagegate_headers(cors_server: Running) -> None:
    r = httpx.post(
        f"{cors_server.base_url}/v1/images/generations",
        json={"model": "test-pattern", "prompt": "x", "size": "64x64"},
        headers={"Origin": APP},
    )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == APP
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-imagegate-cost-usd", "x-imagegate-provider", "x-imagegate-attempts"} <= exposed
    assert {"x-request-id", "x-imagegate-cost-usd"} <= set(r.headers)
    # Errors too, the body limit's 413 (answered before the body is read) included.
    bad = httpx.post(f"{cors_server.base_url}/v1/images/generations", json={}, headers={"Origin": APP})
    assert bad.status_code == 400 and bad.headers["access-control-allow-origin"] == APP
    big = httpx.post(
        f"{cors_server.base_url}/v1/images/generations",
        content=b"x" * 1_100_000,
        headers={"Origin": APP, "Content-Type": "application/json"},
    )
    assert big.status_code == 413 and big.headers["access-control-allow-origin"] == APP


def test_cors_is_off_by_default(server: Running) -> None:
    r = _preflight(server.base_url, APP)
    assert r.status_code == 405
    assert not any(h.startswith("access-control-") for h in r.headers)
    actual = httpx.get(f"{server.base_url}/healthz", headers={"Origin": APP})
    assert not any(h.startswith("access-control-") for h in actual.headers)


def test_credentials_with_any_origin_is_refused_at_start() -> None:
    from imagegate.config import load_settings
    from imagegate.errors import ConfigError

    env = {"IMAGEGATE_SERVER__CORS__ALLOW_ORIGINS": '["*"]', "IMAGEGATE_SERVER__CORS__ALLOW_CREDENTIALS": "true"}
    with pytest.raises(ConfigError, match=r"server\.cors: allow_credentials needs explicit allow_origins"):
        load_settings(environ=env)
    assert load_settings(environ={"IMAGEGATE_SERVER__CORS__ALLOW_ORIGINS": '["*"]'}).server.cors.enabled
