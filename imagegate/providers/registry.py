"""Provider types by the ``type:`` key of the config.

Modules are imported on first use, so a heavy provider (local diffusion
models) costs nothing until a config names it. The core never branches on a
provider's name: it asks this registry.

It does not import :mod:`imagegate.config` (the config imports it, to check
each provider's options while it loads): a provider's config entry is
anything with a ``type`` and its ``options()`` (:class:`ProviderEntry`).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from pydantic import ValidationError

from imagegate.errors import ConfigError
from imagegate.providers.base import Provider, ProviderContext, ProviderOptions


class ProviderEntry(Protocol):
    """A provider's entry in the config (``config.ProviderConfig``)."""

    @property
    def type(self) -> str: ...

    def options(self) -> dict[str, Any]: ...


# type -> its class, or "module:Class" (imported on first use)
_TYPES: dict[str, str | type[Provider]] = {
    "test-pattern": "imagegate.providers.testpattern:PatternProvider",
    "openai": "imagegate.providers.openai.provider:OpenAIProvider",
    "diffusers": "imagegate.providers.local.provider:DiffusersProvider",
    # Dialects of the openai provider (OpenAI-shaped upstreams).
    "azure": "imagegate.providers.azure:AzureOpenAIProvider",
    "xai": "imagegate.providers.xai:XAIProvider",
    "seedream": "imagegate.providers.seedream:SeedreamProvider",
    "recraft": "imagegate.providers.recraft:RecraftProvider",
    # Submit-poll-fetch upstreams on the job engine (providers/jobs.py).
    "bfl": "imagegate.providers.bfl:BFLProvider",
    "fal": "imagegate.providers.fal:FalProvider",
    "replicate": "imagegate.providers.replicate:ReplicateProvider",
    # Native (not OpenAI-shaped) synchronous upstreams.
    "gemini": "imagegate.providers.google.provider:GoogleProvider",
    "vertex": "imagegate.providers.google.vertex:VertexProvider",
    "stability": "imagegate.providers.stability:StabilityProvider",
}


# What to install for a provider type's optional dependencies.
_EXTRAS = {"diffusers": " (pip install torch==<your build>, then pip install 'imagegate[local]')"}


def known_types() -> list[str]:
    return sorted(_TYPES)


def register(type_name: str, target: str | type[Provider]) -> None:
    """Add a provider type (a plugin's, a test's own): its class, or
    ``"module:Class"`` to import when a config first names it."""
    _TYPES[type_name] = target


def unregister(type_name: str) -> None:
    _TYPES.pop(type_name, None)


def provider_class(type_name: str) -> type[Provider]:
    try:
        target = _TYPES[type_name]
    except KeyError:
        raise ConfigError(f"unknown provider type {type_name!r} (known: {', '.join(known_types())})") from None
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("imagegate"):
            raise
        hint = _EXTRAS.get(type_name, "")
        raise ConfigError(f"provider type {type_name!r} needs the Python package {exc.name!r}{hint}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ConfigError(f"provider type {type_name!r}: {target} is not a Provider class")
    return cls


def validate_provider_options(name: str, config: ProviderEntry) -> ProviderOptions:
    """Check a provider's options with its type's model; ConfigError names the key."""
    try:
        cls = provider_class(config.type)
    except ConfigError as exc:
        raise ConfigError(f"providers.{name}.type: {exc}") from None
    try:
        return cls.options_model.model_validate(config.options())
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"providers.{name}.{loc}: {msg}") from exc


def build_provider(name: str, config: ProviderEntry, context: ProviderContext) -> Provider:
    cls = provider_class(config.type)
    return cls(name, validate_provider_options(name, config), context)
