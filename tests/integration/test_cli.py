"""The command line, run as a user runs it (subprocesses)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI

from support import decode_b64, decode_bytes

IMAGEGATE = [sys.executable, "-m", "imagegate"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    return {**env, **extra}


def test_serve_on_embedded_defaults_then_sdk_example(tmp_path: Path) -> None:
    """The README's first command and SDK example, on a fresh directory."""
    port = _free_port()
    proc = subprocess.Popen(
        [*IMAGEGATE, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    closing: list[OpenAI] = []
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.1)
        client = OpenAI(base_url=f"{base}/v1", api_key="anything", max_retries=0)
        closing.append(client)
        b64 = client.images.generate(model="test-pattern", prompt="a lighthouse at dusk", size="1024x1024")
        img = decode_b64(b64.data[0].b64_json)
        assert (img.format, img.size) == ("PNG", (1024, 1024))
        hosted = client.images.generate(model="test-pattern", prompt="a lighthouse", size="512x512", response_format="url")
        fetched = decode_bytes(httpx.get(hosted.data[0].url).content)
        assert (fetched.format, fetched.size) == ("PNG", (512, 512))
        assert (tmp_path / "imagegate-data" / "images").is_dir()
        assert (tmp_path / "imagegate-data" / "signing.key").stat().st_mode & 0o077 == 0
    finally:
        for c in closing:
            c.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert f"listening on http://127.0.0.1:{port}" in out
    assert "curl" in out and "OpenAI(base_url=" in out
    # uvicorn shuts down cleanly, then re-raises SIGTERM so the exit status tells why
    assert "Application shutdown complete" in out
    assert proc.returncode in (0, -signal.SIGTERM)


def test_serve_with_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {prot: 1}\n")
    r = subprocess.run([*IMAGEGATE, "serve", "--config", str(bad)], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "imagegate: config error: server.prot: unknown key"


def test_check_config(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "auth: {api_keys: ['env:MY_KEY']}\nproviders: {demo: {type: test-pattern}}\n"
        "models: {test-pattern: [{provider: demo}], mini: {rules: gpt-image-1-mini, deployments: [{provider: demo}]}}\n"
    )
    ok = subprocess.run([*IMAGEGATE, "check-config", str(good)], env=_env(MY_KEY="k"), capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "2 model(s)" in ok.stdout
    missing = subprocess.run([*IMAGEGATE, "check-config", str(good)], env=_env(), capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "auth.api_keys.0: environment variable MY_KEY is not set" in missing.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(
        "providers: {demo: {type: test-pattern}}\nmodels: {mystery: {rules: nope, deployments: [{provider: demo}]}}\n"
    )
    r = subprocess.run([*IMAGEGATE, "check-config", str(unknown)], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "models.mystery.rules: no catalog entry 'nope'" in r.stderr


def test_version() -> None:
    r = subprocess.run([*IMAGEGATE, "version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("imagegate 0.")
