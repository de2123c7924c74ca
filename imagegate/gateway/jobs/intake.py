"""Group commit for job submissions: a burst accepted in few transactions.

Accepting a job is one transaction (the caller's caps checked, its worst
case reserved, the job and its inputs inserted) and the 202 follows its
commit. A burst of submissions accepted one transaction each queues on the
database: SQLite has one writer, and every transaction pays a fixed cost
(begin, commit, each statement's trip to the driver). So submissions that
arrive while a transaction is being written wait for the next one, which
accepts all of them at once (up to ``MAX_BATCH``):

* each caller's lock taken once (PostgreSQL: in a fixed order, so two
  replicas' batches never deadlock) and its load counted once; the caps are
  then checked job by job, in arrival order, counting the jobs admitted
  before it, exactly as one transaction per job would;
* each caller's budgets asked once, for the sum of its jobs' worst cases
  (one conditional UPDATE), then one reservation row per job;
* the jobs and their inputs inserted with one statement each (executemany).

A batch that cannot be accepted whole (a budget refuses the sum, an
Idempotency-Key is taken) is rolled back and its submissions accepted one
transaction each, so every one gets exactly the answer it would have had
alone. Nothing is written outside a transaction that commits or rolls
back as a whole: a failure leaves nothing reserved and no job half made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError

from imagegate.accounting.service import Accounting, Admission, BudgetRefused
from imagegate.db.engine import Database
from imagegate.db.models import utcnow
from imagegate.gateway.jobs import store

log = logging.getLogger("imagegate.jobs")
MAX_BATCH = 256  # submissions per transaction (bounds its statements' size and time)

CheckCaps = Callable[[int, int, int], None]  # (queued, held bytes, this job's bytes): raises a RateLimitError


@dataclass(eq=False)
class Submission:
    """A job to accept: its row (``reservation_id`` and ``reserved_nusd``
    are filled in when accepted), inputs, admission, the worst case to
    reserve (None: nothing) and how long the reservation must last."""

    row: dict[str, Any]
    inputs: store.Inputs
    admission: Admission
    wanted: int | None
    lives: float
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class _NotWhole(Exception):
    """The batch cannot be accepted as a whole: accept its submissions one by one."""


class Intake:
    """Accepts submissions in batches; see the module's docstring."""

    def __init__(self, db: Database, accounting: Accounting, check_caps: CheckCaps) -> None:
        self.db = db
        self.accounting = accounting
        self.check_caps = check_caps
        self._waiting: list[Submission] = []
        self._writer: asyncio.Task[None] | None = None

    async def accept(self, submission: Submission) -> None:
        """Accept ``submission`` (its row then holds its reservation); raises
        what refused it: a cap's ``RateLimitError``, :class:`BudgetRefused`,
        ``IntegrityError`` (its Idempotency-Key was taken meanwhile), or the
        database's error. Cancelling the caller does not cancel the write."""
        self._waiting.append(submission)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_all())
        await asyncio.shield(submission.done)

    async def aclose(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _write_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                await self._write(batch)
            except BaseException as exc:  # the database failed (or this task was cancelled): every one of them fails
                for submission in batch:
                    if not submission.done.done():
                        submission.done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("not accepted"))
                if not isinstance(exc, Exception):
                    raise

    async def _write(self, batch: list[Submission]) -> None:
        if len(batch) > 1:
            try:
                outcomes = await self._transaction(batch)
            except _NotWhole:
                for submission in batch:
                    await self._write([submission])
                return
        else:
            try:
                outcomes = await self._transaction(batch)
            except (BudgetRefused, IntegrityError) as exc:
                outcomes = [exc]
        for submission, outcome in zip(batch, outcomes, strict=True):
            if outcome is None:
                submission.done.set_result(None)
            else:
                submission.done.set_exception(outcome)

    async def _transaction(self, batch: list[Submission]) -> list[Exception | None]:
        """Accept ``batch`` in one transaction: for each submission None
        (accepted) or the cap that refused it. A refusal of the budget or
        the Idempotency-Key rolls it all back: raised as is for one
        submission, as :class:`_NotWhole` for several."""
        outcomes: list[Exception | None] = [None] * len(batch)
        try:
            async with self.db.transaction() as session:
                scopes = sorted({s.row["scope"] for s in batch})
                load: dict[str, tuple[int, int]] = {}
                for scope in scopes:  # in a fixed order: replicas' batches never wait on each other in a circle
                    await store.lock_scope(session, scope)
                    load[scope] = await store.load_of(session, scope)
                for n, submission in enumerate(batch):
                    scope, size = submission.row["scope"], store.input_size(submission.inputs)
                    queued, held = load[scope]
                    try:
                        self.check_caps(queued, held, size)
                    except Exception as refused:
                        outcomes[n] = refused
                        continue
                    load[scope] = (queued + 1, held + size)
                accepted = [s for s, outcome in zip(batch, outcomes, strict=True) if outcome is None]
                await self._reserve(session, accepted)
                await store.insert_many(session, [(s.row, s.inputs) for s in accepted])
        except (BudgetRefused, IntegrityError):
            if len(batch) > 1:
                raise _NotWhole from None
            raise
        return outcomes

    async def _reserve(self, session: Any, accepted: list[Submission]) -> None:
        """Each caller's budgets asked once, for the sum of its submissions'
        worst cases; a row per submission, owned by its job."""
        callers: dict[tuple[str | None, str, str | None], list[Submission]] = {}
        for submission in accepted:
            if submission.wanted is not None:
                caller = submission.admission.caller  # as its request read it: the same key, its period and team
                callers.setdefault((caller.key_id, caller.budget_period, caller.team), []).append(submission)
        now = utcnow()
        for group in callers.values():
            holds = [(s.wanted or 0, s.admission.request_id, s.lives, s.row["created_at"], f"job:{s.row['id']}") for s in group]
            held = await self.accounting.reserve_in(session, group[0].admission.caller, holds, now)
            for submission, one in zip(group, held, strict=True):
                submission.row["reservation_id"], submission.row["reserved_nusd"] = one.id, one.amount
