"""What the API calls for jobs: submit, get, list, cancel; and the workers' lifecycle.

A job is accepted only once it is validated (as a synchronous call is),
authorised and admitted: its worst case is reserved on the caller's budget
before the 202. One transaction checks the caller's caps, reserves (the
reservation row owned by the job from the start, ``job:<id>``, expiring with
the job, so a replica's death never releases it: the job holds it until it
settles) and writes the job row and its inputs; the 202 follows its commit.

Visibility: a key sees its own jobs, an admin key with a team its team's,
the master key all; another's job is a 404 (never a 403).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, cast

import orjson
from sqlalchemy import ColumnElement, or_, true
from sqlalchemy.exc import IntegrityError

from imagegate.accounting.caller import Caller
from imagegate.accounting.idempotency import Conflict
from imagegate.accounting.money import usd_str
from imagegate.accounting.owner import this_process
from imagegate.accounting.service import Accounting, Admission, BudgetRefused, Outcome
from imagegate.config import Settings
from imagegate.contract.requests import ImageRequest
from imagegate.db.models import ImageJob, aware, utcnow
from imagegate.errors import GoneError, ImagegateError, InvalidRequestError, NotFoundError, RateLimitError
from imagegate.gateway.hosted import HostedFiles
from imagegate.gateway.jobs import codec, store
from imagegate.gateway.jobs.execute import JobExecutor, cancelled, expired
from imagegate.gateway.jobs.intake import Intake, Submission
from imagegate.gateway.jobs.view import FINAL, JOB_PATH, JobFinishedListener, JobStatus, JobView, WebhookUrlCheck
from imagegate.gateway.jobs.worker import JobWorkers
from imagegate.gateway.routes import Route
from imagegate.gateway.runner import RequestRunner

log = logging.getLogger("imagegate.jobs")
MB = 1024 * 1024
WEBHOOK_HEADER = "Imagegate-Webhook-Url"


class JobConflict(ImagegateError):
    status = 409
    type = "invalid_request_error"
    default_code = "job_not_cancellable"


def _ts(when: Any) -> int | None:
    return int(aware(when).timestamp()) if when is not None else None


class JobService:
    def __init__(
        self, settings: Settings, accounting: Accounting, runner: RequestRunner, routes: Mapping[str, Route], hosted: HostedFiles
    ) -> None:
        self.settings = settings
        self.config = settings.jobs
        self.accounting = accounting
        self.db = accounting.db
        self.runner = runner
        self.routes = routes
        self.hosted = hosted
        self.me = this_process()
        # Hooks for the webhooks package: listeners told of each finished job,
        # and the check of a request's Imagegate-Webhook-Url (None: refused).
        self.on_finished: list[JobFinishedListener] = []
        self.validate_webhook_url: WebhookUrlCheck | None = None
        self._listening: set[asyncio.Task[None]] = set()
        self.executor = JobExecutor(self.db, runner, accounting, routes, self.me, self.config.lease_seconds,
                                    self.config.max_queue_seconds, self._finished)  # fmt: skip
        self.workers = JobWorkers(self.db, self.executor, self.config, self.me)
        self.intake = Intake(self.db, accounting, self._check_caps)

    # -- the job object --------------------------------------------------------------

    def view(self, row: ImageJob, base_url: str | None = None) -> JobView:
        base = self.settings.server.public_url or base_url or row.base_url
        status = "running" if row.status == "settling" else row.status
        return JobView(
            id=row.id,
            status=cast(JobStatus, status),
            created_at=_ts(row.created_at) or 0,
            model=row.model,
            endpoint=row.endpoint,
            status_url=f"{base}{JOB_PATH}/{row.id}",
            reserved_usd=usd_str(row.reserved_nusd if row.status not in FINAL else 0),
            started_at=_ts(row.started_at),
            finished_at=_ts(row.finished_at),
            cost_usd=usd_str(row.cost_nusd) if row.cost_nusd is not None and row.status in FINAL else None,
            result=row.result if "result" in row.__dict__ else None,
            error=row.error if row.status in ("failed", "cancelled") else None,
            status_code=row.status_code if row.status in ("failed", "cancelled") else None,
            cancel_requested=row.cancel_requested,
            webhook=row.webhook,
            key_id=row.key_id,
            team=row.team,
            webhook_url=row.webhook_url,
        )

    def location(self, job_id: str) -> str:
        return f"{self.settings.server.public_url or ''}{JOB_PATH}/{job_id}"

    # -- submit ------------------------------------------------------------------------

    async def submit(
        self,
        request: ImageRequest,
        caller: Caller,
        request_id: str,
        *,
        base_url: str,
        idempotency_key: str | None = None,
        client: str = "",
        webhook_url: str | None = None,
    ) -> tuple[JobView, bool]:
        """Accept a job: (the job, whether it is an earlier job replayed for its Idempotency-Key)."""
        if request.stream:
            raise InvalidRequestError(
                "stream=true cannot be combined with Prefer: respond-async: a job has no stream. "
                "Poll the job, or send the request without respond-async.",
                param="stream",
                code="unsupported_parameter",
            )
        if self.validate_webhook_url is not None:
            webhook_url = await self.validate_webhook_url(webhook_url, caller)
        elif webhook_url is not None:
            raise InvalidRequestError("Webhooks are not enabled on this server.", param=WEBHOOK_HEADER)
        scope = caller.identity
        idem_scope = fingerprint = None
        if idempotency_key is not None:
            if not idempotency_key or len(idempotency_key) > 255:
                raise InvalidRequestError("Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key")
            idem_scope = scope if caller.kind != "anonymous" else f"anonymous:{client}"[:64]
            fingerprint = request.fingerprint(caller.virtual_key, "respond-async")
            earlier = await self._earlier(idem_scope, idempotency_key, fingerprint)
            if earlier is not None:
                return earlier, True
        inputs = codec.encode_inputs(request)
        admission, wanted = await self.runner.prepare(request, caller, request_id)
        now = utcnow()
        job_id = f"imgjob_{secrets.token_hex(12)}"
        deadline = self.routes[request.model].policy.deadline_seconds
        queue_until = now + timedelta(seconds=self.config.max_queue_seconds)
        row: dict[str, Any] = {
            "id": job_id, "scope": scope, "key_id": caller.key_id, "team": caller.team,
            "caller": codec.encode_caller(caller), "idempotency_scope": idem_scope, "idempotency_key": idempotency_key,
            "fingerprint": fingerprint, "endpoint": request.endpoint, "model": request.model,
            "request": codec.encode_request(request), "request_id": request_id[:128], "base_url": base_url[:1000],
            "status": "queued", "created_at": now, "queue_expires_at": queue_until, "attempts": 0,
            "upstream_started": False, "cancel_requested": False, "reservation_id": None,
            "reserved_nusd": 0, "webhook_url": webhook_url,
        }  # fmt: skip
        # The reservation lasts as long as the job may: queued, then run, then settled.
        lives = self.config.max_queue_seconds + deadline + self.config.lease_seconds
        accept = asyncio.ensure_future(self._accept(row, inputs, admission, wanted, lives))
        accepted = await asyncio.shield(accept)  # a client hanging up now does not cut the acceptance in two
        if accepted is None:  # the same Idempotency-Key, accepted a moment ago by another request
            assert idem_scope is not None and idempotency_key is not None and fingerprint is not None
            earlier = await self._earlier(idem_scope, idempotency_key, fingerprint)
            if earlier is None:  # recorded as a refusal; a replay records nothing, as one sent later
                await self.accounting.settle(admission, Outcome(status=409, error_code="job_not_accepted"))
                raise Conflict("A request with this Idempotency-Key is being accepted; retry.", param="Idempotency-Key",
                               code="idempotency_key_in_use")  # fmt: skip
            return earlier, True
        self.workers.wake()
        return accepted, False

    def _check_caps(self, queued: int, held: int, size: int) -> None:
        """The caller's queued jobs (``jobs.max_queued_per_key``) and the input
        bytes its unfinished jobs hold with this one's (``jobs.max_queued_mb_per_key``)."""
        if queued >= self.config.max_queued_per_key:
            raise RateLimitError(
                f"This key has {queued} queued jobs, the most it may have (jobs.max_queued_per_key); "
                "wait for some to start or cancel them.",
                retry_after=self.config.poll_seconds * 5,
                code="too_many_queued_jobs",
            )
        limit = self.config.max_queued_mb_per_key
        if held + size > limit * MB:
            raise RateLimitError(
                f"This key's unfinished jobs hold {held / MB:.2f} MB of input images; with this job's {size / MB:.2f} MB "
                f"that is more than the {limit:g} MB they may hold (jobs.max_queued_mb_per_key); "
                "wait for some to finish or cancel them.",
                retry_after=self.config.poll_seconds * 5,
                code="too_many_queued_jobs",
            )

    async def _accept(
        self, row: dict[str, Any], inputs: Any, admission: Admission, wanted: int | None, lives: float
    ) -> JobView | None:
        """Accept the job in ONE transaction (intake.py: shared with the
        submissions that arrived with it), under the caller's lock: its caps
        checked (concurrent submissions cannot all pass one count), its worst
        case reserved (``wanted``; the row owned by the job from the start,
        ``job:<id>``, expiring ``lives`` seconds after the job was made, plus
        the margin), the job and its inputs inserted. Any failure rolls all
        of it back: nothing is left reserved. The answer is built from the
        values written (no read back). None: the Idempotency-Key was taken."""
        try:
            await self.intake.accept(Submission(row, inputs, admission, wanted, lives))
        except BudgetRefused as no:
            raise await self.accounting.refused(admission, no) from None
        except RateLimitError as exc:  # a cap: recorded as a refusal (nothing was reserved)
            await self.accounting.settle(admission, Outcome(status=429, error_code=exc.code))
            raise
        except IntegrityError:  # the Idempotency-Key, taken meanwhile: a replay (nothing was reserved)
            return None
        return self._new_view(row)

    def _new_view(self, row: dict[str, Any]) -> JobView:
        """The 202's job object from the values just committed (what :meth:`view` of the row would give)."""
        return JobView(
            id=row["id"],
            status="queued",
            created_at=_ts(row["created_at"]) or 0,
            model=row["model"],
            endpoint=row["endpoint"],
            status_url=f"{self.settings.server.public_url or row['base_url']}{JOB_PATH}/{row['id']}",
            reserved_usd=usd_str(row["reserved_nusd"]),
            key_id=row["key_id"],
            team=row["team"],
            webhook_url=row["webhook_url"],
        )

    async def _earlier(self, scope: str, key: str, fingerprint: str) -> JobView | None:
        async with self.db.read() as session:
            earlier = await store.find_idempotent(session, scope, key)
        if earlier is None:
            return None
        if earlier.fingerprint != fingerprint:
            raise Conflict("This Idempotency-Key was used with a different request body.", param="Idempotency-Key")
        return self.view(earlier)

    # -- read ------------------------------------------------------------------------------

    def _visible(self, caller: Caller) -> ColumnElement[bool]:
        if caller.kind == "master":
            return true()
        mine = ImageJob.scope == caller.identity
        if caller.kind == "key" and caller.is_admin and caller.team is not None:
            return or_(mine, ImageJob.team == caller.team)
        return mine

    async def _find(self, job_id: str, caller: Caller, *, with_result: bool) -> ImageJob:
        async with self.db.read() as session:
            row = await store.get(session, job_id, with_result=with_result)
            visible = row is not None and (
                caller.kind == "master"
                or row.scope == caller.identity
                or (caller.kind == "key" and caller.is_admin and caller.team is not None and row.team == caller.team)
            )
        if row is None or not visible:
            raise NotFoundError(f"No job with id '{job_id}'.", param="id", code="job_not_found")
        return row

    async def get(self, job_id: str, caller: Caller, base_url: str) -> bytes:
        """The job object as JSON; a succeeded job's hosted URLs issued afresh."""
        view = self.view(await self._find(job_id, caller, with_result=True), base_url)
        result = view.result
        if result is not None and view.status == "succeeded":
            try:
                result = await self.hosted.refresh_urls(result, base_url)
            except GoneError:
                raise GoneError("The images of this job are no longer stored.", param="id", code="job_result_expired") from None
        return view.to_json(result)

    async def list_jobs(self, caller: Caller, base_url: str, limit: int = 20, after: str | None = None) -> bytes:
        """The caller's jobs, newest first (OpenAI's list shape; no results: get each job for those)."""
        if not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be between 1 and 100.", param="limit")
        cursor = await self._find(after, caller, with_result=False) if after else None
        async with self.db.read() as session:
            rows = await store.page(session, self._visible(caller), limit, cursor)
        data = [self.view(row, base_url).to_dict() for row in rows[:limit]]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return orjson.dumps({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": len(rows) > limit})

    # -- cancel ----------------------------------------------------------------------------

    async def cancel(self, job_id: str, caller: Caller, base_url: str) -> JobView:
        """A queued job ends cancelled at once (its reservation released); a
        running one is asked to stop (its server cancels the upstream call)."""
        row = await self._find(job_id, caller, with_result=False)
        if row.status == "queued" and await self.executor.end_queued(job_id, "cancelled", cancelled()):
            return self.view(await self._find(job_id, caller, with_result=False), base_url)
        if await store.request_cancel(self.db, job_id):
            self.workers.cancel(job_id, "cancel")  # at once when it runs here; else its server's heartbeat does
            return self.view(await self._find(job_id, caller, with_result=False), base_url)
        row = await self._find(job_id, caller, with_result=False)
        if row.status in FINAL:
            raise JobConflict(f"The job has already {row.status}; only a queued or running job can be cancelled.", param="id")
        return await self.cancel(job_id, caller, base_url)  # it moved on in between (claimed): ask again

    # -- lifecycle ------------------------------------------------------------------------

    async def _finished(self, job_id: str) -> None:
        """A job this process ended: its listeners hear of it, in the background."""
        if not self.on_finished:
            return
        async with self.db.read() as session:  # its result (megabytes of b64) only for a job with a webhook
            row = await store.get(session, job_id, with_result=False)
            if row is not None and row.webhook_url is not None:
                await session.refresh(row, ["result"])
        if row is None:
            return
        view = self.view(row)
        for listener in self.on_finished:
            task = asyncio.ensure_future(self._tell(listener, view))
            self._listening.add(task)
            task.add_done_callback(self._listening.discard)

    async def _tell(self, listener: JobFinishedListener, view: JobView) -> None:
        try:
            await listener(view)
        except Exception:
            log.exception("a job listener failed for job %s", view.id)

    async def start(self) -> None:
        await self.workers.start()

    async def sweep(self) -> None:
        """Queued jobs past their queue time fail (uncharged); finished jobs
        older than the hosted images' lifetime are deleted."""
        for job_id in await store.overdue_queued(self.db):
            await self.executor.end_queued(job_id, "failed", expired(self.config.max_queue_seconds))
        await store.end_leases_of_gone_processes(self.db, self.me.rsplit(":", 2)[0])
        keep = timedelta(seconds=self.settings.storage.url_ttl_seconds)
        removed = await store.delete_finished(self.db, utcnow() - keep)
        if removed:
            log.info("deleted %d finished job(s) past their results' lifetime", removed)

    async def aclose(self) -> None:
        await self.intake.aclose()
        await self.workers.aclose()
        if self._listening:
            await asyncio.gather(*self._listening, return_exceptions=True)
