"""The storage contract: where result images live while their URL is valid.

A backend stores immutable objects under random keys and finds them again.

* ``put`` stores bytes and returns the new key (``<random>.<ext>``).
* ``get`` returns the :class:`StoredObject` or None when the key is unknown
  or already swept.
* ``touch`` keeps an object as long again as a new one (a re-signed URL).
* ``sweep`` deletes objects stored before ``older_than`` (a Unix time) and
  returns how many it removed.

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

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and handles."""


class MemoryStorage(Storage):
    """Keeps objects in a dict; for tests and single-process experiments."""

    def __init__(self) -> None:
        self._objects: dict[str, StoredObject] = {}

    async def put(self, data: bytes, ext: str) -> str:
        key = new_key(ext)
        self._objects[key] = StoredObject(key, data, content_type_for(key), time.time())
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
        return len(old)
