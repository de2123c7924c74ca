"""``/v1/images/*``: read the body, have ``contract.build`` make a typed request
of it, call the service, render."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from imagegate.accounting.caller import Caller
from imagegate.accounting.money import usd_str
from imagegate.api import jobs, openapi
from imagegate.api.bodies import IMAGE_FIELDS, read_form, read_json_object, require_media_type
from imagegate.api.deps import CallerDep, ServiceDep, request_id
from imagegate.api.jobs import prefers_async
from imagegate.api.middleware import COST_HEADER, RESERVED_HEADER
from imagegate.api.render import sse, sse_comment
from imagegate.contract.build import FormBody, RequestBuilder
from imagegate.contract.requests import Endpoint, ImageRequest
from imagegate.contract.responses import KeepAlive
from imagegate.errors import ImagegateError, InvalidRequestError
from imagegate.gateway.service import ImageService

log = logging.getLogger("imagegate.api")
T = TypeVar("T")
router = APIRouter(prefix="/v1/images", tags=["images"])


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _build(
    service: ImageService, caller: Caller, http: Request, endpoint: Endpoint, body: Mapping[str, Any] | FormBody
) -> ImageRequest:
    """The typed request (``contract.build``), admitted by the key's models and
    rate limits before its images are fetched or decoded."""

    async def admit(request: ImageRequest) -> None:
        await service.accounting.check_limits(caller, request, request_id(http))

    builder = RequestBuilder(service.directory, service.fetcher.load, service.settings.server.max_image_pixels)
    return await builder.build(endpoint, body, admit)


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _until_disconnect(http: Request) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(http: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it (and the upstream call under it) if the
    client goes away first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_until_disconnect(http))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise _ClientGone
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()


async def _respond(service: ImageService, request: ImageRequest, http: Request, caller: Caller) -> Response:
    key = http.headers.get("idempotency-key")
    if request.stream:
        if key is not None:
            raise InvalidRequestError(
                "Idempotency-Key is not supported with stream=true.", param="Idempotency-Key", code="unsupported_parameter"
            )
        return await _stream(service, request, http, caller)
    base_url, rid = _base_url(http), request_id(http)
    if key is None:
        work = service.create(request, base_url, caller, rid)
    else:  # once per key: a retry gets the first answer again
        work = service.create_once(request, base_url, caller, rid, key=key, client=http.client.host if http.client else "")
    try:
        answer = await _unless_disconnected(http, work)
    except _ClientGone:
        return Response(status_code=499)  # nobody is listening; the work was cancelled and not charged
    # answer.headers: what served it (model, provider, attempts, resizes; docs/output.md), or that it is a replay
    headers = {COST_HEADER: usd_str(answer.cost), **answer.headers}
    return Response(answer.body, status_code=answer.status, headers=headers, media_type="application/json")


async def _stream(service: ImageService, request: ImageRequest, http: Request, caller: Caller) -> Response:
    # The first event is awaited before answering, up to server.keepalive_seconds,
    # so a request that fails at once still gets a plain JSON error with the
    # right status; a slower one starts with a keep-alive (service.open_stream).
    work = service.open_stream(request, _base_url(http), caller, request_id(http))
    try:
        stream = await _unless_disconnected(http, work)
    except _ClientGone:
        return Response(status_code=499)  # nobody is listening; the work was cancelled and not charged

    async def body() -> AsyncIterator[bytes]:
        try:
            async for event in stream.events:
                yield sse_comment(event.status) if isinstance(event, KeepAlive) else sse(event.type, event)
        except ImagegateError as exc:
            yield sse("error", exc.envelope())
        except Exception:  # the response has started: report in-band, log the details
            log.exception("stream failed after it started")
            yield sse("error", ImagegateError("The server had an error while streaming.", code="internal_error").envelope())
        finally:
            await stream.events.aclose()

    # The cost is known only when the stream ends (it is in the usage records);
    # the headers carry what was reserved for it.
    headers = {
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        RESERVED_HEADER: usd_str(stream.reserved),
        **stream.headers,
    }
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


@router.post("/generations", openapi_extra=openapi.GENERATIONS, response_model=None)
async def create_image(http: Request, service: ServiceDep, caller: CallerDep) -> Response:
    require_media_type(http, "application/json")
    request = await _build(service, caller, http, "generations", await read_json_object(http))
    if prefers_async(http):  # Prefer: respond-async: a job (api/jobs.py)
        return await jobs.submit(service, request, http, caller)
    return await _respond(service, request, http, caller)


@router.post("/edits", openapi_extra=openapi.EDITS, response_model=None)
async def create_image_edit(http: Request, service: ServiceDep, caller: CallerDep) -> Response:
    kind = require_media_type(http, "multipart/form-data", "application/json")
    if kind == "application/json":
        body: Mapping[str, Any] | FormBody = await read_json_object(http)
    else:
        body = await read_form(http, file_fields=(*IMAGE_FIELDS, "mask"))
    request = await _build(service, caller, http, "edits", body)
    if prefers_async(http):  # Prefer: respond-async: a job (api/jobs.py)
        return await jobs.submit(service, request, http, caller)
    return await _respond(service, request, http, caller)


@router.post("/variations", openapi_extra=openapi.VARIATIONS, response_model=None)
async def create_image_variation(http: Request, service: ServiceDep, caller: CallerDep) -> Response:
    require_media_type(http, "multipart/form-data")
    request = await _build(service, caller, http, "variations", await read_form(http, file_fields=IMAGE_FIELDS))
    if prefers_async(http):  # Prefer: respond-async: a job (api/jobs.py)
        return await jobs.submit(service, request, http, caller)
    return await _respond(service, request, http, caller)
