"""HTTP behaviour: limits, content types, auth, discovery, hosted URLs."""

from __future__ import annotations

import hashlib
import hmac
import socket
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest

from support import BASE_CONFIG, SIGNING_KEY, decode_bytes


def _err(r: httpx.Response) -> dict:
    return r.json()["error"]


def test_body_over_limit_by_content_length_is_413_before_reading(make_server) -> None:
    running = make_server({**BASE_CONFIG, "server": {"max_body_mb": 1}})
    with socket.create_connection(("127.0.0.1", int(running.base_url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(
            b"POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )  # announce 50 MB, send none of it
        sock.settimeout(10)
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 413")
    assert '"code":"request_too_large"' in reply


def test_chunked_body_over_limit_is_413(make_server) -> None:
    running = make_server({**BASE_CONFIG, "server": {"max_body_mb": 1}})

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 65536

    r = httpx.post(f"{running.base_url}/v1/images/generations", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert _err(r)["code"] == "request_too_large"
    # the server is still fine afterwards
    assert httpx.get(f"{running.base_url}/healthz").status_code == 200


@pytest.mark.parametrize(
    "path,content_type",
    [
        ("/v1/images/generations", "text/plain"),
        ("/v1/images/generations", "multipart/form-data; boundary=x"),
        ("/v1/images/edits", "application/x-www-form-urlencoded"),
        ("/v1/images/variations", "application/json"),
        ("/v1/images/generations", ""),
    ],
)
def test_wrong_content_type_is_415(server, path: str, content_type: str) -> None:
    r = httpx.post(server.base_url + path, content=b'{"prompt": "x"}', headers={"Content-Type": content_type})
    assert r.status_code == 415
    assert _err(r)["code"] == "unsupported_media_type"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"", b'"prompt"'])
def test_malformed_json_is_400(server, body: bytes) -> None:
    r = httpx.post(f"{server.base_url}/v1/images/generations", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert _err(r)["code"] == "invalid_json"


def test_malformed_multipart_is_400(server) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/images/edits",
        content=b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 400
    assert _err(r)["code"] == "invalid_multipart"


@pytest.mark.parametrize(
    "content_type,body,param,code",
    [
        ("multipart/form-data", b"--b\r\n", None, "invalid_multipart"),  # no boundary parameter
        (
            "multipart/form-data; boundary=b",  # truncated: no closing boundary
            b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhello',
            None,
            "invalid_multipart",
        ),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n\xff\xfe\r\n--b--\r\n',
            "prompt",
            "invalid_value",
        ),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n' + b"x" * (1024 * 1024 + 1) + b"\r\n--b--\r\n",
            None,
            "invalid_multipart",
        ),
    ],
    ids=["no-boundary", "truncated", "not-utf8", "text-field-over-1MB"],
)
def test_multipart_failures(server, content_type: str, body: bytes, param: str | None, code: str) -> None:
    r = httpx.post(f"{server.base_url}/v1/images/edits", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 400, r.text
    assert (_err(r)["param"], _err(r)["code"]) == (param, code)


def test_unknown_route_and_method_use_the_envelope(server) -> None:
    r = httpx.get(f"{server.base_url}/v1/nothing")
    assert r.status_code == 404 and _err(r)["type"] == "invalid_request_error"
    r = httpx.get(f"{server.base_url}/v1/images/generations")
    assert r.status_code == 405 and _err(r)["code"] == "method_not_allowed"


def test_disconnect_mid_upload_leaves_the_server_healthy(server) -> None:
    host, port = "127.0.0.1", int(server.base_url.rsplit(":", 1)[1])
    for _ in range(5):
        with socket.create_connection((host, port)) as sock:
            sock.sendall(
                b"POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b'Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
                + b"\x89PNG"
                + b"\0" * 1000
            )
    r = httpx.post(f"{server.base_url}/v1/images/generations", json={"prompt": "still alive", "size": "256x256"})
    assert r.status_code == 200


# -- auth ---------------------------------------------------------------------


@pytest.fixture
def authed(make_server, monkeypatch):
    return make_server({**BASE_CONFIG, "auth": {"api_keys": ["sk-good-1", "sk-good-2"]}})


def test_api_key_required_when_configured(authed) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        authed.sdk(api_key="sk-wrong").images.generate(model="test-pattern", prompt="x", size="256x256")
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    r = httpx.post(f"{authed.base_url}/v1/images/generations", json={"prompt": "x"})
    assert r.status_code == 401 and _err(r)["code"] == "invalid_api_key"
    r = httpx.get(f"{authed.base_url}/v1/models", headers={"Authorization": "Basic c2stZ29vZC0x"})
    assert r.status_code == 401
    for key in ("sk-good-1", "sk-good-2"):
        result = authed.sdk(api_key=key).images.generate(model="test-pattern", prompt="x", size="256x256")
        assert decode_bytes(__import__("base64").b64decode(result.data[0].b64_json)).size == (256, 256)
    # health checks and signed file URLs need no key
    assert httpx.get(f"{authed.base_url}/healthz").status_code == 200


# -- discovery ----------------------------------------------------------------


def test_models_list(server) -> None:
    models = server.sdk().models.list()
    ids = [m.id for m in models.data]
    assert ids == list(BASE_CONFIG["models"])
    assert all(m.object == "model" for m in models.data)
    assert next(m for m in models.data if m.id == "converting").owned_by == "fixed"


def test_health_and_readiness(server) -> None:
    assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.base_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"storage": True, "database": True, "provider:demo": True, "provider:fixed": True}


def test_openapi_documents_the_image_endpoints(server) -> None:
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    gen = spec["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "prompt" in gen["required"] and "output_compression" in gen["properties"]
    edits = spec["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert set(edits) == {"multipart/form-data", "application/json"}
    assert httpx.get(f"{server.base_url}/docs").status_code == 200


def test_request_id_on_every_response(server) -> None:
    ok = httpx.get(f"{server.base_url}/healthz")
    bad = httpx.post(f"{server.base_url}/v1/images/generations", json={})
    ids = {ok.headers["x-request-id"], bad.headers["x-request-id"]}
    assert len(ids) == 2 and all(i.startswith("req_") for i in ids)
    echoed = httpx.get(f"{server.base_url}/healthz", headers={"x-request-id": "client-abc-123"})
    assert echoed.headers["x-request-id"] == "client-abc-123"


# -- hosted URLs ----------------------------------------------------------------


def _url(server) -> str:
    result = server.sdk().images.generate(model="test-pattern", prompt="x", size="256x256", response_format="url")
    return result.data[0].url


def test_hosted_url_headers_and_conditional_get(server) -> None:
    url = _url(server)
    r = httpx.get(url)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert int(r.headers["content-length"]) == len(r.content)
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert "max-age=" in r.headers["cache-control"] and "private" in r.headers["cache-control"]
    assert r.headers["expires"]
    again = httpx.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == r.headers["content-length"]
    max_age = int(r.headers["cache-control"].split("max-age=")[1].split(",")[0])
    assert 3500 < max_age <= 3600  # default TTL: 60 minutes


def test_tampered_url_is_404(server) -> None:
    url = _url(server)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    later = int(query["expires"][0]) + 3600
    forged = f"{parts.scheme}://{parts.netloc}{parts.path}?expires={later}&signature={query['signature'][0]}"
    for bad in (forged, url[:-2] + ("00" if not url.endswith("00") else "11"), url.split("?")[0]):
        r = httpx.get(bad)
        assert r.status_code == 404, bad
        assert _err(r)["code"] == "invalid_signature"
    other_key = url.replace("/files/", "/files/AAAA")
    assert httpx.get(other_key).status_code == 404


def test_expired_url_is_410(server) -> None:
    url = _url(server)
    parts = urlsplit(url)
    key = parts.path.rsplit("/", 1)[1]
    past = int(time.time()) - 5
    sig = hmac.new(SIGNING_KEY.encode(), f"{key}\n{past}".encode(), hashlib.sha256).hexdigest()
    r = httpx.get(f"{server.base_url}{parts.path}?expires={past}&signature={sig}")
    assert r.status_code == 410
    assert _err(r)["code"] == "url_expired"


def test_expired_files_are_swept(make_server) -> None:
    running = make_server({**BASE_CONFIG, "storage": {"url_ttl_seconds": 2, "sweep_interval_seconds": 0.2}})
    url = _url(running)
    assert httpx.get(url).status_code == 200
    stored = [p for p in (running.data_dir / "images").rglob("*.png")]
    assert len(stored) == 1
    deadline = time.monotonic() + 10
    while stored[0].exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not stored[0].exists()
    assert httpx.get(url).status_code == 410


def test_public_url_setting_is_used_for_hosted_urls(make_server) -> None:
    running = make_server({**BASE_CONFIG, "server": {"public_url": "https://images.example.com/"}})
    url = _url(running)
    assert url.startswith("https://images.example.com/v1/images/files/")
    local = running.base_url + url.removeprefix("https://images.example.com")
    assert decode_bytes(httpx.get(local).content).size == (256, 256)
