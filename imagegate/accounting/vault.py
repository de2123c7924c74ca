"""Virtual keys: provider credentials encrypted at rest (Fernet, AES-128-CBC +
HMAC-SHA256), chosen per request by name so clients never hold them."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db.models import VirtualKey, utcnow
from imagegate.errors import ImagegateError, NotFoundError


def new_encryption_key() -> str:
    return Fernet.generate_key().decode()


class Vault:
    def __init__(self, encryption_key: str | None) -> None:
        self._fernet = Fernet(encryption_key.encode()) if encryption_key else None

    def _require(self) -> Fernet:
        if self._fernet is None:
            raise ImagegateError(
                "Virtual keys need auth.encryption_key in the configuration.", code="virtual_keys_disabled", status=501
            )
        return self._fernet

    async def put(self, session: AsyncSession, name: str, provider: str, secret: str) -> VirtualKey:
        token = self._require().encrypt(secret.encode()).decode()
        row = await session.get(VirtualKey, name)
        if row is None:
            row = VirtualKey(name=name, provider=provider, secret_encrypted=token, created_at=utcnow())
            session.add(row)
        else:
            row.provider, row.secret_encrypted = provider, token
        await session.flush()
        return row

    async def open(self, session: AsyncSession, name: str) -> tuple[str, str]:
        """(provider name, secret) of a virtual key."""
        row = await session.get(VirtualKey, name)
        if row is None:
            raise NotFoundError(f"No virtual key named {name!r}.", param="x-portkey-virtual-key", code="virtual_key_not_found")
        try:
            return row.provider, self._require().decrypt(row.secret_encrypted.encode()).decode()
        except InvalidToken:
            raise ImagegateError(
                "A virtual key could not be decrypted: auth.encryption_key has changed.", code="virtual_key_unreadable"
            ) from None

    async def names(self, session: AsyncSession) -> list[VirtualKey]:
        return list((await session.execute(select(VirtualKey).order_by(VirtualKey.name))).scalars())

    async def remove(self, session: AsyncSession, name: str) -> None:
        row = await session.get(VirtualKey, name)
        if row is None:
            raise NotFoundError(f"No virtual key named {name!r}.", code="virtual_key_not_found")
        await session.delete(row)
