"""The delivery loop: one per replica, POSTing due webhooks from the outbox.

It claims as many due deliveries as it has free slots
(:func:`outbox.claim`), POSTs each once and records the attempt
(``{at, status_code | error, duration_ms}``). Any 2xx is delivered; 410 Gone
(the receiver wants no more, as the Standard Webhooks spec has it) fails the
delivery for good; anything else - another status, a timeout, a refused
connection or address - is tried again after ``initial_backoff_seconds``,
doubled each time up to ``max_backoff_seconds`` (a longer ``Retry-After`` is
honoured up to that cap), with up to a quarter more of random jitter, until
``retry_seconds`` after the first attempt; the last attempt falls on that
limit, and if it fails the delivery is ``failed``.

Each attempt resolves the URL's host again and connects to the address it
checked (:class:`~.urls.WebhookURLs`); redirects are not followed (a 3xx is
a failed attempt); the answer's body is never read. The signature is made
at each attempt with the key's current secret, so a rotation applies to
deliveries still waiting. Logs name the delivery, the job and the host,
never the URL's path or query, the secret or the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import httpx

from imagegate.config import WebhooksConfig
from imagegate.db.engine import Database
from imagegate.db.models import utcnow
from imagegate.gateway.webhooks import outbox
from imagegate.gateway.webhooks.outbox import Attempt, Delivery
from imagegate.gateway.webhooks.sign import signed_headers
from imagegate.gateway.webhooks.urls import RefusedAddress, WebhookURLs

log = logging.getLogger("imagegate.webhooks")

SecretOf = Callable[[str], Awaitable[str | None]]  # key id -> its whsec_ secret
SLOTS = 32  # deliveries in flight per replica
LEASE_MARGIN_SECONDS = 30.0  # a claim outlives the attempt's timeout by this much


def backoff(config: WebhooksConfig, attempts: int, retry_after: float | None = None) -> float:
    """Seconds before the next attempt, after ``attempts`` failed ones."""
    delay = config.initial_backoff_seconds * 2.0 ** min(attempts - 1, 40)
    delay *= 1 + random.random() / 4
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, config.max_backoff_seconds)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if 0 <= value < float("inf") else None


class Deliverer:
    def __init__(self, db: Database, config: WebhooksConfig, urls: WebhookURLs, secret_of: SecretOf) -> None:
        self.db = db
        self.config = config
        self.urls = urls
        self.secret_of = secret_of
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(config.timeout_seconds),
            headers={"User-Agent": "imagegate-webhooks/1", "Content-Type": "application/json"},
        )

    def wake(self) -> None:
        """Look for due deliveries now (one was just added)."""
        self._wake.set()

    async def forever(self) -> None:
        while True:
            self._wake.clear()
            wait = self.config.poll_seconds
            try:
                await self.once()
                due = await outbox.next_due(self.db)
                if due is not None and len(self._inflight) < SLOTS:  # all slots busy: a finished one wakes us
                    wait = min(wait, max((due - utcnow()).total_seconds(), 0.01))
            except Exception as exc:  # the database is down: try again on the next round
                log.warning("webhook delivery loop: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def once(self) -> int:
        """Claim due deliveries for the free slots and start them; how many."""
        free = SLOTS - len(self._inflight)
        if free <= 0:
            return 0
        claimed = await outbox.claim(self.db, limit=free, lease_seconds=self.config.timeout_seconds + LEASE_MARGIN_SECONDS)
        for delivery in claimed:
            task = asyncio.create_task(self.attempt(delivery), name=f"webhook-{delivery.id}")
            self._inflight.add(task)
            task.add_done_callback(self._done)
        return len(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()  # a slot is free

    async def aclose(self) -> None:
        """Stop the attempts in flight (their claims lapse; another round sends them) and the client."""
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._client.aclose()

    async def attempt(self, delivery: Delivery) -> None:
        """One attempt, recorded; never raises (but for cancellation)."""
        at = utcnow()
        started = time.monotonic()
        retry_after: float | None = None
        final = False
        try:
            secret = await self.secret_of(delivery.key_id)
            if secret is None:
                outcome: Attempt = {"error": "the key has no webhook secret"}
                final = True
            else:
                async with asyncio.timeout(self.config.timeout_seconds):
                    response = await self._post(delivery, secret)
                outcome = {"status_code": response.status_code}
                final = response.status_code == 410
                retry_after = _retry_after(response) if response.status_code in (429, 503) else None
        except TimeoutError:
            outcome = {"error": f"timed out after {self.config.timeout_seconds:g} s"}
        except RefusedAddress as exc:
            outcome = {"error": f"the URL {exc}"}
        except httpx.HTTPError as exc:
            outcome = {"error": f"connection failed ({type(exc).__name__})"}
        except Exception as exc:  # the database, a secret that cannot be read: try again later
            log.warning("webhook %s (job %s): %s", delivery.id, delivery.job_id, exc)
            outcome = {"error": "internal error"}
        attempt = {"at": at.isoformat(), **outcome, "duration_ms": int((time.monotonic() - started) * 1000)}
        await self._record(delivery, attempt, final=final, retry_after=retry_after)

    async def _post(self, delivery: Delivery, secret: str) -> httpx.Response:
        target = httpx.URL(delivery.url)
        address = await self.urls.address(target)
        request = self._client.build_request(
            "POST",
            target.copy_with(host=address),
            content=delivery.payload,
            headers={"Host": target.netloc.decode("ascii"), **signed_headers(secret, delivery.id, delivery.payload)},
            extensions={"sni_hostname": target.host},
        )
        response = await self._client.send(request, stream=True)
        await response.aclose()  # the status is all that counts; the body is not read
        return response

    async def _record(self, delivery: Delivery, attempt: Attempt, *, final: bool, retry_after: float | None) -> None:
        code = attempt.get("status_code")
        host = httpx.URL(delivery.url).host
        next_at: datetime | None = None
        if isinstance(code, int) and 200 <= code < 300:
            state = "delivered"
        else:
            first = delivery.first_attempt_at or datetime.fromisoformat(attempt["at"])
            limit = first + timedelta(seconds=self.config.retry_seconds)
            now = utcnow()
            if final or now >= limit:
                state = "failed"
            else:
                state = "pending"
                next_at = min(now + timedelta(seconds=backoff(self.config, len(delivery.attempts) + 1, retry_after)), limit)
            what = f"HTTP {code}" if code is not None else attempt.get("error")
            log.info("webhook %s (job %s) to %s: %s; %s", delivery.id, delivery.job_id, host, what,
                     f"next attempt at {next_at.isoformat()}" if next_at else "given up")  # fmt: skip
        try:
            if not await outbox.record(self.db, delivery, attempt, state=state, next_attempt_at=next_at):
                log.warning("webhook %s: its claim lapsed during the attempt; another round sends it again", delivery.id)
        except Exception as exc:  # the claim lapses and the delivery is tried again
            log.warning("webhook %s: recording an attempt failed: %s", delivery.id, exc)
