"""The composition root: the service and everything it uses, built from the
settings in one place.

``build_service(settings)`` makes the accounting (database, keys, prices),
the providers (by ``type``, :mod:`imagegate.providers.registry`), the routes,
the image store (by the scheme of ``storage.url``,
:mod:`imagegate.storage.registry`) and its URL signer, the URL fetcher, the
idempotency store and the sweeper, and hands them to an
:class:`~imagegate.gateway.service.ImageService`. Nothing else constructs
these; tests build a service the same way.
"""

from __future__ import annotations

from imagegate.accounting.idempotency import IdempotencyStore
from imagegate.accounting.service import Accounting
from imagegate.config import Settings
from imagegate.gateway.fetch import ImageFetcher
from imagegate.gateway.hosted import HostedFiles
from imagegate.gateway.models_view import log_retirements
from imagegate.gateway.routes import build_routes, rules_for
from imagegate.gateway.service import ImageService
from imagegate.gateway.sweeper import Sweeper
from imagegate.providers.base import ProviderContext
from imagegate.providers.registry import build_provider
from imagegate.storage.registry import build_storage
from imagegate.storage.signing import URLSigner, load_or_create_key


def check_settings(settings: Settings) -> None:
    """Raise ConfigError for what loading the settings cannot check alone:
    each model's catalog rules (which may need its provider's options)."""
    for name in settings.models:
        rules_for(settings, name)


def url_signer(settings: Settings) -> URLSigner:
    """Signs hosted image URLs: ``storage.signing_key``, else a key generated
    once in the data directory (so URLs survive restarts)."""
    secret = settings.storage.signing_key
    key = secret.get_secret_value().encode() if secret else load_or_create_key(settings.server.data_dir / "signing.key")
    return URLSigner(key, settings.storage.url_ttl_seconds)


def build_service(settings: Settings) -> ImageService:
    accounting = Accounting(settings)
    fetcher = ImageFetcher(settings.server.fetch)
    context = ProviderContext(max_image_pixels=settings.server.max_image_pixels, fetch_url=fetcher.download)
    providers = {name: build_provider(name, cfg, context) for name, cfg in settings.providers.items()}
    storage = build_storage(settings.storage_url, max_bytes=settings.storage_max_bytes)
    signer = url_signer(settings)
    idempotency = IdempotencyStore(accounting.db)
    sweeper = Sweeper(storage, signer.ttl_seconds, idempotency, accounting, settings.storage.sweep_interval_seconds)
    routes = build_routes(settings)
    log_retirements(settings, routes)
    return ImageService(
        settings,
        accounting=accounting,
        providers=providers,
        routes=routes,
        storage=storage,
        hosted=HostedFiles(storage, signer, settings.server.public_url),
        fetcher=fetcher,
        idempotency=idempotency,
        sweeper=sweeper,
    )
