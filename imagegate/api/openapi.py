"""The OpenAPI document (``/openapi.json``, rendered by ``/docs``), made to
say what the server does.

The image routes parse their bodies themselves (JSON or multipart,
strictly), so their request schemas are attached here (``GENERATIONS``,
``EDITS``, ``VARIATIONS``, given to the routes as ``openapi_extra``) from the
same contract models that validate them, with their answers: the
``ImagesResponse`` or the event stream, every error status they can give in
OpenAI's envelope, and the response headers.

:func:`install` replaces FastAPI's generator with one that post-processes its
document: FastAPI's 422 answers go (the error handler answers every
validation error with 400 in the envelope), each operation gets the error
statuses it can give, the security schemes (``Authorization: Bearer`` and
Portkey's ``x-portkey-api-key``), and the headers every answer carries.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from imagegate.api.openapi_answers import ALWAYS, HEADERS, component_schemas, error, image_responses, ref
from imagegate.config import Settings
from imagegate.contract.catalog import DIFFUSION_FIELDS
from imagegate.contract.fields import extra_fields_model
from imagegate.contract.requests import EditFields, GenerationFields, VariationFields

# -- requests --------------------------------------------------------------------

_BINARY = {"type": "string", "format": "binary"}
_IMAGE_REF = {
    "type": "object",
    "properties": {"image_url": {"type": "string", "description": "A data: URL or an http(s) URL."}},
    "required": ["image_url"],
    "additionalProperties": False,
}
_EXTENSION = (
    "imagegate extension, not in OpenAI's API: accepted only by models whose catalog entry takes it "
    "(local diffusion models, test-pattern); any other model answers 400 unsupported_parameter."
)
_EXTENSIONS = extra_fields_model(DIFFUSION_FIELDS).model_json_schema()["properties"]


def _schema(model: type[BaseModel], extra: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = model.model_json_schema()
    for name, field in DIFFUSION_FIELDS.items():
        what = f"{field.description} {_EXTENSION}".strip()
        schema["properties"][name] = {**_EXTENSIONS[name], "description": what, "x-imagegate-extension": True}
    schema["properties"].update(extra)
    schema["required"] = sorted(set(schema.get("required", [])) | set(required))
    return schema


def _header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": schema or {"type": "string"}}


_IMAGE_HEADERS = [
    _header(
        "x-portkey-virtual-key",
        "The name of a stored provider credential (a virtual key) to run the request with, on that provider only. "
        "The caller's team or key must own it (403), and it must exist (404).",
    ),
    _header(
        "Idempotency-Key",
        "Retry safely: a second request with the same key and body gets the first answer again "
        "(x-imagegate-idempotent-replay: true, charged once); the same key with another body is 409. "
        "Not with stream: true (400).",
        {"type": "string", "minLength": 1, "maxLength": 255},
    ),
]


# Examples (Swagger UI's "Try it out"; schemathesis sends them too). A 32x32 PNG as a data: URL.
_PNG_URL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAAK0lEQVR42u3NQQEAQAQAMC6NiCKKdSX4bQWW1ROXXhwTCAQCgUAgE"
    "AgEWz6avgGo9r6f/wAAAABJRU5ErkJggg=="
)
_GENERATION_EXAMPLES = {
    "gpt-image": {
        "summary": "A GPT image model",
        "value": {"model": "gpt-image-1", "prompt": "A watercolor lighthouse at dawn", "size": "1024x1024", "quality": "low"},
    },
    "stream": {
        "summary": "Streamed, with a partial image first",
        "value": {
            "model": "gpt-image-1",
            "prompt": "A watercolor lighthouse at dawn",
            "size": "1024x1024",
            "stream": True,
            "partial_images": 1,
        },
    },
    "hosted-url": {
        "summary": "DALL-E 3, answered with a hosted URL",
        "value": {
            "model": "dall-e-3",
            "prompt": "A watercolor lighthouse at dawn",
            "size": "1024x1024",
            "response_format": "url",
        },
    },
    "seed": {
        "summary": "An extension field (models that take it)",
        "value": {"model": "test-pattern", "prompt": "A test card", "size": "256x256", "seed": 42},
    },
}
_EDIT_EXAMPLES = {
    "image-url": {
        "summary": "An image given as a data: URL",
        "value": {
            "model": "gpt-image-1",
            "prompt": "The same scene at night",
            "images": [{"image_url": _PNG_URL}],
            "size": "1024x1024",
        },
    },
    "stream": {
        "summary": "Streamed",
        "value": {
            "model": "gpt-image-1",
            "prompt": "The same scene at night",
            "images": [{"image_url": _PNG_URL}],
            "size": "1024x1024",
            "stream": True,
            "partial_images": 1,
        },
    },
}


def _operation(operation_id: str, summary: str, body: dict[str, Any], stream: str | None) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": _IMAGE_HEADERS,
        "requestBody": {"required": True, "content": body},
        "responses": image_responses(stream),
    }


GENERATIONS = _operation(
    "createImage",
    "Create images from a prompt",
    {"application/json": {"schema": _schema(GenerationFields, {}, ["prompt"]), "examples": _GENERATION_EXAMPLES}},
    "image_generation",
)
# Image parts are recognised by their bytes (PNG, JPEG or WebP), whatever their own Content-Type says.
_IMAGE_PARTS = {"image": {"contentType": "image/png, image/jpeg, image/webp"}, "mask": {"contentType": "image/png"}}
EDITS = _operation(
    "createImageEdit",
    "Edit or extend images",
    {
        "multipart/form-data": {
            "schema": _schema(
                EditFields,
                {"image": {"anyOf": [_BINARY, {"type": "array", "items": _BINARY, "maxItems": 16}]}, "mask": _BINARY},
                ["image", "prompt"],
            ),
            "encoding": _IMAGE_PARTS,
        },
        "application/json": {
            "schema": _schema(
                EditFields,
                {"images": {"type": "array", "items": _IMAGE_REF, "minItems": 1, "maxItems": 16}, "mask": _IMAGE_REF},
                ["images", "prompt"],
            ),
            "examples": _EDIT_EXAMPLES,
        },
    },
    "image_edit",
)
VARIATIONS = _operation(
    "createImageVariation",
    "Create variations of an image",
    {
        "multipart/form-data": {
            "schema": _schema(VariationFields, {"image": _BINARY}, ["image"]),
            "encoding": {"image": _IMAGE_PARTS["image"]},
        }
    },
    None,
)


# -- the document ------------------------------------------------------------------

DESCRIPTION = """\
One OpenAI-compatible Images API in front of every image model: point any OpenAI SDK at this
server's `/v1`.

**Keys.** Send `Authorization: Bearer KEY` (or Portkey's `x-portkey-api-key: KEY`): a static key,
a database key, or the master key (also `/admin`). Without keys configured or created the
images API may also be open to callers without a key.

**Errors** always use OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`; a
validation error is 400 with `param` naming the field. Answers that ran a model say which
(`x-imagegate-model`, `x-imagegate-provider`, `x-imagegate-attempts`) and what it cost
(`x-imagegate-cost-usd`). Every answer of the application carries `x-request-id` (send your own,
1-128 of `A-Za-z0-9._:-`, to have it used). Before the application, the HTTP server itself may
answer any operation with 408 (request head too slow), 431 (head too large) or 503 `server_busy`
(too many connections), in the same envelope but without `x-request-id`.

**Extension fields** (`seed`, `negative_prompt`, `num_inference_steps`, `guidance_scale`) are
accepted only by models whose catalog entry takes them; OpenAI's own models answer 400
`unsupported_parameter`. Nothing is silently dropped.
"""
TAGS = [
    {"name": "images", "description": "OpenAI's Images API: generations, edits, variations; hosted image files."},
    {"name": "models", "description": "The models this server serves."},
    {"name": "health", "description": "Liveness and readiness (no key needed)."},
    {"name": "admin", "description": "Keys, teams, budgets, usage, models, providers, storage, virtual keys: "
     "the master key or an admin key."},
]  # fmt: skip
_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An imagegate key: static, database or master."},
    "portkeyApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-portkey-api-key",
        "description": "The same key, Portkey's way.",
    },
}
_KEYED: list[dict[str, list[str]]] = [{"bearer": []}, {"portkeyApiKey": []}]
_JSON_OBJECT = {"type": "object"}

# Operations outside /admin and the image routes: (success answers, error statuses).
_FILE_HEADERS = {
    name: {"description": what, "schema": {"type": "string"}}
    for name, what in (
        ("ETag", "The image's key: strong, it never changes."),
        ("Cache-Control", "private, until the link expires, immutable."),
        ("Expires", "When the link expires."),
        ("Last-Modified", "When the image was stored."),
    )
}
_BINARY_IMAGE = {"schema": {"type": "string", "format": "binary"}}
_JOB = {"schema": {"type": "object"}}  # the job object: docs/jobs.md
_JOB_ACCEPTED = {
    "description": "With `Prefer: respond-async`: the job accepted (its budget reserved); poll `Location` (docs/jobs.md).",
    "headers": {
        "Location": {"description": "The job: /v1/images/jobs/{id}.", "schema": {"type": "string"}},
        "Preference-Applied": {"description": "respond-async", "schema": {"type": "string"}},
    },
    "content": {"application/json": _JOB},
}
_OTHER: dict[tuple[str, str], tuple[dict[str, Any], tuple[int, ...]]] = {
    ("get", "/v1/images/files/{key}"): (
        {
            "200": {
                "description": "The image (no key needed: the signature is the credential).",
                "headers": {**ALWAYS, **_FILE_HEADERS},
                "content": {t: _BINARY_IMAGE for t in ("image/png", "image/jpeg", "image/webp")},
            },
            "304": {"description": "Not modified (If-None-Match matched the ETag).", "headers": {**ALWAYS, **_FILE_HEADERS}},
        },
        (404, 410, 500, 503),
    ),
    ("get", "/v1/images/jobs"): (
        {"200": {"description": "The caller's jobs, newest first (docs/jobs.md).", "content": {"application/json": _JOB}}},
        (400, 401, 404, 500, 503),
    ),
    ("get", "/v1/images/jobs/{job_id}"): (
        {
            "200": {
                "description": "The job; `result` once it succeeded, `error` once it failed.",
                "content": {"application/json": _JOB},
            }
        },
        (401, 404, 410, 500, 503),
    ),
    ("delete", "/v1/images/jobs/{job_id}"): (
        {
            "200": {
                "description": "A queued job cancelled, or a running one asked to stop.",
                "content": {"application/json": _JOB},
            }
        },
        (401, 404, 409, 500, 503),
    ),
    ("get", "/v1/models"): (
        {"200": {"description": "OpenAI's model list.", "content": {"application/json": {"schema": ref("ModelList")}}}},
        (401, 500, 503),
    ),
    ("get", "/healthz"): (
        {
            "200": {
                "description": "The process answers.",
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]}
                    }
                },
            }
        },
        (500,),
    ),
    ("get", "/readyz"): (
        {
            "200": {"description": "Ready: every check passed.", "content": {"application/json": {"schema": ref("Readiness")}}},
            "503": {
                "description": "Not ready: `checks` says what failed.",
                "content": {"application/json": {"schema": ref("Readiness")}},
            },
        },
        (500,),
    ),
}


def _plain(parameter: dict[str, Any]) -> bool:
    """A parameter any string satisfies: it cannot fail validation."""
    schema = parameter.get("schema", {})
    return all(
        o.get("type") in ("string", "null") and set(o) <= {"type", "title", "default", "description"}
        for o in schema.get("anyOf", [schema])
    )


def _admin(path: str, op: dict[str, Any]) -> tuple[int, ...]:
    params = op.get("parameters", [])
    body = "requestBody" in op
    statuses = {401, 403, 500, 503}
    if body or not all(_plain(p) for p in params):
        statuses.add(400)
    if body:
        statuses.add(413)
    if body or any(p["in"] == "path" or p["name"] == "key" for p in params):
        statuses.add(404)  # a key, team or virtual key it names does not exist
    if path.startswith("/admin/virtual-keys"):
        statuses.add(501)
    return tuple(sorted(statuses))


def _with_common_headers(responses: dict[str, Any]) -> None:
    for status, response in responses.items():
        headers = response.setdefault("headers", {})
        for name, header in ALWAYS.items():
            headers.setdefault(name, header)
        if status == "503":  # also the HTTP server's own server_busy, which comes before any request id
            headers["x-request-id"] = {"description": HEADERS["RequestId"]["description"], "schema": {"type": "string"}}


def _finish(doc: dict[str, Any], open_api: bool) -> None:
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)  # FastAPI's 422 bodies: never sent
    schemas.pop("ValidationError", None)
    schemas.update(component_schemas())
    components["headers"] = HEADERS
    components["securitySchemes"] = _SECURITY_SCHEMES
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses: dict[str, Any] = op.setdefault("responses", {})
            responses.pop("422", None)
            if path.startswith("/v1/images/") and method == "post":
                op["security"] = _KEYED + ([{}] if open_api else [])
                responses["202"] = _JOB_ACCEPTED
            elif path.startswith("/admin/"):
                op["security"] = _KEYED
                if path == "/admin/usage":
                    responses["200"]["content"]["text/csv"] = {"schema": {"type": "string"}}
                for content in responses.get("200", responses.get("201", {})).get("content", {}).values():
                    content["schema"] = content["schema"] or _JSON_OBJECT
                responses.update({str(s): error(s) for s in _admin(path, op)})
            elif (method, path) in _OTHER:
                ok, errors = _OTHER[(method, path)]
                responses.clear()
                responses.update(ok)
                responses.update({str(s): error(s) for s in errors if str(s) not in ok})
                keyed = path == "/v1/models" or path.startswith("/v1/images/jobs")
                op["security"] = _KEYED + ([{}] if open_api else []) if keyed else []
            else:
                responses.update({"500": error(500)})
            _with_common_headers(responses)


def install(app: FastAPI, settings: Settings) -> None:
    """Serve this module's document at ``app.openapi_url``. ``open_api``:
    whether callers without a key may be served (decided at start: keys
    created later make them required, see ``accounting.service``)."""
    open_api = not settings.auth.enforced

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=DESCRIPTION, routes=app.routes, tags=TAGS)
            _finish(doc, open_api)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
