"""Admin commands: ``db``, ``keys``, ``teams``, ``usage``, ``virtual-keys``.

They work on the database named by the config (``database.url``, default the
SQLite file in ``server.data_dir``), directly, so they work whether or not the
server runs. The admin REST API (``/admin``) offers the same over HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, overload

import click

from imagegate.accounting import keys, usage
from imagegate.accounting.admin import Admin, View
from imagegate.accounting.vault import Change, Vault, new_encryption_key
from imagegate.cli_settings import load_or_exit
from imagegate.config import Settings
from imagegate.contract.catalog import ModelSpec
from imagegate.db.engine import Database
from imagegate.db.migrate import upgrade
from imagegate.errors import ImagegateError
from imagegate.gateway.webhooks.urls import WebhookURLs

T = TypeVar("T")
CONFIG = click.option("--config", "config_path", envvar="IMAGEGATE_CONFIG", type=click.Path(dir_okay=False),
                      help="YAML config file (default: $IMAGEGATE_CONFIG, else the embedded defaults).")  # fmt: skip
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
TEAMS = click.option("--team", "teams", multiple=True, help="A team whose keys may use the virtual key (repeatable).")
KEYS = click.option("--key", "key_refs", multiple=True, help="A key (id or ig- prefix) that may use it (repeatable).")


def _settings(config_path: str | None) -> Settings:
    return load_or_exit(config_path)


# An error about one of these fields is about the option that gave it (exit status 2).
OPTION_OF = {"group_by": "--by", "provider": "--provider", "webhook_url": "--webhook-url"}


def run_admin(settings: Settings, work: Callable[[Admin], Awaitable[T]]) -> T:
    """Migrate, open the database, run ``work(admin)`` (the operations the
    admin API runs too), close; an error is printed as click prints one."""
    upgrade(settings.database_url)
    secret = settings.auth.encryption_key
    vault = Vault(secret.get_secret_value() if secret else None)

    async def go() -> T:
        db = Database(settings.database_url)
        try:
            check_url = WebhookURLs(settings.webhooks).check_key_url
            return await work(Admin(db, vault, providers=settings.providers, check_webhook_url=check_url))
        finally:
            await db.aclose()

    try:
        return asyncio.run(go())
    except ImagegateError as exc:
        if exc.param in OPTION_OF:
            raise click.BadParameter(exc.message, param_hint=OPTION_OF[exc.param]) from None
        raise click.ClickException(exc.message) from None


def _print(data: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    elif isinstance(data, list):
        click.echo(usage.to_table(data) if data else "(none)")
    else:
        for k, v in data.items():
            click.echo(f"{k:>14}: {'' if v is None else v}")


def _models(value: str | None) -> list[str] | None:
    return [m.strip() for m in value.split(",") if m.strip()] if value else None


@click.group("db")
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@CONFIG
def db_upgrade(config_path: str | None) -> None:
    """Apply the schema migrations (the server also does this at start)."""
    settings = _settings(config_path)
    upgrade(settings.database_url)
    click.echo(f"database at {settings.database_url.split('@')[-1]} is up to date")


KEY_OPTIONS = [
    click.option("--team", help="Team (owner) the key belongs to; team budgets apply too."),
    click.option("--models", help="Comma-separated models the key may use (default: all)."),
    click.option("--expires", type=click.DateTime(), help="Expiry (UTC), e.g. 2027-01-31 or 2027-01-31T12:00:00."),
    click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute."),
    click.option("--ipm", type=click.IntRange(min=1), help="Images per minute."),
    click.option("--budget", type=click.FloatRange(min=0), help="Budget in USD for each period."),
    click.option("--period", type=click.Choice(keys.PERIODS), help="Budget period (default: total)."),
    click.option("--webhook-url", help="Where the key's finished jobs are POSTed (signed; a first URL makes its secret)."),
]


def key_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(KEY_OPTIONS):
        fn = option(fn)
    return fn


@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: datetime | None) -> datetime | None: ...
def _utc(value: datetime | None) -> datetime | None:
    """click's datetimes are naive; they mean UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@click.group("keys")
def keys_group() -> None:
    """API keys: create, list, show, update, revoke."""


@keys_group.command("create")
@CONFIG
@click.option("--name", required=True, help="A name for people to recognise the key by.")
@key_options
@click.option("--admin", is_flag=True, help="The key may also call /admin.")
@AS_JSON
def keys_create(
    config_path: str | None,
    name: str,
    team: str | None,
    models: str | None,
    expires: datetime | None,
    rpm: int | None,
    ipm: int | None,
    budget: float | None,
    period: str | None,
    webhook_url: str | None,
    admin: bool,
    as_json: bool,
) -> None:
    """Create a key; its secret (and webhook secret) is printed once."""
    spec = keys.KeySpec(name=name, team=team, models=_models(models), expires_at=_utc(expires), rpm=rpm, ipm=ipm,
                        budget_usd=budget, budget_period=period, is_admin=admin, webhook_url=webhook_url)  # fmt: skip
    settings = _settings(config_path)
    view = run_admin(settings, lambda admin: admin.create_key(spec))
    _print(view, as_json)
    if not as_json:
        click.echo("\nStore the key now: it is not shown again.", err=True)
        if "webhook_secret" in view:
            click.echo("Store the webhook secret now too: it is not shown again.", err=True)
    _warn_unless_enforced(settings)


def _warn_unless_enforced(settings: Settings) -> None:
    """Say on stderr when a server on this config would not make callers send a key."""
    auth = settings.auth
    if auth.required is False:
        click.echo(
            "warning: this config says auth.required: false, so a server running it serves requests without "
            "a key; this key's limits and budget apply only to requests that send it.",
            err=True,
        )
    elif auth.follows_database_keys:
        click.echo(
            "note: a server on this config now refuses requests without a key (keys exist in its database); "
            "without auth.master_key (or IMAGEGATE_MASTER_KEY) /admin is closed, manage keys with this command.",
            err=True,
        )


@keys_group.command("list")
@CONFIG
@click.option("--team", help="Only this team's keys.")
@AS_JSON
def keys_list(config_path: str | None, team: str | None, as_json: bool) -> None:
    """List keys (prefixes only, never secrets)."""
    rows = run_admin(_settings(config_path), lambda admin: admin.list_keys(team))
    columns = ("id", "name", "prefix", "team", "enabled", "rpm", "ipm", "budget_usd", "budget_period", "spent_usd")
    _print(rows if as_json else [{c: r[c] for c in columns} for r in rows], as_json)


@keys_group.command("show")
@CONFIG
@click.argument("ref")
@AS_JSON
def keys_show(config_path: str | None, ref: str, as_json: bool) -> None:
    """Show one key, by id (key_...) or prefix (ig-...)."""
    _print(run_admin(_settings(config_path), lambda admin: admin.show_key(ref)), as_json)


@keys_group.command("update")
@CONFIG
@click.argument("ref")
@click.option("--name")
@key_options
@click.option("--enable/--disable", default=None, help="Turn the key on or off.")
@click.option("--clear", multiple=True, help="Remove a limit or the webhook URL (repeatable).",
              type=click.Choice(["rpm", "ipm", "budget", "models", "expires_at", "team", "webhook_url"]))  # fmt: skip
@AS_JSON
def keys_update(
    config_path: str | None,
    ref: str,
    name: str | None,
    team: str | None,
    models: str | None,
    expires: datetime | None,
    rpm: int | None,
    ipm: int | None,
    budget: float | None,
    period: str | None,
    webhook_url: str | None,
    enable: bool | None,
    clear: tuple[str, ...],
    as_json: bool,
) -> None:
    """Change a key's limits, budget, models, expiry, webhook URL or state."""
    spec = keys.KeySpec(name=name, team=team, models=_models(models), expires_at=_utc(expires), enabled=enable,
                        rpm=rpm, ipm=ipm, budget_usd=budget, budget_period=period, webhook_url=webhook_url)  # fmt: skip
    view = run_admin(_settings(config_path), lambda admin: admin.update_key(ref, spec, clear))
    _print(view, as_json)
    if "webhook_secret" in view and not as_json:
        click.echo("\nStore the webhook secret now: it is not shown again.", err=True)


@keys_group.command("rotate-webhook-secret")
@CONFIG
@click.argument("ref")
@AS_JSON
def keys_rotate_webhook_secret(config_path: str | None, ref: str, as_json: bool) -> None:
    """Give a key a new webhook secret (printed once); the old one stops signing at once."""
    _print(run_admin(_settings(config_path), lambda admin: admin.rotate_webhook_secret(ref)), as_json)
    if not as_json:
        click.echo("\nStore the webhook secret now: it is not shown again.", err=True)


@keys_group.command("revoke")
@CONFIG
@click.argument("ref")
def keys_revoke(config_path: str | None, ref: str) -> None:
    """Revoke a key for good."""
    view = run_admin(_settings(config_path), lambda admin: admin.revoke_key(ref))
    click.echo(f"revoked {view['id']} ({view['prefix']})")


@keys_group.command("release-reservations")
@CONFIG
@click.argument("ref", required=False)
@click.option("--all", "all_keys", is_flag=True, help="Every key's reservations (instead of one key's).")
@click.option("--expired-only", is_flag=True, help="Only reservations past their expiry.")
@AS_JSON
def keys_release_reservations(
    config_path: str | None, ref: str | None, all_keys: bool, expired_only: bool, as_json: bool
) -> None:
    """Give back budget reservations (of the key REF, or of --all keys).

    The server releases expired reservations by itself, and at start those
    its previous life left; this is for an administrator who knows a
    reservation is stale before it expires. A request still running when its
    reservation is released is charged its real cost when it ends."""
    if (ref is None) == (not all_keys):
        raise click.UsageError("give a key (id or ig- prefix) or --all")
    view = run_admin(_settings(config_path), lambda admin: admin.release_reservations(ref, expired_only=expired_only))
    _print(view, as_json)


@click.group("teams")
def teams_group() -> None:
    """Teams and their budgets."""


@teams_group.command("list")
@CONFIG
@AS_JSON
def teams_list(config_path: str | None, as_json: bool) -> None:
    _print(run_admin(_settings(config_path), lambda admin: admin.list_teams()), as_json)


@teams_group.command("set")
@CONFIG
@click.argument("name")
@click.option("--budget", type=click.FloatRange(min=0), help="Budget in USD for each period.")
@click.option("--period", type=click.Choice(keys.PERIODS))
@click.option("--no-budget", is_flag=True, help="Remove the team's budget.")
@AS_JSON
def teams_set(
    config_path: str | None, name: str, budget: float | None, period: str | None, no_budget: bool, as_json: bool
) -> None:
    """Create a team or change its budget."""
    view = run_admin(_settings(config_path), lambda admin: admin.update_team(name, budget, period, clear_budget=no_budget))
    _print(view, as_json)


@click.group("usage", invoke_without_command=True)
@CONFIG
@click.option("--by", "group_by", default="key,model,day", show_default=True,
              help="Comma-separated: key, team, model, day, provider, endpoint.")  # fmt: skip
@click.option("--since", type=click.DateTime(), help="From this UTC time (inclusive).")
@click.option("--until", type=click.DateTime(), help="To this UTC time (exclusive).")
@click.option("--key", "key_id", help="Only this key id.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.pass_context
def usage_command(
    ctx: click.Context,
    config_path: str | None,
    group_by: str,
    since: datetime | None,
    until: datetime | None,
    key_id: str | None,
    fmt: str,
) -> None:
    """Sum requests, images, tokens and cost (or: usage reprice)."""
    if ctx.invoked_subcommand is not None:
        return
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    rows = run_admin(_settings(config_path), lambda admin: admin.usage(groups, _utc(since), _utc(until), key_id))
    render: dict[str, Callable[[list[View]], str]] = {
        "table": usage.to_table,
        "csv": usage.to_csv,
        "json": lambda r: json.dumps(r, indent=2),
    }
    click.echo(render[fmt](rows).rstrip("\n"))


@usage_command.command("reprice")
@CONFIG
@click.option("--since", type=click.DateTime(), required=True, help="Rows from this UTC time (inclusive).")
@click.option("--until", type=click.DateTime(), help="To this UTC time (exclusive).")
@click.option("--model", help="Only this (public) model's rows.")
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@AS_JSON
def usage_reprice(
    config_path: str | None, since: datetime, until: datetime | None, model: str | None, dry_run: bool, as_json: bool
) -> None:
    """Cost usage rows again at the current prices (after adding a price).

    Recomputes the cost of each successful request in the window from the
    tokens, images, size and quality its row kept, with the config's
    pricing: and the shipped prices, and reports the changes by key and
    model. Keys' and teams' spent budgets are not changed."""
    from imagegate.accounting.reprice import price_lookup

    settings = _settings(config_path)
    price_of = price_lookup(settings, _route_rules(settings))
    report = run_admin(settings, lambda admin: admin.reprice(price_of, _utc(since), _utc(until), model, dry_run=dry_run))
    click.echo(json.dumps(report.view(), indent=2) if as_json else report.text())


def _route_rules(settings: Settings) -> dict[str, ModelSpec]:
    """Each configured model's rules as its route has them (they decide the names its price is found by)."""
    from imagegate.errors import ConfigError
    from imagegate.gateway.routes import rules_for

    names = {}
    for name in settings.models:
        try:
            names[name] = rules_for(settings, name)
        except ConfigError:
            continue
    return names


@click.group("virtual-keys")
def vkeys_group() -> None:
    """Provider credentials stored encrypted, chosen per request with x-portkey-virtual-key."""


@vkeys_group.command("new-encryption-key")
def vkeys_new_key() -> None:
    """Print a fresh key for auth.encryption_key."""
    click.echo(new_encryption_key())


@vkeys_group.command("add")
@CONFIG
@click.argument("name")
@click.option("--provider", required=True, help="The provider (from the config) the credential is for.")
@click.option("--secret-env", required=True, help="Environment variable holding the credential (never an argument).")
@TEAMS
@KEYS
def vkeys_add(
    config_path: str | None, name: str, provider: str, secret_env: str, teams: tuple[str, ...], key_refs: tuple[str, ...]
) -> None:
    """Store (or replace) a credential. Only its owners (--team, --key) and admin keys may use it;
    when replacing, owners not given stay as they are."""
    import os

    settings = _settings(config_path)
    secret = os.environ.get(secret_env)
    if not secret:
        raise click.BadParameter(f"{secret_env} is not set", param_hint="--secret-env")
    view = run_admin(
        settings, lambda admin: admin.put_virtual_key(name, provider, secret, teams=_given(teams), key_refs=_given(key_refs))
    )
    click.echo(f"stored virtual key {name!r} for provider {provider!r}; {_owners(view)}")


def _given(values: tuple[str, ...]) -> list[str] | None:
    return list(values) if values else None


def _owners(shown: View) -> str:
    if not shown["teams"] and not shown["keys"]:
        return "usable by admin keys only"
    return f"usable by teams [{', '.join(shown['teams'])}], keys [{', '.join(shown['keys'])}] and admin keys"


@vkeys_group.command("list")
@CONFIG
@AS_JSON
def vkeys_list(config_path: str | None, as_json: bool) -> None:
    """Virtual keys and their owners (never their secrets)."""
    rows = run_admin(_settings(config_path), lambda admin: admin.list_virtual_keys())
    if not as_json:
        rows = [{**r, "teams": ",".join(r["teams"]), "keys": ",".join(r["keys"])} for r in rows]
    _print(rows, as_json)


def _change_owners(config_path: str | None, name: str, teams: tuple[str, ...], key_refs: tuple[str, ...], change: Change) -> None:
    if not teams and not key_refs:
        raise click.UsageError("give at least one --team or --key")
    view = run_admin(
        _settings(config_path),
        lambda admin: admin.change_virtual_key_owners(name, teams=_given(teams), key_refs=_given(key_refs), change=change),
    )
    click.echo(f"virtual key {name!r}: {_owners(view)}")


@vkeys_group.command("grant")
@CONFIG
@click.argument("name")
@TEAMS
@KEYS
def vkeys_grant(config_path: str | None, name: str, teams: tuple[str, ...], key_refs: tuple[str, ...]) -> None:
    """Let teams or keys use a virtual key."""
    _change_owners(config_path, name, teams, key_refs, "grant")


@vkeys_group.command("revoke")
@CONFIG
@click.argument("name")
@TEAMS
@KEYS
def vkeys_revoke(config_path: str | None, name: str, teams: tuple[str, ...], key_refs: tuple[str, ...]) -> None:
    """Stop teams or keys from using a virtual key (with no owners left: admin keys only)."""
    _change_owners(config_path, name, teams, key_refs, "revoke")


@vkeys_group.command("remove")
@CONFIG
@click.argument("name")
def vkeys_remove(config_path: str | None, name: str) -> None:
    run_admin(_settings(config_path), lambda admin: admin.delete_virtual_key(name))
    click.echo(f"removed virtual key {name!r}")


COMMANDS = [db, keys_group, teams_group, usage_command, vkeys_group]
