"""Inpainting masks: OpenAI's convention to FLUX Fill's.

OpenAI's ``mask`` is a PNG whose fully transparent pixels say where to edit
(https://platform.openai.com/docs/api-reference/images/createEdit). FLUX.1
Fill, on BFL's API and on fal (``fal-ai/flux-pro/v1/fill``'s ``mask_url``),
takes a black and white image of the input's size: white is inpainted, black
kept (https://docs.bfl.ai/flux_tools/flux_1_fill). Sending OpenAI's mask
as it is would repaint the wrong part (an opaque black mask reads as "keep
everything"), so it is converted.
"""

from __future__ import annotations

import io

from PIL import Image

from imagegate.errors import InvalidRequestError


def inpaint_mask(mask: bytes, image_size: tuple[int, int], model: str) -> bytes:
    """OpenAI's ``mask`` (fully transparent = edit here) as a black and white
    ("L") PNG of the same size, white where to inpaint. A mask of another
    size than the image (``image_size``), or without transparency, is a 400
    naming ``mask``."""
    with Image.open(io.BytesIO(mask)) as src:
        if src.size != image_size:
            raise InvalidRequestError(
                f"The mask is {src.width}x{src.height} and the image {image_size[0]}x{image_size[1]}: "
                f"model '{model}' needs them the same size.",
                param="mask",
                code="invalid_mask",
            )
        if "A" not in src.getbands() and "transparency" not in src.info:
            raise InvalidRequestError(
                "The mask has no alpha channel: its fully transparent areas say where to edit (OpenAI's convention).",
                param="mask",
                code="invalid_mask",
            )
        return white_where_transparent(src)


def white_where_transparent(mask: Image.Image) -> bytes:
    """A grayscale ("L") PNG: white (255) where ``mask`` is fully
    transparent (OpenAI's "edit here"), black elsewhere: the convention of
    FLUX Fill and of Recraft's inpainting."""
    alpha = (mask if mask.mode == "RGBA" else mask.convert("RGBA")).getchannel("A")
    white = alpha.point([255] + [0] * 255)
    out = io.BytesIO()
    white.save(out, "PNG")
    return out.getvalue()


__all__ = ["inpaint_mask", "white_where_transparent"]
