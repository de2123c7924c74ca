"""Usage records: one row per request, and sums by key, team, model and day."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Date, cast, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.accounting.money import usd_str
from imagegate.db.models import UsageRecord

log = logging.getLogger("imagegate.accounting")

GROUPS = ("key", "team", "model", "day", "provider", "endpoint")


def _columns(dialect: str) -> dict[str, Any]:
    day = func.date(UsageRecord.created_at) if dialect == "sqlite" else cast(UsageRecord.created_at, Date)
    return {
        "key": UsageRecord.key_id,
        "team": UsageRecord.team,
        "model": UsageRecord.model,
        "day": day,
        "provider": UsageRecord.provider,
        "endpoint": UsageRecord.endpoint,
    }


async def summarize(
    session: AsyncSession,
    group_by: Sequence[str] = ("key", "model", "day"),
    since: datetime | None = None,
    until: datetime | None = None,
    key_id: str | None = None,
) -> list[dict[str, Any]]:
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise ValueError(f"cannot group by {unknown[0]!r} (choose from {', '.join(GROUPS)})")
    columns = _columns(session.get_bind().dialect.name)
    keys = [columns[g].label(g) for g in group_by]
    ok = UsageRecord.status < 400
    query = (
        select(
            *keys,
            func.count().label("requests"),
            func.sum(func.coalesce(UsageRecord.n, 0)).label("images"),  # delivered: a failed stream's too
            func.count().filter(~ok).label("errors"),
            func.coalesce(func.sum(UsageRecord.cost_nusd), 0).label("cost_nusd"),
            func.sum(func.coalesce(UsageRecord.input_text_tokens, 0) + func.coalesce(UsageRecord.input_image_tokens, 0)).label(
                "input_tokens"
            ),
            func.sum(func.coalesce(UsageRecord.output_tokens, 0)).label("output_tokens"),
        )
        .group_by(*keys)
        .order_by(*keys)
    )
    if since is not None:
        query = query.where(UsageRecord.created_at >= since)
    if until is not None:
        query = query.where(UsageRecord.created_at < until)
    if key_id is not None:
        query = query.where(UsageRecord.key_id == key_id)
    rows = []
    for row in (await session.execute(query)).mappings():
        item: dict[str, Any] = {g: (str(row[g]) if row[g] is not None else None) for g in group_by}
        item.update(
            requests=int(row["requests"]),
            images=int(row["images"] or 0),
            errors=int(row["errors"]),
            input_tokens=int(row["input_tokens"] or 0),
            output_tokens=int(row["output_tokens"] or 0),
            cost_usd=usd_str(int(row["cost_nusd"])),
        )
        rows.append(item)
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no usage)"
    headers = list(rows[0])
    cells = [[("" if r[h] is None else str(r[h])) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


class UsageWriter:
    """Writes usage rows for callers without a budget in batches, in the
    background: one multi-row INSERT at most every ``interval`` seconds
    instead of a transaction per request. Rows of budgeted keys are written
    with their settlement instead, in the same transaction.

    ``flush()`` writes what is pending now (before any in-process usage query,
    and at shutdown); a crash can lose at most ``interval`` seconds of rows.
    """

    def __init__(self, db: Any, interval: float = 0.25, max_pending: int = 10_000) -> None:
        self._db = db
        self._interval = interval
        self._max_pending = max_pending
        self._pending: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._early: set[asyncio.Task[None]] = set()  # flushes started by a full buffer, kept alive

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="imagegate-usage-writer")

    def add(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        if len(self._pending) >= self._max_pending:
            task = asyncio.get_running_loop().create_task(self.flush())
            self._early.add(task)
            task.add_done_callback(self._early.discard)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:  # keep the rows and try again on the next turn
                log.exception("writing usage rows failed; will retry")

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                async with self._db.transaction() as session:
                    await session.execute(insert(UsageRecord), batch)
            except Exception:
                self._pending[:0] = batch
                raise

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
