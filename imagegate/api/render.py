"""Fast JSON and server-sent-event rendering (orjson; payloads are megabytes)."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, BaseModel):
            content = content.model_dump(exclude_none=True)
        return orjson.dumps(content)


def sse_comment(text: str) -> bytes:
    """An SSE comment line (``: text``), which clients skip: a keep-alive."""
    clean = "".join(ch if ch.isprintable() else " " for ch in text)[:200]
    return b": " + clean.encode() + b"\n\n"


def sse(event: str, payload: BaseModel | dict[str, Any]) -> bytes:
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(exclude_none=True)
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
