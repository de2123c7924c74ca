"""storage.max_gb: over the cap, the oldest images go first (on write and on sweep)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from imagegate.storage.base import TRIM_TO, MemoryStorage, Storage
from imagegate.storage.local import LocalStorage

KB = 1000


def _on_disk(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in root.glob("*/*") if p.is_file()}


def _fill(storage: Storage, count: int, size: int) -> list[str]:
    """``count`` objects of ``size`` bytes, each a second older than the next."""

    async def go() -> list[str]:
        return [await storage.put(bytes([i]) * size, "png") for i in range(count)]

    keys = asyncio.run(go())
    if isinstance(storage, LocalStorage):  # mtimes a second apart, oldest first
        now = time.time()
        for age, key in enumerate(reversed(keys)):
            path = storage.root / key[:2] / key
            os.utime(path, (now - age, now - age))
    return keys


def test_a_sweep_deletes_the_oldest_files_until_under_the_cap(tmp_path: Path) -> None:
    root = tmp_path / "images"
    keys = _fill(LocalStorage(root), 10, 100 * KB)  # 1 MB, written without a cap
    capped = LocalStorage(root, max_bytes=500 * KB)
    removed = asyncio.run(capped.sweep(older_than=0))  # nothing has expired
    left = _on_disk(root)
    assert sum(left.values()) <= 500 * KB * TRIM_TO
    assert removed == 10 - len(left) == 6
    assert set(left) == set(keys[-4:]), "the newest stay, the oldest go"
    usage = asyncio.run(capped.usage())
    assert (usage.bytes, usage.files, usage.max_bytes, usage.evicted) == (400 * KB, 4, 500 * KB, 6)


def test_a_write_over_the_cap_trims_at_once_and_keeps_the_new_file(tmp_path: Path) -> None:
    root = tmp_path / "images"
    storage = LocalStorage(root, max_bytes=500 * KB)
    keys = _fill(storage, 5, 100 * KB)  # exactly at the cap: nothing goes
    assert set(_on_disk(root)) == set(keys)
    newest = asyncio.run(storage.put(b"n" * 100 * KB, "png"))
    left = _on_disk(root)
    assert sum(left.values()) <= 500 * KB * TRIM_TO
    assert newest in left and keys[0] not in left and keys[1] not in left
    assert set(left) == {*keys[2:], newest}


def test_a_first_write_counts_what_an_earlier_process_left(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _fill(LocalStorage(root), 8, 100 * KB)  # 800 KB from "before the restart"
    storage = LocalStorage(root, max_bytes=500 * KB)
    newest = asyncio.run(storage.put(b"n" * 10 * KB, "png"))
    left = _on_disk(root)
    assert sum(left.values()) <= 500 * KB and newest in left


def test_an_image_larger_than_the_cap_is_still_served_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "images", max_bytes=10 * KB)
    key = asyncio.run(storage.put(b"x" * 50 * KB, "png"))
    assert asyncio.run(storage.get(key)) is not None  # its client gets its URL; the next write or sweep removes it
    asyncio.run(storage.sweep(older_than=0))
    assert asyncio.run(storage.get(key)) is None


@pytest.mark.parametrize("cap", [None, 10**12])
def test_no_eviction_under_the_cap(tmp_path: Path, cap: int | None) -> None:
    root = tmp_path / "images"
    storage = LocalStorage(root, max_bytes=cap)
    keys = _fill(storage, 3, 10 * KB)
    assert asyncio.run(storage.sweep(older_than=0)) == 0
    assert set(_on_disk(root)) == set(keys)
    assert asyncio.run(storage.usage()).evicted == 0


def test_memory_storage_keeps_the_same_cap() -> None:
    storage = MemoryStorage(max_bytes=500 * KB)
    keys = _fill(storage, 10, 100 * KB)
    usage = asyncio.run(storage.usage())
    assert usage.bytes <= 500 * KB and keys[-1] in storage._objects and keys[0] not in storage._objects
    assert usage.evicted == 10 - usage.files
