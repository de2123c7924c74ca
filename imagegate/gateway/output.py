"""Post-processing every provider's images go through: make each one the
format, size and compression the client asked for (off the event loop), and
turn provider usage into the response's ``usage``.

The common case is an image that already matches: then only its header is
read (from the first few KB, even of base64 text) and the image object passes
through untouched, so its bytes are never decoded or re-encoded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from imagegate.contract.catalog import parse_size
from imagegate.contract.requests import ImageRequest
from imagegate.contract.responses import ImageUsage, InputTokensDetails, OutputTokensDetails
from imagegate.errors import UpstreamError
from imagegate.imaging.convert import Target, conform, matches
from imagegate.imaging.probe import ImageInfo, ImageProbeError, probe
from imagegate.providers.base import GeneratedImage, Usage


@dataclass(frozen=True, slots=True)
class Shaped:
    image: GeneratedImage
    width: int
    height: int
    resized: bool = False  # the gateway changed the provider's dimensions

    @property
    def format(self) -> str:
        return self.image.format

    @property
    def size_str(self) -> str:
        return f"{self.width}x{self.height}"


def _target(request: ImageRequest, image: GeneratedImage) -> Target:
    accepts_format = "output_format" in request.spec.accepts
    fmt = request.output_format if accepts_format else (image.format if image.format in ("png", "jpeg", "webp") else "png")
    compression = None if image.compressed else request.output_compression
    return Target(
        format=fmt,
        compression=compression,
        # Only a size the client asked for is enforced; otherwise the provider's stands.
        size=parse_size(request.params.size) if request.params.size else None,
        transparent=request.background == "transparent",
    )


def _header(image: GeneratedImage, max_pixels: int) -> ImageInfo:
    try:
        return probe(image.head(), max_pixels=max_pixels, verify=False)
    except ImageProbeError as exc:
        if exc.code == "image_too_large":
            raise
        # a header beyond the first KB (a JPEG with large metadata): read it all
        return probe(image.data, max_pixels=max_pixels, verify=False)


def _shape_one(request: ImageRequest, image: GeneratedImage, max_pixels: int) -> Shaped:
    target = _target(request, image)
    try:
        info = _header(image, max_pixels)
        if matches(info, target):
            return Shaped(image, info.width, info.height)
        data, (width, height), resized = conform(image.data, target, max_pixels=max_pixels)
    except ImageProbeError as exc:
        raise UpstreamError(f"The provider returned an unusable image: {exc}.", code="invalid_upstream_image") from exc
    return Shaped(image.replace(data, target.format), width, height, resized)


async def shape_images(request: ImageRequest, images: Sequence[GeneratedImage], max_pixels: int) -> list[Shaped]:
    return list(await asyncio.gather(*(asyncio.to_thread(_shape_one, request, img, max_pixels) for img in images)))


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
