"""Answers as the spec writes them: an ``ImagesResponse`` from shaped images,
stream events from each image as it comes, and the answer's JSON body.

What an answer says about its images is what the upstream said (where the
spec allows the value) or what the gateway knows (the format and size it
made); never the request's "auto", never a value the gateway invented.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from imagegate.contract.catalog import parse_size
from imagegate.contract.requests import ImageRequest
from imagegate.contract.responses import ImageData, ImagesResponse, StreamEvent
from imagegate.contract.results import ImageMeta, ProviderResult, Usage
from imagegate.gateway.output import RASTER, Shaped, usage_out

# The spec's enums: ImagesResponse, and the stream events (which add "auto").
_QUALITIES = ("low", "medium", "high")
_BACKGROUNDS = ("transparent", "opaque")
_EVENT_QUALITIES = (*_QUALITIES, "auto")
_EVENT_BACKGROUNDS = (*_BACKGROUNDS, "auto")
EVENT_PREFIX = {"generations": "image_generation", "edits": "image_edit", "variations": "image_variation"}


def add_usage(total: Usage | None, more: Usage | None) -> Usage | None:
    """Two usages as one (a stream reports usage per completed image)."""
    if more is None or total is None:
        return more or total
    return Usage(
        input_tokens=total.input_tokens + more.input_tokens,
        output_tokens=total.output_tokens + more.output_tokens,
        total_tokens=total.total_tokens + more.total_tokens,
        input_text_tokens=total.input_text_tokens + more.input_text_tokens,
        input_image_tokens=total.input_image_tokens + more.input_image_tokens,
        input_cached_tokens=total.input_cached_tokens + more.input_cached_tokens,
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
    if shaped.resized or meta.size is None or parse_size(meta.size) is None:
        return shaped.size_str
    return meta.size


def _said(value: str | None, allowed: tuple[str, ...]) -> str | None:
    """An upstream's value where the spec allows it; never one of the gateway's own."""
    return value if value in allowed else None


def _background(shaped: list[Shaped], said: str | None, allowed: tuple[str, ...]) -> str | None:
    if any(s.resize is not None and s.resize.transparent_padding for s in shaped):
        return "transparent"  # the gateway padded with transparency: it knows
    return _said(said, allowed)


def stream_event(
    request: ImageRequest, kind: str, shaped: Shaped, meta: ImageMeta, usage: Usage | None, partial_index: int | None
) -> StreamEvent:
    """``kind`` is the event's type without its prefix: ``partial_image`` or ``completed``."""
    # The events' schema requires these and allows "auto": the upstream's
    # value, else the request's setting (what the field describes).
    quality = _said(meta.quality, _EVENT_QUALITIES) or _said(request.quality, _EVENT_QUALITIES) or "auto"
    return StreamEvent(
        type=f"{EVENT_PREFIX[request.endpoint]}.{kind}",
        b64_json=shaped.image.b64,
        created_at=meta.created or int(time.time()),
        size=_size(shaped, meta),
        quality=quality,
        background=_background([shaped], meta.background, _EVENT_BACKGROUNDS) or request.background,
        output_format=shaped.format,
        partial_image_index=partial_index,
        usage=usage_out(usage),
    )


def images_response(request: ImageRequest, result: ProviderResult, shaped: list[Shaped], data: list[ImageData]) -> ImagesResponse:
    meta: dict[str, Any] = {}
    if request.spec.reports_output_meta and shaped:
        # What the upstream said (where the spec allows it) or the gateway
        # knows (the image's format and size); never the request's "auto".
        meta = {
            "size": _size(shaped[0], result.meta),
            "output_format": shaped[0].format if shaped[0].format in RASTER else None,  # the spec's enum: no svg
            "quality": _said(result.meta.quality, _QUALITIES),
            "background": _background(shaped, result.meta.background, _BACKGROUNDS),
        }
    created = result.meta.created or int(time.time())
    return ImagesResponse(created=created, data=data, usage=usage_out(result.usage), **meta)


def json_body(response: ImagesResponse) -> bytes:
    """The answer's bytes, as sent and as kept for an idempotent replay."""
    return orjson.dumps(response.model_dump(exclude_none=True))
