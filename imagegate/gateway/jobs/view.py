"""The job object as the API renders it, and the hooks other packages plug in.

:class:`JobView` is what ``GET /v1/images/jobs/{id}`` answers and what a
:class:`JobFinishedListener` (the webhooks package) receives once a job has
reached a final state and that state is committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from imagegate.accounting.caller import Caller

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# Stored states: the public ones, and "settling" (shown as running): the
# outcome is stored and its settlement is being written.
FINAL: tuple[str, ...] = ("succeeded", "failed", "cancelled")
ACTIVE: tuple[str, ...] = ("running", "settling")
JOB_PATH = "/v1/images/jobs"


@dataclass(frozen=True, slots=True)
class JobView:
    """One job as the API shows it. ``result`` is the ``ImagesResponse`` as
    JSON bytes (its hosted URLs as stored: the API issues them afresh),
    ``error`` the OpenAI error envelope of a failed or cancelled job."""

    id: str
    status: JobStatus
    created_at: int
    model: str
    endpoint: str
    status_url: str
    reserved_usd: str
    started_at: int | None = None
    finished_at: int | None = None
    cost_usd: str | None = None
    result: bytes | None = None
    error: dict[str, Any] | None = None
    status_code: int | None = None
    cancel_requested: bool = False
    webhook: dict[str, Any] | None = None
    # Not rendered: who owns it, for listeners that act on the owner's behalf.
    key_id: str | None = None
    team: str | None = None
    webhook_url: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def to_dict(self) -> dict[str, Any]:
        """The job object without ``result`` (which stays bytes: see :meth:`to_json`)."""
        doc: dict[str, Any] = {
            "id": self.id,
            "object": "image.job",
            "status": self.status,
            "created_at": self.created_at,
            "model": self.model,
            "endpoint": self.endpoint,
            "status_url": self.status_url,
            "reserved_usd": self.reserved_usd,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        if self.cancel_requested and not self.final:
            doc["cancel_requested"] = True
        if self.cost_usd is not None:
            doc["cost_usd"] = self.cost_usd
        if self.error is not None:
            doc["error"] = self.error.get("error", self.error)
            doc["status_code"] = self.status_code
        if self.webhook is not None:
            doc["webhook"] = self.webhook
        return doc

    def to_json(self, result: bytes | None = None) -> bytes:
        """The job object as JSON; ``result`` (default: the stored one) goes
        in as it is, without parsing its megabytes of base64."""
        doc = self.to_dict()
        body = self.result if result is None else result
        if body is not None and self.status == "succeeded":
            doc["result"] = orjson.Fragment(body)
        return orjson.dumps(doc)


class JobFinishedListener(Protocol):
    """Called once a job has reached a final state (succeeded, failed,
    cancelled), after that state is committed, by the process that committed
    it. A crash between the commit and the call loses the call: a listener
    that must not miss one keeps its own durable state (the job's ``webhook``
    column) and sweeps for finished jobs it has not handled. The job's
    ``result`` is loaded only when it has a ``webhook_url`` (None otherwise:
    a listener never needs the images of a job with no webhook)."""

    async def __call__(self, job: JobView) -> None: ...


class WebhookUrlCheck(Protocol):
    """The webhook URL a job will carry: ``url`` is the request's
    ``Imagegate-Webhook-Url`` header (None when absent; the check may answer
    the key's own URL then). Raises an InvalidRequestError naming the header
    for a URL it refuses."""

    async def __call__(self, url: str | None, caller: Caller) -> str | None: ...
