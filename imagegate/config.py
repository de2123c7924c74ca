"""Typed settings: a YAML file plus environment overrides, checked at start.

Load order, later wins:

1. the embedded defaults (the ``test-pattern`` model, local storage under
   ``./imagegate-data``);
2. the YAML file given with ``--config`` (or ``IMAGEGATE_CONFIG``);
3. environment variables ``IMAGEGATE_<SECTION>__<KEY>[__<KEY>...]``, e.g.
   ``IMAGEGATE_SERVER__PORT=9000``; values are parsed as YAML scalars.

Any string value of the form ``env:VARNAME`` is replaced by that variable's
value; a missing variable is an error naming the key. The secrets the README
documents as variables (``IMAGEGATE_MASTER_KEY``, ``IMAGEGATE_API_KEY``,
``IMAGEGATE_ENCRYPTION_KEY``, ``IMAGEGATE_SIGNING_KEY``; see
:data:`ENV_SHORTCUTS`) fill their key whenever neither the file nor an
override sets it, so the embedded defaults read them too. Every problem becomes a
:class:`~imagegate.errors.ConfigError` whose message is one line naming the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from imagegate.contract import catalog as model_catalog
from imagegate.contract.catalog_data import EntryConfig, PriceConfig
from imagegate.errors import ConfigError
from imagegate.providers.registry import validate_provider_options
from imagegate.storage import registry as storage_registry

ENV_PREFIX = "IMAGEGATE_"
ENV_NESTING = "__"
# Documented variables -> the key they fill when the file and the overrides
# leave it unset (an empty variable counts as unset). IMAGEGATE_API_KEY is one
# static key.
ENV_SHORTCUTS: dict[str, tuple[str, str]] = {
    "IMAGEGATE_MASTER_KEY": ("auth", "master_key"),
    "IMAGEGATE_API_KEY": ("auth", "api_keys"),
    "IMAGEGATE_ENCRYPTION_KEY": ("auth", "encryption_key"),
    "IMAGEGATE_SIGNING_KEY": ("storage", "signing_key"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FetchConfig(_Strict):
    """Limits for image URLs given in JSON edit requests (``max_mb`` also caps ``data:`` URLs)."""

    timeout_seconds: float = Field(15.0, gt=0)
    max_mb: float = Field(50.0, gt=0)
    max_redirects: int = Field(3, ge=0, le=10)
    allow_private_networks: bool = False


class CorsConfig(_Strict):
    """Cross-origin requests from browsers (Starlette's CORSMiddleware); off
    while ``allow_origins`` is empty."""

    allow_origins: list[str] = []  # e.g. ["https://app.example.com"]; ["*"]: any site
    allow_origin_regex: str | None = None
    allow_methods: list[str] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    allow_headers: list[str] = ["*"]  # what a preflight may ask for; "*": whatever it asks
    expose_headers: list[str] = [
        "x-request-id",
        "x-imagegate-cost-usd",
        "x-imagegate-cost-reserved-usd",
        "x-imagegate-model",
        "x-imagegate-provider",
        "x-imagegate-attempts",
        "x-imagegate-idempotent-replay",
        "x-imagegate-resized",
        "retry-after",
    ]
    allow_credentials: bool = False  # cookies / HTTP auth; API keys travel in headers and need no credentials
    max_age: int = Field(600, ge=0)  # seconds a browser may cache a preflight answer

    @model_validator(mode="after")
    def _no_wildcard_credentials(self) -> CorsConfig:
        if self.allow_credentials and ("*" in self.allow_origins or self.allow_origin_regex):
            raise ValueError("allow_credentials needs explicit allow_origins (not '*' or a regex)")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.allow_origins or self.allow_origin_regex)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = None
    data_dir: Path = Path("./imagegate-data")
    max_body_mb: float = Field(120.0, gt=0)
    max_image_pixels: int = Field(50_000_000, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # HTTP protocol limits (imagegate/server.py): request line + headers size,
    # time to receive them, longest pause inside a body, open connections.
    max_header_kb: int = Field(64, ge=1, le=1024)
    header_timeout_seconds: float = Field(10.0, gt=0)
    body_timeout_seconds: float = Field(30.0, gt=0)
    max_connections: int = Field(1000, ge=1)
    backlog: int = Field(2048, ge=1)  # connections the kernel queues before they are accepted
    # A stream (stream=true) on which nothing was sent for this long gets an
    # SSE comment, ": keep-alive", so proxies' idle timeouts never fire; a
    # stream whose first event takes longer starts with one (docs/long-requests.md).
    keepalive_seconds: float = Field(15.0, gt=0)
    fetch: FetchConfig = FetchConfig()
    cors: CorsConfig = CorsConfig()

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value.rstrip("/")


class AuthConfig(_Strict):
    api_keys: list[SecretStr] = []  # static keys: full access to the images API, no limits
    master_key: SecretStr | None = None  # the admin key: /admin/* and everything else
    # Whether requests must carry a valid key. Default (None): yes when
    # api_keys or master_key is set, and also as soon as any key exists in the
    # database (accounting.service checks). Only an explicit false serves
    # requests without a key then, with a warning at start.
    required: bool | None = None
    # Fernet key that encrypts virtual keys (provider credentials) at rest;
    # make one with `imagegate virtual-keys new-encryption-key`.
    encryption_key: SecretStr | None = None
    # How long a valid database key with a budget (its own or its team's) is
    # trusted without reading its row again (0: read it on every request). Changes made through this
    # server's admin API apply at once; those made on another replica or by
    # the CLI, within this time (accounting/keycache.py).
    key_cache_seconds: float = Field(5.0, ge=0, le=300)

    @field_validator("api_keys")
    @classmethod
    def _non_empty(cls, keys: list[SecretStr]) -> list[SecretStr]:
        if any(not key.get_secret_value().strip() for key in keys):
            raise ValueError("an API key is empty")
        return keys

    @field_validator("master_key")
    @classmethod
    def _long_master(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < 16:
            raise ValueError("the master key must be at least 16 characters")
        return key

    @field_validator("encryption_key")
    @classmethod
    def _fernet_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None:
            from cryptography.fernet import Fernet

            try:
                Fernet(key.get_secret_value().encode())
            except ValueError:
                raise ValueError("not a Fernet key (32 url-safe base64-encoded bytes)") from None
        return key

    @property
    def enforced(self) -> bool:
        """Whether the config alone requires a key (database keys aside)."""
        return self.required if self.required is not None else bool(self.api_keys or self.master_key)

    @property
    def follows_database_keys(self) -> bool:
        """Whether keys become required once one exists in the database:
        unless the config already requires them, or explicitly does not."""
        return self.required is None and not self.enforced


class DatabaseConfig(_Strict):
    # default: sqlite+aiosqlite:///<server.data_dir>/imagegate.db
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for plain, driver in (("postgresql://", "postgresql+asyncpg://"), ("postgres://", "postgresql+asyncpg://"),
                              ("sqlite://", "sqlite+aiosqlite://")):  # fmt: skip
            if value.startswith(plain):
                return driver + value[len(plain) :]
        if not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError(f"unsupported database URL {value!r} (postgresql://... or sqlite:///PATH)")
        return value


class RateLimitConfig(_Strict):
    # where counters live: memory:// (one process) or redis://HOST:PORT (shared by replicas)
    storage_url: str = "memory://"

    @field_validator("storage_url")
    @classmethod
    def _known(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://", "async+redis://", "async+rediss://")):
            raise ValueError(f"unsupported rate-limit storage {value!r} (memory:// or redis://...)")
        return value


class StorageConfig(_Strict):
    # Where hosted images live, by scheme (storage/registry.py): file://PATH, memory://.
    url: str | None = None  # default: file://<server.data_dir>/images
    url_ttl_seconds: int = Field(3600, gt=0)
    signing_key: SecretStr | None = None  # default: generated once in data_dir
    sweep_interval_seconds: float = Field(60.0, gt=0)
    # Cap on the hosted images (GB, decimal); over it the oldest are deleted
    # first, before their URLs expire (those answer 410). null: no cap.
    max_gb: float | None = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        return None if value is None else storage_registry.check_url(value)


class JobsConfig(_Strict):
    """Asynchronous image jobs (``Prefer: respond-async``; docs/jobs.md)."""

    workers: int = Field(16, ge=0, le=10_000)  # jobs this replica runs at once (0: it only accepts them)
    lease_seconds: float = Field(60.0, gt=0)  # a running job's lease; renewed every third of it
    poll_seconds: float = Field(1.0, gt=0)  # idle workers look for jobs this often (jittered)
    max_queue_seconds: float = Field(86400.0, gt=0)  # a job not started by then fails (job_expired)
    max_queued_per_key: int = Field(1000, ge=1)  # queued jobs per caller; beyond it a 429
    # MB of input images (and masks) a caller's unfinished jobs may hold in the database; beyond it a 429
    max_queued_mb_per_key: float = Field(1024.0, gt=0)
    # On a graceful stop, how long running jobs may finish before they are handed back.
    drain_seconds: float = Field(10.0, ge=0)


class WebhooksConfig(_Strict):
    """Signed webhooks for finished image jobs (docs/webhooks.md). The same
    address rules as image URLs: https only, public addresses only, unless
    allowed here (tests, loopback receivers)."""

    # Hosts a per-request Imagegate-Webhook-Url may name: "hooks.example.com",
    # or "*.example.com" for its subdomains. Empty: the header is refused.
    allowed_hosts: list[str] = []
    allow_http: bool = False
    allow_private_addresses: bool = False
    timeout_seconds: float = Field(10.0, gt=0, le=300)  # one delivery attempt
    retry_seconds: float = Field(86400.0, ge=0)  # retries end this long after the first attempt
    initial_backoff_seconds: float = Field(5.0, gt=0)  # then doubled each attempt, with jitter
    max_backoff_seconds: float = Field(3600.0, gt=0)
    poll_seconds: float = Field(5.0, gt=0)  # how often a replica looks for deliveries due (others' retries)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            bare = host.removeprefix("*.")
            if not bare or "*" in bare or "/" in bare or ":" in bare or bare != bare.strip():
                raise ValueError(f"not a host name or *.domain: {host!r}")
        return [h.lower().rstrip(".") for h in hosts]


ErrorKind = Literal["rate_limit", "timeout", "connection", "server_error", "content_policy", "invalid_request"]
RETRYABLE_KINDS: tuple[ErrorKind, ...] = ("rate_limit", "timeout", "connection", "server_error")


class RoutingConfig(_Strict):
    """Retries, deadlines and cooldowns; top-level defaults, overridable per model."""

    max_attempts: int = Field(3, ge=1, le=20)  # attempts in all, over deployments and fallbacks
    deadline_seconds: float = Field(600.0, gt=0)  # the whole request, retries and waits included
    backoff_initial_seconds: float = Field(0.25, ge=0)
    backoff_max_seconds: float = Field(8.0, ge=0)
    backoff_multiplier: float = Field(2.0, ge=1)
    max_retry_after_seconds: float = Field(30.0, ge=0)  # a longer Retry-After: try elsewhere instead
    cooldown_failures: int = Field(3, ge=1)  # consecutive failures that take a deployment out
    cooldown_seconds: float = Field(30.0, ge=0)
    # Try again (elsewhere, or a fallback) after an attempt whose upstream may
    # have started paid work (a submitted job that timed out): it may be paid twice.
    resubmit_started: bool = False


class DeploymentConfig(_Strict):
    provider: str
    model: str | None = None  # the model name sent upstream; default: the public name
    weight: float = Field(1.0, gt=0)  # share of traffic among healthy deployments
    max_concurrency: int | None = Field(None, ge=1)  # requests at once; more wait for a slot
    timeout_seconds: float | None = Field(None, gt=0)  # one attempt, end to end
    connect_timeout_seconds: float | None = Field(None, gt=0)


class ModelRouteConfig(_Strict):
    deployments: list[DeploymentConfig] = Field(min_length=1)
    # which catalog entry's rules validate requests; default: the public name,
    # then the deployments' upstream model name, then the provider's own rules.
    rules: str | None = None
    fallbacks: list[str] = []  # models tried, in order, when these deployments are exhausted
    fallback_on: list[ErrorKind] = list(RETRYABLE_KINDS)  # the error kinds that move on to a fallback
    routing: RoutingConfig | None = None  # overrides the top-level routing for this model
    # A provider image not of the asked size (see docs/output.md): crop it to cover,
    # pad it (letterbox), or return it as it is.
    resize: Literal["crop", "pad", "none"] = "crop"
    pad_color: str | None = Field(None, pattern=r"^#[0-9a-fA-F]{6}$")  # opaque padding; default: the edge's mean colour

    @model_validator(mode="before")
    @classmethod
    def _list_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {"deployments": value}
        return value


class ProviderConfig(BaseModel):
    """``type`` picks the provider class; the other keys are its options,
    checked by that class's own options model (see ``providers.registry``)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Settings(_Strict):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    database: DatabaseConfig = DatabaseConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    storage: StorageConfig = StorageConfig()
    # Prices only, by model name (a shortcut for catalog: {NAME: {price: ...}}; for one name it wins over
    # the catalog's; docs/catalog.md gives the lookup order by upstream, public and rules name).
    pricing: dict[str, PriceConfig] = {}
    # Models' rules and prices added or changed (imagegate/catalog/*.yaml's schema; extends: inherits).
    catalog: dict[str, EntryConfig] = {}
    routing: RoutingConfig = RoutingConfig()
    jobs: JobsConfig = JobsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    providers: dict[str, ProviderConfig] = {"demo": ProviderConfig(type="test-pattern")}
    models: dict[str, ModelRouteConfig] = {"test-pattern": ModelRouteConfig(deployments=[DeploymentConfig(provider="demo")])}
    default_model: str | None = None
    # A key or team with a budget asking for a model without a price: refuse
    # (403 model_not_priced; fail closed), or allow it and record $0, estimated.
    pricing_missing: Literal["refuse", "allow"] = "refuse"

    @model_validator(mode="after")
    def _references(self) -> Settings:
        for name, route in self.models.items():
            for i, dep in enumerate(route.deployments):
                if dep.provider not in self.providers:
                    raise ValueError(
                        f"models.{name}.deployments.{i}.provider: no provider named "
                        f"{dep.provider!r} (defined: {', '.join(sorted(self.providers)) or 'none'})"
                    )
        for name, route in self.models.items():
            for fallback in route.fallbacks:
                if fallback not in self.models:
                    raise ValueError(f"models.{name}.fallbacks: no model named {fallback!r}")
            seen, queue = {name}, list(route.fallbacks)
            while queue:  # fallbacks of fallbacks may not lead back
                nxt = queue.pop()
                if nxt == name:
                    raise ValueError(f"models.{name}.fallbacks: the chain leads back to {name!r}")
                if nxt not in seen:
                    seen.add(nxt)
                    queue.extend(self.models[nxt].fallbacks)
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model: {self.default_model!r} is not in models")
        return self

    @property
    def database_url(self) -> str:
        from imagegate.db.engine import default_url

        return self.database.url or default_url(self.server.data_dir)

    @property
    def storage_max_bytes(self) -> int | None:
        return None if self.storage.max_gb is None else int(self.storage.max_gb * 1e9)

    @property
    def storage_url(self) -> str:
        """``storage.url``, or the default: the images directory in ``server.data_dir``."""
        return self.storage.url or f"file://{self.server.data_dir / 'images'}"

    @property
    def storage_path(self) -> Path:
        """The images directory, for ``file://`` storage."""
        return Path(self.storage_url.removeprefix("file://"))


def _resolve_env_refs(value: Any, path: str, environ: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_env_refs(v, f"{path}.{k}" if path else str(k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env_refs(v, f"{path}.{i}", environ) for i, v in enumerate(value)]
    if isinstance(value, str) and value.startswith("env:"):
        var = value[4:]
        if var not in environ:
            raise ConfigError(f"{path}: environment variable {var} is not set")
        return environ[var]
    return value


def _apply_env_overrides(data: dict[str, Any], environ: dict[str, str]) -> None:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or ENV_NESTING not in name:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split(ENV_NESTING)]
        if not all(keys):
            raise ConfigError(f"{name}: malformed override name")
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {key} is not a section")
            node = child
        node[keys[-1]] = yaml.safe_load(raw) if raw else raw


def _apply_env_shortcuts(data: dict[str, Any], environ: dict[str, str]) -> None:
    for var, (section, key) in ENV_SHORTCUTS.items():
        value = environ.get(var)
        if not value:
            continue
        node = data.setdefault(section, {})
        if not isinstance(node, dict) or key in node:
            continue
        node[key] = [value] if key == "api_keys" else value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{loc}: {msg}" if loc else msg


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read, merge and validate the configuration; raise ConfigError on any problem."""
    environ = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: invalid YAML{where}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded
    _apply_env_overrides(data, environ)
    _apply_env_shortcuts(data, environ)
    data = _resolve_env_refs(data, "", environ)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from exc
    for name, provider in settings.providers.items():
        validate_provider_options(name, provider)
    model_catalog.effective(settings.catalog)  # extends: chains, required keys, defaults within the rules
    return settings
