"""Request dependencies: the service, and API-key checking."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request

from imagegate.errors import AuthenticationError
from imagegate.gateway.service import ImageService


def get_service(request: Request) -> ImageService:
    return request.app.state.service


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def require_api_key(request: Request) -> None:
    allowed: list[bytes] = request.app.state.api_key_digests
    if not allowed:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")
    digest = _digest(token.strip())
    if not any(hmac.compare_digest(digest, candidate) for candidate in allowed):
        raise AuthenticationError("Incorrect API key provided.")


def key_digests(keys: list[str]) -> list[bytes]:
    return [_digest(k) for k in keys]


ServiceDep = Annotated[ImageService, Depends(get_service)]
AuthDep = Annotated[None, Depends(require_api_key)]
