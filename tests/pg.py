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


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an asyncpg SQLAlchemy URL of a fresh, empty database."""
    bindir = _bindir()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = tempfile.mkdtemp(prefix="imagegate-pg-", dir="/tmp")
    data = os.path.join(base, "data")
    if as_root:
        shutil.chown(base, "postgres", "postgres")
    port = _free_port()
    log = os.path.join(base, "server.log")

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "imagegate", "--no-sync")
    run(f"{bindir}/pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "start",
        "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200")  # fmt: skip
    try:
        run(f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "imagegate", "imagegate")
        yield f"postgresql+asyncpg://imagegate@127.0.0.1:{port}/imagegate"
    finally:
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)
