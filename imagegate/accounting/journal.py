"""A durable fallback for settlements the database could not take.

When a request has run (the upstream has billed it) but writing its
settlement fails even after retries (database unreachable, disk full), the
settlement goes to an append-only JSON-lines file beside the data, fsynced
before the answer leaves. It is replayed at start and on every sweep until
the database takes it. Each settlement has a unique id, stored with its usage
row, so a replay that already went through (a crash between commit and
rewrite) is skipped, never charged twice.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("imagegate.accounting")


class SettlementJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    async def append(self, entry: dict[str, Any]) -> None:
        """Durably add one settlement; raises OSError when it cannot."""
        line = orjson.dumps(entry) + b"\n"
        async with self._lock:
            await asyncio.to_thread(self._append, line)

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    async def replay(self, apply: Callable[[dict[str, Any]], Awaitable[None]]) -> int:
        """Apply every entry in order; keep those that fail for the next
        replay. Returns how many were applied."""
        if not self.pending():
            return 0
        async with self._lock:
            fd = await asyncio.to_thread(os.open, self.path, os.O_RDWR)
            try:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)  # other processes' replays and appends wait
                entries = [orjson.loads(line) for line in (await asyncio.to_thread(_read_all, fd)).splitlines() if line.strip()]
                left: list[dict[str, Any]] = []
                for entry in entries:
                    if left:  # keep the order: once one fails, the rest wait too
                        left.append(entry)
                        continue
                    try:
                        await apply(entry)
                    except Exception as exc:
                        log.warning("settlement %s still cannot be written: %s", entry.get("settlement_id"), exc)
                        left.append(entry)
                await asyncio.to_thread(self._rewrite, fd, left)
            finally:
                os.close(fd)
        applied = len(entries) - len(left)
        if applied:
            log.info("replayed %d journaled settlement(s); %d left", applied, len(left))
        return applied

    @staticmethod
    def _rewrite(fd: int, left: list[dict[str, Any]]) -> None:
        # Truncated, never unlinked: another process may hold it open to append.
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, b"".join(orjson.dumps(e) + b"\n" for e in left))
        os.fsync(fd)


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
