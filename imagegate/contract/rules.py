"""The rules of one model, as types: what the catalog's entries become.

The OpenAPI spec gives field names and types; a :class:`ModelSpec` holds the
rules it states only in prose (sizes, ``n``, prompt lengths, which fields a
model takes, edit-input limits) plus the fields outside the spec a provider
takes (``extra_fields``, see ``contract.fields``). The entries themselves are
data (``imagegate/catalog/*.yaml``, read by ``contract.catalog_data``);
validation (``contract.validate``) reads only them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from imagegate.contract.fields import FieldSpec

MB = 1024 * 1024

GENERATIONS: Final = "generations"
EDITS: Final = "edits"
VARIATIONS: Final = "variations"

# Optional spec fields that only some models take (a catalog entry's
# `accepts` names them). Fields every model takes (prompt, model, n, size,
# user, response_format) are not listed.
SpecField = Literal[
    "quality",
    "background",
    "output_format",
    "output_compression",
    "moderation",
    "stream",
    "partial_images",
    "input_fidelity",
    "style",
]
SPEC_OPTIONAL_FIELDS: frozenset[str] = frozenset(get_args(SpecField))
GPT_IMAGE_FIELDS = SPEC_OPTIONAL_FIELDS - {"style"}
COMMON_FIELDS = frozenset({"model", "prompt", "n", "size", "user", "response_format", "image", "images", "mask"})

_SIZE_RE = re.compile(r"([1-9][0-9]{1,4})x([1-9][0-9]{1,4})")


def parse_size(size: str) -> tuple[int, int] | None:
    """``"1024x768"`` -> ``(1024, 768)``; None for anything else (including ``auto``)."""
    m = _SIZE_RE.fullmatch(size)  # not match + "$": "64x64\n" is not a size
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True, slots=True)
class FreeSizeRule:
    """Arbitrary ``WIDTHxHEIGHT`` sizes within limits (gpt-image-2 style)."""

    multiple_of: int = 16
    max_edge: int = 3840
    max_pixels: int = 3840 * 2160
    min_pixels: int = 0
    max_aspect: float = 3.0

    def check(self, width: int, height: int) -> str | None:
        if width % self.multiple_of or height % self.multiple_of:
            return f"width and height must both be multiples of {self.multiple_of}"
        if max(width, height) > self.max_edge:
            return f"the longest edge may be at most {self.max_edge} pixels"
        if width * height > self.max_pixels:
            return f"at most {self.max_pixels} pixels are supported"
        if width * height < self.min_pixels:
            return f"at least {self.min_pixels} pixels are required"
        if max(width, height) / min(width, height) > self.max_aspect:
            return f"the aspect ratio must be between 1:{self.max_aspect:g} and {self.max_aspect:g}:1"
        return None


@dataclass(frozen=True, slots=True)
class InputRule:
    """What an endpoint accepts as input images."""

    formats: frozenset[str]
    max_images: int
    max_bytes: int
    square: bool = False


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    endpoints: frozenset[str]
    sizes: tuple[str, ...]  # fixed sizes accepted (may include "auto")
    default_size: str
    qualities: tuple[str, ...]
    default_quality: str
    prompt_max: int
    n_max: int = 10
    default_response_format: str = "b64_json"
    # The optional fields the model takes: the spec fields (SPEC_OPTIONAL_FIELDS)
    # listed here, plus every name in extra_fields (added on creation).
    accepts: frozenset[str] = frozenset()
    free_size: FreeSizeRule | None = None
    edit_input: InputRule | None = None
    variation_input: InputRule | None = None
    mask_max_bytes: int = 4 * MB
    # ImagesResponse carries size/quality/background/output_format for these.
    reports_output_meta: bool = False
    # Fields the gateway itself implements for this model and does not send
    # upstream (GPT image models take no response_format: the gateway hosts URLs).
    gateway_fields: frozenset[str] = frozenset()
    # background=transparent can be honoured (else a clear 400 naming 'background').
    transparency: bool = True
    # Edits take a mask (inpainting); else a clear 400 naming 'mask'.
    masks: bool = True
    # Fields outside the spec the model's provider takes, each with its type
    # and limits; any other field outside the spec is 400 unknown_parameter.
    extra_fields: Mapping[str, FieldSpec] = field(default_factory=dict, hash=False)
    # What output_format may be (the gateway converts png/jpeg/webp itself;
    # another format, e.g. svg, only passes through from an upstream that made it).
    output_formats: tuple[str, ...] = ("png", "jpeg", "webp")
    # A field outside the spec that extra_fields does not declare: "reject"
    # (400 unknown_parameter) or "forward" (sent upstream untouched).
    unknown_fields: Literal["forward", "reject"] = "reject"
    # The date the vendor shut the model down (None: in service).
    retired: date | None = None
    # How a route came by these rules, which decides the names its price is
    # looked up by (accounting.prices.price_names): the route's rules: entry,
    # the public or upstream name's own entry, or the provider's fallback
    # rules (never a price: those entries describe no one model).
    rules_from: Literal["rules", "name", "provider"] = "name"
    # The most output tokens one upstream call may produce, which the provider
    # sends as its upstream's cap (catalog key max_output_tokens); None: no cap.
    max_output_tokens: int | None = None
    # Provider-specific facts about calling the model (catalog key wire);
    # the provider checks them (Provider.check_route).
    wire: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # An entry may give an optional spec field it does not take its
        # provider's own meaning (Recraft's style is a style name, not
        # dall-e-3's vivid|natural), and the declaration then decides; never
        # a field every model takes. (accepts holds the extra names after the
        # first __post_init__, so a dataclasses.replace copy passes too.)
        shadowed = set(self.extra_fields) & COMMON_FIELDS
        if shadowed:
            raise ValueError(f"{self.name}: extra_fields may not redefine spec fields ({', '.join(sorted(shadowed))})")
        object.__setattr__(self, "extra_fields", MappingProxyType(dict(self.extra_fields)))
        object.__setattr__(self, "wire", MappingProxyType(dict(self.wire)))
        # Names outside the spec come from extra_fields alone (so a copy made
        # with dataclasses.replace(spec, extra_fields=...) takes exactly those).
        object.__setattr__(self, "accepts", (self.accepts & SPEC_OPTIONAL_FIELDS) | frozenset(self.extra_fields))

    def allows_size(self, size: str) -> str | None:
        """None if ``size`` is fine for this model, else the reason."""
        if size in self.sizes:
            return None
        dims = parse_size(size)
        if self.free_size is not None and dims is not None:
            return self.free_size.check(*dims)
        listed = ", ".join(f"'{s}'" for s in self.sizes)
        extra = " or WIDTHxHEIGHT within the model's limits" if self.free_size else ""
        return f"supported values are: {listed}{extra}"
