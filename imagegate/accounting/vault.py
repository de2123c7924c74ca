"""Virtual keys: provider credentials encrypted at rest (Fernet, AES-128-CBC +
HMAC-SHA256), chosen per request by name so clients never hold them.

Each virtual key has owners: team names and database key ids. A caller may
use it when it is an admin (the master key or an admin key), when its key id
is an owner, or when its key's team is. A virtual key without owners is for
admins only, and static (config) keys and anonymous callers, which have no
identity to bind, may use none (fail closed). To a caller that may not use
it, a virtual key answers exactly as one that does not exist, so names
cannot be probed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.accounting import keys
from imagegate.accounting.caller import Caller
from imagegate.db.models import VirtualKey, utcnow
from imagegate.errors import ImagegateError, InvalidRequestError, NotFoundError

Change = Literal["set", "grant", "revoke"]


def new_encryption_key() -> str:
    return Fernet.generate_key().decode()


def usable_by(row: VirtualKey, caller: Caller) -> bool:
    if caller.is_admin:
        return True
    if caller.key_id is not None and caller.key_id in (row.owner_keys or []):
        return True
    return caller.team is not None and caller.team in (row.owner_teams or [])


def view(row: VirtualKey) -> dict[str, Any]:
    """What admins see of a virtual key: never its secret."""
    return {"name": row.name, "provider": row.provider, "teams": list(row.owner_teams or []), "keys": list(row.owner_keys or [])}


def _not_found(name: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(f"No virtual key named {name!r}.", param=param, code="virtual_key_not_found")


async def _key_ids(session: AsyncSession, refs: Iterable[str], *, strict: bool) -> list[str]:
    """Key ids from ids or shown prefixes (ig-...). ``strict``: an unknown one is a 400."""
    ids = []
    for ref in refs:
        try:
            ids.append((await keys.get_key(session, ref)).id)
        except ImagegateError as exc:
            if strict:
                raise InvalidRequestError(exc.message, param="keys", code="key_not_found") from None
            ids.append(ref)
    return ids


def _merge(current: list[str], given: list[str] | None, change: Change) -> list[str]:
    if given is None:
        return current
    if change == "set":
        return list(dict.fromkeys(given))
    if change == "grant":
        return list(dict.fromkeys([*current, *given]))
    return [x for x in current if x not in given]


class Vault:
    def __init__(self, encryption_key: str | None) -> None:
        self._fernet = Fernet(encryption_key.encode()) if encryption_key else None

    def _require(self, what: str = "Virtual keys", code: str = "virtual_keys_disabled") -> Fernet:
        if self._fernet is None:
            raise ImagegateError(f"{what} need auth.encryption_key in the configuration.", code=code, status=501)
        return self._fernet

    def seal(self, secret: str, what: str, code: str) -> str:
        """``secret`` encrypted for storage (another secret than a virtual
        key's: ``what`` and ``code`` name it when there is no encryption key)."""
        return self._require(what, code).encrypt(secret.encode()).decode()

    def unseal(self, token: str, what: str, code: str) -> str:
        """What :meth:`seal` sealed; an ImagegateError when it cannot be read."""
        try:
            return self._require(what, code).decrypt(token.encode()).decode()
        except InvalidToken:
            raise ImagegateError(f"{what} could not be decrypted: auth.encryption_key has changed.", code=code) from None

    async def put(
        self,
        session: AsyncSession,
        name: str,
        provider: str,
        secret: str,
        *,
        teams: list[str] | None = None,
        key_refs: list[str] | None = None,
    ) -> VirtualKey:
        """Store (or replace) a credential. Owners not given stay as they are
        (none for a new virtual key)."""
        token = self._require().encrypt(secret.encode()).decode()
        row = await session.get(VirtualKey, name)
        if row is None:
            row = VirtualKey(
                name=name, provider=provider, secret_encrypted=token, owner_teams=[], owner_keys=[], created_at=utcnow()
            )
            session.add(row)
        else:
            row.provider, row.secret_encrypted = provider, token
        await self._change(session, row, teams, key_refs, "set")
        return row

    async def owners(
        self,
        session: AsyncSession,
        name: str,
        *,
        teams: list[str] | None = None,
        key_refs: list[str] | None = None,
        change: Change = "set",
    ) -> VirtualKey:
        """Replace (``set``), add to (``grant``) or remove from (``revoke``) a
        virtual key's owners; a list not given stays as it is."""
        row = await session.get(VirtualKey, name)
        if row is None:
            raise _not_found(name)
        await self._change(session, row, teams, key_refs, change)
        return row

    async def _change(
        self, session: AsyncSession, row: VirtualKey, teams: list[str] | None, key_refs: list[str] | None, change: Change
    ) -> None:
        ids = None if key_refs is None else await _key_ids(session, key_refs, strict=change != "revoke")
        row.owner_teams = _merge(list(row.owner_teams or []), teams, change)
        row.owner_keys = _merge(list(row.owner_keys or []), ids, change)
        await session.flush()

    async def open(self, session: AsyncSession, name: str, caller: Caller) -> tuple[str, str]:
        """(provider name, secret) of a virtual key this caller may use; the
        same 404 whether it does not exist or is not the caller's."""
        row = await session.get(VirtualKey, name)
        if row is None or not usable_by(row, caller):
            raise _not_found(name, "x-portkey-virtual-key")
        try:
            return row.provider, self._require().decrypt(row.secret_encrypted.encode()).decode()
        except InvalidToken:
            raise ImagegateError(
                "A virtual key could not be decrypted: auth.encryption_key has changed.", code="virtual_key_unreadable"
            ) from None

    async def get(self, session: AsyncSession, name: str) -> VirtualKey:
        row = await session.get(VirtualKey, name)
        if row is None:
            raise _not_found(name)
        return row

    async def names(self, session: AsyncSession) -> list[VirtualKey]:
        return list((await session.execute(select(VirtualKey).order_by(VirtualKey.name))).scalars())

    async def remove(self, session: AsyncSession, name: str) -> None:
        await session.delete(await self.get(session, name))
