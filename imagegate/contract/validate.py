"""Turn what a client sent into a typed request, or a 400 naming the field.

The model is resolved first (:func:`resolve_model`: a model that is not
served is a 404 before anything else is judged, so fixing one error never
only uncovers the next). Then three steps, cheapest first, so a bad request
costs as little as possible:

1. :func:`parse_fields` - known field names, JSON types, enums, ranges
   (the spec's schema). Unknown names are ``unknown_parameter``.
2. :func:`check_rules` - the model's rules from the catalog (fields it
   takes, sizes, ``n``, prompt length, format combinations).
3. :func:`load_inputs` - input images sniffed from their bytes and checked
   against the model's input rules (off the event loop).
"""

from __future__ import annotations

import asyncio
import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from imagegate.contract.catalog import (
    EXTENSION_FIELDS,
    GPT_IMAGE_FIELDS,
    VARIATIONS,
    ModelSpec,
)
from imagegate.contract.requests import FIELDS_BY_ENDPOINT, ImageRequest, InputImage
from imagegate.errors import InvalidImageError, InvalidRequestError, NotFoundError
from imagegate.imaging.probe import ImageProbeError, probe

OPTIONAL_FIELDS = GPT_IMAGE_FIELDS | EXTENSION_FIELDS | {"style"}

_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "str": "a string",
}
_JSON_TYPE_OF = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array", dict: "an object"}


def _quote_list(values: Sequence[object]) -> str:
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _pydantic_to_error(exc: ValidationError, raw: Mapping[str, Any]) -> InvalidRequestError:
    err = exc.errors(include_url=False)[0]
    param = str(err["loc"][0]) if err["loc"] else None
    kind = err["type"]
    value = raw.get(param) if param else None
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        return InvalidRequestError(
            f"Invalid value: '{value}'. Supported values are: {expected}.{_did_you_mean(value, expected)}",
            param=param,
            code="invalid_value",
        )
    if kind in ("greater_than_equal", "greater_than"):
        return InvalidRequestError(
            f"Invalid '{param}': {value!r} is below the minimum value of {ctx.get('ge', ctx.get('gt'))}.",
            param=param,
            code="integer_below_min_value" if isinstance(value, int | str) else "number_below_min_value",
        )
    if kind in ("less_than_equal", "less_than"):
        return InvalidRequestError(
            f"Invalid '{param}': {value!r} is above the maximum value of {ctx.get('le', ctx.get('lt'))}.",
            param=param,
            code="integer_above_max_value" if isinstance(value, int | str) else "number_above_max_value",
        )
    if kind == "string_too_short":
        return InvalidRequestError(f"Invalid '{param}': empty string.", param=param, code="empty_string")
    if kind == "string_too_long":
        return InvalidRequestError(
            f"Invalid '{param}': string too long, the maximum length is {ctx.get('max_length')}.",
            param=param,
            code="string_above_max_length",
        )
    expected = next((name for key, name in _TYPE_NAMES.items() if kind.startswith(key)), "another type")
    got = _JSON_TYPE_OF.get(type(value), "another type")
    if isinstance(value, str) and kind.endswith("_parsing"):
        got = f"the string {value!r}"
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.", param=param, code="invalid_type"
    )


# Common near-misses that difflib alone would not pair (resellers' docs say "json").
_ALIASES = {"json": "b64_json", "base64": "b64_json", "b64": "b64_json", "jpg": "jpeg"}


def _did_you_mean(value: object, expected: str) -> str:
    """`` Did you mean 'b64_json'?`` for a near-miss of one of the allowed values, else ""."""
    if not isinstance(value, str):
        return ""
    allowed = re.findall(r"'([^']*)'", expected)
    alias = _ALIASES.get(value.strip().lower())
    guess = alias if alias in allowed else next(iter(difflib.get_close_matches(value.lower(), allowed, n=1)), None)
    return f" Did you mean '{guess}'?" if guess else ""


def resolve_model(directory: ModelDirectory, endpoint: str, raw: Mapping[str, Any]) -> tuple[str, ModelSpec]:
    """The served model a request names (or the default), before any other
    field is judged: 404 ``model_not_found`` comes first."""
    requested = raw.get("model")
    if requested is not None and not isinstance(requested, str):
        got = _JSON_TYPE_OF.get(type(requested), "another type")
        raise InvalidRequestError(
            f"Invalid type for 'model': expected a string, but got {got} instead.", param="model", code="invalid_type"
        )
    return directory.resolve(requested, endpoint)


def parse_fields(endpoint: str, raw: Mapping[str, Any], *, from_form: bool):
    """Check names and types of the non-image fields. ``from_form``: values
    are multipart strings and are converted (``"2"`` -> 2, ``"true"`` -> True);
    JSON values must already have the right type."""
    model = FIELDS_BY_ENDPOINT[endpoint]
    for name in raw:
        if name not in model.model_fields:
            raise InvalidRequestError(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    data = {k: v for k, v in raw.items() if v is not None}
    try:
        return model.model_validate(data, strict=not from_form)
    except ValidationError as exc:
        raise _pydantic_to_error(exc, data) from exc


class ModelDirectory:
    """The public model names this server serves, each with its catalog rules."""

    # The spec's defaults when a request names no model.
    _SPEC_DEFAULTS = {"generations": "dall-e-2", "edits": "gpt-image-1.5", "variations": "dall-e-2"}

    def __init__(self, rules: dict[str, ModelSpec], default_model: str | None = None) -> None:
        self._rules = dict(rules)
        self._default = default_model

    def names(self) -> list[str]:
        return list(self._rules)

    def rules(self, name: str) -> ModelSpec:
        return self._rules[name]

    def resolve(self, requested: str | None, endpoint: str) -> tuple[str, ModelSpec]:
        name = requested or self._default_for(endpoint)
        spec = self._rules.get(name)
        if spec is None:
            raise NotFoundError(
                f"The model '{name}' does not exist or is not served here. Available: {', '.join(self._rules) or 'none'}.",
                param="model",
                code="model_not_found",
            )
        if endpoint not in spec.endpoints:
            raise InvalidRequestError(
                f"The model '{name}' does not support image {endpoint}.", param="model", code="unsupported_model"
            )
        return name, spec

    def _default_for(self, endpoint: str) -> str:
        if self._default:
            return self._default
        if len(self._rules) == 1:
            return next(iter(self._rules))
        fallback = self._SPEC_DEFAULTS[endpoint]
        if fallback in self._rules:
            return fallback
        raise InvalidRequestError(
            "Missing required parameter: 'model' (this server has no default model).",
            param="model",
            code="missing_required_parameter",
        )


def check_rules(endpoint: str, fields, name: str, spec: ModelSpec) -> None:
    """Apply the catalog's per-model rules to already-typed fields."""
    sent = {k for k in fields.model_fields_set if getattr(fields, k) is not None}
    for field in sorted(sent & OPTIONAL_FIELDS - spec.accepts):
        if field in EXTENSION_FIELDS:
            raise InvalidRequestError(
                f"Unknown parameter: '{field}' (not an extension this model accepts).",
                param=field,
                code="unknown_parameter",
            )
        raise InvalidRequestError(
            f"Unsupported parameter: '{field}' is not supported with model '{name}'.",
            param=field,
            code="unsupported_parameter",
        )
    prompt = getattr(fields, "prompt", None)
    if prompt is not None and len(prompt) > spec.prompt_max:
        raise InvalidRequestError(
            f"Invalid 'prompt': string too long. Expected a string with maximum length {spec.prompt_max} "
            f"for model '{name}', but got a string with length {len(prompt)} instead.",
            param="prompt",
            code="string_above_max_length",
        )
    if fields.n is not None and fields.n > spec.n_max:
        raise InvalidRequestError(
            f"Invalid 'n': model '{name}' supports at most n={spec.n_max}.", param="n", code="integer_above_max_value"
        )
    if fields.size is not None and (why := spec.allows_size(fields.size)):
        raise InvalidRequestError(f"Invalid value: '{fields.size}' for 'size' with model '{name}': {why}.", param="size")
    quality = getattr(fields, "quality", None)
    if quality is not None and quality not in spec.qualities:
        raise InvalidRequestError(
            f"Invalid value: '{quality}'. Supported values for 'quality' with model '{name}' are: {_quote_list(spec.qualities)}.",
            param="quality",
        )
    if getattr(fields, "background", None) == "transparent" and not spec.transparency:
        raise InvalidRequestError(
            f"Model '{name}' cannot make transparent backgrounds; use background 'opaque' or 'auto'.",
            param="background",
            code="unsupported_background",
        )
    _check_combinations(fields)


def _check_combinations(fields) -> None:
    fmt = getattr(fields, "output_format", None) or "png"
    if getattr(fields, "background", None) == "transparent" and fmt not in ("png", "webp"):
        raise InvalidRequestError("Transparent backgrounds need output_format 'png' or 'webp', not 'jpeg'.", param="background")
    if getattr(fields, "output_compression", None) is not None and fmt not in ("jpeg", "webp"):
        raise InvalidRequestError(
            f"'output_compression' only applies to output_format 'jpeg' or 'webp', not '{fmt}'.",
            param="output_compression",
        )
    if getattr(fields, "stream", None) and fields.response_format == "url":
        raise InvalidRequestError(
            "Streamed images are always sent as b64_json; 'response_format' 'url' cannot be combined with stream=true.",
            param="response_format",
        )


def _probe_all(parts: Sequence[tuple[str, bytes]], max_pixels: int) -> list[InputImage]:
    out = []
    for field, data in parts:
        try:
            info = probe(data, max_pixels=max_pixels)
        except ImageProbeError as exc:
            raise InvalidImageError(f"Invalid image in '{field}': {exc}.", param=field, code=exc.code) from exc
        out.append(InputImage(data, info, field))
    return out


async def load_inputs(
    endpoint: str,
    name: str,
    spec: ModelSpec,
    images: Sequence[tuple[str, bytes]],
    mask: tuple[str, bytes] | None,
    *,
    max_pixels: int,
) -> tuple[tuple[InputImage, ...], InputImage | None]:
    """Check counts and sizes, then sniff and check every input image."""
    rule = spec.variation_input if endpoint == VARIATIONS else spec.edit_input
    param = "image"
    if rule is None:
        raise InvalidRequestError(f"The model '{name}' does not take input images.", param="model", code="unsupported_model")
    if not images:
        raise InvalidRequestError("Missing required parameter: 'image'.", param=param, code="missing_required_parameter")
    if len(images) > rule.max_images:
        raise InvalidRequestError(
            f"Too many images: model '{name}' takes at most {rule.max_images}, got {len(images)}.",
            param=param,
            code="too_many_images",
        )
    for field, data in images:
        if len(data) > rule.max_bytes:
            raise InvalidImageError(
                f"Image '{field}' is {len(data)} bytes; model '{name}' takes images under {rule.max_bytes // (1024 * 1024)} MB.",
                param=field,
                code="image_too_large",
            )
    if mask is not None and not spec.masks:
        raise InvalidRequestError(
            f"Model '{name}' does not take a mask (no inpainting); send the edit without one.",
            param="mask",
            code="unsupported_mask",
        )
    if mask is not None and len(mask[1]) > spec.mask_max_bytes:
        raise InvalidImageError(
            f"The mask is {len(mask[1])} bytes; model '{name}' takes masks under {spec.mask_max_bytes // (1024 * 1024)} MB.",
            param="mask",
            code="image_too_large",
        )
    parts = list(images) + ([mask] if mask is not None else [])
    probed = await asyncio.to_thread(_probe_all, parts, max_pixels)
    inputs = tuple(probed[: len(images)])
    for img in inputs:
        if img.info.format not in rule.formats:
            raise InvalidImageError(
                f"Invalid image in '{img.field}': the file is {img.info.format.upper()}; model '{name}' takes "
                f"{_quote_list(sorted(f.upper() for f in rule.formats))} files.",
                param=img.field,
                code="invalid_image_format",
            )
        if rule.square and img.info.width != img.info.height:
            raise InvalidImageError(
                f"Invalid image in '{img.field}': model '{name}' needs a square image, got {img.info.width}x{img.info.height}.",
                param=img.field,
                code="invalid_image_dimensions",
            )
    mask_image = probed[-1] if mask is not None else None
    if mask_image is not None:
        _check_mask(mask_image, inputs[0])
    return inputs, mask_image


def _check_mask(mask: InputImage, first: InputImage) -> None:
    if mask.info.format != "png":
        raise InvalidImageError(
            f"Invalid mask: it must be a PNG file, got {mask.info.format.upper()}.", param="mask", code="invalid_image_format"
        )
    if not mask.info.has_alpha:
        raise InvalidImageError(
            "Invalid mask: it must have an alpha channel (fully transparent pixels mark the area to edit).",
            param="mask",
            code="invalid_mask",
        )
    if (mask.info.width, mask.info.height) != (first.info.width, first.info.height):
        raise InvalidImageError(
            f"Invalid mask: it is {mask.info.width}x{mask.info.height} but the image is "
            f"{first.info.width}x{first.info.height}; they must have the same dimensions.",
            param="mask",
            code="invalid_image_dimensions",
        )


def retarget(request: ImageRequest, model: str, spec: ModelSpec) -> ImageRequest | None:
    """The request as fallback ``model`` would receive it, or None when that
    model cannot take it as sent (it is then skipped, never given a changed
    request)."""
    if request.endpoint not in spec.endpoints:
        return None
    try:
        check_rules(request.endpoint, request.params, model, spec)
    except InvalidRequestError:
        return None
    if request.mask is not None and not spec.masks:
        return None
    if request.images:
        rule = spec.variation_input if request.endpoint == VARIATIONS else spec.edit_input
        if rule is None or len(request.images) > rule.max_images:
            return None
        for image in request.images:
            if image.info.format not in rule.formats or image.info.nbytes > rule.max_bytes:
                return None
            if rule.square and image.info.width != image.info.height:
                return None
    return ImageRequest(request.endpoint, model, spec, request.params, request.images, request.mask)  # type: ignore[arg-type]
