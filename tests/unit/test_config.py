"""Settings: YAML + environment, checked at start, one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegate.config import load_settings
from imagegate.errors import ConfigError

ISSUE_SHAPE = """
server: {public_url: "http://127.0.0.1:8080", max_body_mb: 120}
auth: {api_keys: ["env:IMAGEGATE_API_KEY"]}
storage: {url: "file://./imagegate-data/images", url_ttl_seconds: 3600}
providers:
  demo: {type: test-pattern}
models:
  test-pattern: [{provider: demo}]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_embedded_defaults() -> None:
    s = load_settings(None, environ={})
    assert list(s.models) == ["test-pattern"]
    assert s.providers["demo"].type == "test-pattern"
    assert s.server.data_dir == Path("imagegate-data")
    assert s.storage_path == Path("imagegate-data/images")
    assert s.storage.url_ttl_seconds == 3600
    assert s.auth.api_keys == []


def test_issue_shape_with_env_secret(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, ISSUE_SHAPE), environ={"IMAGEGATE_API_KEY": "sk-1"})
    assert [k.get_secret_value() for k in s.auth.api_keys] == ["sk-1"]
    assert s.server.public_url == "http://127.0.0.1:8080"
    assert s.storage_path == Path("./imagegate-data/images")
    assert "sk-1" not in repr(s)  # secrets never print


@pytest.mark.parametrize(
    "text,environ,message",
    [
        (ISSUE_SHAPE, {}, "auth.api_keys.0: environment variable IMAGEGATE_API_KEY is not set"),
        ("server: {prot: 1}", {}, "server.prot: unknown key"),
        ("colour: red", {}, "colour: unknown key"),
        ("server: {public_url: 'ftp://x'}", {}, "server.public_url:"),
        ("server: {public_url: 'not a url'}", {}, "server.public_url:"),
        ("server: {port: 'eighty'}", {}, "server.port:"),
        ("storage: {url: 's3://bucket'}", {}, "storage.url: unsupported storage URL"),
        ("providers: {x: {type: dall-e-machine}}\nmodels: {m: [{provider: x}]}", {}, "providers.x.type: unknown provider type"),
        ("providers: {x: {type: test-pattern, colour: 1}}\nmodels: {m: [{provider: x}]}", {}, "providers.x.colour: unknown key"),
        ("providers: {x: {type: test-pattern, fixed_size: huge}}\nmodels: {m: [{provider: x}]}", {}, "providers.x.fixed_size"),
        ("models: {m: [{provider: nobody}]}", {}, "models.m.deployments.0.provider: no provider named 'nobody'"),
        ("models: {m: []}", {}, "models.m.deployments:"),
        ("default_model: zzz", {}, "default_model: 'zzz' is not in models"),
        ("server: [1, 2]", {}, "server:"),
        ("- 1", {}, "the top level must be a mapping"),
        ("server: {port: [", {}, "invalid YAML at line"),
        ("", {"IMAGEGATE_SERVER__PROT": "1"}, "server.prot: unknown key"),
        ("auth: {api_keys: ['']}", {}, "auth.api_keys: an API key is empty"),
        ("models: {a: {deployments: [{provider: demo}], fallbacks: [nope]}}", {}, "models.a.fallbacks: no model named 'nope'"),
        (
            "models: {a: {deployments: [{provider: demo}], fallbacks: [b]}, b: {deployments: [{provider: demo}], fallbacks: [a]}}",
            {},
            "the chain leads back to",
        ),
        ("models: {a: {deployments: [{provider: demo, weight: 0}]}}", {}, "models.a.deployments.0.weight"),
        ("models: {a: {deployments: [{provider: demo}], fallback_on: [boredom]}}", {}, "models.a.fallback_on.0"),
        ("routing: {max_attempts: 0}", {}, "routing.max_attempts"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text), environ=environ)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_environment_overrides_win(tmp_path: Path) -> None:
    path = _write(tmp_path, "server: {port: 9000, host: 0.0.0.0}")
    s = load_settings(path, environ={"IMAGEGATE_SERVER__PORT": "9100", "IMAGEGATE_SERVER__FETCH__ALLOW_PRIVATE_NETWORKS": "true"})
    assert s.server.port == 9100 and s.server.host == "0.0.0.0"
    assert s.server.fetch.allow_private_networks is True
    # variables without the nesting marker are not overrides (IMAGEGATE_API_KEY is a secret's name)
    assert load_settings(path, environ={"IMAGEGATE_API_KEY": "x"}).server.port == 9000


def test_model_route_long_form(tmp_path: Path) -> None:
    text = """
providers: {demo: {type: test-pattern}}
models:
  fast: {rules: gpt-image-1-mini, deployments: [{provider: demo, model: upstream-name}]}
"""
    s = load_settings(_write(tmp_path, text), environ={})
    assert s.models["fast"].rules == "gpt-image-1-mini"
    assert s.models["fast"].deployments[0].model == "upstream-name"


SHORTCUT_ENV = {
    "IMAGEGATE_MASTER_KEY": "m" * 32,
    "IMAGEGATE_API_KEY": "sk-static",
    "IMAGEGATE_ENCRYPTION_KEY": "3kP1tqDYhW9cLZ1Zl7cL3lP2gq8r0mCUpo2Q2tWh8Kk=",
    "IMAGEGATE_SIGNING_KEY": "s" * 32,
}


def test_the_documented_variables_fill_the_embedded_defaults() -> None:
    s = load_settings(None, environ=SHORTCUT_ENV)
    assert s.auth.master_key is not None and s.auth.master_key.get_secret_value() == "m" * 32
    assert [k.get_secret_value() for k in s.auth.api_keys] == ["sk-static"]
    assert s.auth.encryption_key is not None and s.storage.signing_key is not None
    assert s.auth.enforced and not s.auth.follows_database_keys
    assert not load_settings(None, environ={"IMAGEGATE_MASTER_KEY": ""}).auth.enforced  # empty: unset


def test_the_file_and_overrides_win_over_the_documented_variables(tmp_path: Path) -> None:
    path = _write(tmp_path, "auth: {master_key: null, required: false}\n")
    s = load_settings(path, environ={**SHORTCUT_ENV, "IMAGEGATE_AUTH__API_KEYS": "[sk-override]"})
    assert s.auth.master_key is None  # the file said none
    assert [k.get_secret_value() for k in s.auth.api_keys] == ["sk-override"]
    assert s.auth.required is False and not s.auth.enforced and not s.auth.follows_database_keys
    with pytest.raises(ConfigError, match="auth.master_key: the master key must be at least 16 characters"):
        load_settings(None, environ={"IMAGEGATE_MASTER_KEY": "short"})
