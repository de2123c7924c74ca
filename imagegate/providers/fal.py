"""``fal``: fal's queue API (``queue.fal.run``), on the job engine (``jobs.py``).

The protocol (sources: https://docs.fal.ai/model-endpoints/queue,
https://fal.ai/docs/api-reference/inference-api, the ``fal-client`` Python
SDK's ``projects/fal_client/src/fal_client/client.py`` and the JS SDK's
``libs/client/src/queue.ts``; ``tests/standin_fal.py`` cites the rest):

* **Submit**: ``POST {base_url}/{model_id}`` with the model's input as JSON
  and ``Authorization: Key <key>``, answered with ``{request_id, status_url,
  response_url, cancel_url}``. Those URLs name the model's owner and app only
  (no sub-path: ``fal-ai/flux/dev`` polls under ``fal-ai/flux``), so they are
  used as given, after the engine's host check.
* **Poll**: ``GET status_url``: ``IN_QUEUE`` (with ``queue_position``),
  ``IN_PROGRESS``, ``COMPLETED``. A completed request's outcome is ``GET
  response_url``: the model's output, or the error the model answered with
  (its status and body). Errors are ``{"detail": "<text>", "error_type":
  ...}`` (request errors) or ``{"detail": [{loc, msg, type}, ...]}`` (model
  errors, 422 for validation).
* **Cancel**: ``PUT cancel_url``; the engine calls it for a job nobody waits
  for any more (a client that hung up, a deadline).

**The input** differs per model, so an upstream model id has an
:class:`FalInputs` mapping: which fal field each OpenAI field becomes
(``prompt``, ``n`` -> ``num_images``, ``size`` -> ``image_size``
``{width, height}`` or the nearest ``aspect_ratio``, ``output_format``,
the edit's image(s) -> ``image_url``/``image_urls`` as ``data:`` URIs,
``mask`` -> ``mask_url``, converted from OpenAI's convention, transparent =
edit, to FLUX Fill's, white = inpaint and black = keep: ``imaging/masks.py``).
The defaults fit fal's FLUX models; the provider option ``inputs:`` gives a
model id (or a shell pattern) its own. Fields the
catalog entry declares in ``extra_fields`` go into the input under their own
names (they are fal's input names). A field the client sent that the mapping
does not map is a 400 naming it, never dropped. fal makes ``n`` itself
(``num_images``): one job per request; a model mapped without ``n`` gets
``n`` jobs of one image each.

**Answers**: ``images: [{url, width, height, content_type}]`` downloaded by
the engine (fal's CDN URLs expire), ``has_nsfw_concepts`` per image: a
flagged image is left out, and when every image is flagged the request is a
400 ``content_policy_violation``. fal states no cost: the catalog's price is
the charge. docs/upstreams/fal.md has the config and the field table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import orjson
import pybase64
from pydantic import Field

from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment
from imagegate.errors import ImagegateError, InvalidRequestError, UpstreamError
from imagegate.imaging.masks import inpaint_mask
from imagegate.providers.base import ProviderOptions
from imagegate.providers.http import ErrorFields, invalid_response
from imagegate.providers.inputs_map import InputBody, InputsMap, inputs_for, nearest_ratio
from imagegate.providers.job_hosts import vendor_poll_hosts
from imagegate.providers.jobs import Job, JobOptions, JobProvider, Poll
from imagegate.providers.redact import redact_error

log = logging.getLogger("imagegate.providers.fal")

# FLUX.1 Kontext's aspect ratios (fal-ai/flux-pro/kontext's input schema).
KONTEXT_RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")
# owner/app[/path...]: the path of the submit URL, nothing else.
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)+$")
_PENDING = frozenset({"IN_QUEUE", "IN_PROGRESS"})
_ANY_STATUS = range(100, 1000)
# fal's queue host and its backup domain.
FAL_QUEUE_HOSTS = ("queue.fal.run", "queue.falrun.com")


class FalInputs(InputsMap):
    """Which fal input field each OpenAI field becomes, for one model (None:
    the model has no such input, and a request that sends the field is a 400
    naming it; for ``n``, the request takes ``n`` jobs). The defaults fit
    fal's FLUX text-to-image models."""

    n: str | None = "num_images"  # fal makes n images in one request (None: n jobs of one image)
    # How `size` is sent: `image_size` as {"width", "height"}, or the nearest of
    # `aspect_ratios` in `aspect_ratio`.
    size: Literal["image_size", "aspect_ratio"] | None = "image_size"
    aspect_ratios: tuple[str, ...] = KONTEXT_RATIOS
    output_format: str | None = "output_format"
    image: str | None = "image_url"  # an edit's one image, as a data: URI
    images: str | None = None  # an edit's images, a list of data: URIs (wins over `image`)
    mask: str | None = "mask_url"


# Built in, after the config's own (the first match wins): Kontext takes an
# aspect ratio and no mask, its multi-image endpoints a list of images; every
# other model gets the FLUX defaults.
BUILTIN_INPUTS: dict[str, FalInputs] = {
    "fal-ai/flux-pro/kontext*/multi": FalInputs(size="aspect_ratio", images="image_urls", mask=None),
    "fal-ai/flux-pro/kontext*": FalInputs(size="aspect_ratio", mask=None),
    "*": FalInputs(),
}


class FalOptions(JobOptions):
    auth_header: ClassVar[str] = "Authorization"
    auth_prefix: ClassVar[str] = "Key "

    base_url: str = "https://queue.fal.run"
    # fal's queue host and its backup domain (fal-js backup-domain.ts) by default
    # when base_url is fal's; none with a proxy (its key is not fal's).
    poll_hosts: list[str] = Field(default_factory=vendor_poll_hosts(*FAL_QUEUE_HOSTS))
    # Upstream model id (or shell pattern) -> its input mapping; a model not
    # matched here gets the built-in one (BUILTIN_INPUTS).
    inputs: dict[str, FalInputs] = Field(default_factory=dict)


def fal_input(request: ImageRequest, inputs: FalInputs) -> tuple[dict[str, Any], dict[str, str]]:
    """The model's input for ``request``, and which client field each input
    field came from (to name it in fal's errors). A field the mapping does
    not take is a 400 naming it."""
    body = InputBody(request, "fal")
    body.put_sent({"prompt": inputs.prompt, "n": inputs.n, "output_format": inputs.output_format}, {})
    # The gateway's default (png, as OpenAI's) asked of fal, so its image needs no conversion.
    body.put_default_format(inputs.output_format, {})
    dims = body.asked_size(inputs.size is not None)
    if dims is not None and inputs.size == "image_size":
        body.put("image_size", {"width": dims[0], "height": dims[1]}, "size")
    elif dims is not None:
        body.put("aspect_ratio", nearest_ratio(*dims, inputs.aspect_ratios), "size")
    body.put_extra()
    body.put_images(inputs.image, inputs.images)
    _mask(request, inputs, body)
    return body.fields, body.origin


def _mask(request: ImageRequest, inputs: FalInputs, body: InputBody) -> None:
    if request.mask is None:
        return
    if inputs.mask is None:
        raise InvalidRequestError(
            f"Model '{request.model}' does not take a mask on fal; send the edit without one.",
            param="mask",
            code="unsupported_mask",
        )
    # OpenAI's mask (transparent = edit) as FLUX Fill's (white = inpaint, black = keep), the first image's size.
    first = request.images[0] if request.images else None
    size = (first.info.width, first.info.height) if first is not None else (request.mask.info.width, request.mask.info.height)
    converted = pybase64.b64encode(inpaint_mask(request.mask.data, size, request.model)).decode("ascii")
    body.put(inputs.mask, f"data:image/png;base64,{converted}", "mask")


def fal_error_fields(body: bytes) -> ErrorFields | None:
    """fal's ``{"detail": "<text>", "error_type": ...}`` or
    ``{"detail": [{"loc": ["body", FIELD], "msg", "type"}, ...]}``."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if isinstance(detail, str) and detail:
        kind = payload.get("error_type")
        return ErrorFields(detail, code=kind if isinstance(kind, str) else None)
    if not isinstance(detail, list) or not detail or not all(isinstance(d, dict) for d in detail):
        return None
    messages: list[str] = []
    param: str | None = None
    code: str | None = None
    for item in detail:
        loc = [str(p) for p in item.get("loc", []) if isinstance(p, str | int)]
        where = ".".join(loc[1:] if loc[:1] == ["body"] else loc)
        msg = item.get("msg")
        messages.append(f"{where}: {msg}" if where else str(msg))
        if param is None and len(loc) > 1 and loc[0] == "body":
            param = loc[1]
        if code is None and isinstance(item.get("type"), str):
            code = item["type"]
    return ErrorFields("; ".join(messages), code=code, param=param)


class FalProvider(JobProvider):
    type_name: ClassVar[str] = "fal"
    options_model: ClassVar[type[ProviderOptions]] = FalOptions
    # A fal model id the catalog does not list: FLUX text-to-image rules, no price.
    default_rules = "fal-flux"
    options: FalOptions

    def inputs_for(self, model: str) -> FalInputs:
        """The input mapping of the upstream model id ``model``: the config's
        (an exact id, then the first matching pattern), else the built-in one."""
        return inputs_for(model, (self.options.inputs, BUILTIN_INPUTS), FalInputs())

    def jobs_for(self, request: ImageRequest, deployment: Deployment) -> int:
        """One job making ``n`` images (``num_images``), or ``n`` jobs of one
        image each for a model whose mapping has no ``n``."""
        return 1 if self.inputs_for(deployment.model).n is not None else request.n

    # -- the engine's hooks --------------------------------------------------------

    async def submit(self, request: ImageRequest, deployment: Deployment, index: int) -> Job:
        if request.endpoint == "variations":
            raise InvalidRequestError(
                f"Model '{request.model}' does not support image variations on fal.", param="model", code="unsupported_model"
            )
        if not _MODEL_ID.match(deployment.model):
            raise UpstreamError(
                f"The deployment's model '{deployment.model}' is not a fal model id (owner/app[/path]).", code="invalid_model_id"
            )
        body, origin = fal_input(request, self.inputs_for(deployment.model))
        call = self.build("POST", f"/{deployment.model}", deployment, content=orjson.dumps(body),
                          headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            async with self.exchange(call, deployment, ok=(200, 201, 202), starts_work=True) as response:
                payload = _json(self.name, await self.read(response))
        except ImagegateError as exc:
            raise _client_error(exc, origin) from exc.__cause__
        request_id = payload.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise invalid_response(self.name, "the submission has no request_id")
        cancel = payload.get("cancel_url")
        return Job(
            request_id,
            self.checked_url(payload.get("status_url"), "status_url"),
            self.checked_url(cancel, "cancel_url") if cancel is not None else None,
            data={"response_url": self.checked_url(payload.get("response_url"), "response_url"), "origin": origin},
        )

    async def poll(self, job: Job, deployment: Deployment) -> Poll:
        payload = _object(self.name, await self.get_json(job.poll_url, deployment, ok=(200, 202)))
        status = payload.get("status")
        if status in _PENDING:
            position = payload.get("queue_position")
            word = f"{status} (position {position})" if isinstance(position, int) and status == "IN_QUEUE" else str(status)
            return Poll("pending", word)
        if status != "COMPLETED":
            raise invalid_response(self.name, f"a request's status is {status!r}")
        return await self._outcome(job, deployment)

    async def cancel(self, job: Job, deployment: Deployment) -> None:
        if job.cancel_url is None:
            return
        call = self.build("PUT", job.cancel_url, deployment)
        async with self.exchange(call, deployment, ok=(200, 202, 400, 404)) as response:
            answer = (await self.read(response))[:200]
        if response.status_code >= 400:  # ALREADY_COMPLETED, NOT_FOUND: nothing left to stop
            log.info("%s: cancel of request %s: HTTP %d %s", self.name, job.id, response.status_code, answer)

    # -- a completed request ---------------------------------------------------------

    async def _outcome(self, job: Job, deployment: Deployment) -> Poll:
        """The result of a completed request: its images, or the error the model answered with."""
        call = self.build("GET", str(job.data["response_url"]), deployment)
        async with self.exchange(call, deployment, ok=_ANY_STATUS) as response:
            body = await self.read(response)
            status, headers = response.status_code, dict(response.headers)
        if status == 200:
            return self._ready(_json(self.name, body))
        fields = fal_error_fields(body)
        if fields is None or status in (401, 403, 408, 429) or not 400 <= status <= 599:
            # not the model's answer (a proxy, our credential, our pace): the engine decides
            raise redact_error(self.error_from(status, body, headers), self.secrets(deployment))
        if status >= 500:
            error: ImagegateError = UpstreamError(
                f"The upstream '{self.name}' request failed: {fields.message}", code=fields.code or "upstream_job_failed"
            )
        else:
            error = _client_error(self.error_from(status, body, headers), job.data.get("origin", {}))
        return Poll("failed", "COMPLETED", error=redact_error(error, self.secrets(deployment)))

    def _ready(self, payload: dict[str, Any]) -> Poll:
        images = payload.get("images")
        if not isinstance(images, list) or not images:
            raise invalid_response(self.name, "a completed request has no images")
        flags = payload.get("has_nsfw_concepts")
        flags = flags if isinstance(flags, list) else []
        urls = []
        for i, image in enumerate(images):
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str) or not url:
                raise invalid_response(self.name, "an image has no url")
            if i < len(flags) and flags[i] is True:
                log.info("%s: image %d of %d left out (has_nsfw_concepts)", self.name, i + 1, len(images))
                continue
            urls.append(url)
        if not urls:
            return Poll(
                "failed",
                "COMPLETED",
                error=InvalidRequestError(
                    f"The upstream '{self.name}' flagged every image it made as NSFW (has_nsfw_concepts); none is returned.",
                    code="content_policy_violation",
                ),
            )
        return Poll("ready", "COMPLETED", urls=urls)

    # -- error answers ---------------------------------------------------------------

    def error_fields(self, body: bytes) -> ErrorFields | None:
        return fal_error_fields(body)


def _json(provider: str, body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid_response(provider, "the answer is not JSON") from None
    return _object(provider, payload)


def _object(provider: str, payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise invalid_response(provider, "the answer is not a JSON object")
    return payload


def _client_error(exc: ImagegateError, origin: Mapping[str, str]) -> ImagegateError:
    """fal's error as the client's: the input field it names becomes the
    client's field it came from; a content-policy refusal is a 400
    ``content_policy_violation``."""
    if exc.param is not None:
        exc.param = origin.get(exc.param, exc.param)
    if exc.code == "content_policy_violation" and exc.status < 500:
        moderated = InvalidRequestError(exc.message, param=exc.param, code="content_policy_violation", headers=exc.headers)
        moderated.maybe_started = exc.maybe_started
        return moderated
    return exc


__all__ = [
    "BUILTIN_INPUTS",
    "FAL_QUEUE_HOSTS",
    "FalInputs",
    "FalOptions",
    "FalProvider",
    "fal_error_fields",
    "fal_input",
    "nearest_ratio",
]
