"""Make an image what the client asked for: format, compression, size.

:func:`conform` returns the input bytes untouched when they already match, so
the common case costs a header read and no re-encode. CPU work: call off the
event loop.

An image of another aspect ratio reaches the asked size one of two ways
(``Target.fit``): ``crop`` scales it to cover the size and cuts the centre
out; ``pad`` scales it to fit inside and fills the rest (letterbox) with
``Target.pad_color``: an RGBA colour (alpha 0 is transparent), or ``None``
for the mean colour of the image's edge. Of the same aspect ratio, it is
only scaled.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, ImageStat

from imagegate.imaging.probe import ImageInfo, decode, probe

_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True, slots=True)
class Target:
    format: str  # png | jpeg | webp
    compression: int | None = None  # 0-100, jpeg/webp only; None = encoder default
    size: tuple[int, int] | None = None  # None = keep
    transparent: bool = False  # keep alpha (png/webp); False flattens nothing itself
    fit: str = "crop"  # another aspect ratio: crop | pad
    pad_color: tuple[int, int, int, int] | None = None  # pad: RGBA (alpha 0: transparent); None: the edge's mean


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
    padded = False
    if target.size is not None and resized:
        padded = target.fit == "pad" and not same_aspect(img.size, target.size)
        img = pad(img, target.size, target.pad_color) if padded else ImageOps.fit(img, target.size, Image.Resampling.LANCZOS)
    clear_padding = padded and target.pad_color is not None and target.pad_color[3] < 255
    keep_alpha = target.transparent or target.format == "png" or (clear_padding and target.format != "jpeg")
    if not keep_alpha and img.mode in ("RGBA", "LA", "P"):
        img = flatten(img)
    return encode(img, target.format, target.compression), img.size, resized


def same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether scaling ``a`` to ``b`` loses or adds under one pixel on either axis."""
    return abs(a[0] * b[1] - a[1] * b[0]) < max(a[0] * b[1], a[1] * b[0]) / min(b)


def edge_color(img: Image.Image, size: tuple[int, int]) -> tuple[int, int, int]:
    """The mean colour of the image's edges that padding to ``size`` will
    continue (top and bottom for bars above and below, else left and right),
    over a strip of about 1/32 of the image."""
    w, h = img.size
    if w * size[1] >= h * size[0]:  # wider than the target: bars above and below
        t = max(1, h // 32)
        boxes = [(0, 0, w, t), (0, h - t, w, h)]
    else:
        t = max(1, w // 32)
        boxes = [(0, 0, t, h), (w - t, 0, w, h)]
    strips = [img.crop(box).convert("RGB") for box in boxes]  # only the strips are converted, not the image
    count = sum(s.width * s.height for s in strips)
    sums = [sum(ImageStat.Stat(s).sum[c] for s in strips) for c in range(3)]
    return (round(sums[0] / count), round(sums[1] / count), round(sums[2] / count))


def pad(img: Image.Image, size: tuple[int, int], color: tuple[int, int, int, int] | None) -> Image.Image:
    """Scale ``img`` to fit inside ``size``, centred, and fill the rest with
    ``color`` (None: the mean colour of the image's edge)."""
    fill = color if color is not None else (*edge_color(img, size), 255)
    has_alpha = img.mode in ("RGBA", "LA", "P") and ("A" in img.getbands() or "transparency" in img.info)
    mode = "RGBA" if fill[3] < 255 or has_alpha else "RGB"
    return ImageOps.pad(img.convert(mode), size, Image.Resampling.LANCZOS, color=fill if mode == "RGBA" else fill[:3])
