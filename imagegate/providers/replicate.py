"""``replicate``: Replicate's predictions API, on the job engine (``jobs.py``).

The protocol (sources: https://replicate.com/docs/reference/http,
https://replicate.com/docs/topics/predictions/create-a-prediction,
https://replicate.com/docs/topics/predictions/lifecycle, the
``replicate-python`` client's ``replicate/prediction.py``, ``run.py`` and
``exceptions.py``; ``tests/standin_replicate.py`` cites the rest):

* **Create**: ``POST {base_url}/models/{owner}/{name}/predictions`` (an
  official model) or ``POST {base_url}/predictions`` with ``"version"`` (a
  pinned ``owner/name:version``), ``{"input": {...}}``, ``Authorization:
  Bearer``, answered 201 with the prediction: ``id``, ``status``, ``urls.get``,
  ``urls.cancel``, ``output``, ``error``, ``logs``, ``metrics.predict_time``.
* **Sync mode**: ``Prefer: wait=N`` (1-60 s, option ``wait_seconds``) holds
  the create open until the prediction is done or N has passed, so a quick
  model needs no poll at all: an answer that is already ``succeeded`` (or,
  as the official client reads it, ``processing`` with every output file) is
  the job's result (``Job.result``); one still ``starting``/``processing`` is
  polled. ``Cancel-After`` (the job's deadline) makes Replicate cancel a
  prediction nobody can cancel any more (a client that hung up during the
  wait, before the prediction's id was known).
* **Poll**: ``GET urls.get``; ``starting``, ``processing`` -> pending;
  ``succeeded`` -> the ``output`` URL(s) (replicate.delivery, deleted after an
  hour), downloaded at once by the engine; ``failed`` -> the ``error`` text
  (a safety refusal is a 400 ``content_policy_violation``); ``canceled``,
  ``aborted`` (the deadline passed before it ran) -> 502/504.
* **Cancel**: ``POST urls.cancel``, for a job nobody waits for any more.
* **Errors** are problem details, ``{"title", "detail", "status"}`` (422
  ``invalid_fields`` name the input field; it is reported as the client's
  field it came from), or ``{"detail"}`` alone (429, with ``Retry-After``).

**The input** differs per model, so an upstream model has a
:class:`ReplicateInputs` mapping: which input field each OpenAI field
becomes (``prompt``; ``n`` -> ``num_outputs``; ``size`` -> the nearest
``aspect_ratio`` or fitted ``width``/``height``; ``output_format``
(``jpeg`` -> ``jpg``; png, the gateway's default answer, when none is asked,
so that no lossy default is converted); ``output_compression`` ->
``output_quality``, and the model's JPEG or WebP at the asked size is then
returned as it is, not compressed again; an
edit's image -> ``input_image``/``image`` as a ``data:`` URI). The built-in
maps fit the FLUX models (:data:`BUILTIN_INPUTS`); the provider option
``inputs:`` gives a model id (or a shell pattern) its own, and a model with
none takes the prompt only. The catalog entry's ``extra_fields`` go into the
input under their own names (they are the model's input names). A field the
client sent that the mapping does not take is a 400 naming it, never
dropped. A model with ``n`` mapped makes ``n`` images in one prediction;
another gets ``n`` predictions. Replicate states no price in its answers:
the catalog's per-image price is the charge. docs/upstreams/replicate.md
has the config and the field table.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, model_validator

from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment, GeneratedImage
from imagegate.contract.rules import parse_size
from imagegate.errors import ConfigError, ImagegateError, InvalidRequestError, UpstreamError, UpstreamTimeoutError
from imagegate.imaging.probe import ImageProbeError, probe
from imagegate.providers.base import ProviderOptions
from imagegate.providers.http import ErrorFields, invalid_response
from imagegate.providers.inputs_map import InputBody, InputsMap, inputs_for, nearest_ratio
from imagegate.providers.jobs import Job, JobOptions, JobProvider, Poll
from imagegate.providers.redact import redact_error

log = logging.getLogger("imagegate.providers.replicate")

# The aspect ratios of FLUX.1 [schnell]/[dev] and FLUX1.1 [pro] (their input
# schemas on replicate.com), and FLUX.1 Kontext's.
FLUX_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
KONTEXT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "4:5", "5:4", "21:9", "9:21", "2:1", "1:2")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
# owner/name (an official model, or a model's latest version), owner/name:version, or a version id.
_MODEL = re.compile(rf"^(?P<model>{_NAME}/{_NAME})(:(?P<version>[0-9a-f]{{64}}))?$|^(?P<bare>[0-9a-f]{{64}})$")
_PENDING = frozenset({"starting", "processing"})
# A failed prediction refused by a safety checker, in the words FLUX models use
# ("NSFW content detected", "flagged as sensitive (E005)").
_MODERATED = re.compile(r"nsfw|\bsensitive\b|\bflagged\b|\bE005\b|safety", re.IGNORECASE)
_MESSAGE_CAP = 1000
_MAX_WAIT = 60  # Prefer: wait=N takes 1 to 60 seconds


class ReplicateInputs(InputsMap):
    """Which input field each OpenAI field becomes, for one model (None: the
    model has no such input, and a request that sends the field is a 400
    naming it). The defaults take the prompt only."""

    # n, e.g. num_outputs: n images in one prediction; None: one prediction per image.
    # How `size` is sent: the nearest of `aspect_ratios` in `aspect_ratio`, or
    # `width`/`height` fitted within min_edge..max_edge in steps of multiple_of
    # (with aspect_ratio: custom_ratio, when the model needs it to read them).
    size: Literal["aspect_ratio", "width_height"] | None = None
    aspect_ratios: tuple[str, ...] = FLUX_RATIOS
    custom_ratio: str | None = None
    multiple_of: int = Field(16, ge=1)
    min_edge: int = Field(256, ge=1)
    max_edge: int = Field(1440, ge=1)
    output_formats: dict[str, str] = {"jpeg": "jpg"}  # OpenAI's value -> the model's (others as they are)
    output_compression: str | None = None  # e.g. output_quality (0-100)

    @model_validator(mode="after")
    def _edges(self) -> ReplicateInputs:
        if self.min_edge > self.max_edge:
            raise ValueError("min_edge is larger than max_edge")
        return self


_FORMAT, _QUALITY = "output_format", "output_quality"
# The FLUX models' inputs on Replicate (their model pages' API schemas; see imagegate/catalog/replicate.yaml).
BUILTIN_INPUTS: dict[str, ReplicateInputs] = {
    "black-forest-labs/flux-schnell": ReplicateInputs(
        n="num_outputs", size="aspect_ratio", output_format=_FORMAT, output_compression=_QUALITY
    ),
    "black-forest-labs/flux-dev": ReplicateInputs(
        n="num_outputs", size="aspect_ratio", image="image", output_format=_FORMAT, output_compression=_QUALITY
    ),
    # width/height count with aspect_ratio "custom": 256-1440, multiples of 32.
    "black-forest-labs/flux-1.1-pro": ReplicateInputs(
        size="width_height", custom_ratio="custom", multiple_of=32, output_format=_FORMAT, output_compression=_QUALITY
    ),
    # Kontext: one input image, jpg or png, no output_quality.
    "black-forest-labs/flux-kontext-*": ReplicateInputs(
        size="aspect_ratio", aspect_ratios=KONTEXT_RATIOS, image="input_image", output_format="output_format"
    ),
}


class ReplicateOptions(JobOptions):
    base_url: str = "https://api.replicate.com/v1"
    # Poll and cancel URLs may name base_url's host only (list more here);
    # never api.replicate.com by default: a proxy's key would go there.
    poll_hosts: list[str] = []
    # Prefer: wait=N on create: a model done within N seconds needs no poll (0: never wait).
    wait_seconds: int = Field(30, ge=0, le=_MAX_WAIT)
    # Cancel-After on create (the job's deadline): Replicate cancels what nobody waits for.
    cancel_after: bool = True
    # Upstream model id (or shell pattern) -> its input mapping; a model not
    # matched here gets the built-in one (BUILTIN_INPUTS), else the prompt only.
    inputs: dict[str, ReplicateInputs] = Field(default_factory=dict)


def fit(width: int, height: int, inputs: ReplicateInputs) -> tuple[int, int]:
    """``width`` x ``height`` scaled (keeping its ratio where the edges allow)
    to within ``min_edge``..``max_edge``, in steps of ``multiple_of``: what
    the model can make; the gateway makes it the asked size afterwards."""
    step, low, high = inputs.multiple_of, inputs.min_edge, inputs.max_edge
    scale = min(1.0, high / max(width, height))
    scale = max(scale, low / min(width, height))
    lowest, highest = math.ceil(low / step) * step, max(step, high // step * step)

    def edge(value: int) -> int:
        return min(highest, max(lowest, round(value * scale / step) * step))

    return edge(width), edge(height)


def replicate_input(request: ImageRequest, inputs: ReplicateInputs) -> tuple[dict[str, Any], dict[str, str]]:
    """The model's input for ``request``, and which client field each input
    field came from (to name it in Replicate's errors). A field the mapping
    does not take is a 400 naming it."""
    body = InputBody(request, "Replicate")
    targets = {
        "prompt": inputs.prompt,
        "n": inputs.n,
        "output_format": inputs.output_format,
        "output_compression": inputs.output_compression,
    }
    body.put_sent(targets, inputs.output_formats)
    # png, not the model's lossy default (webp), when no format is asked.
    body.put_default_format(inputs.output_format, inputs.output_formats)
    dims = body.asked_size(inputs.size is not None)
    if dims is not None and inputs.size == "aspect_ratio":
        body.put("aspect_ratio", nearest_ratio(*dims, inputs.aspect_ratios), "size")
    elif dims is not None:
        if inputs.custom_ratio is not None:
            body.put("aspect_ratio", inputs.custom_ratio, "size")
        width, height = fit(*dims, inputs)
        body.put("width", width, "size")
        body.put("height", height, "size")
    body.put_extra()
    if request.mask is not None:
        raise InvalidRequestError(
            f"Model '{request.model}' does not take a mask on Replicate; send the edit without one.",
            param="mask",
            code="unsupported_mask",
        )
    body.put_images(inputs.image)
    return body.fields, body.origin


def replicate_error_fields(body: bytes) -> ErrorFields | None:
    """Replicate's problem details: ``{"title", "detail", "status"}``, with
    ``invalid_fields: [{"type", "field": "input.NAME", "description"}]`` on a
    422; or ``{"detail"}`` alone (a 429)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    detail, title = payload.get("detail"), payload.get("title")
    message = detail.strip() if isinstance(detail, str) and detail.strip() else title if isinstance(title, str) else None
    if not message:
        return None
    code = "_".join(title.lower().split()) if isinstance(title, str) and title else None
    param = None
    fields = payload.get("invalid_fields")
    if isinstance(fields, list) and fields and isinstance(fields[0], dict) and isinstance(fields[0].get("field"), str):
        param = fields[0]["field"].removeprefix("input.") or None
    return ErrorFields(message[:_MESSAGE_CAP], code=code, param=param)


class ReplicateProvider(JobProvider):
    type_name: ClassVar[str] = "replicate"
    options_model: ClassVar[type[ProviderOptions]] = ReplicateOptions
    options: ReplicateOptions

    @classmethod
    def rules_for(cls, options: ProviderOptions, model: str) -> None:
        raise ConfigError(
            f"the Replicate model {model!r} has no catalog entry: add one under 'catalog:' (the fields its input takes, "
            "its price; see docs/upstreams/replicate.md) or set 'rules:' to the entry it follows"
        )

    async def start(self, models: Sequence[str]) -> None:
        for model in models:
            if not _MODEL.match(model):  # its requests are 502s (invalid_model_id): say so now
                log.warning("%s: %r is not a Replicate model (owner/name or owner/name:version)", self.name, model)

    def inputs_for(self, model: str) -> ReplicateInputs:
        """The input mapping of the upstream model ``model`` (a pinned version
        uses its model's): the config's (an exact id, then the first matching
        pattern), else the built-in one, else the prompt only."""
        match = _MODEL.match(model)
        name = (match.group("model") or model) if match else model
        return inputs_for(name, (self.options.inputs, BUILTIN_INPUTS), ReplicateInputs())

    def jobs_for(self, request: ImageRequest, deployment: Deployment) -> int:
        return 1 if self.inputs_for(deployment.model).n is not None else request.n

    # -- the engine's hooks --------------------------------------------------------

    async def submit(self, request: ImageRequest, deployment: Deployment, index: int) -> Job:
        if request.endpoint == "variations":
            raise InvalidRequestError(
                f"Model '{request.model}' does not support image variations on Replicate.",
                param="model",
                code="unsupported_model",
            )
        inputs = self.inputs_for(deployment.model)
        body, origin = replicate_input(request, inputs)
        path, payload = self._target(deployment.model, body)
        wait = self._wait_seconds(deployment)
        headers = {"Content-Type": "application/json"}
        if wait:
            headers["Prefer"] = f"wait={wait}"
        if self.options.cancel_after:
            limit = deployment.timeout or self.options.job_timeout_seconds
            headers["Cancel-After"] = f"{math.ceil(limit + wait)}s"
        call = self.build("POST", path, deployment, content=orjson.dumps(payload), headers=headers)
        try:
            async with self.exchange(call, deployment, ok=(200, 201, 202), starts_work=True) as response:
                prediction = _prediction(self.name, await self.read(response))
        except ImagegateError as exc:
            if exc.param is not None:
                exc.param = origin.get(exc.param, exc.param)
            raise
        urls = prediction["urls"]
        expect = request.n if inputs.n is not None else 1
        job = Job(
            prediction["id"],
            self.checked_url(urls.get("get"), "urls.get"),
            self.checked_url(urls["cancel"], "urls.cancel") if urls.get("cancel") is not None else None,
            data={"expect": expect},
        )
        state = self._state(prediction, expect, deployment, synced=wait > 0)
        if state.state != "pending":
            job.result = state
        return job

    async def poll(self, job: Job, deployment: Deployment) -> Poll:
        try:
            prediction = _checked_prediction(self.name, await self.get_json(job.poll_url, deployment))
        except ImagegateError as exc:
            if exc.status != 404:
                raise
            log.warning("%s: prediction %s is gone (HTTP 404)", self.name, job.id)
            gone = UpstreamError(f"The upstream '{self.name}' no longer knows prediction {job.id}.", code="upstream_job_lost")
            return Poll("failed", "not found", error=gone)  # final: asking again would not bring it back
        return self._state(prediction, int(job.data.get("expect", 1)), deployment, synced=False)

    async def _fetch(self, url: str, request: ImageRequest) -> GeneratedImage:
        """The engine's download, marked ``compressed`` when the model already
        applied the client's ``output_compression`` (``output_quality``) and
        the gateway keeps the image as it is, so it is not compressed twice."""
        image = await super()._fetch(url, request)
        if _compressed_as_asked(image, request, self.context.max_image_pixels):
            return GeneratedImage(image.data, image.format, compressed=True)
        return image

    async def cancel(self, job: Job, deployment: Deployment) -> None:
        if job.cancel_url is None:
            return
        async with self.exchange(self.build("POST", job.cancel_url, deployment), deployment, ok=(200, 201, 202, 204)):
            pass

    # -- a prediction's state ------------------------------------------------------

    def _target(self, model: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The create path and body: an official model's own endpoint, or
        ``/predictions`` with the version."""
        match = _MODEL.match(model)
        if match is None:
            raise UpstreamError(
                f"The deployment's model '{model}' is not a Replicate model (owner/name or owner/name:version).",
                code="invalid_model_id",
            )
        if match.group("model") and not match.group("version"):
            return f"/models/{match.group('model')}/predictions", {"input": body}
        return "/predictions", {"version": model, "input": body}

    def _wait_seconds(self, deployment: Deployment) -> int:
        """``Prefer: wait``'s seconds: the option's, within the exchange's time."""
        limit = min(self.options.timeout_seconds, deployment.timeout or math.inf)
        return max(0, min(self.options.wait_seconds, math.floor(limit) - 1))

    def _state(self, prediction: dict[str, Any], expect: int, deployment: Deployment, *, synced: bool) -> Poll:
        status = prediction["status"]
        if status in _PENDING:
            urls = _outputs(self.name, prediction.get("output"), expect)
            # Sync mode answers with the files as soon as they all exist, the
            # status possibly still "processing" (replicate-python's run.py).
            if synced and status == "processing" and len(urls) == expect:
                return Poll("ready", status, urls=urls)
            return Poll("pending", status)
        if status == "succeeded":
            urls = _outputs(self.name, prediction.get("output"), expect)
            if not urls:
                raise invalid_response(self.name, "a succeeded prediction has no output URL")
            metrics = prediction.get("metrics")
            seconds = metrics.get("predict_time") if isinstance(metrics, dict) else None
            log.info("%s: prediction %s succeeded (predict_time %s s)", self.name, prediction["id"], seconds)
            return Poll("ready", status, urls=urls)
        error: ImagegateError
        ident = prediction["id"]
        if status == "failed":
            text = prediction.get("error")
            text = str(text)[:_MESSAGE_CAP] if text else "no error given"
            if _MODERATED.search(text):
                error = InvalidRequestError(
                    f"The upstream '{self.name}' refused the request: {text}", param="prompt", code="content_policy_violation"
                )
            else:
                error = UpstreamError(f"The upstream '{self.name}' prediction failed: {text}", code="upstream_job_failed")
        elif status == "canceled":
            error = UpstreamError(f"The upstream '{self.name}' canceled prediction {ident}.", code="upstream_job_canceled")
        elif status == "aborted":
            error = UpstreamTimeoutError(f"The upstream '{self.name}' aborted prediction {ident}: its deadline passed.")
        else:
            raise invalid_response(self.name, f"a prediction's status is {status!r}")
        log.warning("%s: prediction %s %s", self.name, prediction["id"], status)
        return Poll("failed", status, error=redact_error(error, self.secrets(deployment)))

    # -- error answers ---------------------------------------------------------------

    def error_fields(self, body: bytes) -> ErrorFields | None:
        return replicate_error_fields(body)


def _compressed_as_asked(image: GeneratedImage, request: ImageRequest, max_pixels: int) -> bool:
    """Whether ``image`` is the model's answer to the client's
    ``output_compression`` in the JPEG or WebP asked for, at the asked size.
    A sent field reached the model's input or was a 400 (replicate_input),
    so a sent ``output_compression`` the gateway does not keep for itself was
    mapped. An image the gateway must resize or convert anyway is not marked:
    that one re-encode applies the client's level."""
    spec = request.spec
    if request.output_compression is None or "output_compression" in spec.gateway_fields:
        return False
    asked = request.sent().get("output_format")
    if asked not in ("jpeg", "webp") or image.format != asked:
        return False
    dims = parse_size(request.params.size) if request.params.size else None
    if dims is None:
        return True
    try:
        info = probe(image.data, max_pixels=max_pixels, verify=False)
    except ImageProbeError:
        return False
    return (info.width, info.height) == dims


def _prediction(provider: str, body: bytes) -> dict[str, Any]:
    """A prediction object, its id, status and urls checked."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid_response(provider, "the answer is not JSON") from None
    return _checked_prediction(provider, payload)


def _checked_prediction(provider: str, payload: Any) -> dict[str, Any]:
    """A parsed prediction, its id, status and urls checked."""
    if not isinstance(payload, dict):
        raise invalid_response(provider, "the answer is not a JSON object")
    if not isinstance(payload.get("id"), str) or not payload["id"] or not isinstance(payload.get("status"), str):
        raise invalid_response(provider, "a prediction has no id or status")
    urls = payload.get("urls")
    if not isinstance(urls, dict):
        raise invalid_response(provider, "a prediction has no urls")
    return payload


def _outputs(provider: str, output: object, expect: int) -> list[str]:
    """A prediction's output file URLs: one URL or a list of them; more than
    the images asked for is an invalid answer."""
    if output is None:
        return []
    items = output if isinstance(output, list) else [output]
    if not all(isinstance(item, str) and item.startswith(("https://", "http://")) for item in items):
        raise invalid_response(provider, "a prediction's output is not a URL or a list of URLs")
    if len(items) > expect:
        raise invalid_response(provider, f"a prediction made {len(items)} images where {expect} were asked for")
    return [str(item) for item in items]


__all__ = [
    "BUILTIN_INPUTS",
    "FLUX_RATIOS",
    "KONTEXT_RATIOS",
    "ReplicateInputs",
    "ReplicateOptions",
    "ReplicateProvider",
    "fit",
    "nearest_ratio",
    "replicate_error_fields",
    "replicate_input",
]
