"""The access log without secrets: query-string values are redacted.

A hosted image URL's ``signature`` is its credential, and clients put keys
in query strings (``?api_key=...``). uvicorn's access log writes the path
with its query; :class:`RedactQuery` keeps the names and hides the values::

    GET /v1/images/files/k.png?expires=***&signature=*** HTTP/1.1" 200
"""

from __future__ import annotations

import logging

ACCESS_LOGGER = "uvicorn.access"
_HIDDEN = "***"
_MAX_NAME = 64


def redact_query(target: str) -> str:
    """``/p?a=1&b=2`` -> ``/p?a=***&b=***``; a part without ``=`` (or with an
    overlong name) is hidden whole, since it may itself be the secret."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        parts.append(f"{name}={_HIDDEN}" if eq and len(name) <= _MAX_NAME else _HIDDEN)
    return f"{path}?{'&'.join(parts)}"


class RedactQuery(logging.Filter):
    """For uvicorn's access logger: its record's args are (client, method,
    path with query, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def redact_access_log() -> None:
    """Install the filter on uvicorn's access logger (once). A filter on the
    logger itself survives uvicorn's own logging set-up, which replaces handlers."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactQuery) for f in logger.filters):
        logger.addFilter(RedactQuery())
