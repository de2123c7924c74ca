"""A stand-in Black Forest Labs API upstream on loopback.

Protocol, as BFL documents it:

* https://docs.bfl.ai/api_integration/integration_guidelines and
  https://help.bfl.ai/articles/9532536301-which-api-endpoint-should-i-use -
  ``POST /v1/{model}`` on ``api.bfl.ai`` (or ``api.eu.bfl.ai``,
  ``api.us.bfl.ai``) answers a ``polling_url`` that names the cluster that
  took the job: "Poll that exact URL ... do not rebuild it or swap the host
  yourself"; results are served from delivery URLs that expire after 10
  minutes.
* https://docs.bfl.ai/api-reference/utility/get-result (OpenAPI
  https://api.bfl.ai/openapi.json) - ``ResultResponse`` ``{id, status,
  result, progress, details, preview}``, ``status`` one of ``Task not
  found``, ``Pending``, ``Request Moderated``, ``Content Moderated``,
  ``Ready``, ``Error``; ``APIKeyHeader`` ``x-key``; 422 ``HTTPValidationError``
  ``{"detail": [{loc, msg, type}]}``.
* https://help.bfl.ai/articles/2916279050-why-did-my-request-fail - HTTP 400,
  402 (insufficient credits), 403, 422, 429 (concurrency limit: "retry once
  a previous task finishes"), 500, 503; moderated requests are not charged.
* https://docs.bfl.ai/kontext/kontext_image_editing - Kontext:
  ``input_image`` (base64), ``aspect_ratio`` 3:7 to 7:3, ~1 MP out,
  ``seed``, ``prompt_upsampling``, ``safety_tolerance`` 0-6,
  ``output_format`` jpeg|png; https://github.com/black-forest-labs/skills
  (``skills/bfl-api/SKILL.md``, ``references/endpoints.md``,
  ``references/rate-limiting.md``) - FLUX.2 endpoints, ``input_image`` ..
  ``input_image_8`` (klein 4), width/height multiples of 16, 64 px to 4 MP,
  ``safety_tolerance`` 0-5, flex ``steps``/``guidance``; the per-megapixel
  prices and formula ``(first + (outputMP-1) x mp) + inputMP x mp`` cents;
  24 concurrent tasks (6 for Kontext [max]); ``{"status": "Ready",
  "result": {"sample": URL, "seed": N}}``.
* https://docs.bfl.ai/api-reference/models/generate-an-image-with-flux1-fill-[pro]-using-an-input-image-and-mask -
  Fill: ``image``, ``mask`` (same size, white = inpaint, black = keep),
  ``steps`` 15-50, ``guidance`` 1.5-100; https://docs.bfl.ai/quick_start/pricing -
  credits per image (Kontext pro 4, max 8, FLUX1.1 [pro] 4, Ultra 6, Fill 5).
* Vercel's AI SDK provider ``@ai-sdk/black-forest-labs``
  (https://github.com/vercel/ai/blob/main/packages/black-forest-labs/src/black-forest-labs-image-model.ts):
  the submission schema ``{id, polling_url, cost, input_mp, output_mp}``,
  error bodies ``{message?, detail?}`` (``detail`` a string or a list).

Where the documents are silent the stand-in chooses, and says so: a field a
model does not take is a 422 (``extra_forbidden``) so a provider sending
junk is caught; a megapixel is 1024x1024 pixels, rounded up (BFL answered
cost 7 for a 1024x1024 FLUX.2 [max] image); a wrong or missing key is a 403
``{"detail": "Not authenticated"}``; an expired delivery URL is a 403 (as a
signed blob URL answers); the default FLUX.2 size is 1024x1024 (an edit's:
its first image's, clamped to 4 MP).

The polling URL is on the stand-in's own host under a cluster prefix
(``/cluster-1/v1/get_result?id=...``): ``/v1/get_result`` itself answers
``Task not found``, so a provider that builds its own poll URL fails. Jobs
go ``Pending`` -> ``Ready`` after ``polls_until_ready`` polls; the sample
URL works for ``sample_ttl`` seconds. Prompts containing a trigger make a
job fail as BFL's may: ``[moderate-request]``, ``[moderate-content]``,
``[error]``, ``[lost]`` (Task not found), ``[never]`` (Pending forever),
``[unknown-status]`` (an undocumented pending status), ``[sample-404]``,
``[foreign-poll]`` (a polling_url on ``foreign_origin``); at submission
``[no-credits]`` (402), ``[invalid]`` (422), ``[busy]`` (429). More than
``cap`` unfinished jobs is a 429 too. A scripted :class:`Fault` answers the
next submission instead.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image
from standin_http import Handler, StandInServer

KEY = "bfl-standin-key-0123456789abcdef"
MEGAPIXEL = 1024 * 1024
CREDITS_PER_IMAGE = {
    "flux-kontext-pro": 4.0,
    "flux-kontext-max": 8.0,
    "flux-pro-1.1": 4.0,
    "flux-pro-1.1-ultra": 6.0,
    "flux-pro-1.0-fill": 5.0,
}
# FLUX.2: cents for the first megapixel and for each further one (inputs too).
CENTS_PER_MP = {
    "flux-2-pro": (3.0, 1.5),
    "flux-2-max": (7.0, 3.0),
    "flux-2-flex": (6.0, 6.0),
    "flux-2-klein-4b": (1.4, 0.1),
    "flux-2-klein-9b": (1.5, 0.2),
}
COMMON = {"prompt", "seed", "safety_tolerance", "output_format", "webhook_url", "webhook_secret"}
FIELDS = {
    "kontext": COMMON | {"aspect_ratio", "prompt_upsampling", "input_image", "input_image_2", "input_image_3", "input_image_4"},
    "flux2": COMMON | {"width", "height"} | {"input_image"} | {f"input_image_{i}" for i in range(2, 9)},
    "flex": COMMON | {"width", "height", "steps", "guidance"} | {"input_image"} | {f"input_image_{i}" for i in range(2, 9)},
    "pro": COMMON | {"width", "height", "prompt_upsampling", "image_prompt"},
    "ultra": COMMON | {"aspect_ratio", "raw", "prompt_upsampling", "image_prompt", "image_prompt_strength"},
    "fill": COMMON | {"image", "mask", "steps", "guidance", "prompt_upsampling"},
}
TRIGGERS = ("moderate-request", "moderate-content", "error", "lost", "never", "unknown-status", "sample-404", "foreign-poll")


def kind_of(model: str) -> str | None:
    if model.startswith("flux-kontext-"):
        return "kontext"
    if model == "flux-2-flex":
        return "flex"
    if model.startswith("flux-2-"):
        return "flux2"
    return {"flux-pro-1.1": "pro", "flux-pro-1.1-ultra": "ultra", "flux-pro-1.0-fill": "fill"}.get(model)


def megapixels(width: int, height: int) -> int:
    return max(1, math.ceil(width * height / MEGAPIXEL))


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    json: Any = None
    images: dict[str, bytes] = field(default_factory=dict)  # input_image*, image, mask: decoded


@dataclass
class Fault:
    """The answer to the next submission instead of BFL's: a status and body."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Task:
    id: str
    model: str
    key: str
    body: dict[str, Any]
    size: tuple[int, int]
    fmt: str
    cost: float
    trigger: str | None
    polls: int = 0
    state: str = "Pending"  # or a terminal status
    sample_path: str | None = None
    ready_at: float = 0.0


def _err(status: int, detail: Any, headers: dict[str, str] | None = None) -> Fault:
    return Fault(status, {"detail": detail}, headers or {})


def _invalid(field_name: str, msg: str, kind: str = "value_error") -> Fault:
    return _err(422, [{"loc": ["body", field_name], "msg": msg, "type": kind}])


def encode(size: tuple[int, int], fmt: str, color: tuple[int, int, int] = (60, 110, 170)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt])
    return buf.getvalue()


def at_ratio(ratio: float, pixels: int, step: int = 32) -> tuple[int, int]:
    width = round(math.sqrt(pixels * ratio) / step) * step
    return width, round(width / ratio / step) * step


class BFLStandIn(StandInServer[Received, Fault]):
    def __init__(self) -> None:
        self.polls_until_ready = 2
        self.sample_ttl = 30.0
        self.cap = 24  # unfinished tasks per key (BFL: 24; 6 for Kontext [max])
        self.foreign_origin: str | None = None  # where [foreign-poll] points polling_url
        self.tasks: dict[str, Task] = {}
        self.polls: list[Received] = []  # every GET of a polling URL
        self.samples: dict[str, bytes] = {}  # sample path -> image
        self.fetched: list[str] = []  # sample paths downloaded
        self.other: list[Received] = []  # anything BFL documents no endpoint for (a cancel attempt)
        self._state = threading.Lock()
        standin = self

        class BFLHandler(Handler):
            def do_GET(self) -> None:  # noqa: N802
                standin.on_get(self)

            def do_POST(self) -> None:  # noqa: N802
                standin.on_post(self)

            def do_DELETE(self) -> None:  # noqa: N802
                standin.on_other(self)

            def do_PUT(self) -> None:  # noqa: N802
                standin.on_other(self)

        super().__init__(BFLHandler, "/v1")

    def reset(self) -> None:
        super().reset()
        with self._state:
            self.tasks.clear()
            self.polls.clear()
            self.samples.clear()
            self.fetched.clear()
            self.other.clear()
        self.polls_until_ready, self.sample_ttl, self.cap, self.foreign_origin = 2, 30.0, 24, None

    # -- what a test asks -----------------------------------------------------------

    def submissions(self) -> list[Received]:
        return [r for r in self.received if r.method == "POST"]

    def polls_of(self, task_id: str) -> int:
        with self._state:
            return self.tasks[task_id].polls

    def active(self, key: str = KEY) -> int:
        with self._state:
            return sum(1 for t in self.tasks.values() if t.key == key and t.state == "Pending")

    # -- requests -------------------------------------------------------------------

    def on_other(self, h: Handler) -> None:
        with self._state:
            self.other.append(Received(h.command, h.path, h.header_map()))
        h.send_json(405, {"detail": "Method Not Allowed"})

    def on_post(self, h: Handler) -> None:
        raw = h.read_body()
        rec = Received("POST", h.path, h.header_map())
        try:
            rec.json = json.loads(raw)
        except ValueError:
            rec.json = None
        fault = self.record(rec)
        answer = self._submit(rec, fault)
        h.send_json(answer.status, answer.body, answer.headers)

    def on_get(self, h: Handler) -> None:
        parts = urlsplit(h.path)
        if parts.path.startswith("/delivery/"):
            return self._sample(h, parts.path, parse_qs(parts.query))
        if parts.path.endswith("/v1/get_result"):
            return self._poll(h, parts.path, parse_qs(parts.query).get("id", [""])[0])
        with self._state:
            self.other.append(Received("GET", h.path, h.header_map()))
        h.send_json(404, {"detail": "Not Found"})

    # -- submission -----------------------------------------------------------------

    def _submit(self, rec: Received, fault: Fault | None) -> Fault:
        if rec.headers.get("x-key") != KEY:
            return _err(403, "Not authenticated")
        model = rec.path.removeprefix("/v1/")
        kind = kind_of(model)
        if not rec.path.startswith("/v1/") or kind is None:
            return _err(404, "Not Found")
        if not isinstance(rec.json, dict):
            return _err(422, [{"loc": ["body"], "msg": "Field required", "type": "missing"}])
        if fault is not None:
            return fault
        checked = self._check(model, kind, rec)
        if isinstance(checked, Fault):
            return checked
        prompt = rec.json.get("prompt") or ""
        trigger = next((t for t in TRIGGERS if f"[{t}]" in prompt), None)
        if "[no-credits]" in prompt:
            return _err(402, "Insufficient credits. Please add credits to your account: https://dashboard.bfl.ai")
        if "[invalid]" in prompt:
            return _invalid("width", "Input should be a multiple of 16")
        with self._state:
            busy = sum(1 for t in self.tasks.values() if t.key == KEY and t.state == "Pending")
            if "[busy]" in prompt or busy >= self.cap:
                return _err(429, f"You have reached the maximum of {self.cap} active tasks. Please wait for a task to finish.")
            size, fmt, cost, input_mp = checked
            task = Task(uuid.uuid4().hex, model, KEY, rec.json, size, fmt, cost, trigger)
            self.tasks[task.id] = task
        host = self.foreign_origin if trigger == "foreign-poll" and self.foreign_origin else self.origin
        answer = {
            "id": task.id,
            "polling_url": f"{host}/cluster-1/v1/get_result?id={task.id}",
            "cost": cost,
            "input_mp": input_mp,
            "output_mp": round(size[0] * size[1] / MEGAPIXEL, 2),
        }
        return Fault(200, answer)

    def _check(self, model: str, kind: str, rec: Received) -> Fault | tuple[tuple[int, int], str, float, float]:
        """BFL's validation (422) for ``model``; else the output size, format, cost and input megapixels."""
        body = rec.json
        assert isinstance(body, dict)
        for name in body:
            if name not in FIELDS[kind]:
                return _invalid(name, "Extra inputs are not permitted", "extra_forbidden")
        if kind != "fill" and not isinstance(body.get("prompt"), str):
            return _err(422, [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}])
        flux2 = kind in ("flux2", "flex")
        fmt = body.get("output_format", "jpeg")
        if fmt not in (("jpeg", "png", "webp") if flux2 else ("jpeg", "png")):
            return _invalid("output_format", f"Input should be 'jpeg' or 'png', not {fmt!r}", "enum")
        tolerance = body.get("safety_tolerance", 2)
        if not isinstance(tolerance, int) or not 0 <= tolerance <= (5 if flux2 else 6):
            return _invalid("safety_tolerance", "Input out of range", "less_than_equal")
        for name in [n for n in body if n.startswith("input_image") or n in ("image", "mask")]:
            try:
                data = base64.b64decode(body[name], validate=True)
                Image.open(io.BytesIO(data)).verify()
            except Exception:  # noqa: BLE001 - any undecodable input is BFL's 422
                return _invalid(name, "Invalid base64 image")
            rec.images[name] = data
        inputs = [Image.open(io.BytesIO(rec.images[n])).size for n in sorted(rec.images) if n != "mask"]
        size = self._size(model, kind, body, inputs)
        if isinstance(size, Fault):
            return size
        if kind == "fill":
            if "mask" in rec.images and Image.open(io.BytesIO(rec.images["mask"])).size != size:
                return _invalid("mask", "The mask must have the image's dimensions")
            if "image" not in rec.images:
                return _err(422, [{"loc": ["body", "image"], "msg": "Field required", "type": "missing"}])
        if model in CENTS_PER_MP:
            first, more = CENTS_PER_MP[model]
            input_mp = sum(megapixels(w, h) for w, h in inputs)
            cost = first + (megapixels(*size) - 1) * more + input_mp * more
            return size, fmt, round(cost, 4), float(input_mp)
        return size, fmt, CREDITS_PER_IMAGE[model], 0.0

    def _size(self, model: str, kind: str, body: dict[str, Any], inputs: list[tuple[int, int]]) -> Fault | tuple[int, int]:
        if kind in ("kontext", "ultra"):
            ratio_text = body.get("aspect_ratio")
            if ratio_text is None:
                ratio = inputs[0][0] / inputs[0][1] if inputs else (1.0 if kind == "kontext" else 16 / 9)
            else:
                try:
                    w, h = (int(p) for p in str(ratio_text).split(":"))
                    ratio = w / h
                except ValueError:
                    return _invalid("aspect_ratio", "Invalid aspect ratio")
                if not 3 / 7 - 1e-9 <= ratio <= 7 / 3 + 1e-9:
                    return _invalid("aspect_ratio", "Aspect ratio must be between 3:7 and 7:3")
            return at_ratio(ratio, MEGAPIXEL if kind == "kontext" else 4 * MEGAPIXEL)
        if kind == "fill":
            return inputs[0] if inputs else (1024, 1024)
        step, low, high = (32, 256, 1440) if kind == "pro" else (16, 64, 4096)
        default = (1024, 768) if kind == "pro" else (inputs[0] if inputs else (1024, 1024))
        width, height = body.get("width", default[0]), body.get("height", default[1])
        if "width" not in body and inputs and kind != "pro":  # an edit keeps its first image's size, clamped to 4 MP
            scale = min(1.0, math.sqrt(4 * MEGAPIXEL / (width * height)))
            width, height = int(width * scale) // 16 * 16, int(height * scale) // 16 * 16
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or value % step or not low <= value <= high:
                return _invalid(name, f"Input should be a multiple of {step} from {low} to {high}")
        if kind != "pro" and width * height > 4 * MEGAPIXEL:
            return _invalid("width", "At most 4 megapixels")
        return width, height

    # -- polling --------------------------------------------------------------------

    def _poll(self, h: Handler, path: str, task_id: str) -> None:
        rec = Received("GET", h.path, h.header_map())
        with self._state:
            self.polls.append(rec)
        if rec.headers.get("x-key") != KEY:
            return h.send_json(403, {"detail": "Not authenticated"})
        with self._state:
            task = self.tasks.get(task_id) if path == "/cluster-1/v1/get_result" else None
            if task is None:  # not on this cluster (or a URL the provider built itself)
                return h.send_json(200, {"id": task_id, "status": "Task not found", "result": None})
            task.polls += 1
            answer = self._advance(task)
        h.send_json(200, answer)

    def _advance(self, task: Task) -> dict[str, Any]:
        base: dict[str, Any] = {"id": task.id, "result": None, "progress": None, "details": None}
        trigger = task.trigger
        if trigger == "moderate-request":
            task.state = "Request Moderated"
            return {**base, "status": task.state, "details": {"Moderation Reasons": ["Derivative Works Filter"]}}
        if trigger == "lost":
            task.state = "Task not found"
            return {**base, "status": task.state}
        if trigger == "never" or task.polls < self.polls_until_ready:
            pending = "Generating" if trigger == "unknown-status" else "Pending"
            return {**base, "status": pending, "progress": round(task.polls / (self.polls_until_ready + 1), 2)}
        if trigger == "moderate-content":
            task.state = "Content Moderated"
            return {**base, "status": task.state, "details": {"Moderation Reasons": ["Content Moderated"]}}
        if trigger == "error":
            task.state = "Error"
            return {**base, "status": task.state, "details": {"error": "Internal generation failure"}}
        if task.state == "Pending":
            task.state = "Ready"
            task.ready_at = time.monotonic()
            task.sample_path = f"/delivery/{task.id}/sample.{'jpg' if task.fmt == 'jpeg' else task.fmt}"
            self.samples[task.sample_path] = encode(task.size, task.fmt)
        expiry = int(task.ready_at + self.sample_ttl)
        result = {"sample": f"{self.origin}{task.sample_path}?se={expiry}&sig=standin", "prompt": task.body.get("prompt"),
                  "seed": task.body.get("seed", 1234), "start_time": task.ready_at - 1, "end_time": task.ready_at}  # fmt: skip
        return {**base, "status": "Ready", "result": result, "progress": 1.0}

    def _sample(self, h: Handler, path: str, query: dict[str, list[str]]) -> None:
        with self._state:
            data = self.samples.get(path)
            task = next((t for t in self.tasks.values() if t.sample_path == path), None)
        if data is None or task is None or task.trigger == "sample-404":
            return h._send(404, b"<Error><Code>BlobNotFound</Code></Error>", "application/xml")
        if time.monotonic() > task.ready_at + self.sample_ttl:
            return h._send(403, b"<Error><Code>AuthenticationFailed</Code><Message>Signed expiry time</Message></Error>",
                           "application/xml")  # fmt: skip
        with self._state:
            self.fetched.append(path)
        h._send(200, data, {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}[task.fmt])
