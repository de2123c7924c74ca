"""Routing across a model's deployments: which one to try next, when to try
again, and which to leave alone for a while.

* **Choice.** A deployment is drawn with probability proportional to its
  ``weight`` among the healthy ones not yet tried for this request; among
  deployments of the same weight the least busy (fewest requests in flight)
  wins. A deployment at its ``max_concurrency`` is skipped while another has
  room; when all are full the request waits for a slot (within its deadline).
* **Cooldown** (a circuit breaker). ``cooldown_failures`` consecutive
  retryable failures take a deployment out of rotation for
  ``cooldown_seconds``; then one request probes it: success puts it back,
  failure cools it down again. A 429 with ``Retry-After`` cools it down for
  that long.
* **Retries** happen on connection errors, timeouts, 408, 429 and 5xx, never
  on other 4xx (validation, content policy), with exponential backoff and
  full jitter, honouring ``Retry-After``; bounded by ``max_attempts`` and the
  request's deadline.
* **Work that may have started** is not sent again: when a failed attempt
  may have started paid work upstream (a provider marked its
  :class:`~imagegate.providers.base.AttemptRecord`, or raised an error with
  ``maybe_started``: a job submission whose answer timed out), its error goes
  to the client at once, with no retry on any deployment and no fallback,
  unless the model's ``routing.resubmit_started`` is true. Synchronous
  OpenAI-shaped calls never mark it, so their timeouts are retried as above.
* **What was tried** goes with every answer: a success's :class:`Served`,
  and the error that ends :func:`execute` carries the same facts as its
  headers (:func:`route_headers`): the model and provider of the last
  attempt, and how many attempts were made.
* **Types** are kept: :func:`execute` is generic over what an attempt
  returns, and its :class:`Served` carries that value as it was typed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from imagegate.config import RETRYABLE_KINDS, RoutingConfig
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment
from imagegate.errors import ImagegateError, UpstreamError, UpstreamTimeoutError
from imagegate.providers.base import attempt_record

T = TypeVar("T")
# One attempt: the request as the leg's model sees it, on one deployment.
Attempt = Callable[[ImageRequest, Deployment], Awaitable[T]]

CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "moderation_blocked", "image_generation_user_error"})


def kind_of(exc: ImagegateError) -> str:
    """The error kind that decides retries and fallbacks."""
    if isinstance(exc, UpstreamTimeoutError) or exc.status in (408, 504):
        return "timeout"
    if exc.status == 429:
        return "rate_limit"
    if exc.code in ("upstream_unreachable", "upstream_connection_error"):
        return "connection"
    if exc.status >= 500:
        return "server_error"
    if exc.code in CONTENT_POLICY_CODES or exc.type in CONTENT_POLICY_CODES:
        return "content_policy"
    return "invalid_request"


def retryable(kind: str) -> bool:
    return kind in RETRYABLE_KINDS


# The longest an upstream's Retry-After may bench a deployment: a wrong or
# hostile header (a year, "inf") must not take it out of service for good.
MAX_COOLDOWN_SECONDS = 3600.0


def retry_after(exc: ImagegateError) -> float | None:
    value = exc.headers.get("Retry-After") or exc.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_COOLDOWN_SECONDS)


@dataclass(eq=False)
class Slot:
    deployment: Deployment
    weight: float
    limit: asyncio.Semaphore | None
    max_concurrency: int | None
    in_flight: int = 0
    failures: int = 0  # consecutive
    cooldown_until: float = 0.0

    def cooling(self, now: float) -> bool:
        return self.cooldown_until > now

    def has_room(self) -> bool:
        return self.max_concurrency is None or self.in_flight < self.max_concurrency


@dataclass
class Pool:
    """The deployments of one model and their state (per process)."""

    slots: list[Slot]
    policy: RoutingConfig
    rng: random.Random = field(default_factory=random.Random)

    def pick(self, tried: Sequence[Slot]) -> Slot | None:
        """The next deployment to try, or None when every healthy one has been tried."""
        now = time.monotonic()
        healthy = [s for s in self.slots if not s.cooling(now)]
        if not healthy and not tried:
            # all cooling down: probe the one that comes back first (half-open)
            return min(self.slots, key=lambda s: s.cooldown_until)
        fresh = [s for s in healthy if s not in tried]
        if not fresh:
            return None
        roomy = [s for s in fresh if s.has_room()] or fresh
        drawn = self.rng.choices(roomy, weights=[s.weight for s in roomy])[0]
        peers = [s for s in roomy if s.weight == drawn.weight]
        least = min(s.in_flight for s in peers)
        return self.rng.choice([s for s in peers if s.in_flight == least])

    def succeeded(self, slot: Slot) -> None:
        slot.failures = 0
        slot.cooldown_until = 0.0

    def failed(self, slot: Slot, exc: ImagegateError) -> None:
        kind = kind_of(exc)
        if not retryable(kind):
            return  # the request's fault, not the deployment's
        now = time.monotonic()
        slot.failures += 1
        if slot.failures >= self.policy.cooldown_failures:
            slot.cooldown_until = max(slot.cooldown_until, now + self.policy.cooldown_seconds)
        wait = retry_after(exc)
        if kind == "rate_limit" and wait:
            slot.cooldown_until = max(slot.cooldown_until, now + wait)

    def backoff(self, attempt: int, exc: ImagegateError) -> float | None:
        """Seconds to wait before attempt number ``attempt + 1`` (full jitter),
        or None when the upstream asks for a longer wait than allowed."""
        wait = retry_after(exc)
        if wait is not None and wait > self.policy.max_retry_after_seconds:
            return None
        ceiling = min(
            self.policy.backoff_max_seconds, self.policy.backoff_initial_seconds * self.policy.backoff_multiplier ** (attempt - 1)
        )
        jittered = self.rng.uniform(0, ceiling)
        return max(jittered, wait or 0.0)


class SlotLease:
    """Holds a concurrency slot and the in-flight count for one attempt
    (``async with``)."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot

    async def __aenter__(self) -> Slot:
        if self.slot.limit is not None:
            await self.slot.limit.acquire()
        self.slot.in_flight += 1
        return self.slot

    async def __aexit__(self, *exc: object) -> None:
        self.slot.in_flight -= 1
        if self.slot.limit is not None:
            self.slot.limit.release()


def exhausted(model: str, last: ImagegateError | None) -> ImagegateError:
    if last is not None:
        return last
    return UpstreamError(f"No deployment of '{model}' could take the request.", code="no_deployment_available", status=503)


@dataclass(frozen=True)
class Leg:
    """One model of a request's chain: the request as that model sees it, its
    pool, and when to give up on it for the next model."""

    request: ImageRequest
    pool: Pool
    fallback_on: frozenset[str]
    only_provider: str | None = None  # a virtual key's provider
    api_key: str | None = None  # a virtual key's credential


def route_headers(model: str, provider: str | None, attempts: int) -> dict[str, str]:
    """What was tried, as response headers: the model and provider of the
    last attempt (the one whose answer the client gets) and the number of
    attempts over all deployments and fallbacks."""
    headers = {"x-imagegate-model": model, "x-imagegate-attempts": str(attempts)}
    if provider is not None:  # None: no deployment could even be tried
        headers["x-imagegate-provider"] = provider
    return headers


@dataclass
class Served(Generic[T]):
    """What served a request: the winning attempt's value, its leg and
    deployment, and how many attempts it took. With ``hold``, the
    attempt's concurrency slot stays held until ``async with served:``
    ends (or :meth:`release`)."""

    value: T
    leg: Leg
    slot: Slot
    attempts: int
    # What the gateway changed: each distinct resize of the answer's images
    # ("640x480->1024x1024; crop"), filled in as the images are shaped.
    resized: list[str] = field(default_factory=list)
    _held: contextlib.AsyncExitStack | None = field(default=None, repr=False)

    @property
    def request(self) -> ImageRequest:
        """The request as the serving model took it (a fallback's, after a fallback)."""
        return self.leg.request

    @property
    def model(self) -> str:
        return self.leg.request.model

    @property
    def deployment(self) -> Deployment:
        return self.slot.deployment

    @property
    def provider(self) -> str:
        return self.slot.deployment.provider

    def headers(self) -> dict[str, str]:
        """What was tried (:func:`route_headers`)."""
        return route_headers(self.model, self.provider, self.attempts)

    async def release(self) -> None:
        """Give back the concurrency slot held for a stream (once; no-op when none)."""
        held, self._held = self._held, None
        if held is not None:
            await held.aclose()

    async def __aenter__(self) -> Served[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


@dataclass
class _Trace:
    """The last attempt so far, for the headers of the error that may end it all."""

    model: str
    provider: str | None = None
    attempts: int = 0


async def execute(legs: Sequence[Leg], call: Attempt[T], policy: RoutingConfig, *, hold: bool = False) -> Served[T]:
    """Try ``call(request, deployment)`` over the legs' deployments until one
    succeeds. ``hold`` keeps the winning attempt's concurrency slot (a stream
    releases it when it ends: ``async with served``). The error that ends it carries
    :func:`route_headers` (merged into its own headers, such as Retry-After)."""
    trace = _Trace(legs[0].request.model)
    try:
        return await _execute(legs, call, policy, hold, trace)
    except ImagegateError as exc:
        exc.headers = {**exc.headers, **route_headers(trace.model, trace.provider, trace.attempts)}
        raise


async def _execute(legs: Sequence[Leg], call: Attempt[T], policy: RoutingConfig, hold: bool, trace: _Trace) -> Served[T]:  # noqa: C901
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.deadline_seconds
    attempts = 0
    last: ImagegateError | None = None
    for index, leg in enumerate(legs):
        has_next = index + 1 < len(legs)
        tried: list[Slot] = []
        while attempts < policy.max_attempts:
            slot = _pick(leg, tried)
            if slot is None:
                if last is not None and has_next and kind_of(last) in leg.fallback_on:
                    break  # exhausted here: on to the next model
                if last is not None and not retryable(kind_of(last)):
                    raise last
                delay = leg.pool.backoff(attempts, last) if last is not None else 0.0
                if delay is None or loop.time() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
                tried = []  # every deployment may be tried again
                slot = _pick(leg, tried)
                if slot is None:
                    break
            attempts += 1
            trace.model, trace.provider, trace.attempts = leg.request.model, slot.deployment.provider, attempts
            deployment = slot.deployment if leg.api_key is None else replace(slot.deployment, api_key=leg.api_key)
            try:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                async with contextlib.AsyncExitStack() as lease:
                    await _acquire(lease, SlotLease(slot), remaining)
                    value = await _attempt(call, leg.request, deployment, min(remaining, deployment.timeout or remaining))
                    held = lease.pop_all() if hold else None  # the stream's now: released when it ends
                leg.pool.succeeded(slot)
                return Served(value, leg, slot, attempts, _held=held)
            except ImagegateError as exc:
                leg.pool.failed(slot, exc)
                last = exc
                tried.append(slot)
                kind = kind_of(exc)
                if exc.maybe_started and not policy.resubmit_started:
                    raise  # the upstream may be doing (and charging for) it: never sent twice
                if not retryable(kind):
                    if has_next and kind in leg.fallback_on:
                        break
                    raise
        if attempts >= policy.max_attempts:
            break
    raise exhausted(legs[0].request.model, last)


def _pick(leg: Leg, tried: list[Slot]) -> Slot | None:
    if leg.only_provider is None:
        return leg.pool.pick(tried)
    allowed = [s for s in leg.pool.slots if s.deployment.provider == leg.only_provider]
    fresh = [s for s in allowed if s not in tried]
    return min(fresh, key=lambda s: s.in_flight) if fresh else None


async def _acquire(stack: contextlib.AsyncExitStack, lease: SlotLease, remaining: float) -> None:
    try:
        async with asyncio.timeout(remaining):
            await stack.enter_async_context(lease)
    except TimeoutError:
        raise UpstreamTimeoutError("Every deployment was busy until the request's deadline.", code="deployments_busy") from None


async def _attempt(call: Attempt[T], request: ImageRequest, deployment: Deployment, limit: float) -> T:
    with attempt_record() as record:  # the provider marks it when paid work may have started
        try:
            async with asyncio.timeout(limit):
                return await call(request, deployment)
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"The deployment on '{deployment.provider}' did not finish within {limit:.3g} s.",
                code="upstream_timeout",
                maybe_started=record.maybe_started,
            ) from None
        except ImagegateError as exc:
            exc.maybe_started = exc.maybe_started or record.maybe_started
            raise
