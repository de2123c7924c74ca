"""Google's image wire format, shared by the Gemini API and Vertex AI: the
catalog's ``wire`` facts, request bodies, answers, refusals and error bodies.

Sources (each detail below is checked against one of them):

* https://ai.google.dev/gemini-api/docs/image-generation - ``generateContent``
  with ``contents[].parts[]`` (``text``, ``inlineData{mimeType, data}``),
  ``generationConfig.responseModalities``, ``imageConfig{aspectRatio,
  imageSize}`` (``1K``/``2K``/``4K``, upper-case K; none on
  gemini-2.5-flash-image), the ratio/size tables and image token counts, up
  to 14 reference images (Gemini 3), thinking with interim "thought images"
  (not charged) whose last one is the final image.
* https://ai.google.dev/api/generate-content - ``GenerateContentResponse``
  (``candidates[].content.parts``, ``finishReason``, ``promptFeedback.blockReason``,
  ``usageMetadata``); the enums as the official SDK has them,
  https://github.com/googleapis/python-genai ``google/genai/types.py``
  (``FinishReason``, ``BlockedReason``, ``GenerateContentResponseUsageMetadata``).
* https://ai.google.dev/gemini-api/docs/imagen - ``:predict`` with
  ``instances[{prompt}]`` and ``parameters{sampleCount, aspectRatio,
  personGeneration}``, ``predictions[{bytesBase64Encoded, mimeType}]``; the
  field names as the SDK sends them (python-genai ``models.py``,
  ``_GenerateImagesConfig_to_mldev`` before commit 43ef621f:
  ``sampleImageSize``, ``includeRaiReason``; ``raiFilteredReason`` answers).
* https://ai.google.dev/gemini-api/docs/troubleshooting and
  https://cloud.google.com/apis/design/errors - ``{"error": {code, message,
  status, details}}``; ``google.rpc.RetryInfo{retryDelay}`` in ``details``.

How usage is billed (``usage``): ``promptTokenCount`` (details by modality:
TEXT, IMAGE) is the input; the output is ``candidatesTokenCount +
thoughtsTokenCount``, of which the IMAGE tokens of
``candidatesTokensDetails`` are billed at the image rate and the rest
("text and thinking", https://ai.google.dev/gemini-api/docs/pricing) at the
text rate.
"""

from __future__ import annotations

import binascii
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import pybase64
from pydantic import BaseModel, ConfigDict, Field, field_validator

from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import GeneratedImage, Usage
from imagegate.contract.rules import ModelSpec, parse_size
from imagegate.errors import ImagegateError, InvalidRequestError, UpstreamError
from imagegate.imaging.probe import sniff_format
from imagegate.providers.http import ErrorFields, invalid_response
from imagegate.providers.inputs_map import nearest_ratio, ratio_value
from imagegate.providers.openai.fastjson import loads_images

log = logging.getLogger("imagegate.providers.google")

_RATIO = re.compile(r"^[1-9][0-9]{0,2}:[1-9][0-9]{0,2}$")
# Spec fields the dialect sends itself or the gateway implements (the others: 400).
_OWN = frozenset({"model", "prompt", "n", "size", "stream"})
# Finish and block reasons that mean "refused by a policy": the client's 400.
POLICY_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "NO_IMAGE",
        "MODEL_ARMOR",
        "JAILBREAK",
    }
)
# Fields only Vertex AI takes (the Gemini API refuses them): named in the
# Gemini API's config errors.
VERTEX_ONLY = frozenset({"add_watermark", "negative_prompt", "enhance_prompt", "seed", "output_mime_type"})
# The longest Retry-After a RetryInfo becomes (Google asks for seconds to a minute).
MAX_RETRY_SECONDS = 3600


class WireSpec(BaseModel):
    """A model's ``wire`` facts in the catalog (checked when a route names it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["generateContent", "predict"]
    aspect_ratios: tuple[str, ...] = Field(min_length=1)
    # imageSize values the model takes -> the side of a square of the same
    # area (Google's "1K" images are ~1024x1024 pixels at every ratio).
    image_sizes: dict[str, int] = {}
    # Without image_sizes: the side of the square of the model's one size.
    native_side: int = Field(1024, ge=64, le=16384)
    # Served on Vertex AI only (the Gemini API has no such model).
    vertex_only: bool = False

    @field_validator("aspect_ratios")
    @classmethod
    def _ratios(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [r for r in value if not _RATIO.match(r)]
        if bad:
            raise ValueError(f"aspect ratios are W:H, e.g. 16:9 (not {bad[0]!r})")
        return value

    @field_validator("image_sizes")
    @classmethod
    def _sizes(cls, value: dict[str, int]) -> dict[str, int]:
        if any(not 64 <= side <= 16384 for side in value.values()):
            raise ValueError("image_sizes maps a name (1K) to the side of a square of its area, 64..16384")
        return value


def wire_of(spec: ModelSpec) -> WireSpec:
    """``spec``'s wire facts (checked at start, so valid here)."""
    return WireSpec.model_validate(dict(spec.wire))


# -- requests ---------------------------------------------------------------------


def _unsupported(name: str, request: ImageRequest, why: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"'{name}' is not supported with model '{request.model}': {why}.", param=name, code="unsupported_parameter"
    )


def check_sent(request: ImageRequest, fields: Mapping[str, str]) -> None:
    """Every field the client sent is one this dialect sends (or the
    gateway implements), else a 400 naming it."""
    shape = {"aspect_ratio", "image_size"}
    for name in request.sent():
        if name in _OWN or name in request.spec.gateway_fields or name in fields or name in shape:
            continue
        if name == "user":
            raise _unsupported(name, request, "Google's API has no end-user field")
        raise _unsupported(name, request, "Google's API has no such field for this model")
    if request.mask is not None:  # the catalog says masks: false; an entry that forgets it sends none
        raise _unsupported("mask", request, "Google's image models take no mask (describe the edit in the prompt)")


def shape(request: ImageRequest, wire: WireSpec) -> tuple[str | None, str | None]:
    """The ``aspectRatio`` and image size to send: the client's
    ``aspect_ratio``/``image_size``, or from ``size`` the nearest ratio and
    the smallest size whose image covers it (the gateway resizes to the exact
    size); ``auto``/none: neither (the model's default)."""
    ratio, size = request.extra.get("aspect_ratio"), request.extra.get("image_size")
    dims = parse_size(request.params.size) if request.params.size else None
    if dims is not None:
        for name, value in (("aspect_ratio", ratio), ("image_size", size)):
            if value is not None:
                raise InvalidRequestError(
                    f"'size' and '{name}' both set the image's shape for model '{request.model}': send either "
                    f"'size' (converted to the nearest aspect ratio and image size Google takes) or "
                    "'aspect_ratio'/'image_size', not both.",
                    param=name,
                    code="conflicting_parameters",
                )
        ratio = nearest_ratio(dims[0], dims[1], wire.aspect_ratios)
        size = covering_size(dims, ratio, wire)
    if ratio is not None and ratio not in wire.aspect_ratios:
        raise _bad_value(request, "aspect_ratio", ratio, wire.aspect_ratios)
    if size is not None and size not in wire.image_sizes:
        raise _bad_value(request, "image_size", size, tuple(wire.image_sizes))
    return (str(ratio) if ratio is not None else None), (str(size) if size is not None else None)


def _bad_value(request: ImageRequest, name: str, value: object, allowed: Sequence[str]) -> InvalidRequestError:
    takes = ", ".join(allowed) or "none"
    return InvalidRequestError(
        f"Invalid value: {value!r} for '{name}' with model '{request.model}': it takes {takes}.",
        param=name,
        code="invalid_value",
    )


def covering_size(dims: tuple[int, int], ratio: str, wire: WireSpec) -> str | None:
    """The smallest of the model's image sizes whose image at ``ratio``
    covers ``dims`` (else the largest); None for a model without sizes."""
    if not wire.image_sizes:
        return None
    stretch = math.sqrt(ratio_value(ratio))
    ordered = sorted(wire.image_sizes.items(), key=lambda item: item[1])
    for name, side in ordered:
        if side * stretch >= dims[0] * 0.99 and side / stretch >= dims[1] * 0.99:
            return name
    return ordered[-1][0]


def content_body(request: ImageRequest, wire: WireSpec, fields: Mapping[str, str]) -> bytes:
    """A ``generateContent`` body: the prompt, then each input image inline,
    in order; one image asked (``responseModalities: ["IMAGE"]``), capped at
    the catalog's ``max_output_tokens``."""
    check_sent(request, fields)
    parts: list[dict[str, Any]] = [{"text": request.prompt}]
    for image in request.images:
        parts.append({"inlineData": {"mimeType": image.info.mime_type, "data": image.b64()}})
    ratio, size = shape(request, wire)
    image_config: dict[str, Any] = {}
    if ratio is not None:
        image_config["aspectRatio"] = ratio
    if size is not None:
        image_config["imageSize"] = size
    for name, target in fields.items():
        if name in request.extra:
            image_config[target] = request.extra[name]
    config: dict[str, Any] = {"responseModalities": ["IMAGE"]}
    if image_config:
        config["imageConfig"] = image_config
    if request.spec.max_output_tokens is not None:
        config["maxOutputTokens"] = request.spec.max_output_tokens
    return orjson.dumps({"contents": [{"role": "user", "parts": parts}], "generationConfig": config})


def predict_body(request: ImageRequest, wire: WireSpec, fields: Mapping[str, str]) -> bytes:
    """A ``predict`` body (Imagen): ``sampleCount`` is always ``n`` (Google's
    default is 4), and the filter's reasons are asked for."""
    check_sent(request, fields)
    ratio, size = shape(request, wire)
    parameters: dict[str, Any] = {"sampleCount": request.n, "includeRaiReason": True}
    if ratio is not None:
        parameters["aspectRatio"] = ratio
    if size is not None:
        parameters["sampleImageSize"] = size
    for name, target in fields.items():
        if name in request.extra:
            parameters[target] = request.extra[name]
    return orjson.dumps({"instances": [{"prompt": request.prompt}], "parameters": parameters})


# -- answers ----------------------------------------------------------------------


def _get(raw: Mapping[str, Any], camel: str) -> Any:
    """``raw[camel]``, or its snake_case spelling (Google's docs show both)."""
    if camel in raw:
        return raw[camel]
    return raw.get(re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower())


# Where an answer's base64 images sit: Gemini's inlineData.data, Imagen's bytesBase64Encoded.
IMAGE_KEYS = ("data", "bytesBase64Encoded", "bytes_base64_encoded")


def parse_json(provider: str, body: bytes) -> dict[str, Any]:
    try:
        payload = loads_images(body, IMAGE_KEYS)  # the megabytes of base64 cut out, not scanned twice
    except orjson.JSONDecodeError:
        raise invalid_response(provider, "the answer is not JSON") from None
    if not isinstance(payload, dict):
        raise invalid_response(provider, "the answer is not a JSON object")
    return payload


def decode(provider: str, data: Any, revised_prompt: str | None = None) -> GeneratedImage:
    """An inline image: base64 checked whole, format sniffed (PNG, JPEG, WebP)."""
    if not isinstance(data, str) or not data:
        raise invalid_response(provider, "an image part has no data")
    try:
        raw = pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_response(provider, "an image's data is not valid base64") from None
    fmt = sniff_format(raw[:64])
    if fmt is None:
        raise invalid_response(provider, "an image is not PNG, JPEG or WebP")
    return GeneratedImage(raw, fmt, b64=data, revised_prompt=revised_prompt)


def refusal(provider: str, reason: str, message: str | None, where: str) -> ImagegateError:
    text = f": {message}" if message else ""
    if reason in POLICY_REASONS or where == "blockReason":
        return InvalidRequestError(
            f"The upstream '{provider}' refused to make the image ({where} {reason}){text}.",
            code="content_policy_violation",
        )
    if reason == "LANGUAGE":
        return InvalidRequestError(
            f"The upstream '{provider}' does not take the prompt's language ({where} {reason}){text}.",
            param="prompt",
            code="unsupported_language",
        )
    return UpstreamError(
        f"The upstream '{provider}' answered without an image ({where} {reason}){text}.", code="upstream_no_image"
    )


@dataclass(frozen=True, slots=True)
class Made:
    """One ``generateContent`` call's image and usage."""

    image: GeneratedImage
    usage: Usage | None


def content_answer(provider: str, model: str, payload: dict[str, Any]) -> Made:
    """The image of a ``generateContent`` answer: the last non-thought image
    of the first candidate (Gemini 3 may send interim images; the last is
    the final one), its non-thought text as ``revised_prompt``. No image: a
    refusal (``promptFeedback.blockReason``, a policy ``finishReason``) is a
    400, anything else a 502."""
    candidates = _get(payload, "candidates")
    feedback = _get(payload, "promptFeedback")
    feedback = feedback if isinstance(feedback, dict) else {}
    if not isinstance(candidates, list) or not candidates:
        reason = _get(feedback, "blockReason")
        if isinstance(reason, str) and reason:
            message = _get(feedback, "blockReasonMessage")
            raise refusal(provider, reason, message if isinstance(message, str) else None, "blockReason")
        raise invalid_response(provider, "the answer has no candidates")
    candidate = candidates[0]
    if not isinstance(candidate, dict):
        raise invalid_response(provider, "a candidate is not an object")
    content = _get(candidate, "content")
    parts = _get(content, "parts") if isinstance(content, dict) else None
    images: list[Any] = []
    texts: list[str] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict) or part.get("thought") is True:
            continue  # interim thoughts (text or image) are not results
        blob = _get(part, "inlineData")
        if isinstance(blob, dict):
            images.append(blob)
        elif isinstance(part.get("text"), str) and part["text"].strip():
            texts.append(part["text"].strip())
    if not images:
        reason = _get(candidate, "finishReason")
        message = _get(candidate, "finishMessage")
        raise refusal(
            provider, reason if isinstance(reason, str) else "none", message if isinstance(message, str) else None, "finishReason"
        )
    if len(images) > 1:
        log.info("upstream %s answered %d images in one %s call: the last one is returned", provider, len(images), model)
    blob = images[-1]
    mime = _get(blob, "mimeType")
    if mime is not None and (not isinstance(mime, str) or not mime.startswith("image/")):
        raise invalid_response(provider, f"an image part has MIME type {str(mime)[:40]!r}")
    image = decode(provider, _get(blob, "data"), "\n".join(texts) or None)
    return Made(image, usage(provider, _get(payload, "usageMetadata")))


@dataclass(frozen=True, slots=True)
class Predicted:
    """An Imagen answer: the images made and the reasons of those filtered."""

    images: list[GeneratedImage]
    filtered: list[str]


def predict_answer(provider: str, payload: dict[str, Any]) -> Predicted:
    """``predictions[]``: ``bytesBase64Encoded`` images, ``raiFilteredReason``
    for each one the filter removed. None made: a 400 ``content_policy_violation``
    with the reasons (Imagen answers ``{}`` when it filtered every image)."""
    predictions = payload.get("predictions")
    if predictions is not None and not isinstance(predictions, list):
        raise invalid_response(provider, "'predictions' is not a list")
    images, filtered = [], []
    for item in predictions or []:
        if not isinstance(item, dict):
            raise invalid_response(provider, "a prediction is not an object")
        if item.get("bytesBase64Encoded") is not None:
            prompt = item.get("prompt")
            images.append(decode(provider, item["bytesBase64Encoded"], prompt if isinstance(prompt, str) else None))
        else:
            reason = item.get("raiFilteredReason")
            filtered.append(reason if isinstance(reason, str) and reason else "no reason given")
    if not images:
        why = "; ".join(filtered) if filtered else "every image was filtered (no reason given)"
        raise InvalidRequestError(f"The upstream '{provider}' refused to make the image: {why}.", code="content_policy_violation")
    return Predicted(images, filtered)


def _count(provider: str, raw: Mapping[str, Any], key: str) -> int:
    value = _get(raw, key)
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_response(provider, f"its usageMetadata.{key} is not an integer")
    return value


def _modalities(provider: str, raw: Mapping[str, Any], key: str) -> dict[str, int]:
    details = _get(raw, key)
    if details is None:
        return {}
    if not isinstance(details, list) or not all(isinstance(d, dict) for d in details):
        raise invalid_response(provider, f"its usageMetadata.{key} is not a list of modality counts")
    out: dict[str, int] = {}
    for item in details:
        modality = str(item.get("modality") or "MODALITY_UNSPECIFIED")
        out[modality] = out.get(modality, 0) + _count(provider, item, "tokenCount")
    return out


def usage(provider: str, raw: Any) -> Usage | None:
    """``usageMetadata`` as imagegate's usage (rates in the module's doc).
    Counts that are not integers are a 502; whether they are plausible
    (non-negative, details within totals) the gateway checks before charging."""
    if not isinstance(raw, dict):
        return None
    prompt = _count(provider, raw, "promptTokenCount")
    candidates = _count(provider, raw, "candidatesTokenCount")
    thoughts = _count(provider, raw, "thoughtsTokenCount")
    inputs = _modalities(provider, raw, "promptTokensDetails")
    outputs = _modalities(provider, raw, "candidatesTokensDetails")
    output = candidates + thoughts
    image_out = outputs.get("IMAGE")
    if outputs and image_out is None:
        image_out = 0
    total = _get(raw, "totalTokenCount")
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        total_tokens=_count(provider, raw, "totalTokenCount") if total is not None else prompt + output,
        input_text_tokens=sum(v for k, v in inputs.items() if k != "IMAGE"),
        input_image_tokens=inputs.get("IMAGE", 0),
        output_image_tokens=image_out,
        output_text_tokens=None if image_out is None else output - image_out,
        input_cached_tokens=_count(provider, raw, "cachedContentTokenCount"),
    )


def add_usage(usages: Sequence[Usage | None]) -> Usage | None:
    """The usage of several calls (None when any call reported none)."""
    if not usages or any(u is None for u in usages):
        return None
    known = [u for u in usages if u is not None]

    def total(attr: str) -> int | None:
        values = [getattr(u, attr) for u in known]
        return None if any(v is None for v in values) else sum(values)

    return Usage(
        input_tokens=sum(u.input_tokens for u in known),
        output_tokens=sum(u.output_tokens for u in known),
        total_tokens=sum(u.total_tokens for u in known),
        input_text_tokens=sum(u.input_text_tokens for u in known),
        input_image_tokens=sum(u.input_image_tokens for u in known),
        output_image_tokens=total("output_image_tokens"),
        output_text_tokens=total("output_text_tokens"),
        input_cached_tokens=sum(u.input_cached_tokens for u in known),
    )


# -- error bodies -----------------------------------------------------------------


def error_object(body: bytes) -> dict[str, Any] | None:
    """Google's ``{"error": {code, message, status, details}}``, else None."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(payload, list) and len(payload) == 1:  # some Google front ends wrap it in a list
        payload = payload[0]
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("message"), str):
        return None
    return err


def error_fields(body: bytes) -> ErrorFields | None:
    err = error_object(body)
    if err is None:
        return None
    status = err.get("status")
    return ErrorFields(err["message"], code=status.lower() if isinstance(status, str) and status else None)


def error_reason(body: bytes) -> str | None:
    """The ``reason`` of a ``google.rpc.ErrorInfo`` detail (``API_KEY_INVALID``)."""
    err = error_object(body)
    details = err.get("details") if err else None
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.ErrorInfo"):
            reason = item.get("reason")
            return reason if isinstance(reason, str) else None
    return None


_DELAY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)s$")


def retry_delay(body: bytes) -> int | None:
    """Whole seconds from a ``google.rpc.RetryInfo`` detail's ``retryDelay``
    (``"12s"``, ``"0.5s"``; rounded up, at least 1, at most an hour)."""
    err = error_object(body)
    details = err.get("details") if err else None
    for item in details if isinstance(details, list) else []:
        if not isinstance(item, dict) or not str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            continue
        delay = item.get("retryDelay")
        seconds: float | None = None
        if isinstance(delay, str) and (match := _DELAY.match(delay.strip())):
            seconds = float(match[1])
        elif isinstance(delay, dict):  # the proto form {"seconds": 12, "nanos": 5e8}
            whole, nanos = delay.get("seconds", 0), delay.get("nanos", 0)
            if isinstance(whole, int | str) and isinstance(nanos, int) and str(whole).isdigit():
                seconds = int(whole) + nanos / 1e9
        if seconds is not None:
            return min(MAX_RETRY_SECONDS, max(1, math.ceil(seconds)))
    return None
