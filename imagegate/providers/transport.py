"""An httpx transport over aiohttp, for providers' upstream connections.

Providers keep httpx's API (requests, streaming, timeouts, exceptions); the
bytes move through aiohttp's C HTTP parser, which reads a multi-megabyte
answer for about a third of the CPU of httpx's default transport (measured
with bench/overhead.py: 1.6 ms vs 4.2 ms for a 3 MB body). One connection
pool per transport, so one per provider.

aiohttp's failures become the httpx exceptions callers already handle:

=========================================  ===========================
aiohttp                                    httpx
=========================================  ===========================
ConnectionTimeoutError                     ConnectTimeout
ServerTimeoutError / asyncio timeout       ReadTimeout
ClientConnectorError (refused, DNS)        ConnectError
ServerDisconnectedError, ClientOSError     ReadError (reset, closed)
ClientPayloadError (truncated body)        RemoteProtocolError
ClientResponseError (malformed answer)     RemoteProtocolError
any other ClientError                      TransportError
=========================================  ===========================
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx

_READ_CHUNK = 1 << 20


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timeout") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise httpx.ReadTimeout(str(exc) or "read timeout") from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise httpx.ReadError(str(exc) or "server disconnected") from exc
    except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
        raise httpx.RemoteProtocolError(str(exc)) from exc
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(str(exc) or type(exc).__name__) from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped():
            while chunk := await self._response.content.read(_READ_CHUNK):
                yield chunk

    async def aclose(self) -> None:
        # A body read to the end frees the connection for reuse; otherwise close it.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


async def _request_body(request: httpx.Request) -> AsyncIterator[bytes]:
    stream = request.stream
    if not isinstance(stream, httpx.AsyncByteStream):  # httpx's own bodies (bytes, multipart) are both kinds
        raise TypeError("an async transport needs a request body it can read asynchronously")
    async for chunk in stream:
        yield chunk


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_connections: int = 100, keepalive_seconds: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The pooled aiohttp session itself (made on first use, in the loop)."""
        return self._client()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made inside the running event loop
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=self._keepalive)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False)
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        headers = dict(request.headers)
        try:
            data: bytes | AsyncIterator[bytes] | None = request.content or None
        except httpx.RequestNotRead:  # multipart: stream it, Content-Length is set
            data = _request_body(request)
        with _mapped():
            response = await self._client().request(
                request.method,
                str(request.url),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(sock_connect=timeout.get("connect"), sock_read=timeout.get("read")),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                server_hostname=request.extensions.get("sni_hostname"),
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
