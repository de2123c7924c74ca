"""Settings for a command: what every ``imagegate`` command that reads the
config shares (``cli.py`` and ``cli_admin.py`` both import it; neither
imports the other's internals).
"""

from __future__ import annotations

import sys

import click

from imagegate.config import Settings, load_settings
from imagegate.errors import ConfigError
from imagegate.gateway.wiring import check_settings

CONFIG_HELP = "YAML config file (default: $IMAGEGATE_CONFIG, else the embedded defaults)."


def load_or_exit(path: str | None) -> Settings:
    """The settings (the file, the environment, each model's rules), or a
    one-line message naming the key and exit status 2."""
    try:
        settings = load_settings(path)
        check_settings(settings)
        return settings
    except ConfigError as exc:
        click.echo(f"imagegate: config error: {exc}", err=True)
        sys.exit(2)
