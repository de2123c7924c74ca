"""Hosted image URLs: ``GET /v1/images/files/{key}?expires=...&signature=...``.

No API key is needed: the signature is the credential. Responses are
immutable, so they carry a strong ETag (the random key) and may be cached
until the link expires.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from fastapi import APIRouter, Request
from starlette.responses import Response

from imagegate.api.deps import ServiceDep
from imagegate.storage.signing import URL_PATH

router = APIRouter()


@router.get(URL_PATH + "/{key}", tags=["images"], response_model=None)
@router.head(URL_PATH + "/{key}", include_in_schema=False, response_model=None)
async def get_image_file(key: str, http: Request, service: ServiceDep, expires: str = "", signature: str = "") -> Response:
    obj, expiry = await service.open_file(key, expires, signature)
    etag = f'"{obj.key}"'
    headers = {
        "ETag": etag,
        "Cache-Control": f"private, max-age={max(0, expiry - int(time.time()))}, immutable",
        "Expires": formatdate(expiry, usegmt=True),
        "Last-Modified": formatdate(obj.created, usegmt=True),
        "X-Content-Type-Options": "nosniff",
    }
    if etag in [t.strip() for t in http.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    body = b"" if http.method == "HEAD" else obj.data
    response = Response(body, media_type=obj.content_type, headers=headers)
    if http.method == "HEAD":
        response.headers["Content-Length"] = str(len(obj.data))
    return response
