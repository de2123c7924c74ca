"""A throwaway PostgreSQL server for the tests: initdb into a temp dir, start
it on a free loopback port, create a database, stop and delete it after.

PostgreSQL refuses to run as root, so under root (CI) the server runs as the
``postgres`` user that Debian's package creates. ``scripts/test`` installs the
package when it is missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def _bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: run scripts/test, which installs them")
    return os.path.dirname(found[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresInstance:
    """A running throwaway server that a test may stop and start again."""

    def __init__(self, bindir: str, base: str, port: int, prefix: list[str]) -> None:
        self.bindir, self.base, self.port, self.prefix = bindir, base, port, prefix
        self.data = os.path.join(base, "data")
        self.url = f"postgresql+asyncpg://imagegate@127.0.0.1:{port}/imagegate"

    def run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self.run(f"{self.bindir}/pg_ctl", "-D", self.data, "-l", os.path.join(self.base, "server.log"), "-w", "-t", "60",
                 "start", "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
                 "-c max_connections=200")  # fmt: skip

    def stop(self) -> None:
        subprocess.run([*self.prefix, f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip


@contextmanager
def postgres_instance() -> Iterator[PostgresInstance]:
    """A fresh server with an empty ``imagegate`` database; deleted after."""
    bindir = _bindir()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = tempfile.mkdtemp(prefix="imagegate-pg-", dir="/tmp")
    if as_root:
        shutil.chown(base, "postgres", "postgres")
    pg = PostgresInstance(bindir, base, _free_port(), prefix)
    pg.run(f"{bindir}/initdb", "-D", pg.data, "-A", "trust", "-U", "imagegate", "--no-sync")
    pg.start()
    try:
        pg.run(f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "imagegate", "imagegate")
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an asyncpg SQLAlchemy URL of a fresh, empty database."""
    with postgres_instance() as pg:
        yield pg.url
