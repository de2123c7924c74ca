"""Storage backends by the scheme of ``storage.url``: a new backend is one
module registered by scheme, and the gateway uses it for ``url`` answers,
their replays and the hosted files route, which streams what it reads.

The backends here are defined in the test, registered with
``storage.registry.register`` and served by the real server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, ClassVar

import httpx
import pytest

from imagegate.config import load_settings
from imagegate.errors import ConfigError
from imagegate.storage import registry
from imagegate.storage.base import MemoryStorage, ObjectStream, Storage, StoredObject, content_type_for, new_key
from support import BASE_CONFIG, SIGNING_KEY, Running, decode_bytes

CONFIG: dict[str, Any] = {
    "storage": {"signing_key": SIGNING_KEY},
    "providers": {"demo": {"type": "test-pattern"}},
    "models": {"test-pattern": [{"provider": "demo"}]},
}


class TinyStorage(Storage):
    """A backend that hands out its own URLs (as an object store's presigned ones)."""

    made: ClassVar[list[TinyStorage]] = []

    @classmethod
    def check_url(cls, url: str) -> None:
        if not url.removeprefix("tiny://"):
            raise ValueError("tiny:// needs a bucket name")

    @classmethod
    def from_url(cls, url: str, *, max_bytes: int | None) -> TinyStorage:
        return cls(url.removeprefix("tiny://"))

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.objects: dict[str, StoredObject] = {}
        self.issued = 0
        TinyStorage.made.append(self)

    async def put(self, data: bytes, ext: str) -> str:
        key = new_key(ext)
        self.objects[key] = StoredObject(key, data, content_type_for(key), time.time())
        return key

    async def open(self, key: str) -> ObjectStream | None:
        obj = self.objects.get(key)
        if obj is None:
            return None

        async def chunks() -> AsyncGenerator[bytes, None]:
            yield obj.data

        return ObjectStream(key, len(obj.data), obj.content_type, obj.created, chunks())

    async def sweep(self, older_than: float) -> int:
        return 0

    async def url_for(self, key: str, ttl_seconds: int) -> str | None:
        self.issued += 1
        return f"https://{self.bucket}.tiny.test/{key}?ttl={ttl_seconds}&n={self.issued}"

    def key_of_url(self, url: str) -> str | None:
        prefix = f"https://{self.bucket}.tiny.test/"
        return url.removeprefix(prefix).split("?")[0] if url.startswith(prefix) else None


class GatedStorage(MemoryStorage):
    """Memory storage whose reads give the first chunk, then wait for the
    test to let the rest go; it records whether each stream was closed."""

    made: ClassVar[list[GatedStorage]] = []
    CHUNK = 1000

    @classmethod
    def from_url(cls, url: str, *, max_bytes: int | None) -> GatedStorage:
        return cls(max_bytes)

    def __init__(self, max_bytes: int | None = None) -> None:
        super().__init__(max_bytes)
        self.gate = threading.Event()
        self.opened: list[dict[str, bool]] = []
        GatedStorage.made.append(self)

    async def open(self, key: str) -> ObjectStream | None:
        obj = self._objects.get(key)
        if obj is None:
            return None
        state = {"read_all": False, "closed": False}
        self.opened.append(state)

        async def chunks() -> AsyncGenerator[bytes, None]:
            yield obj.data[: self.CHUNK]
            await asyncio.to_thread(self.gate.wait, 20)
            for start in range(self.CHUNK, len(obj.data), self.CHUNK):
                yield obj.data[start : start + self.CHUNK]
            state["read_all"] = True

        async def close() -> None:
            state["closed"] = True

        return ObjectStream(key, len(obj.data), obj.content_type, obj.created, chunks(), close)


@pytest.fixture
def backends(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(registry, "_SCHEMES", dict(registry._SCHEMES))  # registrations end with the test
    registry.register("tiny", TinyStorage)
    registry.register("gated", f"{__name__}:GatedStorage")
    TinyStorage.made.clear()
    GatedStorage.made.clear()
    yield


def _with_storage(url: str, **storage: Any) -> dict[str, Any]:
    return {**CONFIG, "storage": {**CONFIG["storage"], "url": url, **storage}}


def test_the_config_checks_storage_urls_through_the_registry(tmp_path: Any, backends: None) -> None:
    path = tmp_path / "c.yaml"
    for url, error in [
        ("s3://bucket", "storage.url: unsupported storage URL 's3://bucket' (supported: file://, gated://, memory://, tiny://)"),
        ("tiny://", "storage.url: tiny:// needs a bucket name"),  # the backend's own check
        ("tiny://images", None),
        ("memory://", None),
    ]:
        path.write_text(f"storage: {{url: '{url}'}}\n")
        if error is None:
            assert load_settings(path, environ={}).storage_url == url
        else:
            with pytest.raises(ConfigError) as caught:
                load_settings(path, environ={})
            assert str(caught.value) == error


def test_url_answers_and_their_replays_use_a_registered_backends_own_urls(
    make_server: Callable[[dict[str, Any]], Running], backends: None
) -> None:
    running = make_server(_with_storage("tiny://images", url_ttl_seconds=600))
    (store,) = TinyStorage.made
    client = running.sdk()
    raw = client.images.with_raw_response.generate(
        model="test-pattern", prompt="x", size="64x64", response_format="url", extra_headers={"Idempotency-Key": "k1"}
    )
    url = raw.parse().data[0].url
    assert url is not None and url.startswith("https://images.tiny.test/") and url.endswith("?ttl=600&n=1")
    key = url.split("/")[-1].split("?")[0]
    assert decode_bytes(store.objects[key].data).size == (64, 64)  # stored in the backend, nowhere else
    assert not (running.data_dir / "images").exists()

    again = client.images.with_raw_response.generate(
        model="test-pattern", prompt="x", size="64x64", response_format="url", extra_headers={"Idempotency-Key": "k1"}
    )
    assert again.headers["x-imagegate-idempotent-replay"] == "true"
    assert again.parse().data[0].url == url.replace("n=1", "n=2")  # the backend issued the replay's URL afresh

    del store.objects[key]  # gone from the backend: a replay cannot point at it
    with httpx.Client(base_url=running.base_url) as http:
        gone = http.post(
            "/v1/images/generations",
            json={"model": "test-pattern", "prompt": "x", "size": "64x64", "response_format": "url"},
            headers={"Idempotency-Key": "k1"},
        )
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "idempotent_result_expired"


def test_memory_storage_serves_hosted_files(make_server: Callable[[dict[str, Any]], Running]) -> None:
    running = make_server(_with_storage("memory://"))
    url = running.sdk().images.generate(model="test-pattern", prompt="x", size="64x64", response_format="url").data[0].url
    assert url is not None and url.startswith(running.base_url)
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and decode_bytes(r.content).size == (64, 64)
    assert not (running.data_dir / "images").exists()


def test_hosted_files_stream_and_every_stream_is_closed(make_server: Callable[[dict[str, Any]], Running], backends: None) -> None:
    running = make_server({**_with_storage("gated://"), "models": BASE_CONFIG["models"], "providers": BASE_CONFIG["providers"]})
    (store,) = GatedStorage.made
    url = running.sdk().images.generate(model="gpt-image-1", prompt="x", size="1024x1024", response_format="url").data[0].url
    assert url is not None
    size = len(next(iter(store._objects.values())).data)
    assert size > 3 * GatedStorage.CHUNK

    with httpx.Client(timeout=30) as http:
        head = http.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(size) and head.content == b""
        assert store.opened[-1] == {"read_all": False, "closed": True}, "HEAD closes without reading"

        with http.stream("GET", url) as r:
            assert r.status_code == 200 and r.headers["content-length"] == str(size)
            body = iter(r.iter_raw())
            first = next(body)  # sent while the backend still holds the rest back
            assert first and not store.opened[-1]["read_all"]
            store.gate.set()
            data = first + b"".join(body)
        assert len(data) == size and decode_bytes(data).size == (1024, 1024)
        assert store.opened[-1] == {"read_all": True, "closed": True}

        etag = r.headers["etag"]
        cached = http.get(url, headers={"If-None-Match": etag})
        assert cached.status_code == 304 and store.opened[-1] == {"read_all": False, "closed": True}
