"""The administrator's operations, one place for the admin API and the CLI.

``/admin`` (``api/admin.py``) and the ``keys``/``teams``/``usage``/
``virtual-keys`` commands (``cli_admin.py``) both call an :class:`Admin`:
each method opens its own database session (a transaction when it writes),
does one operation and returns what the admin sees of it: plain dicts, the
views of :func:`keys.key_view`, :func:`keys.team_view` and
:func:`vault.view`, never a secret except a new key's, once. Failures are
``imagegate`` errors (``errors.py``), which the API answers as OpenAI
envelopes and the CLI prints.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from imagegate.accounting import keys, reservations, usage, webhook_keys
from imagegate.accounting.money import usd_str
from imagegate.accounting.reprice import PriceOf, Report, reprice
from imagegate.accounting.vault import Change, Vault, view
from imagegate.db.engine import Database
from imagegate.errors import InvalidRequestError

View = dict[str, Any]


class Admin:
    """Keys, teams, reservations, usage and virtual keys of one database.

    ``models``/``providers``: the names a key's models and a virtual key's
    provider must be among (None: not checked). ``flush_usage``: writes
    usage rows still waiting for their batch, so a summary includes them
    (a server's :meth:`Accounting.flush_usage`; a CLI process has none).
    ``check_webhook_url``: refuses a key's webhook URL that may not be used
    (gateway/webhooks/urls.py: a 400 naming ``webhook_url``) and gives it as
    it will be used; without it, webhook URLs cannot be set.
    ``keys_changed``: told once a key or team changed (a server forgets the
    keys it authenticated lately: accounting/keycache.py).
    """

    def __init__(
        self,
        db: Database,
        vault: Vault,
        *,
        models: Collection[str] | None = None,
        providers: Collection[str] | None = None,
        flush_usage: Callable[[], Awaitable[None]] | None = None,
        check_webhook_url: Callable[[str], Awaitable[str]] | None = None,
        keys_changed: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.vault = vault
        self._models = models
        self._providers = providers
        self._flush_usage = flush_usage
        self._check_webhook_url = check_webhook_url
        self._keys_changed = keys_changed or (lambda: None)

    def _check_models(self, models: list[str] | None) -> None:
        if self._models is None:
            return
        unknown = [m for m in models or [] if m not in self._models]
        if unknown:
            raise InvalidRequestError(f"Unknown model {unknown[0]!r}.", param="models", code="model_not_found")

    # -- keys ------------------------------------------------------------------

    async def _webhook_spec(self, spec: keys.KeySpec) -> keys.KeySpec:
        """``spec`` with its webhook URL checked (before any transaction: the check resolves the host)."""
        if spec.webhook_url is None:
            return spec
        if self._check_webhook_url is None:
            raise InvalidRequestError("Webhook URLs cannot be set here.", param="webhook_url")
        return replace(spec, webhook_url=await self._check_webhook_url(spec.webhook_url))

    async def create_key(self, spec: keys.KeySpec) -> View:
        """A new key's view with its secret (``key``): the only time it is
        shown; with a webhook URL, its webhook secret (``webhook_secret``) too."""
        self._check_models(spec.models)
        spec = await self._webhook_spec(spec)
        async with self.db.transaction() as session:
            key, secret = await keys.create_key(session, spec)
            shown = {"key": secret}
            if spec.webhook_url is not None:
                shown["webhook_secret"] = webhook_keys.give_secret(key, self.vault)
                await session.flush()
            return {**keys.key_view(key), **shown}

    async def list_keys(self, team: str | None = None) -> list[View]:
        async with self.db.read() as session:
            return [keys.key_view(k) for k in await keys.list_keys(session, team)]

    async def show_key(self, ref: str) -> View:
        """By id (key_...) or shown prefix (ig-...)."""
        async with self.db.read() as session:
            return keys.key_view(await keys.get_key(session, ref))

    async def update_key(self, ref: str, spec: keys.KeySpec, clear: Collection[str] = ()) -> View:
        """Apply the fields ``spec`` gives; names in ``clear`` are set to none (no limit)."""
        self._check_models(spec.models)
        spec = await self._webhook_spec(spec)
        async with self.db.transaction() as session:
            key = await keys.update_key(session, ref, spec, clear=set(clear))
            view = keys.key_view(key)
            if spec.webhook_url is not None and key.webhook_secret_encrypted is None:
                secret = webhook_keys.give_secret(key, self.vault)  # a first webhook URL: its secret, shown once
                await session.flush()
                view = {**keys.key_view(key), "webhook_secret": secret}
        self._keys_changed()
        return view

    async def rotate_webhook_secret(self, ref: str) -> View:
        """Give the key a new webhook secret (``webhook_secret``, shown this
        once); the old one stops signing at once."""
        async with self.db.transaction() as session:
            key = await keys.get_key(session, ref)
            secret = webhook_keys.give_secret(key, self.vault)
            await session.flush()
            view = {**keys.key_view(key), "webhook_secret": secret}
        self._keys_changed()
        return view

    async def revoke_key(self, ref: str) -> View:
        async with self.db.transaction() as session:
            view = keys.key_view(await keys.revoke_key(session, ref))
        self._keys_changed()
        return view

    # -- budget reservations ---------------------------------------------------

    async def list_reservations(self, key_ref: str | None = None) -> list[dict[str, object]]:
        """Reservations held by requests in flight (or left by a crash), of one key or all."""
        async with self.db.read() as session:
            key_id = (await keys.get_key(session, key_ref)).id if key_ref else None
            return await reservations.list_held(session, key_id)

    async def release_reservations(self, key_ref: str | None = None, *, expired_only: bool = False) -> View:
        """Give back reservations now (of one key, or of every key when None)."""
        async with self.db.transaction() as session:
            key_id = (await keys.get_key(session, key_ref)).id if key_ref else None
            count, total = await reservations.release_all(session, key_id, expired_only=expired_only)
        return {"released": count, "released_usd": usd_str(total)}

    # -- teams -----------------------------------------------------------------

    async def list_teams(self) -> list[View]:
        async with self.db.read() as session:
            return [keys.team_view(t) for t in await keys.list_teams(session)]

    async def update_team(
        self, name: str, budget_usd: float | None = None, period: str | None = None, *, clear_budget: bool = False
    ) -> View:
        """Create a team or change its budget."""
        async with self.db.transaction() as session:
            view = keys.team_view(await keys.update_team(session, name, budget_usd, period, clear_budget))
        self._keys_changed()
        return view

    # -- usage -----------------------------------------------------------------

    async def usage(
        self,
        group_by: Sequence[str],
        since: datetime | None = None,
        until: datetime | None = None,
        key_id: str | None = None,
    ) -> list[View]:
        """Requests, images, tokens and cost summed by ``group_by`` (see :data:`usage.GROUPS`)."""
        if self._flush_usage is not None:
            await self._flush_usage()
        try:
            async with self.db.read() as session:
                return await usage.summarize(session, group_by, since, until, key_id)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="group_by") from exc

    async def reprice(
        self,
        price_of: PriceOf,
        since: datetime,
        until: datetime | None = None,
        model: str | None = None,
        *,
        dry_run: bool = False,
    ) -> Report:
        """Cost usage rows again at today's prices (``accounting/reprice.py``)."""
        async with self.db.transaction() as session:
            return await reprice(session, price_of, since, until, model, dry_run=dry_run)

    # -- virtual keys ----------------------------------------------------------

    async def put_virtual_key(
        self, name: str, provider: str, secret: str, *, teams: list[str] | None = None, key_refs: list[str] | None = None
    ) -> View:
        """Store (or replace) a credential; owners not given stay as they are (none for a new one)."""
        if self._providers is not None and provider not in self._providers:
            raise InvalidRequestError(f"No provider named {provider!r}.", param="provider")
        async with self.db.transaction() as session:
            return view(await self.vault.put(session, name, provider, secret, teams=teams, key_refs=key_refs))

    async def change_virtual_key_owners(
        self, name: str, *, teams: list[str] | None = None, key_refs: list[str] | None = None, change: Change = "set"
    ) -> View:
        """Replace (``set``), add to (``grant``) or remove from (``revoke``) who may use it."""
        async with self.db.transaction() as session:
            return view(await self.vault.owners(session, name, teams=teams, key_refs=key_refs, change=change))

    async def list_virtual_keys(self) -> list[View]:
        async with self.db.read() as session:
            return [view(r) for r in await self.vault.names(session)]

    async def show_virtual_key(self, name: str) -> View:
        async with self.db.read() as session:
            return view(await self.vault.get(session, name))

    async def delete_virtual_key(self, name: str) -> View:
        async with self.db.transaction() as session:
            await self.vault.remove(session, name)
        return {"name": name, "deleted": True}
