"""A stand-in Recraft API upstream on loopback.

Protocol, as Recraft documents it:

* Endpoints and their fields: https://www.recraft.ai/docs/api-reference/endpoints
  (``POST /v1/images/generations``: JSON with ``prompt``, ``n`` 1-6, ``model``,
  ``style``/``substyle``/``style_id`` (V2/V3; ``style`` and ``style_id`` are
  mutually exclusive), ``size`` as ``WxH`` or ``w:h``, ``negative_prompt``
  (V2/V3), ``response_format`` ``url`` (default) or ``b64_json``,
  ``text_layout`` (V3), ``controls``), and Recraft's OpenAPI document as
  vendored by an SDK generated from it,
  https://github.com/tryAGI/Recraft/blob/main/src/libs/Recraft/openapi.yaml
  (``GenerateImageRequest``, ``ImageToImageRequest`` with ``image``,
  ``prompt`` and ``strength`` required, ``TransformImageWithMaskRequest``,
  ``UserControls``, ``TextLayoutItem``, ``ImageStyle``,
  ``GenerateImageResponse``: ``{created, credits, data: [{image_id, url |
  b64_json, revised_prompt}]}``).
* Image to image and inpainting are multipart (``POST /v1/images/imageToImage``,
  ``POST /v1/images/inpaint``): https://www.recraft.ai/docs/api-reference/tools/image-to-image
  (``strength`` in [0, 1]), https://www.recraft.ai/docs/api-reference/tools/inpainting
  (the mask is grayscale, the image's size, white (255) regenerated, black (0)
  kept, no other value); Recraft's own client sends ``controls`` as a part
  holding JSON (``application/json``): https://github.com/recraft-ai/mcp-recraft-server
  ``src/api/apis/ImageApi.ts``.
* Sizes and prompt lengths per model: https://www.recraft.ai/docs/api-reference/appendix.
  Models whose name ends in ``_vector`` answer SVG:
  https://www.recraft.ai/docs/api-reference/models/overview.
* Results: ``url`` answers link a temporary file (about 24 hours),
  https://www.recraft.ai/docs/api-reference/image-inputs-and-results.
* Errors: https://www.recraft.ai/docs/api-reference/error-handling - a non-2xx
  status whose body is plain text or JSON (401 ``text/plain`` ``request
  unauthorized`` for a missing or bad token, 404 ``text/plain`` ``404 page
  not found`` for an unknown path). The JSON keys are not documented; this
  stand-in answers ``{"code", "message"}``, the keys Recraft clients read.
* Prices (``credits``, API units at 1000 per USD): https://www.recraft.ai/docs/api-reference/pricing.

It records every request and answers like Recraft or with the next scripted
:class:`Fault` (an error status with a text or JSON body, garbage, a reset, a
hang, a JSON body of the test's own). Images are real: PNG at the documented
size, SVG for vector models; ``url`` answers are served by ``GET /files/...``
on the same server, which records the headers it was fetched with.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from standin_http import Handler, StandInServer, multipart_parts

# https://www.recraft.ai/docs/api-reference/appendix: aspect ratio -> size, per model family.
ASPECTS = ["1:1", "2:1", "1:2", "3:2", "2:3", "4:3", "3:4", "5:4", "4:5", "6:10", "14:10", "10:14", "16:9", "9:16"]
_V3_SIZES = ["1024x1024", "2048x1024", "1024x2048", "1536x1024", "1024x1536", "1365x1024", "1024x1365", "1280x1024",
             "1024x1280", "1024x1707", "1434x1024", "1024x1434", "1820x1024", "1024x1820"]  # fmt: skip
_V4_SIZES = ["1024x1024", "1536x768", "768x1536", "1280x832", "832x1280", "1216x896", "896x1216", "1152x896",
             "896x1152", "832x1344", "1280x896", "896x1280", "1344x768", "768x1344"]  # fmt: skip
_V4_PRO_SIZES = ["2048x2048", "3072x1536", "1536x3072", "2560x1664", "1664x2560", "2432x1792", "1792x2432", "2304x1792",
                 "1792x2304", "1664x2688", "2560x1792", "1792x2560", "2688x1536", "1536x2688"]  # fmt: skip
FAMILY_SIZES = {"v2": _V3_SIZES, "v3": _V3_SIZES, "v4": _V4_SIZES, "v4_pro": _V4_PRO_SIZES}
# API units per image (https://www.recraft.ai/docs/api-reference/pricing).
UNITS = {"recraftv2": 22, "recraftv2_vector": 44, "recraftv3": 40, "recraftv3_vector": 80, "recraftv4": 40,
         "recraftv4_vector": 80, "recraftv4_pro": 250, "recraftv4_pro_vector": 300}  # fmt: skip
# Style families, and a few of the style names of the appendix's list of styles.
STYLES = {"any", "realistic_image", "digital_illustration", "vector_illustration", "icon", "logo_raster",
          "Recraft V3 Raw", "Photorealism", "Illustration", "Vector art", "Icon"}  # fmt: skip
PROMPT_MAX = {"v2": 1000, "v3": 1000, "v4": 10000, "v4_pro": 10000}


def family(model: str) -> str:
    base = model.removesuffix("_vector")
    return {"recraftv2": "v2", "recraftv3": "v3", "recraftv4": "v4", "recraftv4_pro": "v4_pro"}[base]


def size_of(model: str, size: str | None) -> tuple[int, int]:
    sizes = FAMILY_SIZES[family(model)]
    chosen = sizes[ASPECTS.index(size)] if size in ASPECTS else (size or sizes[0])
    w, h = chosen.split("x")
    return int(w), int(h)


def png_of(width: int, height: int, color: tuple[int, int, int] = (30, 140, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def svg_of(width: int, height: int) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><rect width="{width}" height="{height}" fill="#1e8c5a"/>'
        f'<circle cx="{width // 2}" cy="{height // 2}" r="{min(width, height) // 4}" fill="#ffd400"/></svg>'
    ).encode()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    field_types: dict[str, str] = field(default_factory=dict)  # a field part's Content-Type, when it had one
    files: list[tuple[str, str, str, bytes]] = field(default_factory=list)  # (field, filename, content type, bytes)

    @property
    def params(self) -> dict[str, Any]:
        """The request's fields as JSON values (a multipart JSON part decoded)."""
        if self.json is not None:
            return self.json
        return {k: json.loads(v) if self.field_types.get(k) == "application/json" else v for k, v in self.fields.items()}


@dataclass
class Fault:
    kind: str  # status | garbage | reset | hang | json
    status: int = 200
    body: Any = None  # status: str (text/plain) or a JSON value; json: the JSON body
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


class Refusal(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class RecraftStandIn(StandInServer[Received, Fault]):
    def __init__(self, token: str | None = None) -> None:
        self.token = token  # when set, requests without "Authorization: Bearer <token>" get 401
        self.fetched: list[Received] = []  # GETs of /files/..., with their headers
        self.files: dict[str, tuple[bytes, str]] = {}
        self.served: list[bytes] = []  # the bytes of every image answered
        standin = self

        class RecraftHandler(Handler):
            def do_GET(self) -> None:  # noqa: N802 - files handed out by url answers
                with standin._lock:
                    standin.fetched.append(Received(self.path, self.header_map()))
                    found = standin.files.get(self.path.removeprefix("/files/"))
                if found is None:
                    self._send(404, b"404 page not found", "text/plain")
                else:
                    self._send(200, *found)

            def do_POST(self) -> None:  # noqa: N802
                body = self.read_body()
                rec = Received(self.path, self.header_map())
                ctype = self.headers.get("Content-Type", "")
                if ctype.startswith("application/json"):
                    rec.json = json.loads(body)
                elif ctype.startswith("multipart/form-data"):
                    _parse_multipart(ctype, body, rec)
                standin.answer(self, rec, standin.record(rec))

        super().__init__(RecraftHandler, "/v1")

    def reset(self) -> None:
        super().reset()
        self.fetched.clear()
        self.served.clear()

    # -- answers ---------------------------------------------------------------

    def answer(self, h: Any, rec: Received, fault: Fault | None) -> None:
        if fault is None:
            self._answer_normally(h, rec)
        elif fault.kind == "status":
            if isinstance(fault.body, str):
                h._send(fault.status, fault.body.encode(), "text/plain; charset=utf-8", fault.headers)
            else:
                h.send_json(fault.status, fault.body, fault.headers)
        elif fault.kind == "json":
            h.send_json(fault.status, fault.body, fault.headers)
        elif fault.kind == "garbage":
            h._send(fault.status, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        elif fault.kind == "reset":
            h.reset_connection()
        elif fault.kind == "hang":
            time.sleep(fault.seconds)
            h.close_connection = True

    def _answer_normally(self, h: Any, rec: Received) -> None:
        if self.token is not None and rec.headers.get("authorization") != f"Bearer {self.token}":
            h._send(401, b"request unauthorized", "text/plain; charset=utf-8")
            return
        route = {"/v1/images/generations": self._generate, "/v1/images/imageToImage": self._image_to_image,
                 "/v1/images/inpaint": self._inpaint}.get(rec.path)  # fmt: skip
        if route is None:
            h._send(404, b"404 page not found", "text/plain; charset=utf-8")
            return
        try:
            payload = route(rec)
        except Refusal as exc:
            h.send_json(exc.status, {"code": exc.code, "message": exc.message})
            return
        h.send_json(200, payload)

    def _common(self, params: dict[str, Any]) -> tuple[str, int]:
        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise Refusal("invalid_prompt", "prompt is required")
        model = str(params.get("model", "recraftv3"))
        if model not in UNITS:
            raise Refusal("invalid_model", f"unknown model {model}")
        if len(prompt) > PROMPT_MAX[family(model)]:
            raise Refusal("prompt_too_long", "prompt is too long")
        n = int(params.get("n", 1))
        if not 1 <= n <= 6:
            raise Refusal("invalid_n", "n must be between 1 and 6")
        if "style" in params and "style_id" in params:
            raise Refusal("invalid_style", "style and style_id are mutually exclusive")
        if "style" in params and params["style"] not in STYLES:
            raise Refusal("invalid_style", f"unknown style {params['style']}")
        if params.get("response_format", "url") not in ("url", "b64_json"):
            raise Refusal("invalid_response_format", "response_format must be url or b64_json")
        return model, n

    def _generate(self, rec: Received) -> dict[str, Any]:
        params = rec.params
        model, n = self._common(params)
        size = params.get("size")
        if size is not None and size not in FAMILY_SIZES[family(model)] and size not in ASPECTS:
            raise Refusal("invalid_size", f"size {size} is not supported by {model}")
        return self._result(params, model, n, size_of(model, size))

    def _input(self, rec: Received, name: str) -> Image.Image:
        part = next((f for f in rec.files if f[0] == name), None)
        if part is None:
            raise Refusal("invalid_image", f"{name} is required")
        img = Image.open(io.BytesIO(part[3]))
        img.load()
        return img

    def _image_to_image(self, rec: Received) -> dict[str, Any]:
        params = rec.params
        model, n = self._common(params)
        strength = float(params.get("strength", -1))
        if not 0 <= strength <= 1:
            raise Refusal("invalid_strength", "strength is required and must be in [0, 1]")
        image = self._input(rec, "image")
        return self._result(params, model, n, image.size)

    def _inpaint(self, rec: Received) -> dict[str, Any]:
        params = rec.params
        model, n = self._common(params)
        image, mask = self._input(rec, "image"), self._input(rec, "mask")
        if mask.size != image.size:
            raise Refusal("invalid_mask", "mask must be the size of the image")
        if mask.mode != "L" or any(count for value, count in enumerate(mask.histogram()) if value not in (0, 255)):
            raise Refusal("invalid_mask", "mask must be grayscale with only black (0) and white (255) pixels")
        return self._result(params, model, n, image.size)

    def _result(self, params: dict[str, Any], model: str, n: int, size: tuple[int, int]) -> dict[str, Any]:
        vector = model.endswith("_vector")
        data, ctype, ext = (svg_of(*size), "image/svg+xml", "svg") if vector else (png_of(*size), "image/png", "png")
        items = []
        for _ in range(n):
            image_id = str(uuid.uuid4())
            self.served.append(data)
            item: dict[str, Any] = {"image_id": image_id}
            if params.get("response_format") == "b64_json":
                item["b64_json"] = base64.b64encode(data).decode()
            else:
                with self._lock:
                    self.files[f"{image_id}.{ext}"] = (data, ctype)
                item["url"] = f"{self.origin}/files/{image_id}.{ext}"
            items.append(item)
        return {"created": 1_700_000_321, "credits": UNITS[model] * n, "data": items}


def _parse_multipart(ctype: str, body: bytes, rec: Received) -> None:
    for part in multipart_parts(ctype, body):
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True) or b""
        if filename is None or part.get_content_type() == "application/json":  # a JSON part is a field's value
            rec.fields[name] = payload.decode()
            if part.get("content-type") is not None:
                rec.field_types[name] = part.get_content_type()
        else:
            rec.files.append((name, filename, part.get_content_type(), payload))
