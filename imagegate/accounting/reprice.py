"""Cost usage rows again at the current prices (``imagegate usage reprice``).

A model served without a price is recorded at $0, with the usage its
upstream reported (tokens, images, size, quality). Once a price is added
(``pricing:`` in the config, or a newer shipped table), :func:`reprice`
recomputes ``cost_nusd`` (and ``cost_estimated``) of the successful rows in
a time window from what each row kept (:func:`prices.recompute`), and
reports what changed, by key and model.

It changes usage rows only, never a key's or team's ``spent``: budgets
hold what was charged when the requests ran (a later price is no reason to
refuse today's requests for last month's images, nor does a row say which
budget period it was charged to). The per-key differences are reported so
an administrator can act on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.accounting.money import usd_str
from imagegate.accounting.prices import Price, PriceBook, Recorded, price_names, recompute
from imagegate.accounting.usage import to_table
from imagegate.config import Settings
from imagegate.contract import catalog
from imagegate.contract.catalog import ModelSpec
from imagegate.db.models import UsageRecord

BATCH = 1000
PriceOf = Callable[[str, str | None], Price | None]  # (public model, upstream model) -> price


def price_lookup(settings: Settings, rules: Mapping[str, ModelSpec]) -> PriceOf:
    """Prices as the server finds them (``PriceBook``, by ``price_names``;
    ``rules``: each public model's rules as its route has them). A public
    model no longer configured is priced by its own and its upstream name."""

    book = PriceBook.build(catalog.effective(settings.catalog).entries(), settings.pricing)

    def price_of(public: str, upstream: str | None) -> Price | None:
        spec = rules.get(public)
        if spec is None:
            return book.find(upstream, public)
        return book.find(*price_names(public, upstream or public, spec))

    return price_of


@dataclass
class Group:
    """The changed rows of one key and model."""

    key_id: str | None
    team: str | None
    model: str
    rows: int = 0
    old_nusd: int = 0
    new_nusd: int = 0

    def view(self) -> dict[str, object]:
        return {
            "key": self.key_id,
            "team": self.team,
            "model": self.model,
            "rows": self.rows,
            "old_usd": usd_str(self.old_nusd),
            "new_usd": usd_str(self.new_nusd),
            "difference_usd": usd_str(self.new_nusd - self.old_nusd),
        }


@dataclass
class Report:
    examined: int = 0  # successful rows in the window (and model)
    changed: int = 0
    unpriced: dict[str, int] = field(default_factory=dict)  # model -> rows left at their cost: still no price
    groups: dict[tuple[str | None, str], Group] = field(default_factory=dict)
    written: bool = False

    @property
    def difference_nusd(self) -> int:
        return sum(g.new_nusd - g.old_nusd for g in self.groups.values())

    def view(self) -> dict[str, object]:
        return {
            "examined": self.examined,
            "changed": self.changed,
            "difference_usd": usd_str(self.difference_nusd),
            "written": self.written,
            "unpriced": dict(sorted(self.unpriced.items())),
            "by_key": self._by_key(),
        }

    def _by_key(self) -> list[dict[str, object]]:
        return [g.view() for g in sorted(self.groups.values(), key=lambda g: (g.key_id or "", g.model))]

    def text(self) -> str:
        view = self.view()
        verb = "changed" if self.written else "would change"
        lines = [f"{self.examined} successful request(s) examined; {verb} {self.changed}, "
                 f"difference {view['difference_usd']} USD"]  # fmt: skip
        lines += [f"still no price for model {m}: {n} row(s) left as recorded" for m, n in sorted(self.unpriced.items())]
        if self.groups:
            lines += [to_table(self._by_key()), "Keys' and teams' spent budgets are unchanged."]
        if not self.written:
            lines.append("(dry run: nothing written)")
        return "\n".join(lines)


def _recorded(row: UsageRecord) -> Recorded:
    return Recorded(
        images=row.n,
        quality=row.quality,
        size=row.size,
        input_text_tokens=row.input_text_tokens,
        input_image_tokens=row.input_image_tokens,
        input_cached_tokens=row.input_cached_tokens,
        output_tokens=row.output_tokens,
        output_image_tokens=row.output_image_tokens,
        output_text_tokens=row.output_text_tokens,
        estimated=row.cost_estimated,
    )


async def reprice(
    session: AsyncSession,
    price_of: PriceOf,
    since: datetime,
    until: datetime | None = None,
    model: str | None = None,
    *,
    dry_run: bool = False,
) -> Report:
    """Recompute the cost of the successful usage rows created in
    ``[since, until)`` (of ``model`` only, when given) with ``price_of``;
    write the changed ones unless ``dry_run``. Rows are read and written in
    batches of :data:`BATCH`, in the caller's transaction."""
    report = Report(written=not dry_run)
    charged = (UsageRecord.status < 400) | (UsageRecord.n > 0)  # a failed stream's delivered images were charged
    # A row charged what its upstream said it charged is exact already.
    query = select(UsageRecord).where(charged, UsageRecord.upstream_cost_nusd.is_(None), UsageRecord.created_at >= since)
    if until is not None:
        query = query.where(UsageRecord.created_at < until)
    if model is not None:
        query = query.where(UsageRecord.model == model)
    last_id = 0
    while True:
        batch = (await session.scalars(query.where(UsageRecord.id > last_id).order_by(UsageRecord.id).limit(BATCH))).all()
        if not batch:
            return report
        last_id = batch[-1].id
        updates = []
        for row in batch:
            report.examined += 1
            price = price_of(row.model, row.upstream_model)
            if price is None:
                report.unpriced[row.model] = report.unpriced.get(row.model, 0) + 1
                continue
            nusd, estimated = recompute(price, _recorded(row))
            if (nusd, estimated) == (row.cost_nusd, row.cost_estimated):
                continue
            report.changed += 1
            group = report.groups.setdefault((row.key_id, row.model), Group(row.key_id, row.team, row.model))
            group.rows += 1
            group.old_nusd += row.cost_nusd
            group.new_nusd += nusd
            updates.append({"id": row.id, "cost_nusd": nusd, "cost_estimated": estimated})
        session.expunge_all()  # rows are read once; keep the session small
        if updates and not dry_run:
            await session.execute(update(UsageRecord), updates)
