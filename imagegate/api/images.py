"""``/v1/images/*``: parse the body, build a typed request, call the service, render."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from imagegate.accounting.money import usd_str
from imagegate.accounting.service import Caller
from imagegate.api import openapi
from imagegate.api.bodies import IMAGE_FIELDS, FormInput, read_form, read_json_object, require_media_type
from imagegate.api.deps import CallerDep, ServiceDep, request_id
from imagegate.api.middleware import COST_HEADER, RESERVED_HEADER
from imagegate.api.render import JSONBody, sse
from imagegate.contract.requests import ImageRequest
from imagegate.contract.validate import check_rules, load_inputs, parse_fields, resolve_model
from imagegate.errors import ImagegateError, InvalidRequestError
from imagegate.gateway.routing import Served
from imagegate.gateway.service import ImageService

log = logging.getLogger("imagegate.api")
T = TypeVar("T")
router = APIRouter(prefix="/v1/images", tags=["images"])


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _build(
    service: ImageService,
    caller: Caller,
    http: Request,
    endpoint: str,
    raw: dict[str, Any],
    *,
    from_form: bool,
    images: list[tuple[str, bytes]] | None = None,
    mask: tuple[str, bytes] | None = None,
) -> ImageRequest:
    name, spec = resolve_model(service.directory, endpoint, raw)  # a 404 for the model comes before any 400
    fields = parse_fields(endpoint, raw, from_form=from_form)
    check_rules(endpoint, fields, name, spec)
    # The key's models and rate limits before the images are decoded and probed.
    await service.accounting.check_limits(caller, ImageRequest(endpoint, name, spec, fields), request_id(http))  # type: ignore[arg-type]
    inputs, mask_image = (), None
    if images is not None:
        inputs, mask_image = await load_inputs(
            endpoint, name, spec, images, mask, max_pixels=service.settings.server.max_image_pixels
        )
    elif mask is not None:
        raise InvalidRequestError("A mask needs an image to apply to.", param="mask")
    return ImageRequest(endpoint, name, spec, fields, inputs, mask_image)  # type: ignore[arg-type]


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


async def _run(service: ImageService, request: ImageRequest, http: Request, caller: Caller) -> JSONBody:
    result, cost, served = await _unless_disconnected(http, service.create(request, _base_url(http), caller, request_id(http)))
    return JSONBody(result, headers={COST_HEADER: usd_str(cost), **_served_headers(served)})


async def _respond(service: ImageService, request: ImageRequest, http: Request, caller: Caller) -> Response:
    key = http.headers.get("idempotency-key")
    if request.stream:
        if key is not None:
            raise InvalidRequestError(
                "Idempotency-Key is not supported with stream=true.", param="Idempotency-Key", code="unsupported_parameter"
            )
        return await _stream(service, request, http, caller)
    try:
        if key is None:
            return await _run(service, request, http, caller)
        return await _idempotent(service, request, http, caller, key)
    except _ClientGone:
        return Response(status_code=499)  # nobody is listening; the work was cancelled and not charged


def _idempotency_scope(caller: Caller, http: Request) -> str:
    """Whose keys these are: one caller never sees another's replays. Callers
    without a key are told apart by their address only."""
    if caller.kind == "anonymous":
        return f"anonymous:{http.client.host if http.client else ''}"[:64]
    return caller.identity


async def _idempotent(service: ImageService, request: ImageRequest, http: Request, caller: Caller, key: str) -> Response:
    if not key or len(key) > 255:
        raise InvalidRequestError("Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key")
    scope = _idempotency_scope(caller, http)
    fingerprint = request.fingerprint(caller.virtual_key)
    policy = service.routes[request.model].policy
    replay = await service.idempotency.claim(
        scope, key, fingerprint, wait_seconds=policy.deadline_seconds, lease_seconds=policy.deadline_seconds
    )
    if replay is not None:
        body = await service.refresh_hosted_urls(replay.body, _base_url(http))
        headers = {**replay.headers, COST_HEADER: usd_str(0), "x-imagegate-idempotent-replay": "true"}
        return Response(body, status_code=replay.status, headers=headers, media_type="application/json")
    try:
        response = await _run(service, request, http, caller)
    except BaseException:
        await asyncio.shield(service.idempotency.release(scope, key))  # a retry runs afresh
        raise
    kept = {k: v for k, v in response.headers.items() if k.startswith("x-imagegate-") and k != COST_HEADER}
    await service.idempotency.complete(scope, key, response.status_code, kept, bytes(response.body))
    return response


def _served_headers(served: Served) -> dict[str, str]:
    """What served the request and what the gateway changed (docs/output.md).
    Errors after routing started carry the same model/provider/attempts
    headers (``routing.route_headers``, on the error itself)."""
    headers = served.headers()
    if served.resized:  # a stream's: its first event's images (the headers go before the rest)
        headers["x-imagegate-resized"] = ", ".join(served.resized)
    return headers


async def _stream(service: ImageService, request: ImageRequest, http: Request, caller: Caller) -> Response:
    reserved, served, events = await service.open_stream(request, _base_url(http), caller, request_id(http))
    # The first event is awaited before answering, so a request that fails at
    # once still gets a plain JSON error with the right status.
    first = await anext(events)

    async def body() -> AsyncIterator[bytes]:
        yield sse(first.type, first)
        try:
            async for event in events:
                yield sse(event.type, event)
        except ImagegateError as exc:
            yield sse("error", exc.envelope())
        except Exception:  # the response has started: report in-band, log the details
            log.exception("stream failed after it started")
            yield sse("error", ImagegateError("The server had an error while streaming.", code="internal_error").envelope())
        finally:
            await events.aclose()

    # The cost is known only when the stream ends (it is in the usage records);
    # the headers carry what was reserved for it.
    headers = {
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        RESERVED_HEADER: usd_str(reserved),
        **_served_headers(served),
    }
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


@router.post("/generations", openapi_extra=openapi.GENERATIONS, response_model=None)
async def create_image(http: Request, service: ServiceDep, caller: CallerDep) -> Response:
    require_media_type(http, "application/json")
    raw = await read_json_object(http)
    request = await _build(service, caller, http, "generations", raw, from_form=False)
    return await _respond(service, request, http, caller)


async def _json_edit(service: ImageService, caller: Caller, http: Request, raw: dict[str, Any]) -> ImageRequest:
    name, spec = resolve_model(service.directory, "edits", raw)  # a 404 for the model comes before any 400
    refs = raw.pop("images", None)
    mask_ref = raw.pop("mask", None)
    if "image" in raw:
        raise InvalidRequestError(
            "JSON edit requests take 'images' (a list of {image_url}); 'image' is for multipart uploads.",
            param="image",
            code="unknown_parameter",
        )
    if refs is None:
        raise InvalidRequestError("Missing required parameter: 'images'.", param="images", code="missing_required_parameter")
    if not isinstance(refs, list) or not refs:
        raise InvalidRequestError(
            "'images' must be a non-empty array of {image_url} objects.", param="images", code="invalid_type"
        )
    # Check the cheap fields before fetching anything.
    fields = parse_fields("edits", raw, from_form=False)
    check_rules("edits", fields, name, spec)
    limit = spec.edit_input.max_images if spec.edit_input else 0
    if len(refs) > limit:
        raise InvalidRequestError(
            f"Too many images: model '{name}' takes at most {limit}, got {len(refs)}.", param="images", code="too_many_images"
        )
    # The key's models and rate limits before anything is fetched or decoded.
    await service.accounting.check_limits(caller, ImageRequest("edits", name, spec, fields), request_id(http))  # type: ignore[arg-type]
    images = [
        (f"images[{i}]", await service.fetcher.load(_ref_url(ref, f"images[{i}]"), f"images[{i}]")) for i, ref in enumerate(refs)
    ]
    mask = ("mask", await service.fetcher.load(_ref_url(mask_ref, "mask"), "mask")) if mask_ref is not None else None
    inputs, mask_image = await load_inputs("edits", name, spec, images, mask, max_pixels=service.settings.server.max_image_pixels)
    return ImageRequest("edits", name, spec, fields, inputs, mask_image)


def _ref_url(ref: Any, param: str) -> str:
    if not isinstance(ref, dict):
        raise InvalidRequestError(f"'{param}' must be an object with 'image_url'.", param=param, code="invalid_type")
    if "file_id" in ref:
        raise InvalidRequestError(
            "File IDs are not supported here; send the image as 'image_url' (a data: or https URL).",
            param=f"{param}.file_id",
            code="unsupported_parameter",
        )
    extra = set(ref) - {"image_url"}
    if extra:
        name = sorted(extra)[0]
        raise InvalidRequestError(f"Unknown parameter: '{param}.{name}'.", param=f"{param}.{name}", code="unknown_parameter")
    url = ref.get("image_url")
    if not isinstance(url, str) or not url:
        raise InvalidRequestError(
            f"Missing required parameter: '{param}.image_url'.", param=f"{param}.image_url", code="missing_required_parameter"
        )
    return url


@router.post("/edits", openapi_extra=openapi.EDITS, response_model=None)
async def create_image_edit(http: Request, service: ServiceDep, caller: CallerDep) -> Response:
    kind = require_media_type(http, "multipart/form-data", "application/json")
    if kind == "application/json":
        request = await _json_edit(service, caller, http, await read_json_object(http))
    else:
        form: FormInput = await read_form(http, file_fields=(*IMAGE_FIELDS, "mask"))
        request = await _build(
            service, caller, http, "edits", dict(form.fields), from_form=True, images=form.images, mask=form.mask
        )
    return await _respond(service, request, http, caller)


@router.post("/variations", openapi_extra=openapi.VARIATIONS, response_model=None)
async def create_image_variation(http: Request, service: ServiceDep, caller: CallerDep) -> Response:
    require_media_type(http, "multipart/form-data")
    form = await read_form(http, file_fields=IMAGE_FIELDS)
    request = await _build(service, caller, http, "variations", dict(form.fields), from_form=True, images=form.images)
    return await _respond(service, request, http, caller)
