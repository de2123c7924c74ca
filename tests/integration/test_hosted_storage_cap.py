"""storage.max_gb through the real server: the oldest hosted images expire
first (410), the newest are served, and /admin/storage shows the usage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from support import BASE_CONFIG, Running

MASTER = "master-key-0123456789abcdef"
CAP = 500_000  # storage.max_gb: 0.0005


def _stored(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("*/*") if p.is_file())


def test_the_oldest_images_expire_first_when_the_store_is_full(make_server: Callable[[dict[str, Any]], Running]) -> None:
    running = make_server(
        {**BASE_CONFIG, "storage": {**BASE_CONFIG["storage"], "max_gb": 0.0005}, "auth": {"master_key": MASTER}}
    )
    client = running.sdk(api_key=MASTER)
    urls = []
    for i in range(16):  # about 50 KB each: some 800 KB in all
        result = client.images.generate(model="test-pattern", prompt=f"picture {i}", size="1024x1024", response_format="url")
        urls.append(result.data[0].url)
        assert _stored(running.data_dir / "images") <= CAP, f"over the cap after write {i}"
    oldest = httpx.get(urls[0])
    assert oldest.status_code == 410 and oldest.json()["error"]["code"] == "url_expired"
    newest = httpx.get(urls[-1])
    assert newest.status_code == 200 and newest.headers["content-type"] == "image/png"
    with running.http() as http:
        usage = http.get("/admin/storage", headers={"Authorization": f"Bearer {MASTER}"}).json()
        assert http.get("/admin/storage").status_code == 401
    assert usage["max_bytes"] == CAP and 0 < usage["bytes"] <= CAP
    assert usage["bytes"] == _stored(running.data_dir / "images")
    served = sum(httpx.get(u).status_code == 200 for u in urls)
    assert usage["files"] == served and usage["evicted"] == 16 - served > 0
    assert usage["used_fraction"] == round(usage["bytes"] / CAP, 4)
