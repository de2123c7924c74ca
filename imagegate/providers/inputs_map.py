"""A model's input built from an OpenAI request by a declarative mapping.

fal and Replicate run many models, each with its own input schema, so a
deployment names, per upstream model, which input field each OpenAI field
becomes (the provider option ``inputs:``). :class:`InputsMap` holds the fields
every such mapping has; :class:`InputBody` builds the input: each field once
(two client fields setting one input field are a 400), every field the client
sent mapped or a 400 naming it, never dropped, and which client field each
input field came from, to name it in the upstream's errors.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator

from imagegate.contract.requests import ImageRequest
from imagegate.contract.rules import parse_size
from imagegate.errors import InvalidRequestError

_RATIO = re.compile(r"^[1-9][0-9]*(\.[0-9]+)?:[1-9][0-9]*(\.[0-9]+)?$")
# Fields the gateway implements itself and never sends: it hosts URLs
# (response_format) and streams keep-alive progress (stream).
GATEWAY_OWN = frozenset({"model", "response_format", "stream"})


class InputsMap(BaseModel):
    """Which input field each OpenAI field becomes, for one model (None: the
    model has no such input, and a request that sends the field is a 400
    naming it; for ``n``, the request takes ``n`` jobs of one image each)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str | None = "prompt"
    n: str | None = None
    size: str | None = None  # how `size` is sent (each provider names its ways)
    aspect_ratios: tuple[str, ...]  # the ratios `size` is sent as, the nearest one
    output_format: str | None = None
    image: str | None = None  # an edit's one image, as a data: URI

    @field_validator("aspect_ratios")
    @classmethod
    def _ratios(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [r for r in value if not _RATIO.match(r)]
        if bad or not value:
            raise ValueError(f"aspect ratios are W:H, e.g. 16:9 (not {bad[0] if bad else 'none'})")
        return value


M = TypeVar("M", bound=InputsMap)


def inputs_for(model: str, tables: Sequence[Mapping[str, M]], default: M) -> M:
    """``model``'s mapping: in the first table that has it, its exact id,
    then the first shell pattern matching it; else ``default``."""
    for table in tables:
        if model in table:
            return table[model]
        for pattern, inputs in table.items():
            if fnmatch.fnmatchcase(model, pattern):
                return inputs
    return default


def ratio_value(name: str) -> float:
    width, _, height = name.partition(":")
    return float(width) / float(height)


def nearest_ratio(width: int, height: int, ratios: Sequence[str]) -> str:
    """The ratio of ``ratios`` nearest ``width:height`` on a log scale."""
    asked = width / height
    return min(ratios, key=lambda name: abs(math.log(asked / ratio_value(name))))


class InputBody:
    """The input being built for ``request`` on the upstream ``upstream``
    (its name in messages): ``fields``, and ``origin``, the client field each
    input field came from."""

    def __init__(self, request: ImageRequest, upstream: str) -> None:
        self.request, self.upstream = request, upstream
        self.fields: dict[str, Any] = {}
        self.origin: dict[str, str] = {}

    def put(self, field: str, value: Any, client: str) -> None:
        if field in self.fields:
            raise InvalidRequestError(
                f"'{client}' and '{self.origin[field]}' both set {self.upstream}'s '{field}' for model "
                f"'{self.request.model}': send one of them.",
                param=client,
                code="conflicting_parameters",
            )
        self.fields[field] = value
        self.origin[field] = client

    def unmapped(self, name: str, what: str) -> InvalidRequestError:
        return InvalidRequestError(
            f"Model '{self.request.model}' does not take '{name}' on {self.upstream}: {what}.",
            param=name,
            code="unsupported_parameter",
        )

    def put_sent(self, targets: Mapping[str, str | None], formats: Mapping[str, str]) -> None:
        """Each spec field the client sent (not ``size``, not the gateway's
        own) under its input field in ``targets``, ``output_format``'s value
        as ``formats`` names it; a field with none is a 400, but ``n``: a model
        without one makes ``n`` jobs of one image each."""
        request = self.request
        for name, value in request.params.model_dump(exclude_none=True, exclude_unset=True).items():
            if name in GATEWAY_OWN or name in request.spec.gateway_fields or name == "size":
                continue
            target = targets.get(name)
            if target is not None:
                self.put(target, formats.get(value, value) if name == "output_format" else value, name)
            elif name != "n":
                raise self.unmapped(name, "the deployment's input mapping has no input field for it")

    def put_default_format(self, field: str | None, formats: Mapping[str, str]) -> None:
        """The gateway answers png when no format is asked (OpenAI's default):
        ask the model for it (else the first it makes) rather than convert its
        own default, often lossy."""
        spec = self.request.spec
        if field is None or field in self.fields or field in self.request.extra:
            return
        if "output_format" in spec.accepts and "output_format" not in spec.gateway_fields:
            default = self.request.output_format  # not sent: the gateway's default for this model
            self.put(field, formats.get(default, default), "output_format")

    def asked_size(self, mapped: bool) -> tuple[int, int] | None:
        """The asked size, None for none or auto (the model's own default); a
        size the mapping cannot send (``mapped`` false) is a 400."""
        size = self.request.params.size
        dims = parse_size(size) if size else None
        if dims is not None and not mapped:
            raise self.unmapped("size", "the model's input has no size; send it without one")
        return dims

    def put_extra(self) -> None:
        """The catalog entry's extra fields, under their own names (the model's input names)."""
        for name, value in self.request.extra.items():
            self.put(name, value, name)

    def put_images(self, image: str | None, images: str | None = None) -> None:
        """An edit's images as ``data:`` URIs: all of them in ``images`` (a
        list), else the one image in ``image``."""
        request = self.request
        if not request.images:
            return
        uris = [item.data_uri() for item in request.images]
        if images is not None:
            self.put(images, uris, "image")
        elif image is None:
            raise self.unmapped("image", "the deployment's input mapping has no image field")
        elif len(uris) > 1:
            raise InvalidRequestError(
                f"Model '{request.model}' takes one input image on {self.upstream}, not {len(uris)}.",
                param="image",
                code="too_many_images",
            )
        else:
            self.put(image, uris[0], "image")


__all__ = ["GATEWAY_OWN", "InputBody", "InputsMap", "inputs_for", "nearest_ratio", "ratio_value"]
