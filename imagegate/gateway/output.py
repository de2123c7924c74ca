"""Post-processing every provider's images go through: make each one the
format, size and compression the client asked for (off the event loop), and
turn provider usage into the response's ``usage``.

The common case is an image that already matches: then only its header is
read (from the first few KB, even of base64 text) and the image object passes
through untouched, so its bytes are never decoded or re-encoded.

When a provider's image is not the size the client asked, the model's
``resize`` setting decides (see docs/output.md): ``crop`` (the default) scales
it to cover the size and cuts the centre out, ``pad`` letterboxes it, ``none``
returns it as it is. Every resize is logged (INFO) and reported with the
answer (``Shaped.resize``, the ``x-imagegate-resized`` header).

An SVG (a vector model's answer) passes through untouched, as its bytes:
it is never decoded, resized or converted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from imagegate.contract.catalog import parse_size
from imagegate.contract.requests import ImageRequest
from imagegate.contract.responses import ImageUsage, InputTokensDetails, OutputTokensDetails
from imagegate.contract.results import GeneratedImage, Usage
from imagegate.errors import UpstreamError
from imagegate.imaging.convert import Target, conform, matches, same_aspect
from imagegate.imaging.probe import ImageInfo, ImageProbeError, probe, svg_size

log = logging.getLogger("imagegate.gateway")
RASTER = ("png", "jpeg", "webp")  # what the gateway converts between


@dataclass(frozen=True, slots=True)
class ResizePolicy:
    """A model's ``resize`` and ``pad_color`` settings."""

    mode: str = "crop"  # crop | pad | none
    pad_color: tuple[int, int, int] | None = None  # opaque padding; None: the mean colour of the image's edge

    @classmethod
    def of(cls, mode: str, pad_color: str | None) -> ResizePolicy:
        """From the config's values (``pad_color`` is ``#rrggbb``)."""
        if pad_color is None:
            return cls(mode)
        return cls(mode, (int(pad_color[1:3], 16), int(pad_color[3:5], 16), int(pad_color[5:7], 16)))


@dataclass(frozen=True, slots=True)
class Resize:
    """What the gateway did to a provider's image to make it the asked size."""

    source: tuple[int, int]
    size: tuple[int, int]
    how: str  # crop | pad | scale (same aspect ratio: nothing cut or added)
    transparent_padding: bool = False

    def __str__(self) -> str:  # the x-imagegate-resized header's form
        return f"{self.source[0]}x{self.source[1]}->{self.size[0]}x{self.size[1]}; {self.how}"


@dataclass(frozen=True, slots=True)
class Shaped:
    image: GeneratedImage
    width: int
    height: int
    resize: Resize | None = None  # the gateway changed the provider's dimensions

    @property
    def resized(self) -> bool:
        return self.resize is not None

    @property
    def format(self) -> str:
        return self.image.format

    @property
    def size_str(self) -> str:
        return f"{self.width}x{self.height}"


def _target(request: ImageRequest, image: GeneratedImage, policy: ResizePolicy) -> Target:
    accepts_format = "output_format" in request.spec.accepts
    fmt = request.output_format if accepts_format else (image.format if image.format in RASTER else "png")
    compression = None if image.compressed else request.output_compression
    # Padding is transparent where the answer can carry alpha and the client did not ask for opaque.
    clear = fmt in ("png", "webp") and request.background != "opaque"
    opaque = (*policy.pad_color, 255) if policy.pad_color is not None else None
    return Target(
        format=fmt,
        compression=compression,
        # Only a size the client asked for is enforced; otherwise the provider's stands.
        size=parse_size(request.params.size) if request.params.size and policy.mode != "none" else None,
        transparent=request.background == "transparent",
        fit="pad" if policy.mode == "pad" else "crop",
        pad_color=(0, 0, 0, 0) if clear else opaque,
    )


def _header(image: GeneratedImage, max_pixels: int) -> ImageInfo:
    try:
        return probe(image.head(), max_pixels=max_pixels, verify=False)
    except ImageProbeError as exc:
        if exc.code == "image_too_large":
            raise
        # a header beyond the first KB (a JPEG with large metadata): read it all
        return probe(image.data, max_pixels=max_pixels, verify=False)


def _vector(request: ImageRequest, image: GeneratedImage) -> Shaped:
    """An SVG passes through untouched (never decoded, resized or converted),
    for a model whose entry lists svg and a client that asked svg or nothing."""
    asked = getattr(request.params, "output_format", None)
    if "svg" not in request.spec.output_formats or asked not in (None, "svg"):
        raise UpstreamError(
            f"The provider returned an SVG image, which the gateway does not convert to {asked or 'a raster format'}.",
            code="invalid_upstream_image",
        )
    width, height = svg_size(image.head(4096)) or parse_size(request.size) or (0, 0)
    return Shaped(image, width, height)


def _shape_one(request: ImageRequest, image: GeneratedImage, max_pixels: int, policy: ResizePolicy) -> Shaped:
    if image.format == "svg":
        return _vector(request, image)
    target = _target(request, image, policy)
    if target.format not in RASTER:  # svg asked, a raster image came: the gateway does not vectorise
        raise UpstreamError(
            f"The provider returned a {image.format.upper()} image, not the {target.format.upper()} asked for.",
            code="invalid_upstream_image",
        )
    try:
        info = _header(image, max_pixels)
        if matches(info, target):
            return Shaped(image, info.width, info.height)
        data, (width, height), resized = conform(image.data, target, max_pixels=max_pixels)
    except ImageProbeError as exc:
        raise UpstreamError(f"The provider returned an unusable image: {exc}.", code="invalid_upstream_image") from exc
    resize = None
    if resized:
        source = (info.width, info.height)
        how = "scale" if same_aspect(source, (width, height)) else target.fit
        resize = Resize(source, (width, height), how, how == "pad" and target.pad_color is not None and target.pad_color[3] == 0)
    return Shaped(image.replace(data, target.format), width, height, resize)


async def shape_images(
    request: ImageRequest,
    images: Sequence[GeneratedImage],
    max_pixels: int,
    policy: ResizePolicy = ResizePolicy(),
    provider: str = "",
) -> list[Shaped]:
    shaped = list(await asyncio.gather(*(asyncio.to_thread(_shape_one, request, img, max_pixels, policy) for img in images)))
    asked = request.params.size
    for change in dict.fromkeys(str(s.resize) for s in shaped if s.resize):
        log.info("resized the image(s) of %s from %s to the asked size: %s", request.model, provider or "its provider", change)
    if policy.mode == "none" and asked and parse_size(asked):
        for size in dict.fromkeys(s.size_str for s in shaped if s.size_str != asked):
            log.info("%s from %s is %s, not the asked %s: returned as it is (resize: none)", request.model, provider, size, asked)
    return shaped


def usage_out(usage: Usage | None) -> ImageUsage | None:
    if usage is None:
        return None
    output_details = None
    if usage.output_image_tokens is not None or usage.output_text_tokens is not None:
        output_details = OutputTokensDetails(
            image_tokens=usage.output_image_tokens or 0, text_tokens=usage.output_text_tokens or 0
        )
    return ImageUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens,
        input_tokens_details=InputTokensDetails(text_tokens=usage.input_text_tokens, image_tokens=usage.input_image_tokens),
        output_tokens_details=output_details,
    )
