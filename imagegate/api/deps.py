"""Request dependencies: the service, and who is calling."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from imagegate.accounting.caller import Caller
from imagegate.errors import PermissionDeniedError
from imagegate.gateway.service import ImageService


async def get_service(request: Request) -> ImageService:
    service: ImageService = request.app.state.service
    return service


def _secret(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    portkey = request.headers.get("x-portkey-api-key", "").strip()
    return portkey or None


async def get_caller(request: Request) -> Caller:
    """Authenticate from ``Authorization: Bearer`` or ``x-portkey-api-key``;
    ``x-portkey-virtual-key`` names a stored provider credential."""
    service: ImageService = request.app.state.service
    virtual = request.headers.get("x-portkey-virtual-key", "").strip() or None
    return await service.accounting.authenticate(_secret(request), virtual)


async def require_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.is_admin:
        raise PermissionDeniedError("This endpoint needs the master key or an admin key.", code="admin_required")
    return caller


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "")


ServiceDep = Annotated[ImageService, Depends(get_service)]
CallerDep = Annotated[Caller, Depends(get_caller)]
AdminDep = Annotated[Caller, Depends(require_admin)]
