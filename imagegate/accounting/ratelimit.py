"""Per-key rate limits: requests per minute and images per minute.

Moving windows from the ``limits`` library; counters live in process memory
by default or in Redis (``rate_limits.storage_url``) when several replicas
share them. Both limits are tested before either is counted, so a request
refused for one limit does not use up the other.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from imagegate.errors import RateLimitError


def _storage(url: str) -> tuple[Storage, Callable[[], Awaitable[None]] | None]:
    """The counters' storage, and how to close it."""
    if url.startswith("memory://"):
        return MemoryStorage(), None
    from limits.aio.storage import RedisStorage
    from redis.asyncio import ConnectionPool

    plain = url.removeprefix("async+")
    pool = ConnectionPool.from_url(plain)  # ours, so that it closes with the app
    # limits types its storage options as scalars; redis-py takes a pool among them
    return RedisStorage("async+" + plain, implementation="redispy", connection_pool=pool), pool.aclose  # type: ignore[arg-type]


class RateLimiter:
    def __init__(self, storage_url: str = "memory://") -> None:
        storage, self._close = _storage(storage_url)
        self._limiter = MovingWindowRateLimiter(storage)

    async def aclose(self) -> None:
        if self._close is not None:
            await self._close()

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
