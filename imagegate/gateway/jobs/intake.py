"""Group commit for job submissions: a burst accepted in few transactions.

Accepting a job is one transaction (the caller's caps checked, its worst
case reserved, the job and its inputs inserted) and the 202 follows its
commit. A burst of submissions accepted one transaction each queues on the
database: SQLite has one writer, and every transaction pays a fixed cost
(begin, commit, each statement's trip to the driver). So submissions that
arrive while a transaction is being written wait for the next one, which
accepts all of them at once (up to ``MAX_BATCH``):

* each caller's lock taken once (PostgreSQL: in a fixed order) and its
  load counted once; the caps are then checked job by job, in arrival
  order, counting the jobs admitted before it, as one transaction per job
  would;
* the budget rows of every caller locked in the order every reservation
  and settlement takes them (keys, then teams, each sorted), so a batch
  touching several keys and teams never deadlocks with them or with
  another replica's batch; then each caller's budgets asked once, for the
  sum of its jobs' worst cases (one conditional UPDATE), and one
  reservation row per job;
* the jobs and their inputs inserted with one statement each (executemany).

Every submission gets exactly the answer it would have had alone. A caller
whose budgets refuse the sum of several jobs (some may fit, and the caps
counted them all) has every one of its submissions of the batch accepted
one transaction each after it, in arrival order; the other callers' jobs
are unaffected. A duplicate Idempotency-Key (the insert fails; which one
is not known), or PostgreSQL choosing the batch as a deadlock's victim,
rolls the batch back and each submission is accepted alone. Nothing is
written outside a transaction that commits or rolls back as a whole: a
failure leaves nothing reserved and no job half made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.accounting.caller import Caller
from imagegate.accounting.service import Accounting, Admission, BudgetRefused
from imagegate.db.engine import Database, is_deadlock
from imagegate.db.models import utcnow
from imagegate.gateway.jobs import store
from imagegate.gateway.jobs.batching import GroupCommit

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


class Intake:
    """Accepts submissions in batches; see the module's docstring."""

    def __init__(self, db: Database, accounting: Accounting, check_caps: CheckCaps) -> None:
        self.db = db
        self.accounting = accounting
        self.check_caps = check_caps
        self._batches: GroupCommit[Submission, None] = GroupCommit(self._write, MAX_BATCH)

    async def accept(self, submission: Submission) -> None:
        """Accept ``submission`` (its row then holds its reservation); raises
        what refused it: a cap's ``RateLimitError``, :class:`BudgetRefused`,
        ``IntegrityError`` (its Idempotency-Key was taken meanwhile), or the
        database's error. Cancelling the caller does not cancel the write."""
        await self._batches.submit(submission)

    async def aclose(self) -> None:
        await self._batches.aclose()

    async def _write(self, batch: list[Submission]) -> list[Exception | None]:
        try:
            outcomes, alone = await self._transaction(batch)
        except Exception as exc:  # rolled back: nothing was written
            redo = isinstance(exc, IntegrityError) or is_deadlock(exc)
            if len(batch) == 1 or not redo:
                raise
            # A duplicate Idempotency-Key (which one is not known), or
            # PostgreSQL's deadlock detector chose this transaction: each alone.
            outcomes, alone = [None] * len(batch), batch
        place = {id(submission): n for n, submission in enumerate(batch)}
        for submission in alone:
            try:
                (outcomes[place[id(submission)]],) = await self._write([submission])
            except Exception as exc:
                outcomes[place[id(submission)]] = exc
        return outcomes

    async def _transaction(self, batch: list[Submission]) -> tuple[list[Exception | None], list[Submission]]:
        """Accept ``batch`` in one transaction. Returns, for each submission,
        None (accepted) or what refused it (a cap, a budget), and the
        submissions to accept alone, each in a transaction of its own (every
        one of a caller whose budgets refused the sum of several)."""
        outcomes: list[Exception | None] = [None] * len(batch)
        callers: dict[str, list[int]] = {}  # scope -> its submissions' places, in arrival order
        for n, submission in enumerate(batch):
            callers.setdefault(submission.row["scope"], []).append(n)
        async with self.db.transaction() as session:
            load: dict[str, tuple[int, int]] = {}
            for scope in sorted(callers):  # in a fixed order: replicas' batches never wait on each other in a circle
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
            budgeted = [batch[n].admission.caller for n, o in enumerate(outcomes) if o is None and batch[n].wanted is not None]
            await self.accounting.lock_budgets(session, budgeted)
            alone: list[Submission] = []
            for places in callers.values():
                admitted = [batch[n] for n in places if outcomes[n] is None]
                changed = len({_budget_of(s.admission.caller) for s in admitted if s.wanted is not None}) > 1
                refused = None if changed else await self._reserve(session, admitted)
                if refused is not None and len(places) == 1:
                    outcomes[places[0]] = refused
                elif refused is not None or changed:  # some may fit (and change what the caps said), or its key changed
                    alone.extend(batch[n] for n in places)
                    for n in places:
                        outcomes[n] = None
            later = set(alone)
            await store.insert_many(session, [(s.row, s.inputs) for s, o in zip(batch, outcomes, strict=True)
                                              if o is None and s not in later])  # fmt: skip
        return outcomes, alone

    async def _reserve(self, session: AsyncSession, admitted: list[Submission]) -> BudgetRefused | None:
        """One caller's admitted submissions: its budgets asked once, for the
        sum of their worst cases, and a row per submission, owned by its job.
        The refusal (nothing changed), if its budgets said no."""
        wanting = [s for s in admitted if s.wanted is not None]
        if not wanting:
            return None
        caller = wanting[0].admission.caller  # they all read the key the same way (its id, period and team)
        holds = [(s.wanted or 0, s.admission.request_id, s.lives, s.row["created_at"], f"job:{s.row['id']}") for s in wanting]
        try:
            held = await self.accounting.reserve_in(session, caller, holds, utcnow())
        except BudgetRefused as no:
            return no
        for submission, one in zip(wanting, held, strict=True):
            submission.row["reservation_id"], submission.row["reserved_nusd"] = one.id, one.amount
        return None


def _budget_of(caller: Caller) -> tuple[str | None, str, str | None]:
    """What a reservation is made on: the key, its budget period and team (as its request read them)."""
    return caller.key_id, caller.budget_period, caller.team
