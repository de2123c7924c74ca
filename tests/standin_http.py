"""The HTTP plumbing the loopback stand-ins (``tests/standin_*.py``) share.

:class:`StandInServer` is a threaded HTTP/1.1 server on a free 127.0.0.1
port that serves while entered as a context manager and records what it
receives; :class:`Handler` is a request handler with what every stand-in's
protocol needs (the body, the headers, an answer with a length, a JSON
answer, the head of an event stream, a reset connection). Each stand-in's
protocol, and where it is documented, is in that stand-in's own docstring.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import http.server
import json
import socket
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, Self, TypeVar

R = TypeVar("R")  # a stand-in's record of one request
F = TypeVar("F")  # a stand-in's scripted fault


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def header_map(self) -> dict[str, str]:
        """The request's headers, their names in lower case."""
        return {k.lower(): v for k, v in self.headers.items()}

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def start_events(self) -> None:
        """A 200 Server-Sent Events head; no Content-Length: the body ends when the connection closes."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.close_connection = True

    def reset_connection(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a crashed upstream would."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer (the gateway abandoning an
        oversized download, a cancelled attempt) is expected: not a traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class StandInServer(Generic[R, F]):
    """Serves ``handler`` on 127.0.0.1 while entered: ``origin`` is
    ``http://127.0.0.1:<port>``, ``base_url`` the origin and ``prefix``.
    ``received`` holds the requests :meth:`record` was given, ``script`` the
    faults to answer with, the next one first."""

    def __init__(self, handler: type[Handler], prefix: str) -> None:
        self.received: list[R] = []
        self.script: deque[F] = deque()
        self._lock = threading.Lock()
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.base_url = f"{self.origin}{prefix}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def record(self, rec: R) -> F | None:
        """Keep a received request; the next scripted fault, if there is one."""
        with self._lock:
            self.received.append(rec)
            return self.script.popleft() if self.script else None

    def reset(self) -> None:
        """Forget what was received and scripted (a stand-in adds its own state)."""
        self.received.clear()
        self.script.clear()


def multipart_parts(ctype: str, body: bytes) -> Iterator[email.message.MIMEPart]:
    """The parts of a ``multipart/form-data`` body whose Content-Type header is ``ctype``."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
    yield from msg.iter_parts()


def map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """``value`` with ``change`` applied to every string in it, through lists and dict values."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [map_strings(v, change) for v in value]
    if isinstance(value, dict):
        return {k: map_strings(v, change) for k, v in value.items()}
    return value
