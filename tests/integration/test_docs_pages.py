"""``/``, ``/docs`` and ``/redoc`` work on a host without internet access:
every asset comes from this server, and a headless Chromium with no network
but loopback renders the operations."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from support import Running

_REFS = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_URL_IN_SCRIPT = re.compile(r"""(?:url|openapi_url|spec-url)\s*[:=]\s*["']([^"']+)["']""")
TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def _references(page: str) -> list[str]:
    return _REFS.findall(page) + _URL_IN_SCRIPT.findall(page)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_doc_pages_load_every_asset_from_this_server(server: Running, path: str) -> None:
    page = httpx.get(f"{server.base_url}{path}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    refs = _references(page.text)
    assert any(r.endswith(".js") for r in refs) and "/openapi.json" in refs
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), f"{path} references {ref}, not a local URL"
        if ref.startswith("/docs/oauth2-redirect") or ref == "/openapi.json":
            continue
        asset = httpx.get(f"{server.base_url}{ref}")
        assert asset.status_code == 200, ref
        assert asset.headers["content-type"].startswith(TYPES[Path(ref).suffix]), (ref, asset.headers["content-type"])
        assert len(asset.content) > 1000
    assert "fonts.googleapis" not in page.text and "cdn." not in page.text


def test_the_root_page_links_to_the_docs_and_health(server: Running) -> None:
    html = httpx.get(f"{server.base_url}/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert f"{server.base_url}/v1" in html.text
    for path in ("/docs", "/redoc", "/openapi.json", "/healthz", "/readyz", "/v1/models"):
        assert f'href="{path}"' in html.text
    as_json = httpx.get(f"{server.base_url}/", headers={"Accept": "application/json"})
    body = as_json.json()
    assert body["name"] == "imagegate" and body["version"]
    assert body["links"] == {
        "docs": "/docs",
        "redoc": "/redoc",
        "openapi": "/openapi.json",
        "models": "/v1/models",
        "healthz": "/healthz",
        "readyz": "/readyz",
    }
    for link in body["links"].values():
        assert httpx.get(f"{server.base_url}{link}").status_code == 200, link
    assert httpx.get(f"{server.base_url}/").json() == body  # curl's */*: JSON


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:  # a failure, never a skip: scripts/test installs it
        pytest.fail("chromium is not installed (scripts/test installs it)")
    return found


def _render(url: str, tmp_path: Path) -> tuple[str, list[str]]:
    """The page's DOM once its scripts ran, and the URLs the page itself
    requested, from a Chromium whose only way out is a dead proxy
    (loopback is never proxied)."""
    netlog = tmp_path / "net.json"
    args = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--proxy-server=http://127.0.0.1:9", "--disable-background-networking", "--disable-component-update",
        f"--user-data-dir={tmp_path / 'profile'}", f"--log-net-log={netlog}",
        "--virtual-time-budget=15000", "--dump-dom", url,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=90, check=True)
    origin = url.split("/", 3)
    page_origin = f"{origin[0]}//{origin[2]}"
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requested = [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start and e.get("params", {}).get("initiator") == page_origin  # the page's, not the browser's own
    ]
    return done.stdout, requested


def test_swagger_ui_renders_offline_in_a_browser(server: Running, tmp_path: Path) -> None:
    dom, requested = _render(f"{server.base_url}/docs", tmp_path)
    for path in ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations", "/admin/storage"):
        assert f'data-path="{path}"' in dom, f"{path} not rendered"
    assert "Failed to load API definition" not in dom
    assert f"{server.base_url}/openapi.json" in requested
    assert requested and all(u.startswith(server.base_url + "/") for u in requested), requested


def test_redoc_renders_offline_in_a_browser(server: Running, tmp_path: Path) -> None:
    dom, requested = _render(f"{server.base_url}/redoc", tmp_path)
    assert "Edit or extend images" in dom and "/v1/images/generations" in dom
    assert all(u.startswith(server.base_url + "/") for u in requested), requested
