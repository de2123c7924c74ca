"""A stand-in Google image upstream on loopback: the Gemini API and Vertex AI paths.

Protocol, as Google documents it:

* https://ai.google.dev/gemini-api/docs/image-generation and
  https://ai.google.dev/api/generate-content - ``POST
  /v1beta/models/{model}:generateContent`` with ``x-goog-api-key``; a body of
  ``contents[{role, parts[{text} | {inlineData{mimeType, data}}]}]`` and
  ``generationConfig{responseModalities, imageConfig{aspectRatio, imageSize},
  maxOutputTokens, ...}``; unknown names are refused (400 ``Invalid JSON
  payload received. Unknown name "x"``); ``imageSize`` only on Gemini 3
  models, upper-case K. The answer: ``candidates[{content{role, parts},
  finishReason, index}]``, ``usageMetadata{promptTokenCount,
  candidatesTokenCount, thoughtsTokenCount, totalTokenCount,
  promptTokensDetails, candidatesTokensDetails}``, ``modelVersion``,
  ``responseId``. Refusals come as HTTP 200: ``promptFeedback.blockReason``
  without candidates, or a candidate with ``finishReason`` ``IMAGE_SAFETY``
  (``content.parts`` null, a ``finishMessage``) or ``NO_IMAGE``
  (python-genai ``types.py``: ``FinishReason``, ``BlockedReason``).
* https://ai.google.dev/gemini-api/docs/imagen - ``POST
  /v1beta/models/{model}:predict``, ``instances[{prompt}]``,
  ``parameters{sampleCount, aspectRatio, sampleImageSize, personGeneration,
  includeRaiReason, ...}`` (python-genai ``models.py``,
  ``_GenerateImagesConfig_to_mldev``), ``predictions[{bytesBase64Encoded,
  mimeType} | {raiFilteredReason}]``; everything filtered without
  ``includeRaiReason``: ``{}``.
* https://cloud.google.com/apis/design/errors and
  https://ai.google.dev/gemini-api/docs/troubleshooting - ``{"error": {code,
  message, status, details}}``: 400 ``INVALID_ARGUMENT`` (a bad key: reason
  ``API_KEY_INVALID`` in a ``google.rpc.ErrorInfo``), 403
  ``PERMISSION_DENIED`` (no key), 404 ``NOT_FOUND``, 429
  ``RESOURCE_EXHAUSTED`` with ``google.rpc.RetryInfo{retryDelay}``, 500
  ``INTERNAL``.
* Vertex AI: ``POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:{method}``
  with the same bodies; ``auth`` (a callable given the request's headers,
  lower-cased) decides who may call, or a subclass overrides
  :meth:`GoogleStandIn.authorize` to answer its own refusal (Vertex's 401);
  ``vertex_only`` serves Vertex's path alone, ``models`` replaces the models
  served (default ``MODELS``), and ``image_config_extra`` /
  ``parameters_extra`` name the Vertex-only fields it takes.

Where the documents are silent the stand-in chooses: images are PNGs at the
documented ratio and size (a size's square side x the ratio's root) divided
by ``scale`` (8) to keep tests fast; usage is ``usage`` when a test sets it,
else a plausible figure (image tokens from the model's table). Prompts
with a trigger answer as Google may: ``[block]``, ``[image-safety]``,
``[no-image]``, ``[max-tokens]``, ``[thought]`` (thought text and image
parts before the final image), ``[two-images]``, ``[text]`` (a text part),
``[snake]`` (snake_case keys), ``[429]``, ``[500]``, ``[bad-json]``,
``[filter-one]``, ``[filter-all]``, ``[filter-silent]`` (Imagen).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from standin_http import Handler, StandInServer

KEY = "AIzaStandIn-0123456789abcdefghijklmnop"
RATIOS_10 = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
SIDES = {"1K": 1024, "2K": 2048, "4K": 4096}


@dataclass(frozen=True)
class Model:
    method: str
    ratios: tuple[str, ...]
    sizes: dict[str, int]  # imageSize -> output image tokens (empty: no imageSize)
    tokens: int  # the default size's image tokens
    thinks: bool = False
    max_images: int = 14


MODELS = {
    "gemini-2.5-flash-image": Model("generateContent", RATIOS_10, {}, 1290, max_images=3),
    "gemini-3-pro-image": Model("generateContent", RATIOS_10, {"1K": 1120, "2K": 1120, "4K": 2000}, 1120, thinks=True),
    "gemini-3.1-flash-image": Model(
        "generateContent", (*RATIOS_10, "1:4", "4:1", "1:8", "8:1"), {"1K": 1120, "2K": 1680, "4K": 2520}, 1120, thinks=True
    ),
    "imagen-4.0-generate-001": Model("predict", ("1:1", "3:4", "4:3", "9:16", "16:9"), {"1K": 0, "2K": 0}, 0),
    "imagen-4.0-ultra-generate-001": Model("predict", ("1:1", "3:4", "4:3", "9:16", "16:9"), {"1K": 0, "2K": 0}, 0),
    "imagen-4.0-fast-generate-001": Model("predict", ("1:1", "3:4", "4:3", "9:16", "16:9"), {}, 0),
}
TOP = {"contents", "generationConfig", "safetySettings", "systemInstruction", "tools", "toolConfig", "cachedContent"}
GENERATION_CONFIG = {"responseModalities", "imageConfig", "maxOutputTokens", "temperature", "topP", "topK",
                     "candidateCount", "thinkingConfig", "seed"}  # fmt: skip
IMAGE_CONFIG = {"aspectRatio", "imageSize"}
PARAMETERS = {"sampleCount", "aspectRatio", "sampleImageSize", "personGeneration", "includeRaiReason", "safetySetting",
              "outputOptions", "language", "includeSafetyAttributes", "guidanceScale"}  # fmt: skip
GEMINI_PATH = re.compile(r"^/v1beta/models/([A-Za-z0-9._-]+):(generateContent|predict)$")
VERTEX_PATH = re.compile(
    r"^/v1/projects/([^/]+)/locations/([^/]+)/publishers/google/models/([A-Za-z0-9._-]+):(generateContent|predict)$"
)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    json: Any
    model: str = ""
    method: str = ""
    images: list[tuple[str, bytes]] = field(default_factory=list)  # inlineData parts: (mimeType, bytes), in order


@dataclass
class Fault:
    """The answer to the next call instead of Google's: a status and a body (raw bytes or JSON)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def google_error(status: int, state: str, message: str, details: list[dict[str, Any]] | None = None) -> Fault:
    return Fault(status, {"error": {"code": status, "message": message, "status": state, "details": details or []}})


def rate_limited(delay: str) -> Fault:
    return google_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details.", [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generate_content_requests"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
    ])  # fmt: skip


class Refused(Exception):
    def __init__(self, fault: Fault) -> None:
        self.fault = fault


def invalid(message: str) -> Refused:
    return Refused(google_error(400, "INVALID_ARGUMENT", message))


def unknown_name(name: str, where: str) -> Refused:
    return invalid(f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find field.")


def png(width: int, height: int, color: tuple[int, int, int] = (30, 140, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def dims(ratio: str, side: int, scale: int) -> tuple[int, int]:
    w, h = (int(x) for x in ratio.split(":"))
    stretch = math.sqrt(w / h)
    return max(1, round(side * stretch / 16) * 16 // scale), max(1, round(side / stretch / 16) * 16 // scale)


def snake(value: Any) -> Any:
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake(v) for v in value]
    return value


class GoogleStandIn(StandInServer[Received, Fault]):
    def __init__(
        self,
        key: str = KEY,
        *,
        auth: Callable[[dict[str, str]], bool] | None = None,
        image_config_extra: frozenset[str] = frozenset(),
        parameters_extra: frozenset[str] = frozenset(),
        scale: int = 8,
        models: Mapping[str, Model] | None = None,
        vertex_only: bool = False,
    ) -> None:
        self.key = key
        self.auth = auth or (lambda headers: headers.get("x-goog-api-key") == self.key)
        self.models: dict[str, Model] = dict(MODELS if models is None else models)
        self.vertex_only = vertex_only
        self.image_config_extra, self.parameters_extra, self.scale = image_config_extra, parameters_extra, scale
        self.usage: dict[str, Any] | None = None  # usageMetadata of the next answers, when set
        standin = self

        class GoogleHandler(Handler):
            def do_POST(self) -> None:  # noqa: N802
                standin.on_post(self)

        super().__init__(GoogleHandler, "/v1beta")

    def reset(self) -> None:
        super().reset()
        self.usage = None

    # -- requests ---------------------------------------------------------------------

    def on_post(self, h: Handler) -> None:
        body = h.read_body()
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        rec = Received(h.path, h.header_map(), payload)
        fault = self.record(rec)
        if fault is not None:
            return self._send(h, fault)
        try:
            self._send(h, Fault(200, self._answer(rec)))
        except Refused as no:
            self._send(h, no.fault)

    def _send(self, h: Handler, fault: Fault) -> None:
        if isinstance(fault.body, bytes):
            h._send(fault.status, fault.body, "application/json; charset=UTF-8", fault.headers)
        else:
            h.send_json(fault.status, fault.body, fault.headers)

    def _answer(self, rec: Received) -> Any:
        gemini, vertex = GEMINI_PATH.match(rec.path), VERTEX_PATH.match(rec.path)
        if self.vertex_only:
            gemini = None
        if gemini is None and vertex is None:
            raise Refused(google_error(404, "NOT_FOUND", f"The requested URL {rec.path} was not found on this server."))
        rec.model, rec.method = (gemini[1], gemini[2]) if gemini else (vertex[3], vertex[4])  # type: ignore[index]
        refusal = self.authorize(rec)
        if refusal is not None:
            raise Refused(refusal)
        model = self.models.get(rec.model)
        if model is None or model.method != rec.method:
            raise Refused(google_error(404, "NOT_FOUND", f"models/{rec.model} is not found for API version v1beta, "
                                       f"or is not supported for {rec.method}."))  # fmt: skip
        if rec.headers.get("content-type", "").split(";")[0] != "application/json" or not isinstance(rec.json, dict):
            raise invalid("Invalid JSON payload received.")
        return self._content(rec, model) if rec.method == "generateContent" else self._predict(rec, model)

    def authorize(self, rec: Received) -> Fault | None:
        """Who may call (``rec.model``/``rec.method`` are set): None, or the
        answer to a caller refused. The Gemini API: 403 without a key, 400
        ``API_KEY_INVALID`` for one ``auth`` refuses. A subclass may override it."""
        if "x-goog-api-key" not in rec.headers and "authorization" not in rec.headers:
            return google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")
        if not self.auth(rec.headers):
            return google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}
            ])  # fmt: skip
        return None

    # -- generateContent ----------------------------------------------------------------

    def _content(self, rec: Received, model: Model) -> Any:
        body = rec.json
        for name in body:
            if name not in TOP:
                raise unknown_name(name, "")
        contents = body.get("contents")
        if not isinstance(contents, list) or len(contents) != 1 or not isinstance(contents[0], dict):
            raise invalid("* GenerateContentRequest.contents: contents is not specified")
        turn = contents[0]
        if set(turn) - {"role", "parts"} or turn.get("role") != "user" or not isinstance(turn.get("parts"), list):
            raise invalid("* GenerateContentRequest.contents[0]: a user turn with parts is required")
        prompt = ""
        for part in turn["parts"]:
            if not isinstance(part, dict) or len(part) != 1:
                raise invalid("* GenerateContentRequest.contents[0].parts: one field per part")
            if "text" in part:
                prompt += str(part["text"])
            elif "inlineData" in part:
                blob = part["inlineData"]
                if not isinstance(blob, dict) or set(blob) != {"mimeType", "data"}:
                    raise invalid("* inlineData: mimeType and data are required")
                try:
                    rec.images.append((blob["mimeType"], base64.b64decode(blob["data"], validate=True)))
                except (binascii.Error, ValueError, TypeError):
                    raise invalid(
                        "Invalid value at 'contents[0].parts.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
                    ) from None
            else:
                raise unknown_name(next(iter(part)), "contents[0].parts[0]")
        if len(rec.images) > model.max_images:
            raise invalid(f"Too many images: at most {model.max_images} per request.")
        config = body.get("generationConfig") or {}
        for name in config:
            if name not in GENERATION_CONFIG:
                raise unknown_name(name, "generation_config")
        image_config = config.get("imageConfig") or {}
        for name in image_config:
            if name not in IMAGE_CONFIG | self.image_config_extra:
                raise unknown_name(name, "generation_config.image_config")
        ratio = image_config.get("aspectRatio", "1:1")
        if ratio not in model.ratios:
            raise invalid(f"Unsupported aspect ratio: {ratio}.")
        size = image_config.get("imageSize")
        if size is not None and size not in model.sizes:
            raise invalid(f"Unsupported image size: {size}." if model.sizes else "imageSize is not supported by this model.")
        tokens = model.sizes.get(size or "1K", model.tokens) if model.sizes else model.tokens
        return self._content_answer(rec, model, prompt, ratio, SIDES.get(size or "1K", 1024), tokens)

    def _content_answer(self, rec: Received, model: Model, prompt: str, ratio: str, side: int, tokens: int) -> Any:
        if "[429]" in prompt:
            raise Refused(rate_limited("1.2s"))
        if "[500]" in prompt:
            raise Refused(
                google_error(
                    500,
                    "INTERNAL",
                    "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
                )
            )
        if "[bad-json]" in prompt:
            raise Refused(Fault(200, b"<html>not json</html>"))
        if "[block]" in prompt:
            return {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                    "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "modelVersion": rec.model}  # fmt: skip
        image = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png(*dims(ratio, side, self.scale))).decode()}}
        parts: list[dict[str, Any]] = [image]
        finish = "STOP"
        for trigger, reason in (("[image-safety]", "IMAGE_SAFETY"), ("[no-image]", "NO_IMAGE"), ("[max-tokens]", "MAX_TOKENS")):
            if trigger in prompt:
                parts, finish = [], reason
        if "[thought]" in prompt:
            thought = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png(8, 8, (250, 0, 0))).decode()}}
            parts = [{"text": "Composing the scene...", "thought": True}, {**thought, "thought": True}, *parts]
        if "[two-images]" in prompt:
            first = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png(8, 8, (0, 0, 250))).decode()}}
            parts = [first, *parts]
        if "[text]" in prompt:
            parts.append({"text": "A calm lake at dawn, as asked."})
        prompt_tokens = len(prompt) // 4 + 258 * len(rec.images)
        images_out = sum(1 for p in parts if "inlineData" in p)
        thoughts = 200 if model.thinks else 0
        candidates = images_out * tokens + (12 if parts else thoughts)
        usage = self.usage or {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": candidates,
            "thoughtsTokenCount": thoughts,
            "totalTokenCount": prompt_tokens + candidates + thoughts,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": len(prompt) // 4}]
            + ([{"modality": "IMAGE", "tokenCount": 258 * len(rec.images)}] if rec.images else []),
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": images_out * tokens}] if images_out else [],
        }
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts or None}, "finishReason": finish, "index": 0}
        if finish == "IMAGE_SAFETY":
            candidate["finishMessage"] = "Unable to show the generated image: it may violate the usage policies."
        answer = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": rec.model, "responseId": "standin-1"}
        return snake(answer) if "[snake]" in prompt else answer

    # -- predict ------------------------------------------------------------------------

    def _predict(self, rec: Received, model: Model) -> Any:
        body = rec.json
        for name in body:
            if name not in ("instances", "parameters"):
                raise unknown_name(name, "")
        instances = body.get("instances")
        if not isinstance(instances, list) or len(instances) != 1 or set(instances[0]) != {"prompt"}:
            raise invalid("instances: exactly one instance with a prompt")
        prompt = str(instances[0]["prompt"])
        parameters = body.get("parameters") or {}
        for name in parameters:
            if name not in PARAMETERS | self.parameters_extra:
                raise unknown_name(name, "parameters")
        count = parameters.get("sampleCount", 4)
        if not isinstance(count, int) or not 1 <= count <= 4:
            raise invalid("sampleCount must be between 1 and 4.")
        ratio = parameters.get("aspectRatio", "1:1")
        if ratio not in model.ratios:
            raise invalid(f"Unsupported aspect ratio: {ratio}.")
        size = parameters.get("sampleImageSize")
        if size is not None and size not in model.sizes:
            raise invalid("sampleImageSize is not supported by this model." if not model.sizes else f"Unsupported size {size}.")
        if parameters.get("personGeneration", "allow_adult") not in (
            "dont_allow",
            "allow_adult",
            *self.parameters_extra & {"allow_all"},
        ):
            raise invalid("personGeneration: allow_all is not supported in the Gemini API.")
        if "[429]" in prompt:
            raise Refused(rate_limited("3s"))
        reason = (
            "Your current safety filter threshold filtered out 1 generated images. You will not be charged for blocked images."
        )
        if "[filter-silent]" in prompt:
            return {}
        made = [] if "[filter-all]" in prompt else range(count - 1 if "[filter-one]" in prompt else count)
        side = SIDES.get(size or "1K", 1024)
        predictions: list[dict[str, Any]] = [
            {
                "mimeType": "image/png",
                "bytesBase64Encoded": base64.b64encode(png(*dims(ratio, side, self.scale), (i * 60, 90, 90))).decode(),
            }
            for i in made
        ]
        if parameters.get("includeRaiReason"):
            predictions += [{"raiFilteredReason": reason}] * (count - len(predictions))
        return {"predictions": predictions} if predictions else {}
