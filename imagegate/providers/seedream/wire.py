"""The Ark image generation dialect: OpenAI requests in, Ark's shapes out and back.

Ark (Volcengine Ark / BytePlus ModelArk) has one images call,
``POST {base}/images/generations`` (JSON): generations and edits alike, the
input images in ``image`` (one ``data:`` URI as a string, several as an
array). Sources: https://docs.byteplus.com/en/docs/ModelArk/1541523 (Image
generation API), https://docs.byteplus.com/en/docs/ModelArk/1824137
(streaming events), https://docs.byteplus.com/en/docs/ModelArk/1299023 (error
codes); the official SDKs' types: volcengine/volcengine-python-sdk
``volcenginesdkarkruntime/types/images/*.py`` and volcengine/volcengine-go-sdk
``service/arkruntime/model/images.go``.

The translation, field by field (a field with no counterpart is a 400 naming
it, never dropped):

* ``model`` -> the deployment's model (an Ark model ID or endpoint ID);
  ``prompt``, ``size`` (``1K``/``2K``/``3K``/``4K`` or ``WxH``; ``auto`` is
  Ark's default, so it is not sent), ``stream``, ``output_format`` (the
  models that take it) and the model's declared extra fields, as sent;
* ``n`` > 1 -> ``sequential_image_generation: auto`` with
  ``sequential_image_generation_options.max_images = n`` (Ark then makes *up
  to* n images; input + output images <= 15);
* edit images -> ``image``: ``data:image/<format>;base64,...`` URIs, byte
  for byte;
* ``response_format`` is the gateway's own (it hosts URLs itself): Ark is
  always asked for ``b64_json``;
* ``watermark`` comes from the provider's config, on every request;
* ``user`` has no counterpart, nor has ``mask``: 400.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import ImageMeta, Usage
from imagegate.errors import ImagegateError, InvalidRequestError, UpstreamError
from imagegate.providers.http import ErrorFields, error_object, invalid_response

log = logging.getLogger("imagegate.providers.seedream")

PATH = "/images/generations"
# "Number of input reference images + Number of generated images <= 15" (1541523).
MAX_IMAGES_PER_CALL = 15

# Spec fields that reach Ark under the same name and with the same meaning.
_SAME_NAME = frozenset({"prompt", "stream", "output_format"})
# Spec fields this module translates itself (model, n, size) or the gateway implements.
_TRANSLATED = frozenset({"model", "n", "size", "response_format"})

# Ark fields this dialect sets itself: a client may not set them (with
# ``unknown_fields: forward`` they would otherwise be overwritten unseen).
_OURS = {
    "watermark": "it is the provider's `watermark` option in the gateway's configuration",
    "sequential_image_generation": "ask for several images with 'n'",
    "sequential_image_generation_options": "ask for several images with 'n'",
}

# Ark's content-filter codes (1299023): "...SensitiveContentDetected",
# "...RiskDetection", "PolicyViolation" and their sub-codes.
_POLICY_MARKERS = ("SensitiveContentDetected", "RiskDetection", "PolicyViolation")


def body(request: ImageRequest, upstream_model: str, *, watermark: bool) -> bytes:
    """The Ark request body for ``request`` (see the module's doc)."""
    out: dict[str, Any] = {"model": upstream_model}
    for name, value in request.sent().items():
        if name.lower() in _OURS:  # any case: an upstream may match JSON keys case-insensitively
            raise InvalidRequestError(
                f"'{name}' cannot be set by a request to model '{request.model}': {_OURS[name.lower()]}.",
                param=name,
                code="unsupported_parameter",
            )
        if name in _SAME_NAME or name in request.extra:  # the model's declared (or forwarded) fields
            out[name] = value
        elif name == "size":
            if value != "auto":
                out["size"] = value
        elif name not in _TRANSLATED:
            raise InvalidRequestError(
                f"'{name}' is not supported with model '{request.model}': the Seedream (Ark) images API has no such field.",
                param=name,
                code="unsupported_parameter",
            )
    if request.mask is not None:  # the catalog says masks: false; an entry that forgets it still sends none
        raise InvalidRequestError(
            f"Model '{request.model}' takes no mask (Ark has none).", param="mask", code="unsupported_parameter"
        )
    if request.images:
        uris = [image.data_uri() for image in request.images]  # lower-case MIME types, as Ark wants
        out["image"] = uris[0] if len(uris) == 1 else uris
    if request.n > 1:
        if len(request.images) + request.n > MAX_IMAGES_PER_CALL:
            raise InvalidRequestError(
                f"With {len(request.images)} input image(s), 'n' may be at most {MAX_IMAGES_PER_CALL - len(request.images)} "
                f"for model '{request.model}' (input images + generated images <= {MAX_IMAGES_PER_CALL}).",
                param="n",
                code="integer_above_max_value",
            )
        out["sequential_image_generation"] = "auto"
        out["sequential_image_generation_options"] = {"max_images": request.n}
    out["response_format"] = "b64_json"
    out["watermark"] = watermark
    return orjson.dumps(out)


# -- answers --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failure:
    """One image Ark could not make (``data[].error``, a ``partial_failed``
    event, an ``error`` event or a body's top-level ``error``)."""

    code: str
    message: str

    @property
    def policy(self) -> bool:
        return any(marker in self.code for marker in _POLICY_MARKERS)


def failure_of(raw: Any) -> Failure:
    err = raw if isinstance(raw, dict) else {}
    code, message = err.get("code"), err.get("message")
    return Failure(str(code) if code is not None else "unknown", message if isinstance(message, str) else "no message")


def no_image_error(provider: str, failures: list[Failure]) -> ImagegateError:
    """The error for an answer without a single image: a refusal by Ark's
    content filter is the client's 400 ``content_policy_violation``; any other
    failure (Ark's ``InternalServiceError``, ...) a 502 with Ark's code."""
    refused = next((f for f in failures if f.policy), None)
    if refused is not None:
        return InvalidRequestError(
            f"The request was rejected by the upstream's content filter: {refused.message} ({refused.code}).",
            code="content_policy_violation",
        )
    if not failures:
        return UpstreamError(f"The upstream '{provider}' answered without any image.", code="upstream_no_image")
    first = failures[0]
    return UpstreamError(f"The upstream '{provider}' could not generate the image: {first.message}", code=first.code)


def log_failures(provider: str, model: str, failures: list[Failure], delivered: int) -> None:
    if failures:
        codes = ", ".join(sorted({f.code for f in failures}))
        log.warning("upstream %s failed %d image(s) of %s (%s); %d delivered", provider, len(failures), model, codes, delivered)


def error_fields(body: bytes) -> ErrorFields | None:
    """An Ark error body, ``{"error": {"code", "message", "param", "type"}}``.
    Ark's ``type`` (``BadRequest``, ``Unauthorized``...) is not OpenAI's, so
    the gateway's own type goes out; a content-filter code becomes
    ``content_policy_violation`` (the Ark code stays in the message)."""
    err = error_object(body)
    if err is None:
        return None
    failure = failure_of(err)
    param = err.get("param")
    param = param if isinstance(param, str) and param else None
    if failure.policy:
        return ErrorFields(f"{failure.message} ({failure.code})", code="content_policy_violation", param=param)
    return ErrorFields(failure.message, code=failure.code if err.get("code") is not None else None, param=param)


def _count(provider: str, raw: dict[str, Any], key: str) -> int:
    value = raw.get(key, 0)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_response(provider, f"its usage.{key} is not an integer")
    return value


def usage(provider: str, raw: Any) -> Usage | None:
    """Ark's ``usage`` (``generated_images``, ``output_tokens``,
    ``total_tokens``: image tokens, ``sum(w*h)/256``) as OpenAI's; input is
    not counted by Ark. Prices are per image, so it is reported, not billed."""
    if not isinstance(raw, dict):
        return None
    output, total = _count(provider, raw, "output_tokens"), _count(provider, raw, "total_tokens")
    return Usage(input_tokens=0, output_tokens=output, total_tokens=total, output_image_tokens=output, output_text_tokens=0)


def size_of(raw: dict[str, Any]) -> str | None:
    """An image's ``size``; Ark's prose writes ``2048×2048``, its JSON ``2048x2048``."""
    size = raw.get("size")
    return size.replace("\u00d7", "x") if isinstance(size, str) else None


def meta(raw: dict[str, Any], sizes: list[str | None]) -> ImageMeta:
    """``created`` and, when every image reports the same one, the size."""
    created = raw.get("created")
    same = sizes[0] if sizes and all(s == sizes[0] for s in sizes) else None
    return ImageMeta(created=created if isinstance(created, int) and not isinstance(created, bool) else None, size=same)
