"""Prices and what a request costs.

Shipped prices are OpenAI's public ones (USD); ``pricing:`` in the config
overrides or adds any model. Two kinds:

* **per image** (dall-e-2, dall-e-3, most other providers, local models):
  a price by quality and size, or one flat price;
* **tokens** (GPT image models): text input, image input and image output
  (and text output) per million tokens. The ``usage`` the provider returns
  is billed exactly; when it returns none, the published output token counts
  per quality and size are used (gpt-image-1 1024x1024: low 272, medium 1056,
  high 4160) plus 100 per partial image, and the cost is marked estimated.

Two figures per request: :func:`worst_case` (reserved against budgets at
admission, an upper bound) and :func:`actual` (settled when it completes).
Amounts are integer nano-dollars (see ``money.py``).

The usage a provider reports is kept with the cost (:class:`Cost`, then the
usage row) whatever the price, none included, so that :func:`recompute`
can cost a row again once a price is added (``imagegate usage reprice``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imagegate.accounting.money import NANO, to_nano
from imagegate.contract.catalog import parse_size
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import ImageMeta, Usage

# Output image tokens per image, by quality and size (GPT image models).
GPT_IMAGE_OUTPUT_TOKENS: dict[str, dict[str, int]] = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
PARTIAL_IMAGE_TOKENS = 100
# Reservation bound for one input image (edits), in image tokens: above what
# high input fidelity uses, so a reservation is never below the real cost.
INPUT_IMAGE_TOKENS_BOUND = 10_000
# Input tokens an upstream may bill beyond the prompt's and the images' own
# (OpenAI's generation answers report some image input tokens even without
# an input image); reserved at the dearer input rate.
INPUT_OVERHEAD_TOKENS = 512
# Without usage, input text is estimated at 4 characters per token.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class PerImage:
    """Nano-dollars per image: by ``(quality, size)``, else ``default``."""

    table: Mapping[tuple[str, str], int] = field(default_factory=dict)
    default: int | None = None

    def price(self, quality: str | None, size: str | None) -> int | None:
        if quality is not None and size is not None and (quality, size) in self.table:
            return self.table[(quality, size)]
        return self.default

    def most(self) -> int:
        return max([*self.table.values(), self.default or 0])


@dataclass(frozen=True, slots=True)
class PerToken:
    """Nano-dollars per token (a $/1M price divided by 1e6 stays exact)."""

    text_input: int
    image_input: int
    image_output: int
    text_output: int = 0
    output_tokens: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: GPT_IMAGE_OUTPUT_TOKENS)


Price = PerImage | PerToken


def _per_1m(usd: float) -> int:
    return to_nano(usd) // 1_000_000


def _per_image(prices: Mapping[tuple[str, str], float]) -> PerImage:
    return PerImage({k: to_nano(v) for k, v in prices.items()})


_DALLE2 = {("standard", s): p for s, p in (("256x256", 0.016), ("512x512", 0.018), ("1024x1024", 0.020))}
_DALLE3 = {
    ("standard", "1024x1024"): 0.040,
    ("standard", "1792x1024"): 0.080,
    ("standard", "1024x1792"): 0.080,
    ("hd", "1024x1024"): 0.080,
    ("hd", "1792x1024"): 0.120,
    ("hd", "1024x1792"): 0.120,
}

BUILTIN: dict[str, Price] = {
    "dall-e-2": _per_image(_DALLE2),
    "dall-e-3": _per_image(_DALLE3),
    "gpt-image-1": PerToken(_per_1m(5.00), _per_1m(10.00), _per_1m(40.00)),
    "gpt-image-1-mini": PerToken(_per_1m(2.00), _per_1m(2.50), _per_1m(8.00)),
    "gpt-image-1.5": PerToken(_per_1m(5.00), _per_1m(8.00), _per_1m(32.00), _per_1m(10.00)),
    "chatgpt-image-latest": PerToken(_per_1m(5.00), _per_1m(8.00), _per_1m(32.00), _per_1m(10.00)),
    "test-pattern": PerImage(default=0),
}


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


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counts as a token price applies to them."""

    text_in: int
    image_in: int
    image_out: int
    text_out: int = 0


def billed(usage: Usage) -> Tokens:
    """A reported usage as billed. Never below zero, whatever an upstream
    reports (the gateway rejects such answers before they get here; this is
    the last line). Undetailed input is billed as text, undetailed output as
    image."""
    text_in = max(0, usage.input_text_tokens)
    image_in = max(0, usage.input_image_tokens)
    text_in += max(0, usage.input_tokens - text_in - image_in)
    if usage.output_image_tokens is not None or usage.output_text_tokens is not None:
        return Tokens(text_in, image_in, max(0, usage.output_image_tokens or 0), max(0, usage.output_text_tokens or 0))
    return Tokens(text_in, image_in, max(0, usage.output_tokens))


def token_cost(price: PerToken, tokens: Tokens) -> int:
    nusd = (
        tokens.text_in * price.text_input
        + tokens.image_in * price.image_input
        + tokens.image_out * price.image_output
        + tokens.text_out * price.text_output
    )
    return max(0, nusd)


def per_image_cost(price: PerImage, quality: str | None, size: str | None, images: int) -> int:
    each = price.price(quality, size)
    if each is None:  # quality/size outside the table: the most it could be
        each = max([p for (q, _), p in price.table.items() if q == quality] or [price.most()])
    return images * each


def _resolve_quality(price: Price, asked: str) -> list[str]:
    if isinstance(price, PerToken):
        return [asked] if asked in price.output_tokens else list(price.output_tokens)
    qualities = {q for q, _ in price.table}
    return [asked] if asked in qualities else sorted(qualities) or [asked]


def _output_tokens(price: PerToken, quality: str, size: str) -> int:
    """Published tokens for a quality and size; for other sizes, scaled by area."""
    table = price.output_tokens.get(quality) or price.output_tokens["high"]
    if size in table:
        return table[size]
    dims = parse_size(size)
    if dims is None:  # "auto": the most of that quality
        return max(table.values())
    return math.ceil(table["1024x1024"] * dims[0] * dims[1] / (1024 * 1024))


def worst_case(price: Price | None, request: ImageRequest) -> int:
    """An upper bound of what the request can be billed, reserved at
    admission. For token prices: the most output tokens the model produces
    at the asked size at *any* quality (an upstream may bill ``high`` when
    ``low`` was asked), every partial image, one token per prompt byte and
    the input-image bound and an allowance for input overhead, all at the
    dearest rates."""
    if price is None:
        return 0
    n = request.n
    if isinstance(price, PerImage):
        sizes = [request.size] if parse_size(request.size) else None
        candidates = [
            price.price(q, s) for q in _resolve_quality(price, request.quality) for s in (sizes or [s for _, s in price.table])
        ]
        known = [c for c in candidates if c is not None]
        return n * (max(known) if known else price.most())
    out = max(_output_tokens(price, q, request.size) for q in price.output_tokens)
    out += PARTIAL_IMAGE_TOKENS * request.partial_images
    text = len(request.prompt.encode("utf-8"))  # a token is at least one byte
    images = INPUT_IMAGE_TOKENS_BOUND * (len(request.images) + (1 if request.mask is not None else 0))
    overhead = INPUT_OVERHEAD_TOKENS * max(price.text_input, price.image_input)
    return n * out * max(price.image_output, price.text_output) + text * price.text_input + images * price.image_input + overhead


def actual(price: Price | None, request: ImageRequest, images: int, usage: Usage | None, meta: ImageMeta) -> Cost:
    """What the completed request costs: from usage when there is one. The
    reported usage is kept in the Cost whatever the price (none included)."""
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
        )
    if price is None:
        return Cost(0, True, **reported)
    if isinstance(price, PerImage):
        return Cost(per_image_cost(price, quality, size, images), False, **reported)
    if tokens is not None:
        return Cost(token_cost(price, tokens), False, **reported)
    out = images * (_output_tokens(price, quality, size) + PARTIAL_IMAGE_TOKENS * request.partial_images)
    text_in = math.ceil(len(request.prompt) / CHARS_PER_TOKEN)
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


def recompute(price: Price, row: Recorded) -> tuple[int, bool]:
    """``(nano-dollars, estimated)`` for a recorded request at ``price``: what
    :func:`actual` charges, from what the row kept. Reported usage is billed
    exactly; the gateway's own token estimate (or a row from before the output
    split was kept, its output billed at the image rate) is billed as
    estimated before; a row with no tokens is estimated from the published
    token counts (its prompt is not kept: no text tokens)."""
    if isinstance(price, PerImage):
        return per_image_cost(price, row.quality, row.size, row.images), False
    text_in, image_in = row.input_text_tokens or 0, row.input_image_tokens or 0
    if row.output_image_tokens is not None or row.output_text_tokens is not None:  # reported usage
        tokens = Tokens(text_in, image_in, row.output_image_tokens or 0, row.output_text_tokens or 0)
        return token_cost(price, tokens), False
    if row.output_tokens is not None:
        return token_cost(price, Tokens(text_in, image_in, row.output_tokens)), row.estimated
    out = row.images * _output_tokens(price, row.quality or "high", row.size or "auto")
    return out * price.image_output, True


def find_price(configured: Mapping[str, Price], *names: str | None) -> Price | None:
    """The price of the first of ``names`` (upstream model, public model,
    rules entry) in ``configured`` (the config's ``pricing:``), else in the
    shipped table, in the same order."""
    for table in (configured, BUILTIN):
        for name in names:
            if name is not None and name in table:
                return table[name]
    return None


def price_from_config(cfg: Mapping[str, Any]) -> Price:
    """A ``pricing:`` entry (already validated by config: numbers where they belong) -> Price."""
    if cfg.get("image_output_per_1m") is not None:
        return PerToken(
            _per_1m(float(cfg.get("text_input_per_1m") or 0)),
            _per_1m(float(cfg.get("image_input_per_1m") or 0)),
            _per_1m(float(cfg["image_output_per_1m"])),
            _per_1m(float(cfg.get("text_output_per_1m") or 0)),
        )
    per_image = cfg.get("per_image")
    if isinstance(per_image, Mapping):
        table = {}
        default = None
        for key, usd in per_image.items():
            if key == "default":
                default = to_nano(usd)
            else:
                quality, _, size = str(key).partition(" ")
                table[(quality, size)] = to_nano(usd)
        return PerImage(table, default)
    if per_image is None:  # config refuses such an entry
        raise ValueError("a price needs per_image or image_output_per_1m")
    return PerImage(default=to_nano(per_image))


__all__ = [
    "NANO",
    "BUILTIN",
    "Cost",
    "Price",
    "PerImage",
    "PerToken",
    "Recorded",
    "Tokens",
    "actual",
    "billed",
    "find_price",
    "recompute",
    "worst_case",
    "price_from_config",
]
