"""``/admin/*``: keys, teams, budget reservations, usage, models, providers and virtual keys.

Only the master key (``auth.master_key``) or a key created with ``admin``
may call these; any other key gets 403. Key secrets appear once, in the
answer to their creation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from imagegate.accounting import keys, usage
from imagegate.accounting.admin import Admin
from imagegate.api.deps import AdminDep, ServiceDep
from imagegate.api.render import JSONBody
from imagegate.contract import catalog
from imagegate.gateway.models_view import model_views
from imagegate.gateway.webhooks.urls import WebhookURLs

router = APIRouter(prefix="/admin", tags=["admin"])

Period = Literal["total", "daily", "weekly", "monthly"]
Clearable = Literal["rpm", "ipm", "budget", "models", "expires_at", "team", "webhook_url"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyCreate(_Body):
    name: str = Field(min_length=1, max_length=200)
    team: str | None = Field(None, max_length=128)
    models: list[str] | None = None
    expires_at: datetime | None = None
    rpm: int | None = Field(None, ge=1, le=keys.MAX_PER_MINUTE)
    ipm: int | None = Field(None, ge=1, le=keys.MAX_PER_MINUTE)
    budget_usd: float | None = Field(None, ge=0, le=keys.MAX_BUDGET_USD)
    budget_period: Period = "total"
    admin: bool = False
    webhook_url: str | None = Field(None, min_length=1, max_length=2048)  # its jobs' webhooks; the secret is shown once


class KeyUpdate(_Body):
    name: str | None = Field(None, min_length=1, max_length=200)
    team: str | None = Field(None, max_length=128)
    models: list[str] | None = None
    expires_at: datetime | None = None
    enabled: bool | None = None
    rpm: int | None = Field(None, ge=1, le=keys.MAX_PER_MINUTE)
    ipm: int | None = Field(None, ge=1, le=keys.MAX_PER_MINUTE)
    budget_usd: float | None = Field(None, ge=0, le=keys.MAX_BUDGET_USD)
    budget_period: Period | None = None
    admin: bool | None = None
    webhook_url: str | None = Field(None, min_length=1, max_length=2048)
    clear: list[Clearable] = []


class TeamUpdate(_Body):
    budget_usd: float | None = Field(None, ge=0, le=keys.MAX_BUDGET_USD)
    budget_period: Period | None = None
    clear_budget: bool = False


Owners = list[Annotated[str, Field(min_length=1, max_length=128)]]


class VirtualKeyPut(_Body):
    provider: str
    secret: str = Field(min_length=1)
    teams: Owners | None = None  # None: keep the current owners (none for a new one)
    keys: Owners | None = None  # key ids or shown prefixes (ig-...)


class VirtualKeyOwners(_Body):
    teams: Owners | None = None
    keys: Owners | None = None
    change: Literal["set", "grant", "revoke"] = "set"


def _spec(body: KeyCreate | KeyUpdate) -> keys.KeySpec:
    return keys.KeySpec(
        name=body.name,
        team=body.team,
        models=body.models,
        expires_at=body.expires_at,
        enabled=getattr(body, "enabled", None),
        rpm=body.rpm,
        ipm=body.ipm,
        budget_usd=body.budget_usd,
        budget_period=body.budget_period,
        is_admin=body.admin,
        webhook_url=body.webhook_url,
    )


async def _admin(service: ServiceDep) -> Admin:
    """The admin operations on the server's database, checked against its models and providers."""
    accounting = service.accounting
    return Admin(
        accounting.db,
        accounting.vault,
        models=service.routes,
        providers=service.providers,
        flush_usage=accounting.flush_usage,
        check_webhook_url=WebhookURLs(service.settings.webhooks).check_key_url,
        keys_changed=accounting.forget_keys,
    )


AdminOps = Annotated[Admin, Depends(_admin)]


@router.post("/keys", status_code=201, response_model=None)
async def create_key(body: KeyCreate, admin: AdminOps, _: AdminDep) -> JSONBody:
    return JSONBody(await admin.create_key(_spec(body)), status_code=201)


@router.get("/keys", response_model=None)
async def list_keys(admin: AdminOps, _: AdminDep, team: str | None = None) -> JSONBody:
    return JSONBody({"object": "list", "data": await admin.list_keys(team)})


@router.get("/keys/{ref}", response_model=None)
async def show_key(ref: str, admin: AdminOps, _: AdminDep) -> JSONBody:
    return JSONBody(await admin.show_key(ref))


@router.patch("/keys/{ref}", response_model=None)
async def update_key(ref: str, body: KeyUpdate, admin: AdminOps, _: AdminDep) -> JSONBody:
    return JSONBody(await admin.update_key(ref, _spec(body), clear=body.clear))


@router.delete("/keys/{ref}", response_model=None)
async def revoke_key(ref: str, admin: AdminOps, _: AdminDep) -> JSONBody:
    return JSONBody(await admin.revoke_key(ref))


@router.post("/keys/{ref}/webhook-secret", response_model=None)
async def rotate_webhook_secret(ref: str, admin: AdminOps, _: AdminDep) -> JSONBody:
    """A new webhook secret for the key (``webhook_secret``, shown once); the old one stops signing at once."""
    return JSONBody(await admin.rotate_webhook_secret(ref))


@router.get("/reservations", response_model=None)
async def list_reservations(admin: AdminOps, _: AdminDep, key: str | None = None) -> JSONBody:
    """Budget reservations held by requests in flight (or left by a crash)."""
    return JSONBody({"object": "list", "data": await admin.list_reservations(key)})


class ReleaseReservations(_Body):
    key: str | None = None  # a key id or prefix; None: every key
    expired_only: bool = False


@router.post("/reservations/release", response_model=None)
async def release_reservations(body: ReleaseReservations, admin: AdminOps, _: AdminDep) -> JSONBody:
    """Give back reservations now (``imagegate keys release-reservations``)."""
    return JSONBody(await admin.release_reservations(body.key, expired_only=body.expired_only))


@router.get("/teams", response_model=None)
async def list_teams(admin: AdminOps, _: AdminDep) -> JSONBody:
    return JSONBody({"object": "list", "data": await admin.list_teams()})


@router.put("/teams/{name}", response_model=None)
async def update_team(name: str, body: TeamUpdate, admin: AdminOps, _: AdminDep) -> JSONBody:
    return JSONBody(await admin.update_team(name, body.budget_usd, body.budget_period, clear_budget=body.clear_budget))


@router.get("/usage", response_model=None)
async def usage_summary(
    admin: AdminOps,
    _: AdminDep,
    group_by: Annotated[str, Query(description="comma-separated: key, team, model, day, provider, endpoint")] = "key,model,day",
    since: datetime | None = None,
    until: datetime | None = None,
    key: str | None = None,
    format: Literal["json", "csv"] = "json",
) -> Response:
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    rows = await admin.usage(groups, since, until, key)  # rows still waiting for their batch included
    if format == "csv":
        return Response(usage.to_csv(rows), media_type="text/csv")
    return JSONBody({"object": "list", "group_by": groups, "data": rows})


@router.get("/models", response_model=None)
async def models(service: ServiceDep, _: AdminDep) -> JSONBody:
    """Each served model's effective rules and price, and where each came from."""
    entries = catalog.effective(service.settings.catalog)
    return JSONBody({"object": "list", "data": model_views(service.routes, entries, service.accounting.prices)})


@router.get("/providers", response_model=None)
async def providers(service: ServiceDep, _: AdminDep) -> JSONBody:
    """Each provider's runtime state: loaded local models, queues, batch counters."""
    return JSONBody({name: {"type": p.type_name, **p.describe()} for name, p in service.providers.items()})


@router.get("/storage", response_model=None)
async def storage(service: ServiceDep, _: AdminDep) -> JSONBody:
    """The hosted images: bytes and files stored now, the cap (``storage.max_gb``),
    and how many were deleted early to stay under it since the start."""
    usage = await service.storage.usage()
    cap = usage.max_bytes if usage else service.settings.storage_max_bytes
    return JSONBody(
        {
            "bytes": usage.bytes if usage else None,
            "files": usage.files if usage else None,
            "max_bytes": cap,
            "used_fraction": round(usage.bytes / cap, 4) if usage and cap else None,
            "evicted": usage.evicted if usage else None,
            "url_ttl_seconds": service.settings.storage.url_ttl_seconds,
        }
    )


@router.put("/virtual-keys/{name}", response_model=None)
async def put_virtual_key(name: str, body: VirtualKeyPut, admin: AdminOps, _: AdminDep) -> JSONBody:
    return JSONBody(await admin.put_virtual_key(name, body.provider, body.secret, teams=body.teams, key_refs=body.keys))


@router.patch("/virtual-keys/{name}", response_model=None)
async def change_virtual_key_owners(name: str, body: VirtualKeyOwners, admin: AdminOps, _: AdminDep) -> JSONBody:
    """Who may use it: replace (``set``), add to (``grant``) or remove from
    (``revoke``) its teams and keys. No owners: admin keys only."""
    return JSONBody(await admin.change_virtual_key_owners(name, teams=body.teams, key_refs=body.keys, change=body.change))


@router.get("/virtual-keys", response_model=None)
async def list_virtual_keys(admin: AdminOps, _: AdminDep) -> JSONBody:
    return JSONBody({"object": "list", "data": await admin.list_virtual_keys()})


@router.get("/virtual-keys/{name}", response_model=None)
async def show_virtual_key(name: str, admin: AdminOps, _: AdminDep) -> JSONBody:
    return JSONBody(await admin.show_virtual_key(name))


@router.delete("/virtual-keys/{name}", response_model=None)
async def delete_virtual_key(name: str, admin: AdminOps, _: AdminDep) -> JSONBody:
    return JSONBody(await admin.delete_virtual_key(name))
