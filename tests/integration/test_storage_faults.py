"""Storage under faults: a deleted image directory, a disk that is full."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from support import BASE_CONFIG, Running, decode_bytes, serve_process


def _hosted(client: Any, size: str = "64x64") -> bytes:
    url = client.images.generate(model="test-pattern", prompt="x", size=size, response_format="url").data[0].url
    r = httpx.get(url)
    assert r.status_code == 200, r.text
    return r.content


def test_a_deleted_image_directory_is_made_again(make_server: Callable[[dict[str, Any]], Running]) -> None:
    running = make_server(BASE_CONFIG)
    client = running.sdk()
    _hosted(client)
    images = running.data_dir / "images"
    shutil.rmtree(images)
    assert decode_bytes(_hosted(client)).size == (64, 64)  # the next url request works
    assert any(p.is_file() for p in images.rglob("*"))
    shutil.rmtree(images)
    with running.http() as http:
        assert http.get("/readyz").json()["checks"]["storage"] is True


def _noise_png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG", compress_level=1)
    return out.getvalue()


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name != ".ready"]


def test_a_full_disk_is_a_503_and_leaves_no_partial_file(tmp_path: Path) -> None:
    limit = 1024 * 1024  # every file the server writes stops at 1 MB, as on a full disk
    noisy = _noise_png(1024, 1024)  # an edit of noise renders to a PNG of about 3 MB
    assert len(noisy) > 2 * limit
    with serve_process(BASE_CONFIG, tmp_path, max_file_bytes=limit) as running, running.sdk() as client:
        images = running.data_dir / "images"
        form = {"model": "test-pattern", "prompt": "x", "response_format": "url"}
        r = httpx.post(
            f"{running.base_url}/v1/images/edits", data=form, files={"image": ("n.png", noisy, "image/png")}, timeout=60
        )
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("server_error", "storage_unavailable", None)
        assert "File too large" in error["message"] and str(images) not in error["message"]
        assert r.headers["x-request-id"]
        assert _files(images) == [], "no partial or temporary file is left"
        # What fits is still stored, and b64_json needs no storage at all.
        assert decode_bytes(_hosted(client)).size == (64, 64)
        r = httpx.post(
            f"{running.base_url}/v1/images/edits",
            data={**form, "response_format": "b64_json"},
            files={"image": ("n.png", noisy, "image/png")},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        log = running.log()
    assert "storage_unavailable" in log and "Traceback" not in log
