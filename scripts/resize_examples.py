"""Draw the pictures of docs/output.md: a landscape test chart made portrait
by the gateway's own resize code under each ``resize`` setting.

    .venv/bin/python scripts/resize_examples.py   # writes docs/images/resize-*.png
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from imagegate.imaging.convert import Target, conform

OUT = Path(__file__).resolve().parent.parent / "docs" / "images"
SOURCE = (384, 256)  # what the provider made: landscape 3:2
ASKED = (256, 384)  # what the client asked: portrait 2:3


def chart(size: tuple[int, int]) -> Image.Image:
    """A test chart: a grid, a circle that must stay round, and labelled
    edges, so what a resize cuts or adds is plain to see."""
    w, h = size
    img = Image.new("RGB", size, (236, 236, 228))
    draw = ImageDraw.Draw(img)
    bars = [(230, 60, 50), (240, 180, 40), (70, 170, 80), (60, 120, 220), (150, 80, 200), (40, 40, 40)]
    for i, color in enumerate(bars):  # colour bars across the middle band
        draw.rectangle((i * w // len(bars), h // 3, (i + 1) * w // len(bars), 2 * h // 3), fill=color)
    for x in range(0, w, 32):
        draw.line((x, 0, x, h), fill=(170, 170, 160))
    for y in range(0, h, 32):
        draw.line((0, y, w, y), fill=(170, 170, 160))
    r = min(w, h) // 2 - 16
    draw.ellipse((w // 2 - r, h // 2 - r, w // 2 + r, h // 2 + r), outline=(20, 20, 20), width=4)
    draw.rectangle((0, 0, w - 1, h - 1), outline=(90, 90, 90), width=2)
    font = ImageFont.load_default(size=28)
    for text, (x, y) in (("L", (14, h // 2 - 16)), ("R", (w - 34, h // 2 - 16)), ("TOP", (w // 2 - 28, 10))):
        draw.text((x, y), text, fill=(200, 30, 30), font=font)
    return img


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    source = png(chart(SOURCE))
    (OUT / "resize-source.png").write_bytes(source)
    variants = {
        "crop": Target("png", size=ASKED, fit="crop"),
        "pad": Target("png", size=ASKED, fit="pad", pad_color=(0, 0, 0, 0)),  # PNG: transparent bars
        "pad-jpeg": Target("jpeg", size=ASKED, fit="pad", pad_color=None),  # no alpha: the edge's colour
    }
    for name, target in variants.items():
        data, size, _ = conform(source, target, max_pixels=10_000_000)
        assert size == ASKED
        img = Image.open(io.BytesIO(data))
        (OUT / f"resize-{name}.png").write_bytes(png(img))  # PNG in the docs, whatever the answer's format
    print(f"wrote {len(variants) + 1} pictures to {OUT}")


if __name__ == "__main__":
    main()
