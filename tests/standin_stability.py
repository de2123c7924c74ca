"""A stand-in Stability AI REST v2beta Stable Image API on loopback.

Protocol, as Stability documents it:

* https://platform.stability.ai/docs/api-reference (OpenAPI:
  https://api.stability.ai/v2beta/openapi.json, vendored in
  https://github.com/tryAGI/StabilityAI/blob/main/src/libs/StabilityAI/openapi.yaml) -
  ``POST /v2beta/stable-image/generate/{ultra,core,sd3}`` and
  ``/v2beta/stable-image/edit/{inpaint,outpaint,erase,search-and-replace,search-and-recolor,remove-background}``;
  ``authorization: Bearer <key>``; the body "must be multipart/form-data";
  ``accept: image/*`` answers the image's bytes in the asked
  ``output_format`` with headers ``finish-reason`` (``SUCCESS`` |
  ``CONTENT_FILTERED``) and ``seed``; ``aspect_ratio`` one of 16:9 1:1 21:9
  2:3 3:2 4:5 5:4 9:16 9:21; ``seed`` 0..4294967294; sd3's ``model`` and
  ``mode`` (``image-to-image`` needs ``image`` and ``strength``); inpaint's
  and erase's ``mask`` (black = keep, white = repaint); outpaint's
  ``left``/``right``/``up``/``down`` (0..2000), at least one non-zero;
  search-and-replace's ``search_prompt``, search-and-recolor's
  ``select_prompt``; remove-background's ``output_format`` png|webp.
* Errors are ``{"id", "name", "errors": [...]}`` (400 ``bad_request``, 403
  ``content_moderation``, 413 ``payload_too_large``, 422, 429, 500); "This
  API is rate-limited to 150 requests every 10 seconds ... you will receive
  a 429 response and be timed out for 60 seconds".

Where the documents are silent the stand-in chooses, and says so: a field a
method does not take is a 400 ``bad_request`` naming it, so a provider that
sends junk is caught (Stability's own handling of unknown fields is not
documented); any accept other than ``image/*`` is a 400 (the provider must
ask for bytes); a wrong key is a 401 ``unauthorized``. Images are small
(about 64x64 pixels' worth) but real, at the ratio asked (an edit: the
input's size; outpaint: grown by the sides asked). A 429 carries no
Retry-After unless scripted.

Prompts containing a trigger answer as Stability may: ``[filtered]``
(200, ``finish-reason: CONTENT_FILTERED``, a blurred image), ``[moderated]``
(403 ``content_moderation``), ``[too-large]`` (413), ``[invalid]`` (422),
``[busy]`` (429), ``[crash]`` (500), ``[no-credits]`` (402), ``[bad-ratio]``
(400 naming ``aspect_ratio``), ``[error]`` (200 with ``finish-reason:
ERROR``). A scripted :class:`Fault` answers the next call instead.
"""

from __future__ import annotations

import io
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageFilter
from standin_http import Handler, StandInServer, multipart_parts

KEY = "sk-stability-standin-0123456789abcdef"
PREFIX = "/v2beta/stable-image/"
RATIOS = {"16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21"}
STYLES = {
    "3d-model", "analog-film", "anime", "cinematic", "comic-book", "digital-art", "enhance", "fantasy-art",
    "isometric", "line-art", "low-poly", "modeling-compound", "neon-punk", "origami", "photographic", "pixel-art",
    "tile-texture",
}  # fmt: skip
COMMON = {"prompt", "negative_prompt", "seed", "output_format", "style_preset"}
FIELDS = {
    "generate/ultra": COMMON | {"aspect_ratio", "image", "strength"},
    "generate/core": COMMON | {"aspect_ratio"},
    "generate/sd3": COMMON | {"aspect_ratio", "model", "mode", "image", "strength", "cfg_scale"},
    "edit/inpaint": COMMON | {"image", "mask", "grow_mask"},
    "edit/outpaint": (COMMON - {"negative_prompt"}) | {"image", "left", "right", "up", "down", "creativity"},
    "edit/erase": {"image", "mask", "grow_mask", "seed", "output_format"},
    "edit/search-and-replace": COMMON | {"image", "search_prompt", "grow_mask"},
    "edit/search-and-recolor": COMMON | {"image", "select_prompt", "grow_mask"},
    "edit/remove-background": {"image", "output_format"},
}
SD3_MODELS = {"sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sd3.5-flash"}
PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
TRIGGERS = ("filtered", "moderated", "too-large", "invalid", "busy", "crash", "no-credits", "bad-ratio", "error")


@dataclass
class Received:
    path: str  # under /v2beta/stable-image/, e.g. "generate/core"
    headers: dict[str, str]
    fields: dict[str, str] = field(default_factory=dict)  # the text parts
    files: dict[str, bytes] = field(default_factory=dict)  # the file parts (image, mask)
    file_names: dict[str, str | None] = field(default_factory=dict)
    multipart: bool = False


@dataclass
class Fault:
    """The answer to the next call instead of Stability's: an error body, or
    ``body`` as it is (an upstream answering 200 with something unusable)."""

    status: int
    name: str
    errors: list[str]
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


class Refusal(Exception):
    def __init__(self, status: int, name: str, *errors: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(errors[0])
        self.status, self.name, self.errors, self.headers = status, name, list(errors), headers or {}


def at_ratio(ratio: str, pixels: int = 4096) -> tuple[int, int]:
    w, h = (int(v) for v in ratio.split(":"))
    width = round(math.sqrt(pixels * w / h))
    return width, round(width * h / w)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, PIL_FORMAT[fmt])
    return buf.getvalue()


class StabilityStandIn(StandInServer[Received, Fault]):
    def __init__(self) -> None:
        standin = self

        class StabilityHandler(Handler):
            def do_POST(self) -> None:  # noqa: N802
                standin.on_post(self)

        super().__init__(StabilityHandler, "")

    def calls(self, path: str | None = None) -> list[Received]:
        return [r for r in self.received if path is None or r.path == path]

    def on_post(self, handler: Handler) -> None:
        headers = handler.header_map()
        body = handler.read_body()
        path = handler.path.removeprefix(PREFIX) if handler.path.startswith(PREFIX) else handler.path
        rec = Received(path, headers)
        ctype = headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            rec.multipart = True
            for part in multipart_parts(ctype, body):
                name = part.get_param("name", header="content-disposition")
                filename = part.get_filename()
                payload = part.get_payload(decode=True)
                assert isinstance(name, str) and isinstance(payload, bytes)
                if filename is None:
                    rec.fields[name] = payload.decode("utf-8")
                else:
                    rec.files[name], rec.file_names[name] = payload, filename
        fault = self.record(rec)
        if fault is not None and fault.body is not None:
            handler._send(fault.status, fault.body, "image/png", fault.headers)
            return
        try:
            if fault is not None:
                raise Refusal(fault.status, fault.name, *fault.errors, headers=fault.headers)
            image, extra = self.answer(rec)
        except Refusal as exc:
            payload = {"id": uuid.uuid4().hex, "name": exc.name, "errors": exc.errors}
            handler.send_json(exc.status, payload, exc.headers)
            return
        handler._send(200, image, f"image/{rec.fields.get('output_format', 'png')}", extra)

    # -- Stability's checks, then the image --------------------------------------------

    def answer(self, rec: Received) -> tuple[bytes, dict[str, str]]:
        if rec.headers.get("authorization") != f"Bearer {KEY}":
            raise Refusal(401, "unauthorized", "authorization: invalid or missing API key")
        if rec.path not in FIELDS:
            raise Refusal(404, "not_found", f"{rec.path}: no such endpoint")
        if not rec.multipart:
            raise Refusal(400, "bad_request", "content-type: must be multipart/form-data")
        if rec.headers.get("accept") != "image/*":
            raise Refusal(400, "bad_request", "accept: this stand-in answers image/* only")
        f = rec.fields
        unknown = sorted((set(f) | set(rec.files)) - FIELDS[rec.path])
        if unknown:
            raise Refusal(400, "bad_request", f"{unknown[0]}: unknown field for {rec.path}")
        prompt = f.get("prompt", "")
        self._trigger(prompt)
        self._check(rec)
        fmt = f.get("output_format", "png")
        seed = int(f.get("seed", "0")) or 12345
        img = self._image(rec)
        headers = {"finish-reason": "SUCCESS", "seed": str(seed)}
        if "[filtered]" in prompt:
            img, headers["finish-reason"] = img.filter(ImageFilter.GaussianBlur(8)), "CONTENT_FILTERED"
        if "[error]" in prompt:
            headers["finish-reason"] = "ERROR"
        return encode(img, fmt), headers

    def _trigger(self, prompt: str) -> None:
        if "[moderated]" in prompt:
            raise Refusal(403, "content_moderation", "Your request was flagged by our content moderation system.")
        if "[public-figure]" in prompt:
            raise Refusal(422, "public_figure", "Our system detected the likeness of a public figure in your image.")
        if "[too-large]" in prompt:
            raise Refusal(413, "payload_too_large", "body: payloads cannot be larger than 10MiB in size")
        if "[invalid]" in prompt:
            raise Refusal(422, "invalid_language", "prompt: English is the only supported language for this service.")
        if "[busy]" in prompt:
            raise Refusal(429, "rate_limit_exceeded", "You have exceeded the rate limit of 150 requests within a 10 second "
                          "period, and have been timed out for 60 seconds.")  # fmt: skip
        if "[crash]" in prompt:
            raise Refusal(500, "internal_error", "An unexpected server error has occurred, please try again later.")
        if "[no-credits]" in prompt:
            raise Refusal(402, "payment_required", "You lack sufficient credits to make this request.")
        if "[bad-ratio]" in prompt:
            raise Refusal(400, "bad_request", "aspect_ratio: must be one of 16:9, 1:1, 21:9, 2:3, 3:2, 4:5, 5:4, 9:16, 9:21")

    def _check(self, rec: Received) -> None:
        f, path = rec.fields, rec.path
        bad = lambda name, why: Refusal(400, "bad_request", f"{name}: {why}")  # noqa: E731
        if path in ("edit/erase", "edit/remove-background"):
            if "prompt" in f:
                raise bad("prompt", "unknown field")
        elif path != "edit/outpaint" and not f.get("prompt"):
            raise bad("prompt", "is required")
        if f.get("aspect_ratio", "1:1") not in RATIOS:
            raise bad("aspect_ratio", f"must be one of {', '.join(sorted(RATIOS))}")
        if f.get("style_preset", "enhance") not in STYLES:
            raise bad("style_preset", "unknown style")
        if not 0 <= int(f.get("seed", "0")) <= 4294967294:
            raise bad("seed", "must be between 0 and 4294967294")
        allowed = ("png", "webp") if path == "edit/remove-background" else ("png", "jpeg", "webp")
        if f.get("output_format", "png") not in allowed:
            raise bad("output_format", f"must be one of {', '.join(allowed)}")
        if path.startswith("edit/") and "image" not in rec.files:
            raise bad("image", "is required")
        if path == "generate/sd3":
            if f.get("model") not in SD3_MODELS:
                raise bad("model", f"must be one of {', '.join(sorted(SD3_MODELS))}")
            if f.get("mode", "text-to-image") == "image-to-image":
                if "image" not in rec.files or "strength" not in f or "aspect_ratio" in f:
                    raise bad("mode", "image-to-image needs image and strength, and takes no aspect_ratio")
            elif "image" in rec.files or "strength" in f:
                raise bad("image", "only valid for image-to-image requests")
        if path == "generate/ultra" and ("image" in rec.files) != ("strength" in f):
            raise bad("strength", "is required when image is provided")
        if path == "edit/outpaint" and not any(int(f.get(s, "0")) for s in ("left", "right", "up", "down")):
            raise bad("left", "at least one outpaint direction must be non-zero")
        for name in (
            ("search_prompt",)
            if path == "edit/search-and-replace"
            else ("select_prompt",)
            if path == "edit/search-and-recolor"
            else ()
        ):
            if not f.get(name):
                raise bad(name, "is required")
        if "mask" in rec.files:
            mask, image = Image.open(io.BytesIO(rec.files["mask"])), Image.open(io.BytesIO(rec.files["image"]))
            if mask.mode != "L" or mask.size != image.size or {v for _, v in mask.getcolors() or []} - {0, 255}:
                raise bad("mask", "this stand-in takes a black and white (L) mask of the image's size")

    def _image(self, rec: Received) -> Image.Image:
        if "image" in rec.files:
            src = Image.open(io.BytesIO(rec.files["image"]))
            width, height = src.size
            f = rec.fields
            width += int(f.get("left", "0")) + int(f.get("right", "0"))
            height += int(f.get("up", "0")) + int(f.get("down", "0"))
            size = (width, height)
        else:
            size = at_ratio(rec.fields.get("aspect_ratio", "1:1"))
        if rec.path == "edit/remove-background":
            img = Image.new("RGBA", size, (0, 0, 0, 0))
            img.paste((200, 80, 40, 255), (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
            return img
        return Image.new("RGB", size, (60, 110, 170))


def error_body(body: bytes) -> dict[str, Any]:
    payload = json.loads(body)
    assert isinstance(payload, dict)
    return payload
