"""The answers of the OpenAPI document (see ``api.openapi``): component
schemas (``ImagesResponse`` and the stream events from the contract models,
OpenAI's error envelope), the response headers, each error status's meaning,
and the answers of the image operations, event stream included.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from imagegate.contract.responses import ImagesResponse, StreamEvent

_REF = "#/components/schemas/{model}"


def ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


HEADERS: dict[str, dict[str, Any]] = {
    "RequestId": {
        "description": "The request's id (the client's own x-request-id when it sent a well-formed one); in the server log too.",
        "required": True,
        "schema": {"type": "string"},
    },
    "CostUsd": {
        "description": "What this request cost in USD (0.000000 unless it ran a model).",
        "schema": {"type": "string", "pattern": r"^[0-9]+\.[0-9]{6}$"},
    },
    "CostReservedUsd": {
        "description": "A stream's answer: what was reserved for it (its cost is known when it ends; see /admin/usage).",
        "schema": {"type": "string", "pattern": r"^[0-9]+\.[0-9]{6}$"},
    },
    "Model": {"description": "The model that answered (a fallback's name when one served).", "schema": {"type": "string"}},
    "Provider": {"description": "The provider that answered, or failed last.", "schema": {"type": "string"}},
    "Attempts": {
        "description": "Attempts made, retries and fallbacks included.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "IdempotentReplay": {"description": "`true` on an answer replayed for an Idempotency-Key.", "schema": {"type": "string"}},
    "Resized": {
        "description": "What the gateway changed to give the size asked, e.g. `1024x1024->1024x1536; crop`.",
        "schema": {"type": "string"},
    },
    "RetryAfter": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}},
}
ALWAYS = {"x-request-id": ref("RequestId", "headers"), "x-imagegate-cost-usd": ref("CostUsd", "headers")}
ROUTED = {  # on answers that ran a model, errors included
    "x-imagegate-model": ref("Model", "headers"),
    "x-imagegate-provider": ref("Provider", "headers"),
    "x-imagegate-attempts": ref("Attempts", "headers"),
}

ERRORS: dict[int, str] = {
    400: "Invalid request: the envelope's `param` names the field, `code` says what is wrong.",
    401: "No API key, or not a valid one (`invalid_api_key`, `expired_api_key`).",
    403: "The key may not do this: a model it may not use, a virtual key it does not own, an admin endpoint.",
    404: "Not found: an unknown model (`model_not_found`), key, virtual key or link.",
    409: "The Idempotency-Key was used with another body, or its first request is still running.",
    410: "Gone: an expired image link, or an Idempotency-Key whose images are no longer stored.",
    413: "The body is larger than server.max_body_mb (answered before the body is read).",
    415: "Wrong Content-Type for this operation.",
    429: "Rate limit or budget reached (`rate_limit_exceeded`, `insufficient_quota`), or an upstream's; see Retry-After.",
    500: "The server had an error (`internal_error`); the details are in its log under the request id.",
    501: "Virtual keys are not configured (auth.encryption_key).",
    502: "The upstream provider failed or answered something invalid.",
    503: "The database or image store is unavailable, no deployment can take the request, or the server is busy.",
    504: "The upstream provider did not answer in time.",
}
IMAGE_STATUSES = (400, 401, 403, 404, 409, 410, 413, 415, 429, 500, 501, 502, 503, 504)


def _omitted_not_null(schema: Any) -> Any:
    """The answers leave out a field that has no value (``exclude_none``):
    ``X | None`` becomes ``X``, not required."""
    if isinstance(schema, dict):
        options = schema.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            schema = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            schema.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
        return {k: _omitted_not_null(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_omitted_not_null(v) for v in schema]
    return schema


def component_schemas() -> dict[str, Any]:
    _, top = models_json_schema([(ImagesResponse, "serialization"), (StreamEvent, "serialization")], ref_template=_REF)
    schemas: dict[str, Any] = _omitted_not_null(dict(top["$defs"]))
    schemas["ImagesResponse"]["description"] = (
        "OpenAI's ImagesResponse. `size`, `quality`, `background` and `output_format` come with GPT-image-style models."
    )
    schemas["Error"] = {
        "type": "object",
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["message", "type", "param", "code"],
    }
    schemas["ErrorResponse"] = {
        "type": "object",
        "description": "OpenAI's error envelope.",
        "properties": {"error": ref("Error")},
        "required": ["error"],
    }
    for prefix, what in (("ImageGen", "image_generation"), ("ImageEdit", "image_edit")):
        schemas[f"{prefix}PartialImageEvent"] = {
            "allOf": [ref("StreamEvent")],
            "properties": {"type": {"const": f"{what}.partial_image"}},
            "required": ["partial_image_index"],
        }
        schemas[f"{prefix}CompletedEvent"] = {
            "allOf": [ref("StreamEvent")],
            "properties": {"type": {"const": f"{what}.completed"}},
        }
    schemas["ModelList"] = {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "model"},
                        "created": {"type": "integer"},
                        "owned_by": {"type": "string"},
                    },
                    "required": ["id", "object", "created", "owned_by"],
                },
            },
        },
        "required": ["object", "data"],
    }
    schemas["Readiness"] = {
        "type": "object",
        "properties": {
            "status": {"enum": ["ready", "not ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
        "required": ["status", "checks"],
    }
    return schemas


def event_stream(what: str) -> dict[str, Any]:
    """A server-sent event stream: each event's name and its JSON data
    (``contentSchema``, as OpenAPI 3.2 describes event streams)."""
    prefix = {"image_generation": "ImageGen", "image_edit": "ImageEdit"}[what]

    def event(name: str, schema: str) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "event": {"const": name},
                "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": ref(schema)},
            },
            "required": ["event", "data"],
        }

    return {
        "schema": {
            "description": f"`{what}.partial_image` events (as many as `partial_images`), then one `{what}.completed` "
            "per image; an `error` event (the error envelope) if the stream fails after it started. Comment lines "
            "(`: keep-alive` every `server.keepalive_seconds` of silence, a job's progress) may come before and "
            "between events; SSE readers skip them.",
            "oneOf": [
                event(f"{what}.partial_image", f"{prefix}PartialImageEvent"),
                event(f"{what}.completed", f"{prefix}CompletedEvent"),
                event("error", "ErrorResponse"),
            ],
        }
    }


def error(status: int, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    extra = {"Retry-After": ref("RetryAfter", "headers")} if status in (429, 503) else {}
    return {
        "description": ERRORS[status],
        "headers": {**ALWAYS, **extra, **(headers or {})},
        "content": {"application/json": {"schema": ref("ErrorResponse")}},
    }


CLIENT_GONE = {
    "description": "The client closed the connection before the answer was ready: the work was cancelled and not "
    "charged. Nobody receives this answer; it is what the access log shows (nginx's 499).",
    "headers": ALWAYS,
}


def image_responses(stream: str | None) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": ref("ImagesResponse")}}
    if stream:
        content["text/event-stream"] = event_stream(stream)
    ok = {
        "description": "The images" + (", or with `stream: true` their events" if stream else "") + ".",
        "headers": {
            "x-request-id": ref("RequestId", "headers"),
            "x-imagegate-cost-usd": ref("CostUsd", "headers"),
            "x-imagegate-cost-reserved-usd": ref("CostReservedUsd", "headers"),
            **ROUTED,
            "x-imagegate-idempotent-replay": ref("IdempotentReplay", "headers"),
            "x-imagegate-resized": ref("Resized", "headers"),
        },
        "content": content,
    }
    errors = {str(s): error(s, ROUTED) for s in IMAGE_STATUSES}  # ROUTED: once routing started
    return {"200": ok, **errors, "499": CLIENT_GONE}
