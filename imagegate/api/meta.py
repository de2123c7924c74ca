"""``/v1/models``, health and readiness."""

from __future__ import annotations

import datetime

from fastapi import APIRouter

from imagegate.api.deps import CallerDep, ServiceDep
from imagegate.api.render import JSONBody

router = APIRouter()


@router.get("/v1/models", tags=["models"], response_model=None)
async def list_models(service: ServiceDep, caller: CallerDep) -> JSONBody:
    data = [
        _model(name, service.routes[name].deployments[0].provider, service.created_at, service.routes[name].rules.retired)
        for name in service.directory.names()
        if caller.models is None or name in caller.models
    ]
    return JSONBody({"object": "list", "data": data})


def _model(name: str, owner: str, created: int, retired: datetime.date | None) -> dict[str, object]:
    """OpenAI's Model object; ``retired``: the date the vendor shut the
    model down (an upstream other than the vendor may still serve it)."""
    model: dict[str, object] = {"id": name, "object": "model", "created": created, "owned_by": owner}
    if retired is not None:
        model["retired"] = retired.isoformat()
    return model


@router.get("/healthz", tags=["health"], response_model=None)
async def healthz() -> JSONBody:
    return JSONBody({"status": "ok"})


@router.get("/readyz", tags=["health"], response_model=None)
async def readyz(service: ServiceDep) -> JSONBody:
    checks = await service.readiness()
    ready = all(checks.values())
    return JSONBody({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)
