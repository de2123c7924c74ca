"""A stand-in Volcengine Ark / BytePlus ModelArk image generation upstream on loopback.

Protocol, as documented:

* BytePlus ModelArk "Image generation API",
  https://docs.byteplus.com/en/docs/ModelArk/1541523 (Volcengine edition:
  https://www.volcengine.com/docs/82379/1541523):
  ``POST {base}/images/generations`` with ``Authorization: Bearer <ARK key>``
  and a JSON body: ``model``, ``prompt``, ``image`` (a URL or
  ``data:image/<format, lowercase>;base64,...``, a string or an array of at
  most 14), ``size`` (``1K``/``2K``/``3K``/``4K`` or ``WxH``; default
  2048x2048), ``seed``, ``guidance_scale``, ``sequential_image_generation``
  (``auto``/``disabled``) with ``sequential_image_generation_options.max_images``
  (1..15; input + generated images <= 15), ``stream``, ``output_format``,
  ``response_format`` (``url``/``b64_json``, default url), ``watermark``
  (default true), ``optimize_prompt_options``. The answer:
  ``{"model", "created", "data": [{"url"|"b64_json", "size"} | {"error": {"code", "message"}}],
  "usage": {"generated_images", "output_tokens", "total_tokens"}}``, output
  tokens ``sum(w*h)/256``; images are JPEG (5.0-lite: ``output_format``).
* Streaming (https://docs.byteplus.com/en/docs/ModelArk/1824137 and the
  tutorial's "Streaming output", https://docs.byteplus.com/en/docs/ModelArk/1824121):
  Server-Sent Events whose ``event:`` is the ``type``:
  ``image_generation.partial_succeeded`` (``model``, ``created``,
  ``image_index``, ``url``|``b64_json``, ``size``) per finished image,
  ``image_generation.partial_failed`` (``image_index``, ``error``) per failed
  one, ``image_generation.completed`` (``usage``), then ``data: [DONE]``;
  ``image_index`` counts failed and finished images alike. A content-filter
  failure lets the batch go on; an internal error (500) ends it.
* Errors (https://docs.byteplus.com/en/docs/ModelArk/1299023):
  ``{"error": {"code", "message", "param", "type"}}`` with the code's status
  (``MissingParameter``/``InvalidParameter`` 400, ``AuthenticationError``
  401, ``...SensitiveContentDetected`` 400, ``RateLimitExceeded`` 429,
  ``InternalServiceError`` 500).
* The official SDKs' types agree: volcengine/volcengine-python-sdk
  ``volcenginesdkarkruntime/resources/images/images.py`` and
  ``types/images/*.py``; volcengine/volcengine-go-sdk
  ``service/arkruntime/model/images.go`` (``ImagesStreamResponse``).

It records every request (with the ``data:`` URIs decoded), refuses what Ark
refuses (a missing field, a field the API does not have, a bad size, a
malformed data URI, too many images), and answers like Ark or with the next
scripted :class:`Fault`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from standin_http import Handler, StandInServer

# The request body's fields (1541523); anything else is refused, so a field
# the gateway should not send cannot slip through a test.
FIELDS = frozenset(
    {
        "model",
        "prompt",
        "image",
        "size",
        "seed",
        "guidance_scale",
        "sequential_image_generation",
        "sequential_image_generation_options",
        "stream",
        "output_format",
        "response_format",
        "watermark",
        "optimize_prompt_options",
    }
)
NAMED_SIZES = {"1K": 1024, "2K": 2048, "3K": 3072, "4K": 4096}
# WxH total pixel ranges by model (1541523); others (an endpoint ID): 4.0's.
PIXELS = {
    "seedream-3-0-t2i": (512 * 512, 2048 * 2048),
    "seedream-4-5": (2560 * 1440, 4096 * 4096),
    "seedream-5-0": (2560 * 1440, 10_404_496),
}
PIXELS_4_0 = (1280 * 720, 4096 * 4096)
DATA_URI = re.compile(r"data:image/(png|jpeg|webp|bmp|tiff|gif);base64,(.*)", re.DOTALL)
COLORS = [(200, 60, 40), (40, 160, 60), (40, 80, 200), (220, 200, 40), (140, 40, 160)]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    json: dict[str, Any]
    images: list[bytes] = field(default_factory=list)  # the data: URIs' bytes, in order


@dataclass
class Fault:
    kind: str  # status | json | garbage | events | hang
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # events: sent as they are, then [DONE]
    seconds: float = 0.0


def ark_error(status: int, code: str, message: str, param: str = "", kind: str = "BadRequest") -> Fault:
    return Fault(
        "status", status, {"error": {"code": code, "message": f"{message} Request id: 0217000", "param": param, "type": kind}}
    )


def image_bytes(width: int, height: int, index: int, fmt: str = "jpeg") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), COLORS[index % len(COLORS)]).save(buf, "PNG" if fmt == "png" else "JPEG", quality=90)
    return buf.getvalue()


class Refused(Exception):
    def __init__(self, code: str, message: str, param: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


class SeedreamStandIn(StandInServer[Received, Fault]):
    def __init__(self, key: str) -> None:
        self.key = key
        self.fail: dict[int, str] = {}  # image_index -> error code for the next answers
        self.batch: int | None = None  # images a batch makes (default: max_images)
        self.url_answers = False  # answer with URLs whatever response_format says
        self.gate: threading.Event | None = None  # stream: wait for it after the second event
        self.gate_released_in_time: bool | None = None
        self.files: dict[str, bytes] = {}
        standin = self

        class SeedreamHandler(Handler):
            def do_GET(self) -> None:  # noqa: N802 - the URLs of url answers
                data = standin.files.get(self.path.rsplit("/", 1)[-1])
                self._send(200 if data else 404, data or b"{}", "image/jpeg" if data else "application/json")

            def do_POST(self) -> None:  # noqa: N802
                body = self.read_body()
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {}
                rec = Received(self.path, self.header_map(), payload)
                standin.answer(self, rec, standin.record(rec))

        super().__init__(SeedreamHandler, "/api/v3")

    def reset(self) -> None:
        super().reset()
        self.fail = {}
        self.batch = None
        self.url_answers = False
        self.gate = None
        self.gate_released_in_time = None

    # -- answers -------------------------------------------------------------------

    def answer(self, h: Any, rec: Received, fault: Fault | None) -> None:
        if fault is not None:
            self._fault(h, rec, fault)
            return
        if rec.path != "/api/v3/images/generations":
            h.send_json(404, {"error": {"code": "NotFound", "message": "no such path", "param": "", "type": "NotFound"}})
            return
        if rec.headers.get("authorization") != f"Bearer {self.key}":
            f = ark_error(401, "AuthenticationError", "The API key in the request is missing or invalid.", kind="Unauthorized")
            self._fault(h, rec, f)
            return
        try:
            plan = self._check(rec)
        except Refused as exc:
            self._fault(h, rec, ark_error(400, exc.code, exc.message, exc.param))
            return
        if rec.json.get("stream"):
            self._stream(h, rec, plan)
        else:
            data = [item for _, item in plan["items"]]
            payload = {"model": rec.json["model"], "created": 1_757_323_224, "data": data, "usage": plan["usage"]}
            h.send_json(200, payload)

    def _check(self, rec: Received) -> dict[str, Any]:
        """Refuse what Ark refuses; the images this request makes."""
        body = rec.json
        for name in body:
            if name not in FIELDS:
                raise Refused("InvalidParameter", f"The parameter `{name}` specified in the request is not valid.", name)
        for name in ("model", "prompt"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise Refused("MissingParameter", f"The request failed because it is missing the parameter `{name}`.", name)
        refs = body.get("image")
        refs = [] if refs is None else [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, list) or len(refs) > 14:
            raise Refused("InvalidParameter", "At most 14 reference images are supported.", "image")
        for ref in refs:
            m = DATA_URI.fullmatch(ref) if isinstance(ref, str) else None
            if m is None:
                raise Refused("InvalidParameter", "The parameter `image` is not a valid image URL or data URI.", "image")
            try:
                rec.images.append(base64.b64decode(m.group(2), validate=True))
            except binascii.Error:
                raise Refused("InvalidParameter", "The parameter `image` is not valid base64.", "image") from None
        width, height = self._size(body["model"], body.get("size", "2048x2048"))
        if body.get("response_format", "url") not in ("url", "b64_json"):
            raise Refused("InvalidParameter", "The parameter `response_format` is not valid.", "response_format")
        if not isinstance(body.get("watermark", True), bool):
            raise Refused("InvalidParameter", "The parameter `watermark` is not valid.", "watermark")
        count = 1
        if body.get("sequential_image_generation", "disabled") == "auto":
            most = (body.get("sequential_image_generation_options") or {}).get("max_images", 15)
            if not isinstance(most, int) or not 1 <= most <= 15 or most + len(refs) > 15:
                raise Refused("InvalidParameter", "The parameter `max_images` is not valid.", "max_images")
            count = most if self.batch is None else min(self.batch, most)
        fmt = body.get("output_format", "jpeg")
        items: list[tuple[int, dict[str, Any]]] = []
        made = 0
        for index in range(count):
            code = self.fail.get(index)
            if code is not None:
                items.append((index, {"error": {"code": code, "message": f"failed: {code}"}}))
                if "Sensitive" not in code:
                    break  # an internal error ends the batch
                continue
            data = image_bytes(width, height, index, fmt)
            made += 1
            item: dict[str, Any] = {"size": f"{width}x{height}"}
            if body.get("response_format", "url") == "url" or self.url_answers:
                name = f"img-{len(self.files)}.jpeg"
                self.files[name] = data
                item["url"] = f"{self.origin}/files/{name}"
            else:
                item["b64_json"] = base64.b64encode(data).decode()
            items.append((index, item))
        tokens = round(made * width * height / 256)
        return {"items": items, "usage": {"generated_images": made, "output_tokens": tokens, "total_tokens": tokens}}

    @staticmethod
    def _size(model: str, size: Any) -> tuple[int, int]:
        if size in NAMED_SIZES:
            return NAMED_SIZES[size], NAMED_SIZES[size]
        m = re.fullmatch(r"([1-9][0-9]*)x([1-9][0-9]*)", size) if isinstance(size, str) else None
        if m is None:
            raise Refused("InvalidParameter", "The parameter `size` specified in the request is not valid.", "size")
        width, height = int(m.group(1)), int(m.group(2))
        least, most = next((v for k, v in PIXELS.items() if model.startswith(k)), PIXELS_4_0)
        if not least <= width * height <= most or max(width, height) / min(width, height) > 16:
            raise Refused("InvalidParameter", "The parameter `size` specified in the request is not valid.", "size")
        return width, height

    def _stream(self, h: Any, rec: Received, plan: dict[str, Any]) -> None:
        model, created = rec.json["model"], 1_757_396_757
        events = []
        for index, item in plan["items"]:
            kind = "partial_failed" if "error" in item else "partial_succeeded"
            events.append({"type": f"image_generation.{kind}", "model": model, "created": created, "image_index": index, **item})
        events.append({"type": "image_generation.completed", "model": model, "created": created, "usage": plan["usage"]})
        self._send_events(h, events)

    def _send_events(self, h: Any, events: list[dict[str, Any]]) -> None:
        h.start_events()
        for i, event in enumerate(events):
            name = event.get("type")
            head = f"event: {name}\n" if name else ""
            h.wfile.write(f"{head}data: {json.dumps(event)}\n\n".encode())
            h.wfile.flush()
            if i == 1 and self.gate is not None:
                self.gate_released_in_time = self.gate.wait(timeout=15)
        h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()

    def _fault(self, h: Any, rec: Received, fault: Fault) -> None:
        if fault.kind in ("status", "json"):
            h.send_json(fault.status, fault.body, fault.headers)
        elif fault.kind == "garbage":
            h._send(fault.status, b"<html>bad gateway</html>", "text/html")
        elif fault.kind == "events":
            self._send_events(h, fault.events)
        elif fault.kind == "hang":
            time.sleep(fault.seconds)
            h.close_connection = True
