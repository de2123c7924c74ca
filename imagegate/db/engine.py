"""The async engine: SQLite (aiosqlite) by default, PostgreSQL (asyncpg) by URL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Result, event
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from imagegate.errors import ServiceUnavailableError


def default_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{(data_dir / 'imagegate.db').resolve()}"


WRITE = {"sqlite_write": True}


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:  # a DB-API connection
    dbapi_connection.isolation_level = None  # the driver emits no BEGIN; _sqlite_begin does
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")  # writers queue instead of failing
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def ensure_sqlite_dir(url: str) -> None:
    """SQLite creates the file but not its directory."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_begin(conn: Connection) -> None:
    """Write transactions take SQLite's write lock up front (BEGIN IMMEDIATE),
    so they wait their turn under busy_timeout. A deferred transaction that
    reads and then writes fails at once with "database is locked" in WAL mode
    when another writer committed in between."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_write") else "BEGIN")


@contextlib.contextmanager
def _unavailable_as_503() -> Iterator[None]:
    """A database that cannot be reached, is full or times out is a 503 for
    the client (with the cause in the log), never a 500. Constraint
    violations are not outages: they pass through for the caller to handle."""
    try:
        yield
    except IntegrityError:
        raise
    except (DBAPIError, PoolTimeout, OSError) as exc:
        raise ServiceUnavailableError(
            "The gateway's database is unavailable; try again shortly.", code="database_unavailable"
        ) from exc


def is_deadlock(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is PostgreSQL's "deadlock
    detected" (SQLSTATE 40P01): the transaction was rolled back, and running
    its work again may well succeed."""
    seen: BaseException | None = exc
    while seen is not None:
        orig = getattr(seen, "orig", None)
        if getattr(orig, "sqlstate", None) == "40P01" or getattr(orig, "pgcode", None) == "40P01":
            return True
        seen = seen.__cause__
    return False


def make_engine(url: str) -> AsyncEngine:
    ensure_sqlite_dir(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=8, max_overflow=8, pool_timeout=60)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_timeout=60, pool_pre_ping=True)


def sessions(engine: AsyncEngine, *, write: bool = True) -> async_sessionmaker[AsyncSession]:
    """Sessions for transactions that write (the default) or only read."""
    bind = engine.execution_options(**WRITE) if write else engine
    return async_sessionmaker(bind, expire_on_commit=False)


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched (``execute`` is typed as giving
    any Result; for those statements it is a CursorResult)."""
    return cast(CursorResult[Any], result).rowcount


class Database:
    """The engine plus the two ways in: ``transaction()`` for work that writes
    and ``read()`` for queries.

    SQLite allows one writer at a time. Write transactions of this process
    queue on an asyncio lock, so pooled connections never wait on SQLite's
    file lock (whose busy timeout would otherwise decide under heavy load);
    other processes (the CLI) are still handled by busy_timeout. PostgreSQL
    runs write transactions concurrently.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._write = sessions(self.engine)
        self._read = sessions(self.engine, write=False)
        self._lock = asyncio.Lock() if url.startswith("sqlite") else None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        with _unavailable_as_503():
            async with self._lock or contextlib.nullcontext():
                async with self._write() as session, session.begin():
                    yield session

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        with _unavailable_as_503():
            async with self._read() as session:
                yield session

    async def aclose(self) -> None:
        await self.engine.dispose()
