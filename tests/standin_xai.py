"""A stand-in xAI Images API (Grok Imagine) upstream on loopback.

Protocol, as xAI documents it:

* https://docs.x.ai/developers/model-capabilities/images/generation -
  ``POST /v1/images/generations``, JSON: ``model``, ``prompt``, ``n`` (1-10),
  ``response_format`` (``url``, the default, or ``b64_json``),
  ``aspect_ratio``, ``resolution``, ``user``; ``Authorization: Bearer``.
* https://docs.x.ai/developers/model-capabilities/images/editing -
  ``POST /v1/images/edits``, JSON only ("the xAI API requires
  application/json"; OpenAI's multipart ``images.edit()`` is not supported):
  ``image: {"url": <public URL or data:image/...;base64,...>, "type": "image_url"}``.
* https://docs.x.ai/developers/model-capabilities/images/multi-image-editing -
  ``images: [...]``, up to three source images; the output's aspect ratio
  follows the first image unless ``aspect_ratio`` is set.
* https://github.com/xai-org/xai-sdk-python/blob/main/src/xai_sdk/sync/image.py -
  the aspect ratios (1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3, 2:1, 1:2, 20:9,
  9:20, 19.5:9, 9:19.5, and ``auto``) and resolutions (``1k`` ~1 MP, ``2k``
  ~4 MP, "dimensions vary by aspect ratio").
* xAI's REST reference (``/v1/images/generations``, mirrored at
  https://www.withone.ai/knowledge/x-ai/conn_mod_def%3A%3AGJ8XVhsvjYc%3A%3AT3TwNw-URASa97MrOR63IQ):
  the answer ``{"block_reason", "data": [{"b64_json", "mime_type",
  "revised_prompt", "url"}], "usage": {"cost_in_usd_ticks"}}`` (10^10 ticks
  = 1 USD); ``size``, ``quality`` and ``style`` "not supported".
* Errors: ``{"code": "Client specified an invalid argument", "error":
  "<message>"}`` with the HTTP status - a wrong key is a **400** "Incorrect
  API key provided: xa***ey. You can obtain an API key from
  https://console.x.ai." (as quoted in
  https://github.com/nocmt/LLMSearchPlus/issues/2 and many client test
  suites); an unsupported field is "Argument not supported: size"
  (https://docs.crazyrouter.com/en/images/grok); a rejected output is
  "Generated image rejected by content moderation."

Where the documents are silent the stand-in chooses, and says so: a body
that is not JSON, an unknown field, too many images or a bad enum value is a
400 in xAI's error shape; images are flat-colour JPEGs of about the
resolution's pixel count at the asked ratio (xAI's exact dimensions per
ratio are not published). It records every request (``received``) and
answers like xAI or with the next scripted :class:`Fault`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from standin_http import Handler, StandInServer

KEY = "xai-standin-key-0123456789"
TICKS_PER_IMAGE = 200_000_000  # $0.02 in xAI's 1e-10 USD ticks
GROK_2_TICKS_PER_IMAGE = 700_000_000  # $0.07
RATIOS = {
    "1:1": 1.0, "3:4": 3 / 4, "4:3": 4 / 3, "9:16": 9 / 16, "16:9": 16 / 9, "2:3": 2 / 3, "3:2": 3 / 2,
    "9:19.5": 9 / 19.5, "19.5:9": 19.5 / 9, "9:20": 9 / 20, "20:9": 20 / 9, "1:2": 1 / 2, "2:1": 2.0,
}  # fmt: skip
PIXELS = {"1k": 1024 * 1024, "2k": 2048 * 2048}
GENERATION_FIELDS = {"model", "prompt", "n", "response_format", "aspect_ratio", "resolution", "quality", "user"}
EDIT_FIELDS = GENERATION_FIELDS | {"image", "images"}
MAX_IMAGES = 3
INVALID = "Client specified an invalid argument"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    content_type: str
    json: dict[str, Any] | None = None


@dataclass
class Fault:
    kind: str  # status (body: xAI's error object) | json (body: the whole answer) | garbage | url | data_uri
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def jpeg_of(width: int, height: int, color: tuple[int, int, int] = (30, 140, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def dimensions(ratio: float, resolution: str) -> tuple[int, int]:
    """About the resolution's pixels at ``ratio``, in multiples of 16."""
    pixels = PIXELS[resolution]
    width = round(math.sqrt(pixels * ratio) / 16) * 16
    height = round(math.sqrt(pixels / ratio) / 16) * 16
    return width, height


def _error(message: str, status: int = 400) -> Fault:
    return Fault("status", status, {"code": INVALID, "error": message})


class XAIStandIn(StandInServer[Received, Fault]):
    def __init__(self) -> None:
        self.served: list[bytes] = []  # the image of each success answer
        # xAI bills an edit's input images too, at a price it does not publish;
        # a test sets one to see that the gateway charges what xAI states.
        self.ticks_per_input_image = 0
        self._files: dict[str, bytes] = {}
        standin = self

        class XAIHandler(Handler):
            def do_GET(self) -> None:  # noqa: N802 - image URLs handed out by "url" answers
                data = standin._files.get(self.path)
                if data is None:
                    self.send_json(404, {"code": "Some requested entity was not found", "error": "not found"})
                else:
                    self._send(200, data, "image/jpeg")

            def do_POST(self) -> None:  # noqa: N802
                body = self.read_body()
                ctype = self.headers.get("Content-Type", "")
                rec = Received(self.path, self.header_map(), ctype)
                if ctype.startswith("application/json"):
                    rec.json = json.loads(body)
                fault = standin.record(rec)
                status, payload = standin.answer(rec, fault)
                if isinstance(payload, bytes):
                    self._send(status, payload, "text/html")
                else:
                    self.send_json(status, payload, fault.headers if fault else None)

        super().__init__(XAIHandler, "/v1")

    def reset(self) -> None:
        super().reset()
        self.served.clear()

    # -- answers ---------------------------------------------------------------

    def answer(self, rec: Received, fault: Fault | None) -> tuple[int, Any]:
        refusal = self._check(rec)
        if refusal is not None:
            return refusal.status, refusal.body
        if fault is not None and fault.kind == "status":
            return fault.status, fault.body
        if fault is not None and fault.kind == "json":
            return fault.status, fault.body
        if fault is not None and fault.kind == "garbage":
            return fault.status, b"<html>upstream proxy error</html>"
        assert rec.json is not None
        return 200, self._success(rec.json, fault.kind if fault else None)

    def _check(self, rec: Received) -> Fault | None:
        """xAI's refusals, before any work: the key, JSON, the fields."""
        if rec.headers.get("authorization") != f"Bearer {KEY}":
            given = rec.headers.get("authorization", "").removeprefix("Bearer ")
            return _error(
                f"Incorrect API key provided: {given[:2]}***{given[-2:]}. You can obtain an API key from https://console.x.ai."
            )
        if rec.json is None:
            return _error("The xAI API requires a JSON body (Content-Type: application/json).")
        edits = rec.path == "/v1/images/edits"
        if rec.path not in ("/v1/images/generations", "/v1/images/edits"):
            return _error(f"Unknown path {rec.path}", 404)
        for name in rec.json:
            if name not in (EDIT_FIELDS if edits else GENERATION_FIELDS):
                return _error(f"Argument not supported: {name}")
        ratio = rec.json.get("aspect_ratio", "auto")
        if ratio != "auto" and ratio not in RATIOS:
            return _error(f"Invalid aspect_ratio: {ratio}")
        if rec.json.get("resolution", "1k") not in PIXELS:
            return _error(f"Invalid resolution: {rec.json.get('resolution')}")
        if not isinstance(rec.json.get("n", 1), int) or not 1 <= rec.json.get("n", 1) <= 10:
            return _error("n must be between 1 and 10")
        if edits:
            return self._check_images(rec.json)
        return None

    def _check_images(self, body: dict[str, Any]) -> Fault | None:
        if ("image" in body) == ("images" in body):
            return _error("Provide exactly one of image or images.")
        refs = [body["image"]] if "image" in body else body["images"]
        if not isinstance(refs, list) or not 1 <= len(refs) <= MAX_IMAGES:
            return _error(f"At most {MAX_IMAGES} images can be edited in one request.")
        for ref in refs:
            url = ref.get("url") if isinstance(ref, dict) else None
            if not isinstance(url, str) or not url.startswith(("data:image/", "https://", "http://")):
                return _error("Each image needs a url: a public URL or a base64 data URI.")
        return None

    def _size_of(self, body: dict[str, Any]) -> tuple[int, int]:
        resolution = body.get("resolution", "1k")
        ratio_name = body.get("aspect_ratio", "auto")
        if ratio_name != "auto":
            return dimensions(RATIOS[ratio_name], resolution)
        refs = [body["image"]] if "image" in body else body.get("images", [])
        if refs:  # an edit follows its (first) input image's aspect ratio
            head = base64.b64decode(refs[0]["url"].partition("base64,")[2])
            width, height = Image.open(io.BytesIO(head)).size
            return dimensions(width / height, resolution)
        return dimensions(1.0, resolution)

    def _success(self, body: dict[str, Any], kind: str | None) -> dict[str, Any]:
        image = jpeg_of(*self._size_of(body))
        self.served.append(image)
        n = body.get("n", 1)
        b64 = base64.b64encode(image).decode()
        items: list[dict[str, Any]] = []
        for i in range(n):
            item: dict[str, Any] = {"mime_type": "image/jpeg", "revised_prompt": f"revised: {body.get('prompt', '')}"}
            if kind == "url" or (kind is None and body.get("response_format", "url") == "url"):
                path = f"/files/{len(self._files)}-{i}.jpeg"
                self._files[path] = image
                item["url"] = self.origin + path
            elif kind == "data_uri":
                item["b64_json"] = f"data:image/jpeg;base64,{b64}"
            else:
                item["b64_json"] = b64
            items.append(item)
        refs = len(body.get("images") or ([body["image"]] if body.get("image") else []))
        per_image = GROK_2_TICKS_PER_IMAGE if body.get("model") == "grok-2-image-1212" else TICKS_PER_IMAGE
        ticks = per_image * n + self.ticks_per_input_image * refs
        return {"created": int(time.time()), "data": items, "usage": {"cost_in_usd_ticks": ticks}}
