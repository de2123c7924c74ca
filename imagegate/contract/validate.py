"""Turn what a client sent into a typed request, or a 400 naming the field.

The model is resolved first (:func:`resolve_model`: a model that is not
served is a 404 before anything else is judged, so fixing one error never
only uncovers the next). Then three steps, cheapest first, so a bad request
costs as little as possible:

1. :func:`parse_fields` - known field names, JSON types, enums, ranges:
   the spec's schema, and the model's own fields (``extra_fields`` in its
   catalog entry). Any other name is ``unknown_parameter``, unless the
   entry says ``unknown_fields: forward``: then it goes upstream untouched.
2. :func:`check_rules` - the model's rules from the catalog (spec fields it
   takes, sizes, ``n``, prompt length, format combinations).
3. :func:`~imagegate.contract.inputs.load_inputs` - input images sniffed from
   their bytes and checked against the model's input rules (off the event loop).

:func:`retarget` applies the same checks (``check_rules``, the extra fields,
``check_inputs``) to a request bound for a fallback model.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from imagegate.contract.catalog import COMMON_FIELDS, GENERATIONS, SPEC_OPTIONAL_FIELDS, ModelSpec
from imagegate.contract.fields import NESTED, extra_fields_model
from imagegate.contract.inputs import check_inputs, quote_list
from imagegate.contract.requests import ImageRequest, SpecFields
from imagegate.errors import InvalidRequestError, NotFoundError

F = TypeVar("F", bound=SpecFields)

_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "str": "a string",
    "list": "an array",
    "model": "an object",
    "dict": "an object",
}
_JSON_TYPE_OF = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array", dict: "an object"}


def _param(loc: Sequence[int | str]) -> str | None:
    """``("images", 0, "image_url")`` -> ``images[0].image_url``."""
    if not loc:
        return None
    out = str(loc[0])
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _value_at(raw: Any, loc: Sequence[int | str]) -> Any:
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def _pydantic_to_error(exc: ValidationError, raw: Mapping[str, Any]) -> InvalidRequestError:
    err = exc.errors(include_url=False)[0]
    param = _param(err["loc"])
    kind = err["type"]
    value = _value_at(raw, err["loc"])
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind == "extra_forbidden":
        return InvalidRequestError(f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")
    if kind == "too_short" and (ctx.get("min_length") or 0) <= 1:
        return InvalidRequestError(f"Invalid '{param}': expected a non-empty array.", param=param, code="invalid_type")
    if kind in ("too_short", "too_long"):
        below = kind == "too_short"
        limit = ctx.get("min_length" if below else "max_length")
        return InvalidRequestError(
            f"Invalid '{param}': expected {'at least' if below else 'at most'} {limit} items, got {ctx.get('actual_length')}.",
            param=param,
            code="array_below_min_length" if below else "array_above_max_length",
        )
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


def parse_fields(schema: type[F], raw: Mapping[str, Any], spec: ModelSpec, *, from_form: bool) -> tuple[F, dict[str, object]]:
    """Check names and types: the spec's fields (``schema``) and the model's
    own (``spec.extra_fields``). Returns the spec fields and the extra values.
    ``from_form``: values are multipart strings and are converted (``"2"`` ->
    2, ``"true"`` -> True); JSON values must already have the right type."""
    forwarded = {}
    for name in raw:
        if name not in schema.model_fields and name not in spec.extra_fields:
            if not _forwardable(spec, name):
                raise InvalidRequestError(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
            if raw[name] is not None:
                forwarded[name] = raw[name]
    # A name the model's entry declares is the entry's field, even where the
    # spec has one of that name (Recraft's style is not dall-e-3's).
    data = {k: v for k, v in raw.items() if v is not None and k in schema.model_fields and k not in spec.extra_fields}
    extra = {k: v for k, v in raw.items() if v is not None and k in spec.extra_fields}
    if from_form:
        extra = _form_json(spec, extra)
    try:
        fields = schema.model_validate(data, strict=not from_form)
        return fields, {**_validate_extra(spec, extra, strict=not from_form), **forwarded}
    except ValidationError as exc:
        raise _pydantic_to_error(exc, raw) from exc


def _form_json(spec: ModelSpec, values: dict[str, Any]) -> dict[str, Any]:
    """A form's text for the model's object and array fields, read as JSON."""
    out = dict(values)
    for name, value in values.items():
        if spec.extra_fields[name].type in NESTED and isinstance(value, str):
            try:
                out[name] = orjson.loads(value)
            except orjson.JSONDecodeError:
                kind = "an object" if spec.extra_fields[name].type == "object" else "an array"
                raise InvalidRequestError(
                    f"Invalid '{name}': expected {kind} as JSON text in the form field.", param=name, code="invalid_type"
                ) from None
    return out


_RESERVED = frozenset(name.lower() for name in SPEC_OPTIONAL_FIELDS | COMMON_FIELDS)


def _forwardable(spec: ModelSpec, name: str) -> bool:
    """A field nobody declared that the model's entry lets through untouched:
    never a spec field sent to the wrong endpoint (the client's error), nor
    a spec or declared field's name in another case ("Model", "N"), which an
    upstream matching JSON keys case-insensitively (Go's encoding/json) would
    take for the gateway's own."""
    if spec.unknown_fields != "forward":
        return False
    lowered = name.lower()
    return lowered not in _RESERVED and lowered not in {field.lower() for field in spec.extra_fields}


def _validate_extra(spec: ModelSpec, values: Mapping[str, object], *, strict: bool) -> dict[str, object]:
    if not values:
        return {}
    model: type[BaseModel] = extra_fields_model(spec.extra_fields)
    return model.model_validate(values, strict=strict).model_dump(exclude_unset=True)


def check_extra(name: str, spec: ModelSpec, values: Mapping[str, object]) -> dict[str, object]:
    """Already-typed extra values checked against model ``name``'s declarations."""
    forwarded = {}
    for field, value in values.items():
        if field not in spec.extra_fields:
            if not _forwardable(spec, field):
                raise InvalidRequestError(
                    f"Unknown parameter: '{field}' (model '{name}' does not take it).", param=field, code="unknown_parameter"
                )
            forwarded[field] = value
    declared = {k: v for k, v in values.items() if k not in forwarded}
    try:
        return {**_validate_extra(spec, declared, strict=True), **forwarded}
    except ValidationError as exc:
        raise _pydantic_to_error(exc, values) from exc


class ModelDirectory:
    """The public model names this server serves, each with its catalog rules."""

    # The spec's defaults when a request names no model.
    _SPEC_DEFAULTS = {"generations": "dall-e-2", "edits": "gpt-image-1.5", "variations": "dall-e-2"}

    def __init__(self, rules: Mapping[str, ModelSpec], default_model: str | None = None) -> None:
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


def check_rules(endpoint: str, fields: SpecFields, name: str, spec: ModelSpec) -> None:
    """Apply the catalog's per-model rules to already-typed spec fields."""
    sent = {k for k in fields.model_fields_set if getattr(fields, k) is not None}
    # Spec fields the model takes as the spec defines them (not those its entry redefines).
    for field in sorted(sent & SPEC_OPTIONAL_FIELDS - (spec.accepts - spec.extra_fields.keys())):
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
    output_format = getattr(fields, "output_format", None)
    if output_format is not None and output_format not in spec.output_formats:
        raise InvalidRequestError(
            f"Invalid value: '{output_format}'. Supported values for 'output_format' with model '{name}' are: "
            f"{quote_list(spec.output_formats)}.{_did_you_mean(output_format, quote_list(spec.output_formats))}",
            param="output_format",
            code="invalid_value",
        )
    quality = getattr(fields, "quality", None)
    if quality is not None and quality not in spec.qualities:
        raise InvalidRequestError(
            f"Invalid value: '{quality}'. Supported values for 'quality' with model '{name}' are: {quote_list(spec.qualities)}.",
            param="quality",
        )
    if getattr(fields, "background", None) == "transparent" and not spec.transparency:
        raise InvalidRequestError(
            f"Model '{name}' cannot make transparent backgrounds; use background 'opaque' or 'auto'.",
            param="background",
            code="unsupported_background",
        )
    _check_combinations(fields)


def _check_combinations(fields: SpecFields) -> None:
    fmt = getattr(fields, "output_format", None) or "png"
    if getattr(fields, "background", None) == "transparent" and fmt not in ("png", "webp"):
        raise InvalidRequestError(f"Transparent backgrounds need output_format 'png' or 'webp', not '{fmt}'.", param="background")
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


def retarget(request: ImageRequest, model: str, spec: ModelSpec) -> ImageRequest | None:
    """The request as fallback ``model`` would receive it, or None when that
    model cannot take it as sent (it is then skipped, never given a changed
    request). The checks are first validation's own: the catalog rules, the
    model's extra fields and ``check_inputs``."""
    if request.endpoint not in spec.endpoints:
        return None
    try:
        check_rules(request.endpoint, request.params, model, spec)
        extra = check_extra(model, spec, request.extra)
        if request.endpoint != GENERATIONS:
            check_inputs(request.endpoint, model, spec, request.images, request.mask)
    except InvalidRequestError:
        return None
    return ImageRequest(request.endpoint, model, spec, request.params, request.images, request.mask, extra)
