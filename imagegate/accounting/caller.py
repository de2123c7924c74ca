"""Who is calling: what authentication found out about a request's key.

Its own module, so that what only needs to know a caller (the vault's
ownership rule) does not import the accounting service.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    kind: str  # anonymous | static | master | key
    key_id: str | None = None
    team: str | None = None
    is_admin: bool = False
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    ipm: int | None = None
    virtual_key: str | None = None
    # Who this is, for scoping what callers must not share (idempotency
    # keys): "key:<id>", "static:<digest prefix>", "master" or "anonymous".
    identity: str = "anonymous"
    # A database key's budget period, and whether a budget may apply to it
    # (its own, or its team's): only then is a reservation held.
    budget_period: str = "total"
    budgeted: bool = False
    own_budget: bool = False  # the key itself has a budget (its team may have one too)
    # A database key's webhook (docs/webhooks.md), read with the key: where its
    # jobs' webhooks go by default, and whether it has a secret to sign them.
    webhook_url: str | None = None
    webhook_signed: bool = False

    def may_use(self, model: str) -> bool:
        """Whether the key's allowed models (None: all) include ``model``."""
        return self.models is None or model in self.models
