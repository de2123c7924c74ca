"""``create_app(settings)``: the ASGI application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from imagegate import __version__
from imagegate.api import admin, files, images, jobs, meta, openapi
from imagegate.api.docs import install_docs
from imagegate.api.errors import install_error_handlers
from imagegate.api.middleware import build_middleware
from imagegate.config import Settings
from imagegate.gateway.service import ImageService
from imagegate.gateway.wiring import build_service

log = logging.getLogger("imagegate")


def create_app(settings: Settings, service: ImageService | None = None) -> FastAPI:
    service = service or build_service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()  # database migrations
        sweeper = asyncio.create_task(service.sweeper.forever(), name="imagegate-sweeper")
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
        middleware=build_middleware(int(settings.server.max_body_mb * 1024 * 1024), settings.server.cors),
        docs_url=None,  # served by api.docs, with local assets
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationId: the route function's name
    )
    app.state.service = service
    install_error_handlers(app)
    app.include_router(images.router)
    app.include_router(jobs.router)
    app.include_router(files.router)
    app.include_router(meta.router)
    app.include_router(admin.router)
    openapi.install(app, settings)
    install_docs(app)
    return app
