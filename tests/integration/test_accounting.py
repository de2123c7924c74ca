"""Keys, budgets, rate limits, cost headers, usage and virtual keys, through the
real server with the official SDK, on SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from cryptography.fernet import Fernet
from standin_openai import Fault, OpenAIStandIn

from support import SIGNING_KEY, Running, make_image, run_server

MASTER = "master-key-for-the-tests-0123456789"
ENCRYPTION_KEY = Fernet.generate_key().decode()


def config(upstream: str) -> dict[str, Any]:
    return {
        "auth": {"master_key": MASTER, "encryption_key": ENCRYPTION_KEY},
        "storage": {"signing_key": SIGNING_KEY},
        "pricing": {"test-pattern": {"per_image": 0.25}},
        "providers": {
            "demo": {"type": "test-pattern"},
            "up": {"type": "openai", "base_url": upstream, "api_key": "sk-from-config"},
        },
        "models": {"test-pattern": [{"provider": "demo"}], "gpt-image-1": [{"provider": "up"}]},
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def gw(upstream: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with run_server(config(upstream.base_url), tmp_path_factory.mktemp("acct")) as running:
        yield running


def admin(gw: Running, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """Call the admin API with the master key."""
    return httpx.request(method, gw.base_url + path, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30, **kwargs)


def new_key(gw: Running, **body: Any) -> dict[str, Any]:
    r = admin(gw, "POST", "/admin/keys", json={"name": "test", **body})
    assert r.status_code == 201, r.text
    return r.json()


def key_state(gw: Running, key_id: str) -> dict[str, Any]:
    return admin(gw, "GET", f"/admin/keys/{key_id}").json()


def generate(gw: Running, secret: str, **body: Any) -> httpx.Response:
    payload = {"model": "test-pattern", "prompt": "x", "size": "64x64", **body}
    return httpx.post(
        f"{gw.base_url}/v1/images/generations", json=payload, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )


def test_new_user_spends_exactly_down_to_a_one_dollar_budget(gw: Running, upstream: OpenAIStandIn) -> None:
    key = new_key(gw, budget_usd=1, rpm=10)
    assert key["key"].startswith("ig-") and key["prefix"] == key["key"][:11]
    client = gw.sdk(api_key=key["key"])
    costs = []
    for _ in range(4):
        raw = client.images.with_raw_response.generate(model="test-pattern", prompt="x", size="64x64")
        costs.append(raw.headers["x-imagegate-cost-usd"])
        assert raw.headers["x-request-id"].startswith("req_")
        assert len(raw.parse().data) == 1
    assert costs == ["0.250000"] * 4
    with pytest.raises(openai.RateLimitError) as info:
        client.images.generate(model="test-pattern", prompt="x", size="64x64")
    assert info.value.code == "insufficient_quota"
    assert info.value.response.headers["x-imagegate-cost-usd"] == "0.000000"
    state = key_state(gw, key["id"])
    assert (state["spent_usd"], state["reserved_usd"]) == ("1.000000", "0.000000")
    # the listing never shows secrets
    listed = admin(gw, "GET", "/admin/keys").text
    assert key["key"] not in listed and key["prefix"] in listed
    # `imagegate usage` shows it, summed by key, model and day
    out = subprocess.run(
        [sys.executable, "-m", "imagegate", "usage", "--config", str(gw.data_dir.parent / "imagegate.yaml"),
         "--key", key["id"], "--format", "json"],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert (row["key"], row["model"], row["requests"], row["images"], row["errors"], row["cost_usd"]) == (
        key["id"], "test-pattern", 5, 4, 1, "1.000000"
    )  # fmt: skip
    assert row["day"] == datetime.now(UTC).date().isoformat()


def test_failed_request_is_not_charged(gw: Running, upstream: OpenAIStandIn) -> None:
    key = new_key(gw, budget_usd=5)
    boom = Fault("status", 500, {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
    upstream.script.extend([boom] * 3)  # every attempt fails (3 by default)
    r = httpx.post(f"{gw.base_url}/v1/images/generations", json={"model": "gpt-image-1", "prompt": "x"},
                   headers={"Authorization": f"Bearer {key['key']}"}, timeout=30)  # fmt: skip
    assert r.status_code == 500
    assert r.headers["x-imagegate-cost-usd"] == "0.000000"
    state = key_state(gw, key["id"])
    assert (state["spent_usd"], state["reserved_usd"]) == ("0.000000", "0.000000")
    rows = admin(gw, "GET", "/admin/usage", params={"key": key["id"], "group_by": "key,model"}).json()["data"]
    assert rows == [{"key": key["id"], "model": "gpt-image-1", "requests": 1, "images": 0, "errors": 1,
                     "input_tokens": 0, "output_tokens": 0, "cost_usd": "0.000000"}]  # fmt: skip


def test_token_usage_is_billed_exactly(gw: Running, upstream: OpenAIStandIn) -> None:
    key = new_key(gw, budget_usd=5)
    raw = gw.sdk(api_key=key["key"]).images.with_raw_response.generate(model="gpt-image-1", prompt="x", size="1024x1024")
    # the stand-in reports 40 text + 160 image input tokens and 1056 output tokens
    assert raw.headers["x-imagegate-cost-usd"] == "0.044040"
    assert key_state(gw, key["id"])["spent_usd"] == "0.044040"
    rows = admin(gw, "GET", "/admin/usage", params={"key": key["id"], "group_by": "model"}).json()["data"]
    assert (rows[0]["input_tokens"], rows[0]["output_tokens"]) == (200, 1056)


def test_requests_per_minute(gw: Running) -> None:
    key = new_key(gw, rpm=3)
    assert [generate(gw, key["key"]).status_code for _ in range(3)] == [200] * 3
    r = generate(gw, key["key"])
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(r.headers["retry-after"]) <= 60


def test_images_per_minute(gw: Running) -> None:
    key = new_key(gw, ipm=3)
    assert generate(gw, key["key"], n=2).status_code == 200
    second = generate(gw, key["key"], n=2)
    assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limit_exceeded"
    assert generate(gw, key["key"], n=1).status_code == 200  # the refused request used nothing up
    never = generate(gw, key["key"], n=4)
    assert never.status_code == 429 and "4 images" in never.json()["error"]["message"]


def test_team_budget_is_shared(gw: Running) -> None:
    assert admin(gw, "PUT", "/admin/teams/design", json={"budget_usd": 0.5}).status_code == 200
    a, b = new_key(gw, team="design"), new_key(gw, team="design")
    assert generate(gw, a["key"]).status_code == 200
    assert generate(gw, b["key"]).status_code == 200
    refused = generate(gw, a["key"])
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert "team 'design'" in refused.json()["error"]["message"]
    team = next(t for t in admin(gw, "GET", "/admin/teams").json()["data"] if t["name"] == "design")
    assert (team["spent_usd"], team["reserved_usd"]) == ("0.500000", "0.000000")


@pytest.mark.parametrize("header", ["authorization", "x-portkey-api-key"])
def test_key_headers(gw: Running, header: str) -> None:
    key = new_key(gw)
    value = f"Bearer {key['key']}" if header == "authorization" else key["key"]
    r = httpx.post(f"{gw.base_url}/v1/images/generations", json={"model": "test-pattern", "prompt": "x", "size": "64x64"},
                   headers={header: value}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text


def test_auth_failures(gw: Running) -> None:
    def code(secret: str | None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        r = httpx.post(f"{gw.base_url}/v1/images/generations", json={"model": "test-pattern", "prompt": "x"}, headers=headers)
        return r.status_code, r.json()["error"]["code"]

    assert code(None) == (401, "invalid_api_key")
    assert code("ig-not-a-real-key") == (401, "invalid_api_key")
    revoked = new_key(gw)
    assert admin(gw, "DELETE", f"/admin/keys/{revoked['id']}").json()["enabled"] is False
    assert code(revoked["key"]) == (401, "invalid_api_key")
    disabled = new_key(gw)
    admin(gw, "PATCH", f"/admin/keys/{disabled['id']}", json={"enabled": False})
    assert code(disabled["key"]) == (401, "invalid_api_key")
    expired = new_key(gw, expires_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())
    assert code(expired["key"]) == (401, "expired_api_key")


def test_allowed_models(gw: Running) -> None:
    key = new_key(gw, models=["test-pattern"])
    client = gw.sdk(api_key=key["key"])
    assert [m.id for m in client.models.list().data] == ["test-pattern"]
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.images.generate(model="gpt-image-1", prompt="x")
    assert info.value.code == "model_not_allowed"
    assert admin(gw, "POST", "/admin/keys", json={"name": "x", "models": ["nope"]}).json()["error"]["param"] == "models"


def test_admin_api_needs_the_master_or_an_admin_key(gw: Running) -> None:
    ordinary = new_key(gw)
    for method, path in [("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/usage"), ("GET", "/admin/models")]:
        r = httpx.request(method, gw.base_url + path, headers={"Authorization": f"Bearer {ordinary['key']}"}, json={"name": "x"})
        assert r.status_code == 403, (method, path)
        assert r.json()["error"]["code"] == "admin_required"
    assert httpx.get(gw.base_url + "/admin/keys").status_code == 401
    boss = new_key(gw, admin=True)
    assert httpx.get(gw.base_url + "/admin/keys", headers={"Authorization": f"Bearer {boss['key']}"}).status_code == 200


def test_admin_key_update_and_validation(gw: Running) -> None:
    key = new_key(gw, rpm=5, budget_usd=2)
    changed = admin(gw, "PATCH", f"/admin/keys/{key['prefix']}", json={"rpm": 50, "clear": ["budget"]}).json()
    assert (changed["rpm"], changed["budget_usd"]) == (50, None)
    bad = admin(gw, "POST", "/admin/keys", json={"name": "x", "rpm": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"
    unknown = admin(gw, "POST", "/admin/keys", json={"name": "x", "colour": "red"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "colour"
    assert admin(gw, "GET", "/admin/keys/key_nope").status_code == 404


def test_admin_models_show_prices(gw: Running) -> None:
    data = {m["id"]: m for m in admin(gw, "GET", "/admin/models").json()["data"]}
    assert data["test-pattern"]["price"] == {"kind": "per_image", "prices": {}, "default": "0.250000"}
    assert data["gpt-image-1"]["price"]["image_output_per_1m"] == "40.000000"


def test_usage_csv(gw: Running) -> None:
    key = new_key(gw)
    generate(gw, key["key"])
    csv = admin(gw, "GET", "/admin/usage", params={"key": key["id"], "group_by": "key,day", "format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    header, row = csv.text.strip().splitlines()
    assert header == "key,day,requests,images,errors,input_tokens,output_tokens,cost_usd"
    assert row.startswith(key["id"]) and row.endswith(",0.250000")
    bad = admin(gw, "GET", "/admin/usage", params={"group_by": "colour"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"


def test_streaming_reserves_then_settles(gw: Running) -> None:
    key = new_key(gw, budget_usd=1)
    with httpx.stream("POST", f"{gw.base_url}/v1/images/generations", timeout=30, headers={"Authorization": f"Bearer {key['key']}"},
                      json={"model": "test-pattern", "prompt": "x", "size": "64x64", "stream": True, "partial_images": 1}) as r:  # fmt: skip
        assert r.status_code == 200
        assert r.headers["x-imagegate-cost-reserved-usd"] == "0.250000"
        assert "x-imagegate-cost-usd" not in r.headers
        body = r.read().decode()
    assert "image_generation.completed" in body
    state = key_state(gw, key["id"])
    assert (Decimal(state["spent_usd"]), Decimal(state["reserved_usd"])) == (Decimal("0.25"), Decimal(0))


def test_virtual_key_sends_its_credential_upstream(gw: Running, upstream: OpenAIStandIn) -> None:
    key = new_key(gw)
    r = admin(gw, "PUT", "/admin/virtual-keys/team-openai", json={"provider": "up", "secret": "sk-virtual-secret-42", "keys": [key["id"]]})  # fmt: skip
    assert r.status_code == 200
    upstream.received.clear()
    ok = httpx.post(f"{gw.base_url}/v1/images/generations", json={"model": "gpt-image-1", "prompt": "x"}, timeout=30,
                    headers={"x-portkey-api-key": key["key"], "x-portkey-virtual-key": "team-openai"})  # fmt: skip
    assert ok.status_code == 200, ok.text
    assert upstream.received[-1].headers["authorization"] == "Bearer sk-virtual-secret-42"
    plain = httpx.post(f"{gw.base_url}/v1/images/generations", json={"model": "gpt-image-1", "prompt": "x"}, timeout=30,
                       headers={"x-portkey-api-key": key["key"]})  # fmt: skip
    assert plain.status_code == 200
    assert upstream.received[-1].headers["authorization"] == "Bearer sk-from-config"
    # encrypted at rest, and listed without the secret
    assert b"sk-virtual-secret-42" not in (gw.data_dir / "imagegate.db").read_bytes()
    assert "sk-virtual" not in admin(gw, "GET", "/admin/virtual-keys").text
    wrong = httpx.post(f"{gw.base_url}/v1/images/generations", json={"model": "test-pattern", "prompt": "x"}, timeout=30,
                       headers={"x-portkey-api-key": key["key"], "x-portkey-virtual-key": "team-openai"})  # fmt: skip
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "virtual_key_mismatch"
    missing = httpx.post(f"{gw.base_url}/v1/images/generations", json={"model": "gpt-image-1", "prompt": "x"}, timeout=30,
                         headers={"x-portkey-api-key": key["key"], "x-portkey-virtual-key": "nope"})  # fmt: skip
    assert missing.status_code == 404


def test_edit_cost_header(gw: Running) -> None:
    key = new_key(gw)
    r = httpx.post(f"{gw.base_url}/v1/images/edits", headers={"Authorization": f"Bearer {key['key']}"}, timeout=30,
                   files={"image": ("a.png", make_image(64, 64), "image/png")}, data={"model": "test-pattern", "prompt": "x", "n": "2"})  # fmt: skip
    assert r.status_code == 200 and r.headers["x-imagegate-cost-usd"] == "0.500000"


def test_replicas_share_rate_limits_through_redis(tmp_path) -> None:  # noqa: ANN001
    from redis_server import redis_server

    with redis_server() as url:
        cfg = {**config("http://127.0.0.1:9/v1"), "rate_limits": {"storage_url": url}}
        with run_server(cfg, tmp_path) as one, run_server(cfg, tmp_path) as two:  # same data dir: same database
            key = new_key(one, rpm=3)
            codes = [generate(replica, key["key"]).status_code for replica in (one, two, one, two)]
    assert codes == [200, 200, 200, 429]
