"""``test-pattern``: an offline, deterministic TEST model (not AI).

It exists so client applications can be developed and tested without cost or
network. It renders a real image of the asked size and format: a
seed-dependent pattern with the prompt and the request's settings written on
it (as resolved: the size rendered, the quality the answer reports) in a band
across the top; transparent background when asked; edits repaint the masked
area of the first input image (or tint the whole image without a mask);
variations recolour the input. An edit or variation of a test pattern
repaints the input's caption band, so two captions never mix. The same
request and seed always give the same pixels.
"""

from __future__ import annotations

import asyncio
import math
import random
import textwrap
import zlib
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import ClassVar, Literal

from PIL import Image, ImageDraw, ImageFont, ImageOps
from pydantic import Field, field_validator

from imagegate.contract.catalog import EDITS, GENERATIONS, parse_size
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import (
    Deployment,
    GeneratedImage,
    ImageMeta,
    PartialImage,
    ProviderResult,
    StreamItem,
)
from imagegate.imaging.convert import encode
from imagegate.imaging.probe import decode_input
from imagegate.providers.base import Provider, ProviderOptions


class PatternOptions(ProviderOptions):
    # Formats rendered natively; others are converted by the gateway (set this
    # to [png] to see how a provider with one output format behaves).
    formats: list[Literal["png", "jpeg", "webp"]] = ["png", "jpeg", "webp"]  # pydantic copies it per instance
    # Render at this size whatever was asked (the gateway then resizes), like
    # an upstream with fixed resolutions. None: render the asked size.
    fixed_size: str | None = None
    # Artificial latency per image, to exercise timeouts and streaming.
    delay_seconds: float = Field(0.0, ge=0, le=600)

    @field_validator("fixed_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and parse_size(value) is None:
            raise ValueError(f"not a WIDTHxHEIGHT size: {value!r}")
        return value


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _palette(seed: int, style: str | None) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    lo, hi = (90, 200) if style == "natural" else (0, 255)
    return [(rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(4)]


def _pattern(size: tuple[int, int], seed: int, transparent: bool, style: str | None) -> Image.Image:
    """A seed-dependent pattern of stripes and rings."""
    w, h = size
    rng = random.Random(seed)
    colors = _palette(seed, style)
    mode = "RGBA" if transparent else "RGB"
    background = (0, 0, 0, 0) if transparent else colors[0]
    img = Image.new(mode, size, background)
    draw = ImageDraw.Draw(img)
    step = max(8, min(w, h) // rng.randint(6, 12))
    for i, x in enumerate(range(-h, w, step)):
        if i % 2:
            draw.polygon([(x, 0), (x + step, 0), (x + step + h, h), (x + h, h)], fill=colors[1])
    cx, cy = rng.randint(0, w), rng.randint(0, h)
    for r in range(max(w, h), 0, -step):
        if (r // step) % 3 == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colors[2], width=max(2, step // 4))
    return img


CAPTION_LINES = 4  # the band always has room for this many lines, whatever the text


def caption_geometry(size: tuple[int, int]) -> tuple[int, int, int]:
    """``(font size, padding, band height)`` of the caption band of an image
    of ``size``: a function of the size alone, so that a later render can
    repaint exactly the band an earlier one drew."""
    w, h = size
    font_size = max(8, min(w, h) // 24)
    pad = font_size // 2
    return font_size, pad, min(h, CAPTION_LINES * (font_size + 4) + 2 * pad)


def inherited_band(source: tuple[int, int], size: tuple[int, int]) -> int:
    """Rows at the top of a ``size`` image made by ``ImageOps.fit`` from a
    ``source``-sized test pattern that its caption band may still cover."""
    (sw, sh), (w, h) = source, size
    band = caption_geometry(source)[2]
    if sw * h >= sh * w:  # the source is wider: its sides are cropped, its top stays
        scale, top = h / sh, 0.0
    else:  # taller: the rows kept are centred
        scale, top = w / sw, (sh - sw * h / w) / 2
    if band <= top:
        return 0
    # and the few rows resampling smears the band's edge over
    return math.ceil((band - top) * scale + 3 * max(1.0, scale))


def _caption(img: Image.Image, lines: list[str], cover: int = 0) -> None:
    """Write the prompt and settings in a readable band across the top.

    The band is repainted in full (and down to ``cover`` rows, where an input
    image's own caption lay), so an edit of a test pattern never shows two
    captions mixed."""
    w, h = img.size
    font_size, pad, band = caption_geometry(img.size)
    font = _font(font_size)
    draw = ImageDraw.Draw(img)
    width = max(10, int(w / (font_size * 0.6)))
    settings = textwrap.wrap(lines[-1], width=width)[: CAPTION_LINES - 1]
    room = max(1, min(CAPTION_LINES - len(settings), (h - 2 * pad) // (font_size + 4) - len(settings)))
    prompt = textwrap.wrap(lines[0], width=width) or [""]
    if len(prompt) > room:
        prompt = [*prompt[: room - 1], textwrap.shorten(" ".join(prompt[room - 1 :]), width=width, placeholder=" …")]
    draw.rectangle((0, 0, w, min(h, max(band, cover))), fill=(255, 255, 255, 200) if img.mode == "RGBA" else (255, 255, 255))
    ink = (0, 0, 0, 255) if img.mode == "RGBA" else (0, 0, 0)
    for i, line in enumerate([*prompt, *settings]):
        draw.text((pad, pad + i * (font_size + 4)), line, fill=ink, font=font)


class PatternProvider(Provider):
    type_name: ClassVar[str] = "test-pattern"
    options_model = PatternOptions
    default_rules = "test-pattern"  # its catalog entry (imagegate/catalog/gateway.yaml)
    options: PatternOptions

    # -- helpers -----------------------------------------------------------

    def _seed(self, request: ImageRequest) -> int:
        if request.seed is not None:
            return request.seed
        return zlib.crc32(f"{request.endpoint}\0{request.prompt}".encode())

    def _render_size(self, request: ImageRequest) -> tuple[int, int]:
        if self.options.fixed_size:
            dims = parse_size(self.options.fixed_size)
            assert dims is not None  # checked when options are validated
            return dims
        dims = parse_size(request.size)
        if dims is not None:
            return dims
        if request.images:  # "auto" on an edit or variation: the input's size
            return request.images[0].info.width, request.images[0].info.height
        return 1024, 1024

    def _format(self, request: ImageRequest) -> tuple[str, bool]:
        fmt = request.output_format
        if fmt in self.options.formats:
            return fmt, request.output_compression is not None
        return self.options.formats[0], False

    def _lines(self, request: ImageRequest, seed: int, size: tuple[int, int]) -> list[str]:
        """The prompt, and the settings as resolved: the size rendered and the
        quality the answer reports (never "auto")."""
        quality = self._meta(request).quality
        settings = f"TEST PATTERN · {request.model} · {request.endpoint} · {size[0]}x{size[1]} · q={quality} · seed={seed}"
        return [request.prompt or "(no prompt)", settings]

    def _input(self, request: ImageRequest, index: int = 0) -> Image.Image:
        image = request.images[index]
        return decode_input(image.data, image.field, max_pixels=self.context.max_image_pixels)

    def _render(self, request: ImageRequest, seed: int) -> Image.Image:
        size = self._render_size(request)
        transparent = request.background == "transparent"
        style = getattr(request.params, "style", None)
        pattern = _pattern(size, seed, transparent, style)
        cover = 0  # an input's own caption band, as it lands in this image
        if request.endpoint == GENERATIONS:
            img = pattern
        elif request.endpoint == EDITS:
            img = self._render_edit(request, pattern, transparent)
        else:
            base = ImageOps.fit(self._input(request).convert("RGB"), size)
            shifted = Image.merge("RGB", base.split()[seed % 3 :] + base.split()[: seed % 3])
            img = Image.blend(shifted, pattern.convert("RGB"), 0.25)
        if request.images:
            info = request.images[0].info
            cover = inherited_band((info.width, info.height), size)
        _caption(img, self._lines(request, seed, size), cover)
        return img

    def _render_edit(self, request: ImageRequest, pattern: Image.Image, transparent: bool) -> Image.Image:
        mode = "RGBA" if transparent else "RGB"
        base = ImageOps.fit(self._input(request).convert(mode), pattern.size)
        for i in range(1, len(request.images)):  # other inputs: thumbnails along the bottom
            thumb = ImageOps.contain(self._input(request, i).convert(mode), (pattern.width // 8, pattern.height // 8))
            base.paste(thumb, ((i - 1) * (pattern.width // 8), pattern.height - thumb.height))
        if request.mask is None:
            return Image.blend(base, pattern.convert(mode), 0.5)
        mask = decode_input(request.mask.data, request.mask.field, max_pixels=self.context.max_image_pixels).convert("RGBA")
        # OpenAI's convention: fully transparent mask pixels mark the area to edit.
        editable = mask.getchannel("A").point(lambda a: 255 if a == 0 else 0)
        editable = editable.resize(pattern.size, Image.Resampling.NEAREST)
        base.paste(pattern.convert(mode), (0, 0), editable)
        return base

    def _image(self, request: ImageRequest, seed: int) -> GeneratedImage:
        fmt, compressed = self._format(request)
        img = self._render(request, seed)
        return GeneratedImage(encode(img, fmt, request.output_compression), fmt, compressed=compressed)

    def _meta(self, request: ImageRequest) -> ImageMeta:
        quality = request.quality if request.quality in ("low", "medium", "high") else "medium"
        background = "transparent" if request.background == "transparent" else "opaque"
        return ImageMeta(quality=quality, background=background)

    async def _one(self, request: ImageRequest, seed: int) -> GeneratedImage:
        if self.options.delay_seconds:
            await asyncio.sleep(self.options.delay_seconds)
        return await asyncio.to_thread(self._image, request, seed)

    # -- the contract ------------------------------------------------------

    async def run(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        seed = self._seed(request)
        images = [await self._one(request, seed + i) for i in range(request.n)]
        return ProviderResult(images, meta=self._meta(request))

    generate = edit = variation = run

    async def stream(self, request: ImageRequest, deployment: Deployment) -> AsyncIterator[StreamItem]:
        seed = self._seed(request)
        fmt, compressed = self._format(request)
        for index in range(request.partial_images):
            # A partial image: the final render, coarsely pixelated.
            img = await asyncio.to_thread(self._render, request, seed)
            factor = 2 ** (request.partial_images - index + 2)
            small = img.resize((max(1, img.width // factor), max(1, img.height // factor)), Image.Resampling.BILINEAR)
            coarse = small.resize(img.size, Image.Resampling.NEAREST)
            data = await asyncio.to_thread(encode, coarse, fmt, request.output_compression)
            yield PartialImage(index, GeneratedImage(data, fmt, compressed=compressed), self._meta(request))
        async for completed in super().stream(request, deployment):
            yield completed
