"""Input images checked against a model's input rules.

:func:`check_inputs` is the one check of a request's images and mask against
a model's catalog entry: first validation runs it (through
:func:`load_inputs`, after sniffing the bytes) and so does re-targeting a
request to a fallback model (``validate.retarget``), so a fallback is held to
exactly the rules the first model was. :func:`check_limits`, its cheap part
(counts and byte sizes), also runs before any image is parsed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from imagegate.contract.catalog import MB, VARIATIONS, InputRule, ModelSpec
from imagegate.contract.requests import InputImage
from imagegate.errors import InvalidImageError, InvalidRequestError
from imagegate.imaging.probe import ImageProbeError, probe


def quote_list(values: Sequence[object]) -> str:
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def input_rule(endpoint: str, name: str, spec: ModelSpec) -> InputRule:
    """What model ``name`` takes as input images on ``endpoint``."""
    rule = spec.variation_input if endpoint == VARIATIONS else spec.edit_input
    if rule is None:
        raise InvalidRequestError(f"The model '{name}' does not take input images.", param="model", code="unsupported_model")
    return rule


def check_count(name: str, rule: InputRule, count: int, *, param: str = "image") -> None:
    if not count:
        raise InvalidRequestError(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if count > rule.max_images:
        raise InvalidRequestError(
            f"Too many images: model '{name}' takes at most {rule.max_images}, got {count}.",
            param=param,
            code="too_many_images",
        )


def check_limits(
    endpoint: str, name: str, spec: ModelSpec, images: Sequence[tuple[str, int]], mask_bytes: int | None
) -> InputRule:
    """Counts and byte sizes (``images``: each part's field and size), and
    whether the model takes a mask at all: nothing needs parsing for these."""
    rule = input_rule(endpoint, name, spec)
    check_count(name, rule, len(images))
    for field, size in images:
        if size > rule.max_bytes:
            raise InvalidImageError(
                f"Image '{field}' is {size} bytes; model '{name}' takes images under {rule.max_bytes // MB} MB.",
                param=field,
                code="image_too_large",
            )
    if mask_bytes is not None and not spec.masks:
        raise InvalidRequestError(
            f"Model '{name}' does not take a mask (no inpainting); send the edit without one.",
            param="mask",
            code="unsupported_mask",
        )
    if mask_bytes is not None and mask_bytes > spec.mask_max_bytes:
        raise InvalidImageError(
            f"The mask is {mask_bytes} bytes; model '{name}' takes masks under {spec.mask_max_bytes // MB} MB.",
            param="mask",
            code="image_too_large",
        )
    return rule


def check_inputs(endpoint: str, name: str, spec: ModelSpec, images: Sequence[InputImage], mask: InputImage | None) -> None:
    """Every input rule of model ``name`` for sniffed images and mask: counts,
    byte sizes, formats, square images, the mask's format, alpha and size."""
    sizes = [(image.field, len(image.data)) for image in images]
    rule = check_limits(endpoint, name, spec, sizes, len(mask.data) if mask is not None else None)
    for img in images:
        if img.info.format not in rule.formats:
            raise InvalidImageError(
                f"Invalid image in '{img.field}': the file is {img.info.format.upper()}; model '{name}' takes "
                f"{quote_list(sorted(f.upper() for f in rule.formats))} files.",
                param=img.field,
                code="invalid_image_format",
            )
        if rule.square and img.info.width != img.info.height:
            raise InvalidImageError(
                f"Invalid image in '{img.field}': model '{name}' needs a square image, got {img.info.width}x{img.info.height}.",
                param=img.field,
                code="invalid_image_dimensions",
            )
    if mask is not None:
        _check_mask(mask, images[0])


def _check_mask(mask: InputImage, first: InputImage) -> None:
    if mask.info.format != "png":
        raise InvalidImageError(
            f"Invalid mask: it must be a PNG file, got {mask.info.format.upper()}.", param="mask", code="invalid_image_format"
        )
    if not mask.info.has_alpha:
        raise InvalidImageError(
            "Invalid mask: it must have an alpha channel (fully transparent pixels mark the area to edit).",
            param="mask",
            code="invalid_mask",
        )
    if (mask.info.width, mask.info.height) != (first.info.width, first.info.height):
        raise InvalidImageError(
            f"Invalid mask: it is {mask.info.width}x{mask.info.height} but the image is "
            f"{first.info.width}x{first.info.height}; they must have the same dimensions.",
            param="mask",
            code="invalid_image_dimensions",
        )


def _probe_all(parts: Sequence[tuple[str, bytes]], max_pixels: int) -> list[InputImage]:
    out = []
    for field, data in parts:
        try:
            info = probe(data, max_pixels=max_pixels)
        except ImageProbeError as exc:
            raise InvalidImageError(f"Invalid image in '{field}': {exc}.", param=field, code=exc.code) from exc
        out.append(InputImage(data, info, field))
    return out


async def load_inputs(
    endpoint: str,
    name: str,
    spec: ModelSpec,
    images: Sequence[tuple[str, bytes]],
    mask: tuple[str, bytes] | None,
    *,
    max_pixels: int,
) -> tuple[tuple[InputImage, ...], InputImage | None]:
    """Check counts and sizes, then sniff every input image (off the event
    loop) and check it with :func:`check_inputs`."""
    check_limits(endpoint, name, spec, [(field, len(data)) for field, data in images], len(mask[1]) if mask else None)
    parts = list(images) + ([mask] if mask is not None else [])
    probed = await asyncio.to_thread(_probe_all, parts, max_pixels)
    inputs = tuple(probed[: len(images)])
    mask_image = probed[-1] if mask is not None else None
    check_inputs(endpoint, name, spec, inputs, mask_image)
    return inputs, mask_image
