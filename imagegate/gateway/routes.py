"""The route table: for each public model, its catalog rules, its deployments
(with their routing state) and its fallbacks, built from the settings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Literal

from imagegate.config import RoutingConfig, Settings
from imagegate.contract import catalog
from imagegate.contract.catalog import Catalog, ModelSpec
from imagegate.contract.results import Deployment
from imagegate.errors import ConfigError
from imagegate.gateway.routing import Pool, Slot
from imagegate.providers.registry import provider_class, validate_provider_options


@dataclass(frozen=True)
class Route:
    rules: ModelSpec
    deployments: tuple[Deployment, ...]
    pool: Pool
    fallbacks: tuple[str, ...]
    fallback_on: frozenset[str]
    policy: RoutingConfig


def rules_for(settings: Settings, name: str, entries: Catalog | None = None) -> ModelSpec:
    """The catalog rules requests for public model ``name`` are checked
    against: the route's ``rules:`` entry, else the public name's, else the
    first deployment's upstream name's, else the provider's own (a local
    model's, or its ``default_rules`` entry). The providers' ``unknown_fields``
    option applies when every deployment's provider agrees."""
    entries = entries or catalog.effective(settings.catalog)
    route = settings.models[name]
    if route.rules is not None:
        spec = entries.lookup(route.rules)
        if spec is None:
            raise ConfigError(f"models.{name}.rules: no catalog entry {route.rules!r} (known: {', '.join(entries.names())})")
        return _checked(settings, name, _unknown_fields(settings, name, replace(spec, rules_from="rules")))
    first = route.deployments[0]
    spec = entries.lookup(name) or entries.lookup(first.model)
    if spec is None:
        provider = settings.providers[first.provider]
        options = validate_provider_options(first.provider, provider)
        cls = provider_class(provider.type)
        try:
            spec = cls.rules_for(options, first.model or name)
        except ConfigError as exc:
            raise ConfigError(f"models.{name}: {exc}") from None
        if spec is None and cls.default_rules is not None:
            spec = entries.lookup(cls.default_rules)
        if spec is not None:
            spec = replace(spec, rules_from="provider")
    if spec is None:
        raise ConfigError(f"models.{name}: unknown model; set 'rules:' to one of {', '.join(entries.names())}")
    return _checked(settings, name, _unknown_fields(settings, name, spec))


def _checked(settings: Settings, name: str, spec: ModelSpec) -> ModelSpec:
    """``spec`` once each deployment's provider says it can serve it."""
    for i, dep in enumerate(settings.models[name].deployments):
        provider = settings.providers[dep.provider]
        options = validate_provider_options(dep.provider, provider)
        try:
            provider_class(provider.type).check_route(options, spec, dep.model or name)
        except ConfigError as exc:
            raise ConfigError(f"models.{name}.deployments.{i}: {exc}") from None
    return spec


def _unknown_fields(settings: Settings, name: str, spec: ModelSpec) -> ModelSpec:
    choices: set[Literal["forward", "reject"]] = set()
    for dep in settings.models[name].deployments:
        provider = settings.providers[dep.provider]
        options = validate_provider_options(dep.provider, provider)
        choices.add(provider_class(provider.type).unknown_fields(options) or spec.unknown_fields)
    chosen: Literal["forward", "reject"] = "forward" if choices == {"forward"} else "reject"
    return spec if chosen == spec.unknown_fields else replace(spec, unknown_fields=chosen)


def build_routes(settings: Settings) -> dict[str, Route]:
    routes = {}
    entries = catalog.effective(settings.catalog)
    for name, cfg in settings.models.items():
        policy = cfg.routing or settings.routing
        deployments = tuple(
            Deployment(d.provider, d.model or name, timeout=d.timeout_seconds, connect_timeout=d.connect_timeout_seconds)
            for d in cfg.deployments
        )
        slots = [
            Slot(dep, d.weight, asyncio.Semaphore(d.max_concurrency) if d.max_concurrency else None, d.max_concurrency)
            for dep, d in zip(deployments, cfg.deployments, strict=True)
        ]
        routes[name] = Route(
            rules=rules_for(settings, name, entries),
            deployments=deployments,
            pool=Pool(slots, policy),
            fallbacks=tuple(cfg.fallbacks),
            fallback_on=frozenset(cfg.fallback_on),
            policy=policy,
        )
    return routes


def fallback_chain(routes: dict[str, Route], model: str) -> list[str]:
    """The model's fallbacks, then theirs, breadth first, each once."""
    chain: list[str] = []
    queue = list(routes[model].fallbacks)
    while queue:
        name = queue.pop(0)
        if name != model and name not in chain:
            chain.append(name)
            queue.extend(routes[name].fallbacks)
    return chain
