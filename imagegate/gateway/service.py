"""The image service: route a typed request to a deployment, run it, and
shape the result into what the client asked for (format, size, compression,
``b64_json`` or a hosted URL).

Nothing here knows HTTP; the API layer hands in an
:class:`~imagegate.contract.requests.ImageRequest` and the public base URL,
and gets typed responses or stream events back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import orjson
from sqlalchemy import text

from imagegate.accounting.idempotency import IdempotencyStore
from imagegate.accounting.service import Accounting, Admission, Caller, Outcome, outcome_of_error
from imagegate.config import Settings
from imagegate.contract.catalog import parse_size
from imagegate.contract.requests import ImageRequest
from imagegate.contract.responses import ImageData, ImagesResponse, StreamEvent
from imagegate.contract.results import CompletedImage, Deployment, ImageMeta, PartialImage, ProviderResult, Usage
from imagegate.contract.validate import ModelDirectory, retarget
from imagegate.errors import GoneError, ImagegateError, InvalidRequestError, NotFoundError
from imagegate.gateway.checks import check_usage, checked_result, warn_extra_images
from imagegate.gateway.fetch import ImageFetcher
from imagegate.gateway.output import ResizePolicy, Shaped, shape_images, usage_out
from imagegate.gateway.routes import Route, build_routes, fallback_chain, rules_for
from imagegate.gateway.routing import Leg, Served, execute
from imagegate.providers.base import Provider, ProviderContext
from imagegate.providers.registry import build_provider
from imagegate.storage.base import Storage, StoredObject
from imagegate.storage.local import LocalStorage
from imagegate.storage.signing import (
    URL_PATH,
    SignatureExpired,
    SignatureInvalid,
    URLSigner,
    key_of_url,
    load_or_create_key,
)

log = logging.getLogger("imagegate.gateway")

# The spec's enums: ImagesResponse, and the stream events (which add "auto").
_QUALITIES = ("low", "medium", "high")
_BACKGROUNDS = ("transparent", "opaque")
_EVENT_QUALITIES = (*_QUALITIES, "auto")
_EVENT_BACKGROUNDS = (*_BACKGROUNDS, "auto")
_EVENT_PREFIX = {"generations": "image_generation", "edits": "image_edit", "variations": "image_variation"}


def _add_usage(total: Usage | None, more: Usage | None) -> Usage | None:
    if more is None or total is None:
        return more or total
    return Usage(
        input_tokens=total.input_tokens + more.input_tokens,
        output_tokens=total.output_tokens + more.output_tokens,
        total_tokens=total.total_tokens + more.total_tokens,
        input_text_tokens=total.input_text_tokens + more.input_text_tokens,
        input_image_tokens=total.input_image_tokens + more.input_image_tokens,
        output_image_tokens=(total.output_image_tokens or 0) + (more.output_image_tokens or 0)
        if total.output_image_tokens is not None or more.output_image_tokens is not None
        else None,
        output_text_tokens=(total.output_text_tokens or 0) + (more.output_text_tokens or 0)
        if total.output_text_tokens is not None or more.output_text_tokens is not None
        else None,
    )


def _size(shaped: Shaped, meta: ImageMeta) -> str:
    """The upstream's reported size passes through unless the gateway resized
    (then the new size) or it reported none (then the image's own)."""
    return shaped.size_str if shaped.resized or parse_size(meta.size or "") is None else meta.size  # type: ignore[return-value]


def _said(value: str | None, allowed: tuple[str, ...]) -> str | None:
    """An upstream's value where the spec allows it; never one of the gateway's own."""
    return value if value in allowed else None


def _background(shaped: list[Shaped], said: str | None, allowed: tuple[str, ...]) -> str | None:
    if any(s.resize is not None and s.resize.transparent_padding for s in shaped):
        return "transparent"  # the gateway padded with transparency: it knows
    return _said(said, allowed)


class ImageService:
    def __init__(self, settings: Settings, storage: Storage, signer: URLSigner, accounting: Accounting) -> None:
        self.settings = settings
        self.accounting = accounting
        self.created_at = int(time.time())
        self.storage = storage
        self.signer = signer
        self.fetcher = ImageFetcher(settings.server.fetch)
        context = ProviderContext(max_image_pixels=settings.server.max_image_pixels, fetch_url=self.fetcher.download)
        self.providers: dict[str, Provider] = {
            name: build_provider(name, cfg, context) for name, cfg in settings.providers.items()
        }
        self.routes: dict[str, Route] = build_routes(settings)
        self.idempotency = IdempotencyStore(accounting.db)
        self.directory = ModelDirectory({n: r.rules for n, r in self.routes.items()}, settings.default_model)

    @staticmethod
    def check(settings: Settings) -> None:
        """Raise ConfigError for what only the service can check (model rules)."""
        for name in settings.models:
            rules_for(settings, name)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageService:
        root = settings.storage_path
        storage = LocalStorage(root, max_bytes=settings.storage_max_bytes)
        secret = settings.storage.signing_key
        key = secret.get_secret_value().encode() if secret else load_or_create_key(settings.server.data_dir / "signing.key")
        return cls(settings, storage, URLSigner(key, settings.storage.url_ttl_seconds), Accounting(settings))

    # -- running requests --------------------------------------------------

    async def _legs(self, request: ImageRequest, caller: Caller) -> list[Leg]:
        """The request's chain: its model, then each fallback that accepts it
        and that the caller may use (a key's allowed models bind fallbacks too)."""
        route = self.routes[request.model]
        if caller.virtual_key is not None:  # a provider's own credential: that provider only, no fallbacks
            async with self.accounting.db.read() as session:
                provider_name, secret = await self.accounting.vault.open(session, caller.virtual_key, caller)
            if not any(d.provider == provider_name for d in route.deployments):
                raise InvalidRequestError(
                    f"The virtual key is for provider '{provider_name}', which does not serve model '{request.model}'.",
                    param="x-portkey-virtual-key",
                    code="virtual_key_mismatch",
                )
            return [Leg(request, route.pool, route.fallback_on, provider_name, secret)]
        legs = [Leg(request, route.pool, route.fallback_on)]
        for name in fallback_chain(self.routes, request.model):
            if not caller.may_use(name):
                continue
            fallback = self.routes[name]
            retargeted = retarget(request, name, fallback.rules)
            if retargeted is not None:
                legs.append(Leg(retargeted, fallback.pool, fallback.fallback_on))
        return legs

    def _candidates(self, legs: list[Leg]) -> list[tuple[ImageRequest, Deployment]]:
        return [(leg.request, slot.deployment) for leg in legs for slot in leg.pool.slots]

    async def create(
        self, request: ImageRequest, base_url: str, caller: Caller, request_id: str
    ) -> tuple[ImagesResponse, int, Served]:
        """Run a request over its deployments and fallbacks; returns the
        response, its cost in nano-dollars, and what served it."""
        legs = await self._legs(request, caller)
        policy = self.routes[request.model].policy
        admission = await self.accounting.admit(caller, request, self._candidates(legs), request_id, policy.deadline_seconds)

        async def call(req: ImageRequest, deployment: Deployment) -> ProviderResult:
            result = await self.providers[deployment.provider].run(req, deployment)
            return checked_result(req, result, deployment.provider)

        served: Served | None = None
        try:
            served = await execute(legs, call, policy)
            result: ProviderResult = served.value  # type: ignore[assignment]
            req = served.leg.request
            shaped = await self._shape(req, result.images, served)
            data = await asyncio.gather(*(self._render(req, s, base_url) for s in shaped))
        except BaseException as exc:  # failed or cancelled: charged nothing
            if isinstance(exc, ImagegateError) and served is not None:  # what was tried goes with the error too
                exc.headers = {**exc.headers, **served.headers()}
            await asyncio.shield(self.accounting.settle(admission, outcome_of_error(exc)))
            raise
        admission.serve(req, served.slot.deployment)
        # Shielded: a client hanging up now must not cut the charge of work already done.
        cost = await asyncio.shield(self.accounting.settle(admission, Outcome(len(shaped), result.usage, result.meta)))
        return self._response(req, result, shaped, list(data)), cost, served

    async def open_stream(
        self, request: ImageRequest, base_url: str, caller: Caller, request_id: str
    ) -> tuple[int, Served, AsyncIterator[StreamEvent]]:
        """Admit a streaming request and run it until its first event (retries
        and fallbacks happen only before that); returns the reserved amount,
        what serves it, and the events. It is settled when the events end."""
        legs = await self._legs(request, caller)
        policy = self.routes[request.model].policy
        admission = await self.accounting.admit(caller, request, self._candidates(legs), request_id, policy.deadline_seconds)

        async def first(req: ImageRequest, deployment: Deployment) -> tuple[object, AsyncIterator[object]]:
            events = self.providers[deployment.provider].stream(req, deployment)
            try:
                head = await anext(events)
                if isinstance(head, CompletedImage):
                    check_usage(head.usage, deployment.provider)
                return head, events
            except BaseException:
                await events.aclose()
                raise

        try:
            served = await execute(legs, first, policy, hold=True)
        except BaseException as exc:
            await asyncio.shield(self.accounting.settle(admission, outcome_of_error(exc)))
            raise
        req = served.leg.request
        admission.serve(req, served.slot.deployment)
        head, rest = served.value  # type: ignore[misc]
        return admission.reserved, served, self._stream(req, head, rest, admission, served)

    async def _stream(
        self, request: ImageRequest, head: object, rest: AsyncIterator[object], admission: Admission, served: Served
    ) -> AsyncIterator[StreamEvent]:
        prefix = _EVENT_PREFIX[request.endpoint]
        images, usage, meta, extra = 0, None, ImageMeta(), 0
        provider = served.slot.deployment.provider

        async def items() -> AsyncIterator[object]:
            yield head
            async for item in rest:
                yield item

        try:
            async for item in items():
                if isinstance(item, CompletedImage):
                    check_usage(item.usage, provider)
                if images >= request.n:  # more than asked: neither returned nor charged
                    if isinstance(item, CompletedImage):
                        extra += 1
                    continue
                (shaped,) = await self._shape(request, [item.image], served)  # type: ignore[attr-defined]
                if isinstance(item, PartialImage):
                    yield self._event(request, f"{prefix}.partial_image", shaped, item.meta, None, item.index)
                else:
                    images += 1
                    usage = _add_usage(usage, item.usage)  # type: ignore[attr-defined]
                    meta = item.meta  # type: ignore[attr-defined]
                    yield self._event(request, f"{prefix}.completed", shaped, meta, item.usage, None)  # type: ignore[attr-defined]
        except BaseException as exc:
            await asyncio.shield(self.accounting.settle(admission, outcome_of_error(exc)))
            raise
        finally:
            await rest.aclose()  # type: ignore[attr-defined]
            if served.lease is not None:
                await served.lease.__aexit__(None, None, None)
        if extra:
            warn_extra_images(request, images + extra, provider)
        await asyncio.shield(self.accounting.settle(admission, Outcome(images, usage, meta)))

    async def _shape(self, request: ImageRequest, images: list, served: Served) -> list[Shaped]:  # noqa: ANN001
        """Images as the client asked them (format, size), under the model's
        resize policy; each distinct resize is noted on ``served`` for the
        answer's x-imagegate-resized header."""
        route = self.settings.models[request.model]
        policy = ResizePolicy.of(route.resize, route.pad_color)
        shaped = await shape_images(
            request, images, self.settings.server.max_image_pixels, policy, served.slot.deployment.provider
        )
        for change in (str(s.resize) for s in shaped if s.resize):
            if change not in served.resized:
                served.resized.append(change)
        return shaped

    def _event(
        self,
        request: ImageRequest,
        kind: str,
        shaped: Shaped,
        meta: ImageMeta,
        usage: Usage | None,
        partial_index: int | None,
    ) -> StreamEvent:
        # The events' schema requires these and allows "auto": the upstream's
        # value, else the request's setting (what the field describes).
        quality = _said(meta.quality, _EVENT_QUALITIES) or _said(request.quality, _EVENT_QUALITIES) or "auto"
        return StreamEvent(
            type=kind,
            b64_json=shaped.image.b64,
            created_at=meta.created or int(time.time()),
            size=_size(shaped, meta),
            quality=quality,
            background=_background([shaped], meta.background, _EVENT_BACKGROUNDS) or request.background,
            output_format=shaped.format,
            partial_image_index=partial_index,
            usage=usage_out(usage),
        )

    async def _render(self, request: ImageRequest, shaped: Shaped, base_url: str) -> ImageData:
        if request.response_format == "url":
            # .data / .b64 make the missing form only when needed; with pybase64 that is ~0.1 ms
            # for 2 MB, less than a hop to a worker thread would cost.
            key = await self.storage.put(shaped.image.data, shaped.format)
            url = self.signer.url(self.settings.server.public_url or base_url, key)
            return ImageData(url=url, revised_prompt=shaped.image.revised_prompt)
        return ImageData(b64_json=shaped.image.b64, revised_prompt=shaped.image.revised_prompt)

    def _response(
        self, request: ImageRequest, result: ProviderResult, shaped: list[Shaped], data: list[ImageData]
    ) -> ImagesResponse:
        meta = {}
        if request.spec.reports_output_meta and shaped:
            # What the upstream said (where the spec allows it) or the gateway
            # knows (the image's format and size); never the request's "auto".
            meta = {
                "size": _size(shaped[0], result.meta),
                "output_format": shaped[0].format,
                "quality": _said(result.meta.quality, _QUALITIES),
                "background": _background(shaped, result.meta.background, _BACKGROUNDS),
            }
        created = result.meta.created or int(time.time())
        return ImagesResponse(created=created, data=data, usage=usage_out(result.usage), **meta)

    async def refresh_hosted_urls(self, body: bytes, base_url: str) -> bytes:
        """A replayed answer's hosted URLs, signed afresh (and their images
        kept as long again) while the images are stored; 410 once they are not."""
        if URL_PATH.encode() not in body:
            return body
        doc = orjson.loads(body)
        for item in doc.get("data") or ():
            key = key_of_url(item.get("url") or "")
            if key is None:
                continue
            if not await self.storage.touch(key):
                raise GoneError(
                    "The images of the request first made with this Idempotency-Key are no longer stored; "
                    "send the request again with a new key.",
                    param="Idempotency-Key",
                    code="idempotent_result_expired",
                )
            item["url"] = self.signer.url(self.settings.server.public_url or base_url, key)
        return orjson.dumps(doc)

    # -- hosted files ------------------------------------------------------

    async def open_file(self, key: str, expires: str, signature: str) -> tuple[StoredObject, int]:
        try:
            expiry = self.signer.verify(key, expires, signature)
        except SignatureInvalid:
            raise NotFoundError("No such image: the link is invalid.", code="invalid_signature") from None
        except SignatureExpired:
            raise GoneError(
                f"This image link has expired; image URLs are valid for {self.signer.ttl_seconds // 60} minutes.",
                code="url_expired",
            ) from None
        obj = await self.storage.get(key)
        if obj is None:
            raise GoneError("This image is no longer stored.", code="url_expired")
        return obj, expiry

    async def sweep_forever(self) -> None:
        interval = self.settings.storage.sweep_interval_seconds
        while True:
            await asyncio.sleep(interval)
            await self.sweep_once()

    async def sweep_once(self) -> None:
        """One pass of the sweeper. Each sweep runs on its own: one failing
        (a storage error every pass) never stops the others, and costs one
        log line per pass, not a traceback."""
        try:
            removed = await self.storage.sweep(time.time() - self.signer.ttl_seconds)
            if removed:
                log.info("swept %d image(s): expired, or the oldest over storage.max_gb", removed)
        except Exception as exc:
            log.warning("sweeping expired images failed, retrying on the next sweep: %s", exc)
        try:
            await self.idempotency.sweep()
        except Exception as exc:
            log.warning("sweeping idempotency records failed, retrying on the next sweep: %s", exc)
        try:  # journaled settlements, stale budget reservations
            await self.accounting.housekeeping()
        except Exception as exc:
            log.warning("accounting housekeeping failed, retrying on the next sweep: %s", exc)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        await self.accounting.start()
        await self.idempotency.sweep()  # claims left by a previous life of this process
        for name, provider in self.providers.items():
            await provider.start([d.model for r in self.routes.values() for d in r.deployments if d.provider == name])
        for name, route in self.routes.items():
            for dep in route.deployments:
                if self.accounting.price_for(name, dep.model, route.rules.name) is None:
                    log.warning("model %s (%s on %s) has no price: its requests are recorded at $0; "
                                "set pricing.%s in the config", name, dep.model, dep.provider, name)  # fmt: skip

    async def readiness(self) -> dict[str, bool]:
        checks = {"storage": await self.storage.ready(), "database": await self._database_ready()}
        for name, provider in self.providers.items():
            checks[f"provider:{name}"] = await provider.ready()
        return checks

    async def _database_ready(self) -> bool:
        try:
            async with self.accounting.db.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            log.exception("database not ready")
            return False

    async def aclose(self) -> None:
        await self.accounting.aclose()
        await self.fetcher.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        await self.storage.aclose()
