"""A stand-in Azure OpenAI (Microsoft Foundry) images upstream on loopback.

Protocol, from Azure's documentation and the official clients:

* Paths. The deployments API,
  ``POST {endpoint}/openai/deployments/{deployment-id}/images/{generations,edits}?api-version=YYYY-MM-DD[-preview]``
  (api-version required), and the v1 API, ``POST {endpoint}/openai/v1/images/{generations,edits}``
  with the deployment name as the body's ``model`` (api-version optional:
  ``v1``, ``preview``, ``latest``).
  https://learn.microsoft.com/azure/ai-foundry/openai/how-to/dall-e (MicrosoftDocs/azure-ai-docs,
  articles/ai-foundry/openai/how-to/dall-e.md: "Call the image generation API", "Call the image edit API",
  the v1 ``base_url=.../openai/v1/`` streaming example);
  https://learn.microsoft.com/azure/ai-foundry/openai/api-version-lifecycle (v1 API: ``/openai/v1``,
  no api-version needed); https://learn.microsoft.com/azure/foundry/openai/reference (2024-10-21
  reference: URI parameters, ``api-key`` header, ``dalleErrorResponse``);
  Azure/azure-rest-api-specs, specification/cognitiveservices/data-plane/AzureOpenAI/inference/preview/
  2025-04-01-preview/examples/image_edits.json (edit body and answer with ``usage``);
  openai/openai-python ``src/openai/lib/azure.py`` (``AzureOpenAI``: ``/images/generations`` and
  ``/images/edits`` are deployments endpoints, rewritten to ``/deployments/{model}/...`` with
  ``?api-version=``, except for api-version ``preview``/``latest``; ``api-key`` header, or
  ``Authorization: Bearer`` for an Entra ID token).
* Auth: ``api-key: <key>``, or ``Authorization: Bearer <Microsoft Entra ID token>`` (the reference's
  "Authentication"); the v1 API also takes the key as a bearer token (the v1 examples use
  ``OpenAI(api_key=<Azure key>, base_url=...)``). Otherwise 401 with Azure's message.
* Bodies and answers: OpenAI's (JSON generations, multipart edits with ``image`` / ``image[]`` and
  ``mask``, ``ImagesResponse`` with ``usage``, ``stream`` + ``partial_images`` events for gpt-image
  models); this class reuses ``OpenAIStandIn`` for them and its scripted faults.
* Errors: an unknown deployment is 404 ``DeploymentNotFound``; an unknown path or a deployments path
  without api-version, 404 "Resource not found"; a rate limit, 429 ``{"error": {"code": "429", ...}}``
  with ``retry-after`` and ``x-ratelimit-*`` headers. Content-filter refusals in each documented shape
  are the ``CONTENT_FILTER_*`` bodies below, each with its source.

``echo`` faults may use ``$APIKEY`` (the request's ``api-key`` header) besides ``OpenAIStandIn``'s
``$AUTHORIZATION``/``$TOKEN``/``$HEADERS``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from standin_http import map_strings
from standin_openai import Fault, OpenAIStandIn, Received

API_KEY = "azure-key-0123456789abcdef0123456789ab"
ENTRA_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.entra-token-for-tests.signature"
DATED = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
V1_VERSIONS = {"v1", "preview", "latest"}
OPERATIONS = {"images/generations", "images/edits"}

# how-to/dall-e.md, "API call rejection": a flagged prompt (and, with another message, a filtered image).
CONTENT_FILTER_PROMPT = {
    "created": 1698435368,
    "error": {"code": "contentFilter", "message": "Your task failed as a result of our safety system."},
}
CONTENT_FILTER_IMAGE = {
    "created": 1698435368,
    "error": {"code": "contentFilter", "message": "Generated image was filtered as a result of our safety system."},
}
_FILTER_RESULT = {
    "hate": {"filtered": False, "severity": "safe"},
    "jailbreak": {"filtered": False, "detected": False},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": True, "severity": "medium"},
    "violence": {"filtered": False, "severity": "safe"},
}
# The content_filter shape with innererror.content_filter_result (openai/openai-cookbook
# examples/azure/chat_cell21.py reads err["error"]["innererror"]["content_filter_result"]).
CONTENT_FILTER_INNERERROR = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
        "Please modify your prompt and retry. To learn more about our content filtering policies please read our "
        "documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": _FILTER_RESULT},
    }
}
# The images API's dalleErrorResponse: dalleError {code, message, param, type, inner_error:
# dalleInnerError {code: ResponsibleAIPolicyViolation, content_filter_results, revised_prompt}}
# (reference 2024-10-21, "Components"; Azure/azure-sdk-for-net AzureOpenAIDalleError).
CONTENT_FILTER_INNER_ERROR = {
    "error": {
        "code": "content_policy_violation",
        "message": "Your request was rejected as a result of our safety system. Your prompt may contain text "
        "that is not allowed by our safety system.",
        "param": None,
        "type": "invalid_request_error",
        "inner_error": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_results": _FILTER_RESULT,
            "revised_prompt": None,
        },
    }
}
# The same schema with only the inner error saying so (dalleError's code is optional).
CONTENT_FILTER_INNER_ONLY = {
    "error": {
        "message": "The prompt violated one of more content filter rules.",
        "inner_error": {"code": "ResponsibleAIPolicyViolation", "content_filter_results": _FILTER_RESULT},
    }
}
# gpt-image models' own refusal (OpenAI's envelope, as the openai stand-in's tests use it).
MODERATION_BLOCKED = {
    "error": {
        "message": "Your request was rejected by the safety system. If you believe this is an error, contact us.",
        "type": "image_generation_user_error",
        "param": None,
        "code": "moderation_blocked",
    }
}
RATE_LIMITED = {
    "error": {
        "code": "429",
        "message": "Requests to the Images_Create Operation under Azure OpenAI API version 2025-04-01-preview have "
        "exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after 7 seconds.",
    }
}
RATE_LIMIT_HEADERS = {"Retry-After": "7", "x-ratelimit-remaining-requests": "0", "apim-request-id": "5f1c-test"}
ACCESS_DENIED = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
        "key for an active subscription and use a correct regional API endpoint for your resource.",
    }
}
DEPLOYMENT_NOT_FOUND = {
    "error": {
        "code": "DeploymentNotFound",
        "message": "The API deployment for this resource does not exist. If you created the deployment within the "
        "last 5 minutes, please wait a moment and try again.",
    }
}
RESOURCE_NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}


def route_of(rec: Received) -> tuple[str, dict[str, str]]:
    """A received request's path and its query (one value per name)."""
    parts = urlsplit(rec.path)
    return unquote(parts.path), {k: v[0] for k, v in parse_qs(parts.query).items()}


class AzureStandIn(OpenAIStandIn):
    """Azure's paths, auth and errors around the OpenAI stand-in's bodies,
    answers and faults. ``deployments``: the deployment names that exist."""

    def __init__(self, deployments: tuple[str, ...] = ("prod-img",), image: bytes | None = None) -> None:
        super().__init__(image)
        self.deployments = set(deployments)
        self.endpoint = self.base_url.removesuffix("/v1")
        self.base_url = self.endpoint  # "url" faults hand out {endpoint}/files/...

    def answer(self, h: Any, rec: Received, fault: Fault | None) -> None:
        refusal = self.refusal(rec)
        if refusal is not None:
            if fault is not None:  # a refused request leaves the script as it was
                with self._lock:
                    self.script.appendleft(fault)
            status, body = refusal
            h.send_json(status, body, {"apim-request-id": "0-refused"})
            return
        if fault is not None and fault.echo:
            key = rec.headers.get("api-key", "")
            fault = replace(fault, body=_sub(fault.body, key), events=_sub(fault.events, key))
        super().answer(h, rec, fault)

    def refusal(self, rec: Received) -> tuple[int, dict[str, Any]] | None:
        path, query = route_of(rec)
        version = query.get("api-version")
        v1 = re.fullmatch(r"/openai/v1/(images/\w+)", path)
        legacy = re.fullmatch(r"/openai/deployments/([^/]+)/(images/\w+)", path)
        if v1 and v1.group(1) in OPERATIONS and (version is None or version in V1_VERSIONS):
            deployment = self._body_model(rec)
        elif legacy and legacy.group(2) in OPERATIONS and version is not None and DATED.fullmatch(version):
            deployment = legacy.group(1)
        else:
            return 404, RESOURCE_NOT_FOUND
        if not self._authorized(rec, v1=v1 is not None):
            return 401, ACCESS_DENIED
        if deployment not in self.deployments:
            return 404, DEPLOYMENT_NOT_FOUND
        return None

    def _authorized(self, rec: Received, *, v1: bool) -> bool:
        bearer = rec.headers.get("authorization", "").removeprefix("Bearer ")
        return rec.headers.get("api-key") == API_KEY or bearer == ENTRA_TOKEN or (v1 and bearer == API_KEY)

    @staticmethod
    def _body_model(rec: Received) -> str | None:
        value = rec.json.get("model") if rec.json is not None else rec.fields.get("model")
        return value if isinstance(value, str) else None


def _sub(value: Any, key: str) -> Any:
    return map_strings(value, lambda text: text.replace("$APIKEY", key))
