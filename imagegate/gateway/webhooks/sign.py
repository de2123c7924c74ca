"""Standard Webhooks signatures: ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of id.timestamp.body>``).

The spec: https://www.standardwebhooks.com/ and
https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
(symmetric scheme; a key's ``whsec_`` secret: accounting/webhook_keys.py).
The HMAC itself is the reference library's (PyPI ``standardwebhooks``,
``Webhook.sign``), the one receivers verify with, so the two cannot drift.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook


def new_message_id() -> str:
    """A webhook-id: letters, digits and ``_`` only (the spec forbids ``.``
    in what is signed ahead of the body)."""
    return "msg_" + secrets.token_hex(16)


def signed_headers(secret: str, message_id: str, body: bytes, at: datetime | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt at ``at`` (now).
    ``body`` is sent exactly as signed (UTF-8 JSON)."""
    at = at or datetime.now(UTC)
    stamp = int(at.timestamp())
    signature = Webhook(secret).sign(message_id, datetime.fromtimestamp(stamp, UTC), body.decode())
    return {"webhook-id": message_id, "webhook-timestamp": str(stamp), "webhook-signature": signature}
