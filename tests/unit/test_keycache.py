"""accounting/keycache.py: what is remembered, for how long, and never after a change."""

from __future__ import annotations

import time
from datetime import timedelta

from imagegate.accounting.caller import Caller
from imagegate.accounting.keycache import MAX_ENTRIES, KeyCache, expired
from imagegate.db.models import utcnow

CALLER = Caller("key", key_id="key_1", identity="key:key_1")


def test_a_key_is_remembered_for_the_ttl_then_read_again() -> None:
    cache = KeyCache(0.2)
    cache.put(b"d", CALLER, None, since=cache.generation)
    assert cache.get(b"d") == (CALLER, None)
    time.sleep(0.25)
    assert cache.get(b"d") is None


def test_a_key_read_before_a_change_is_not_remembered_after_it() -> None:
    # A request reads the row, a revoke commits and clears, the request
    # then stores what it read: the revoked key must not be remembered.
    cache = KeyCache(60)
    since = cache.generation
    cache.clear()
    cache.put(b"d", CALLER, None, since=since)
    assert cache.get(b"d") is None
    cache.put(b"d", CALLER, None, since=cache.generation)
    assert cache.get(b"d") == (CALLER, None)


def test_zero_ttl_remembers_nothing_and_the_size_is_bounded() -> None:
    off = KeyCache(0)
    off.put(b"d", CALLER, None, since=off.generation)
    assert off.get(b"d") is None
    cache = KeyCache(60)
    for i in range(MAX_ENTRIES + 5):
        cache.put(i.to_bytes(4, "big"), CALLER, None, since=cache.generation)
    assert cache.get((MAX_ENTRIES + 4).to_bytes(4, "big")) is not None
    assert cache.get((0).to_bytes(4, "big")) is None  # forgotten when the bound was reached


def test_expiry() -> None:
    assert not expired(None)
    assert expired(utcnow() - timedelta(seconds=1))
    assert not expired(utcnow() + timedelta(seconds=60))
