"""Hosted image URLs: ``GET /v1/images/files/{key}?expires=...&signature=...``.

No API key is needed: the signature is the credential. Responses are
immutable, so they carry a strong ETag (the random key) and may be cached
until the link expires. The image streams from storage in chunks as it is
sent; its size is known up front (``Content-Length``).
"""

from __future__ import annotations

import time
from email.utils import formatdate

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from imagegate.api.deps import ServiceDep
from imagegate.storage.base import ObjectStream
from imagegate.storage.signing import URL_PATH

router = APIRouter()


class _StoredFileResponse(StreamingResponse):
    """Streams an open stored object and closes it however the response ends
    (sent, client gone, server stopping), also when no byte was sent."""

    def __init__(self, stream: ObjectStream, headers: dict[str, str]) -> None:
        super().__init__(stream, media_type=stream.content_type, headers=headers)
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.stream.aclose()


@router.get(URL_PATH + "/{key}", tags=["images"], response_model=None)
@router.head(URL_PATH + "/{key}", include_in_schema=False, response_model=None)
async def get_image_file(key: str, http: Request, service: ServiceDep, expires: str = "", signature: str = "") -> Response:
    stream, expiry = await service.open_file(key, expires, signature)
    etag = f'"{stream.key}"'
    headers = {
        "ETag": etag,
        "Cache-Control": f"private, max-age={max(0, expiry - int(time.time()))}, immutable",
        "Expires": formatdate(expiry, usegmt=True),
        "Last-Modified": formatdate(stream.created, usegmt=True),
        "X-Content-Type-Options": "nosniff",
        # An SVG (vector output) may hold script: opened from this origin, none runs.
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
    }
    if etag in [t.strip() for t in http.headers.get("if-none-match", "").split(",")]:
        await stream.aclose()
        return Response(status_code=304, headers=headers)
    if http.method == "HEAD":
        await stream.aclose()
        response = Response(b"", media_type=stream.content_type, headers=headers)
        response.headers["Content-Length"] = str(stream.size)
        return response
    return _StoredFileResponse(stream, {**headers, "Content-Length": str(stream.size)})
