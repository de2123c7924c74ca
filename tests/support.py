"""Test support: real imagegate servers on loopback, and image helpers."""

from __future__ import annotations

import base64
import io
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
import yaml
from openai import OpenAI
from PIL import Image
from standin_http import StandInServer

from imagegate.app import create_app
from imagegate.config import load_settings
from imagegate.server import uvicorn_options

SIGNING_KEY = "test-signing-key-0123456789abcdef"

# Every catalog model served by the offline test provider, so the per-model
# rules are exercised through the real server.
BASE_CONFIG: dict[str, Any] = {
    "storage": {"signing_key": SIGNING_KEY},
    "providers": {
        "demo": {"type": "test-pattern"},
        # Renders PNG only, at a fixed size: the gateway must convert.
        "fixed": {"type": "test-pattern", "formats": ["png"], "fixed_size": "640x480"},
    },
    "models": {
        "test-pattern": [{"provider": "demo"}],
        "dall-e-2": [{"provider": "demo"}],
        "dall-e-3": [{"provider": "demo"}],
        "gpt-image-1": [{"provider": "demo"}],
        "gpt-image-1-mini": [{"provider": "demo"}],
        "gpt-image-2": [{"provider": "demo"}],
        "converting": {"rules": "gpt-image-1", "deployments": [{"provider": "fixed"}]},
    },
    "default_model": "test-pattern",
}


@dataclass
class Running:
    base_url: str
    data_dir: Path
    clients: list[OpenAI] = field(default_factory=list)

    def sdk(self, api_key: str = "sk-test", **kwargs: Any) -> OpenAI:
        """An SDK client for this server, closed when the server stops."""
        client = OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, **kwargs)
        self.clients.append(client)
        return client

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30)


@contextmanager
def run_server(config: dict[str, Any], tmp: Path) -> Iterator[Running]:
    """Start the real app under uvicorn on 127.0.0.1 (a free port), stop it after."""
    config = {**config, "server": {**config.get("server", {}), "data_dir": str(tmp / "data")}}
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = tmp / "imagegate.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    settings = load_settings(config_path, environ={})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server_config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on", **uvicorn_options(settings.server))
    server = uvicorn.Server(server_config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("imagegate test server did not start")
        time.sleep(0.01)
    running = Running(f"http://127.0.0.1:{port}", tmp / "data")
    try:
        yield running
    finally:
        for client in running.clients:
            client.close()
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def admin(base_url: str, master: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """Call a server's admin API (``path``: ``/admin/...``) with its master key."""
    return httpx.request(method, base_url + path, headers={"Authorization": f"Bearer {master}"}, timeout=30, **kwargs)


# -- a stand-in upstream and a server in front of it ----------------------------

Up = TypeVar("Up", bound=StandInServer[Any, Any])


def standin_fixtures(start: Callable[[], Up], config_of: Callable[[str], dict[str, Any]], name: str) -> tuple[Any, Any, Any]:
    """The fixtures an upstream's tests start from, for module-level names:
    ``upstream, gateway, up = standin_fixtures(XAIStandIn, gateway_config, "xai")``.

    ``upstream``: the stand-in ``start()`` makes, serving for the whole module
    (the first name must be ``upstream``: the second fixture asks for it);
    ``gateway``: the real server (:func:`run_server`) configured by
    ``config_of(upstream.base_url)``, for the whole module; ``up``: the
    stand-in, ``reset()`` before each test that asks for it."""

    @pytest.fixture(scope="module")
    def upstream() -> Iterator[Up]:
        with start() as standin:
            yield standin

    @pytest.fixture(scope="module")
    def gateway(upstream: Up, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
        with run_server(config_of(upstream.base_url), tmp_path_factory.mktemp(name)) as running:
            yield running

    @pytest.fixture
    def up(upstream: Up) -> Up:
        upstream.reset()
        return upstream

    return upstream, gateway, up


# -- images -------------------------------------------------------------------


def make_image(
    width: int = 64,
    height: int = 64,
    fmt: str = "PNG",
    mode: str = "RGB",
    color: tuple[int, ...] = (40, 120, 200),
) -> bytes:
    img = Image.new(mode, (width, height), color if mode != "RGBA" or len(color) == 4 else (*color, 255))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def make_mask(width: int, height: int, box: tuple[int, int, int, int]) -> bytes:
    """An RGBA mask, opaque everywhere except ``box`` (transparent = edit here)."""
    img = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), box)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def decode_b64(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def decode_bytes(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_with_idat(idat: bytes, width: int = 64, height: int = 64, mode: str = "RGB") -> bytes:
    """A PNG whose chunks are all well-formed (valid CRCs, IEND present) but
    whose pixel data is ``idat``: the header reads fine, decoding fails."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    color_type = {"RGB": 2, "RGBA": 6}[mode]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# Undecodable PNGs: pixel data that is not zlib at all, and none at all.
BROKEN_PNGS = {"garbage_idat": b"\x00not zlib data" * 16, "empty_idat": b""}


# -- a server as its own process (to kill it, read its log) -------------------


@dataclass
class ServerProcess:
    base_url: str
    data_dir: Path
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    def sdk(self, api_key: str = "sk-test", **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        self.proc.kill()
        self.proc.wait(timeout=20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _limit_file_size(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: write() raises


def wait_healthy(base_url: str, proc: subprocess.Popen[Any], log: Callable[[], str], seconds: float = 60) -> None:
    """Until ``base_url`` answers /healthz; a process that exits or never
    answers fails with its log."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"imagegate serve did not start:\n{log()}")
        time.sleep(0.05)


@contextmanager
def serve_process(
    config: dict[str, Any],
    tmp: Path,
    port: int | None = None,
    env: dict[str, str] | None = None,
    max_file_bytes: int | None = None,
) -> Iterator[ServerProcess]:
    """``imagegate serve`` in a child process on 127.0.0.1; its output goes to
    ``tmp/server.log``. Stopped (SIGTERM, then SIGKILL) at the end.
    ``max_file_bytes`` caps every file the server writes (RLIMIT_FSIZE): a
    write past it fails with EFBIG, as a write to a full disk fails."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = {**config, "server": {"data_dir": str(tmp / "data"), **config.get("server", {})}}
    config_path = tmp / "imagegate.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = port or _free_port()
    log_path = tmp / "server.log"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imagegate", "serve", "--config", str(config_path), "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env={**base_env, **(env or {})}, cwd=tmp,
            preexec_fn=None if max_file_bytes is None else partial(_limit_file_size, max_file_bytes),
        )  # fmt: skip
    running = ServerProcess(f"http://127.0.0.1:{port}", Path(config["server"]["data_dir"]), config_path, log_path, proc)
    try:
        wait_healthy(running.base_url, proc, running.log)
        yield running
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
