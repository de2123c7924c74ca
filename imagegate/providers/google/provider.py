"""``gemini``: Google's image models on the Gemini API (generativelanguage.googleapis.com).

The base of the ``vertex`` provider too: the two serve the same models with
the same request and answer shapes (``wire.py``) and differ in where a
model's method lives (:meth:`GoogleProvider.model_path`) and how a call is
authorised (:meth:`GoogleProvider.call_headers`: the Gemini API's
``x-goog-api-key``, Vertex's OAuth bearer token).

Which method serves a model is catalog data, not code: the entry's ``wire``
facts (``method: generateContent`` for Gemini image models, ``predict`` for
Imagen), checked by :meth:`GoogleProvider.check_route` when the config loads.

The protocol (sources in ``wire.py``; docs/upstreams/google.md has the field
table):

* **Gemini image models** (``generateContent``): one call per image, ``n``
  calls run concurrently and their usage summed; the first to fail fails the
  request (the others are cancelled; Google bills those that finished).
  Each call is capped at the entry's ``max_output_tokens`` (sent as
  ``maxOutputTokens``), which is what the accounting reserves per image.
* **Imagen** (``predict``): one call, ``sampleCount = n``; images the safety
  filter removed are left out (the client gets, and pays for, those made).
* **Refusals arrive as HTTP 200** and become 400 ``content_policy_violation``
  (``wire.content_answer``/``predict_answer``); an answer with no image for
  another reason is a 502, never an empty ``data``.
* **Errors** ``{"error": {code, message, status, details}}``
  (:meth:`GoogleProvider.error_from`): 400 ``INVALID_ARGUMENT`` is the
  client's 400 with Google's message; 400 ``FAILED_PRECONDITION`` (billing,
  region) a 502; 401/403, and a 400 whose ``ErrorInfo.reason`` is
  ``API_KEY_INVALID``, a 502 ``upstream_auth_error``; 404 a 502
  ``upstream_model_not_found`` (the config names a model Google does not
  serve); 429 ``RESOURCE_EXHAUSTED`` a 429 whose ``Retry-After`` is
  ``google.rpc.RetryInfo.retryDelay`` rounded up; 5xx pass on as upstream
  errors; a body that is not Google's envelope, a 502.

Calls are synchronous (the answer is the image): like the ``openai``
provider's, they never mark their attempt as having started work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import ValidationError

from imagegate.contract.catalog import ModelSpec
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment, ProviderResult
from imagegate.errors import ConfigError, ImagegateError, InvalidRequestError, UpstreamError
from imagegate.providers.base import ProviderOptions
from imagegate.providers.google import wire
from imagegate.providers.http import ErrorFields, HostedOptions, HostedProvider


class GoogleOptions(HostedOptions):
    auth_header: ClassVar[str] = "x-goog-api-key"
    auth_prefix: ClassVar[str] = ""

    base_url: str = "https://generativelanguage.googleapis.com/v1beta"


class GoogleProvider(HostedProvider):
    type_name: ClassVar[str] = "gemini"
    options_model: ClassVar[type[ProviderOptions]] = GoogleOptions
    options: GoogleOptions
    # A Gemini image model the catalog does not list gets no rules of its own
    # (its ratios, sizes and output cap are data): it needs an entry or `rules:`.
    default_rules: ClassVar[str | None] = None
    # Extension fields -> the body field they fill: ``imageConfig`` of
    # generateContent, ``parameters`` of predict (Vertex adds its own).
    image_config_fields: ClassVar[Mapping[str, str]] = {}
    predict_fields: ClassVar[Mapping[str, str]] = {"person_generation": "personGeneration"}
    # Whether this provider serves Vertex AI (its models and fields).
    vertex: ClassVar[bool] = False

    # -- what differs between the Gemini API and Vertex AI -----------------

    def model_path(self, model: str, method: str) -> str:
        """The path (under ``base_url``) of ``model``'s ``method``
        (``generateContent``, ``predict``)."""
        return f"/models/{model}:{method}"

    async def call_headers(self, deployment: Deployment) -> dict[str, str]:
        """Headers one call adds to :meth:`build`'s (Vertex: its bearer token).
        The Gemini API's key already rides on every request (``auth_headers``)."""
        return {}

    # -- config ------------------------------------------------------------

    @classmethod
    def check_route(cls, options: ProviderOptions, spec: ModelSpec, model: str) -> None:
        where = f"catalog entry '{spec.name}'"
        if not spec.wire:
            raise ConfigError(f"{where}: no `wire` facts: a Google model needs wire.method (generateContent or predict)")
        try:
            facts = wire.wire_of(spec)
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{where}: wire.{path}: {first['msg']}") from None
        if facts.vertex_only and not cls.vertex:
            raise ConfigError(f"{where}: model '{model}' is served on Vertex AI only (wire.vertex_only)")
        fields = cls.predict_fields if facts.method == "predict" else cls.image_config_fields
        for name, field in spec.extra_fields.items():
            if name in ("aspect_ratio", "image_size"):
                allowed = facts.aspect_ratios if name == "aspect_ratio" else tuple(facts.image_sizes)
                if bad := [v for v in field.enum if v not in allowed]:
                    raise ConfigError(f"{where}: extra_fields.{name}: {bad[0]!r} is not in wire's {name}s")
            elif name not in fields:
                why = " (a Vertex AI field)" if name in wire.VERTEX_ONLY and not cls.vertex else ""
                raise ConfigError(f"{where}: extra_fields.{name}: {cls.type_name} cannot send it for {facts.method}{why}")
        if facts.method == "predict" and "edits" in spec.endpoints:
            raise ConfigError(f"{where}: endpoints: Imagen (predict) takes generations only here")
        if facts.method == "generateContent" and spec.max_output_tokens is None:
            raise ConfigError(
                f"{where}: max_output_tokens is required for generateContent (the cap each call is sent and reserved at)"
            )

    # -- the contract ------------------------------------------------------

    async def run(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        if request.endpoint == "variations":
            raise InvalidRequestError(
                f"Model '{request.model}' takes no variations (Google has none).", param="model", code="unsupported_endpoint"
            )
        facts = wire.wire_of(request.spec)
        if facts.method == "predict":
            if request.endpoint != "generations":
                raise InvalidRequestError(
                    f"Model '{request.model}' (Imagen) takes generations only.", param="model", code="unsupported_endpoint"
                )
            return await self._predict(request, deployment, facts)
        return await self._generate_content(request, deployment, facts)

    generate = edit = variation = run

    async def _post(self, path: str, body: bytes, deployment: Deployment) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", **await self.call_headers(deployment)}
        http = self.build("POST", path, deployment, content=body, headers=headers)
        async with self.exchange(http, deployment) as response:
            return wire.parse_json(self.name, await self.read(response))

    async def _predict(self, request: ImageRequest, deployment: Deployment, facts: wire.WireSpec) -> ProviderResult:
        body = wire.predict_body(request, facts, self.predict_fields)
        payload = await self._post(self.model_path(deployment.model, "predict"), body, deployment)
        answer = wire.predict_answer(self.name, payload)
        if answer.filtered:
            wire.log.warning(
                "upstream %s filtered %d of %d image(s) of %s (%s); %d delivered",
                self.name, len(answer.filtered), request.n, request.model, "; ".join(answer.filtered), len(answer.images),
            )  # fmt: skip
        return ProviderResult(answer.images)

    async def _generate_content(self, request: ImageRequest, deployment: Deployment, facts: wire.WireSpec) -> ProviderResult:
        body = wire.content_body(request, facts, self.image_config_fields)
        path = self.model_path(deployment.model, "generateContent")

        async def one() -> wire.Made:
            return wire.content_answer(self.name, request.model, await self._post(path, body, deployment))

        tasks = [asyncio.ensure_future(one()) for _ in range(request.n)]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
        if failed:
            raise failed[0].exception()  # type: ignore[misc]
        made = [t.result() for t in tasks]
        return ProviderResult([m.image for m in made], wire.add_usage([m.usage for m in made]))

    # -- error answers -----------------------------------------------------

    def error_fields(self, body: bytes) -> ErrorFields | None:
        return wire.error_fields(body)

    def error_from(self, status: int, body: bytes, headers: Mapping[str, str]) -> ImagegateError:
        fields = self.error_fields(body)
        if fields is None or status in (401, 403) or not 400 <= status <= 599:
            return super().error_from(status, body, headers)
        if status == 400 and str(wire.error_reason(body)).startswith("API_KEY"):  # Google's 400 for a bad key
            return super().error_from(401, body, headers)
        if status == 400 and fields.code == "failed_precondition":
            return UpstreamError(
                f"The upstream '{self.name}' cannot serve this gateway's account now (FAILED_PRECONDITION): {fields.message}",
                code="upstream_precondition_failed",
            )
        if status == 400:
            return InvalidRequestError(
                f"The upstream '{self.name}' refused the request: {fields.message}", code=fields.code or "invalid_argument"
            )
        if status == 404:
            return UpstreamError(
                f"The upstream '{self.name}' does not serve the model this gateway's configuration names "
                f"(HTTP 404): {fields.message}",
                code="upstream_model_not_found",
            )
        error = super().error_from(status, body, headers)
        if status == 429:
            error.type, error.code = "rate_limit_error", "rate_limit_exceeded"
            delay = wire.retry_delay(body)
            if delay is not None:
                error.headers["Retry-After"] = str(delay)
        return error


__all__ = ["GoogleOptions", "GoogleProvider"]
