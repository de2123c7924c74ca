"""A valid database key is remembered for ``auth.key_cache_seconds``
(accounting/keycache.py), through the real server: the admin API's changes
apply to the very next request, another process's (the ``imagegate keys``
CLI) within the TTL, an expiry time on every request, and the setting's
bounds are checked at start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from imagegate.config import load_settings
from imagegate.errors import ConfigError
from support import Running, admin, run_server

MASTER = "master-key-for-the-tests-0123456789"
MARGIN = 0.5  # seconds a refusal may come after the TTL or expiry says it must (request and poll time)
POLL = 0.02


def _config(**auth: Any) -> dict[str, Any]:
    return {
        "auth": {"master_key": MASTER, **auth},
        "providers": {"demo": {"type": "test-pattern"}},
        "models": {"test-pattern": [{"provider": "demo"}], "dall-e-2": [{"provider": "demo"}]},
        "pricing": {"test-pattern": {"per_image": 0.01}},  # a budget of 0 refuses it
    }


def _new_key(gw: Running, **body: Any) -> dict[str, Any]:
    """A key with a budget (only those are remembered: one without is read every time)."""
    r = admin(gw.base_url, MASTER, "POST", "/admin/keys", json={"name": "cached", "budget_usd": 100, **body})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def _patch(gw: Running, key: dict[str, Any], **body: Any) -> dict[str, Any]:
    r = admin(gw.base_url, MASTER, "PATCH", f"/admin/keys/{key['id']}", json=body)
    assert r.status_code == 200, r.text
    view: dict[str, Any] = r.json()
    return view


def _models(gw: Running, secret: str) -> httpx.Response:
    """GET /v1/models with the key: the cheapest request that authenticates."""
    return httpx.get(f"{gw.base_url}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def _answer(r: httpx.Response) -> tuple[int, str | None]:
    return r.status_code, (r.json()["error"]["code"] if r.status_code != 200 else None)


def _generate(gw: Running, secret: str, model: str) -> tuple[int, str | None]:
    body = {"model": model, "prompt": "x", "size": "256x256", "response_format": "b64_json"}
    headers = {"Authorization": f"Bearer {secret}"}
    return _answer(httpx.post(f"{gw.base_url}/v1/images/generations", json=body, headers=headers, timeout=30))


def _cli(config: Path, *args: str) -> str:
    """``imagegate ...`` in another process, on the server's config (so its database)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    done = subprocess.run([sys.executable, "-m", "imagegate", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _until_refused(gw: Running, secret: str, seconds: float) -> tuple[list[tuple[float, float, int]], httpx.Response]:
    """GET /v1/models with the key until it is refused (at most ``seconds``):
    every (sent, answered, status) on the way, and the refusal."""
    seen: list[tuple[float, float, int]] = []
    deadline = time.monotonic() + seconds
    while True:
        sent = time.monotonic()
        r = _models(gw, secret)
        seen.append((sent, time.monotonic(), r.status_code))
        if r.status_code != 200:
            return seen, r
        assert time.monotonic() < deadline, f"the key was still accepted after {seconds} s"
        time.sleep(POLL)


# -- the admin API: the very next request ----------------------------------------


def test_admin_api_changes_apply_to_the_very_next_request_with_the_default_cache(tmp_path: Path) -> None:
    with run_server(_config(), tmp_path) as gw:  # auth.key_cache_seconds: 5 (the default)
        key = _new_key(gw)
        secret = key["key"]
        assert _generate(gw, secret, "dall-e-2") == (200, None)  # remembered from here on

        # allowed models: the next request is refused, and /v1/models lists only what is left
        _patch(gw, key, models=["test-pattern"])
        assert _generate(gw, secret, "dall-e-2") == (403, "model_not_allowed")
        assert [m["id"] for m in _models(gw, secret).json()["data"]] == ["test-pattern"]
        assert _generate(gw, secret, "test-pattern") == (200, None)
        _patch(gw, key, clear=["models"])
        assert _generate(gw, secret, "dall-e-2") == (200, None)

        # disabled, then enabled again
        _patch(gw, key, enabled=False)
        assert _answer(_models(gw, secret)) == (401, "invalid_api_key")
        _patch(gw, key, enabled=True)
        assert _answer(_models(gw, secret)) == (200, None)

        # an expiry time moved into the past
        assert _answer(_models(gw, secret)) == (200, None)
        _patch(gw, key, expires_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())
        assert _answer(_models(gw, secret)) == (401, "expired_api_key")
        _patch(gw, key, clear=["expires_at"])
        assert _answer(_models(gw, secret)) == (200, None)

        # revoked
        assert admin(gw.base_url, MASTER, "DELETE", f"/admin/keys/{key['id']}").json()["enabled"] is False
        assert _answer(_models(gw, secret)) == (401, "invalid_api_key")


def test_an_admin_key_demoted_through_the_admin_api_loses_the_admin_api_at_once(tmp_path: Path) -> None:
    with run_server(_config(), tmp_path) as gw:
        boss = _new_key(gw, admin=True)
        assert admin(gw.base_url, boss["key"], "GET", "/admin/keys").status_code == 200  # remembered as an admin
        _patch(gw, boss, admin=False)
        refused = admin(gw.base_url, boss["key"], "GET", "/admin/keys")
        assert _answer(refused) == (403, "admin_required")
        assert _answer(_models(gw, boss["key"])) == (200, None)  # still a valid key


# -- another process (the CLI): within the TTL -------------------------------------


def test_a_cli_revoke_is_not_seen_while_cached_and_any_admin_api_key_change_forgets_it(tmp_path: Path) -> None:
    with run_server(_config(key_cache_seconds=60), tmp_path) as gw:
        config = tmp_path / "imagegate.yaml"  # run_server's, with its data_dir: the same database
        key, other = _new_key(gw), _new_key(gw, name="other")
        assert _answer(_models(gw, key["key"])) == (200, None)  # remembered for 60 s
        assert "revoked" in _cli(config, "keys", "revoke", key["id"])
        # the server has not read the row again: the cached key still works
        assert [_models(gw, key["key"]).status_code for _ in range(3)] == [200, 200, 200]
        # an admin API change to another key makes this server forget every key it remembered
        _patch(gw, other, name="renamed")
        assert _answer(_models(gw, key["key"])) == (401, "invalid_api_key")
        assert _answer(_models(gw, other["key"])) == (200, None)


def test_a_key_without_a_budget_is_read_every_time_so_a_cli_budget_holds_at_once(tmp_path: Path) -> None:
    # A cached "no budget" would let requests run unreserved past a budget the
    # CLI (or another replica) just gave the key: such keys are not remembered.
    with run_server(_config(key_cache_seconds=60), tmp_path) as gw:
        config = tmp_path / "imagegate.yaml"
        free, spare = _new_key(gw, name="free", budget_usd=None), _new_key(gw, name="spare", budget_usd=None)
        assert _answer(_models(gw, free["key"])) == (200, None)
        assert _generate(gw, free["key"], "test-pattern") == (200, None)
        _cli(config, "keys", "update", free["id"], "--budget", "0")
        assert _generate(gw, free["key"], "test-pattern") == (429, "insufficient_quota")  # the very next request
        assert _answer(_models(gw, spare["key"])) == (200, None)
        assert "revoked" in _cli(config, "keys", "revoke", spare["id"])
        assert _answer(_models(gw, spare["key"])) == (401, "invalid_api_key")


def test_a_cli_revoke_takes_effect_within_the_ttl(tmp_path: Path) -> None:
    ttl = 1.0
    with run_server(_config(key_cache_seconds=ttl), tmp_path) as gw:
        key = _new_key(gw)
        cached_from = time.monotonic()  # the entry is made after this, so it lives at least until cached_from + ttl
        assert _answer(_models(gw, key["key"])) == (200, None)
        assert "revoked" in _cli(tmp_path / "imagegate.yaml", "keys", "revoke", key["id"])
        revoked = time.monotonic()
        seen, refusal = _until_refused(gw, key["key"], seconds=ttl + 5)
        assert _answer(refusal) == (401, "invalid_api_key")
        refused_at = seen[-1][1]
        assert refused_at - revoked <= ttl + MARGIN, seen
        # a request answered while the entry was surely alive was served from it
        # (vacuous when the CLI took longer than the TTL, as it usually does)
        assert all(status == 200 for _, answered, status in seen if answered < cached_from + ttl), seen


def test_without_a_cache_a_cli_revoke_is_seen_by_the_very_next_request(tmp_path: Path) -> None:
    with run_server(_config(key_cache_seconds=0), tmp_path) as gw:
        key = _new_key(gw)
        assert _answer(_models(gw, key["key"])) == (200, None)
        assert "revoked" in _cli(tmp_path / "imagegate.yaml", "keys", "revoke", key["id"])
        assert _answer(_models(gw, key["key"])) == (401, "invalid_api_key")


# -- expiry: on every request ----------------------------------------------------


def test_a_cached_key_that_expires_is_refused_even_with_a_long_cache(tmp_path: Path) -> None:
    with run_server(_config(key_cache_seconds=60), tmp_path) as gw:
        expires = datetime.now(UTC) + timedelta(seconds=2)
        key = _new_key(gw, expires_at=expires.isoformat())
        assert datetime.fromisoformat(key["expires_at"]).replace(tzinfo=UTC) == expires
        assert _answer(_models(gw, key["key"])) == (200, None)  # cached for 60 s, with its expiry
        assert datetime.now(UTC) < expires, "the first request came too late to be served before expiry"
        # wall-clock time at which each request was sent and answered
        to_wall = time.time() - time.monotonic()
        seen, refusal = _until_refused(gw, key["key"], seconds=2 + 5)
        assert _answer(refusal) == (401, "expired_api_key")
        deadline = expires.timestamp()
        assert seen[-1][1] + to_wall <= deadline + MARGIN, seen  # refused at most MARGIN after expiry
        # nothing was served once the expiry time had passed
        assert all(sent + to_wall < deadline + 0.05 for sent, _, status in seen if status == 200), seen
        assert _answer(_models(gw, key["key"])) == (401, "expired_api_key")


# -- config ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, -0.5, 300.5, 301])
def test_key_cache_seconds_out_of_bounds_is_a_config_error_naming_it(tmp_path: Path, value: float) -> None:
    path = tmp_path / "imagegate.yaml"
    path.write_text(yaml.safe_dump(_config(key_cache_seconds=value)))
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value).startswith("auth.key_cache_seconds: ") and "\n" not in str(info.value)


@pytest.mark.parametrize("value", [0, 300])
def test_key_cache_seconds_bounds_themselves_are_accepted(tmp_path: Path, value: int) -> None:
    path = tmp_path / "imagegate.yaml"
    path.write_text(yaml.safe_dump(_config(key_cache_seconds=value)))
    assert load_settings(path, environ={}).auth.key_cache_seconds == value


@pytest.mark.parametrize(
    "value,command,message",
    [(-1, "check-config", "greater than or equal to 0"), (301, "serve", "less than or equal to 300")],
)
def test_key_cache_seconds_out_of_bounds_stops_check_config_and_serve(
    tmp_path: Path, value: int, command: str, message: str
) -> None:
    path = tmp_path / "imagegate.yaml"
    path.write_text(yaml.safe_dump({**_config(key_cache_seconds=value), "server": {"data_dir": str(tmp_path / "data")}}))
    args = [str(path)] if command == "check-config" else ["--config", str(path), "--port", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    done = subprocess.run(
        [sys.executable, "-m", "imagegate", command, *args], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("imagegate: config error: auth.key_cache_seconds: ") and message in lines[0], lines
    assert not (tmp_path / "data").exists()  # stopped before touching anything
