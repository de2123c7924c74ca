"""The ``imagegate`` command line."""

from __future__ import annotations

import datetime
import gc
import json
import logging
import shlex

import click

from imagegate import __version__
from imagegate.cli_admin import COMMANDS as ADMIN_COMMANDS
from imagegate.cli_settings import CONFIG_HELP, load_or_exit
from imagegate.config import Settings
from imagegate.contract.catalog import GENERATIONS, ModelSpec, parse_size
from imagegate.gateway.routes import rules_for


@click.group()
def main() -> None:
    """imagegate: one OpenAI-compatible Images API in front of every image model."""


@main.command()
@click.option("--config", "config_path", envvar="IMAGEGATE_CONFIG", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--host", help="Address to listen on (default: server.host, 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default: server.port, 8080).")
def serve(config_path: str | None, host: str | None, port: int | None) -> None:
    """Start the API server."""
    import uvicorn

    from imagegate.api.accesslog import redact_access_log
    from imagegate.app import create_app
    from imagegate.server import uvicorn_options

    settings = load_or_exit(config_path)
    server = settings.server.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    settings = settings.model_copy(update={"server": server})
    logging.basicConfig(level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_access_log()  # signed URLs' signatures and ?api_key= values stay out of the access log
    app = create_app(settings)
    url = settings.server.public_url or f"http://{server.host}:{server.port}"
    click.echo(banner(settings, url))
    # What is made by now (modules, the catalog, the app) lives as long as the
    # process: out of the collector's sight, a full collection under load scans
    # only what requests made (~5 ms instead of ~100 with it all).
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app, host=server.host, port=server.port, log_level=settings.server.log_level, access_log=True, **uvicorn_options(server)
    )


def _try_size(spec: ModelSpec) -> str | None:
    """A size the model accepts: its own default when that is a size, else
    1024x1024, else the first size it lists; None when it lists none."""
    concrete = [spec.default_size, "1024x1024", *spec.sizes]
    return next((s for s in concrete if parse_size(s) and spec.allows_size(s) is None), None)


def banner(settings: Settings, url: str) -> str:
    """What ``serve`` prints at start: where it listens, and a request that
    works as printed (a model that generates, a size it takes, the key it needs)."""
    lines = [
        f"imagegate {__version__} listening on {url}  (models: {', '.join(settings.models)}; data: {settings.server.data_dir})"
    ]
    rules = {name: rules_for(settings, name) for name in settings.models}
    name = next((name for name, spec in rules.items() if GENERATIONS in spec.endpoints), None)
    if name is None:
        return lines[0]
    auth = settings.auth
    # The variable the README exports for the key this config takes (static keys first: they are for the images API).
    var = "IMAGEGATE_API_KEY" if auth.api_keys else "IMAGEGATE_MASTER_KEY" if auth.master_key else None
    key_hint = f' -H "Authorization: Bearer ${var}"' if var and auth.enforced else ""
    body = {"model": name, "prompt": "a lighthouse at dusk"}
    if size := _try_size(rules[name]):
        body["size"] = size
    lines += [
        f"  try: curl -s {url}/v1/images/generations -H 'Content-Type: application/json'{key_hint} \\",
        f"         -d {shlex.quote(json.dumps(body))}",
        f'  or:  OpenAI(base_url="{url}/v1", api_key="...").images.generate(model="{name}", prompt="...")',
    ]
    if auth.follows_database_keys:
        lines.append('  (once an API key exists in the database, every request needs one: -H "Authorization: Bearer ig-...")')
    elif auth.enforced and not var:
        lines.append('  (requests need a key from `imagegate keys create`: -H "Authorization: Bearer ig-...")')
    return "\n".join(lines)


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a config file (and the environment it references); exit 2 if invalid."""
    settings = load_or_exit(path)
    click.echo(
        f"{path}: OK ({len(settings.providers)} provider(s), {len(settings.models)} model(s): {', '.join(settings.models)})"
    )


@main.command("models")
@click.option("--config", "config_path", envvar="IMAGEGATE_CONFIG", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="The same JSON as GET /admin/models.")
def models_command(config_path: str | None, as_json: bool) -> None:
    """Each served model's effective rules and price, and where each came from."""
    import json

    from imagegate.accounting.prices import PriceBook
    from imagegate.contract import catalog
    from imagegate.gateway.models_view import model_views, retirement_warnings
    from imagegate.gateway.routes import build_routes

    settings = load_or_exit(config_path)
    entries = catalog.effective(settings.catalog)
    routes = build_routes(settings)
    views = model_views(routes, entries, PriceBook.build(entries.entries(), settings.pricing))
    if as_json:
        click.echo(json.dumps({"object": "list", "data": views}, indent=2))
        return
    for view in views:
        sizes = ", ".join(view["sizes"]) + (" or WxH within limits" if view["free_size"] else "")
        when = "RETIRED" if view["retired"] and view["retired"] <= datetime.date.today().isoformat() else "RETIRES"
        retired = f"  {when} {view['retired']}" if view["retired"] else ""
        click.echo(f"{view['id']}{retired}")
        click.echo(f"  rules: {view['rules']}, {view['rules_origin']}; endpoints: {', '.join(view['endpoints'])}")
        click.echo(f"  sizes: {sizes}; qualities: {', '.join(view['qualities'])}; n <= {view['n_max']}")
        if view["extra_fields"]:
            click.echo(f"  extra fields: {', '.join(view['extra_fields'])}; unknown fields: {view['unknown_fields']}")
        origin = view["price_origin"] or "nowhere: budgeted keys are refused it"
        click.echo(f"  price: {_price_line(view['price'])}; from {origin}")
    for line in retirement_warnings(settings, routes):
        click.echo(f"warning: {line}")


def _price_line(price: dict[str, object] | None) -> str:
    if price is None:
        return "unpriced"
    if price["kind"] == "tokens":
        rates = {k.removesuffix("_per_1m"): v for k, v in price.items() if k.endswith("_per_1m")}
        return "USD per 1M tokens: " + ", ".join(f"{k} {v}" for k, v in rates.items())
    if price["kind"] == "per_megapixel":
        return f"USD per megapixel: first {price['first']}, each further {price['additional']}, input {price['input']}"
    table = price.get("prices") or {}
    assert isinstance(table, dict)
    parts = [f"{k} {v}" for k, v in table.items()] + ([f"default {price['default']}"] if price.get("default") else [])
    return "USD per image: " + ", ".join(parts)


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"imagegate {__version__}")


for _command in ADMIN_COMMANDS:  # db, keys, teams, usage, virtual-keys
    main.add_command(_command)
