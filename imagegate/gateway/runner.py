"""Running a request: its legs (model, then fallbacks), admission, routing
over deployments, post-processing, hosting, and settlement on every way out.

* :meth:`RequestRunner.create` runs a request to its end and returns the
  :class:`Created` answer (the response, its cost, what served it): it is
  :meth:`RequestRunner.admit`, then :meth:`RequestRunner.execute` (which an
  asynchronous job calls with its stored admission), then the settlement.
* :meth:`RequestRunner.open_stream` admits a streaming request and returns
  its :class:`OpenedStream`: iterated, it routes the request until its first
  item (retries and fallbacks happen only before that), then yields typed
  events, and settles when they end, or when it is closed unstarted.

Accounting settles the request on every way out: success, error, cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from imagegate.accounting.caller import Caller
from imagegate.accounting.service import Accounting, Admission, Outcome, outcome_of_error
from imagegate.config import ModelRouteConfig
from imagegate.contract.requests import ImageRequest
from imagegate.contract.responses import ImageData, ImagesResponse, KeepAlive, StreamEvent
from imagegate.contract.results import (
    CompletedImage,
    Deployment,
    GeneratedImage,
    ImageMeta,
    PartialImage,
    Progress,
    ProviderResult,
    StreamItem,
)
from imagegate.contract.validate import retarget
from imagegate.errors import ImagegateError, InvalidRequestError, UpstreamTimeoutError
from imagegate.gateway.checks import check_upstream_cost, check_usage, checked_result, warn_extra_images
from imagegate.gateway.hosted import HostedFiles
from imagegate.gateway.output import ResizePolicy, Shaped, shape_images
from imagegate.gateway.rendering import add_usage, images_response, stream_event
from imagegate.gateway.routes import Route, fallback_chain
from imagegate.gateway.routing import Leg, Served, execute
from imagegate.providers.base import Provider


@dataclass(frozen=True, slots=True)
class Created:
    response: ImagesResponse
    cost: int  # nano-dollars
    served: Served[ProviderResult]


@dataclass(frozen=True, slots=True)
class Executed:
    """An admitted request that ran: its answer and what to charge for it (not yet settled)."""

    response: ImagesResponse
    outcome: Outcome
    served: Served[ProviderResult]


Opening = Served[tuple[StreamItem, AsyncIterator[StreamItem]]]  # a stream's winning attempt: its first item, the rest


class OpenedStream:
    """An admitted streaming request, as an async iterator of its events.

    ``reserved``: the nano-dollars held for it (the cost is known when it
    ends); ``served``: what serves it, once routing found it (None before).
    Its events settle the request on every way out; :meth:`aclose` settles it
    too when it is closed before it was ever iterated (a client gone at once)."""

    def __init__(self, reserved: int, unstarted: Callable[[], Awaitable[object]]) -> None:
        self.reserved = reserved
        self.served: Opening | None = None
        self.events: AsyncGenerator[StreamEvent | KeepAlive, None] | None = None
        self._unstarted: Callable[[], Awaitable[object]] | None = unstarted

    def __aiter__(self) -> OpenedStream:
        return self

    async def __anext__(self) -> StreamEvent | KeepAlive:
        assert self.events is not None
        self._unstarted = None  # from here on the events settle it themselves
        return await anext(self.events)

    async def aclose(self) -> None:
        if self.events is not None:
            await self.events.aclose()
        unstarted, self._unstarted = self._unstarted, None
        if unstarted is not None:
            await asyncio.shield(unstarted())


class RequestRunner:
    def __init__(
        self,
        routes: dict[str, Route],
        providers: Mapping[str, Provider],
        accounting: Accounting,
        hosted: HostedFiles,
        models: Mapping[str, ModelRouteConfig],
        max_image_pixels: int,
    ) -> None:
        self.routes = routes
        self.providers = providers
        self.accounting = accounting
        self.hosted = hosted
        self.resize = {name: ResizePolicy.of(model.resize, model.pad_color) for name, model in models.items()}
        self.max_image_pixels = max_image_pixels

    async def legs(self, request: ImageRequest, caller: Caller) -> list[Leg]:
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

    @staticmethod
    def _candidates(legs: Sequence[Leg]) -> list[tuple[ImageRequest, Deployment]]:
        return [(leg.request, slot.deployment) for leg in legs for slot in leg.pool.slots]

    async def _admit(self, request: ImageRequest, caller: Caller, request_id: str) -> tuple[list[Leg], Admission]:
        legs = await self.legs(request, caller)
        deadline = self.routes[request.model].policy.deadline_seconds
        admission = await self.accounting.admit(caller, request, self._candidates(legs), request_id, deadline)
        return legs, admission

    async def admit(self, request: ImageRequest, caller: Caller, request_id: str) -> tuple[list[Leg], Admission]:
        """The request's legs, and its admission: the worst case of every leg
        reserved on the caller's budget for the route's deadline."""
        return await self._admit(request, caller, request_id)

    async def prepare(self, request: ImageRequest, caller: Caller, request_id: str) -> tuple[Admission, int | None]:
        """:meth:`admit` but for the reservation (accounting's ``prepare``):
        the admission, and the worst case of every leg to reserve (None:
        nothing to hold), which a job reserves in its own insert's transaction."""
        legs = await self.legs(request, caller)
        return await self.accounting.prepare(caller, request, self._candidates(legs), request_id)

    async def create(self, request: ImageRequest, base_url: str, caller: Caller, request_id: str) -> Created:
        """Run a request over its deployments and fallbacks."""
        legs, admission = await self._admit(request, caller, request_id)
        try:
            done = await self.execute(legs, admission, base_url)
        except BaseException as exc:  # failed or cancelled: charged nothing
            await asyncio.shield(self.accounting.settle(admission, outcome_of_error(exc)))
            raise
        # Shielded: a client hanging up now must not cut the charge of work already done.
        cost = await asyncio.shield(self.accounting.settle(admission, done.outcome))
        return Created(done.response, cost, done.served)

    async def execute(self, legs: list[Leg], admission: Admission, base_url: str) -> Executed:
        """Run an admitted request (routing, retries, fallbacks, checks,
        shaping, hosting) within the route's deadline from now, and say what
        to charge; the caller settles (on every way out). An error carries
        the headers of what was tried."""
        request = admission.request

        async def call(req: ImageRequest, deployment: Deployment) -> ProviderResult:
            result = await self.providers[deployment.provider].run(req, deployment)
            return checked_result(req, result, deployment.provider)

        served: Served[ProviderResult] | None = None
        try:
            served = await execute(legs, call, self.routes[request.model].policy)
            shaped = await self._shape(served.request, served.value.images, served)
            data = await asyncio.gather(*(self._image_data(served.request, s, base_url) for s in shaped))
        except ImagegateError as exc:
            if served is not None:  # what was tried goes with the error too
                exc.headers = {**exc.headers, **served.headers()}
            raise
        req, result = served.request, served.value
        admission.serve(req, served.deployment)
        outcome = Outcome(len(shaped), result.usage, result.meta, upstream_cost_nusd=result.upstream_cost_nusd)
        return Executed(images_response(req, result, shaped, list(data)), outcome, served)

    async def open_stream(self, request: ImageRequest, base_url: str, caller: Caller, request_id: str) -> OpenedStream:
        """Admit a streaming request (a refusal is raised here); its events
        route it (see :class:`OpenedStream`)."""
        legs, admission = await self._admit(request, caller, request_id)
        cancelled = outcome_of_error(asyncio.CancelledError())
        opened = OpenedStream(admission.reserved, lambda: self.accounting.settle(admission, cancelled))
        opened.events = self._events(legs, admission, opened)
        return opened

    async def _events(
        self, legs: list[Leg], admission: Admission, opened: OpenedStream
    ) -> AsyncGenerator[StreamEvent | KeepAlive, None]:
        """Run the request until its first item (retries and fallbacks happen
        only before that), then its events (:meth:`_stream`)."""

        async def first(req: ImageRequest, deployment: Deployment) -> tuple[StreamItem, AsyncIterator[StreamItem]]:
            events = self.providers[deployment.provider].stream(req, deployment)
            try:
                head = await anext(events)
                if isinstance(head, CompletedImage):
                    check_usage(head.usage, deployment.provider)
                    check_upstream_cost(head.upstream_cost_nusd, deployment.provider)
                return head, events
            except BaseException:
                await _aclose(events)
                raise

        policy = self.routes[admission.request.model].policy
        try:
            served = await execute(legs, first, policy, hold=True)
        except BaseException as exc:
            await asyncio.shield(self.accounting.settle(admission, outcome_of_error(exc)))
            raise
        admission.serve(served.request, served.deployment)
        opened.served = served
        deadline = admission.started + policy.deadline_seconds
        async with contextlib.aclosing(self._stream(served, admission, deadline)) as events:
            async for event in events:
                yield event

    async def _stream(
        self, served: Opening, admission: Admission, deadline: float
    ) -> AsyncGenerator[StreamEvent | KeepAlive, None]:
        request, (head, rest) = served.request, served.value
        images, usage, meta, extra = 0, None, ImageMeta(), 0
        upstream_cost: int | None = None
        costs_stated = True  # every delivered image came with the upstream's cost

        async def items() -> AsyncIterator[StreamItem]:
            """The provider's items, within the request's deadline (monotonic
            ``deadline``): a stream kept open by keep-alives ends there too, as
            a 504, since its reservation lasts only that long."""
            yield head
            while True:
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    item = await asyncio.wait_for(anext(rest), remaining)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise UpstreamTimeoutError(
                        f"The request did not finish within its deadline on '{served.provider}'.", code="deadline_exceeded"
                    ) from None
                yield item

        async with served:  # the deployment's slot is held until the stream ends
            try:
                async for item in items():
                    if isinstance(item, Progress):
                        yield KeepAlive(item.status)
                        continue
                    if isinstance(item, CompletedImage):
                        check_usage(item.usage, served.provider)
                        check_upstream_cost(item.upstream_cost_nusd, served.provider)
                    if images >= request.n:  # more than asked: neither returned nor charged
                        if isinstance(item, CompletedImage):
                            extra += 1
                        continue
                    (shaped,) = await self._shape(request, [item.image], served)
                    if isinstance(item, PartialImage):
                        yield stream_event(request, "partial_image", shaped, item.meta, None, item.index)
                    else:
                        images += 1
                        usage = add_usage(usage, item.usage)
                        meta = item.meta
                        if item.upstream_cost_nusd is None:
                            costs_stated = False
                        else:
                            upstream_cost = (upstream_cost or 0) + item.upstream_cost_nusd
                        yield stream_event(request, "completed", shaped, meta, item.usage, None)
            except BaseException as exc:
                # Images already delivered were made (and billed upstream): they are
                # charged whatever ends the stream after them (an error event, a hang-up).
                failed = outcome_of_error(exc)
                ended = failed
                upstream_cost = upstream_cost if costs_stated else None  # some images had none: the catalog prices all
                if images:
                    ended = replace(failed, images=images, usage=usage, meta=meta, upstream_cost_nusd=upstream_cost)
                await asyncio.shield(self.accounting.settle(admission, ended))
                raise
            finally:
                await _aclose(rest)
        if extra:
            warn_extra_images(request, images + extra, served.provider)
        stated = upstream_cost if costs_stated else None  # some images had none: the catalog prices all
        await asyncio.shield(self.accounting.settle(admission, Outcome(images, usage, meta, upstream_cost_nusd=stated)))

    async def _shape(self, request: ImageRequest, images: Sequence[GeneratedImage], served: Served[Any]) -> list[Shaped]:
        """Images as the client asked them (format, size), under the model's
        resize policy; each distinct resize is noted on ``served`` for the
        answer's x-imagegate-resized header."""
        shaped = await shape_images(request, images, self.max_image_pixels, self.resize[request.model], served.provider)
        for change in (str(s.resize) for s in shaped if s.resize):
            if change not in served.resized:
                served.resized.append(change)
        return shaped

    async def _image_data(self, request: ImageRequest, shaped: Shaped, base_url: str) -> ImageData:
        if request.response_format == "url":
            url = await self.hosted.publish(shaped.image, shaped.format, base_url)
            return ImageData(url=url, revised_prompt=shaped.image.revised_prompt)
        return ImageData(b64_json=shaped.image.b64, revised_prompt=shaped.image.revised_prompt)


async def _aclose(events: AsyncIterator[StreamItem]) -> None:
    """Close a provider's event stream (an async generator; any other iterator has nothing to close)."""
    if isinstance(events, AsyncGenerator):
        await events.aclose()
