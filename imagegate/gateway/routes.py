"""The route table: for each public model, its catalog rules, its deployments
(with their routing state) and its fallbacks, built from the settings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from imagegate.config import RoutingConfig, Settings
from imagegate.contract import catalog
from imagegate.contract.catalog import ModelSpec
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


def rules_for(settings: Settings, name: str) -> ModelSpec:
    route = settings.models[name]
    if route.rules is not None:
        spec = catalog.lookup(route.rules)
        if spec is None:
            raise ConfigError(f"models.{name}.rules: no catalog entry {route.rules!r} (known: {', '.join(catalog.names())})")
        return spec
    first = route.deployments[0]
    spec = catalog.lookup(name) or catalog.lookup(first.model)
    if spec is None:
        provider = settings.providers[first.provider]
        options = validate_provider_options(first.provider, provider)
        try:
            spec = provider_class(provider.type).rules_for(options, first.model or name)
        except ConfigError as exc:
            raise ConfigError(f"models.{name}: {exc}") from None
    if spec is None:
        raise ConfigError(f"models.{name}: unknown model; set 'rules:' to one of {', '.join(catalog.names())}")
    return spec


def build_routes(settings: Settings) -> dict[str, Route]:
    routes = {}
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
            rules=rules_for(settings, name),
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
