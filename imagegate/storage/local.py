"""Local-directory storage (the default): ``storage.url: file://PATH``.

Files live under ``<root>/<first two key characters>/<key>``; writes go to a
temporary name and are renamed into place, so a reader never sees half a
file. The file's mtime is its creation time, which ``sweep`` uses.

Directories are made as needed, so a root deleted under a running server
comes back with the next write. A failed write (disk full, no permission)
removes its temporary file and raises 503 ``storage_unavailable``.

With ``max_bytes`` the store keeps a running total (one scan of the
directory at the first write, then the size of each write) and, when a write
takes it over the cap, scans again and deletes the oldest files (by mtime)
down to ``TRIM_TO`` of the cap. Each sweep recounts exactly and trims too,
so the total stays right when several processes share the directory.

Reads stream: ``open`` opens the file and reads its size (off the event
loop), and the bytes follow in chunks of :data:`CHUNK_BYTES` as they are
sent. A file swept while it is being sent is still sent whole (the open
handle keeps it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import BinaryIO

from imagegate.errors import ServiceUnavailableError
from imagegate.storage.base import MIME_TYPES, ObjectStream, Storage, StorageUsage, content_type_for, new_key, oldest_first

log = logging.getLogger("imagegate.storage")

CHUNK_BYTES = 512 * 1024

_KEY_RE = re.compile(rf"[A-Za-z0-9_-]{{16,64}}\.({'|'.join(MIME_TYPES)})")  # fullmatch: "<key>\n" is no key


class LocalStorage(Storage):
    @classmethod
    def from_url(cls, url: str, *, max_bytes: int | None) -> LocalStorage:
        return cls(Path(url.removeprefix("file://")), max_bytes=max_bytes)

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._total: int | None = None  # bytes stored, as last counted plus writes since; None: not counted yet
        self._evicted = 0
        self._scanning = asyncio.Lock()  # one scan-and-delete pass at a time

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
        if self.max_bytes is not None:
            if self._total is not None:
                self._total += len(data)
            if self._total is None or self._total > self.max_bytes:
                try:
                    await self._pass(None, keep=key)
                except OSError as exc:  # the image is stored; the next sweep tries again
                    log.warning("trimming the image store to storage.max_gb failed: %s", exc)
        return key

    def _open(self, key: str) -> tuple[BinaryIO, os.stat_result] | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the ObjectStream
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            log.error("reading a stored image under %s failed: %s", self.root, exc)
            raise _unavailable(exc) from exc
        try:
            return fh, os.fstat(fh.fileno())
        except BaseException:
            fh.close()
            raise

    async def open(self, key: str) -> ObjectStream | None:
        opened = await asyncio.to_thread(self._open, key)
        if opened is None:
            return None
        fh, stat = opened

        async def close() -> None:
            fh.close()

        return ObjectStream(key, stat.st_size, content_type_for(key), stat.st_mtime, self._chunks(fh), close)

    async def _chunks(self, fh: BinaryIO) -> AsyncGenerator[bytes, None]:
        while True:
            try:
                chunk = await asyncio.to_thread(fh.read, CHUNK_BYTES)
            except OSError as exc:
                log.error("reading a stored image under %s failed: %s", self.root, exc)
                raise _unavailable(exc) from exc
            if not chunk:
                return
            yield chunk

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

    def _scan(self, older_than: float | None) -> tuple[int, list[tuple[float, int, str]]]:
        """Delete what is older than ``older_than`` (stray temporary files
        included); return how many, and (mtime, size, key) of what is left."""
        removed, kept = 0, []
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
                    stat = entry.stat()
                    if older_than is not None and stat.st_mtime < older_than:
                        os.unlink(entry.path)
                        removed += 1
                    elif _KEY_RE.fullmatch(entry.name):
                        kept.append((stat.st_mtime, stat.st_size, entry.name))
                except FileNotFoundError:
                    continue
        return removed, kept

    def _sweep(self, older_than: float | None, keep: str | None) -> tuple[int, int, int]:
        """One pass: expired files, then the oldest while over the cap.
        Returns (expired, evicted, bytes left)."""
        expired, entries = self._scan(older_than)
        total = sum(size for _, size, _ in entries)
        doomed = set(oldest_first(entries, total, self.max_bytes, keep))
        evicted = 0
        for mtime, size, key in entries:
            if key in doomed:
                path = self._path(key)
                try:
                    if path is not None and path.stat().st_mtime == mtime:  # not touched since the scan
                        path.unlink()
                        evicted += 1
                        total -= size
                except FileNotFoundError:
                    total -= size
        return expired, evicted, total

    async def _pass(self, older_than: float | None, keep: str | None = None) -> int:
        """Sweep (``older_than`` given) or trim; return how many files went."""
        async with self._scanning:
            if older_than is None and self._total is not None and self._total <= (self.max_bytes or 0):
                return 0  # another pass made room meanwhile
            expired, evicted, total = await asyncio.to_thread(self._sweep, older_than, keep)
            self._total = total
            if evicted:
                self._evicted += evicted
                log.info(
                    "image store over storage.max_gb (%.3f GB): deleted the %d oldest image(s), %.3f GB left",
                    (self.max_bytes or 0) / 1e9, evicted, total / 1e9,
                )  # fmt: skip
            return expired + evicted

    async def sweep(self, older_than: float) -> int:
        return await self._pass(older_than)

    async def usage(self) -> StorageUsage:
        async with self._scanning:
            _, entries = await asyncio.to_thread(self._scan, None)
        self._total = sum(size for _, size, _ in entries)
        return StorageUsage(self._total, len(entries), self.max_bytes, self._evicted)

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
