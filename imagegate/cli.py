"""The ``imagegate`` command line."""

from __future__ import annotations

import logging
import sys

import click

from imagegate import __version__
from imagegate.config import Settings, load_settings
from imagegate.errors import ConfigError

CONFIG_HELP = "YAML config file (default: $IMAGEGATE_CONFIG, else the embedded defaults)."


def load_or_exit(path: str | None) -> Settings:
    try:
        settings = load_settings(path)
        from imagegate.gateway.service import ImageService

        ImageService.check(settings)
        return settings
    except ConfigError as exc:
        click.echo(f"imagegate: config error: {exc}", err=True)
        sys.exit(2)


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
    models = ", ".join(settings.models)
    key_hint = ' -H "Authorization: Bearer $IMAGEGATE_API_KEY"' if settings.auth.api_keys else ""
    first = next(iter(settings.models))
    click.echo(
        f"imagegate {__version__} listening on {url}  (models: {models}; data: {settings.server.data_dir})\n"
        f"  try: curl -s {url}/v1/images/generations -H 'Content-Type: application/json'{key_hint} \\\n"
        f'         -d \'{{"model": "{first}", "prompt": "a lighthouse at dusk", "size": "512x512"}}\'\n'
        f'  or:  OpenAI(base_url="{url}/v1", api_key="...").images.generate(model="{first}", prompt="...")'
    )
    uvicorn.run(
        app, host=server.host, port=server.port, log_level=settings.server.log_level, access_log=True, **uvicorn_options(server)
    )


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a config file (and the environment it references); exit 2 if invalid."""
    settings = load_or_exit(path)
    click.echo(
        f"{path}: OK ({len(settings.providers)} provider(s), {len(settings.models)} model(s): {', '.join(settings.models)})"
    )


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"imagegate {__version__}")


def _register_admin_commands() -> None:
    from imagegate.cli_admin import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_register_admin_commands()
