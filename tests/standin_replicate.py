"""A stand-in Replicate HTTP API upstream on loopback.

Protocol, as Replicate documents it:

* https://replicate.com/docs/reference/http - ``models.predictions.create``:
  ``POST /v1/models/{owner}/{name}/predictions`` with ``{"input": {...}}``
  (an official model, no version); ``predictions.create``: ``POST
  /v1/predictions`` with ``{"version", "input"}`` (``owner/name:VERSION``,
  a version id, or since https://replicate.com/changelog/2025-08-05-run-all-models-with-the-same-api-endpoint
  ``owner/name``); ``predictions.get``: ``GET /v1/predictions/{id}``;
  ``predictions.cancel``: ``POST /v1/predictions/{id}/cancel``;
  ``Authorization: Bearer <token>``. The create answer is 201 with the
  prediction.
* https://replicate.com/docs/topics/predictions/create-a-prediction - sync
  mode: ``Prefer: wait`` holds the request up to 60 s (``wait=N``: N
  seconds; replicate-python's ``prediction.py`` sends ``wait=N`` for 1-60)
  and answers with the prediction, ``succeeded`` when the model finished in
  time, else ``starting``/``processing`` to be fetched at ``urls.get``; a
  model with file outputs may answer with every file while still
  ``processing`` (as replicate-python's ``run.py`` notes).
* https://replicate.com/changelog/2025-10-16-prediction-deadlines and
  https://replicate.com/docs/topics/predictions/lifecycle - statuses
  ``starting``, ``processing``, ``succeeded``, ``failed``, ``canceled``,
  ``aborted``; the ``Cancel-After`` header (a duration such as ``1m``).
* https://replicate.com/docs/topics/predictions - the prediction object
  (``id``, ``model``, ``version``, ``input``, ``logs``, ``output``, ``error``,
  ``status``, ``created_at``, ``started_at``, ``completed_at``, ``urls``
  ``{get, cancel, web}``, ``metrics.predict_time``); output files are served
  from replicate.delivery and removed after an hour.
* Errors are problem details (replicate-python's ``exceptions.py``,
  RFC 7807; its recorded answers in ``tests/cassettes/run__invalid-token.yaml``:
  401 ``{"title": "Unauthenticated", "detail": "You did not pass a valid
  authentication token", "status": 401}`` as ``application/problem+json``);
  a 422 lists ``invalid_fields`` (``{"detail": "- input.output_format:
  output_format must be one of ...", "status": 422, "title": "Input
  validation failed", "invalid_fields": [{"type", "field", "description"}]}``,
  as quoted from the live API by its users); a 429 is ``{"detail": "Request
  was throttled. Your rate limit resets in ~30s."}``
  (https://replicate.com/docs/topics/predictions/rate-limits), here with a
  ``Retry-After`` header.
* The models' input schemas and output shapes: the API pages of
  https://replicate.com/black-forest-labs/flux-schnell, ``/flux-dev``,
  ``/flux-1.1-pro`` and ``/flux-kontext-pro`` (``[uri]`` for schnell and
  dev, one ``uri`` for the others; ``output_quality``: "Quality when saving
  the output images, from 0 to 100 ... Not relevant for .png outputs",
  default 80, which the stand-in's JPEG and WebP files are saved at).

Where the documents are silent the stand-in chooses, and says so: an input
field the model's schema does not list is a 422 (``additional_property_not_allowed``,
the wording the API uses for the request body); images are flat-colour files
of about one megapixel at the asked ratio (FLUX's sizes, in multiples of 64);
output files are served from the stand-in's own origin under ``/files/``,
without a credential, and expire after ``expire_seconds``.

Prompts trigger behaviours: ``slow`` (``slow_polls`` fetches before it
succeeds), ``never`` (runs until cancelled), ``fail`` (a model error),
``nsfw`` (a safety refusal), ``canceled`` (cancelled by someone else),
``invalid`` (a 422 naming ``input.aspect_ratio``), ``throttle`` (a 429 with
``Retry-After``), ``files-early`` (a sync answer still ``processing`` with
every file). It records every request and answers like Replicate or with the
next scripted :class:`Fault`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from standin_http import Handler, StandInServer

KEY = "r8_standin-key-0123456789abcdef"
FLUX_RATIOS = ["1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"]
PRO_RATIOS = ["custom", "1:1", "16:9", "3:2", "2:3", "4:5", "5:4", "9:16", "3:4", "4:3"]
KONTEXT_RATIOS = [
    "match_input_image",
    "1:1",
    "16:9",
    "9:16",
    "4:3",
    "3:4",
    "3:2",
    "2:3",
    "4:5",
    "5:4",
    "21:9",
    "9:21",
    "2:1",
    "1:2",
]

# Each model's input schema: name -> (type, constraint). Types: str, int, float, bool, uri; constraint: enum or (min, max).
_COMMON: dict[str, tuple[str, Any]] = {"prompt": ("str", None), "seed": ("int", None), "output_quality": ("int", (0, 100))}
_DIFFUSION: dict[str, tuple[str, Any]] = {
    **_COMMON,
    "aspect_ratio": ("str", FLUX_RATIOS),
    "num_outputs": ("int", (1, 4)),
    "output_format": ("str", ["webp", "jpg", "png"]),
    "go_fast": ("bool", None),
    "megapixels": ("str", ["1", "0.25"]),
    "disable_safety_checker": ("bool", None),
}
SCHEMAS: dict[str, dict[str, tuple[str, Any]]] = {
    "black-forest-labs/flux-schnell": {**_DIFFUSION, "num_inference_steps": ("int", (1, 4))},
    "black-forest-labs/flux-dev": {
        **_DIFFUSION,
        "num_inference_steps": ("int", (1, 50)),
        "guidance": ("float", (0, 10)),
        "image": ("uri", None),
        "prompt_strength": ("float", (0, 1)),
    },
    "black-forest-labs/flux-1.1-pro": {
        **_COMMON,
        "aspect_ratio": ("str", PRO_RATIOS),
        "width": ("int", (256, 1440)),
        "height": ("int", (256, 1440)),
        "output_format": ("str", ["webp", "jpg", "png"]),
        "safety_tolerance": ("int", (1, 6)),
        "prompt_upsampling": ("bool", None),
        "image_prompt": ("uri", None),
    },
    "black-forest-labs/flux-kontext-pro": {
        "prompt": ("str", None),
        "seed": ("int", None),
        "input_image": ("uri", None),
        "aspect_ratio": ("str", KONTEXT_RATIOS),
        "output_format": ("str", ["jpg", "png"]),
        "safety_tolerance": ("int", (0, 6)),
        "prompt_upsampling": ("bool", None),
    },
}
SCHEMAS["black-forest-labs/flux-kontext-max"] = SCHEMAS["black-forest-labs/flux-kontext-pro"]
# The input field a model requires (its prompt); "prompt" when not listed.
REQUIRED: dict[str, str] = {}
LIST_OUTPUT = {"black-forest-labs/flux-schnell", "black-forest-labs/flux-dev"}
DEFAULT_FORMAT = {"black-forest-labs/flux-kontext-pro": "png", "black-forest-labs/flux-kontext-max": "png"}
_PIL_FORMAT = {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}
_VERSIONED = re.compile(r"^(?P<model>[\w.-]+/[\w.-]+)(:[0-9a-f]{64})?$")


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    json: Any = None


@dataclass
class Fault:
    # status (an error answer: status, body, headers) | json (a 2xx of the test's own: status, body)
    # | garbage (a 200 that is not JSON) | pass (answer as usual: a fault for a later request)
    kind: str
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Prediction:
    id: str
    model: str
    input: dict[str, Any]
    status: str = "starting"
    pending: int = 0  # GETs answered starting/processing before it finishes; -1: it never does
    fetches: int = 0
    outcome: str = "succeeded"  # succeeded | failed | canceled
    output: Any = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    completed: float | None = None


def problem(status: int, title: str | None, detail: str, **more: Any) -> Fault:
    body = {"detail": detail, "status": status, **({"title": title} if title else {}), **more}
    return Fault("status", status, body, {"Content-Type": "application/problem+json"})


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class ReplicateStandIn(StandInServer[Received, Fault]):
    def __init__(self) -> None:
        self.predictions: dict[str, Prediction] = {}
        self.files: dict[str, tuple[bytes, float]] = {}  # path -> (bytes, served until)
        self.cancelled: list[str] = []
        self.served: list[bytes] = []  # every output file made
        self.slow_polls = 2  # GETs a "slow" prediction takes
        self.hold_seconds = 0.05  # how long a sync request for an unfinished prediction is held (at most its wait)
        self.expire_seconds = 3600.0  # output files, as on replicate.delivery
        self.lock = threading.Lock()
        standin = self

        class ReplicateHandler(Handler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/files/"):
                    self._file()
                else:
                    self._api("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._api("POST")

            def _file(self) -> None:
                with standin.lock:
                    data, until = standin.files.get(self.path, (b"", 0.0))
                if not data or time.time() > until:
                    self._send(404, b"Not Found", "text/plain")
                else:
                    ext = self.path.rsplit(".", 1)[-1]
                    self._send(200, data, f"image/{'jpeg' if ext == 'jpg' else ext}")

            def _api(self, method: str) -> None:
                raw = self.read_body()
                rec = Received(method, self.path, self.header_map())
                if raw:
                    try:
                        rec.json = json.loads(raw)
                    except ValueError:
                        rec.json = raw
                fault = standin.record(rec)
                status, payload, headers = standin.answer(rec, fault)
                if isinstance(payload, bytes):
                    self._send(status, payload, "text/html")
                else:
                    ctype = headers.pop("Content-Type", "application/json")
                    self._send(status, json.dumps(payload).encode(), ctype, headers)

        super().__init__(ReplicateHandler, "/v1")

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.predictions.clear()
            self.files.clear()
        self.cancelled.clear()
        self.served.clear()
        self.slow_polls, self.hold_seconds, self.expire_seconds = 2, 0.05, 3600.0

    def requests(self, method: str, prefix: str = "/v1/") -> list[Received]:
        return [r for r in self.received if r.method == method and r.path.startswith(prefix)]

    # -- answers ---------------------------------------------------------------

    def answer(self, rec: Received, fault: Fault | None) -> tuple[int, Any, dict[str, str]]:
        if rec.headers.get("authorization") != f"Bearer {KEY}":
            return self._fault(problem(401, "Unauthenticated", "You did not pass a valid authentication token"))
        if fault is not None and fault.kind != "pass":
            if fault.kind == "garbage":
                return 200, b"<html>upstream proxy error</html>", {}
            return self._fault(fault)
        parts = rec.path.split("/")
        if rec.method == "POST" and len(parts) == 6 and parts[2] == "models" and parts[5] == "predictions":
            return self._create(rec, f"{parts[3]}/{parts[4]}", rec.json)
        if rec.method == "POST" and rec.path == "/v1/predictions":
            version = rec.json.get("version") if isinstance(rec.json, dict) else None
            match = _VERSIONED.match(version) if isinstance(version, str) else None
            if match is None or match.group("model") not in SCHEMAS:
                return self._fault(problem(422, "Invalid version or not permitted", "The specified version does not exist"))
            body = {k: v for k, v in rec.json.items() if k != "version"}
            return self._create(rec, match.group("model"), body)
        if len(parts) >= 4 and parts[2] == "predictions":
            with self.lock:
                pred = self.predictions.get(parts[3])
            if pred is None:
                return self._fault(problem(404, None, "Not found."))
            if rec.method == "GET" and len(parts) == 4:
                return 200, self._advance(pred), {}
            if rec.method == "POST" and len(parts) == 5 and parts[4] == "cancel":
                return 200, self._cancel(pred), {}
        return self._fault(problem(404, None, "Not found."))

    def _fault(self, fault: Fault) -> tuple[int, Any, dict[str, str]]:
        return fault.status, fault.body, dict(fault.headers)

    def _create(self, rec: Received, model: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        if model not in SCHEMAS:
            return self._fault(problem(404, None, f"The requested model {model} does not exist or you do not have access."))
        refusal = self._check(model, body)
        if refusal is not None:
            return self._fault(refusal)
        inputs: dict[str, Any] = body["input"]
        prompt = str(inputs.get(REQUIRED.get(model, "prompt"), ""))
        if "throttle" in prompt:
            return self._fault(Fault("status", 429, {"detail": "Request was throttled. Your rate limit resets in ~7s."},
                                     {"Retry-After": "7"}))  # fmt: skip
        if "invalid" in prompt:
            return self._fault(self._invalid("input.aspect_ratio", 'aspect_ratio must be one of the following: "1:1"'))
        wait = self._wait(rec.headers.get("prefer"))
        if wait == -1:
            return self._fault(problem(400, "Invalid Prefer header", "Prefer: wait=N takes 1 to 60 seconds"))
        pred = Prediction(uuid.uuid4().hex[:26], model, inputs)
        pred.pending = -1 if "never" in prompt else self.slow_polls if "slow" in prompt else 0
        pred.outcome = "failed" if "fail" in prompt or "nsfw" in prompt else "canceled" if "canceled" in prompt else "succeeded"
        with self.lock:
            self.predictions[pred.id] = pred
        if wait and (pred.pending == 0 or "files-early" in prompt):
            with self.lock:
                self._finish(pred)  # done within the wait
                if "files-early" in prompt:
                    pred.status, pred.completed = "processing", None  # every file, the status not yet final
        elif wait:
            time.sleep(min(wait, self.hold_seconds))
        return 201, self._view(pred), {}

    def _wait(self, prefer: str | None) -> int:
        """Prefer's seconds: 0 without it, -1 when it is out of range."""
        if prefer is None:
            return 0
        if prefer.strip() == "wait":
            return 60
        match = re.fullmatch(r"\s*wait=(\d+)\s*", prefer)
        return int(match.group(1)) if match and 1 <= int(match.group(1)) <= 60 else -1

    def _check(self, model: str, body: Any) -> Fault | None:
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return self._invalid("", "input is required")
        extra = [k for k in body if k not in ("input", "webhook", "webhook_events_filter", "stream")]
        if extra:
            return self._invalid("", f"Additional property {extra[0]} is not allowed", "additional_property_not_allowed")
        schema, inputs = SCHEMAS[model], body["input"]
        required = REQUIRED.get(model, "prompt")
        if not isinstance(inputs.get(required), str) or not inputs[required]:
            return self._invalid("input", f"{required} is required", "required")
        for name, value in inputs.items():
            if name not in schema:
                return self._invalid("input", f"Additional property {name} is not allowed", "additional_property_not_allowed")
            kind, rule = schema[name]
            ok = {
                "str": isinstance(value, str),
                "uri": isinstance(value, str) and value.startswith(("data:", "https://", "http://")),
                "bool": isinstance(value, bool),
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, int | float) and not isinstance(value, bool),
            }[kind]
            if not ok:
                return self._invalid(f"input.{name}", f"Invalid type. Expected: {kind}", "invalid_type")
            if isinstance(rule, list) and value not in rule:
                return self._invalid(f"input.{name}", f"{name} must be one of the following: {rule}", "enum")
            if isinstance(rule, tuple) and not rule[0] <= value <= rule[1]:
                return self._invalid(f"input.{name}", f"Must be between {rule[0]} and {rule[1]}", "number_range")
        if model.endswith("1.1-pro") and ("width" in inputs or "height" in inputs):
            if inputs.get("aspect_ratio") != "custom" or inputs.get("width", 1) % 32 or inputs.get("height", 1) % 32:
                return self._invalid("input.width", "width and height count with aspect_ratio custom, in multiples of 32")
        return None

    def _invalid(self, where: str, description: str, kind: str = "enum") -> Fault:
        detail = f"- {where}: {description}\n" if where else f"- {description}\n"
        fields = [{"type": kind, "field": where, "description": description}]
        return problem(422, "Input validation failed", detail, invalid_fields=fields)

    # -- a prediction's life ---------------------------------------------------------

    def _advance(self, pred: Prediction) -> dict[str, Any]:
        with self.lock:
            if pred.status == "processing" and pred.output is not None:
                pred.status, pred.completed = "succeeded", time.time()
            elif pred.status in ("starting", "processing"):
                pred.fetches += 1
                if pred.pending < 0 or pred.fetches <= pred.pending:
                    pred.status = "starting" if pred.fetches == 1 else "processing"
                else:
                    self._finish(pred)
        return self._view(pred)

    def _cancel(self, pred: Prediction) -> dict[str, Any]:
        with self.lock:
            self.cancelled.append(pred.id)
            if pred.status in ("starting", "processing"):
                pred.status, pred.completed = "canceled", time.time()
        return self._view(pred)

    def _finish(self, pred: Prediction) -> None:
        pred.completed = time.time()
        if pred.outcome == "failed":
            pred.status = "failed"
            pred.error = (
                "The input or output was flagged as sensitive. Please try again with different inputs. (E005)"
                if "nsfw" in str(pred.input.get(REQUIRED.get(pred.model, "prompt"), ""))
                else "CUDA error: an illegal memory access was encountered"
            )
            return
        if pred.outcome == "canceled":
            pred.status = "canceled"
            return
        pred.status = "succeeded"
        fmt = pred.input.get("output_format", DEFAULT_FORMAT.get(pred.model, "webp"))
        count = pred.input.get("num_outputs", 1)
        urls = []
        for i in range(count):
            data = self._image(pred, fmt, i)
            path = f"/files/{pred.id}/out-{i}.{fmt}"
            self.files[path] = (data, time.time() + self.expire_seconds)
            self.served.append(data)
            urls.append(self.origin + path)
        pred.output = urls if pred.model in LIST_OUTPUT else urls[0]

    def _image(self, pred: Prediction, fmt: str, index: int) -> bytes:
        width, height = self._size(pred)
        buf = io.BytesIO()
        # JPEG and WebP at output_quality, tagged (Exif Software) as the stand-in's: a re-encoding drops the tag
        exif = Image.Exif()
        exif[0x0131] = "replicate-standin"
        extra: dict[str, Any] = {} if fmt == "png" else {"quality": int(pred.input.get("output_quality", 80)), "exif": exif}
        Image.new("RGB", (width, height), (30 + 40 * index, 140, 90)).save(buf, _PIL_FORMAT[fmt], **extra)
        return buf.getvalue()

    def _size(self, pred: Prediction) -> tuple[int, int]:
        inputs = pred.input
        if inputs.get("aspect_ratio") == "custom":
            return int(inputs["width"]), int(inputs["height"])
        ratio_name = inputs.get("aspect_ratio", "match_input_image" if "kontext" in pred.model else "1:1")
        source = inputs.get("input_image") or inputs.get("image")
        if source and (ratio_name == "match_input_image" or "image" in inputs):
            with Image.open(io.BytesIO(base64.b64decode(source.partition("base64,")[2]))) as img:
                ratio = img.width / img.height  # the output follows the input image
        elif ratio_name == "match_input_image":
            ratio = 1.0
        else:
            w, _, h = ratio_name.partition(":")
            ratio = float(w) / float(h)
        pixels = 1024 * 1024 * float(inputs.get("megapixels", "1"))
        return int(math.sqrt(pixels * ratio) // 64 * 64), int(math.sqrt(pixels / ratio) // 64 * 64)

    def _view(self, pred: Prediction) -> dict[str, Any]:
        base = f"{self.base_url}/predictions/{pred.id}"
        done = pred.status in ("succeeded", "failed", "canceled")
        return {
            "id": pred.id,
            "model": pred.model,
            "version": "hidden",
            "input": pred.input,
            "logs": "Using seed: 42\n" + ("100%|##########| 4/4\n" if done else ""),
            "output": pred.output,
            "data_removed": False,
            "error": pred.error,
            "status": pred.status,
            "created_at": _iso(pred.created),
            "started_at": _iso(pred.created) if pred.status != "starting" else None,
            "completed_at": _iso(pred.completed),
            "urls": {"get": base, "cancel": f"{base}/cancel", "web": f"https://replicate.com/p/{pred.id}"},
            "metrics": {"predict_time": 0.81} if pred.status == "succeeded" else {},
        }
