"""OpenAI Images API wire format: request bodies out, responses and errors in.

Fidelity rule: the upstream receives exactly the fields the client sent
(``ImageRequest.sent()``), with only ``model`` replaced by the deployment's
upstream name; files go byte for byte. Nothing is added or re-defaulted. The
one exception is a field the catalog marks as the gateway's own for the model
(``response_format`` on GPT image models, which OpenAI refuses there: the
gateway hosts the URL itself).
"""

from __future__ import annotations

import binascii
from typing import Any

import orjson
import pybase64

from imagegate.contract.requests import ImageRequest, InputImage
from imagegate.contract.results import GeneratedImage, ImageMeta, ProviderResult, Usage
from imagegate.errors import UpstreamError
from imagegate.imaging.probe import sniff_format
from imagegate.providers.http import invalid_response
from imagegate.providers.openai.fastjson import loads_images

PATHS = {"generations": "/images/generations", "edits": "/images/edits", "variations": "/images/variations"}

Multipart = tuple[dict[str, str], list[tuple[str, tuple[str, bytes, str]]]]


def upstream_fields(request: ImageRequest, upstream_model: str) -> dict[str, Any]:
    sent = {k: v for k, v in request.sent().items() if k not in request.spec.gateway_fields}
    return {**sent, "model": upstream_model}


def _form_value(value: Any) -> str:
    """A field as multipart text: booleans as JSON's, objects and arrays as
    JSON text (a JSON edit's nested field reaches a multipart upstream as
    JSON, never as Python's repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _file(field: str, image: InputImage, index: int) -> tuple[str, tuple[str, bytes, str]]:
    name = f"{field.replace('[]', '')}-{index}.{'jpg' if image.info.format == 'jpeg' else image.info.format}"
    return field, (name, image.data, image.info.mime_type)


def multipart(request: ImageRequest, upstream_model: str) -> Multipart:
    """Fields as text parts; one image as ``image``, several as ``image[]``
    (as the official SDK sends them); the mask as ``mask``."""
    data = {k: _form_value(v) for k, v in upstream_fields(request, upstream_model).items()}
    field = "image" if len(request.images) == 1 else "image[]"
    files = [_file(field, img, i) for i, img in enumerate(request.images)]
    if request.mask is not None:
        files.append(_file("mask", request.mask, 0))
    return data, files


def json_body(request: ImageRequest, upstream_model: str) -> bytes:
    return orjson.dumps(upstream_fields(request, upstream_model))


# -- responses ----------------------------------------------------------------


def parse_json(provider: str, body: bytes) -> dict[str, Any]:
    try:
        data = loads_images(body)
    except orjson.JSONDecodeError:
        raise invalid_response(provider, f"the body is not JSON ({len(body)} bytes)") from None
    if not isinstance(data, dict):
        raise invalid_response(provider, "the body is not a JSON object")
    return data


def _int(value: Any) -> int:
    """A token count: absent is 0, ``1e3`` is 1000; anything else is malformed.
    (Whether the number is plausible is the gateway's check, gateway/checks.py.)"""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"a token count is {type(value).__name__} {str(value)[:40]!r}")


def parse_usage(raw: Any, provider: str) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    try:
        return _usage(raw)
    except ValueError as exc:
        raise invalid_response(provider, f"its usage is malformed ({exc})") from None


def _usage(raw: dict[str, Any]) -> Usage:
    inp_raw, out_raw = raw.get("input_tokens_details"), raw.get("output_tokens_details")
    inp: dict[str, Any] = inp_raw if isinstance(inp_raw, dict) else {}
    out: dict[str, Any] | None = out_raw if isinstance(out_raw, dict) else None
    return Usage(
        input_tokens=_int(raw.get("input_tokens")),
        output_tokens=_int(raw.get("output_tokens")),
        total_tokens=_int(raw.get("total_tokens")),
        input_text_tokens=_int(inp.get("text_tokens")),
        input_image_tokens=_int(inp.get("image_tokens")),
        output_image_tokens=_int(out.get("image_tokens")) if out is not None else None,
        output_text_tokens=_int(out.get("text_tokens")) if out is not None else None,
        input_cached_tokens=_int(inp.get("cached_tokens")),
    )


def parse_meta(raw: dict[str, Any], created_key: str = "created") -> ImageMeta:
    def text(key: str) -> str | None:
        value = raw.get(key)
        return value if isinstance(value, str) else None

    created = raw.get(created_key)
    return ImageMeta(
        created=created if isinstance(created, int) and not isinstance(created, bool) else None,
        size=text("size"),
        quality=text("quality"),
        background=text("background"),
    )


def decode_image(provider: str, b64: Any, request: ImageRequest, revised_prompt: Any = None) -> GeneratedImage:
    """Decode and check the whole base64 text (SIMD: ~0.1 ms for 2 MB), and
    keep the text itself to hand back unchanged when no conversion is needed."""
    if not isinstance(b64, str) or not b64:
        raise invalid_response(provider, "an image has no b64_json")
    try:
        data = pybase64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_response(provider, "an image's b64_json is not valid base64") from None
    return GeneratedImage(data, _format_of(provider, data[:64]), b64=b64, **_extras(request, revised_prompt))


def image_from_bytes(provider: str, data: bytes, request: ImageRequest, revised_prompt: Any = None) -> GeneratedImage:
    return GeneratedImage(data, _format_of(provider, data[:64]), **_extras(request, revised_prompt))


def _format_of(provider: str, head: bytes) -> str:
    fmt = sniff_format(head)
    if fmt is None:
        raise invalid_response(provider, "an image is not PNG, JPEG or WebP")
    return fmt


def _extras(request: ImageRequest, revised_prompt: Any) -> dict[str, Any]:
    return {
        "revised_prompt": revised_prompt if isinstance(revised_prompt, str) else None,
        # The upstream applied the compression the client asked for.
        "compressed": request.output_compression is not None,
    }


def result_items(provider: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    items = payload.get("data")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise invalid_response(provider, "no 'data' list of images")
    return items


def build_result(provider: str, images: list[GeneratedImage], payload: dict[str, Any]) -> ProviderResult:
    return ProviderResult(images, usage=parse_usage(payload.get("usage"), provider), meta=parse_meta(payload))


# -- errors -------------------------------------------------------------------
# An error answer is read by HostedProvider.error_from (OpenAI's envelope is the
# base's default); an error event inside a stream, here.


def stream_error(provider: str, payload: dict[str, Any]) -> UpstreamError:
    """An ``error`` event in an upstream stream (``{"error": {...}}`` or the
    error object itself)."""
    inner = payload.get("error")
    err: dict[str, Any] = inner if isinstance(inner, dict) else payload
    message, code, param = err.get("message"), err.get("code"), err.get("param")
    return UpstreamError(
        message if isinstance(message, str) else "The upstream stream failed.",
        code=str(code) if code is not None else "upstream_error",
        param=param if isinstance(param, str) else None,
    )
