"""Storage backends by the scheme of ``storage.url``.

Like the provider registry: scheme -> ``"module:Class"``, imported on first
use, so a backend's client library costs nothing until a config names it.
The core never branches on a backend: it asks this registry. A new backend
is one module (a :class:`~imagegate.storage.base.Storage`) and one line
here, or a :func:`register` call for a backend kept outside the package.

It imports no config (the config imports it, to check ``storage.url``).
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from imagegate.errors import ConfigError
from imagegate.storage.base import Storage

# scheme -> "module:Class" (or the class itself, once registered at run time)
_SCHEMES: dict[str, str | type[Storage]] = {
    "file": "imagegate.storage.local:LocalStorage",
    "memory": "imagegate.storage.base:MemoryStorage",
}


def known_schemes() -> list[str]:
    return sorted(_SCHEMES)


def register(scheme: str, backend: str | type[Storage]) -> None:
    """Serve ``scheme://...`` URLs with ``backend`` (a class or ``"module:Class"``)."""
    _SCHEMES[scheme.lower()] = backend


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.lower() if "://" in url else ""


def storage_class(url: str) -> type[Storage]:
    """The backend class for ``url``; ValueError for an unknown scheme."""
    scheme = scheme_of(url)
    target = _SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in known_schemes())
        raise ValueError(f"unsupported storage URL {url!r} (supported: {known})")
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    try:
        cls: type[Storage] = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("imagegate"):
            raise
        raise ValueError(f"storage {scheme}:// needs the Python package {exc.name!r}") from exc
    return cls


def check_url(url: str) -> str:
    """``url`` when a known backend takes it; ValueError (for the config) else."""
    storage_class(url).check_url(url)
    return url


def build_storage(url: str, *, max_bytes: int | None) -> Storage:
    try:
        cls = storage_class(url)
    except ValueError as exc:
        raise ConfigError(f"storage.url: {exc}") from None
    return cls.from_url(url, max_bytes=max_bytes)
