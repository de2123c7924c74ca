"""Every failure is answered: the OpenAI envelope, ``x-request-id``, and the
connection kept, even for an exception nobody expected."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from imagegate.storage.local import LocalStorage
from support import BASE_CONFIG, Running


@pytest.mark.parametrize(
    "query",
    [
        "expires=%C2%B2&signature=00",  # '²'.isdigit() is True; int('²') raises
        "expires=%D9%A3&signature=00",  # Arabic-Indic digit three
        "expires=12&signature=%C3%A9",  # hmac.compare_digest refuses non-ASCII text
        "expires=12%0A&signature=" + "0" * 64,
        "expires=99999999999&signature=" + "A" * 64,
    ],
)
def test_junk_in_a_signed_url_is_a_404_not_a_500(server: Running, query: str) -> None:
    with server.http() as http:
        r = http.get(f"/v1/images/files/{'a' * 24}.png?{query}")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "invalid_signature"
    assert r.headers["x-request-id"].startswith("req_")


def _get(conn: http.client.HTTPConnection, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def test_an_unexpected_exception_is_an_enveloped_500_with_request_id(
    make_server: Callable[[dict[str, Any]], Running],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    running = make_server(BASE_CONFIG)
    url = running.sdk().images.generate(model="test-pattern", prompt="x", size="64x64", response_format="url").data[0].url
    assert url is not None

    def broken(self: LocalStorage, key: str) -> None:
        raise RuntimeError("a bug nobody foresaw")

    monkeypatch.setattr(LocalStorage, "_open", broken)
    path = url.removeprefix(running.base_url)
    conn = http.client.HTTPConnection(running.base_url.removeprefix("http://"), timeout=10)
    try:
        with caplog.at_level(logging.ERROR):
            status, headers, raw = _get(conn, path, **{"x-request-id": "trace-me-42"})
        assert status == 500
        assert json.loads(raw) == {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
            }
        }
        assert headers["x-request-id"] == "trace-me-42"
        assert headers["x-imagegate-cost-usd"] == "0.000000"
        assert b"a bug nobody foresaw" not in raw
        # The connection is kept: the next request on the same socket is answered.
        assert conn.sock is not None and headers.get("connection") != "close"
        monkeypatch.undo()
        assert _get(conn, path)[0] == 200
    finally:
        conn.close()
    # Logged once, with the request id and the traceback; not a second time by the server.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "trace-me-42" in errors[0].getMessage() and errors[0].exc_info is not None
    assert "Exception in ASGI application" not in capfd.readouterr().err
