"""Request-body documentation for the generated OpenAPI docs (``/docs``).

The routes parse bodies themselves (JSON or multipart, strictly), so the
schemas are attached here from the same contract models that validate them.
"""

from __future__ import annotations

from typing import Any

from imagegate.contract.requests import EditFields, GenerationFields, VariationFields

_BINARY = {"type": "string", "format": "binary"}
_IMAGE_REF = {
    "type": "object",
    "properties": {"image_url": {"type": "string", "description": "A data: URL or an http(s) URL."}},
    "required": ["image_url"],
    "additionalProperties": False,
}


def _schema(model: Any, extra: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema["properties"].update(extra)
    schema["required"] = sorted(set(schema.get("required", [])) | set(required))
    return schema


def _body(content: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": content}}


GENERATIONS = _body({"application/json": {"schema": _schema(GenerationFields, {}, ["prompt"])}})
EDITS = _body(
    {
        "multipart/form-data": {
            "schema": _schema(
                EditFields,
                {"image": {"anyOf": [_BINARY, {"type": "array", "items": _BINARY, "maxItems": 16}]}, "mask": _BINARY},
                ["image", "prompt"],
            )
        },
        "application/json": {
            "schema": _schema(
                EditFields,
                {"images": {"type": "array", "items": _IMAGE_REF, "minItems": 1, "maxItems": 16}, "mask": _IMAGE_REF},
                ["images", "prompt"],
            )
        },
    }
)
VARIATIONS = _body({"multipart/form-data": {"schema": _schema(VariationFields, {"image": _BINARY}, ["image"])}})
