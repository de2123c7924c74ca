"""What each served model's rules and price are, and where they came from:
``GET /admin/models`` and ``imagegate models`` show the same view. Also the
start-up warning for deployments that send a vendor (OpenAI, Google) a model
name it has retired."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from imagegate.accounting.money import usd_str
from imagegate.accounting.prices import PerMegapixel, PerToken, Price, PriceBook, price_names
from imagegate.config import Settings
from imagegate.contract import catalog
from imagegate.contract.catalog import Catalog, ModelSpec
from imagegate.gateway.routes import Route

log = logging.getLogger("imagegate.models")

OPENAI_HOSTS = frozenset({"api.openai.com"})
# A model that retires within this many days is announced at start too.
RETIRING_SOON_DAYS = 90


@dataclass(frozen=True)
class Vendor:
    """Whose retirement dates the catalog records for a provider type's
    models, the hosts that are that vendor itself (a host ending in
    "-" or "." + one of them counts too: Vertex AI's regional endpoints),
    and a current model to suggest instead."""

    name: str
    hosts: frozenset[str]
    suggestion: str


# Provider types that call a vendor whose shut-down model names the catalog
# records (openai.yaml, google.yaml, vertex.yaml). Other types (Azure, proxies,
# local models) keep their own schedules: no warning.
VENDORS = {
    "openai": Vendor("OpenAI", OPENAI_HOSTS, "gpt-image-2"),
    "gemini": Vendor("Google", frozenset({"generativelanguage.googleapis.com"}), "gemini-nano-banana-2.1"),
    # {location}-aiplatform.googleapis.com, aiplatform.googleapis.com, aiplatform.{us,eu}.rep.googleapis.com
    "vertex": Vendor("Google", frozenset({"aiplatform.googleapis.com", "rep.googleapis.com"}), "gemini-nano-banana-2.1"),
}
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1"}


def _is_vendor_host(host: str | None, vendor: Vendor) -> bool:
    return host is not None and any(host == h or host.endswith(("." + h, "-" + h)) for h in vendor.hosts)


def price_view(price: Price | None) -> dict[str, Any] | None:
    if price is None:
        return None
    if isinstance(price, PerToken):
        view: dict[str, Any] = {"kind": "tokens"}
        for key, rate in (
            ("text_input_per_1m", price.text_input),
            ("text_input_cached_per_1m", price.text_input_cached),
            ("image_input_per_1m", price.image_input),
            ("image_input_cached_per_1m", price.image_input_cached),
            ("image_output_per_1m", price.image_output),
            ("text_output_per_1m", price.text_output),
        ):
            if rate is not None:
                view[key] = usd_str(rate * 1_000_000)
        view["estimate"] = "formula of the pixel count" if price.formula else "published token table"
        return view
    if isinstance(price, PerMegapixel):
        return {
            "kind": "per_megapixel",
            "first": usd_str(price.first),
            "additional": usd_str(price.additional),
            "input": usd_str(price.input),
        }
    table = {f"{q} {s}": usd_str(p) for (q, s), p in price.table.items()}
    return {"kind": "per_image", "prices": table, "default": usd_str(price.default) if price.default is not None else None}


def rules_view(spec: ModelSpec) -> dict[str, Any]:
    free = spec.free_size
    return {
        "endpoints": sorted(spec.endpoints),
        "sizes": list(spec.sizes),
        "free_size": None
        if free is None
        else {
            "multiple_of": free.multiple_of,
            "max_edge": free.max_edge,
            "max_pixels": free.max_pixels,
            "min_pixels": free.min_pixels,
            "max_aspect": free.max_aspect,
        },
        "qualities": list(spec.qualities),
        "output_formats": list(spec.output_formats),
        "n_max": spec.n_max,
        "prompt_max": spec.prompt_max,
        "accepts": sorted(spec.accepts - set(spec.extra_fields)),
        "extra_fields": sorted(spec.extra_fields),
        "unknown_fields": spec.unknown_fields,
        "masks": spec.masks,
        "max_input_images": spec.edit_input.max_images if spec.edit_input else None,
        "max_output_tokens": spec.max_output_tokens,
        "wire": dict(spec.wire),
    }


def model_views(routes: Mapping[str, Route], entries: Catalog, prices: PriceBook) -> list[dict[str, Any]]:
    """One view per served model: its rules (and the entry they came from),
    its deployments, and its price (and where that came from)."""
    views = []
    for name, route in routes.items():
        spec = route.rules
        entry = entries.entry(spec.name)
        from_catalog = entry is not None and entry.spec.endpoints == spec.endpoints
        origin = entry.origin if from_catalog and entry is not None else None
        if spec.rules_from == "provider":  # the provider's fallback rules for a name the catalog lacks
            origin = f"provider default, {origin}" if origin else "provider"
        first = route.deployments[0]
        price, price_origin = prices.find_with_origin(*price_names(name, first.model, spec))
        views.append(
            {
                "id": name,
                "rules": spec.name,
                "rules_origin": origin,
                "source": entry.source if from_catalog and entry is not None else None,
                "retired": spec.retired.isoformat() if spec.retired else None,
                **rules_view(spec),
                "deployments": [{"provider": d.provider, "model": d.model} for d in route.deployments],
                "price": price_view(price),
                "price_origin": price_origin,
            }
        )
    return views


def retirement_warnings(settings: Settings, routes: Mapping[str, Route], today: datetime.date | None = None) -> list[str]:
    """A line per deployment that sends a vendor itself (OpenAI at
    api.openai.com, Google's Gemini API or Vertex AI) a model name the vendor
    has shut down (or shuts down within RETIRING_SOON_DAYS): the date of the
    upstream name's own catalog entry, else of the route's rules."""
    today = today or datetime.date.today()
    entries = catalog.effective(settings.catalog)
    lines = []
    for name, route in routes.items():
        for dep in route.deployments:
            provider = settings.providers[dep.provider]
            vendor = VENDORS.get(provider.type)
            own = entries.lookup(dep.model)
            retired = own.retired if own is not None else route.rules.retired
            if vendor is None or retired is None or (retired - today).days > RETIRING_SOON_DAYS:
                continue
            base_url = provider.options().get("base_url") or DEFAULT_BASE_URLS.get(provider.type)
            if base_url is not None and not _is_vendor_host(urlsplit(str(base_url)).hostname, vendor):
                continue  # a proxy or stand-in with its own schedule
            when = "shut down" if retired <= today else "shuts down"
            lines.append(
                f"model {name!r} (deployment {dep.provider}/{dep.model}): {vendor.name} {when} {dep.model!r} on "
                f"{retired.isoformat()}; point it at a current model (e.g. {vendor.suggestion}) or at an upstream "
                "that still serves it"
            )
    return lines


def log_retirements(settings: Settings, routes: Mapping[str, Route]) -> None:
    for line in retirement_warnings(settings, routes):
        log.warning("%s", line)
