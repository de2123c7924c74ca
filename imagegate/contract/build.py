"""One place that turns a request body into a typed :class:`ImageRequest`:
a JSON body (generations), a JSON edit (:class:`EditImageBodyJsonParam`:
images by URL) or a multipart form (:class:`FormBody`: edits and variations,
images uploaded).

Every body goes the same way, cheapest first, so a bad request costs as
little as possible:

1. the model (``resolve_model``: a 404 before any 400);
2. field names and types, then the model's catalog rules (``validate``); for
   a JSON edit also the number of images and the shape of each reference;
3. ``admit``: the caller's models and rate limits, before any image is
   fetched or decoded;
4. a JSON edit's image URLs, all fetched at once;
5. the input images sniffed and checked (``inputs.load_inputs``).

HTTP stays in ``api/``: the builder gets plain data (a dict, a FormBody) and
two callables, one that fetches an image URL and one that admits a request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from imagegate.contract.catalog import EDITS, GENERATIONS
from imagegate.contract.inputs import check_count, input_rule, load_inputs
from imagegate.contract.requests import (
    FIELDS_BY_ENDPOINT,
    EditImageBodyJsonParam,
    Endpoint,
    ImageRefParam,
    ImageRequest,
)
from imagegate.contract.validate import ModelDirectory, check_rules, parse_fields, resolve_model
from imagegate.errors import InvalidRequestError

# Fetch an image URL for the request field ``param`` (errors name it).
FetchImage = Callable[[str, str], Coroutine[Any, Any, bytes]]
# Admit a request that passed the cheap checks (the caller's models, rate limits).
Admit = Callable[[ImageRequest], Awaitable[None]]


@dataclass(slots=True)
class FormBody:
    """A multipart body as read: its text fields, its image parts in order
    (field, bytes) and its mask."""

    fields: dict[str, str] = field(default_factory=dict)
    images: list[tuple[str, bytes]] = field(default_factory=list)
    mask: tuple[str, bytes] | None = None


@dataclass(frozen=True, slots=True)
class RequestBuilder:
    directory: ModelDirectory
    fetch: FetchImage
    max_image_pixels: int

    async def build(self, endpoint: Endpoint, body: Mapping[str, Any] | FormBody, admit: Admit) -> ImageRequest:
        """A JSON body for generations and edits, a form for edits and variations."""
        if isinstance(body, FormBody):
            if endpoint == GENERATIONS:
                raise ValueError("generations take a JSON body")
            return await self._form(endpoint, body, admit)
        if endpoint == EDITS:
            return await self._json_edit(body, admit)
        if endpoint != GENERATIONS:
            raise ValueError(f"{endpoint} take a multipart body")
        name, spec = resolve_model(self.directory, endpoint, body)  # a 404 for the model comes before any 400
        fields, extra = parse_fields(FIELDS_BY_ENDPOINT[endpoint], body, spec, from_form=False)
        check_rules(endpoint, fields, name, spec)
        request = ImageRequest(endpoint, name, spec, fields, extra=extra)
        await admit(request)
        return request

    async def _form(self, endpoint: Endpoint, form: FormBody, admit: Admit) -> ImageRequest:
        name, spec = resolve_model(self.directory, endpoint, form.fields)
        fields, extra = parse_fields(FIELDS_BY_ENDPOINT[endpoint], form.fields, spec, from_form=True)
        check_rules(endpoint, fields, name, spec)
        request = ImageRequest(endpoint, name, spec, fields, extra=extra)
        await admit(request)  # before the images are probed
        return await self._with_inputs(request, form.images, form.mask)

    async def _json_edit(self, raw: Mapping[str, Any], admit: Admit) -> ImageRequest:
        name, spec = resolve_model(self.directory, EDITS, raw)
        if "image" in raw:
            raise InvalidRequestError(
                "JSON edit requests take 'images' (a list of {image_url}); 'image' is for multipart uploads.",
                param="image",
                code="unknown_parameter",
            )
        body, extra = parse_fields(EditImageBodyJsonParam, raw, spec, from_form=False)
        fields = body.edit_fields()
        check_rules(EDITS, fields, name, spec)
        check_count(name, input_rule(EDITS, name, spec), len(body.images), param="images")
        refs = [(f"images[{i}]", ref) for i, ref in enumerate(body.images)]
        if body.mask is not None:
            refs.append(("mask", body.mask))
        urls = [(param, _image_url(ref, param)) for param, ref in refs]
        request = ImageRequest(EDITS, name, spec, fields, extra=extra)
        await admit(request)  # before anything is fetched or decoded
        fetched = await _fetch_all(self.fetch, urls)
        images = [(param, data) for (param, _), data in zip(refs, fetched, strict=True)]
        mask = images.pop() if body.mask is not None else None
        return await self._with_inputs(request, images, mask)

    async def _with_inputs(
        self, request: ImageRequest, images: Sequence[tuple[str, bytes]], mask: tuple[str, bytes] | None
    ) -> ImageRequest:
        inputs, mask_image = await load_inputs(
            request.endpoint, request.model, request.spec, images, mask, max_pixels=self.max_image_pixels
        )
        return replace(request, images=inputs, mask=mask_image)


def _image_url(ref: ImageRefParam, param: str) -> str:
    if ref.file_id is not None:
        raise InvalidRequestError(
            "File IDs are not supported here; send the image as 'image_url' (a data: or https URL).",
            param=f"{param}.file_id",
            code="unsupported_parameter",
        )
    if not ref.image_url:
        raise InvalidRequestError(
            f"Missing required parameter: '{param}.image_url'.", param=f"{param}.image_url", code="missing_required_parameter"
        )
    return ref.image_url


async def _fetch_all(fetch: FetchImage, urls: Sequence[tuple[str, str]]) -> list[bytes]:
    """Every URL fetched at once. A failure cancels the others; when several
    fail, the first in request order is reported."""
    tasks: list[asyncio.Task[bytes]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks.extend(group.create_task(fetch(url, param)) for param, url in urls)
    except BaseExceptionGroup as failed:
        for task in tasks:
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                raise exc from None
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]
