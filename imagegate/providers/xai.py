"""``xai``: xAI's Images API (Grok Imagine), a dialect of the ``openai`` provider.

xAI's ``POST /v1/images/generations`` and ``POST /v1/images/edits`` are
OpenAI-shaped with three differences this dialect translates (sources:
https://docs.x.ai/developers/model-capabilities/images/generation,
https://docs.x.ai/developers/model-capabilities/images/editing,
https://docs.x.ai/developers/model-capabilities/images/multi-image-editing and
the xai-sdk's ``src/xai_sdk/sync/image.py``; the stand-in,
``tests/standin_xai.py``, cites the rest):

* **No ``size``.** xAI takes ``aspect_ratio`` (13 ratios from 9:20 to 20:9,
  or ``auto``) and ``resolution`` (``1k`` ~1 MP, ``2k`` ~4 MP) and answers
  ``Argument not supported: size``. A client's ``WIDTHxHEIGHT`` becomes the
  nearest documented ratio and the smallest resolution with at least as
  many pixels (:func:`shape_for`); the gateway then makes the image the asked
  size (docs/output.md). A size outside those bounds is a 400 naming
  ``size``. A client may send ``aspect_ratio``/``resolution`` itself
  (declared per model in ``extra_fields``); together with a ``size`` that is a
  400 naming the conflict, never a silent choice.
* **Edits are JSON.** The OpenAI multipart edit (or a JSON edit whose image
  URLs the gateway fetched) becomes ``image: {url, type: image_url}`` (one
  image) or ``images: [...]`` (up to three), each a ``data:`` URI of the exact
  bytes the client sent. xAI documents no inpainting: a mask is a 400 naming
  ``mask`` (the catalog says ``masks: false``; the check here holds for any
  rules a config names).
* **Answers** carry ``data[].b64_json`` or ``url`` plus ``mime_type``, a
  ``block_reason`` when input moderation refused the prompt (a 400
  ``moderation_blocked`` here) and ``usage.cost_in_usd_ticks``: xAI's exact
  charge (10^10 ticks to the dollar, input images of an edit included), which
  is what the request is charged (``upstream_cost_nusd``); no token ``Usage``.
  Errors are ``{"code": <status text>, "error": <message>}``; a 400 saying the
  API key is wrong is this gateway's credential, not the client's request:
  a 502 ``upstream_auth_error`` like a 401.

Fields the catalog entry marks as the gateway's own are never sent: for
``response_format`` the upstream is asked for base64 and the gateway hosts
URLs itself. Every other field the client sent goes upstream as sent (the
catalog refuses what xAI does not take). docs/upstreams/xai.md has the
config, the field table and what was tested against the stand-in only.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx
import orjson

from imagegate.contract.catalog import GENERATIONS, ModelSpec, parse_size
from imagegate.contract.requests import ImageRequest, InputImage
from imagegate.contract.results import Deployment, GeneratedImage, ProviderResult, StreamItem
from imagegate.errors import ImagegateError, InvalidRequestError
from imagegate.providers.base import Provider
from imagegate.providers.http import ErrorFields, invalid_response, openai_error_fields
from imagegate.providers.openai import wire
from imagegate.providers.openai.provider import OpenAIOptions, OpenAIProvider

# xAI's documented aspect ratios (xai-sdk ImageAspectRatio), width:height.
_RATIO_NAMES = ("1:1", "3:4", "4:3", "9:16", "16:9", "2:3", "3:2", "9:19.5", "19.5:9", "9:20", "20:9", "1:2", "2:1")
ASPECT_RATIOS: tuple[tuple[str, float], ...] = tuple(
    (name, float(name.split(":")[0]) / float(name.split(":")[1])) for name in _RATIO_NAMES
)
# Resolutions, smallest first, with the pixels each stands for ("1k": ~1
# megapixel, "2k": ~4 megapixels; the exact dimensions vary by ratio).
RESOLUTIONS: tuple[tuple[str, int], ...] = (("1k", 1024 * 1024), ("2k", 2048 * 2048))
_WIDEST = max(r for _, r in ASPECT_RATIOS)
_SLACK = 1e-3  # the catalog's max_aspect rounds 20:9 up to 2.2223
_SHAPE_FIELDS = ("aspect_ratio", "resolution")
_KEY_ERROR = re.compile(r"\bapi[ _-]?key\b", re.IGNORECASE)
# xAI states its charge in ticks: 10^10 to the dollar, so ten to the nano-dollar.
TICKS_PER_NANO_USD = 10


def shape_for(width: int, height: int) -> tuple[str, str] | None:
    """The ``(aspect_ratio, resolution)`` for a ``width`` x ``height`` image:
    the documented ratio nearest on a log scale, and the smallest resolution
    with at least that many pixels (so the gateway only ever scales down).
    None when the size is beyond every ratio or resolution."""
    ratio = width / height
    if max(ratio, 1 / ratio) > _WIDEST + _SLACK:
        return None
    resolution = next((name for name, pixels in RESOLUTIONS if width * height <= pixels), None)
    if resolution is None:
        return None
    nearest = min(ASPECT_RATIOS, key=lambda item: abs(math.log(ratio / item[1])))[0]
    return nearest, resolution


def _shape_fields(request: ImageRequest) -> dict[str, Any]:
    """``aspect_ratio``/``resolution`` for the request's ``size`` (nothing for
    ``auto`` or no size); a 400 naming the conflict or ``size``."""
    size = request.params.size
    dims = parse_size(size) if size else None
    if dims is None:  # no size, or "auto": xAI's own default
        return {}
    given = [name for name in _SHAPE_FIELDS if name in request.extra]
    if given:
        raise InvalidRequestError(
            f"'size' and '{given[0]}' both set the image's shape for model '{request.model}': "
            f"send either 'size' (converted to xAI's aspect_ratio and resolution) or 'aspect_ratio'/'resolution', not both.",
            param=given[0],
            code="conflicting_parameters",
        )
    shape = shape_for(*dims) if "aspect_ratio" in request.spec.extra_fields else None
    if shape is None:
        raise InvalidRequestError(
            f"Invalid value: '{size}' for 'size' with model '{request.model}': xAI takes aspect ratios from 9:20 to 20:9 "
            f"at up to {RESOLUTIONS[-1][1]} pixels ('2k'); this size cannot be expressed.",
            param="size",
        )
    return dict(zip(_SHAPE_FIELDS, shape, strict=True))


def _image_ref(image: InputImage) -> dict[str, str]:
    return {"url": image.data_uri(), "type": "image_url"}


def request_body(request: ImageRequest, upstream_model: str) -> dict[str, Any]:
    """xAI's JSON body: the fields the client sent, ``size`` converted, the
    gateway's own fields left out, the images as ``data:`` URIs."""
    spec: ModelSpec = request.spec
    sent = {k: v for k, v in request.sent().items() if k not in spec.gateway_fields and k != "size"}
    body: dict[str, Any] = {**sent, **_shape_fields(request), "model": upstream_model}
    if "response_format" in spec.gateway_fields:
        body["response_format"] = "b64_json"  # the gateway hosts URLs itself
    if request.mask is not None:
        raise InvalidRequestError(
            f"Model '{request.model}' does not take a mask: xAI edits whole images (no inpainting); send the edit without one.",
            param="mask",
            code="unsupported_mask",
        )
    if request.endpoint != GENERATIONS:
        refs = [_image_ref(image) for image in request.images]
        if len(refs) == 1:
            body["image"] = refs[0]
        else:
            body["images"] = refs
    return body


class XAIOptions(OpenAIOptions):
    base_url: str = "https://api.x.ai/v1"


class XAIProvider(OpenAIProvider):
    type_name: ClassVar[str] = "xai"
    options_model = XAIOptions
    # A model name the catalog does not know (a new Grok Imagine id) gets
    # grok-imagine-image's rules: what they do not allow is a 400, never a guess.
    default_rules = "grok-imagine-image"
    options: XAIOptions

    def _request(self, request: ImageRequest, deployment: Deployment) -> httpx.Request:
        path = wire.PATHS[request.endpoint]
        body = orjson.dumps(request_body(request, deployment.model))
        return self.build("POST", path, deployment, content=body, headers={"Content-Type": "application/json"})

    # -- the contract ------------------------------------------------------

    async def run(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        if request.endpoint not in ("generations", "edits"):
            raise InvalidRequestError(
                f"Model '{request.model}' does not support image {request.endpoint} (xAI has none).",
                param="model",
                code="unsupported_model",
            )
        async with self.exchange(self._request(request, deployment), deployment) as response:
            payload = wire.parse_json(self.name, await self.read(response))
        blocked = payload.get("block_reason")
        if isinstance(blocked, str) and blocked:
            raise InvalidRequestError(
                f"The upstream '{self.name}' refused the request (input moderation): {blocked}",
                param="prompt",
                code="moderation_blocked",
            )
        images = [await self._image(request, item) for item in wire.result_items(self.name, payload)]
        return ProviderResult(images, usage=None, meta=wire.parse_meta(payload), upstream_cost_nusd=self._cost(payload))

    def _cost(self, payload: dict[str, Any]) -> int | None:
        """``usage.cost_in_usd_ticks`` in nano-dollars (a tick is a tenth of
        one, rounded up); None when absent. Not a whole number: a 502."""
        usage = payload.get("usage")
        ticks = usage.get("cost_in_usd_ticks") if isinstance(usage, dict) else None
        if ticks is None:
            return None
        if isinstance(ticks, bool) or not isinstance(ticks, int):
            raise invalid_response(self.name, f"usage.cost_in_usd_ticks is not a whole number: {str(ticks)[:40]!r}")
        return -(-ticks // TICKS_PER_NANO_USD)

    generate = edit = variation = run

    async def stream(self, request: ImageRequest, deployment: Deployment) -> AsyncIterator[StreamItem]:
        """xAI does not stream images: the whole answer, as completions."""
        async for event in Provider.stream(self, request, deployment):
            yield event

    async def _image(self, request: ImageRequest, item: dict[str, Any]) -> GeneratedImage:
        """The openai dialect's, tolerating a ``data:`` URI in ``b64_json``
        (xAI's gRPC API sends one)."""
        b64 = item.get("b64_json")
        if isinstance(b64, str) and b64.startswith("data:"):
            item = {**item, "b64_json": b64.partition("base64,")[2]}
        return await super()._image(request, item)

    # -- error answers -----------------------------------------------------

    def error_fields(self, body: bytes) -> ErrorFields | None:
        """xAI's ``{"code": "Client specified an invalid argument", "error": "..."}``
        (or OpenAI's envelope, should it send one)."""
        fields = openai_error_fields(body)
        if fields is not None:
            return fields
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        message = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(message, str) or not message:
            return None
        code = payload.get("code")
        return ErrorFields(message, code=str(code) if code is not None else None)

    def error_from(self, status: int, body: bytes, headers: Any) -> ImagegateError:
        """xAI answers a wrong API key with a 400 ("Incorrect API key
        provided: xa***QR ..."): that is this gateway's credential, so it is
        the base's 401 answer (502 ``upstream_auth_error``, no upstream text)."""
        if status == 400:
            fields = self.error_fields(body)
            if fields is not None and _KEY_ERROR.search(fields.message):
                return super().error_from(401, body, headers)
        return super().error_from(status, body, headers)


__all__ = ["ASPECT_RATIOS", "RESOLUTIONS", "XAIOptions", "XAIProvider", "request_body", "shape_for"]
