"""``recraft``: Recraft's image API (https://external.api.recraft.ai/v1), a
dialect of the ``openai`` provider.

Recraft speaks OpenAI's generations shape (``POST /images/generations``, JSON,
``Authorization: Bearer``, an ``ImagesResponse``-like answer with ``url`` or
``b64_json``) plus fields of its own, which the models' catalog entries
declare (``imagegate/catalog/recraft.yaml``): ``style``, ``substyle``,
``style_id``, ``controls``, ``text_layout``, ``negative_prompt``,
``random_seed`` and, for edits, ``strength``. Requests carry exactly what the
client sent, with the deployment's model name (``openai/wire.py``); the
gateway's own fields (``output_format``, ``output_compression``) stay here,
and OpenAI's ``user``, which Recraft has no counterpart for, is a 400.

Edits map onto Recraft's two multipart operations:

* an edit with a ``mask`` is ``POST /images/inpaint`` (image + mask). OpenAI's
  mask marks the area to edit with fully transparent pixels; Recraft's is a
  grayscale image whose white pixels are regenerated and black ones kept, so
  the mask is converted (alpha 0 -> 255, anything else -> 0). It takes no
  ``strength`` and no ``controls`` (a 400 naming them).
* an edit without one is ``POST /images/imageToImage``, which needs
  ``strength`` (how far from the input, 0..1): a 400 naming it when missing.

Both keep the input's size: a ``size`` asked on an edit is not sent, and the
gateway makes the result that size (``gateway/output.py``), except an SVG,
which it never touches (a 400 for a vector model). Nested fields
(``controls``, ``text_layout``) travel in the multipart body as parts holding
JSON (``application/json``, file name ``blob``), exactly as Recraft's own
client sends ``controls`` (a ``Blob`` appended to a ``FormData``).

Models whose name ends in ``_vector`` answer SVG; it passes through the
gateway untouched (``image/svg+xml``). Recraft answers image URLs (temporary,
on its own host) unless asked for ``b64_json``: they are fetched at once
through the gateway's SSRF-checked fetcher, without the credential.

Errors: Recraft's error bodies are plain text or JSON of no fixed shape
(https://www.recraft.ai/docs/api-reference/error-handling); both become the
OpenAI envelope with the upstream's status (401/403 are the gateway's
credential problem: 502, as for every hosted provider).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson
import pybase64

from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment, GeneratedImage, ProviderResult, StreamItem
from imagegate.errors import InvalidRequestError
from imagegate.imaging.masks import white_where_transparent
from imagegate.imaging.probe import decode, is_svg, sniff_format
from imagegate.providers.base import Provider
from imagegate.providers.http import ErrorFields, invalid_response, openai_error_fields
from imagegate.providers.openai import wire
from imagegate.providers.openai.provider import OpenAIOptions, OpenAIProvider

# A nested value (object, array) in a multipart body: a part holding JSON, as
# Recraft's client sends it (github.com/recraft-ai/mcp-recraft-server, ImageApi.ts).
_JSON_PART = ("blob", "application/json")
_MESSAGE_CAP = 1000  # characters of a plain-text error body passed on


class RecraftOptions(OpenAIOptions):
    base_url: str = "https://external.api.recraft.ai/v1"


class RecraftProvider(OpenAIProvider):
    type_name: ClassVar[str] = "recraft"
    options_model = RecraftOptions
    # Every Recraft model this gateway serves has a catalog entry (or the
    # route names one with `rules:`): an unlisted name is a config error.
    default_rules = None
    options: RecraftOptions

    # -- the contract ------------------------------------------------------

    async def generate(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        if "strength" in request.extra:
            raise InvalidRequestError(
                "'strength' is for edits without a mask (Recraft's image to image), not generations.",
                param="strength",
                code="unsupported_parameter",
            )
        body = orjson.dumps(_fields(request, deployment))
        call = self.build("POST", "/images/generations", deployment, content=body, headers={"Content-Type": "application/json"})
        return await self._call(call, request, deployment)

    async def edit(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        fields = _fields(request, deployment)
        if request.mask is not None:
            path = "/images/inpaint"
            for name in ("strength", "controls"):
                if name in fields:
                    raise InvalidRequestError(
                        f"Recraft's inpainting (an edit with a mask) takes no '{name}'; send the edit without it.",
                        param=name,
                        code="unsupported_parameter",
                    )
        else:
            path = "/images/imageToImage"
            if "strength" not in fields:
                raise InvalidRequestError(
                    "Missing required parameter: 'strength' (an edit without a mask is Recraft's image to image: "
                    "how far the result may move from the input, 0 to 1).",
                    param="strength",
                    code="missing_required_parameter",
                )
        if "size" in fields:
            if "svg" in request.spec.output_formats:
                raise InvalidRequestError(
                    f"Recraft's edits keep the input's size and '{request.model}' answers SVG, which the gateway "
                    "does not resize; send the edit without 'size'.",
                    param="size",
                    code="unsupported_parameter",
                )
            del fields["size"]  # the gateway makes the result this size (gateway/output.py)
        data, files = _multipart(fields)
        image = request.images[0]
        files.insert(0, ("image", (f"image.{_ext(image.info.format)}", image.data, image.info.mime_type)))
        if request.mask is not None:
            mask = await asyncio.to_thread(recraft_mask, request.mask.data, self.context.max_image_pixels)
            files.insert(1, ("mask", ("mask.png", mask, "image/png")))
        call = self.build("POST", path, deployment, data=data, files=files)
        return await self._call(call, request, deployment)

    async def variation(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        raise InvalidRequestError(
            f"'{request.model}' makes no variations (Recraft has no variations endpoint).",
            param="model",
            code="unsupported_endpoint",
        )

    async def run(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        return await Provider.run(self, request, deployment)

    async def stream(self, request: ImageRequest, deployment: Deployment) -> AsyncIterator[StreamItem]:
        """Recraft does not stream: the images, as completions, once made."""
        async for event in Provider.stream(self, request, deployment):
            yield event

    # -- answers -----------------------------------------------------------

    async def _call(self, call: Any, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        async with self.exchange(call, deployment) as response:
            payload = wire.parse_json(self.name, await self.read(response))
        images = [await self._image(request, item) for item in wire.result_items(self.name, payload)]
        return ProviderResult(images, meta=wire.parse_meta(payload))

    async def _image(self, request: ImageRequest, item: dict[str, Any]) -> GeneratedImage:
        revised = item.get("revised_prompt")
        revised = revised if isinstance(revised, str) else None
        b64 = item.get("b64_json")
        if b64 is not None:
            if not isinstance(b64, str) or not b64:
                raise invalid_response(self.name, "an image's b64_json is not a string")
            try:
                data = pybase64.b64decode(b64, validate=True)
            except ValueError:
                raise invalid_response(self.name, "an image's b64_json is not valid base64") from None
            return GeneratedImage(data, self._format(data), b64=b64, revised_prompt=revised)
        url = item.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise invalid_response(self.name, "an image has neither b64_json nor an http(s) url")
        data = await self.download(url)
        return GeneratedImage(data, self._format(data), revised_prompt=revised)

    def _format(self, data: bytes) -> str:
        head = data[:4096]
        fmt = sniff_format(head) or ("svg" if is_svg(head) else None)
        if fmt is None:
            raise invalid_response(self.name, "an image is not PNG, JPEG, WebP or SVG")
        return fmt

    # -- errors ------------------------------------------------------------

    def error_fields(self, body: bytes) -> ErrorFields | None:
        """Recraft's error body: JSON (``{"code", "message"}``, OpenAI's
        envelope, or ``{"error": "..."}``) or plain text; not an HTML page."""
        fields = openai_error_fields(body)
        if fields is not None:
            return fields
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _text_error(body)
        if not isinstance(payload, dict):
            return None
        message = next((payload[k] for k in ("message", "error", "detail") if isinstance(payload.get(k), str)), None)
        if message is None:
            return None
        code = payload.get("code")
        return ErrorFields(message, code=str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None)


def _fields(request: ImageRequest, deployment: Deployment) -> dict[str, Any]:
    """The fields as the client sent them, with the upstream's model name;
    OpenAI's ``user`` has no counterpart at Recraft: a 400, never dropped."""
    fields = wire.upstream_fields(request, deployment.model)
    if "user" in fields:
        raise InvalidRequestError(
            f"'user' is not supported with model '{request.model}': Recraft's API has no such field.",
            param="user",
            code="unsupported_parameter",
        )
    return fields


def _text_error(body: bytes) -> ErrorFields | None:
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not text or text.startswith("<"):  # an HTML page (a proxy's), not Recraft's answer
        return None
    return ErrorFields(text[:_MESSAGE_CAP])


def _ext(fmt: str) -> str:
    return "jpg" if fmt == "jpeg" else fmt


def _multipart(fields: dict[str, Any]) -> tuple[dict[str, str], list[tuple[str, tuple[str, bytes, str]]]]:
    """Flat fields as text parts; nested values (objects, arrays) as parts
    holding JSON."""
    data: dict[str, str] = {}
    files: list[tuple[str, tuple[str, bytes, str]]] = []
    for name, value in fields.items():
        if isinstance(value, dict | list):
            files.append((name, (_JSON_PART[0], orjson.dumps(value), _JSON_PART[1])))
        elif isinstance(value, bool):
            data[name] = "true" if value else "false"
        else:
            data[name] = str(value)
    return data, files


def recraft_mask(mask: bytes, max_pixels: int) -> bytes:
    """An OpenAI mask (fully transparent = edit here) as Recraft's: grayscale,
    white (255) where the image is regenerated, black (0) elsewhere."""
    return white_where_transparent(decode(mask, max_pixels=max_pixels))
