"""``create_app(settings)``: the ASGI application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from imagegate import __version__
from imagegate.api import files, images, meta
from imagegate.api.deps import key_digests
from imagegate.api.errors import install_error_handlers
from imagegate.api.middleware import build_middleware
from imagegate.config import Settings
from imagegate.gateway.service import ImageService

log = logging.getLogger("imagegate")


def create_app(settings: Settings, service: ImageService | None = None) -> FastAPI:
    service = service or ImageService.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(service.sweep_forever(), name="imagegate-sweeper")
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await service.aclose()

    app = FastAPI(
        title="imagegate",
        version=__version__,
        description="One OpenAI-compatible Images API in front of every image model.",
        lifespan=lifespan,
        middleware=build_middleware(int(settings.server.max_body_mb * 1024 * 1024)),
    )
    app.state.service = service
    app.state.api_key_digests = key_digests([k.get_secret_value() for k in settings.auth.api_keys])
    if not settings.auth.api_keys:
        log.warning("auth.api_keys is empty: the API accepts requests without a key")
    install_error_handlers(app)
    app.include_router(images.router)
    app.include_router(files.router)
    app.include_router(meta.router)
    return app
