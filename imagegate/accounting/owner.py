"""Which server process holds something (a budget reservation, an idempotency
claim), and whether that process is known to be gone.

An owner is ``host:pid:token``: the host name, the process id and a random
token drawn when the process starts. A holder is known to be gone when it
ran on this host and either has this process's pid but another token (the
previous life of a process that restarted with the same pid, as PID 1 in a
container does) or its pid no longer exists. Anything else (another host, a
live pid) is left to its expiry: a live process on the same host may be
another replica.
"""

from __future__ import annotations

import os
import secrets
import socket
from functools import cache


@cache
def this_process() -> str:
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(6)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def is_gone(owner: str) -> bool:
    """True only when ``owner`` is certainly not a running process."""
    me = this_process()
    if owner == me:
        return False
    host, pid_text, _ = _split(owner)
    my_host, my_pid, _ = _split(me)
    if host is None or host != my_host or not (pid_text.isascii() and pid_text.isdecimal()):
        return False
    pid = int(pid_text)
    if pid == int(my_pid):
        return True  # our pid, another token: our previous life
    return not _pid_alive(pid)


def _split(owner: str) -> tuple[str | None, str, str]:
    parts = owner.rsplit(":", 2)
    if len(parts) != 3:
        return None, "", ""
    return parts[0], parts[1], parts[2]
