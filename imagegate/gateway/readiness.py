"""Readiness (``/readyz``): whether this process can take requests now.

One check per part a request needs: the image store (writable), the
database (answers ``SELECT 1``), and each provider (its own ``ready``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sqlalchemy import text

from imagegate.db.engine import Database
from imagegate.providers.base import Provider
from imagegate.storage.base import Storage

log = logging.getLogger("imagegate.gateway")


async def readiness(storage: Storage, db: Database, providers: Mapping[str, Provider]) -> dict[str, bool]:
    checks = {"storage": await storage.ready(), "database": await database_ready(db)}
    for name, provider in providers.items():
        checks[f"provider:{name}"] = await provider.ready()
    return checks


async def database_ready(db: Database) -> bool:
    try:
        async with db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        log.exception("database not ready")
        return False
