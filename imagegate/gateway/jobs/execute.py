"""One claimed job, run to its end and settled exactly once.

The order, each step committed before the next:

1. ``upstream_started = true`` (fenced by the lease), then the run: the same
   path as a synchronous call (``RequestRunner.execute``: routing, retries,
   fallbacks, checks, shaping, hosting) with the job's stored admission.
   A job taken over with ``upstream_started`` already true is not run again
   (the upstream may have done, and billed, the work): it fails
   ``job_interrupted`` and is charged nothing.
2. The outcome (what to charge, the final state, the result or the error)
   is stored with the state ``settling``.
3. The settlement (charge, release of the reservation, usage row) with the
   settlement id ``job:<id>``: a second one, after a takeover, raises the
   usage table's unique constraint and charges nothing again.
4. The final state, with the cost; the inputs are deleted; listeners hear of it.

A takeover that finds ``settling`` repeats 3 and 4.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from imagegate.accounting.service import Accounting, Admission, Outcome, outcome_of_error
from imagegate.contract.catalog import ModelSpec
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment
from imagegate.contract.validate import retarget
from imagegate.db.engine import Database
from imagegate.errors import ImagegateError, NotFoundError, UpstreamError, UpstreamTimeoutError
from imagegate.gateway.jobs import codec, store
from imagegate.gateway.jobs.batching import GroupCommit
from imagegate.gateway.jobs.store import Claimed
from imagegate.gateway.rendering import json_body
from imagegate.gateway.routes import Route
from imagegate.gateway.runner import RequestRunner

log = logging.getLogger("imagegate.jobs")


def settlement_id(job_id: str) -> str:
    return f"job:{job_id}"


def interrupted() -> ImagegateError:
    return UpstreamError(
        "The server running this job stopped while the upstream was working on it. It was not retried, so it "
        "cannot be billed twice; nothing was charged. Submit it again.",
        code="job_interrupted",
    )


def expired(max_queue_seconds: float) -> ImagegateError:
    return UpstreamTimeoutError(
        f"The job waited longer than {max_queue_seconds:g} s (jobs.max_queue_seconds) for a worker and was not run; "
        "nothing was charged.",
        code="job_expired",
    )


def cancelled() -> ImagegateError:
    return ImagegateError("The job was cancelled; nothing was charged.", code="job_cancelled", status=499,
                          type="invalid_request_error")  # fmt: skip


class JobExecutor:
    def __init__(
        self,
        db: Database,
        runner: RequestRunner,
        accounting: Accounting,
        routes: Mapping[str, Route],
        me: str,
        lease_seconds: float,
        max_queue_seconds: float,
        finished: Callable[[str], Awaitable[None]],
    ) -> None:
        self.db = db
        self.runner = runner
        self.accounting = accounting
        self.routes = routes
        self.me = me
        self.lease_seconds = lease_seconds
        self.max_queue_seconds = max_queue_seconds
        self.finished = finished  # told the id of each job this process finished
        self.cancel_reasons: dict[str, str] = {}  # job id -> why its task is cancelled: cancel | lost | shutdown
        self._ending: set[asyncio.Future[None]] = set()
        # Jobs claimed together start together: their upstream_started in one UPDATE.
        self._starts: GroupCommit[str, bool] = GroupCommit(self._mark_started)

    async def _mark_started(self, job_ids: list[str]) -> list[bool | Exception]:
        marked = await store.mark_started(self.db, job_ids, self.me)
        return [job_id in marked for job_id in job_ids]

    def spec_of(self, model: str) -> ModelSpec:
        route = self.routes.get(model)
        if route is None:
            raise NotFoundError(f"The model '{model}' is no longer served here.", param="model", code="model_not_found")
        return route.rules

    async def request_of(self, job_id: str, stored: dict[str, Any]) -> ImageRequest:
        async with self.db.read() as session:
            inputs = await store.inputs(session, job_id)
        return codec.decode_request(stored, inputs, self.spec_of)

    # -- a claimed job ---------------------------------------------------------------

    async def run(self, job: Claimed) -> None:
        if job.status == "settling":  # taken over after its outcome was stored
            await self._shielded(self.settle(job.id))
            return
        if job.cancel_requested:  # asked while its previous server ran it: not run (again)
            error = cancelled()
            await self._shielded(self._end(job.id, "running", "cancelled", outcome_of_error(error), error=error))
            return
        if job.upstream_started:  # taken over: the upstream may have done it
            log.warning("job %s: its server stopped while the upstream worked on it; failed, not run again", job.id)
            await self._shielded(self._end(job.id, "running", "failed", outcome_of_error(interrupted()), error=interrupted()))
            return
        if job.queue_expired:  # by the database's clock (store.claim)
            error = expired(self.max_queue_seconds)
            await self._shielded(self._end(job.id, "running", "failed", outcome_of_error(error), error=error))
            return
        await self._run(job)

    async def _run(self, job: Claimed) -> None:
        admission: Admission | None = None
        try:
            request = await self.request_of(job.id, job.request)
            caller = codec.decode_caller(job.caller)
            legs = await self.runner.legs(request, caller)
            first = legs[0].pool.slots[0].deployment
            admission = Admission(caller, request, first, job.request_id, job.reserved_nusd,
                                  reservation_id=job.reservation_id, settlement_id=settlement_id(job.id))  # fmt: skip
            if not await self._starts.submit(job.id):
                log.warning("job %s: lost its lease before it started; left to its new owner", job.id)
                return
            done = await self.runner.execute(legs, admission, job.base_url)
        except asyncio.CancelledError:
            if self.cancel_reasons.get(job.id) != "cancel":
                raise  # a stop or a lost lease: the job stays as it is, for its next owner
            error = cancelled()
            await self._shielded(self._end(job.id, "running", "cancelled", outcome_of_error(error), error=error))
            return
        except ImagegateError as exc:
            await self._shielded(self._end(job.id, "running", "failed", outcome_of_error(exc), error=exc))
            return
        except Exception:
            log.exception("job %s failed", job.id)
            error = ImagegateError("The server had an error while running the job.", code="internal_error")
            await self._shielded(
                self._end(job.id, "running", "failed", Outcome(status=500, error_code="internal_error"), error=error)
            )
            return
        headers = done.served.headers()
        if done.served.resized:
            headers["x-imagegate-resized"] = ", ".join(done.served.resized)
        stored = codec.encode_outcome(done.outcome, "succeeded", admission.request, admission.deployment)
        await self._shielded(self._store_and_settle(job.id, "running", stored, result=json_body(done.response),
                                                    result_headers=headers))  # fmt: skip

    async def _shielded(self, work: Awaitable[None]) -> None:
        """Finishing a job is never cut half-way by a cancellation; a stop waits for it (:meth:`drain`)."""
        future = asyncio.ensure_future(work)
        self._ending.add(future)
        future.add_done_callback(self._ending.discard)
        await asyncio.shield(future)

    async def drain(self) -> None:
        await self._starts.aclose()
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)

    async def _end(self, job_id: str, expect: str, final: str, outcome: Outcome, *, error: ImagegateError) -> None:
        stored = codec.encode_outcome(outcome, final, None, None)
        await self._store_and_settle(job_id, expect, stored, error=error.envelope(), status_code=error.status,
                                     result_headers=error.headers or None)  # fmt: skip

    async def _store_and_settle(self, job_id: str, expect: str, outcome: dict[str, Any], **values: Any) -> None:
        if not await store.to_settling(self.db, job_id, self.me, expect, self.lease_seconds, outcome=outcome, **values):
            log.warning("job %s: no longer %s here (taken over or cancelled); its outcome was not stored", job_id, expect)
            return
        await self.settle(job_id)

    async def end_queued(self, job_id: str, final: str, error: ImagegateError) -> bool:
        """A queued job that will not run (cancelled, expired): settled (its
        reservation released) and ended here. False when it was no longer queued."""
        stored = codec.encode_outcome(outcome_of_error(error), final, None, None)
        taken = await store.to_settling(self.db, job_id, self.me, "queued", self.lease_seconds, outcome=stored,
                                        error=error.envelope(), status_code=error.status)  # fmt: skip
        if taken:
            await self._shielded(self.settle(job_id))
        return taken

    async def settle(self, job_id: str) -> None:
        """Settle a job in ``settling`` held by this process (once: ``job:<id>``), then end it."""
        async with self.db.read() as session:
            row = await store.get(session, job_id, with_result=False)
            inputs = await store.inputs(session, job_id)
        if row is None or row.status != "settling" or row.lease_owner != self.me or row.outcome is None:
            return
        final, outcome, served_model, deployment = codec.decode_outcome(row.outcome)
        caller = codec.decode_caller(row.caller)
        try:
            request = codec.decode_request(row.request, inputs, self.spec_of)
        except ImagegateError as exc:  # its model left the config: nothing to price it by
            log.error("job %s cannot be priced (%s); ended uncharged, its reservation released at its expiry", job_id, exc)
            if await store.finish(self.db, job_id, self.me, final, 0):
                await self.finished(job_id)
            return
        if served_model is not None and served_model != request.model and served_model in self.routes:
            request = retarget(request, served_model, self.routes[served_model].rules) or request  # a fallback served it
        deployment = deployment or Deployment(provider="", model="")
        admission = Admission(caller, request, deployment, row.request_id, row.reserved_nusd,
                              reservation_id=row.reservation_id, settlement_id=settlement_id(job_id))  # fmt: skip
        cost = await self.accounting.settle(admission, outcome)
        if await store.finish(self.db, job_id, self.me, final, cost):
            await self.finished(job_id)
        else:
            log.warning("job %s: settled, but another server ended it first", job_id)
