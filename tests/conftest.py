"""Shared fixtures: real imagegate servers on loopback."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from support import BASE_CONFIG, Running, run_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with run_server(BASE_CONFIG, tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Running]]:
    """Start a server with its own config (stopped at the end of the test)."""
    stack: list[Any] = []

    def start(config: dict[str, Any]) -> Running:
        cm = run_server(config, tmp_path / f"s{len(stack)}")
        stack.append(cm)
        return cm.__enter__()

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def client(server: Running) -> Iterator[OpenAI]:
    sdk = server.sdk()
    yield sdk
    sdk.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL on loopback for this test session (see tests/pg.py)."""
    from pg import postgres_server

    with postgres_server() as url:
        yield url


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests on a fresh event loop (no plugin needed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True
