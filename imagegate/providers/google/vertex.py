"""``vertex``: Google's image models on Vertex AI, with a service account's OAuth token.

The same models, request bodies and answers as the Gemini API
(:class:`~imagegate.providers.google.provider.GoogleProvider`); what differs,
as Google documents it:

* **Where a model lives**: ``POST https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}``
  (``generateContent`` for Gemini image models, ``predict`` for Imagen):
  https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/inference,
  https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/imagen-api.
  ``location: global`` is ``https://aiplatform.googleapis.com`` and the
  multi-region ``us``/``eu`` are ``https://aiplatform.{location}.rep.googleapis.com``
  (https://cloud.google.com/vertex-ai/generative-ai/docs/learn/locations).
  An explicit ``base_url`` (a private endpoint, a proxy, a stand-in) wins.
* **How a call is authorised**: ``Authorization: Bearer <access token>``, the
  token minted from a service account's JSON key by google-auth (``auth.py``:
  https://developers.google.com/identity/protocols/oauth2/service-account),
  with the ``cloud-platform`` scope. The key comes from ``credentials_file``
  or ``credentials_json`` (exactly one), checked when the config loads; an
  ``api_key`` is refused, and so is a virtual key (its owner's credential
  would otherwise be replaced by the gateway's service account).
* **A refused token**: a 401 drops the token and the call is sent once more
  with a new one (a 401 means Vertex took nothing, so nothing is charged
  twice); a second 401, and any 403 (the account lacks the Vertex AI User
  role, or the API is off), is a 502 ``upstream_auth_error``. The token is
  redacted from every error text (:meth:`VertexProvider.secrets`).
* **Vertex-only fields** for Imagen, sent in ``parameters`` in camelCase:
  ``negative_prompt`` -> ``negativePrompt``, ``add_watermark`` ->
  ``addWatermark``, ``enhance_prompt`` -> ``enhancePrompt``, ``seed``
  (https://cloud.google.com/vertex-ai/generative-ai/docs/image/generate-deterministic-images,
  https://cloud.google.com/vertex-ai/generative-ai/docs/image/use-prompt-rewriter).
  The Gemini API refuses them (400 naming the field).

docs/upstreams/google.md ("Vertex AI") has the config and what was tested
against the stand-in only.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Container, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from imagegate.contract.catalog import ModelSpec
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment, ProviderResult
from imagegate.errors import ConfigError, ImagegateError, InvalidRequestError, UpstreamError
from imagegate.providers.base import ProviderContext, ProviderOptions
from imagegate.providers.google.auth import CLOUD_PLATFORM, ServiceAccountTokens, parse_service_account, read_service_account
from imagegate.providers.google.provider import GoogleOptions, GoogleProvider

_LOCATION = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_MULTI_REGIONS = frozenset({"us", "eu"})


def endpoint(location: str) -> str:
    """Vertex AI's REST endpoint (``.../v1``) for ``location``."""
    if location == "global":
        return "https://aiplatform.googleapis.com/v1"
    if location in _MULTI_REGIONS:
        return f"https://aiplatform.{location}.rep.googleapis.com/v1"
    return f"https://{location}-aiplatform.googleapis.com/v1"


class VertexOptions(GoogleOptions):
    # The token rides in Authorization (headers: may not set it).
    auth_header: ClassVar[str] = "Authorization"
    auth_prefix: ClassVar[str] = "Bearer "

    base_url: str = endpoint("us-central1")  # from location unless given
    project: str = Field(pattern=r"^[a-z0-9][a-z0-9.:-]{0,62}$")  # a project id (or number)
    location: str = Field("us-central1", pattern=_LOCATION.pattern)
    credentials_file: str | None = None  # a service account's JSON key, on disk
    credentials_json: SecretStr | None = Field(None, validate_default=True)  # ... or the JSON itself (env:VAR)
    scopes: list[str] = Field(default_factory=lambda: [CLOUD_PLATFORM], min_length=1)
    token_timeout_seconds: float = Field(30.0, gt=0)  # one exchange at the token endpoint

    @model_validator(mode="before")
    @classmethod
    def _base_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("base_url") is None:
            location = data.get("location", "us-central1")
            if isinstance(location, str) and _LOCATION.match(location):
                data = {**data, "base_url": endpoint(location)}
        return data

    @field_validator("api_key")
    @classmethod
    def _no_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            raise ValueError("Vertex AI is called with a service account's token: give credentials_file or credentials_json")
        return value

    @field_validator("credentials_file")
    @classmethod
    def _readable_key(cls, value: str | None) -> str | None:
        if value is not None:
            read_service_account(value)
        return value

    @field_validator("credentials_json")
    @classmethod
    def _one_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if "credentials_file" not in info.data:  # it failed: that is the error to report
            return value
        given_file = info.data["credentials_file"] is not None
        if value is None and not given_file:
            raise ValueError("give credentials_file or credentials_json (a service account's JSON key)")
        if value is not None and given_file:
            raise ValueError("give credentials_file or credentials_json, not both")
        if value is not None:
            parse_service_account(value.get_secret_value())
        return value

    def service_account(self) -> dict[str, Any]:
        """The service account's key, read and checked."""
        if self.credentials_json is not None:
            return parse_service_account(self.credentials_json.get_secret_value())
        assert self.credentials_file is not None  # one of the two, checked above
        return read_service_account(self.credentials_file)


class _TokenRefused(UpstreamError):
    """Vertex answered 401 to a token (502 ``upstream_auth_error`` to the client)."""


class VertexProvider(GoogleProvider):
    type_name: ClassVar[str] = "vertex"
    options_model = VertexOptions
    options: VertexOptions
    vertex: ClassVar[bool] = True
    # Imagen's parameters on Vertex AI: the Gemini API's, and the fields only Vertex takes.
    predict_fields: ClassVar[Mapping[str, str]] = {
        **GoogleProvider.predict_fields,
        "negative_prompt": "negativePrompt",
        "add_watermark": "addWatermark",
        "enhance_prompt": "enhancePrompt",
        "seed": "seed",
    }

    def __init__(self, name: str, options: ProviderOptions, context: ProviderContext) -> None:
        super().__init__(name, options, context)
        opts = self.options
        self.tokens = ServiceAccountTokens(
            opts.service_account(),
            opts.scopes,
            provider=name,
            connect_timeout=opts.connect_timeout_seconds,
            timeout=opts.token_timeout_seconds,
        )

    async def aclose(self) -> None:
        self.tokens.close()
        await super().aclose()

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "project": self.options.project,
            "location": self.options.location,
            "service_account": self.tokens.client_email,
            "tokens_minted": self.tokens.minted,
            "token_failures": self.tokens.failures,
        }

    # -- what differs from the Gemini API ----------------------------------

    @classmethod
    def check_route(cls, options: ProviderOptions, spec: ModelSpec, model: str) -> None:
        if "/" in model:
            raise ConfigError(
                f"'{model}' names a catalog entry, not a Vertex AI model: set the deployment's model "
                f"(e.g. model: {model.rpartition('/')[2]})"
            )
        super().check_route(options, spec, model)

    async def run(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        if "seed" in request.extra and request.extra.get("add_watermark") is not False:
            raise InvalidRequestError(
                "'seed' needs 'add_watermark': false (Vertex AI ignores a seed while it watermarks, its default).",
                param="seed",
                code="invalid_value",
            )
        return await super().run(request, deployment)

    generate = edit = variation = run

    def model_path(self, model: str, method: str) -> str:
        opts = self.options
        return f"/projects/{opts.project}/locations/{opts.location}/publishers/google/models/{model}:{method}"

    async def call_headers(self, deployment: Deployment) -> dict[str, str]:
        if deployment.api_key:
            raise InvalidRequestError(
                f"The provider '{self.name}' (Vertex AI) is called with its service account; it takes no virtual key.",
                param="model",
                code="virtual_key_unsupported",
            )
        return {"Authorization": f"Bearer {await self.tokens.token()}"}

    def secrets(self, deployment: Deployment) -> list[str | None]:
        return [*super().secrets(deployment), self.tokens.current]

    # -- a refused token ---------------------------------------------------

    @asynccontextmanager
    async def exchange(
        self,
        request: httpx.Request,
        deployment: Deployment,
        *,
        ok: Container[int] = (200,),
        starts_work: bool = False,
    ) -> AsyncIterator[httpx.Response]:
        """The base's exchange, sent once more with a new token when Vertex
        answers 401 to the token it carried (see the module's doc)."""
        async with AsyncExitStack() as stack:
            try:
                response = await stack.enter_async_context(super().exchange(request, deployment, ok=ok, starts_work=starts_work))
            except _TokenRefused:
                self.tokens.invalidate(_bearer(request))
                request.headers["Authorization"] = f"Bearer {await self.tokens.token()}"
                try:
                    response = await stack.enter_async_context(
                        super().exchange(request, deployment, ok=ok, starts_work=starts_work)
                    )
                except _TokenRefused:
                    self.tokens.invalidate(_bearer(request))
                    raise
            yield response

    def error_from(self, status: int, body: bytes, headers: Mapping[str, str]) -> ImagegateError:
        if status == 401:
            return _TokenRefused(
                f"The upstream '{self.name}' refused this gateway's OAuth access token (HTTP 401) twice; "
                "check the service account (credentials_file or credentials_json) in the gateway's configuration.",
                code="upstream_auth_error",
            )
        if status == 403:
            return UpstreamError(
                f"The upstream '{self.name}' refused this gateway's service account (HTTP 403): it needs the "
                f"Vertex AI User role on project '{self.options.project}', with the Vertex AI API enabled.",
                code="upstream_auth_error",
            )
        return super().error_from(status, body, headers)


def _bearer(request: httpx.Request) -> str:
    return str(request.headers.get("Authorization", "")).removeprefix("Bearer ")


__all__ = ["VertexOptions", "VertexProvider", "endpoint"]
