"""The storage contract: where result images live while their URL is valid.

A backend stores immutable objects under random keys and finds them again.
Backends are found by the scheme of ``storage.url``
(:mod:`imagegate.storage.registry`) and built with :meth:`Storage.from_url`.

* ``put`` stores bytes and returns the new key (``<random>.<ext>``).
* ``open`` returns an :class:`ObjectStream` (size, content type, creation
  time, and the bytes as chunks, read as they are sent), or None when the
  key is unknown or already swept. ``get`` reads a whole object (tests,
  small tools); the gateway streams.
* ``url_for`` may hand out the backend's own URL for a key, valid for at
  least ``ttl_seconds`` (an object store's presigned URL); None, the
  default, means the gateway signs its own URL and serves the object
  itself. A backend that hands out URLs also says which key one of them
  is for (``key_of_url``), so a replayed answer's URLs are issued afresh.
* ``touch`` keeps an object as long again as a new one (a re-signed URL).
* ``sweep`` deletes objects stored before ``older_than`` (a Unix time) and
  returns how many it removed.
* ``usage`` counts what is stored (:class:`StorageUsage`), or None for a
  backend that cannot count cheaply.

A backend given ``max_bytes`` (``storage.max_gb``) keeps its total under it
by deleting its oldest objects first, as an expired object is deleted: on
``put`` when a write takes the total over, down to :data:`TRIM_TO` of the
cap (so one trim makes room for many writes), and on every ``sweep``. The
object just written is never the one deleted. An evicted object's URL
answers 410, as an expired one does.

Keys are generated here, never taken from a client, so no client-supplied
name is ever used as a path. :class:`MemoryStorage` (``memory://``) is the
in-process implementation for tests; ``storage.local.LocalStorage``
(``file://PATH``) the default.
"""

from __future__ import annotations

import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "svg": "image/svg+xml"}
TRIM_TO = 0.9  # an over-full store is trimmed to this fraction of its cap


@dataclass(frozen=True, slots=True)
class StorageUsage:
    bytes: int
    files: int
    max_bytes: int | None  # None: no cap
    evicted: int  # objects deleted early, to keep under max_bytes, since the start


def oldest_first(entries: list[tuple[float, int, str]], total: int, max_bytes: int | None, keep: str | None = None) -> list[str]:
    """Which of ``entries`` ((created, size, key), any order) to delete,
    oldest first, to bring ``total`` from over ``max_bytes`` down to
    ``TRIM_TO`` of it; nothing while it is not over. ``keep`` is never chosen."""
    if max_bytes is None or total <= max_bytes:
        return []
    target = int(max_bytes * TRIM_TO)
    chosen: list[str] = []
    for _, size, key in sorted(entries):
        if total <= target:
            break
        if key != keep:
            chosen.append(key)
            total -= size
    return chosen


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    data: bytes
    content_type: str
    created: float


class ObjectStream:
    """An open stored object: what is known of it now, and its bytes as they
    are read (iterate once). ``aclose`` releases what keeps it open (a file
    handle, a connection), whether or not it was read; call it always."""

    __slots__ = ("key", "size", "content_type", "created", "_chunks", "_close")

    def __init__(
        self,
        key: str,
        size: int,
        content_type: str,
        created: float,
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.key = key
        self.size = size
        self.content_type = content_type
        self.created = created
        self._chunks = chunks
        self._close = close

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def read(self) -> bytes:
        """All of it, then closed."""
        try:
            return b"".join([chunk async for chunk in self._chunks])
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        close, self._close = self._close, None
        try:
            if isinstance(self._chunks, AsyncGenerator):
                await self._chunks.aclose()
        finally:
            if close is not None:
                await close()


async def _one_chunk(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


def new_key(ext: str) -> str:
    if ext not in MIME_TYPES:
        raise ValueError(f"cannot store {ext!r}")
    return f"{secrets.token_urlsafe(18)}.{ext}"


def content_type_for(key: str) -> str:
    return MIME_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")


class Storage(ABC):
    @classmethod  # noqa: B027 - optional hook
    def check_url(cls, url: str) -> None:
        """Raise ValueError for a ``storage.url`` of this backend's scheme
        that cannot work (checked when the config loads)."""

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, *, max_bytes: int | None) -> Storage:
        """The backend for ``storage.url`` (checked by :meth:`check_url`),
        keeping its total under ``max_bytes`` (``storage.max_gb``) when given."""

    @abstractmethod
    async def put(self, data: bytes, ext: str) -> str: ...

    @abstractmethod
    async def open(self, key: str) -> ObjectStream | None: ...

    @abstractmethod
    async def sweep(self, older_than: float) -> int: ...

    async def get(self, key: str) -> StoredObject | None:
        """The whole object, or None when it is gone."""
        stream = await self.open(key)
        if stream is None:
            return None
        return StoredObject(key, await stream.read(), stream.content_type, stream.created)

    async def url_for(self, key: str, ttl_seconds: int) -> str | None:
        """The backend's own URL for ``key``, valid ``ttl_seconds`` at least;
        None (the default): the gateway signs its own and serves the object."""
        return None

    def key_of_url(self, url: str) -> str | None:
        """The key one of this backend's own URLs (from ``url_for``) is for, else None."""
        return None

    async def touch(self, key: str) -> bool:
        """Keep ``key`` as long again as a new object (its URL was signed
        afresh); False when it is gone. Backends that can, override this."""
        stream = await self.open(key)
        if stream is None:
            return False
        await stream.aclose()
        return True

    async def usage(self) -> StorageUsage | None:
        """What is stored now; None when this backend cannot count it."""
        return None

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and handles."""


class MemoryStorage(Storage):
    """Keeps objects in a dict; for tests and single-process experiments
    (``memory://``: each server process has its own, empty at start)."""

    @classmethod
    def from_url(cls, url: str, *, max_bytes: int | None) -> MemoryStorage:
        return cls(max_bytes)

    def __init__(self, max_bytes: int | None = None) -> None:
        self._objects: dict[str, StoredObject] = {}
        self.max_bytes = max_bytes
        self._evicted = 0

    def _trim(self, keep: str | None = None) -> int:
        entries = [(o.created, len(o.data), k) for k, o in self._objects.items()]
        doomed = oldest_first(entries, sum(size for _, size, _ in entries), self.max_bytes, keep)
        for key in doomed:
            del self._objects[key]
        self._evicted += len(doomed)
        return len(doomed)

    async def put(self, data: bytes, ext: str) -> str:
        key = new_key(ext)
        self._objects[key] = StoredObject(key, data, content_type_for(key), time.time())
        self._trim(keep=key)
        return key

    async def open(self, key: str) -> ObjectStream | None:
        obj = self._objects.get(key)
        if obj is None:
            return None
        return ObjectStream(key, len(obj.data), obj.content_type, obj.created, _one_chunk(obj.data))

    async def touch(self, key: str) -> bool:
        obj = self._objects.get(key)
        if obj is not None:
            self._objects[key] = StoredObject(key, obj.data, obj.content_type, time.time())
        return obj is not None

    async def sweep(self, older_than: float) -> int:
        old = [k for k, o in self._objects.items() if o.created < older_than]
        for key in old:
            del self._objects[key]
        return len(old) + self._trim()

    async def usage(self) -> StorageUsage:
        total = sum(len(o.data) for o in self._objects.values())
        return StorageUsage(total, len(self._objects), self.max_bytes, self._evicted)
