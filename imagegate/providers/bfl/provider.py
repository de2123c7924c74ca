"""``bfl``: Black Forest Labs' API (FLUX.2, FLUX.1 Kontext, FLUX1.1 [pro],
Ultra and Fill) on the job engine (``providers/jobs.py``).

The protocol, as BFL documents it (https://docs.bfl.ai/api_integration/integration_guidelines,
the API reference at https://docs.bfl.ai/api-reference (OpenAPI:
https://api.bfl.ai/openapi.json), https://help.bfl.ai/articles/2916279050-why-did-my-request-fail,
https://help.bfl.ai/articles/9532536301-which-api-endpoint-should-i-use and
https://github.com/black-forest-labs/skills, ``skills/bfl-api``):

* **Submit** ``POST {base_url}/{model}`` (``https://api.bfl.ai/v1``, or the
  regional ``api.eu.bfl.ai``/``api.us.bfl.ai``: ``region:``), the key in
  ``x-key``, a JSON body; the answer is ``{id, polling_url, cost, input_mp,
  output_mp}``, ``cost`` in credits (1 credit = $0.01): the job's charge.
* **Poll** the returned ``polling_url`` (it names the cluster that took the
  job; never rebuilt here) with ``x-key``: ``{id, status, result, progress,
  details}``. ``Ready``: ``result.sample`` is the image's URL (a signed
  delivery URL, valid 10 minutes: fetched at once, without the key).
  ``Pending`` and any status BFL may add: ask again. ``Request Moderated``
  and ``Content Moderated``: 400 ``content_policy_violation`` (BFL charges
  nothing for them; nor does the gateway). ``Error``: 502
  ``upstream_job_failed``. ``Task not found``: 502 ``upstream_job_lost``.
* **Errors**: FastAPI bodies, ``{"detail": "..."}`` or (422) ``{"detail":
  [{loc, msg, type}]}``. 402 (no credits left on this gateway's account) is
  a 502 ``upstream_insufficient_credits``, which the router may take to
  another deployment; 403 a 502 ``upstream_auth_error``; 422 a 400 naming
  the client's field; 429 (too many active tasks: 24, 6 for Kontext [max])
  a 429 the router retries with its backoff.
* **No cancel call**: BFL documents none (its API lists submissions,
  ``get_result``, credits and finetune utilities). A job nobody waits for any
  more (a client that hung up, a deadline) is no longer polled, and runs out
  upstream; BFL charges it.

``wire.py`` maps the typed request to each model's body (size to
width/height or the nearest aspect ratio, OpenAI's images to
``input_image*``, OpenAI's mask to BFL's). docs/upstreams/bfl.md has the
config, the field table and what was tested against the stand-in only.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, model_validator

from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment
from imagegate.errors import ImagegateError, InvalidRequestError, UpstreamError
from imagegate.providers.bfl import wire
from imagegate.providers.http import ErrorFields, invalid_response
from imagegate.providers.job_hosts import vendor_poll_hosts
from imagegate.providers.jobs import Job, JobOptions, JobProvider, Poll
from imagegate.providers.redact import redact_error

REGIONS = {
    "global": "https://api.bfl.ai/v1",
    "eu": "https://api.eu.bfl.ai/v1",
    "us": "https://api.us.bfl.ai/v1",
}
# BFL's own hosts: the global, regional and cluster endpoints.
BFL_HOSTS = ("api.bfl.ai", "api.*.bfl.ai")
MODERATED = frozenset({"Request Moderated", "Content Moderated"})
# Poll answers that only say to ask again later.
_TRANSIENT_POLL = frozenset({408, 425, 429})


class BFLOptions(JobOptions):
    auth_header: ClassVar[str] = "x-key"
    auth_prefix: ClassVar[str] = ""

    base_url: str = REGIONS["global"]
    # The endpoint by region: global (failover across clusters), eu, us. Instead of base_url.
    region: Literal["global", "eu", "us"] | None = None
    # polling_url names the cluster that took the job (api.eu2.bfl.ai, api.us1.bfl.ai):
    # those hosts by default when base_url is BFL's; none with a proxy (its key is not BFL's).
    poll_hosts: list[str] = Field(default_factory=vendor_poll_hosts(*BFL_HOSTS))

    @model_validator(mode="before")
    @classmethod
    def _region(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("region") is not None:
            if data.get("base_url") is not None:
                raise ValueError("give region or base_url, not both")
            if data["region"] in REGIONS:
                data = {**data, "base_url": REGIONS[data["region"]]}
        return data


class BFLProvider(JobProvider):
    type_name: ClassVar[str] = "bfl"
    options_model = BFLOptions
    # A model name the catalog does not know (a new FLUX.2 variant) gets
    # flux-2-pro's rules (width/height, input_image*), and no price.
    default_rules: ClassVar[str | None] = "flux-2-pro"
    options: BFLOptions

    async def submit(self, request: ImageRequest, deployment: Deployment, index: int) -> Job:
        if request.endpoint not in ("generations", "edits"):
            raise InvalidRequestError(
                f"Model '{request.model}' does not support image {request.endpoint} (BFL has none).",
                param="model",
                code="unsupported_model",
            )
        body, origins = wire.request_body(request, deployment.model, index)
        http = self.build(
            "POST", f"/{deployment.model}", deployment, content=orjson.dumps(body), headers={"Content-Type": "application/json"}
        )
        try:
            async with self.exchange(http, deployment, ok=(200, 201), starts_work=True) as response:
                payload = wire.parse_json(await self.read(response))
                if payload is None:
                    raise invalid_response(self.name, "a submission's answer is not a JSON object")
                job_id, poll_url = payload.get("id"), payload.get("polling_url")
                if not isinstance(job_id, str) or not job_id:
                    raise invalid_response(self.name, "a submission's answer has no id")
                checked = self.checked_url(poll_url, "polling_url")
        except ImagegateError as exc:
            if exc.param in origins:  # BFL's field name -> the client's
                exc.param = origins[exc.param]
            raise
        return Job(job_id, checked, cost_nusd=wire.credits_nusd(payload.get("cost"), self.name))

    async def poll(self, job: Job, deployment: Deployment) -> Poll:
        try:
            answer = await self.get_json(job.poll_url, deployment)
            payload = answer if isinstance(answer, dict) else None
        except ImagegateError as exc:
            if 400 <= exc.status < 500 and exc.status not in _TRANSIENT_POLL:  # not the client's doing
                raise UpstreamError(
                    f"The upstream '{self.name}' refused to say how job {job.id} is doing (HTTP {exc.status}): {exc.message}",
                    code="upstream_job_lost",
                ) from exc
            raise
        if payload is None or not isinstance(status := payload.get("status"), str):
            raise invalid_response(self.name, "a poll's answer has no status")
        if status == "Ready":
            result = payload.get("result")
            sample = result.get("sample") if isinstance(result, dict) else None
            if not isinstance(sample, str) or not sample.startswith(("https://", "http://")):
                raise invalid_response(self.name, "a Ready job has no result.sample URL")
            return Poll("ready", status, urls=[sample])
        if status in MODERATED or status in ("Error", "Task not found"):
            return Poll("failed", status, error=redact_error(self._failure(job, status, payload), self.secrets(deployment)))
        progress = payload.get("progress")
        if isinstance(progress, int | float) and not isinstance(progress, bool):
            status = f"{status} ({progress:.0%})" if progress <= 1 else f"{status} ({progress:g}%)"
        return Poll("pending", status)

    def _failure(self, job: Job, status: str, payload: dict[str, Any]) -> ImagegateError:
        details = payload.get("details")
        why = f": {orjson.dumps(details).decode()[:500]}" if isinstance(details, dict | list | str) and details else ""
        if status in MODERATED:
            where = "the request" if status == "Request Moderated" else "the generated image"
            return InvalidRequestError(
                f"The upstream '{self.name}' refused {where} ({status}){why}. Nothing was charged.",
                code="content_policy_violation",
            )
        if status == "Error":
            return UpstreamError(f"The upstream '{self.name}' job {job.id} failed{why}.", code="upstream_job_failed")
        return UpstreamError(f"The upstream '{self.name}' no longer knows job {job.id} ({status}).", code="upstream_job_lost")

    # -- error answers -----------------------------------------------------------

    def error_fields(self, body: bytes) -> ErrorFields | None:
        return wire.error_fields(body)

    def error_from(self, status: int, body: bytes, headers: Any) -> ImagegateError:
        fields = self.error_fields(body)
        text = f": {fields.message}" if fields is not None else ""
        if status == 402:
            return UpstreamError(
                f"The upstream '{self.name}' has no credits left for this gateway's account (HTTP 402){text}.",
                code="upstream_insufficient_credits",
            )
        if status == 422 and fields is not None:
            return InvalidRequestError(
                f"The upstream '{self.name}' refused the request: {fields.message}", param=fields.param, code="invalid_value"
            )
        error = super().error_from(status, body, headers)
        if status == 429 and fields is not None:
            error.type, error.code = "rate_limit_error", fields.code or "rate_limit_exceeded"
        return error


__all__ = ["BFL_HOSTS", "REGIONS", "BFLOptions", "BFLProvider"]
