"""Local-directory storage (the default).

Files live under ``<root>/<first two key characters>/<key>``; writes go to a
temporary name and are renamed into place, so a reader never sees half a
file. The file's mtime is its creation time, which ``sweep`` uses.

Directories are made as needed, so a root deleted under a running server
comes back with the next write. A failed write (disk full, no permission)
removes its temporary file and raises 503 ``storage_unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from pathlib import Path

from imagegate.errors import ServiceUnavailableError
from imagegate.storage.base import Storage, StoredObject, content_type_for, new_key

log = logging.getLogger("imagegate.storage")

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
        tmp = path.with_name(f".{key}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()  # no partial file left behind
            log.error("storing an image under %s failed: %s", self.root, exc)
            raise _unavailable(exc) from exc

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
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            log.error("reading a stored image under %s failed: %s", self.root, exc)
            raise _unavailable(exc) from exc
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
        self.root.mkdir(parents=True, exist_ok=True)
        for shard in os.scandir(self.root):
            if not shard.is_dir():
                continue
            try:
                entries = list(os.scandir(shard.path))
            except FileNotFoundError:  # removed since the listing
                continue
            for entry in entries:
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
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
            return True
        except OSError:
            return False

    async def ready(self) -> bool:
        return await asyncio.to_thread(self._writable)


def _unavailable(exc: OSError) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"The image store is unavailable ({exc.strerror or 'I/O error'}); try again later, "
        "or ask for response_format 'b64_json', which needs no storage.",
        code="storage_unavailable",
    )
