"""Read request bodies: JSON objects and multipart forms.

Only HTTP concerns live here (content types, multipart parts, file vs text
fields); what the fields mean is the contract layer's business.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from imagegate.api.multipart import Part, parse_multipart
from imagegate.contract.build import FormBody
from imagegate.errors import InvalidRequestError, UnsupportedMediaTypeError
from imagegate.imaging.probe import sniff_format

IMAGE_FIELDS = ("image", "image[]")
MAX_TEXT_PART = 1024 * 1024  # a prompt of 32000 characters is far below this
MAX_IMAGE_PARTS = 16
MAX_TEXT_FIELDS = 64


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_media_type(request: Request, *allowed: str) -> str:
    kind = media_type(request)
    if kind not in allowed:
        raise UnsupportedMediaTypeError(
            f"Unsupported Content-Type {kind or '(none)'!r}; this endpoint takes {' or '.join(allowed)}.",
            code="unsupported_media_type",
        )
    return kind


async def read_json_object(request: Request) -> dict[str, Any]:
    """Parse a JSON object body. The body is read into one growing buffer
    (never a list of chunks joined at the end, and not kept on the request
    as ``request.body()`` would), parsed, and dropped at once: a 100 MB body
    with a ``data:`` URL is held once as bytes, then once as the parsed text."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    if not body:
        raise InvalidRequestError("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request: {exc.msg} (position {exc.pos}).", code="invalid_json"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequestError("The JSON body must be an object.", code="invalid_json")
    return data


def _is_file(part: Part) -> bool:
    """A file upload: sent with ``filename=``, or without one but holding an
    image (sniffed from its bytes) or anything that is not UTF-8 text, as
    OpenAI takes it. A text value such as a URL stays a text field."""
    if part.is_file or sniff_format(part.content) is not None:
        return True
    try:
        part.content.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


async def read_form(request: Request, *, file_fields: tuple[str, ...]) -> FormBody:
    """Parse a multipart body. ``image`` and ``image[]`` parts (repeatable)
    collect into ``images``; ``mask`` is one file; every other part must be a
    text field, given once. Part file names are ignored, except that a part
    named in ``file_fields`` without one must hold an image (see ``_is_file``)."""
    parts = await parse_multipart(
        request.headers.get("content-type", ""),
        request.stream(),
        max_parts=MAX_IMAGE_PARTS + 1 + MAX_TEXT_FIELDS,
        max_text_bytes=MAX_TEXT_PART,
        file_names=frozenset(file_fields),
    )
    out = FormBody()
    image_count = sum(1 for p in parts if p.name in IMAGE_FIELDS)
    if image_count > MAX_IMAGE_PARTS + 1:  # the contract names the model's own limit; this caps memory
        raise InvalidRequestError(
            f"Too many images: at most {MAX_IMAGE_PARTS} are accepted.", param="image", code="too_many_images"
        )
    for part in parts:
        name = part.name
        if name in file_fields:
            if not _is_file(part):
                raise InvalidRequestError(
                    f"Invalid type for '{name}': expected a file upload, but got a text field instead.",
                    param="image" if name in IMAGE_FIELDS else name,
                    code="invalid_type",
                )
            if name == "mask":
                if out.mask is not None:
                    raise InvalidRequestError("Only one 'mask' may be sent.", param="mask", code="duplicate_parameter")
                out.mask = ("mask", part.content)
            else:
                label = "image" if image_count == 1 else f"image[{len(out.images)}]"
                out.images.append((label, part.content))
            continue
        if part.is_file:
            raise InvalidRequestError(
                f"Invalid type for '{name}': expected a text field, but got a file upload instead.",
                param=name,
                code="invalid_type",
            )
        if name in out.fields:
            raise InvalidRequestError(f"Parameter '{name}' was sent more than once.", param=name, code="duplicate_parameter")
        try:
            out.fields[name] = part.content.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError(f"The field '{name}' is not valid UTF-8.", param=name, code="invalid_value") from None
    return out
