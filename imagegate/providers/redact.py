"""Secrets out of upstream text.

An upstream's error message may quote the request it refused, credentials
included (``Bearer sk-...``, an ``api-key`` header). Every error a provider
builds from upstream text goes through :func:`redact_error` before it is
raised, so neither the client's answer nor the server log ever shows one:
the provider's key, a virtual key used for the call and the provider's
configured header values are removed by value, and anything shaped like a
bearer token, an ``sk-`` key or an ``api-key=...`` pair by pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from imagegate.errors import ImagegateError

_REDACTED = "[redacted]"
_SECRET_PATTERNS = (
    re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+"),  # Authorization values
    re.compile(r"\bsk-[A-Za-z0-9_*\-]{6,}"),  # OpenAI-style keys, whole or masked
    re.compile(r"(?i)\b(api[-_]?key|x-api-key|access[-_]?token)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"),
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without the given secrets (longest first) or anything shaped
    like a bearer token, an ``sk-`` key or an ``api-key=...`` value."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)} {_REDACTED}", text)
    text = _SECRET_PATTERNS[1].sub(f"sk-{_REDACTED}", text)
    return _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}{_REDACTED}", text)


def redact_error(exc: ImagegateError, secrets: Iterable[str | None] = ()) -> ImagegateError:
    """Scrub an error built from upstream text, in place (message, type, code,
    param, and ``args`` so tracebacks in the log are clean too)."""
    secrets = list(secrets)
    exc.message = redact(exc.message, secrets)
    exc.args = (exc.message,)
    exc.type = redact(exc.type, secrets)
    exc.code = redact(exc.code, secrets) if exc.code is not None else None
    exc.param = redact(exc.param, secrets) if exc.param is not None else None
    return exc
