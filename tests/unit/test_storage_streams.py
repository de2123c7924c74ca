"""Streaming reads: ``Storage.open`` gives an object's size and type at once
and its bytes in chunks; every stream's handle is released by ``aclose``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from imagegate.storage.base import MemoryStorage, Storage
from imagegate.storage.local import CHUNK_BYTES, LocalStorage

DATA = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)  # two full chunks and a bit


def _open_handles(root: Path) -> int:
    """File descriptors of this process open on files under ``root``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(root.resolve()))
        except OSError:
            continue
    return count


def test_local_reads_stream_in_chunks(tmp_path: Path) -> None:
    async def go() -> tuple[list[int], int, str, int]:
        storage = LocalStorage(tmp_path / "images")
        key = await storage.put(DATA, "png")
        stream = await storage.open(key)
        assert stream is not None
        during = _open_handles(tmp_path)
        sizes = []
        async for chunk in stream:
            sizes.append(len(chunk))
        await stream.aclose()
        return sizes, stream.size, stream.content_type, during

    sizes, size, content_type, during = asyncio.run(go())
    assert sizes == [CHUNK_BYTES, CHUNK_BYTES, len(DATA) - 2 * CHUNK_BYTES]
    assert (size, content_type, during) == (len(DATA), "image/png", 1)
    assert _open_handles(tmp_path) == 0


def test_an_opened_file_swept_meanwhile_is_still_read_whole(tmp_path: Path) -> None:
    async def go() -> bytes:
        storage = LocalStorage(tmp_path / "images")
        key = await storage.put(DATA, "webp")
        stream = await storage.open(key)
        assert stream is not None
        assert await storage.sweep(older_than=float("inf")) == 1  # deleted while open
        assert await storage.open(key) is None
        return await stream.read()

    assert asyncio.run(go()) == DATA
    assert _open_handles(tmp_path) == 0


@pytest.mark.parametrize("make", [lambda root: LocalStorage(root), lambda root: MemoryStorage()], ids=["local", "memory"])
def test_a_stream_closed_unread_releases_its_handle(tmp_path: Path, make: Callable[[Path], Storage]) -> None:
    async def go() -> tuple[int, bytes | None, bool]:
        storage = make(tmp_path / "images")
        key = await storage.put(DATA, "jpeg")
        stream = await storage.open(key)
        assert stream is not None and stream.size == len(DATA)
        await stream.aclose()  # as after a HEAD or a 304
        whole = await storage.get(key)
        return _open_handles(tmp_path), whole.data if whole else None, await storage.touch(key)

    handles, whole, touched = asyncio.run(go())
    assert (handles, whole, touched) == (0, DATA, True)
