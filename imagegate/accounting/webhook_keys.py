"""A key's webhook secret: the Standard Webhooks ``whsec_`` secret that signs
the webhooks of its jobs (https://www.standardwebhooks.com/, symmetric
scheme: 24 to 64 random bytes, base64, prefixed ``whsec_``).

imagegate generates it (an administrator never chooses one), shows it once,
when it is made or rotated, and stores it encrypted with
``auth.encryption_key`` like a virtual key's credential (:class:`Vault`).
A rotated secret replaces the old one at once: deliveries still waiting are
signed with the new one.
"""

from __future__ import annotations

import base64
import secrets

from sqlalchemy import select

from imagegate.accounting.vault import Vault
from imagegate.db.engine import Database
from imagegate.db.models import ApiKey

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
WHAT = "Webhook secrets"
CODE = "webhook_secrets_disabled"


def new_secret() -> str:
    """A fresh ``whsec_<base64>`` secret (32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def give_secret(key: ApiKey, vault: Vault) -> str:
    """Make (or replace) ``key``'s secret; the only time it is seen in clear."""
    secret = new_secret()
    key.webhook_secret_encrypted = vault.seal(secret, WHAT, CODE)
    return secret


async def secret_of(db: Database, vault: Vault, key_id: str) -> str | None:
    """The secret of the key ``key_id`` (None: no such key, or it has none)."""
    async with db.read() as session:
        sealed = (await session.execute(select(ApiKey.webhook_secret_encrypted).where(ApiKey.id == key_id))).scalar()
    return None if sealed is None else vault.unseal(sealed, WHAT, CODE)
