"""HTTP-layer limits of the real ``imagegate serve`` process, driven with raw
sockets: request head size, head and body timeouts, the connection cap; and
the ``fetch.max_mb`` cap on ``data:`` URLs in JSON edits."""

from __future__ import annotations

import io
import json
import os
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from support import BASE_CONFIG, ServerProcess, data_url, make_image, serve_process

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 1.5
LIMITS = {
    "max_header_kb": 16,
    "header_timeout_seconds": HEADER_TIMEOUT,
    "body_timeout_seconds": BODY_TIMEOUT,
    "max_connections": 400,
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = {**BASE_CONFIG, "server": {**LIMITS, "log_level": "warning"}}
    with serve_process(config, tmp_path_factory.mktemp("http-limits")) as running:
        yield running


def _connect(server: ServerProcess) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset ends it too)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _envelope(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]


def _healthy(server: ServerProcess) -> None:
    assert httpx.get(f"{server.base_url}/healthz", timeout=10).status_code == 200


def test_slowloris_connections_are_cut_after_the_header_timeout(gateway: ServerProcess) -> None:
    """200 clients trickle header bytes and never finish: each is answered
    408 and closed once the head deadline passes, however often it sends; a
    normal client is served meanwhile."""
    selector = selectors.DefaultSelector()
    started = time.monotonic()
    received: dict[socket.socket, bytearray] = {}
    for _ in range(200):
        sock = _connect(gateway)
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        received[sock] = bytearray()
    try:
        gateway.sdk().images.generate(model="test-pattern", prompt="a lighthouse", size="256x256")
        assert not selector.select(timeout=0), "an attacker was answered before the normal request was"

        closed_at: dict[socket.socket, float] = {}
        deadline = started + HEADER_TIMEOUT + 15
        while len(closed_at) < len(received) and time.monotonic() < deadline:
            for sock in received.keys() - closed_at.keys():  # a trickle must not extend the deadline
                try:
                    sock.send(b"X-Slow: 1\r\n")
                except OSError:
                    pass
            for key, _ in selector.select(timeout=0.2):
                try:
                    chunk = key.fileobj.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                received[key.fileobj] += chunk
                if not chunk:
                    closed_at[key.fileobj] = time.monotonic()
                    selector.unregister(key.fileobj)
    finally:
        for sock in received:
            sock.close()
        selector.close()
    assert len(closed_at) == len(received), f"{len(received) - len(closed_at)} slow connections were still open"
    assert min(closed_at.values()) - started >= HEADER_TIMEOUT * 0.9
    answers = {bytes(data.split(b"\r\n", 1)[0]) for data in received.values()}
    assert answers == {b"HTTP/1.1 408 Request Timeout"}
    assert _envelope(bytes(next(iter(received.values()))))["code"] == "request_timeout"
    _healthy(gateway)


def test_a_kept_alive_connection_gets_the_same_head_deadline(gateway: ServerProcess) -> None:
    """After a first request is served, a second head that never completes
    is cut off the same way (its deadline starts with its first byte)."""
    sock = _connect(gateway)
    with sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"}") and (chunk := sock.recv(65536)):  # /healthz answers a JSON object
            first += chunk
        assert _status(first) == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        second = _read_all(sock)
        waited = time.monotonic() - started
    assert _status(second) == 408
    assert waited >= HEADER_TIMEOUT * 0.9


def test_an_oversized_header_gets_431_and_the_server_goes_on(gateway: ServerProcess) -> None:
    sock = _connect(gateway)
    with sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may stop reading once it has answered
        response = _read_all(sock)
    assert _status(response) == 431, response[:200]
    error = _envelope(response)
    assert error["code"] == "request_header_too_large" and "16 KB" in error["message"]
    assert b"connection: close" in response.lower()
    _healthy(gateway)


def test_a_header_just_under_the_limit_is_served(gateway: ServerProcess) -> None:
    response = httpx.get(f"{gateway.base_url}/healthz", headers={"X-Padding": "a" * 15_000}, timeout=10)
    assert response.status_code == 200


def test_a_stalled_body_is_dropped_after_the_body_timeout(gateway: ServerProcess) -> None:
    sock = _connect(gateway)
    with sock:
        sock.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 200\r\n\r\n{"model": "test-pattern", '
        )
        started = time.monotonic()
        response = _read_all(sock)  # the server closes; the timeout of 10 s would raise
        waited = time.monotonic() - started
    assert waited >= BODY_TIMEOUT * 0.9
    assert not response.startswith(b"HTTP/1.1 2")
    _healthy(gateway)


def test_a_slow_body_that_keeps_coming_is_not_cut(gateway: ServerProcess) -> None:
    """The body timeout is the longest pause, not the whole upload's time."""
    body = json.dumps({"model": "test-pattern", "prompt": "a lighthouse", "size": "256x256"}).encode()
    pieces = [body[i : i + 8] for i in range(0, len(body), 8)]
    pause = BODY_TIMEOUT * 2.5 / len(pieces)
    assert pause < BODY_TIMEOUT / 2
    sock = _connect(gateway)
    with sock:
        sock.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        for piece in pieces:
            time.sleep(pause)
            sock.sendall(piece)
        response = _read_all(sock)
    assert _status(response) == 200, response[:300]


def test_requests_beyond_max_connections_get_503(tmp_path: Path) -> None:
    config = {**BASE_CONFIG, "server": {"max_connections": 20, "log_level": "warning"}}
    with serve_process(config, tmp_path) as server:
        idle = [_connect(server) for _ in range(20)]
        try:
            time.sleep(0.3)  # let the server accept them
            response = httpx.get(f"{server.base_url}/healthz", timeout=10)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "server_busy"
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.base_url}/healthz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "still refused after the idle connections closed"
            time.sleep(0.1)
        assert "max_connections" in server.log()


# -- data: URLs count against fetch.max_mb ---------------------------------------


def test_a_data_url_over_fetch_max_mb_is_refused_naming_the_field(make_server) -> None:
    server = make_server({**BASE_CONFIG, "server": {"fetch": {"max_mb": 1}}})
    small = make_image(64, 64)
    buf = io.BytesIO()
    Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3)).save(buf, "PNG")  # noise: about 1.4 MB
    big = buf.getvalue()
    assert len(big) > 1024 * 1024
    with server.http() as http:
        body = {"model": "gpt-image-1", "prompt": "x", "images": [{"image_url": data_url(small)}, {"image_url": data_url(big)}]}
        refused = http.post("/v1/images/edits", json=body)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("image_too_large", "images[1]")
        assert "1 MB" in error["message"]
        body["images"] = body["images"][:1]
        assert http.post("/v1/images/edits", json=body).status_code == 200
