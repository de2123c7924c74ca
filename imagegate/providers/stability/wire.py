"""Stability AI's v2beta wire format: which form fields each method takes,
the multipart body for one call of a typed request, and the error bodies
(the protocol and its sources are in ``provider.py``'s docstring; the
stand-in, ``tests/standin_stability.py``, checks the same field sets).

A model's method is catalog data: its entry's ``wire`` names the ``path``
under ``/v2beta/stable-image/`` (``generate/core``, ``edit/inpaint``, ...)
and, for ``generate/sd3``, Stability's ``model`` (``sd3.5-large``, ...),
checked by :class:`Route` when the config loads.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, model_validator

from imagegate.contract.requests import ImageRequest
from imagegate.contract.rules import GENERATIONS, ModelSpec, parse_size
from imagegate.errors import InvalidRequestError
from imagegate.providers import inputs_map
from imagegate.providers.http import ErrorFields

Path = Literal[
    "generate/ultra",
    "generate/core",
    "generate/sd3",
    "edit/inpaint",
    "edit/outpaint",
    "edit/erase",
    "edit/search-and-replace",
    "edit/search-and-recolor",
    "edit/remove-background",
]
_COMMON = frozenset({"prompt", "negative_prompt", "seed", "output_format", "style_preset"})
# Every form field each method takes (platform.stability.ai/docs/api-reference, v2beta).
FIELDS: dict[str, frozenset[str]] = {
    "generate/ultra": _COMMON | {"aspect_ratio", "image", "strength"},
    "generate/core": _COMMON | {"aspect_ratio"},
    "generate/sd3": _COMMON | {"aspect_ratio", "model", "mode", "image", "strength", "cfg_scale"},
    "edit/inpaint": _COMMON | {"image", "mask", "grow_mask"},
    "edit/outpaint": _COMMON - {"negative_prompt"} | {"image", "left", "right", "up", "down", "creativity"},
    "edit/erase": frozenset({"image", "mask", "grow_mask", "seed", "output_format"}),
    "edit/search-and-replace": _COMMON | {"image", "search_prompt", "grow_mask"},
    "edit/search-and-recolor": _COMMON | {"image", "select_prompt", "grow_mask"},
    "edit/remove-background": frozenset({"image", "output_format"}),
}
# Fields the provider fills itself; a catalog entry may not declare them.
OWN_FIELDS = frozenset({"prompt", "output_format", "model", "mode", "image", "mask"})
# Fields a method cannot do without (besides image and prompt).
REQUIRED = {"edit/search-and-replace": "search_prompt", "edit/search-and-recolor": "select_prompt"}
RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
FORMATS = {"edit/remove-background": ("png", "webp")}
# Methods that take no prompt: the client's (OpenAI's is required) must say so.
NO_PROMPT = frozenset({"edit/erase", "edit/remove-background"})
PROMPT_PLACEHOLDER = "-"
MASKED = frozenset({"edit/inpaint", "edit/erase"})  # methods that take a mask (or the image's alpha)
SEED_MAX = 4294967294  # 0 is "random"
_HANDLED = frozenset({"model", "prompt", "n", "size", "output_format", "user"})
_FIELD_IN_MESSAGE = re.compile(r"^([a-z_]{2,40}):")
USER_HEADER = "stability-client-user-id"  # OpenAI's `user`: "a unique identifier for your end user"


class Route(BaseModel):
    """A catalog entry's ``wire`` facts: the method's path, and Stability's
    ``model`` for ``generate/sd3`` (required there, refused elsewhere)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    model: str | None = None

    @model_validator(mode="after")
    def _model(self) -> Route:
        if (self.path == "generate/sd3") != (self.model is not None):
            raise ValueError("generate/sd3 needs model (sd3.5-large, ...); no other path takes one")
        return self

    @property
    def generates(self) -> bool:
        return self.path.startswith("generate/")


def route_of(spec: ModelSpec) -> Route:
    """The route ``spec.wire`` describes (pydantic's ValidationError, a ValueError, if none)."""
    return Route.model_validate(dict(spec.wire))


@dataclass
class Form:
    """One call's multipart fields (text, then files), the headers it adds,
    and the client field each Stability field came from."""

    text: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, str, bytes, str]] = field(default_factory=list)  # name, filename, bytes, type
    headers: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, str]:
        """The ``multipart/form-data`` body and its Content-Type (always
        multipart, files or not: Stability takes nothing else)."""
        boundary = uuid.uuid4().hex
        parts: list[bytes] = []
        for name, value in self.text.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
            parts.append(value.encode("utf-8") + b"\r\n")
        for name, filename, data, ctype in self.files:
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            parts.append(f"{head}Content-Type: {ctype}\r\n\r\n".encode())
            parts.append(data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _refuse(message: str, param: str, code: str = "unsupported_parameter") -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def seed_for(seed: int, index: int) -> int:
    """Image ``index``'s seed: ``seed + index`` within 1..SEED_MAX (0 stays 0, Stability's "random")."""
    return 0 if seed == 0 else (seed - 1 + index) % SEED_MAX + 1


def nearest_ratio(width: int, height: int) -> str:
    """The ratio of :data:`RATIOS` nearest ``width:height`` on a log scale."""
    return inputs_map.nearest_ratio(width, height, RATIOS)


def form(request: ImageRequest, route: Route, index: int, mask: bytes | None = None) -> Form:
    """The fields of call ``index`` of ``request`` on ``route``; ``mask`` is
    the client's mask already in Stability's convention. A field Stability's
    method cannot take, or a missing one it needs, is a 400 naming it."""
    out, model = Form(), request.model
    takes = FIELDS[route.path]
    for name in request.sent():
        if name not in _HANDLED and name not in request.spec.gateway_fields and name not in request.extra:
            raise _refuse(f"'{name}' is not supported with model '{model}': Stability's API has no such field.", name)
    _prompt(request, route, out)
    if route.path == "generate/sd3":
        out.text["model"] = str(route.model)
        out.text["mode"] = "text-to-image" if request.endpoint == GENERATIONS else "image-to-image"
    for name, value in request.extra.items():
        if name not in takes:  # the catalog entry declares a field the method lacks (check_route refuses that)
            raise _refuse(f"'{name}' is not supported with model '{model}' by Stability's {route.path}.", name)
        if name == "seed" and isinstance(value, int):
            value = seed_for(value, index)
        out.text[name] = _text(value)
        out.origins[name] = name
    _shape(request, route, out)
    _required(request, route)
    fmt = request.params.output_format if hasattr(request.params, "output_format") else None
    formats = FORMATS.get(route.path, ("png", "jpeg", "webp"))
    # The client's format straight from Stability, unless the gateway must
    # compress it (one lossy encoding, not two): then png, converted once.
    asked = fmt if isinstance(fmt, str) and fmt in formats and request.output_compression is None else "png"
    out.text["output_format"] = asked
    if isinstance(user := request.params.user, str):
        if not (user.isascii() and user.isprintable() and len(user) <= 256):
            raise _refuse(
                "Invalid 'user': Stability takes it as a header (stability-client-user-id) of at most 256 printable "
                "ASCII characters.",
                "user",
                "invalid_value",
            )
        out.headers[USER_HEADER] = user
    _inputs(request, route, out, mask)
    return out


def _prompt(request: ImageRequest, route: Route, out: Form) -> None:
    if route.path not in NO_PROMPT:
        out.text["prompt"] = request.prompt
        out.origins["prompt"] = "prompt"
    elif request.prompt != PROMPT_PLACEHOLDER:
        raise _refuse(
            f"Model '{request.model}' takes no prompt (Stability's {route.path} has none, and the gateway drops "
            f"nothing silently): send prompt '{PROMPT_PLACEHOLDER}'.",
            "prompt",
        )


def _shape(request: ImageRequest, route: Route, out: Form) -> None:
    ratio = request.extra.get("aspect_ratio")
    if ratio is not None and ratio not in RATIOS:
        raise _refuse(
            f"Invalid value: {ratio!r} for 'aspect_ratio': one of {', '.join(RATIOS)}.", "aspect_ratio", "invalid_value"
        )
    if not route.generates or request.endpoint != GENERATIONS:
        if ratio is not None:
            raise _refuse(
                f"'aspect_ratio' is for generations with model '{request.model}': an edit keeps its input's shape "
                "(send 'size' to have the gateway resize the result).",
                "aspect_ratio",
            )
        if "strength" not in request.extra and route.generates:
            raise _refuse(
                "Missing required parameter: 'strength' (an edit without a mask is Stability's image to image: how far "
                "the result may move from the input, 0 to 1; Stability documents no default).",
                "strength",
                "missing_required_parameter",
            )
        return
    if "strength" in request.extra:
        raise _refuse("'strength' is for edits (Stability's image to image), not generations.", "strength")
    dims = parse_size(request.params.size) if request.params.size else None
    if dims is None:
        return
    if ratio is not None:
        raise _refuse(
            f"'size' and 'aspect_ratio' both set the image's shape for model '{request.model}': send either 'size' "
            "(converted to the nearest aspect ratio Stability takes) or 'aspect_ratio', not both.",
            "aspect_ratio",
            "conflicting_parameters",
        )
    out.text["aspect_ratio"] = nearest_ratio(*dims)
    out.origins["aspect_ratio"] = "size"


def _required(request: ImageRequest, route: Route) -> None:
    need = REQUIRED.get(route.path)
    if need is not None and not request.extra.get(need):
        raise _refuse(
            f"Missing required parameter: '{need}' (model '{request.model}', Stability's {route.path}).",
            need,
            "missing_required_parameter",
        )
    if route.path == "edit/outpaint" and not any(request.extra.get(side) for side in ("left", "right", "up", "down")):
        raise _refuse(
            f"Model '{request.model}' outpaints: send at least one of 'left', 'right', 'up', 'down' (pixels, 1 to 2000).",
            "left",
            "missing_required_parameter",
        )


def _inputs(request: ImageRequest, route: Route, out: Form, mask: bytes | None) -> None:
    if request.endpoint == GENERATIONS:
        return
    if len(request.images) != 1:
        raise _refuse(f"Model '{request.model}' takes one input image, not {len(request.images)}.", "image", "too_many_images")
    image = request.images[0]
    ext = "jpg" if image.info.format == "jpeg" else image.info.format
    out.files.append(("image", f"image.{ext}", image.data, image.info.mime_type))
    out.origins["image"] = "image"
    if request.mask is None:
        if route.path in MASKED and not image.info.has_alpha:
            raise _refuse(
                f"Model '{request.model}' needs to know where to edit: send a mask, or an image whose transparent areas mark it.",
                "mask",
                "missing_mask",
            )
        return
    if route.path not in MASKED or mask is None:
        raise _refuse(
            f"Model '{request.model}' takes no mask; inpainting is model 'stability-inpaint' (erasing, 'stability-erase').",
            "mask",
            "unsupported_mask",
        )
    out.files.append(("mask", "mask.png", mask, "image/png"))
    out.origins["mask"] = "mask"


# -- error bodies -------------------------------------------------------------------


def error_fields(body: bytes) -> ErrorFields | None:
    """Stability's error body ``{"id", "name", "errors": [...]}``: the
    messages joined, ``name`` as the code, and the field an error names
    (``"aspect_ratio: must be one of ..."``) as the param."""
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    errors, name = payload.get("errors"), payload.get("name")
    messages = [e for e in errors if isinstance(e, str) and e] if isinstance(errors, list) else []
    if not messages:
        message = payload.get("message")
        if not isinstance(message, str) or not message:
            return None
        messages = [message]
    match = _FIELD_IN_MESSAGE.match(messages[0])
    return ErrorFields(
        "; ".join(messages)[:1000],
        code=name if isinstance(name, str) and name else None,
        param=match[1] if match else None,
    )


def client_param(param: str | None, origins: Mapping[str, str]) -> str | None:
    """Stability's field name as the client's (``aspect_ratio`` from ``size``)."""
    return origins.get(param, param) if param is not None else None


__all__ = ["FIELDS", "RATIOS", "Form", "Route", "error_fields", "form", "nearest_ratio", "route_of", "seed_for"]
