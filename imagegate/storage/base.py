"""The storage contract: where result images live while their URL is valid.

A backend stores immutable objects under random keys and finds them again.

* ``put`` stores bytes and returns the new key (``<random>.<ext>``).
* ``get`` returns the :class:`StoredObject` or None when the key is unknown
  or already swept.
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
name is ever used as a path. :class:`MemoryStorage` is the in-process
implementation for tests; ``storage.local.LocalStorage`` the default.
"""

from __future__ import annotations

import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
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


def new_key(ext: str) -> str:
    if ext not in MIME_TYPES:
        raise ValueError(f"cannot store {ext!r}")
    return f"{secrets.token_urlsafe(18)}.{ext}"


def content_type_for(key: str) -> str:
    return MIME_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")


class Storage(ABC):
    @abstractmethod
    async def put(self, data: bytes, ext: str) -> str: ...

    @abstractmethod
    async def get(self, key: str) -> StoredObject | None: ...

    @abstractmethod
    async def sweep(self, older_than: float) -> int: ...

    async def touch(self, key: str) -> bool:
        """Keep ``key`` as long again as a new object (its URL was signed
        afresh); False when it is gone. Backends that can, override this."""
        return await self.get(key) is not None

    async def usage(self) -> StorageUsage | None:
        """What is stored now; None when this backend cannot count it."""
        return None

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and handles."""


class MemoryStorage(Storage):
    """Keeps objects in a dict; for tests and single-process experiments."""

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

    async def get(self, key: str) -> StoredObject | None:
        return self._objects.get(key)

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
