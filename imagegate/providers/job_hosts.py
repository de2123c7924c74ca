"""Which hosts a job upstream's poll and cancel URLs may name by default.

The credential goes to a poll or cancel URL only on ``base_url``'s origin or
a host ``poll_hosts`` names (``providers/jobs.py``). A vendor hands out URLs
on its own hosts (BFL's regional ``api.us1.bfl.ai``), so its provider names
them by default; but with ``base_url`` on a proxy the credential is the
proxy's, and a URL on the vendor's host must not get it. So the vendor's
hosts are the default only when ``base_url`` is itself one of them; a proxy
gets none unless the config lists them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit


def on_hosts(url: object, hosts: tuple[str, ...]) -> bool:
    """Whether ``url``'s host is one of ``hosts`` (shell patterns)."""
    try:
        host = (urlsplit(url).hostname or "").lower() if isinstance(url, str) else ""
    except ValueError:
        return False
    return bool(host) and any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in hosts)


def vendor_poll_hosts(*hosts: str) -> Callable[[dict[str, Any]], list[str]]:
    """A ``default_factory`` for ``poll_hosts``: ``hosts`` when the validated
    ``base_url`` is on one of them, else none (``base_url``'s origin only)."""

    def default(data: dict[str, Any]) -> list[str]:
        return list(hosts) if on_hosts(data.get("base_url"), hosts) else []

    return default


__all__ = ["on_hosts", "vendor_poll_hosts"]
