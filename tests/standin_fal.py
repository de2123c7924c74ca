"""A stand-in fal queue API (``queue.fal.run``) on loopback, with a CDN for its results.

Protocol, as fal documents it:

* https://docs.fal.ai/model-endpoints/queue and
  https://docs.fal.ai/documentation/model-apis/inference/queue - submit with
  ``POST /{model_id}`` (``Authorization: Key <key>``, the model's input as
  JSON), answered with ``{request_id, response_url, status_url, cancel_url}``;
  ``GET .../requests/{id}/status`` (``?logs=1`` adds the runner's logs):
  ``IN_QUEUE`` with ``queue_position``, ``IN_PROGRESS``, ``COMPLETED`` with
  ``metrics.inference_time``; ``GET .../requests/{id}`` the result; ``PUT
  .../requests/{id}/cancel``. The status, result and cancel URLs name the
  model's owner and app only: "the subpath (/dev in this case) should be used
  when making the request, but not when getting request status or results".
* https://fal.ai/docs/api-reference/inference-api - the status answer is 202
  while the request is queued or running and 200 once it is complete; "Do not
  build these URLs yourself. Use the status_url, response_url, and cancel_url
  fields from the submit response."
* https://fal.ai/docs/inference-api/queue/result - the result "has the status
  code, headers, and body that the model returned. If the model returned an
  error, this operation returns the same error."
* https://fal.ai/docs/inference-api/queue/cancel - cancel answers ``OK``,
  ``CANCELLATION_REQUESTED`` (202), ``ALREADY_COMPLETED`` (400), ``NOT_FOUND``
  (404) (also https://glama.ai/mcp/connectors/io.usefulapi/falai/tools/falai_cancel_request).
* https://docs.fal.ai/errors and
  https://fal.ai/docs/documentation/model-apis/request-errors - model errors
  are ``{"detail": [{"loc": ["body", FIELD], "msg", "type", "url", "ctx"}]}``
  (422 for validation, ``type`` e.g. ``content_policy_violation``); request
  errors are ``{"detail": "<text>", "error_type": "runner_server_error"}``
  with ``X-Fal-Error-Type``.
* https://github.com/fal-ai/fal/blob/main/projects/fal_client/src/fal_client/client.py
  (``_BaseRequestHandle._parse_status``, ``_raise_for_status``: errors read
  from ``detail``) and
  https://github.com/fal-ai/fal-js/blob/main/libs/client/src/queue.ts (status
  ``?logs=0|1``, cancel ``PUT``).
* Models: https://fal.ai/models/fal-ai/flux-1/dev/llms.txt (FLUX.1 [dev]:
  ``prompt``, ``image_size`` preset or ``{width, height}``,
  ``num_inference_steps``, ``seed``, ``guidance_scale``, ``sync_mode``,
  ``num_images`` 1-4, ``enable_safety_checker``, ``output_format`` jpeg|png,
  ``acceleration``; output ``images: [{url, width, height, content_type}]``,
  ``timings``, ``seed``, ``has_nsfw_concepts``, ``prompt``),
  https://fal.ai/docs/model-api-reference/image-generation-api/flux-pro-v1.1
  (``safety_tolerance`` "1"-"6", ``enhance_prompt``),
  https://fal.ai/models/fal-ai/flux-pro/kontext/llms.txt (``image_url``
  required, ``aspect_ratio`` 21:9 ... 9:21),
  https://fal.ai/docs/model-api-reference/image-generation-api/flux-pro-kontext-multi
  (``image_urls``), https://fal.ai/models/fal-ai/flux-pro/v1/fill
  (``image_url`` + ``mask_url``, FLUX.1 Fill [pro]: BFL's mask, "black areas
  will be preserved while white areas will be inpainted", of the image's
  size: https://docs.bfl.ai/flux_tools/flux_1_fill; a mask that is not black
  and white, or of another size, is a 422 here), and the presets of
  https://docs.fal.ai/documentation/model-apis/model-arguments.

Where the documents are silent the stand-in chooses, and says so: a field a
model's schema does not list is a 422 ``extra_forbidden`` (fal's apps may
ignore it instead); a wrong key is a 401 ``{"detail": ...}``; a result asked
for before completion is a 400; results without an ``aspect_ratio`` or
``image_size`` are 1024x768 (FLUX's ``landscape_4_3``) or, for an edit, the
first input image's ratio at about a megapixel. Result images are flat
colours on a CDN-like path (``http://localhost:PORT/files/...``: another
host than the queue's, as fal's ``v3.fal.media`` is) and expire after
``cdn_ttl`` seconds.

Trigger words in the prompt pick a failure (they work in parallel requests):
``[422]`` (a validation error at submission), ``[bad-size]`` (the same,
naming ``image_size``), ``[policy]`` (a
content-policy refusal at submission), ``[429]``, ``[fail]`` (the job fails:
500 ``runner_server_error``), ``[unsafe]`` (the job's result is a 422
``content_policy_violation``), ``[never]`` (the job never finishes),
``[nsfw]`` / ``[nsfw-all]`` (``has_nsfw_concepts`` true for the first / every
image), ``[foreign]`` (status and result URLs on another host),
``[expired]`` (the result URLs have already expired), ``[flaky]`` (the
first status poll is a 503 from a proxy).
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from standin_http import Handler, StandInServer

KEY = "fal-standin-id:0123456789abcdef0123456789abcdef"
PRESETS = {
    "square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024), "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576),
}  # fmt: skip
RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")
SAFETY = ("1", "2", "3", "4", "5", "6")
_FLUX = {"prompt", "image_size", "seed", "sync_mode", "num_images", "enable_safety_checker", "output_format"}
_KONTEXT = {"prompt", "seed", "guidance_scale", "sync_mode", "num_images", "output_format", "safety_tolerance",
            "enhance_prompt", "aspect_ratio"}  # fmt: skip
SCHEMAS: dict[str, set[str]] = {
    "fal-ai/flux/dev": _FLUX | {"num_inference_steps", "guidance_scale", "acceleration"},
    "fal-ai/flux-pro/v1.1": _FLUX | {"safety_tolerance", "enhance_prompt"},
    "fal-ai/flux-pro/kontext": _KONTEXT | {"image_url"},
    "fal-ai/flux-pro/kontext/max": _KONTEXT | {"image_url"},
    "fal-ai/flux-pro/kontext/multi": _KONTEXT | {"image_urls"},
    "fal-ai/flux-pro/v1/fill": {
        "prompt",
        "image_url",
        "mask_url",
        "seed",
        "sync_mode",
        "num_images",
        "output_format",
        "safety_tolerance",
        "enhance_prompt",
    },  # fmt: skip
}
REQUIRED = {"fal-ai/flux-pro/kontext": ("image_url",), "fal-ai/flux-pro/kontext/max": ("image_url",),
            "fal-ai/flux-pro/kontext/multi": ("image_urls",), "fal-ai/flux-pro/v1/fill": ("image_url", "mask_url")}  # fmt: skip
COLORS = [(200, 60, 40), (40, 160, 90), (50, 80, 210), (220, 200, 40)]


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None


@dataclass
class Fault:
    """The next submission's answer instead of a queued job."""

    status: int
    body: Any  # JSON, or bytes sent as text/html
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Job:
    id: str
    model: str
    input: dict[str, Any]
    polls: int = 0
    cancelled: bool = False
    foreign: bool = False
    flaked: bool = False

    @property
    def app(self) -> str:
        return "/".join(self.model.split("/")[:2])

    def has(self, word: str) -> bool:
        return f"[{word}]" in str(self.input.get("prompt", ""))


def _detail(field_name: str, msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", field_name], "msg": msg, "type": kind, "url": f"https://docs.fal.ai/errors#{kind}"}


def _decoded(uri: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(uri.partition("base64,")[2])))
    img.load()
    return img


def _mask_problems(image_uri: str, mask_uri: str) -> list[dict[str, Any]]:
    """FLUX Fill's mask: black (keep) and white (inpaint), the image's size."""
    image, mask = _decoded(image_uri), _decoded(mask_uri)
    if mask.size != image.size:
        return [_detail("mask_url", "The mask must have the image's dimensions", "value_error")]
    histogram = mask.convert("L").histogram()
    if mask.mode not in ("1", "L", "RGB") or sum(histogram[1:255]) > 0:
        return [_detail("mask_url", "The mask must be black (keep) and white (inpaint)", "value_error")]
    return []


def image_bytes(width: int, height: int, fmt: str, color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG" if fmt == "png" else "JPEG", quality=85)
    return buf.getvalue()


def _megapixel_dims(ratio: float) -> tuple[int, int]:
    width = round(math.sqrt(1024 * 1024 * ratio) / 16) * 16
    return width, round(width / ratio / 16) * 16


class FalStandIn(StandInServer[Received, Fault]):
    def __init__(self, queue_polls: int = 1, progress_polls: int = 1, cdn_ttl: float = 60.0) -> None:
        self.queue_polls = queue_polls  # status polls answered IN_QUEUE
        self.progress_polls = progress_polls  # then IN_PROGRESS; then COMPLETED
        self.cdn_ttl = cdn_ttl
        self.jobs: dict[str, Job] = {}
        self.cancels: list[str] = []  # request ids a PUT cancel named
        self.cdn_gets: list[Received] = []  # GETs of result URLs, with their headers
        self.served: list[bytes] = []  # every result image made, in order
        self._files: dict[str, tuple[bytes, str, float]] = {}  # path -> (bytes, content type, expires at)
        self._state = threading.Lock()
        standin = self

        class FalHandler(Handler):
            def _route(self, method: str) -> None:
                parts = urllib.parse.urlsplit(self.path)
                body = self.read_body()
                rec = Received(method, parts.path, dict(urllib.parse.parse_qsl(parts.query)), self.header_map())
                if body:
                    try:
                        rec.json = json.loads(body)
                    except ValueError:
                        rec.json = body
                if method == "GET" and parts.path.startswith("/files/"):
                    status, payload, ctype = standin.cdn(rec)
                    self._send(status, payload, ctype)
                    return
                fault = standin.record(rec) if method == "POST" else standin.keep(rec)  # faults are for submissions
                status, answer, headers = standin.answer(rec, fault)
                if isinstance(answer, bytes):
                    self._send(status, answer, "text/html", headers)
                else:
                    self.send_json(status, answer, headers)

            def do_GET(self) -> None:  # noqa: N802
                self._route("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._route("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._route("PUT")

        super().__init__(FalHandler, "")
        self.cdn_origin = self.origin.replace("127.0.0.1", "localhost")

    def reset(self) -> None:
        super().reset()
        with self._state:
            self.jobs.clear()
            self._files.clear()
        self.cancels.clear()
        self.cdn_gets.clear()
        self.served.clear()
        self.queue_polls, self.progress_polls, self.cdn_ttl = 1, 1, 60.0

    def keep(self, rec: Received) -> None:
        """Record a request that is not a submission (no scripted fault is used up)."""
        with self._state:
            self.received.append(rec)

    @property
    def submitted(self) -> list[Received]:
        return [r for r in self.received if r.method == "POST"]

    # -- the queue ---------------------------------------------------------------

    def answer(self, rec: Received, fault: Fault | None) -> tuple[int, Any, dict[str, str]]:
        if rec.headers.get("authorization") != f"Key {KEY}":
            return 401, {"detail": "Unauthorized: a valid key is required (Authorization: Key <key>)."}, {}
        segments = rec.path.strip("/").split("/")
        if "requests" in segments:
            return self._request_op(rec, segments)
        if rec.method != "POST":
            return 405, {"detail": "Method Not Allowed"}, {}
        if fault is not None:
            return fault.status, fault.body, fault.headers
        return self._submit(rec, "/".join(segments))

    def _submit(self, rec: Received, model: str) -> tuple[int, Any, dict[str, str]]:
        if model not in SCHEMAS:
            return 404, {"detail": f"Application '{model}' not found"}, {}
        body = rec.json
        if not isinstance(body, dict):
            return 422, {"detail": [_detail("body", "Input should be a valid dictionary", "dict_type")]}, {}
        problems = self._check(model, body)
        if problems:
            return 422, {"detail": problems}, {}
        prompt = str(body.get("prompt", ""))
        if "[422]" in prompt:
            return 422, {"detail": [_detail("prompt", "The prompt is too odd for this stand-in.", "value_error")]}, {}
        if "[policy]" in prompt:
            return 422, {"detail": [_detail("prompt", "The prompt was flagged by the content checker.",
                                            "content_policy_violation")]}, {}  # fmt: skip
        if "[bad-size]" in prompt:
            return 422, {"detail": [_detail("image_size", "Width and height must be multiples of 8.", "value_error")]}, {}
        if "[429]" in prompt:
            return 429, {"detail": "Too many concurrent requests for this user."}, {"Retry-After": "3"}
        job = Job(str(uuid.uuid4()), model, body)
        job.foreign = job.has("foreign")
        with self._state:
            self.jobs[job.id] = job
        return 200, {"status": "IN_QUEUE", "queue_position": self.queue_polls, **self._urls(job)}, {}

    def _urls(self, job: Job) -> dict[str, str]:
        origin = self.cdn_origin if job.foreign else self.origin
        base = f"{origin}/{job.app}/requests/{job.id}"
        return {"request_id": job.id, "response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    def _check(self, model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        problems = [
            _detail(name, "Extra inputs are not permitted", "extra_forbidden") for name in body if name not in SCHEMAS[model]
        ]
        problems += [
            _detail(name, "Field required", "missing") for name in ("prompt", *REQUIRED.get(model, ())) if name not in body
        ]
        if "num_images" in body and not (isinstance(body["num_images"], int) and 1 <= body["num_images"] <= 4):
            problems.append(_detail("num_images", "Input should be between 1 and 4", "less_than_equal"))
        if body.get("output_format", "jpeg") not in ("jpeg", "png"):
            problems.append(_detail("output_format", "Input should be 'jpeg' or 'png'", "enum"))
        if body.get("aspect_ratio", "1:1") not in RATIOS:
            problems.append(_detail("aspect_ratio", f"Input should be one of {', '.join(RATIOS)}", "enum"))
        if body.get("safety_tolerance", "2") not in SAFETY:
            problems.append(_detail("safety_tolerance", "Input should be '1' to '6' (a string)", "enum"))
        size = body.get("image_size", "landscape_4_3")
        if not ((isinstance(size, str) and size in PRESETS) or (isinstance(size, dict) and set(size) == {"width", "height"}
                                    and all(isinstance(v, int) and 64 <= v <= 14142 for v in size.values()))):  # fmt: skip
            problems.append(_detail("image_size", "Input should be a preset or {width, height}", "image_size"))
        for name in ("image_url", "mask_url"):
            if name in body and not str(body[name]).startswith(("data:image/", "https://", "http://")):
                problems.append(_detail(name, "Input should be a URL or a data URI", "url_parsing"))
        if not problems and all(str(body.get(k, "")).startswith("data:") for k in ("image_url", "mask_url")):
            problems += _mask_problems(str(body["image_url"]), str(body["mask_url"]))
        urls = body.get("image_urls", [])
        if not isinstance(urls, list) or not all(str(u).startswith("data:image/") for u in urls):
            problems.append(_detail("image_urls", "Input should be a list of URLs", "list_type"))
        return problems

    def _request_op(self, rec: Received, segments: list[str]) -> tuple[int, Any, dict[str, str]]:
        at = segments.index("requests")
        app, rest = "/".join(segments[:at]), segments[at + 1 :]
        with self._state:
            job = self.jobs.get(rest[0]) if rest else None
        if job is None or job.app != app:
            return 404, {"status": "NOT_FOUND", "detail": "Request not found"}, {}
        op = rest[1] if len(rest) > 1 else ""
        if rec.method == "GET" and op == "status":
            return self._status(job, rec.query.get("logs") == "1")
        if rec.method == "GET" and op == "":
            return self._result(job)
        if rec.method == "PUT" and op == "cancel":
            self.cancels.append(job.id)
            if self._done(job):
                return 400, {"status": "ALREADY_COMPLETED"}, {}
            job.cancelled = True
            return 202, {"status": "CANCELLATION_REQUESTED"}, {}
        return 405, {"detail": "Method Not Allowed"}, {}

    def _done(self, job: Job) -> bool:
        return job.cancelled or (not job.has("never") and job.polls > self.queue_polls + self.progress_polls)

    def _status(self, job: Job, logs: bool) -> tuple[int, Any, dict[str, str]]:
        if job.has("flaky") and not job.flaked:  # a proxy's answer: not a poll the job saw
            job.flaked = True
            return 503, b"<html><body><center><h1>503 Service Temporarily Unavailable</h1></center><hr>nginx</body></html>", {}
        with self._state:
            job.polls += 1
        urls = self._urls(job)
        common = {"response_url": urls["response_url"], "status_url": urls["status_url"], "cancel_url": urls["cancel_url"]}
        log_lines = [{"message": "step 1/28", "level": "INFO", "source": "user", "timestamp": "2025-01-01T00:00:00Z"}]
        if self._done(job):
            return 200, {"status": "COMPLETED", "logs": log_lines if logs else None, "metrics": {"inference_time": 0.42},
                         **common}, {}  # fmt: skip
        if job.polls <= self.queue_polls:
            return 202, {"status": "IN_QUEUE", "queue_position": self.queue_polls - job.polls, **common}, {}
        return 202, {"status": "IN_PROGRESS", "logs": log_lines if logs else None, **common}, {}

    def _result(self, job: Job) -> tuple[int, Any, dict[str, str]]:
        if not self._done(job):
            return 400, {"detail": "Request is still in progress"}, {}
        if job.cancelled:
            return (
                499,
                {"detail": "Request was cancelled", "error_type": "client_cancelled"},
                {"X-Fal-Error-Type": "client_cancelled"},
            )
        if job.has("fail"):
            return 500, {"detail": "Internal error while running the model", "error_type": "runner_server_error"}, {
                "X-Fal-Error-Type": "runner_server_error"}  # fmt: skip
        if job.has("unsafe"):
            return 422, {"detail": [_detail("prompt", "The generated image was flagged as unsafe.",
                                            "content_policy_violation")]}, {}  # fmt: skip
        return 200, self._output(job), {}

    def _output(self, job: Job) -> dict[str, Any]:
        body = job.input
        width, height = self._size_of(body)
        fmt = body.get("output_format", "jpeg")
        n = body.get("num_images", 1)
        images, flags = [], []
        for i in range(n):
            data = image_bytes(width, height, fmt, COLORS[i % len(COLORS)])
            self.served.append(data)
            path = f"/files/{uuid.uuid4().hex}/{i}.{'png' if fmt == 'png' else 'jpg'}"
            expires = time.monotonic() + (0 if job.has("expired") else self.cdn_ttl)
            with self._state:
                self._files[path] = (data, f"image/{fmt}", expires)
            images.append({"url": self.cdn_origin + path, "width": width, "height": height, "content_type": f"image/{fmt}"})
            flags.append(job.has("nsfw-all") or (job.has("nsfw") and i == 0))
        return {"images": images, "timings": {"inference": 0.42}, "seed": body.get("seed", 42), "has_nsfw_concepts": flags,
                "prompt": body.get("prompt", "")}  # fmt: skip

    def _size_of(self, body: dict[str, Any]) -> tuple[int, int]:
        size = body.get("image_size")
        if isinstance(size, dict):
            return size["width"], size["height"]
        if isinstance(size, str):
            return PRESETS[size]
        ratio = body.get("aspect_ratio")
        if ratio is not None:
            w, h = ratio.split(":")
            return _megapixel_dims(int(w) / int(h))
        ref = body.get("image_url") or (body.get("image_urls") or [None])[0]
        if ref is not None:  # an edit follows its (first) input image's ratio
            w, h = Image.open(io.BytesIO(base64.b64decode(ref.partition("base64,")[2]))).size
            return _megapixel_dims(w / h)
        return PRESETS["landscape_4_3"]

    # -- the CDN -------------------------------------------------------------------

    def cdn(self, rec: Received) -> tuple[int, bytes, str]:
        self.cdn_gets.append(rec)
        with self._state:
            entry = self._files.get(rec.path)
        if entry is None or time.monotonic() >= entry[2]:
            return 404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml"
        return 200, entry[0], entry[1]
