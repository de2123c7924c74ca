"""Per-key rate limits: requests per minute and images per minute.

Moving windows from the ``limits`` library; counters live in process memory
by default or in Redis (``rate_limits.storage_url``) when several replicas
share them. Both limits are tested before either is counted, so a request
refused for one limit does not use up the other.
"""

from __future__ import annotations

import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from imagegate.errors import RateLimitError


def _storage(url: str) -> Storage:
    if url.startswith("memory://"):
        return MemoryStorage()
    if not url.startswith("async+"):
        url = "async+" + url
    return storage_from_string(url)  # type: ignore[return-value]


class RateLimiter:
    def __init__(self, storage_url: str = "memory://") -> None:
        self._limiter = MovingWindowRateLimiter(_storage(storage_url))

    async def _refuse(self, item: RateLimitItemPerMinute, kind: str, key_id: str, what: str, limit: int) -> RateLimitError:
        stats = await self._limiter.get_window_stats(item, kind, key_id)
        return RateLimitError(
            f"Rate limit reached for this key: {limit} {what} per minute.",
            retry_after=max(1.0, stats.reset_time - time.time()),
            code="rate_limit_exceeded",
        )

    async def admit(self, key_id: str, rpm: int | None, ipm: int | None, images: int) -> None:
        checks = []
        if rpm:
            checks.append((RateLimitItemPerMinute(rpm), "rpm", 1, "requests", rpm))
        if ipm:
            if images > ipm:
                raise RateLimitError(
                    f"This request asks for {images} images; this key may make {ipm} per minute.",
                    retry_after=60,
                    code="rate_limit_exceeded",
                )
            checks.append((RateLimitItemPerMinute(ipm), "ipm", images, "images", ipm))
        for item, kind, cost, what, limit in checks:
            if not await self._limiter.test(item, kind, key_id, cost=cost):
                raise await self._refuse(item, kind, key_id, what, limit)
        for item, kind, cost, what, limit in checks:
            if not await self._limiter.hit(item, kind, key_id, cost=cost):  # lost a race since the test
                raise await self._refuse(item, kind, key_id, what, limit)
