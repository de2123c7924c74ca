"""The sweeper: each sweep on its own, one concise line when one fails."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagegate.gateway.sweeper import Sweeper
from imagegate.storage.base import MemoryStorage, Storage, StoredObject
from imagegate.storage.local import LocalStorage


class _BrokenStorage(MemoryStorage):
    async def sweep(self, older_than: float) -> int:
        raise PermissionError(13, "Permission denied", "/srv/imagegate/images")


class _Calls:
    def __init__(self, fail: bool = False) -> None:
        self.count = 0
        self.fail = fail

    async def __call__(self) -> None:
        self.count += 1
        if self.fail:
            raise RuntimeError("database is locked")


def _sweeper(storage: Storage, idempotency: _Calls, housekeeping: _Calls) -> Sweeper:
    return Sweeper(
        storage,
        60,
        SimpleNamespace(sweep=idempotency),  # type: ignore[arg-type]
        SimpleNamespace(housekeeping=housekeeping),  # type: ignore[arg-type]
        interval_seconds=60,
    )


def test_a_failing_storage_sweep_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    idempotency, housekeeping = _Calls(), _Calls()
    sweeper = _sweeper(_BrokenStorage(), idempotency, housekeeping)
    with caplog.at_level(logging.INFO, logger="imagegate"):
        for _ in range(3):
            asyncio.run(sweeper.once())
    assert (idempotency.count, housekeeping.count) == (3, 3)
    lines = [r for r in caplog.records if r.name.startswith("imagegate")]
    assert len(lines) == 3, "one line per failing pass"
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in lines), "no traceback"
    assert "sweeping expired images failed" in lines[0].getMessage() and "Permission denied" in lines[0].getMessage()


def test_a_failing_idempotency_sweep_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    storage = MemoryStorage()
    storage._objects["old.png"] = StoredObject("old.png", b"x", "image/png", time.time() - 3600)
    idempotency, housekeeping = _Calls(fail=True), _Calls()
    with caplog.at_level(logging.WARNING, logger="imagegate"):
        asyncio.run(_sweeper(storage, idempotency, housekeeping).once())
    assert storage._objects == {} and housekeeping.count == 1
    assert ["sweeping idempotency records failed" in r.getMessage() for r in caplog.records] == [True]


def test_local_storage_sweeps_and_stores_after_its_root_was_deleted(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "images")
    key = asyncio.run(storage.put(b"\x89PNG...", "png"))
    shutil.rmtree(tmp_path / "images")
    assert asyncio.run(storage.get(key)) is None
    assert asyncio.run(storage.sweep(time.time())) == 0  # no error: the root is made again
    key = asyncio.run(storage.put(b"\x89PNG...", "png"))
    assert asyncio.run(storage.get(key)) is not None
