"""Recently authenticated database keys, kept for a few seconds.

Every request with a database key would otherwise read its row: under a
burst that read is a good part of a request's time. A key that was valid
(enabled, not revoked) and has a budget (its own or its team's: one
without is read every time, so a budget given to it holds at once) is
remembered by its secret's digest for ``auth.key_cache_seconds`` (0:
never); its expiry time is kept with it and checked on every request. This process forgets every key at once when its
admin API changes a key or a team (revoked, disabled, limits, models,
budget period); another replica, or the ``imagegate keys`` CLI (another
process), takes effect here within the TTL (docs/security.md).
"""

from __future__ import annotations

import time
from datetime import datetime

from imagegate.accounting.caller import Caller
from imagegate.db.models import aware, utcnow

MAX_ENTRIES = 10_000  # past it, all are forgotten (a flood of distinct keys costs reads, never memory)


class KeyCache:
    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._entries: dict[bytes, tuple[float, Caller, datetime | None]] = {}
        # Counts clear()s: a key read before one (a revoke committing while it
        # was read) is not remembered after it (put's ``since``).
        self.generation = 0

    def get(self, digest: bytes) -> tuple[Caller, datetime | None] | None:
        """The caller of a key read less than the TTL ago, and its expiry time."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        until, caller, expires_at = entry
        if time.monotonic() >= until:
            del self._entries[digest]
            return None
        return caller, expires_at

    def put(self, digest: bytes, caller: Caller, expires_at: datetime | None, since: int) -> None:
        """Remember a valid key (never a revoked, disabled or unknown one),
        read when :attr:`generation` was ``since``: not if the keys were
        forgotten since (what was read may be what a change replaced)."""
        if self.ttl <= 0 or since != self.generation:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = (time.monotonic() + self.ttl, caller, expires_at)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()


def expired(expires_at: datetime | None) -> bool:
    return expires_at is not None and aware(expires_at) <= utcnow()
