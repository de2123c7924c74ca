"""OpenAI ``size`` to the resolution a local model renders at.

Diffusion models are trained at one pixel count (512x512 for SD 1.5,
1024x1024 for SDXL); they draw well near that area and badly far from it.
So a request renders at the model's native area with the asked aspect ratio
(rounded to the model's size multiple), and the gateway's post-processing
then resizes to the exact size asked for. A size that is already native
(SDXL's 1152x896, say) renders as is.
"""

from __future__ import annotations

import math


def _round(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def render_size(asked: tuple[int, int] | None, input_size: tuple[int, int] | None, native: int, multiple: int) -> tuple[int, int]:
    """The (width, height) to render: ``asked`` is the client's size (None for
    ``auto``), ``input_size`` the input image's (edits, variations), which
    gives ``auto`` its aspect ratio."""
    area = native * native
    if asked is not None:
        width, height = asked
        if width % multiple == 0 and height % multiple == 0 and 0.8 <= width * height / area <= 1.25:
            return width, height
    else:
        width, height = input_size or (native, native)
    aspect = width / height
    render_w = math.sqrt(area * aspect)
    return _round(render_w, multiple), _round(render_w / aspect, multiple)
