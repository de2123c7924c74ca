"""200 concurrent requests against a small budget never overspend it, on
SQLite and on a real PostgreSQL; and the migrations build exactly the models'
schema on both."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from imagegate.db.migrate import alembic_config, current, upgrade
from imagegate.db.models import Base
from support import Running

MASTER = "master-key-for-the-tests-0123456789"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path) -> Iterator[str | None]:  # noqa: ANN001
    if request.param == "sqlite":
        yield None  # the default: a SQLite file in the data directory
        return
    base = request.getfixturevalue("postgres_url")
    name = f"t{abs(hash(request.node.nodeid)) % 10**8}"
    asyncio.run(_create_database(base, name))
    yield base.rsplit("/", 1)[0] + "/" + name


async def _create_database(url: str, name: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()


def _config(database: str | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "auth": {"master_key": MASTER},
        "pricing": {"test-pattern": {"per_image": 0.01}},
        "providers": {"demo": {"type": "test-pattern"}},
        "models": {"test-pattern": [{"provider": "demo"}]},
    }
    if database:
        cfg["database"] = {"url": database}
    return cfg


async def _storm(base: str, secret: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        body = {"model": "test-pattern", "prompt": "storm", "size": "64x64"}
        headers = {"Authorization": f"Bearer {secret}"}
        return await asyncio.gather(*(client.post("/v1/images/generations", json=body, headers=headers) for _ in range(count)))


def test_200_concurrent_requests_never_overspend(database: str | None, make_server) -> None:
    running: Running = make_server(_config(database))
    admin = {"Authorization": f"Bearer {MASTER}"}
    key = httpx.post(f"{running.base_url}/admin/keys", headers=admin, json={"name": "storm", "budget_usd": 0.5}).json()
    responses = asyncio.run(_storm(running.base_url, key["key"], 200))
    statuses = [r.status_code for r in responses]
    others = [(r.status_code, r.text[:300]) for r in responses if r.status_code not in (200, 429)]
    assert not others, others
    assert statuses.count(200) == 50, statuses
    assert statuses.count(429) == 150
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in responses if r.status_code == 429)
    charged = sum(Decimal(r.headers["x-imagegate-cost-usd"]) for r in responses)
    assert charged == Decimal("0.50")
    state = httpx.get(f"{running.base_url}/admin/keys/{key['id']}", headers=admin).json()
    assert (state["spent_usd"], state["reserved_usd"]) == ("0.500000", "0.000000")
    usage = httpx.get(f"{running.base_url}/admin/usage", headers=admin, params={"key": key["id"], "group_by": "key"}).json()
    assert usage["data"][0]["requests"] == 200 and usage["data"][0]["cost_usd"] == "0.500000"


def test_migrations_build_the_models_schema(database: str | None, tmp_path) -> None:  # noqa: ANN001
    url = database or f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    assert current(url) == ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    upgrade(url)  # idempotent

    async def diff() -> list[Any]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
        finally:
            await engine.dispose()

    assert asyncio.run(diff()) == []
