"""The image service: what the API layer calls.

It holds the parts :mod:`imagegate.gateway.wiring` builds from the settings
and gives the routes one call per operation: run a request (once per
Idempotency-Key when one is given), open a stream, open a hosted file,
readiness, start and close. Nothing here knows HTTP; the API layer hands in
an :class:`~imagegate.contract.requests.ImageRequest` and the public base
URL, and gets typed answers or stream events back.

The work is done in small modules: :mod:`~imagegate.gateway.runner` (legs,
admission, routing, shaping, settlement), :mod:`~imagegate.gateway.rendering`
(answers and events as the spec writes them), :mod:`~imagegate.gateway.hosted`
(stored images and their URLs), :mod:`~imagegate.gateway.sweeper` and
:mod:`~imagegate.gateway.readiness`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from imagegate.accounting.caller import Caller
from imagegate.accounting.idempotency import IdempotencyStore, Replay
from imagegate.accounting.service import Accounting
from imagegate.config import Settings
from imagegate.contract.requests import ImageRequest
from imagegate.contract.responses import KeepAlive, StreamEvent
from imagegate.contract.validate import ModelDirectory
from imagegate.errors import InvalidRequestError
from imagegate.gateway.fetch import ImageFetcher
from imagegate.gateway.hosted import HostedFiles
from imagegate.gateway.jobs.service import JobService
from imagegate.gateway.keepalive import IDLE, ticking
from imagegate.gateway.readiness import readiness
from imagegate.gateway.rendering import json_body
from imagegate.gateway.routes import Route
from imagegate.gateway.routing import Served
from imagegate.gateway.runner import RequestRunner
from imagegate.gateway.sweeper import Sweeper
from imagegate.gateway.webhooks.service import Webhooks
from imagegate.providers.base import Provider
from imagegate.storage.base import ObjectStream, Storage

log = logging.getLogger("imagegate.gateway")

REPLAY_HEADER = "x-imagegate-idempotent-replay"


def answer_headers(served: Served[Any]) -> dict[str, str]:
    """What served the request (model, provider, attempts) and what the gateway
    changed (docs/output.md). Errors after routing started carry the first
    three too (``routing.route_headers``, on the error itself)."""
    headers = served.headers()
    if served.resized:  # a stream's: its first event's images (the headers go before the rest)
        headers["x-imagegate-resized"] = ", ".join(served.resized)
    return headers


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished answer: its JSON body as sent, what it cost (nano-dollars;
    0 for a replay) and the x-imagegate-* headers saying what served it."""

    body: bytes
    cost: int
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


@dataclass(frozen=True, slots=True)
class Stream:
    """A stream ready to answer: what is held for it (nano-dollars), the
    headers saying what serves it (none when it starts with a keep-alive),
    and the events, the first included."""

    reserved: int
    headers: dict[str, str]
    events: AsyncGenerator[StreamEvent | KeepAlive, None]


class ImageService:
    def __init__(
        self,
        settings: Settings,
        *,
        accounting: Accounting,
        providers: dict[str, Provider],
        routes: dict[str, Route],
        storage: Storage,
        hosted: HostedFiles,
        fetcher: ImageFetcher,
        idempotency: IdempotencyStore,
        sweeper: Sweeper,
    ) -> None:
        self.settings = settings
        self.accounting = accounting
        self.providers = providers
        self.routes = routes
        self.storage = storage
        self.hosted = hosted
        self.fetcher = fetcher
        self.idempotency = idempotency
        self.sweeper = sweeper
        self.created_at = int(time.time())
        self._background: set[asyncio.Task[None]] = set()
        self.directory = ModelDirectory({n: r.rules for n, r in routes.items()}, settings.default_model)
        self.runner = RequestRunner(routes, providers, accounting, hosted, settings.models, settings.server.max_image_pixels)
        self.jobs = JobService(settings, accounting, self.runner, routes, hosted)
        sweeper.jobs = self.jobs  # queued jobs past their time, finished ones past their results' lifetime
        self.webhooks = Webhooks(settings.webhooks, accounting.db, accounting.vault, self.jobs.view)
        self.jobs.on_finished.append(self.webhooks.job_finished)  # signed webhooks of finished jobs
        self.jobs.validate_webhook_url = self.webhooks.check_url

    # -- requests ----------------------------------------------------------

    async def create(self, request: ImageRequest, base_url: str, caller: Caller, request_id: str) -> Answer:
        """Run a request over its deployments and fallbacks."""
        created = await self.runner.create(request, base_url, caller, request_id)
        return Answer(json_body(created.response), created.cost, answer_headers(created.served))

    async def create_once(
        self, request: ImageRequest, base_url: str, caller: Caller, request_id: str, *, key: str, client: str
    ) -> Answer:
        """Run a request once per Idempotency-Key ``key``: a retry with the same
        key and body gets the first answer again (its hosted URLs issued
        afresh), not a second generation or charge. Keys are the caller's own;
        ``client`` (the caller's address) tells anonymous callers apart."""
        if not key or len(key) > 255:
            raise InvalidRequestError("Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key")
        scope = caller.identity if caller.kind != "anonymous" else f"anonymous:{client}"[:64]
        replay = await self._claim(scope, key, request.fingerprint(caller.virtual_key), request.model)
        if replay is not None:
            body = await self.hosted.refresh_urls(replay.body, base_url)
            return Answer(body, 0, {**replay.headers, REPLAY_HEADER: "true"}, replay.status)
        try:
            answer = await self.create(request, base_url, caller, request_id)
        except BaseException:
            await asyncio.shield(self.idempotency.release(scope, key))  # a retry runs afresh
            raise
        await self.idempotency.complete(scope, key, answer.status, answer.headers, answer.body)
        return answer

    async def _claim(self, scope: str, key: str, fingerprint: str, model: str) -> Replay | None:
        """Claim ``key`` (None) or get its first answer (a Replay), waiting while
        another request holds it. Cancelled while waiting (the client went
        away), a claim that still goes through is given back at once."""
        deadline = self.routes[model].policy.deadline_seconds
        claim = asyncio.ensure_future(
            self.idempotency.claim(scope, key, fingerprint, wait_seconds=deadline, lease_seconds=deadline)
        )
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            claim.add_done_callback(lambda done: self._release_if_claimed(done, scope, key))
            raise

    def _release_if_claimed(self, claim: asyncio.Future[Replay | None], scope: str, key: str) -> None:
        if claim.cancelled() or claim.exception() is not None or claim.result() is not None:
            return
        task = asyncio.ensure_future(self._release(scope, key))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release(self, scope: str, key: str) -> None:
        try:
            await self.idempotency.release(scope, key)
        except Exception as exc:  # the claim's lease ends it; the sweep clears it
            log.warning("giving back an Idempotency-Key claim failed: %s", exc)

    async def open_stream(self, request: ImageRequest, base_url: str, caller: Caller, request_id: str) -> Stream:
        """Admit a streaming request and wait for its first event, at most
        ``server.keepalive_seconds``. Retries and fallbacks happen only before
        its first event, so a request that fails within that time is still a
        plain error (raised here). One that takes longer is answered at once
        with a keep-alive first (its errors are then in-band events, and what
        serves it is not known yet: no x-imagegate-model/provider/attempts
        headers). From then on a keep-alive goes out whenever nothing else was
        sent for that long. Settled when the events end or are closed."""
        opened = await self.runner.open_stream(request, base_url, caller, request_id)
        merged = ticking(opened, self.settings.server.keepalive_seconds)
        first = await anext(merged)  # raised: `merged` has closed `opened`, which settled it

        async def events() -> AsyncGenerator[StreamEvent | KeepAlive, None]:
            try:
                yield IDLE if first is None else first
                async for event in merged:
                    yield IDLE if event is None else event
            finally:
                await merged.aclose()

        headers = answer_headers(opened.served) if first is not None and opened.served is not None else {}
        return Stream(opened.reserved, headers, events())

    # -- hosted files ------------------------------------------------------

    async def open_file(self, key: str, expires: str, signature: str) -> tuple[ObjectStream, int]:
        """A hosted image by its signed URL, opened for streaming, and the link's expiry."""
        return await self.hosted.open(key, expires, signature)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        await self.accounting.start()
        await self.idempotency.sweep()  # claims left by a previous life of this process
        for name, provider in self.providers.items():
            await provider.start([d.model for r in self.routes.values() for d in r.deployments if d.provider == name])
        for name, route in self.routes.items():
            for dep in route.deployments:
                if self.accounting.price_for(name, dep.model, route.rules) is None:
                    refused = self.settings.pricing_missing == "refuse"
                    log.warning("model %s (%s on %s) has no price: %s; set catalog.%s.price in the config",
                                name, dep.model, dep.provider,
                                "keys and teams with a budget are refused it, others are recorded at $0 (estimated)"
                                if refused else "its requests are recorded at $0 (pricing_missing: allow)", name)  # fmt: skip

        await self.jobs.start()  # after the providers: its workers run jobs at once
        await self.webhooks.start()  # the delivery loop: webhooks a previous life left are sent too

    async def readiness(self) -> dict[str, bool]:
        return await readiness(self.storage, self.accounting.db, self.providers)

    async def aclose(self) -> None:
        await self.jobs.aclose()  # running jobs finish or are handed back first
        await self.webhooks.aclose()  # after the jobs' listeners: what they enqueued waits in the outbox
        await self.accounting.aclose()
        await self.fetcher.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        await self.storage.aclose()
