"""The model catalog: every model's rules and price, from data.

The entries are the package's data files (``imagegate/catalog/*.yaml``, see
``contract.catalog_data`` for the schema) plus, per configuration, the
user's ``catalog:`` entries (:func:`effective`). Validation
(``contract.validate``) and accounting read only these, so supporting a new
model means adding an entry, not an ``if``.

Code may still add an entry with :func:`register` (a test's own model);
it shows as ``code`` in ``imagegate models``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from imagegate.contract.catalog_data import CatalogEntry, EntryConfig, PriceConfig, RawEntry, merge, resolve, shipped_files
from imagegate.contract.fields import FieldSpec
from imagegate.contract.rules import (
    COMMON_FIELDS,
    EDITS,
    GENERATIONS,
    GPT_IMAGE_FIELDS,
    MB,
    SPEC_OPTIONAL_FIELDS,
    VARIATIONS,
    FreeSizeRule,
    InputRule,
    ModelSpec,
    parse_size,
)


class Catalog:
    """Resolved entries by name. ``lookup`` answers only entries a route may
    use (not the ``abstract`` templates)."""

    def __init__(self, entries: Mapping[str, CatalogEntry]) -> None:
        self._entries = dict(entries)

    def entry(self, name: str | None) -> CatalogEntry | None:
        return self._entries.get(name) if name else None

    def lookup(self, name: str | None) -> ModelSpec | None:
        entry = self.entry(name)
        return entry.spec if entry is not None and not entry.abstract else None

    def names(self) -> list[str]:
        return sorted(name for name, entry in self._entries.items() if not entry.abstract)

    def entries(self) -> Iterator[CatalogEntry]:
        return iter(self._entries.values())

    def prices(self) -> dict[str, PriceConfig]:
        return {name: entry.price for name, entry in self._entries.items() if entry.price is not None}


_CODE: dict[str, CatalogEntry] = {}


@functools.cache
def _shipped_raw() -> Mapping[str, RawEntry]:
    return MappingProxyType(shipped_files())


@functools.cache
def _shipped() -> Catalog:
    return Catalog(resolve(_shipped_raw()))


def shipped() -> Catalog:
    """The package's entries (and those code registered)."""
    return Catalog({**{e.name: e for e in _shipped().entries()}, **_CODE})


def effective(user: Mapping[str, EntryConfig]) -> Catalog:
    """The package's entries with the config's ``catalog:`` applied."""
    base = resolve(merge(_shipped_raw(), user, "config")) if user else {e.name: e for e in _shipped().entries()}
    return Catalog({**base, **{name: e for name, e in _CODE.items() if name not in user}})


def register(spec: ModelSpec, price: PriceConfig | None = None) -> ModelSpec:
    """Add an entry from code (a test's model)."""
    _CODE[spec.name] = CatalogEntry(spec, price, "code")
    return spec


def lookup(name: str | None) -> ModelSpec | None:
    if name in _CODE:
        return _CODE[name].spec
    return _shipped().lookup(name)


def names() -> list[str]:
    return sorted({*_shipped().names(), *_CODE})


def _diffusion_fields() -> Mapping[str, FieldSpec]:
    entry = _shipped().entry("diffusion")
    assert entry is not None, "imagegate/catalog/gateway.yaml defines the diffusion template"
    return entry.spec.extra_fields


# The fields diffusion models share (the ``diffusion`` template in gateway.yaml).
DIFFUSION_FIELDS: Mapping[str, FieldSpec] = _diffusion_fields()


def permissive(name: str, free_size: FreeSizeRule) -> ModelSpec:
    """The ``openai-compatible`` rules under another name and size rule, rejecting
    unknown fields: for a test's own model."""
    from dataclasses import replace

    base = _shipped().lookup("openai-compatible")
    assert base is not None
    return replace(base, name=name, free_size=free_size, unknown_fields="reject")


__all__ = [
    "COMMON_FIELDS",
    "DIFFUSION_FIELDS",
    "EDITS",
    "GENERATIONS",
    "GPT_IMAGE_FIELDS",
    "MB",
    "SPEC_OPTIONAL_FIELDS",
    "VARIATIONS",
    "Catalog",
    "CatalogEntry",
    "FreeSizeRule",
    "InputRule",
    "ModelSpec",
    "effective",
    "lookup",
    "names",
    "parse_size",
    "permissive",
    "register",
    "shipped",
]
