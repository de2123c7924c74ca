"""Prices and what a request costs.

Prices are data: each catalog entry's ``price:`` (``imagegate/catalog/*.yaml``,
the config's ``catalog:``), and the config's ``pricing:`` shortcut (USD).
Three kinds:

* **per image** (dall-e-2, dall-e-3, most other providers, local models):
  a price by quality and size, or one flat price;
* **per megapixel** (Black Forest Labs' FLUX.2): a price for each output
  image's first megapixel, one for each further megapixel, and one for each
  megapixel of an input image (a megapixel is 1024x1024 pixels; each one
  begun counts whole);
* **tokens** (GPT image models): text input, image input and image output
  (and text output) per million tokens. The ``usage`` the provider returns
  is billed exactly (cached input at the cached rates); when it returns
  none, the output tokens are estimated from the entry's published table
  per quality and size (gpt-image-1 1024x1024: low 272, medium 1056, high
  4160) or its formula of the pixel count (gpt-image-2), plus 100 per
  partial image, and the cost is marked estimated.

Two figures per request: :func:`worst_case` (reserved against budgets at
admission, an upper bound) and :func:`actual` (settled when it completes).
Amounts are integer nano-dollars (see ``money.py``).

The usage a provider reports is kept with the cost (:class:`Cost`, then the
usage row) whatever the price, none included, so that :func:`recompute`
can cost a row again once a price is added (``imagegate usage reprice``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imagegate.accounting.money import NANO, to_nano
from imagegate.contract import catalog
from imagegate.contract.catalog import CatalogEntry, ModelSpec, parse_size
from imagegate.contract.catalog_data import PriceConfig
from imagegate.contract.requests import ImageRequest, InputImage
from imagegate.contract.results import ImageMeta, Usage

# Output image tokens per image, by quality and size, for a token price that
# gives no estimate of its own (gpt-image-1's published counts).
GPT_IMAGE_OUTPUT_TOKENS: dict[str, dict[str, int]] = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
PARTIAL_IMAGE_TOKENS = 100
# Reservation bound for one input image (edits), in image tokens: above what
# high input fidelity uses, so a reservation is never below the real cost.
INPUT_IMAGE_TOKENS_BOUND = 10_000
# An upstream that tiles a large input image bills per tile: Gemini counts
# 258 tokens per 768x768 tile (https://ai.google.dev/gemini-api/docs/tokens,
# "Image tokens"), the most per pixel of the upstreams priced by tokens. An
# input image's bound is the larger of that and INPUT_IMAGE_TOKENS_BOUND.
TILE_EDGE, TILE_TOKENS = 768, 258
# Input tokens an upstream may bill beyond the prompt's and the images' own
# (OpenAI's generation answers report some image input tokens even without
# an input image); reserved at the dearer input rate.
INPUT_OVERHEAD_TOKENS = 512
# Without usage, input text is estimated at 4 characters per token.
CHARS_PER_TOKEN = 4
# A megapixel, as a per-megapixel price counts it: a 1024x1024 image is one
# (a FLUX.2 [max] 1024x1024 image costs BFL's first-megapixel price alone).
MEGAPIXEL = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PerImage:
    """Nano-dollars per image: by ``(quality, size)``, else ``default``;
    ``per_input`` for each input image of an edit (once per request)."""

    table: Mapping[tuple[str, str], int] = field(default_factory=dict)
    default: int | None = None
    per_input: int = 0

    def price(self, quality: str | None, size: str | None) -> int | None:
        if quality is not None and size is not None and (quality, size) in self.table:
            return self.table[(quality, size)]
        return self.default

    def most(self) -> int:
        return max([*self.table.values(), self.default or 0])


@dataclass(frozen=True, slots=True)
class TokenFormula:
    """Output tokens from the pixel count (see ``catalog_data.OutputTokensFormula``)."""

    quality_factors: Mapping[str, int]
    area_offset: int
    area_divisor: int

    def tokens(self, quality: str, width: int, height: int) -> int:
        q = self.quality_factors.get(quality) or max(self.quality_factors.values())
        long, short = max(width, height), min(width, height)
        axis = (2 * q * short + long) // (2 * long)
        return -(-(q * axis * (self.area_offset + width * height)) // self.area_divisor)


@dataclass(frozen=True, slots=True)
class PerToken:
    """Nano-dollars per token (a $/1M price divided by 1e6 stays exact).
    Cached input rates default to the uncached ones (never billed lower than
    a rate the price states)."""

    text_input: int
    image_input: int
    image_output: int
    text_output: int = 0
    output_tokens: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: GPT_IMAGE_OUTPUT_TOKENS)
    formula: TokenFormula | None = None
    text_input_cached: int | None = None
    image_input_cached: int | None = None

    @property
    def qualities(self) -> list[str]:
        return list(self.formula.quality_factors) if self.formula else list(self.output_tokens)


@dataclass(frozen=True, slots=True)
class PerMegapixel:
    """Nano-dollars by megapixel (:data:`MEGAPIXEL` pixels, each one begun
    counted whole): ``first`` for an output image's first, ``additional``
    for each further one, ``input`` for each of an input image's."""

    first: int
    additional: int
    input: int = 0

    def output(self, width: int, height: int) -> int:
        """One output image of ``width`` x ``height``."""
        return self.first + max(0, megapixels(width, height) - 1) * self.additional

    def inputs(self, images: Sequence[InputImage]) -> int:
        """The input images of one job (each image's megapixels rounded up)."""
        return self.input * sum(megapixels(i.info.width, i.info.height) for i in images)


def megapixels(width: int, height: int) -> int:
    """Megapixels begun: at least one."""
    return max(1, -(-(width * height) // MEGAPIXEL))


Price = PerImage | PerToken | PerMegapixel


def _per_1m(usd: float) -> int:
    return to_nano(usd) // 1_000_000


@dataclass(frozen=True, slots=True)
class Cost:
    nusd: int
    estimated: bool = False
    input_text_tokens: int | None = None
    input_image_tokens: int | None = None
    output_tokens: int | None = None
    # The output tokens billed at the image and the text rate (from reported usage only).
    output_image_tokens: int | None = None
    output_text_tokens: int | None = None
    input_cached_tokens: int | None = None
    upstream_cost_nusd: int | None = None  # the upstream's own charge, when it reported one


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counts as a token price applies to them. ``cached_in`` is the
    part of the input (text and image) served from the upstream's cache."""

    text_in: int
    image_in: int
    image_out: int
    text_out: int = 0
    cached_in: int = 0
    # Output tokens the details do not account for: at the dearer output rate.
    other_out: int = 0


def billed(usage: Usage) -> Tokens:
    """A reported usage as billed. Never below zero, whatever an upstream
    reports (the gateway rejects such answers before they get here; this is
    the last line). Undetailed input is billed as text, undetailed output as
    image; output beyond its details at the dearer output rate."""
    text_in = max(0, usage.input_text_tokens)
    image_in = max(0, usage.input_image_tokens)
    text_in += max(0, usage.input_tokens - text_in - image_in)
    cached = min(max(0, usage.input_cached_tokens), text_in + image_in)
    if usage.output_image_tokens is not None or usage.output_text_tokens is not None:
        out_image, out_text = max(0, usage.output_image_tokens or 0), max(0, usage.output_text_tokens or 0)
        rest = max(0, usage.output_tokens - out_image - out_text)
        return Tokens(text_in, image_in, out_image, out_text, cached, rest)
    return Tokens(text_in, image_in, max(0, usage.output_tokens), cached_in=cached)


def token_cost(price: PerToken, tokens: Tokens) -> int:
    """The cost of ``tokens``. Cached input is reported as one number, not
    split into text and image: it is taken from the text input first, whose
    discount is the smaller, so the charge is never below the real one."""
    text_cached = min(tokens.cached_in, tokens.text_in)
    image_cached = min(tokens.cached_in - text_cached, tokens.image_in)
    text_cached_rate = price.text_input if price.text_input_cached is None else price.text_input_cached
    image_cached_rate = price.image_input if price.image_input_cached is None else price.image_input_cached
    nusd = (
        (tokens.text_in - text_cached) * price.text_input
        + text_cached * text_cached_rate
        + (tokens.image_in - image_cached) * price.image_input
        + image_cached * image_cached_rate
        + tokens.image_out * price.image_output
        + tokens.text_out * price.text_output
        + tokens.other_out * max(price.image_output, price.text_output)
    )
    return max(0, nusd)


def per_image_cost(price: PerImage, quality: str | None, size: str | None, images: int) -> int:
    return images * _per_image_most(price, quality or "auto", size or "auto")


def _per_image_most(price: PerImage, quality: str, size: str) -> int:
    """One image's price at ``quality`` and ``size`` (or the table's
    default); without a default, a quality the table does not list ("auto":
    dall-e answers do not say which they used) is the dearest at that size,
    a size it does not list ("auto") the dearest of its sizes, and neither
    listed the most of the table. The reservation and the charge both come
    from here, so the one bounds the other."""
    exact = price.price(quality, size)
    if exact is not None:
        return exact
    sizes = [size] if parse_size(size) else sorted({s for _, s in price.table})
    candidates = [price.price(q, s) for q in _resolve_quality(price, quality) for s in sizes or [size]]
    known = [c for c in candidates if c is not None]
    return max(known) if known else price.most()


def _resolve_quality(price: PerImage | PerToken, asked: str) -> list[str]:
    if isinstance(price, PerToken):
        return [asked] if asked in price.qualities else price.qualities
    qualities = {q for q, _ in price.table}
    return [asked] if asked in qualities else sorted(qualities) or [asked]


def _output_tokens(price: PerToken, quality: str, size: str, listed: Sequence[str] = ()) -> int:
    """Output tokens of one image at a quality and size (an unknown quality,
    e.g. "auto", counts as the dearest): from the price's formula of the
    pixel count, else its published table (other sizes scaled by area). A
    size that is not WIDTHxHEIGHT ("auto") counts as the largest of the
    table's sizes and the model's ``listed`` ones."""
    dims = parse_size(size)
    if price.formula is not None:
        candidates = [dims] if dims else [d for d in map(parse_size, listed) if d] or [(1024, 1024)]
        return max(price.formula.tokens(quality, w, h) for w, h in candidates)
    tables = price.output_tokens
    table = tables.get(quality) or max(tables.values(), key=lambda t: max(t.values()))
    if size in table:
        return table[size]
    if dims is None:  # "auto": the most of that quality
        return max([table[s] for s in table] + [_output_tokens(price, quality, s) for s in listed if parse_size(s)])
    return math.ceil(table["1024x1024"] * dims[0] * dims[1] / (1024 * 1024))


def bound_sizes(spec: ModelSpec) -> list[str]:
    """The sizes a request without a WIDTHxHEIGHT ("auto") may come back at,
    for its reservation: the listed ones, and for a free-size model the
    largest square and the widest largest rectangle within its limits."""
    sizes = [s for s in spec.sizes if parse_size(s)]
    rule = spec.free_size
    if rule is not None:
        step = rule.multiple_of
        side = min(rule.max_edge, math.isqrt(rule.max_pixels)) // step * step
        long = rule.max_edge // step * step
        short = min(long, rule.max_pixels // long) // step * step
        for w, h in ((side, side), (long, short)):
            if w and h and rule.check(w, h) is None:
                sizes.append(f"{w}x{h}")
    return sizes


def worst_case(price: Price | None, request: ImageRequest) -> int:
    """An upper bound of what the request can be billed, reserved at
    admission. For token prices: the most output tokens the model produces
    at the asked size at *any* quality (an upstream may bill ``high`` when
    ``low`` was asked) or the model's ``max_output_tokens`` (the cap its
    provider sends: text and thinking included; such a provider makes one
    call per image, each billing the whole input), every partial image, one token per prompt byte and
    the input-image bound and an allowance for input overhead, all at the
    dearest rates."""
    if price is None:
        return 0
    n = request.n
    if isinstance(price, PerImage):
        return n * _per_image_most(price, request.quality, request.size) + price.per_input * len(request.images)
    if isinstance(price, PerMegapixel):  # each image (each upstream job) pays for its inputs too
        return n * (_megapixel_output_most(price, request.size, bound_sizes(request.spec)) + price.inputs(request.images))
    cap = request.spec.max_output_tokens  # the provider caps each call's output there
    calls = 1  # upstream calls that each bill the whole input
    if cap is not None:
        out, calls = cap, n  # a capped model's provider makes one call per image (Gemini)
    else:
        out = max(_output_tokens(price, q, request.size, bound_sizes(request.spec)) for q in price.qualities)
        out += PARTIAL_IMAGE_TOKENS * request.partial_images
    text = len(request.prompt.encode("utf-8"))  # a token is at least one byte
    images = sum(input_image_tokens_bound(image) for image in (*request.images, *((request.mask,) if request.mask else ())))
    overhead = INPUT_OVERHEAD_TOKENS * max(price.text_input, price.image_input)
    inputs = text * price.text_input + images * price.image_input + overhead
    return n * out * max(price.image_output, price.text_output) + calls * inputs


def input_image_tokens_bound(image: InputImage) -> int:
    """The most input tokens one input image (or mask) can be billed."""
    tiles = math.ceil(image.info.width / TILE_EDGE) * math.ceil(image.info.height / TILE_EDGE)
    return max(INPUT_IMAGE_TOKENS_BOUND, tiles * TILE_TOKENS)


def _megapixel_output_most(price: PerMegapixel, size: str, listed: Sequence[str]) -> int:
    """One output image at ``size``; a size that is not WIDTHxHEIGHT
    ("auto") costs as the largest of ``listed`` (1024x1024 without any)."""
    dims = parse_size(size)
    candidates = [dims] if dims else [d for d in map(parse_size, listed) if d] or [(1024, 1024)]
    return max(price.output(w, h) for w, h in candidates)


def actual(
    price: Price | None,
    request: ImageRequest,
    images: int,
    usage: Usage | None,
    meta: ImageMeta,
    upstream_cost: int | None = None,
) -> Cost:
    """What the completed request costs: what the upstream said it charged
    (``upstream_cost``, already checked), else from usage when there is one,
    else from the price. The reported usage is kept in the Cost whatever
    the price (none included)."""
    quality = meta.quality or request.quality
    size = meta.size or request.size
    tokens = billed(usage) if usage is not None else None
    reported = {}
    if usage is not None and tokens is not None:
        reported = dict(
            input_text_tokens=tokens.text_in,
            input_image_tokens=tokens.image_in,
            output_tokens=max(0, usage.output_tokens),
            output_image_tokens=tokens.image_out,
            output_text_tokens=tokens.text_out,
            input_cached_tokens=tokens.cached_in,
        )
    if upstream_cost is not None:
        return Cost(max(0, upstream_cost), False, upstream_cost_nusd=upstream_cost, **reported)
    if price is None:
        return Cost(0, True, **reported)
    if isinstance(price, PerImage):
        inputs = price.per_input * len(request.images)
        return Cost(per_image_cost(price, quality, size, images) + inputs, False, **reported)
    if isinstance(price, PerMegapixel):
        one = _megapixel_output_most(price, size, bound_sizes(request.spec)) + price.inputs(request.images)
        return Cost(images * one, parse_size(size) is None, **reported)
    if tokens is not None:
        return Cost(token_cost(price, tokens), False, **reported)
    text_in = math.ceil(len(request.prompt) / CHARS_PER_TOKEN)
    if request.spec.max_output_tokens is not None:  # no usage from a model that thinks: its cap, fail closed
        out = images * request.spec.max_output_tokens
        rate = max(price.image_output, price.text_output)
        return Cost(out * rate + images * text_in * price.text_input, True, text_in, None, out)
    out = images * (_output_tokens(price, quality, size, request.spec.sizes) + PARTIAL_IMAGE_TOKENS * request.partial_images)
    return Cost(out * price.image_output + text_in * price.text_input, True, text_in, None, out)


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a usage row keeps of a request, enough to cost it again."""

    images: int
    quality: str | None
    size: str | None
    input_text_tokens: int | None
    input_image_tokens: int | None
    output_tokens: int | None
    output_image_tokens: int | None
    output_text_tokens: int | None
    estimated: bool
    input_cached_tokens: int | None = None


def recompute(price: Price, row: Recorded) -> tuple[int, bool]:
    """``(nano-dollars, estimated)`` for a recorded request at ``price``: what
    :func:`actual` charges, from what the row kept. Reported usage is billed
    exactly; the gateway's own token estimate (or a row from before the output
    split was kept, its output billed at the image rate) is billed as
    estimated before; a row with no tokens is estimated from the published
    token counts (its prompt is not kept: no text tokens)."""
    if isinstance(price, PerImage):
        return per_image_cost(price, row.quality, row.size, row.images), False
    if isinstance(price, PerMegapixel):  # the row keeps no input images: outputs only, estimated
        return row.images * _megapixel_output_most(price, row.size or "auto", ()), True
    text_in, image_in = row.input_text_tokens or 0, row.input_image_tokens or 0
    if row.output_image_tokens is not None or row.output_text_tokens is not None:  # reported usage
        cached = row.input_cached_tokens or 0
        image_out, text_out = row.output_image_tokens or 0, row.output_text_tokens or 0
        rest = max(0, (row.output_tokens or 0) - image_out - text_out)
        tokens = Tokens(text_in, image_in, image_out, text_out, cached, rest)
        return token_cost(price, tokens), False
    if row.output_tokens is not None:
        return token_cost(price, Tokens(text_in, image_in, row.output_tokens)), row.estimated
    out = row.images * _output_tokens(price, row.quality or "high", row.size or "auto")
    return out * price.image_output, True


def price_names(public: str, upstream: str, spec: ModelSpec) -> tuple[str, ...]:
    """The names a request's price is looked up by, in order. Rules a route
    names with ``rules:`` price it first (an Azure deployment name is no
    model), after a price the config gives the public name; rules found by
    the upstream or public name price by those names; a provider's fallback
    rules (openai-compatible, a dialect's default) never price a model."""
    if spec.rules_from == "rules":
        return (public, spec.name, upstream)
    if spec.rules_from == "provider":
        return (upstream, public)
    return (upstream, public, spec.name)


class PriceBook:
    """Where a request's price is found: the configured prices (the config's
    ``pricing:`` and its ``catalog:`` entries), then the shipped entries',
    each by upstream model, public model, then rules entry name."""

    def __init__(
        self, configured: Mapping[str, Price], shipped: Mapping[str, Price], origins: Mapping[str, str] | None = None
    ) -> None:
        self.configured = dict(configured)
        self.shipped = dict(shipped)
        self._origins = dict(origins or {})

    @classmethod
    def build(cls, entries: Iterable[CatalogEntry], pricing: Mapping[str, PriceConfig]) -> PriceBook:
        configured: dict[str, Price] = {}
        shipped: dict[str, Price] = {}
        origins: dict[str, str] = {}
        for e in entries:
            if e.price is None:
                continue
            tier = "configured" if e.price_origin == "config" else "shipped"
            (configured if tier == "configured" else shipped)[e.name] = price_from_config(e.price)
            origins[f"{tier}:{e.name}"] = "config (catalog)" if tier == "configured" else e.price_origin or e.origin
        configured.update({name: price_from_config(cfg) for name, cfg in pricing.items()})
        origins.update({f"configured:{name}": "config (pricing)" for name in pricing})
        return cls(configured, shipped, origins)

    def find(self, *names: str | None) -> Price | None:
        return self.find_with_origin(*names)[0]

    def find_with_origin(self, *names: str | None) -> tuple[Price | None, str | None]:
        """The price and where it came from: ``"NAME, shipped (FILE)"``,
        ``"NAME, config (catalog)"`` or ``"NAME, config (pricing)"``."""
        for tier, table in (("configured", self.configured), ("shipped", self.shipped)):
            for name in names:
                if name is not None and name in table:
                    return table[name], f"{name}, {self._origins.get(f'{tier}:{name}', tier)}"
        return None, None


def _per_1m_or_none(usd: float | None) -> int | None:
    return None if usd is None else _per_1m(usd)


def price_from_config(cfg: PriceConfig | Mapping[str, Any]) -> Price:
    """A price entry (a catalog entry's ``price:`` or a ``pricing:`` entry) -> Price."""
    if isinstance(cfg, Mapping):
        cfg = PriceConfig.model_validate(cfg)
    if cfg.per_megapixel is not None:
        mp = cfg.per_megapixel
        return PerMegapixel(to_nano(mp.first), to_nano(mp.additional), to_nano(mp.input))
    if cfg.image_output_per_1m is not None:
        formula = cfg.output_tokens_formula
        return PerToken(
            _per_1m(cfg.text_input_per_1m or 0),
            _per_1m(cfg.image_input_per_1m or 0),
            _per_1m(cfg.image_output_per_1m),
            _per_1m(cfg.text_output_per_1m or 0),
            output_tokens=cfg.output_tokens or GPT_IMAGE_OUTPUT_TOKENS,
            formula=TokenFormula(formula.quality_factors, formula.area_offset, formula.area_divisor) if formula else None,
            text_input_cached=_per_1m_or_none(cfg.text_input_cached_per_1m),
            image_input_cached=_per_1m_or_none(cfg.image_input_cached_per_1m),
        )
    per_image = cfg.per_image
    per_input = to_nano(cfg.per_input_image) if cfg.per_input_image is not None else 0
    if isinstance(per_image, Mapping):
        table = {}
        default = None
        for key, usd in per_image.items():
            if key == "default":
                default = to_nano(usd)
            else:
                quality, _, size = str(key).partition(" ")
                table[(quality, size)] = to_nano(usd)
        return PerImage(table, default, per_input)
    assert per_image is not None  # PriceConfig gives one of the kinds
    return PerImage(default=to_nano(per_image), per_input=per_input)


__all__ = [
    "NANO",
    "PriceBook",
    "shipped_prices",
    "Cost",
    "Price",
    "PerImage",
    "PerMegapixel",
    "PerToken",
    "Recorded",
    "Tokens",
    "actual",
    "billed",
    "recompute",
    "worst_case",
    "price_from_config",
]


def shipped_prices() -> dict[str, Price]:
    """The prices of the package's catalog entries, by model name."""
    return {e.name: price_from_config(e.price) for e in catalog.shipped().entries() if e.price is not None}
