"""The catalog's data: the schema of an entry, and how entries become rules.

Entries ship as YAML files in the package (``imagegate/catalog/*.yaml``, one
``models:`` mapping per file, one entry per model) and come from the user's
config (``catalog:``), in the same schema. An entry may ``extends:`` another
(shipped or from the config): it inherits every key it does not give
(``extra_fields`` and ``wire`` merge by name; ``abstract``, ``source`` and ``retired`` are
facts about one name and are never inherited). A config entry with the name
of a shipped one changes only the keys it gives. Every problem is a
:class:`ConfigError` naming the entry and key, at start and in
``imagegate check-config``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from imagegate.contract.fields import FieldSpec, FieldType
from imagegate.contract.rules import (
    MB,
    FreeSizeRule,
    InputRule,
    ModelSpec,
    SpecField,
)
from imagegate.errors import ConfigError

# A size as listed: auto, WIDTHxHEIGHT, or an upstream's own token (1K, 2K, 4K).
_SIZE_PATTERN = r"^(auto|[1-9][0-9]{1,4}x[1-9][0-9]{1,4}|[0-9A-Za-z:._-]{1,16})$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutputTokensFormula(_Strict):
    """Output image tokens from the pixel count (gpt-image-2):
    ``ceil(q * s * (area_offset + w*h) / area_divisor)`` with ``q`` the
    quality's factor and ``s = floor((2*q*short + long) / (2*long))``."""

    quality_factors: dict[str, int] = Field(min_length=1)
    area_offset: int = Field(ge=0)
    area_divisor: int = Field(gt=0)


class PerMegapixelConfig(_Strict):
    """A price by the megapixels (1024x1024 pixels each, every one begun
    counted whole) of each image: ``first`` for an output image's first
    megapixel, ``additional`` for each further one, ``input`` for each of
    an input image's (Black Forest Labs' FLUX.2)."""

    first: float = Field(ge=0)
    additional: float = Field(ge=0)
    input: float = Field(0, ge=0)


class PriceConfig(_Strict):
    """USD. Either ``per_image`` (one price, or ``{"QUALITY SIZE": price,
    default: price}``), ``per_megapixel`` (:class:`PerMegapixelConfig`) or
    token rates per million tokens (``image_output_per_1m`` required), with
    an optional estimate of the output tokens for answers without usage (a
    published table by quality and size, or a formula of the pixel count)."""

    per_image: float | dict[str, float] | None = None
    # With per_image: what each input image of an edit adds (an upstream that
    # bills its inputs, such as xAI).
    per_input_image: float | None = Field(None, ge=0)
    per_megapixel: PerMegapixelConfig | None = None
    text_input_per_1m: float | None = Field(None, ge=0)
    text_input_cached_per_1m: float | None = Field(None, ge=0)
    image_input_per_1m: float | None = Field(None, ge=0)
    image_input_cached_per_1m: float | None = Field(None, ge=0)
    image_output_per_1m: float | None = Field(None, ge=0)
    text_output_per_1m: float | None = Field(None, ge=0)
    output_tokens: dict[str, dict[str, int]] | None = None
    output_tokens_formula: OutputTokensFormula | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> PriceConfig:
        tokens = self.image_output_per_1m is not None
        if tokens + (self.per_image is not None) + (self.per_megapixel is not None) != 1:
            raise ValueError("give either per_image, per_megapixel or image_output_per_1m (with the other token rates)")
        prices = self.per_image.values() if isinstance(self.per_image, dict) else [self.per_image or 0]
        if any(p < 0 for p in prices):
            raise ValueError("prices cannot be negative")
        if self.per_input_image is not None and self.per_image is None:
            raise ValueError("per_input_image goes with per_image")
        if not tokens and (self.output_tokens or self.output_tokens_formula):
            raise ValueError("output_tokens and output_tokens_formula go with token rates, not per_image")
        if self.output_tokens is not None:
            if not self.output_tokens or any("1024x1024" not in table for table in self.output_tokens.values()):
                raise ValueError("every output_tokens table needs a 1024x1024 entry (other sizes are scaled from it)")
            if any(t < 0 for table in self.output_tokens.values() for t in table.values()):
                raise ValueError("output token counts cannot be negative")
        return self


class InputConfig(_Strict):
    formats: list[Literal["png", "jpeg", "webp"]] = Field(min_length=1)
    max_images: int = Field(ge=1, le=64)
    max_mb: float = Field(gt=0)
    square: bool = False


class FreeSizeConfig(_Strict):
    multiple_of: int = Field(16, ge=1)
    max_edge: int = Field(ge=1)
    max_pixels: int = Field(ge=1)
    min_pixels: int = Field(0, ge=0)
    max_aspect: float = Field(3.0, ge=1)


class FieldConfig(_Strict):
    """A provider field (``contract.fields.FieldSpec``); objects and arrays nest."""

    type: FieldType
    minimum: int | float | None = None
    maximum: int | float | None = None
    max_length: int | None = Field(None, ge=1)
    enum: list[str] = []
    description: str = ""
    properties: dict[str, FieldConfig] = {}
    required: list[str] = []
    items: FieldConfig | None = None
    min_items: int | None = Field(None, ge=0)
    max_items: int | None = Field(None, ge=0)

    def spec(self) -> FieldSpec:
        return FieldSpec(
            self.type,
            self.minimum,
            self.maximum,
            self.max_length,
            tuple(self.enum),
            self.description,
            properties=tuple((name, f.spec()) for name, f in sorted(self.properties.items())),
            required=tuple(self.required),
            items=self.items.spec() if self.items is not None else None,
            min_items=self.min_items,
            max_items=self.max_items,
        )


class EntryConfig(_Strict):
    """One model's entry. Every key is optional so that an entry may extend
    another; once resolved, ``endpoints`` and a size rule are required."""

    extends: str | None = None
    abstract: bool = False
    source: str | None = None
    retired: datetime.date | None = None
    endpoints: list[Literal["generations", "edits", "variations"]] | None = Field(None, min_length=1)
    sizes: list[str] | None = None
    default_size: str | None = None
    free_size: FreeSizeConfig | None = None
    qualities: list[str] | None = Field(None, min_length=1)
    default_quality: str | None = None
    # What the gateway can return: png/jpeg/webp (converted as asked) and svg
    # (passed through from an upstream that made it, never converted).
    output_formats: list[Literal["png", "jpeg", "webp", "svg"]] | None = Field(None, min_length=1)
    prompt_max: int | None = Field(None, ge=1)
    n_max: int | None = Field(None, ge=1, le=10)
    default_response_format: Literal["url", "b64_json"] | None = None
    accepts: list[SpecField] | None = None
    extra_fields: dict[str, FieldConfig] | None = None
    unknown_fields: Literal["forward", "reject"] | None = None
    edit_input: InputConfig | None = None
    variation_input: InputConfig | None = None
    mask_max_mb: float | None = Field(None, gt=0)
    masks: bool | None = None
    transparency: bool | None = None
    reports_output_meta: bool | None = None
    # Fields the gateway implements itself and never sends upstream: only
    # those it can (hosting URLs, converting formats).
    gateway_fields: list[Literal["response_format", "output_format", "output_compression"]] | None = None
    # The most output tokens (text, thinking and image together) one upstream
    # call may produce: a token-priced provider that can cap its upstream's
    # output (Gemini's maxOutputTokens) sends it, and each image's reservation
    # is this many tokens at the dearest output rate, a true upper bound.
    max_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    # How the model's provider calls it (the upstream method, the aspect
    # ratios and resolutions it takes, an endpoint path): facts its provider
    # reads and checks when a route names it (Provider.check_route).
    wire: dict[str, Any] | None = None
    price: PriceConfig | None = None

    @model_validator(mode="after")
    def _sizes(self) -> EntryConfig:
        for size in self.sizes or []:
            if not re.fullmatch(_SIZE_PATTERN, size):
                raise ValueError(f"sizes: {size!r} is not auto, WIDTHxHEIGHT or a short size name")
        return self


# Keys that describe one name and are not inherited through extends:.
_OWN_KEYS = frozenset({"extends", "abstract", "source", "retired"})


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A resolved entry: its rules, its price (None: unpriced) and where it came from."""

    spec: ModelSpec
    price: PriceConfig | None
    origin: str  # "shipped (openai.yaml)", "config", "code"
    source: str | None = None
    abstract: bool = False
    # Where the price came from (the entry in the extends: chain that gave it):
    # a config entry that changes a shipped model's sizes keeps its shipped price.
    price_origin: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class RawEntry:
    config: EntryConfig
    origin: str
    # For a config entry merged onto a shipped one of the same name: that
    # entry's origin, and the keys the config itself gave.
    base_origin: str | None = None
    given: frozenset[str] | None = None

    def gave(self, key: str) -> str | None:
        """The origin that gave ``key`` in this entry's own keys, if any."""
        if self.given is not None and key not in self.given:
            return self.base_origin if key in self.config.model_fields_set else None
        return self.origin if key in self.config.model_fields_set else None


def load_file(text: str, origin: str) -> dict[str, RawEntry]:
    """The entries of one YAML document (``models:`` mapping)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{origin}: invalid YAML{f' at line {mark.line + 1}' if mark else ''}") from exc
    if not isinstance(data, dict) or set(data) != {"models"} or not isinstance(data["models"], dict):
        raise ConfigError(f"{origin}: the top level must be one mapping, models:")
    return {str(name): RawEntry(parse_entry(f"{origin}: {name}", cfg), origin) for name, cfg in data["models"].items()}


def parse_entry(where: str, raw: Any) -> EntryConfig:
    try:
        return EntryConfig.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}{'.' + loc if loc else ''}: {msg}") from exc


def shipped_files() -> dict[str, RawEntry]:
    """Every entry of the package's data files; a name in two files is an error."""
    entries: dict[str, RawEntry] = {}
    folder = resources.files("imagegate") / "catalog"
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if not item.name.endswith((".yaml", ".yml")):
            continue
        origin = f"shipped ({item.name})"
        for name, entry in load_file(item.read_text(encoding="utf-8"), origin).items():
            if name in entries:
                raise ConfigError(f"{origin}: {name} is also defined in {entries[name].origin}")
            entries[name] = entry
    return entries


def merge(base: Mapping[str, RawEntry], overlay: Mapping[str, EntryConfig], origin: str) -> dict[str, RawEntry]:
    """``base`` with ``overlay``'s entries: a new name is added; a known name
    without ``extends:`` changes only the keys it gives."""
    merged = dict(base)
    for name, cfg in overlay.items():
        if name in base and cfg.extends is None:
            given = cfg.model_dump(exclude_unset=True)
            inherited = {k: v for k, v in _dump(base[name].config).items() if k not in given}
            merged[name] = RawEntry(
                EntryConfig.model_validate({**inherited, **given}), origin, base[name].origin, frozenset(given)
            )
            continue
        merged[name] = RawEntry(cfg, origin)
    return merged


def _dump(cfg: EntryConfig) -> dict[str, Any]:
    return cfg.model_dump(exclude_unset=True)


def _where(name: str, entry: RawEntry) -> str:
    """How an error names an entry: ``catalog.NAME`` (the config) or ``shipped (FILE): NAME``."""
    return f"catalog.{name}" if entry.origin == "config" else f"{entry.origin}: {name}"


def _flatten(name: str, raw: Mapping[str, RawEntry], trail: tuple[str, ...] = ()) -> dict[str, Any]:
    """The entry's keys with those of its ``extends:`` chain filled in."""
    entry = raw[name]
    own = _dump(entry.config)
    parent = entry.config.extends
    if parent is None:
        return own
    if parent not in raw:
        known = ", ".join(sorted(raw))
        raise ConfigError(f"{_where(name, entry)}.extends: no catalog entry {parent!r} (known: {known})")
    if parent in trail or parent == name:
        raise ConfigError(f"{_where(name, entry)}.extends: the chain {' -> '.join((*trail, name, parent))} loops")
    inherited = {k: v for k, v in _flatten(parent, raw, (*trail, name)).items() if k not in _OWN_KEYS}
    merged = {**inherited, **own}
    for key in ("extra_fields", "wire"):
        by_name = {**(inherited.get(key) or {}), **(own.get(key) or {})}
        if by_name:
            merged[key] = by_name
    return merged


def resolve(raw: Mapping[str, RawEntry]) -> dict[str, CatalogEntry]:
    return {name: _resolve_one(name, raw) for name in raw}


def _price_origin(name: str, raw: Mapping[str, RawEntry]) -> str | None:
    """The origin of the entry in ``name``'s extends: chain that gave its price."""
    seen = set()
    while name in raw and name not in seen:
        seen.add(name)
        entry = raw[name]
        if (origin := entry.gave("price")) is not None:
            return origin
        if entry.config.extends is None:
            return None
        name = entry.config.extends
    return None


def _resolve_one(name: str, raw: Mapping[str, RawEntry]) -> CatalogEntry:
    entry = raw[name]
    where = _where(name, entry)
    cfg = EntryConfig.model_validate(_flatten(name, raw))
    try:
        spec = _spec(name, cfg, partial=cfg.abstract)
    except ValueError as exc:
        message = str(exc).removeprefix(f"{name}: ")  # ModelSpec's own messages name the model
        raise ConfigError(f"{where}: {message}") from None
    price_origin = _price_origin(name, raw) if cfg.price is not None else None
    return CatalogEntry(spec, cfg.price, entry.origin, cfg.source, abstract=cfg.abstract, price_origin=price_origin)


def _input(cfg: InputConfig | None) -> InputRule | None:
    if cfg is None:
        return None
    return InputRule(frozenset(cfg.formats), cfg.max_images, int(cfg.max_mb * MB), cfg.square)


def _fields(cfg: Mapping[str, FieldConfig]) -> dict[str, FieldSpec]:
    out = {}
    for field, f in cfg.items():
        try:
            out[field] = f.spec()
        except ValueError as exc:
            raise ValueError(f"extra_fields.{field}: {exc}") from None
    return out


def _spec(name: str, cfg: EntryConfig, *, partial: bool) -> ModelSpec:
    both = set(cfg.accepts or ()) & set(cfg.extra_fields or {})
    if both:
        raise ValueError(
            f"extra_fields may not redefine spec fields the entry accepts ({', '.join(sorted(both))}): "
            "drop them from accepts to give them the provider's meaning"
        )
    free = cfg.free_size
    sizes = tuple(cfg.sizes or ())
    if not partial:
        if cfg.endpoints is None:
            raise ValueError("endpoints is required (or extends: an entry that has them)")
        if not sizes and free is None:
            raise ValueError("sizes or free_size is required")
    free_rule = FreeSizeRule(free.multiple_of, free.max_edge, free.max_pixels, free.min_pixels, free.max_aspect) if free else None
    qualities = tuple(cfg.qualities or ("auto",))
    default_size = cfg.default_size or ("auto" if "auto" in sizes else sizes[0] if sizes else "1024x1024")
    default_quality = cfg.default_quality or ("auto" if "auto" in qualities else qualities[0])
    spec = ModelSpec(
        name=name,
        endpoints=frozenset(cfg.endpoints or ()),
        sizes=sizes,
        default_size=default_size,
        qualities=qualities,
        default_quality=default_quality,
        prompt_max=cfg.prompt_max or 32000,
        n_max=cfg.n_max or 10,
        default_response_format=cfg.default_response_format or "b64_json",
        accepts=frozenset(cfg.accepts or ()),
        free_size=free_rule,
        edit_input=_input(cfg.edit_input),
        variation_input=_input(cfg.variation_input),
        mask_max_bytes=int((cfg.mask_max_mb or 4) * MB),
        reports_output_meta=bool(cfg.reports_output_meta),
        gateway_fields=frozenset(cfg.gateway_fields or ()),
        transparency=True if cfg.transparency is None else cfg.transparency,
        masks=True if cfg.masks is None else cfg.masks,
        extra_fields=_fields(cfg.extra_fields or {}),
        output_formats=tuple(cfg.output_formats or ("png", "jpeg", "webp")),
        unknown_fields=cfg.unknown_fields or "reject",
        retired=cfg.retired,
        max_output_tokens=cfg.max_output_tokens,
        wire=dict(cfg.wire or {}),
    )
    if not partial:
        if (why := spec.allows_size(default_size)) and default_size != "auto":
            raise ValueError(f"default_size {default_size!r}: {why}")
        if default_quality not in qualities:
            raise ValueError(f"default_quality {default_quality!r} is not one of qualities")
        if "edits" in spec.endpoints and spec.edit_input is None:
            raise ValueError("edits needs edit_input (formats, max_images, max_mb)")
        if "variations" in spec.endpoints and spec.variation_input is None:
            raise ValueError("variations needs variation_input (formats, max_images, max_mb)")
    return spec
