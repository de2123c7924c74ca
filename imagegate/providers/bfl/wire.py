"""Black Forest Labs' wire format: the submission body for a typed request,
the answers, and the error bodies (the protocol and its sources are in
``provider.py``'s docstring; the stand-in, ``tests/standin_bfl.py``, cites
the rest).

BFL's models take their fields in four shapes, told apart by the model name:

========== ============================ ============================== =======================
family     models                       size becomes                   input images
========== ============================ ============================== =======================
``kontext`` ``flux-kontext-*``          ``aspect_ratio`` (3:7 to 7:3)  ``input_image``, ``_2``..``_4``
``ultra``   ``flux-pro-1.1-ultra``      ``aspect_ratio`` (9:21 to 21:9) none
``fill``    ``flux-pro-1.0-fill``       nothing (the input's size)     ``image`` + ``mask``
``sized``   FLUX.2, ``flux-pro-1.1``,   ``width``/``height``           ``input_image``, ``_2``..``_8``
            any other name
========== ============================ ============================== =======================
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import orjson
import pybase64

from imagegate.contract.catalog import GENERATIONS, parse_size
from imagegate.contract.requests import ImageRequest
from imagegate.errors import InvalidRequestError
from imagegate.imaging.masks import inpaint_mask
from imagegate.providers.http import ErrorFields, invalid_response, openai_error_fields

Family = Literal["kontext", "ultra", "fill", "sized"]

# Aspect ratios a size maps to, width:height; BFL takes 3:7 to 7:3 (Kontext)
# and 9:21 to 21:9 (Ultra), which is the same range.
RATIOS: tuple[tuple[str, float], ...] = tuple(
    (name, int(name.split(":")[0]) / int(name.split(":")[1]))
    for name in ("1:1", "4:5", "5:4", "3:4", "4:3", "2:3", "3:2", "9:16", "16:9", "1:2", "2:1", "9:21", "21:9")
)
RATIO_MIN, RATIO_MAX = 3 / 7, 7 / 3
_RATIO = re.compile(r"^([1-9][0-9]{0,3}):([1-9][0-9]{0,3})$")
# References a family takes (input_image, input_image_2, ...).
MAX_REFERENCES = {"kontext": 4, "sized": 8}
# A credit is $0.01: 10^7 nano-dollars.
NUSD_PER_CREDIT = 10_000_000
SEED_SPACE = 2**32
# Spec fields this dialect sends (or uses) itself; the gateway's own fields
# come from the catalog entry (gateway_fields).
_MAPPED = frozenset({"model", "prompt", "n", "size", "stream", "output_format"})


def family(model: str) -> Family:
    if model.startswith("flux-kontext"):
        return "kontext"
    if model.startswith("flux-pro-1.1-ultra"):
        return "ultra"
    if model.startswith("flux-pro-1.0-fill"):
        return "fill"
    return "sized"


def nearest_ratio(width: int, height: int) -> str:
    """The ratio of :data:`RATIOS` nearest to ``width:height`` on a log scale."""
    ratio = width / height
    return min(RATIOS, key=lambda item: abs(math.log(ratio / item[1])))[0]


def _checked_ratio(value: object, model: str) -> None:
    match = _RATIO.match(value) if isinstance(value, str) else None
    if match is None or not RATIO_MIN - 1e-9 <= int(match[1]) / int(match[2]) <= RATIO_MAX + 1e-9:
        raise InvalidRequestError(
            f"Invalid value: {value!r} for 'aspect_ratio' with model '{model}': "
            "give WIDTH:HEIGHT between 3:7 and 7:3 (e.g. 16:9).",
            param="aspect_ratio",
            code="invalid_value",
        )


def _unsupported(name: str, model: str) -> InvalidRequestError:
    why = "BFL's API has no such field" if name == "user" else "BFL's API does not take it for this model"
    return InvalidRequestError(
        f"'{name}' is not supported with model '{model}': {why}.", param=name, code="unsupported_parameter"
    )


def request_body(request: ImageRequest, model: str, index: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body of job ``index`` of ``request`` for BFL's ``model``, and
    which client field each body field came from (to name it in BFL's
    refusals). A field the client sent that BFL cannot take is a 400."""
    kind = family(model)
    sent = request.sent()
    for name in sent:
        if name not in _MAPPED and name not in request.spec.gateway_fields and name not in request.extra:
            raise _unsupported(name, request.model)
    body: dict[str, Any] = {"prompt": request.prompt}
    origins: dict[str, str] = {}
    for name, value in request.extra.items():
        if name == "aspect_ratio":
            _checked_ratio(value, request.model)
        body[name] = value
    if isinstance(seed := request.extra.get("seed"), int):  # image i of n gets seed + i: reproducible and distinct
        body["seed"] = (seed + index) % SEED_SPACE
    # The gateway serves png unless asked for jpeg (webp is converted from png).
    body["output_format"] = "jpeg" if getattr(request.params, "output_format", None) == "jpeg" else "png"
    body.update(_shape(request, kind, origins))
    body.update(_images(request, kind, origins))
    return body, origins


def _shape(request: ImageRequest, kind: Family, origins: dict[str, str]) -> dict[str, Any]:
    dims = parse_size(request.params.size) if request.params.size else None
    if dims is None or kind == "fill":  # auto, no size, or Fill (the input's size): BFL's own; the gateway resizes
        return {}
    if kind == "sized":
        origins.update(width="size", height="size")
        return {"width": dims[0], "height": dims[1]}
    if "aspect_ratio" in request.extra:
        raise InvalidRequestError(
            f"'size' and 'aspect_ratio' both set the image's shape for model '{request.model}': send either 'size' "
            "(converted to the nearest aspect ratio BFL takes) or 'aspect_ratio', not both.",
            param="aspect_ratio",
            code="conflicting_parameters",
        )
    ratio = dims[0] / dims[1]
    if not RATIO_MIN - 1e-3 <= ratio <= RATIO_MAX + 1e-3:
        raise InvalidRequestError(
            f"Invalid value: '{request.params.size}' for 'size' with model '{request.model}': "
            "BFL takes aspect ratios from 3:7 to 7:3.",
            param="size",
            code="invalid_value",
        )
    origins["aspect_ratio"] = "size"
    return {"aspect_ratio": nearest_ratio(*dims)}


def _images(request: ImageRequest, kind: Family, origins: dict[str, str]) -> dict[str, Any]:
    if request.endpoint == GENERATIONS:
        return {}
    if kind == "fill":
        image = request.images[0]
        out: dict[str, Any] = {"image": image.b64()}
        origins["image"] = "image"
        if request.mask is not None:
            mask = inpaint_mask(request.mask.data, (image.info.width, image.info.height), request.model)
            out["mask"] = pybase64.b64encode(mask).decode("ascii")
            origins["mask"] = "mask"
        elif not image.info.has_alpha:
            raise InvalidRequestError(
                f"Model '{request.model}' inpaints: send a mask, or an image whose transparent areas say where to edit.",
                param="mask",
                code="missing_mask",
            )
        return out
    if request.mask is not None:
        raise InvalidRequestError(
            f"Model '{request.model}' does not take a mask (no inpainting; flux-pro-1.0-fill does): send the edit without one.",
            param="mask",
            code="unsupported_mask",
        )
    most = MAX_REFERENCES.get(kind, 0)
    if len(request.images) > most:
        raise InvalidRequestError(
            f"Model '{request.model}' takes at most {most} input images, not {len(request.images)}.",
            param="image",
            code="too_many_images",
        )
    out = {}
    for i, image in enumerate(request.images):
        name = "input_image" if i == 0 else f"input_image_{i + 1}"
        out[name] = image.b64()  # BFL takes base64 or a URL
        origins[name] = "image"
    return out


# -- answers ------------------------------------------------------------------------


def parse_json(body: bytes) -> dict[str, Any] | None:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def credits_nusd(cost: object, provider: str) -> int | None:
    """BFL's ``cost`` in credits as nano-dollars; None when the answer states
    none (the catalog's price is the charge). A cost that is not a
    non-negative number is a 502 ``invalid_upstream_response``: guessing
    would charge the client a figure nobody stated."""
    if cost is None:
        return None
    amount = None
    if isinstance(cost, int | float | str) and not isinstance(cost, bool):
        try:
            amount = Decimal(str(cost).strip())
        except InvalidOperation:
            amount = None
    if amount is None or not amount.is_finite() or amount < 0:
        raise invalid_response(provider, f"a submission's cost is not a number of credits ({str(cost)[:40]!r})")
    return int((amount * NUSD_PER_CREDIT).to_integral_value())


# -- error bodies -------------------------------------------------------------------


def error_fields(body: bytes) -> ErrorFields | None:
    """BFL's error bodies: FastAPI's ``{"detail": "..."}`` or
    ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`` (422),
    ``{"error": CODE, "message": ...}``, or OpenAI's envelope."""
    payload = parse_json(body)
    if payload is None:
        return None
    detail = payload.get("detail")
    if isinstance(detail, str) and detail:
        return ErrorFields(detail)
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        parts, param, code = [], None, None
        for item in detail:
            loc = [str(p) for p in item.get("loc") or [] if isinstance(p, str | int)]
            field = [p for p in loc if p != "body"]
            parts.append(f"{'.'.join(field) or 'body'}: {item.get('msg', 'invalid')}")
            if param is None and field:
                param, code = field[0], item.get("type") if isinstance(item.get("type"), str) else None
        return ErrorFields("; ".join(parts), code=code, param=param)
    message, code = payload.get("message"), payload.get("error")
    if isinstance(message, str) and message:
        return ErrorFields(message, code=code if isinstance(code, str) else None)
    return openai_error_fields(body)
