"""What `imagegate serve` writes to its log: no secrets from query strings,
no tracebacks for a client that hangs up."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from support import BASE_CONFIG, ServerProcess, serve_process


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve_process(BASE_CONFIG, tmp_path_factory.mktemp("logs")) as running:
        yield running


def _log_after(running: ServerProcess, mark: int, text: str, timeout: float = 10) -> str:
    """The log written since ``mark`` (a length of the log), once ``text`` is in it."""
    deadline = time.monotonic() + timeout
    while text not in (tail := running.log()[mark:]):
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{tail}"
        time.sleep(0.05)
    return tail


def test_a_client_that_hangs_up_mid_upload_is_one_info_line(served: ServerProcess) -> None:
    mark = len(served.log())
    part = b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    body = part + b"\x89PNG\r\n\x1a\n" + b"\0" * 4096
    head = (
        "POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary=b0undary\r\nContent-Length: {len(body) + 1_000_000}\r\n\r\n"
    ).encode()
    host, port = urlsplit(served.base_url).hostname, urlsplit(served.base_url).port
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(head + body)
        time.sleep(0.2)  # the server is reading the body now; then the client goes away
    tail = _log_after(served, mark, "client disconnected")
    time.sleep(0.3)  # anything logged after it would show here
    tail = served.log()[mark:]
    assert "Traceback" not in tail and "ERROR" not in tail, tail
    (line,) = [ln for ln in tail.splitlines() if "disconnected" in ln]
    assert " INFO imagegate.api: " in line and "POST /v1/images/edits" in line and "request req_" in line


def test_the_access_log_keeps_no_query_string_values(served: ServerProcess) -> None:
    with served.sdk() as client:
        url = client.images.generate(model="test-pattern", prompt="x", size="64x64", response_format="url").data[0].url
    assert url is not None
    signature = parse_qs(urlsplit(url).query)["signature"][0]
    mark = len(served.log())
    assert httpx.get(url).status_code == 200
    assert httpx.get(f"{served.base_url}/v1/models?api_key=sk-live-very-secret-123&sk-bare-secret-456").status_code == 200
    tail = _log_after(served, mark, "GET /v1/models")
    assert signature not in tail and "sk-live-very-secret-123" not in tail and "sk-bare-secret-456" not in tail, tail
    path = urlsplit(url).path
    assert f'"GET {path}?expires=***&signature=*** HTTP/1.1" 200' in tail
    assert '"GET /v1/models?api_key=***&*** HTTP/1.1" 200' in tail


def test_redact_query_keeps_paths_and_names() -> None:
    from imagegate.api.accesslog import redact_query

    assert redact_query("/v1/models") == "/v1/models"
    assert redact_query("/f?expires=1&signature=ab") == "/f?expires=***&signature=***"
    assert redact_query("/f?" + "n" * 65 + "=1&=2") == "/f?***&=***"
