"""``/v1/images/jobs``: asynchronous image jobs (docs/jobs.md).

A request to any of the three image endpoints with ``Prefer:
respond-async`` (RFC 7240) is validated, authorised and admitted as a
synchronous one, then answered ``202 Accepted`` with the job object and a
``Location`` header; ``GET /v1/images/jobs/{id}`` polls it, ``GET
/v1/images/jobs`` lists the caller's jobs, ``DELETE /v1/images/jobs/{id}``
cancels one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from imagegate.accounting.caller import Caller
from imagegate.api.deps import CallerDep, ServiceDep, request_id
from imagegate.api.middleware import RESERVED_HEADER
from imagegate.contract.requests import ImageRequest
from imagegate.gateway.jobs.service import WEBHOOK_HEADER
from imagegate.gateway.service import REPLAY_HEADER, ImageService

router = APIRouter(prefix="/v1/images/jobs", tags=["jobs"])
RESPOND_ASYNC = "respond-async"


def prefers_async(http: Request) -> bool:
    """Whether a ``Prefer`` header (RFC 7240: comma-separated preferences,
    each ``token[=value]`` with ``;`` parameters; names case-insensitive;
    the header may repeat) asks for ``respond-async``."""
    for header in http.headers.getlist("prefer"):
        for preference in header.split(","):
            name = preference.split(";", 1)[0].split("=", 1)[0].strip().lower()
            if name == RESPOND_ASYNC:
                return True
    return False


def _base_url(http: Request) -> str:
    return str(http.base_url).rstrip("/")


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def submit(service: ImageService, request: ImageRequest, http: Request, caller: Caller) -> Response:
    """Accept ``request`` as a job: 202 with the job (200 for an earlier job
    replayed for its Idempotency-Key)."""
    job, replay = await service.jobs.submit(
        request,
        caller,
        request_id(http),
        base_url=_base_url(http),
        idempotency_key=http.headers.get("idempotency-key"),
        client=http.client.host if http.client else "",
        webhook_url=http.headers.get(WEBHOOK_HEADER),
    )
    headers = {
        "Location": service.jobs.location(job.id),
        "Preference-Applied": RESPOND_ASYNC,
        RESERVED_HEADER: job.reserved_usd,
    }
    if replay:
        headers[REPLAY_HEADER] = "true"
    return _json(job.to_json(), 200 if replay else 202, headers)


@router.get("", response_model=None)
async def list_image_jobs(
    http: Request,
    service: ServiceDep,
    caller: CallerDep,
    limit: Annotated[int, Query()] = 20,
    after: Annotated[str | None, Query()] = None,
) -> Response:
    return _json(await service.jobs.list_jobs(caller, _base_url(http), limit, after))


@router.get("/{job_id}", response_model=None)
async def get_image_job(http: Request, job_id: str, service: ServiceDep, caller: CallerDep) -> Response:
    return _json(await service.jobs.get(job_id, caller, _base_url(http)))


@router.delete("/{job_id}", response_model=None)
async def cancel_image_job(http: Request, job_id: str, service: ServiceDep, caller: CallerDep) -> Response:
    job = await service.jobs.cancel(job_id, caller, _base_url(http))
    return _json(job.to_json(), headers={RESERVED_HEADER: job.reserved_usd})
