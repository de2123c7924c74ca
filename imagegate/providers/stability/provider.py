"""``stability``: Stability AI's REST v2beta Stable Image API (generate and edit).

The protocol, as Stability documents it (the API reference,
https://platform.stability.ai/docs/api-reference, and its OpenAPI document,
https://api.stability.ai/v2beta/openapi.json; the same document vendored in
https://github.com/tryAGI/StabilityAI/blob/main/src/libs/StabilityAI/openapi.yaml;
the rate limit and prices from the reference's introduction and each
method's "Credits" section):

* ``POST {base_url}/v2beta/stable-image/{path}`` with ``authorization:
  Bearer <key>``, a ``multipart/form-data`` body (always, with files or
  without: built here, so it never turns into a URL-encoded form) and
  ``accept: image/*``: the answer is the image's bytes, with the headers
  ``finish-reason`` (``SUCCESS``, ``CONTENT_FILTERED``, ``ERROR``) and
  ``seed``. (``accept: application/json`` would inflate every image by a
  third in base64; not used.)
* Which ``path`` serves a model is catalog data: its entry's ``wire``
  (``path``, and ``model`` for ``generate/sd3``), checked by
  :meth:`StabilityProvider.check_route` when the config loads, with the
  entry's extension fields against the fields the method takes.
* ``finish-reason: CONTENT_FILTERED`` is a 400 ``content_policy_violation``
  (the image comes back blurred; it is never handed on, and nothing is
  charged); ``ERROR`` a 502.
* Errors ``{"id", "name", "errors": [...]}``: 400 a 400 with Stability's
  messages (``param``: the field an error names, as the client sent it);
  401 and 403 a 502 ``upstream_auth_error``, but 403 ``content_moderation``
  a 400 ``content_policy_violation``; 402 (no credits left) a 502
  ``upstream_insufficient_credits``; 404 and 5xx a 502; 413 a 400 naming
  ``image``; 422 a 400 ``invalid_value``; 429 a 429 with Retry-After
  (Stability's: "150 requests every 10 seconds ... timed out for 60
  seconds", so 60 when the answer gives none).
* ``n`` images are ``n`` calls, concurrent; image ``i`` gets ``seed + i``.
  Calls that fail while others succeed leave those others (each charged at
  the catalog price; the failed ones cost nothing); all failing is the
  first one's error.

``wire.py`` maps the typed request to each method's fields.
docs/upstreams/stability.md has the config, the field table, the prices and
what was tested against the stand-in only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import ClassVar

from pydantic import ValidationError

from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment, GeneratedImage, ProviderResult
from imagegate.contract.rules import ModelSpec
from imagegate.errors import ConfigError, ImagegateError, InvalidRequestError, RateLimitError, UpstreamError
from imagegate.imaging.masks import inpaint_mask
from imagegate.imaging.probe import sniff_format
from imagegate.providers.base import ProviderOptions
from imagegate.providers.http import ErrorFields, HostedOptions, HostedProvider, invalid_response
from imagegate.providers.stability import wire

log = logging.getLogger(__name__)

PREFIX = "/v2beta/stable-image/"
# Stability's penalty for passing its rate limit, when a 429 names no Retry-After.
RATE_LIMIT_PENALTY_SECONDS = 60


class StabilityOptions(HostedOptions):
    base_url: str = "https://api.stability.ai"


class StabilityProvider(HostedProvider):
    type_name: ClassVar[str] = "stability"
    options_model = StabilityOptions
    # Every model has a catalog entry (its wire names the method): none by default.
    default_rules: ClassVar[str | None] = None
    options: StabilityOptions

    @classmethod
    def check_route(cls, options: ProviderOptions, spec: ModelSpec, model: str) -> None:
        try:
            route = wire.route_of(spec)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"])
            why = err["msg"].removeprefix("Value error, ")
            raise ConfigError(
                f"catalog entry {spec.name!r}: wire{'.' + where if where else ''}: {why} "
                "(a stability model's wire names its path, e.g. {path: generate/core})"
            ) from None
        unknown = sorted(set(spec.extra_fields) - (wire.FIELDS[route.path] - wire.OWN_FIELDS))
        if unknown:
            raise ConfigError(
                f"catalog entry {spec.name!r}: Stability's {route.path} takes no {', '.join(unknown)} "
                f"(it takes {', '.join(sorted(wire.FIELDS[route.path] - wire.OWN_FIELDS))})"
            )
        if "generations" in spec.endpoints and not route.generates:
            raise ConfigError(f"catalog entry {spec.name!r}: Stability's {route.path} is an edit; list only edits")
        if "variations" in spec.endpoints or (route.path == "generate/core" and "edits" in spec.endpoints):
            raise ConfigError(f"catalog entry {spec.name!r}: Stability's {route.path} serves no {'/'.join(spec.endpoints)}")

    # -- the contract ------------------------------------------------------

    async def generate(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        route = self._route(request)
        if not route.generates:
            raise InvalidRequestError(
                f"Model '{request.model}' edits images (Stability's {route.path}): use /v1/images/edits.",
                param="model",
                code="unsupported_model",
            )
        return await self._run(request, deployment, route, None)

    async def edit(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        route = self._route(request)
        if route.path == "generate/core":
            raise InvalidRequestError(
                f"Model '{request.model}' takes no input image (Stability's generate/core).",
                param="model",
                code="unsupported_model",
            )
        mask = None
        if request.mask is not None and route.path in wire.MASKED and request.images:
            first = request.images[0].info
            mask = await asyncio.to_thread(inpaint_mask, request.mask.data, (first.width, first.height), request.model)
        return await self._run(request, deployment, route, mask)

    async def variation(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        raise InvalidRequestError(
            f"'{request.model}' makes no variations (Stability's API has none).", param="model", code="unsupported_endpoint"
        )

    def _route(self, request: ImageRequest) -> wire.Route:
        try:
            return wire.route_of(request.spec)
        except ValidationError:  # check_route refused it at start; a catalog changed since
            raise UpstreamError(
                f"Model '{request.model}' has no Stability method in its catalog entry (wire.path).", code="misconfigured_model"
            ) from None

    # -- calls -------------------------------------------------------------

    async def _run(self, request: ImageRequest, deployment: Deployment, route: wire.Route, mask: bytes | None) -> ProviderResult:
        forms = [wire.form(request, route, i, mask) for i in range(request.n)]  # every 400 before any call
        results = await asyncio.gather(*(self._call(route, f, deployment) for f in forms), return_exceptions=True)
        images = [r for r in results if isinstance(r, GeneratedImage)]
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, ImagegateError):
                raise failure  # cancelled, or a bug: never swallowed
        if not images:
            raise failures[0]
        for failure in failures:
            log.warning("%s: %d of %d calls failed (%s); the others are returned", self.name, len(failures), len(forms), failure)
        return ProviderResult(images)

    async def _call(self, route: wire.Route, form: wire.Form, deployment: Deployment) -> GeneratedImage:
        body, ctype = form.encode()
        http = self.build(
            "POST",
            PREFIX + route.path,
            deployment,
            content=body,
            headers={"Content-Type": ctype, "Accept": "image/*", **form.headers},
        )
        try:
            async with self.exchange(http, deployment) as response:
                data = await self.read(response)
                return self._image(data, response.headers)
        except ImagegateError as exc:
            exc.param = wire.client_param(exc.param, form.origins)
            raise

    def _image(self, data: bytes, headers: Mapping[str, str]) -> GeneratedImage:
        reason = headers.get("finish-reason")
        if reason == "CONTENT_FILTERED":
            raise InvalidRequestError(
                f"The upstream '{self.name}' filtered the result (finish-reason CONTENT_FILTERED: its content "
                "moderation blurred the image). Nothing was charged.",
                code="content_policy_violation",
            )
        if reason == "ERROR":
            raise UpstreamError(f"The upstream '{self.name}' failed to make the image (finish-reason ERROR).")
        if reason != "SUCCESS":
            raise invalid_response(self.name, f"an image came with finish-reason {str(reason)[:40]!r}, not SUCCESS")
        fmt = sniff_format(data[:64])
        if fmt is None:
            raise invalid_response(self.name, "its answer is not a PNG, JPEG or WebP image")
        log.debug("%s: image made with seed %s", self.name, headers.get("seed"))
        return GeneratedImage(data, fmt)

    # -- error answers -----------------------------------------------------

    def error_fields(self, body: bytes) -> ErrorFields | None:
        return wire.error_fields(body)

    def error_from(self, status: int, body: bytes, headers: Mapping[str, str]) -> ImagegateError:
        fields = self.error_fields(body)
        text = f": {fields.message}" if fields is not None else ""
        name = self.name
        if status == 402:
            return UpstreamError(
                f"The upstream '{name}' has no credits left for this gateway's account (HTTP 402){text}.",
                code="upstream_insufficient_credits",
            )
        if fields is not None and (
            (status == 403 and fields.code == "content_moderation") or (status == 422 and fields.code == "public_figure")
        ):
            return InvalidRequestError(
                f"The upstream '{name}' refused the request ({fields.code}){text}. Nothing was charged.",
                code="content_policy_violation",
            )
        if status == 413:
            return InvalidRequestError(
                f"The upstream '{name}' refused the request as too large (HTTP 413){text}.", param="image", code="image_too_large"
            )
        if status in (400, 422) and fields is not None:
            code = "invalid_value" if status == 422 else (fields.code or "invalid_value")
            return InvalidRequestError(f"The upstream '{name}' refused the request{text}", param=fields.param, code=code)
        if status == 429:
            return RateLimitError(
                f"The upstream '{name}' is rate limiting this gateway (HTTP 429){text}.",
                retry_after=_retry_after(headers.get("retry-after")),
                code=fields.code if fields is not None and fields.code else "rate_limit_exceeded",
            )
        if status == 404 or 500 <= status <= 599:
            return UpstreamError(f"The upstream '{name}' failed (HTTP {status}){text}.")
        return super().error_from(status, body, headers)


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After of seconds; Stability's 60 s penalty otherwise."""
    if value is not None and value.strip().isascii() and value.strip().isdigit():
        return float(value.strip())
    return RATE_LIMIT_PENALTY_SECONDS


__all__ = ["StabilityOptions", "StabilityProvider"]
