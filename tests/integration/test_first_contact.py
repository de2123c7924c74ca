"""A newcomer's first minutes, as the README tells them: the key flow
enforces keys exactly as written, and the start banner's request works."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from support import BASE_CONFIG, _free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MASTER = "master-key-for-the-tests-0123456789"


def _clean_env(**extra: str) -> dict[str, str]:
    """The test runner's environment without any IMAGEGATE_ variable, the
    virtualenv's commands first on PATH (as after `pip install -e .`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra}


def _readme_key_commands() -> tuple[str, str]:
    """The README's first two key commands, verbatim: the export and `keys create`."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Keys, budgets and cost") :]
    block = re.search(r"```sh\n(.+?)\n```", section, re.S)
    assert block is not None
    lines = block.group(1).splitlines()
    export = next(line for line in lines if line.startswith("export IMAGEGATE_MASTER_KEY="))
    create = next(line for line in lines if line.startswith("imagegate keys create --name alice"))
    return export, create


@contextmanager
def _serve(cwd: Path, env: dict[str, str], *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`imagegate serve` as a user starts it; yields its base URL and process (output in cwd/serve.log)."""
    port = _free_port()
    log = (cwd / "serve.log").open("w")
    proc = subprocess.Popen([str(BIN / "imagegate"), "serve", "--port", str(port), *args], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, (cwd / "serve.log").read_text)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def _generate(base: str, key: str | None = None, **body: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{base}/v1/images/generations", json={"model": "test-pattern", "prompt": "x", "size": "64x64", **body},
                      headers=headers, timeout=30)  # fmt: skip


def test_the_readme_key_flow_enforces_keys_as_written(tmp_path: Path) -> None:
    export, create = _readme_key_commands()
    # The README's commands in one shell, on the embedded defaults (no config file).
    script = f'set -e\n{export}\n{create}\necho "MASTER=$IMAGEGATE_MASTER_KEY"\n'
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    master = re.search(r"^MASTER=(\S+)$", done.stdout, re.M).group(1)  # type: ignore[union-attr]
    alice = re.search(r"^\s*key: (ig-\S+)$", done.stdout, re.M).group(1)  # type: ignore[union-attr]
    assert "warning" not in done.stderr.lower()  # this config enforces keys: nothing to warn about

    # `imagegate serve` in the same environment; a price makes alice's $1 budget bite
    # ($0.30 an image: three fit), and a free port stands in for 8080.
    env = _clean_env(IMAGEGATE_MASTER_KEY=master, **{"IMAGEGATE_PRICING__TEST-PATTERN__PER_IMAGE": "0.3"})
    with _serve(tmp_path, env) as (base, _):
        anonymous = _generate(base)
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.json()["error"]["code"] == "invalid_api_key"
        assert _generate(base, "ig-not-a-real-key").status_code == 401

        admin = httpx.get(f"{base}/admin/keys", headers={"Authorization": f"Bearer {master}"}, timeout=30)
        assert admin.status_code == 200, admin.text
        (listed,) = admin.json()["data"]
        assert (listed["name"], listed["team"], listed["rpm"], listed["budget_usd"]) == ("alice", "design", 10, "1.000000")

        answers = [_generate(base, alice) for _ in range(11)]
        codes = [(a.status_code, a.json()["error"]["code"] if a.status_code != 200 else None) for a in answers]
        # $1 budget: three images at $0.30; --rpm 10: the eleventh request of the minute is refused.
        assert codes == [(200, None)] * 3 + [(429, "insufficient_quota")] * 7 + [(429, "rate_limit_exceeded")]
        assert httpx.get(f"{base}/admin/keys", headers={"Authorization": f"Bearer {alice}"}, timeout=30).status_code == 403


def _banner_request(log: str, env: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
    """The banner's curl command, read as a shell reads it: URL, headers, body."""
    start = log.index("  try: ")
    command = log[start + len("  try: ") :].split("\n  or:", 1)[0].replace("\\\n", " ")
    argv = shlex.split(command)
    assert argv[:2] == ["curl", "-s"]
    url, headers, data = argv[2], {}, b""
    rest = iter(argv[3:])
    for arg in rest:
        value = next(rest)
        if arg == "-H":
            name, _, val = value.partition(":")
            headers[name.strip()] = val.strip().replace("$IMAGEGATE_MASTER_KEY", env.get("IMAGEGATE_MASTER_KEY", ""))
        else:
            assert arg == "-d"
            data = value.encode()
    return url, headers, data


@pytest.mark.parametrize(
    "model,master",
    [("gpt-image-1", None), ("gpt-image-1", MASTER), ("dall-e-3", MASTER)],
    ids=["gpt-image-1-open", "gpt-image-1-master-key", "dall-e-3-master-key"],
)
def test_the_banner_request_works_as_printed(tmp_path: Path, model: str, master: str | None) -> None:
    config = {
        "storage": BASE_CONFIG["storage"],
        "providers": {"demo": {"type": "test-pattern"}},
        "models": {model: [{"provider": "demo"}], "test-pattern": [{"provider": "demo"}]},
    }
    path = tmp_path / "imagegate.yaml"
    path.write_text(yaml.safe_dump(config))
    env = _clean_env(**({"IMAGEGATE_MASTER_KEY": master} if master else {}))
    with _serve(tmp_path, env, "--config", str(path)) as (base, _):
        url, headers, data = _banner_request((tmp_path / "serve.log").read_text(), env)
        body = json.loads(data)
        assert body["model"] == model  # the first model, with a size it takes (512x512 is not one)
        assert body["size"] in {"gpt-image-1": ("1024x1024", "1536x1024", "1024x1536"), "dall-e-3": ("1024x1024",)}[model]
        assert headers.get("Authorization") == (f"Bearer {master}" if master else None)
        assert url == f"{base}/v1/images/generations"
        answer = httpx.post(url, content=data, headers=headers, timeout=60)
        assert answer.status_code == 200, (data, answer.text)
        assert len(answer.json()["data"]) == 1


def _keys_create(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagegate", "keys", "create", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, env=_clean_env(), cwd=config.parent)  # fmt: skip


def test_a_key_created_by_the_cli_makes_a_running_open_server_require_keys(tmp_path: Path, make_server) -> None:  # noqa: ANN001
    server = make_server({k: v for k, v in BASE_CONFIG.items()})  # no master key, no static keys
    assert _generate(server.base_url).status_code == 200  # open while no key exists
    made = _keys_create(server.data_dir.parent / "imagegate.yaml", "--name", "bob")
    assert made.returncode == 0, made.stderr
    assert "now refuses requests without a key" in made.stderr
    bob = re.search(r"^\s*key: (ig-\S+)$", made.stdout, re.M).group(1)  # type: ignore[union-attr]
    deadline = time.monotonic() + 10  # the server asks the database again every few seconds
    while (status := _generate(server.base_url).status_code) == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 401
    assert _generate(server.base_url, "ig-wrong").status_code == 401
    assert _generate(server.base_url, bob).status_code == 200


def test_required_false_serves_without_a_key_and_says_so_loudly(tmp_path: Path) -> None:
    config = {
        "auth": {"required": False},
        "storage": BASE_CONFIG["storage"],
        "providers": {"demo": {"type": "test-pattern"}},
        "models": {"test-pattern": [{"provider": "demo"}]},
    }
    path = tmp_path / "imagegate.yaml"
    path.write_text(yaml.safe_dump(config))
    made = _keys_create(path, "--name", "carol", "--rpm", "1")
    assert made.returncode == 0 and "warning: this config says auth.required: false" in made.stderr
    carol = re.search(r"^\s*key: (ig-\S+)$", made.stdout, re.M).group(1)  # type: ignore[union-attr]
    with _serve(tmp_path, _clean_env(IMAGEGATE_MASTER_KEY=MASTER), "--config", str(path)) as (base, _):
        assert _generate(base).status_code == 200  # explicitly open, though keys (and a master key) exist
        assert [_generate(base, carol).status_code for _ in range(2)] == [200, 429]  # a key sent still has its limits
        log = (tmp_path / "serve.log").read_text()
    assert "WARNING" in log and "AUTH IS OFF (auth.required: false)" in log
