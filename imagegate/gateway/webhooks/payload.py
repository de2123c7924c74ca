"""What a webhook's body holds: the Standard Webhooks envelope around the job object.

    {"type": "image.job.succeeded", "timestamp": "2026-12-01T10:00:00.123456Z", "data": {<the job object>}}

(the spec's recommended payload structure: type, timestamp, data;
https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md#payload-structure).
``data`` is what ``GET /v1/images/jobs/{id}`` answered when the job
finished, without its ``webhook`` field (the delivery itself) and without
image bytes: each ``b64_json`` in ``result.data`` is left out and
``result.note`` says so; the client GETs the job (``status_url``) for them.
Hosted image URLs stay, as issued when the job finished (valid for
``storage.url_ttl_seconds``). The spec asks for small payloads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from imagegate.gateway.jobs.view import JobView

EVENTS = {"succeeded": "image.job.succeeded", "failed": "image.job.failed", "cancelled": "image.job.cancelled"}
B64_NOTE = "The images' b64_json is not sent in webhooks: GET the job at status_url for them."


def event_type(job: JobView) -> str | None:
    """The event a finished job's webhook carries (None: it is not finished)."""
    return EVENTS.get(job.status)


def _result(body: bytes) -> Any:
    doc = orjson.loads(body)
    if not isinstance(doc, dict):
        return {"note": B64_NOTE}
    items = doc.get("data")
    if isinstance(items, list) and any(isinstance(i, dict) and "b64_json" in i for i in items):
        doc["data"] = [{k: v for k, v in i.items() if k != "b64_json"} if isinstance(i, dict) else i for i in items]
        doc["note"] = B64_NOTE
    return doc


def job_payload(job: JobView, at: datetime | None = None) -> bytes:
    """The body of ``job``'s webhook, exactly as it is signed and sent."""
    event = event_type(job)
    if event is None:
        raise ValueError(f"job {job.id} is not finished ({job.status})")
    data = job.to_dict()
    data.pop("webhook", None)
    if job.result is not None and job.status == "succeeded":
        data["result"] = _result(job.result)
    stamp = (at or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")
    return orjson.dumps({"type": event, "timestamp": stamp, "data": data})
