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

Every submission gets exactly the answer it would have had alone: a caller
whose budgets refuse the sum of several jobs (some may fit) has them
accepted one transaction each after the batch, the others' jobs unaffected;
a duplicate Idempotency-Key (the insert fails, which one is not known)
rolls the batch back and each is accepted alone. Nothing is written outside
a transaction that commits or rolls back as a whole: a failure leaves
nothing reserved and no job half made. (A caller's jobs sent alone were
counted by its caps' check in the batch: a later job of that same caller
in the batch may be refused a cap it would just have fitted under.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

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
        try:
            outcomes, alone = await self._transaction(batch)
        except IntegrityError as exc:  # a duplicate (an Idempotency-Key taken meanwhile): rolled back
            if len(batch) == 1:
                outcomes, alone = [exc], []
            else:  # which one is not known: each alone
                outcomes, alone = [None] * len(batch), batch
        for submission, outcome in zip(batch, outcomes, strict=True):
            if submission in alone:
                continue
            if outcome is None:
                submission.done.set_result(None)
            else:
                submission.done.set_exception(outcome)
        for submission in alone:
            await self._write([submission])

    async def _transaction(self, batch: list[Submission]) -> tuple[list[Exception | None], list[Submission]]:
        """Accept ``batch`` in one transaction. Returns, for each submission,
        None (accepted) or what refused it (a cap, a budget), and the
        submissions to accept alone, each in a transaction of its own: those
        of a caller whose budgets refused the sum of several."""
        outcomes: list[Exception | None] = [None] * len(batch)
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
                except Exception as cap:
                    outcomes[n] = cap
                    continue
                load[scope] = (queued + 1, held + size)
            accepted = [s for s, outcome in zip(batch, outcomes, strict=True) if outcome is None]
            refused, alone = await self._reserve(session, accepted)
            for n, submission in enumerate(batch):
                if submission in refused:
                    outcomes[n] = refused[submission]
            later = set(alone)
            await store.insert_many(session, [(s.row, s.inputs) for s in accepted if s not in refused and s not in later])
        return outcomes, alone

    async def _reserve(
        self, session: AsyncSession, accepted: list[Submission]
    ) -> tuple[dict[Submission, BudgetRefused], list[Submission]]:
        """Each caller's budgets asked once, for the sum of its submissions'
        worst cases; a row per submission, owned by its job. Returns the
        submissions refused (a caller with one), and those to accept alone (a
        caller whose budgets refused the sum of several: some may fit)."""
        callers: dict[tuple[str | None, str, str | None], list[Submission]] = {}
        for submission in accepted:
            if submission.wanted is not None:
                caller = submission.admission.caller  # as its request read it: the same key, its period and team
                callers.setdefault((caller.key_id, caller.budget_period, caller.team), []).append(submission)
        now = utcnow()
        refused: dict[Submission, BudgetRefused] = {}
        alone: list[Submission] = []
        for group in callers.values():
            holds = [(s.wanted or 0, s.admission.request_id, s.lives, s.row["created_at"], f"job:{s.row['id']}") for s in group]
            try:
                held = await self.accounting.reserve_in(session, group[0].admission.caller, holds, now)
            except BudgetRefused as no:  # nothing was changed
                if len(group) == 1:
                    refused[group[0]] = no
                else:
                    alone.extend(group)
                continue
            for submission, one in zip(group, held, strict=True):
                submission.row["reservation_id"], submission.row["reserved_nusd"] = one.id, one.amount
        return refused, alone
