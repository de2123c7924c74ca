"""The admin commands, run as an operator runs them, against the database a
running server uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support import run_server

MASTER = "master-key-for-the-tests-0123456789"


def _config(tmp_path: Path, **extra: Any) -> Path:
    cfg = {
        "server": {"data_dir": str(tmp_path / "data")},
        "auth": {"master_key": MASTER},
        "pricing": {"test-pattern": {"per_image": 0.1}},
        "providers": {"demo": {"type": "test-pattern"}},
        "models": {"test-pattern": [{"provider": "demo"}]},
        **extra,
    }
    path = tmp_path / "imagegate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    return subprocess.run([sys.executable, "-m", "imagegate", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env={**base, **(env or {})})  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_keys_lifecycle_from_the_command_line(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert "up to date" in ok(cli(config, "db", "upgrade"))
    created = json.loads(ok(cli(config, "keys", "create", "--name", "alice", "--team", "design", "--budget", "0.3",
                                "--rpm", "10", "--models", "test-pattern", "--json")))  # fmt: skip
    secret = created["key"]
    assert secret.startswith("ig-") and created["budget_usd"] == "0.300000" and created["models"] == ["test-pattern"]
    listing = ok(cli(config, "keys", "list"))
    assert "alice" in listing and created["prefix"] in listing and secret not in listing
    shown = ok(cli(config, "keys", "show", created["prefix"]))
    assert created["id"] in shown and secret not in shown
    updated = json.loads(ok(cli(config, "keys", "update", created["id"], "--ipm", "5", "--clear", "rpm", "--json")))
    assert (updated["ipm"], updated["rpm"]) == (5, None)
    assert "design" in ok(cli(config, "teams", "set", "design", "--budget", "10", "--period", "monthly"))

    # a server on the same database: the key works there, and its usage shows up here
    cfg = yaml.safe_load(config.read_text())
    with run_server(cfg, tmp_path) as server:
        assert server.data_dir == tmp_path / "data"
        headers = {"Authorization": f"Bearer {secret}"}
        body = {"model": "test-pattern", "prompt": "x", "size": "64x64"}
        codes = [httpx.post(f"{server.base_url}/v1/images/generations", json=body, headers=headers).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]  # $0.30 budget at $0.10 an image
    table = ok(cli(config, "usage", "--by", "key,model"))
    assert created["id"] in table and "0.300000" in table
    csv_out = ok(cli(config, "usage", "--by", "model", "--format", "csv"))
    assert csv_out.splitlines()[0] == "model,requests,images,errors,input_tokens,output_tokens,cost_usd"
    assert csv_out.splitlines()[1] == "test-pattern,4,3,1,0,0,0.300000"
    bad = cli(config, "usage", "--by", "colour")
    assert bad.returncode != 0 and "colour" in bad.stderr

    assert "revoked" in ok(cli(config, "keys", "revoke", created["id"]))
    assert json.loads(ok(cli(config, "keys", "show", created["id"], "--json")))["enabled"] is False
    missing = cli(config, "keys", "show", "key_nope")
    assert missing.returncode == 1 and "No key" in missing.stderr


def test_virtual_keys_from_the_command_line(tmp_path: Path) -> None:
    encryption_key = ok(subprocess.run([sys.executable, "-m", "imagegate", "virtual-keys", "new-encryption-key"],
                                       capture_output=True, text=True, timeout=60)).strip()  # fmt: skip
    config = _config(tmp_path, auth={"master_key": MASTER, "encryption_key": encryption_key})
    assert "stored" in ok(cli(config, "virtual-keys", "add", "vk1", "--provider", "demo", "--secret-env", "VK_SECRET",
                              env={"VK_SECRET": "sk-top-secret"}))  # fmt: skip
    assert b"sk-top-secret" not in (tmp_path / "data" / "imagegate.db").read_bytes()
    assert "vk1" in ok(cli(config, "virtual-keys", "list"))
    # owners: none (admin keys only) until granted; --team/--key on add, grant and revoke
    listed = json.loads(ok(cli(config, "virtual-keys", "list", "--json")))
    assert listed == [{"name": "vk1", "provider": "demo", "teams": [], "keys": []}]
    key = json.loads(ok(cli(config, "keys", "create", "--name", "k", "--json")))
    granted = ok(cli(config, "virtual-keys", "grant", "vk1", "--team", "design", "--key", key["prefix"]))
    assert "design" in granted and key["id"] in granted
    shown = json.loads(ok(cli(config, "virtual-keys", "list", "--json")))
    assert shown == [{"name": "vk1", "provider": "demo", "teams": ["design"], "keys": [key["id"]]}]
    table = ok(cli(config, "virtual-keys", "list"))
    assert "design" in table and key["id"] in table and "sk-top-secret" not in table
    assert "admin keys only" in ok(cli(config, "virtual-keys", "revoke", "vk1", "--team", "design", "--key", key["id"]))
    assert "team-x" in ok(cli(config, "virtual-keys", "add", "vk3", "--provider", "demo", "--secret-env", "VK_SECRET",
                              "--team", "team-x", env={"VK_SECRET": "sk-other"}))  # fmt: skip
    unknown_key = cli(config, "virtual-keys", "grant", "vk3", "--key", "key_nope")
    assert unknown_key.returncode == 1 and "No key" in unknown_key.stderr
    assert cli(config, "virtual-keys", "grant", "vk3").returncode == 2  # nothing to grant
    assert cli(config, "virtual-keys", "grant", "nope", "--team", "t").returncode == 1
    assert "removed" in ok(cli(config, "virtual-keys", "remove", "vk1"))
    unset = cli(config, "virtual-keys", "add", "vk2", "--provider", "demo", "--secret-env", "NOT_SET_ANYWHERE")
    assert unset.returncode == 2 and "NOT_SET_ANYWHERE is not set" in unset.stderr


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"auth": {"master_key": "short"}}, "auth.master_key: the master key must be at least 16 characters"),
        ({"auth": {"encryption_key": "not-fernet"}}, "auth.encryption_key: not a Fernet key"),
        ({"database": {"url": "mysql://x"}}, "database.url: unsupported database URL"),
        ({"rate_limits": {"storage_url": "memcached://x"}}, "rate_limits.storage_url: unsupported"),
        ({"pricing": {"test-pattern": {}}}, "pricing.test-pattern: give either per_image, per_megapixel or image_output_per_1m"),
        ({"pricing": {"test-pattern": {"per_image": -1}}}, "prices cannot be negative"),
    ],
)
def test_accounting_config_errors(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    result = cli(_config(tmp_path, **extra), "keys", "list")
    assert result.returncode == 2
    assert message in result.stderr
