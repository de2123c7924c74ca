"""``azure``: Azure OpenAI (Microsoft Foundry) image deployments, a dialect of
the ``openai`` provider.

Azure serves OpenAI's image models behind *deployments* the customer names,
so three things differ from OpenAI, and only these:

* **Where a request goes.** With ``api_version`` unset (the default), the v1
  API: ``{endpoint}/openai/v1/images/{generations,edits}`` with the
  deployment name as the body's ``model``. With a dated ``api_version``
  (``2025-04-01-preview``), the deployments API:
  ``{endpoint}/openai/deployments/{deployment}/images/{generations,edits}?api-version=...``
  (the body still names the deployment as ``model``, as the official
  ``AzureOpenAI`` client sends it). ``api_version: preview`` / ``latest`` /
  ``v1`` keep the v1 path and send ``?api-version=`` (v1 preview features),
  the same rule as the official client (openai-python ``lib/azure.py``).
* **The credential**: the ``api-key`` header; ``auth: entra`` sends the
  configured secret as ``Authorization: Bearer <Entra ID token>`` instead.
* **Content-filter refusals**: ``{"error": {"code": "contentFilter"}}``,
  ``code: content_filter`` with ``innererror`` (``ResponsibleAIPolicyViolation``,
  ``content_filter_result``), the images API's ``inner_error`` with
  ``content_filter_results``, and gpt-image's ``moderation_blocked`` all become
  400 ``content_policy_violation`` (type ``invalid_request_error``) with
  Azure's message, so ``fallback_on: [content_policy]`` and clients see one
  code whichever shape Azure used.

The deployment name is not a model, so a route names the catalog entry it
serves with ``rules:`` (its rules validate, its price bills); a deployment
name that is in the catalog is taken as that model. Everything else (bodies,
multipart edits, answers, usage, streams, rate-limit headers, 401/403 as
502 without upstream text, redaction) is the ``openai`` provider's and the
hosted base's. Protocol sources: ``tests/standin_azure.py``; config:
``docs/upstreams/azure.md``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

import httpx
import orjson
from pydantic import Field, field_validator, model_validator

from imagegate.contract.catalog import EDITS, GENERATIONS
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment, StreamItem
from imagegate.errors import ConfigError, ImagegateError, InvalidRequestError, UpstreamError
from imagegate.providers.base import ProviderOptions
from imagegate.providers.openai import wire
from imagegate.providers.openai.provider import OpenAIOptions, OpenAIProvider

# api-version values that address the v1 API (Azure's AzureAIFoundryModelsApiVersion,
# and what openai-python's AzureOpenAI treats as "not a deployments URL").
V1_VERSIONS = frozenset({"v1", "preview", "latest"})
_DATED_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_OPERATIONS = {GENERATIONS: "images/generations", EDITS: "images/edits"}

# Error codes Azure (and OpenAI's gpt-image models behind it) use for a
# content-filter refusal, compared case-insensitively.
CONTENT_FILTER_CODES = frozenset({"contentfilter", "content_filter", "moderation_blocked", "content_policy_violation"})
INNER_CONTENT_FILTER_CODE = "responsibleaipolicyviolation"


class AzureOptions(OpenAIOptions):
    auth_header: ClassVar[str] = "api-key"
    auth_prefix: ClassVar[str] = ""

    # The resource endpoint, https://{resource}.openai.azure.com (or
    # {resource}.services.ai.azure.com, or a gateway in front of it), given as
    # `endpoint:` (or `base_url:`): the /openai/... paths go under it.
    base_url: str = Field("", validate_default=True)
    # None: the v1 API. A dated version: the deployments API with ?api-version=.
    # v1 / preview / latest: the v1 API with ?api-version= (preview features).
    api_version: str | None = None
    # How the secret in api_key is sent: the api-key header, or as a
    # Microsoft Entra ID token (Authorization: Bearer ...).
    auth: Literal["api-key", "entra"] = "api-key"

    @model_validator(mode="before")
    @classmethod
    def _endpoint_is_base_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and "endpoint" in data and "base_url" not in data:
            data = {k: v for k, v in data.items() if k != "endpoint"} | {"base_url": data["endpoint"]}
        return data

    @field_validator("base_url", mode="before")
    @classmethod
    def _endpoint_given(cls, value: Any) -> Any:
        if value == "":
            raise ValueError("set endpoint: the resource URL, https://<resource>.openai.azure.com")
        return value

    @field_validator("base_url")
    @classmethod
    def _resource_endpoint(cls, value: str) -> str:
        if re.search(r"/openai(/v1|/deployments(/.*)?)?/?$", urlsplit(value).path):
            raise ValueError(f"endpoint is the resource URL (https://<resource>.openai.azure.com) without /openai/...: {value!r}")
        return value

    @field_validator("api_version")
    @classmethod
    def _known_version(cls, value: str | None) -> str | None:
        if value is not None and value not in V1_VERSIONS and not _DATED_VERSION.fullmatch(value):
            raise ValueError(f"not an Azure OpenAI api-version (YYYY-MM-DD[-preview], or v1, preview, latest): {value!r}")
        return value

    @field_validator("headers")
    @classmethod
    def _no_bearer_header(cls, value: dict[str, str]) -> dict[str, str]:
        if any(k.lower() == "authorization" for k in value):
            raise ValueError("set api_key (with auth: entra for a bearer token) instead of an Authorization header")
        return value


class AzureOpenAIProvider(OpenAIProvider):
    type_name: ClassVar[str] = "azure"
    options_model = AzureOptions
    options: AzureOptions

    # A deployment name is not a model: a route says which model it serves
    # with rules:, and rules_for refuses to guess (so default_rules is unused).
    @classmethod
    def rules_for(cls, options: ProviderOptions, model: str) -> None:
        raise ConfigError(
            f"{model!r} is an Azure deployment name, not a model the catalog knows: "
            "set 'rules:' to the catalog entry the deployment serves (e.g. gpt-image-2); its price applies too"
        )

    def auth_headers(self, api_key: str) -> dict[str, str]:
        if self.options.auth == "entra":
            return {"Authorization": f"Bearer {api_key}"}
        return {"api-key": api_key}

    # -- requests ----------------------------------------------------------

    def route(self, endpoint: str, deployment: Deployment) -> tuple[str, dict[str, str]]:
        """The path (under the endpoint) and query of an ``endpoint`` call."""
        operation = _OPERATIONS[endpoint]
        version = self.options.api_version
        if version is None:
            return f"/openai/v1/{operation}", {}
        if version in V1_VERSIONS:
            return f"/openai/v1/{operation}", {"api-version": version}
        return f"/openai/deployments/{quote(deployment.model, safe='')}/{operation}", {"api-version": version}

    def _request(self, request: ImageRequest, deployment: Deployment) -> httpx.Request:
        if request.endpoint not in _OPERATIONS:
            raise InvalidRequestError(
                f"Azure OpenAI has no image {request.endpoint} API; '{request.model}' cannot serve it.",
                param="model",
                code="unsupported_endpoint",
            )
        path, params = self.route(request.endpoint, deployment)
        if request.endpoint == GENERATIONS:
            body = wire.json_body(request, deployment.model)
            return self.build("POST", path, deployment, content=body, params=params, headers={"Content-Type": "application/json"})
        data, files = wire.multipart(request, deployment.model)
        return self.build("POST", path, deployment, data=data, files=files, params=params)

    async def stream(self, request: ImageRequest, deployment: Deployment) -> AsyncIterator[StreamItem]:
        """The openai dialect's stream; a content-filter error event inside it
        is the same 400 content_policy_violation as an error answer."""
        try:
            async for event in super().stream(request, deployment):
                yield event
        except UpstreamError as exc:
            if exc.code is not None and exc.code.lower() in CONTENT_FILTER_CODES:
                raise InvalidRequestError(exc.message, param=exc.param, code="content_policy_violation") from exc
            raise

    # -- error answers -----------------------------------------------------

    def error_from(self, status: int, body: bytes, headers: Mapping[str, str]) -> ImagegateError:
        if 400 <= status <= 599 and status not in (401, 403):
            refusal = content_filter_refusal(body)
            if refusal is not None:
                return refusal
        exc = super().error_from(status, body, headers)
        fields = self.error_fields(body) if status == 429 else None
        if fields is not None and fields.type is None:
            exc.type = "rate_limit_error"  # Azure's 429 envelope has only code "429" and a message
        return exc


def content_filter_refusal(body: bytes) -> InvalidRequestError | None:
    """Azure's content-filter error body (any of its shapes) as 400
    ``content_policy_violation`` with Azure's message; None for other errors."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict) or not _is_content_filter(err):
        return None
    message = err.get("message")
    param = err.get("param")
    return InvalidRequestError(
        message if isinstance(message, str) and message else "The request was rejected by Azure OpenAI's content filter.",
        param=param if isinstance(param, str) else None,
        code="content_policy_violation",
    )


def _is_content_filter(err: dict[str, Any]) -> bool:
    code = err.get("code")
    if isinstance(code, str) and code.lower() in CONTENT_FILTER_CODES:
        return True
    for key in ("innererror", "inner_error"):
        inner = err.get(key)
        if isinstance(inner, dict):
            inner_code = inner.get("code")
            if isinstance(inner_code, str) and inner_code.lower() == INNER_CONTENT_FILTER_CODE:
                return True
            if "content_filter_result" in inner or "content_filter_results" in inner:
                return True
    return False
