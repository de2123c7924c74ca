"""The HTTP server: uvicorn, with the limits it lacks.

uvicorn's httptools protocol (its fastest) reads a request head of any size,
waits forever for a head or a body that never completes, and serves any
number of connections. :class:`GuardedHttpProtocol` is that protocol plus,
per connection:

* a cap on the request head (request line and headers):
  ``server.max_header_kb``; past it the client gets 431 and the connection
  closes, before the parser spends time on the excess;
* a head deadline: ``server.header_timeout_seconds`` from the connection's
  start (for later requests on a kept-alive connection: from their first
  byte) to the end of the head, else 408 and close: slowloris clients that
  trickle a head are cut off;
* a body idle timeout: a request body that stops arriving for
  ``server.body_timeout_seconds`` closes the connection (the app sees a
  disconnect). Time in which the app is not reading does not count;
* a connection cap: a request that arrives while more than
  ``server.max_connections`` connections are open gets 503 and the
  connection closes (uvicorn's ``limit_concurrency``, in the OpenAI error
  envelope). Idle connections count, so the head deadline is what keeps
  idle attackers from holding the cap.

Errors sent from here use the OpenAI envelope; after one, the connection is
half-closed and what the client still sends is read and dropped for a moment
("lingering close") so that it reads the answer instead of a reset.

:func:`uvicorn_options` is the one place the server's settings become
uvicorn's: ``imagegate serve`` and the test harness both use it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from imagegate.config import ServerConfig
from imagegate.errors import ImagegateError, InvalidRequestError, ServiceUnavailableError

logger = logging.getLogger("imagegate.server")

LINGER_SECONDS = 2.0  # how long a rejected client may go on sending before the close


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_head_bytes: int
    header_timeout: float
    body_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, server: ServerConfig) -> HttpLimits:
        return cls(
            max_head_bytes=server.max_header_kb * 1024,
            header_timeout=server.header_timeout_seconds,
            body_timeout=server.body_timeout_seconds,
            max_connections=server.max_connections,
        )


def uvicorn_options(server: ServerConfig) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run``."""
    return {
        "http": functools.partial(GuardedHttpProtocol, limits=HttpLimits.from_settings(server)),
        "backlog": server.backlog,
    }


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def _headers(error: ImagegateError, body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
        (b"connection", b"close"),
    ]


def _response(error: ImagegateError) -> bytes:
    """``error`` as a whole HTTP/1.1 response, for answers sent before any app runs."""
    body = orjson.dumps(error.envelope())
    head = b"".join(b"%s: %s\r\n" % header for header in _headers(error, body))
    return b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (error.status, _REASONS[error.status], head, body)


_BUSY = ServiceUnavailableError("The server has too many open connections; retry shortly.", code="server_busy", retry_after=1)
_BUSY_BODY = orjson.dumps(_BUSY.envelope())


async def _busy(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app that answers a request over the connection cap."""
    await send({"type": "http.response.start", "status": _BUSY.status, "headers": _headers(_BUSY, _BUSY_BODY)})
    await send({"type": "http.response.body", "body": _BUSY_BODY})


_TIMEOUT = InvalidRequestError("The request head was not received in time.", status=408, code="request_timeout")


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head size cap, head and body
    timeouts and a connection cap (see the module docstring)."""

    cap_warned_at: ClassVar[float] = float("-inf")  # when the connection cap was last logged

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HttpLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._in_head = True  # reading a request head (or waiting for one to start)
        self._head_bytes = 0
        self._heads = 0  # heads completed on this connection
        self._timer: asyncio.TimerHandle | None = None
        self._body_at = 0.0  # loop time the body last made progress
        self._rejected = False  # an error was sent: drop whatever still comes in

    # -- connection -------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn declares it
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        if not self._in_head:
            super().data_received(data)
            return
        room = self.limits.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what fits: if the head is not complete by then, it is too large.
        heads = self._heads
        self._head_bytes += room
        if room:
            super().data_received(data[:room])
        if self._heads == heads:
            self._reject(_too_large(self.limits.max_head_bytes))
        elif not self.transport.is_closing():
            self.data_received(data[room:])

    # -- parser callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:  # a later request on a kept-alive connection
            self._arm(self.limits.header_timeout, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._in_head = False
        self._body_at = self.loop.time()
        self._arm(self.limits.body_timeout, self._body_timed_out)
        if len(self.connections) <= self.limits.max_connections:
            super().on_headers_complete()
            return
        now = self.loop.time()
        if now - GuardedHttpProtocol.cap_warned_at >= 60:  # a warning a minute at most
            GuardedHttpProtocol.cap_warned_at = now
            logger.warning("over server.max_connections (%d open): answering 503", len(self.connections))
        app, self.app = self.app, _busy
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_body(self, body: bytes) -> None:
        self._body_at = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection is the WebSocket protocol's from here
        super().handle_websocket_upgrade()

    # -- timers ---------------------------------------------------------------

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes:
            logger.debug("closing a connection whose request head took over %g s", self.limits.header_timeout)
            self._reject(_TIMEOUT)
        else:  # nothing was sent: no request to answer
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue):  # app not reading
            self._body_at = now
        idle = now - self._body_at
        if idle < self.limits.body_timeout:
            self._arm(self.limits.body_timeout - idle, self._body_timed_out)
            return
        logger.debug("closing a connection whose request body stalled for %g s", self.limits.body_timeout)
        self.transport.close()

    # -- errors -------------------------------------------------------------

    def _reject(self, error: ImagegateError) -> None:
        """Answer ``error`` and close, unless a response is under way on this
        connection (a pipelined request): then just close."""
        self._rejected = True
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()
            return
        self.transport.write(_response(error))
        self.flow.resume_reading()  # read and drop what is still coming, for a moment
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)


def _too_large(limit: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"The request line and headers are larger than this server's limit of {limit // 1024} KB.",
        status=431,
        code="request_header_too_large",
    )
