"""Local-directory storage (the default).

Files live under ``<root>/<first two key characters>/<key>``; writes go to a
temporary name and are renamed into place, so a reader never sees half a
file. The file's mtime is its creation time, which ``sweep`` uses.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from imagegate.storage.base import Storage, StoredObject, content_type_for, new_key

_KEY_RE = re.compile(r"[A-Za-z0-9_-]{16,64}\.(png|jpeg|webp)")  # fullmatch: "<key>\n" is no key


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path | None:
        if not _KEY_RE.fullmatch(key):
            return None
        return self.root / key[:2] / key

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        assert path is not None
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{key}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    async def put(self, data: bytes, ext: str) -> str:
        key = new_key(ext)
        await asyncio.to_thread(self._write, key, data)
        return key

    def _read(self, key: str) -> StoredObject | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            with open(path, "rb") as fh:
                created = os.fstat(fh.fileno()).st_mtime
                data = fh.read()
        except FileNotFoundError:
            return None
        return StoredObject(key, data, content_type_for(key), created)

    async def get(self, key: str) -> StoredObject | None:
        return await asyncio.to_thread(self._read, key)

    def _touch(self, key: str) -> bool:
        path = self._path(key)
        try:
            if path is None:
                return False
            os.utime(path)  # the mtime is what sweep reads
            return True
        except FileNotFoundError:
            return False

    async def touch(self, key: str) -> bool:
        return await asyncio.to_thread(self._touch, key)

    def _sweep(self, older_than: float) -> int:
        removed = 0
        for shard in os.scandir(self.root):
            if not shard.is_dir():
                continue
            for entry in os.scandir(shard.path):
                try:
                    if entry.stat().st_mtime < older_than:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    async def sweep(self, older_than: float) -> int:
        return await asyncio.to_thread(self._sweep, older_than)

    def _writable(self) -> bool:
        probe = self.root / ".ready"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
            return True
        except OSError:
            return False

    async def ready(self) -> bool:
        return await asyncio.to_thread(self._writable)
