"""Make an image what the client asked for: format, compression, size.

:func:`conform` returns the input bytes untouched when they already match, so
the common case costs a header read and no re-encode. CPU work: call off the
event loop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps

from imagegate.imaging.probe import ImageInfo, decode, probe

_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True, slots=True)
class Target:
    format: str  # png | jpeg | webp
    compression: int | None = None  # 0-100, jpeg/webp only; None = encoder default
    size: tuple[int, int] | None = None  # None = keep
    transparent: bool = False  # keep alpha (png/webp); False flattens nothing itself


def encode(img: Image.Image, fmt: str, compression: int | None = None) -> bytes:
    """Encode ``img`` as png/jpeg/webp. ``compression`` follows OpenAI's
    ``output_compression``: 100 is best quality, lower is smaller."""
    out = io.BytesIO()
    if fmt == "jpeg":
        if img.mode not in ("RGB", "L"):
            img = flatten(img)
        quality = 95 if compression is None else max(1, min(100, compression))
        img.save(out, "JPEG", quality=quality, optimize=False)
    elif fmt == "webp":
        if img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
        quality = 90 if compression is None else max(0, min(100, compression))
        img.save(out, "WEBP", quality=quality, method=4)
    elif fmt == "png":
        if img.mode not in ("RGB", "RGBA", "L", "LA", "P"):
            img = img.convert("RGBA")
        img.save(out, "PNG", compress_level=6)
    else:
        raise ValueError(f"cannot encode {fmt!r}")
    return out.getvalue()


def flatten(img: Image.Image, color: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Composite onto an opaque background (for formats without alpha)."""
    rgba = img.convert("RGBA")
    base = Image.new("RGB", rgba.size, color)
    base.paste(rgba, mask=rgba.getchannel("A"))
    return base


def matches(info: ImageInfo, target: Target) -> bool:
    """Whether an image already is what the target asks (no work to do).
    An asked compression level always means re-encoding: the gateway cannot
    tell what level an image was encoded at."""
    size_ok = target.size is None or (info.width, info.height) == target.size
    return info.format == target.format and size_ok and target.compression is None


def conform(data: bytes, target: Target, *, max_pixels: int) -> tuple[bytes, tuple[int, int], bool]:
    """Return ``(bytes, (width, height), resized)`` in the target format and size.

    The bytes come back unchanged when format and size already match and no
    compression level was asked for (re-encoding at the same settings would
    only cost time and quality)."""
    info = probe(data, max_pixels=max_pixels, verify=False)
    if matches(info, target):
        return data, (info.width, info.height), False
    img = decode(data, max_pixels=max_pixels)
    resized = target.size is not None and img.size != target.size
    if resized:
        img = ImageOps.fit(img, target.size, Image.Resampling.LANCZOS)
    if not target.transparent and target.format != "png" and img.mode in ("RGBA", "LA", "P"):
        img = flatten(img)
    return encode(img, target.format, target.compression), img.size, resized
