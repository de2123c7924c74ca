"""HMAC-signed, expiring URLs for stored images.

A URL is ``<base>/v1/images/files/<key>?expires=<unix>&signature=<hex>``
where the signature is HMAC-SHA256 over ``"<key>\\n<expires>"`` with the
server's signing key. Anyone holding the URL can fetch the image until it
expires; nobody can forge or extend one without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

URL_PATH = "/v1/images/files"
# What this signer writes, nothing else: ASCII digits (str.isdigit would take
# "²", which int() refuses) and lowercase hex (hmac.compare_digest refuses
# non-ASCII text). Checked with fullmatch, so a trailing newline is refused too.
_EXPIRES = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


class SignatureInvalid(Exception):
    """The URL was altered or signed with another key."""


class SignatureExpired(Exception):
    """The URL was genuine but its time is up."""


class URLSigner:
    def __init__(self, key: bytes, ttl_seconds: int) -> None:
        if len(key) < 16:
            raise ValueError("the signing key must be at least 16 bytes")
        self._key = key
        self.ttl_seconds = ttl_seconds

    def _sign(self, key: str, expires: int) -> str:
        return hmac.new(self._key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base_url: str, key: str, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + self.ttl_seconds)
        return f"{base_url.rstrip('/')}{URL_PATH}/{key}?expires={expires}&signature={self._sign(key, expires)}"

    def verify(self, key: str, expires: str, signature: str, now: float | None = None) -> int:
        """Return the expiry time, or raise SignatureInvalid / SignatureExpired."""
        if not _EXPIRES.fullmatch(expires) or not _SIGNATURE.fullmatch(signature):
            raise SignatureInvalid(key)
        when = int(expires)
        if not hmac.compare_digest(self._sign(key, when), signature):
            raise SignatureInvalid(key)
        if when < (now if now is not None else time.time()):
            raise SignatureExpired(key)
        return when


def key_of_url(url: str) -> str | None:
    """The storage key of one of our hosted URLs, else None."""
    path = urlsplit(url).path
    marker = URL_PATH + "/"
    if marker not in path:
        return None
    key = path.rsplit(marker, 1)[1]
    return key if key and "/" not in key else None


def load_or_create_key(path: Path) -> bytes:
    """The signing key kept in the data directory, created on first start."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:  # O_EXCL: never overwrite a key another process just wrote; 0600 from the start
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    return key
