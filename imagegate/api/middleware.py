"""ASGI middleware, and the one function that sets their order.

Order, outermost first:

0. ``CORSMiddleware`` (Starlette's; only when ``server.cors`` names origins) -
   outermost, so every answer carries ``Access-Control-Allow-Origin``, the
   500 that ``RequestIdMiddleware`` itself writes for an unexpected exception
   and the 413 of the body limit included: a browser hides an answer without
   it, status, envelope and request id alike. Preflight ``OPTIONS`` requests
   are answered by it before anything else runs (no request id, no cost
   header: they never reach the API).
1. ``RequestIdMiddleware`` - every response, errors included, carries
   ``x-request-id`` and ``x-imagegate-cost-usd`` (0 unless a request ran);
   an unexpected exception is answered here as the envelope's 500.
2. ``BodyLimitMiddleware`` - a body over ``server.max_body_mb`` gets 413
   before it is read: at once when ``Content-Length`` says so, else as soon
   as the running count passes the limit.
"""

from __future__ import annotations

import re
import secrets

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegate.api.errors import error_response, internal_error
from imagegate.api.render import JSONBody
from imagegate.config import CorsConfig
from imagegate.errors import ImagegateError, InvalidRequestError, PayloadTooLargeError

_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # fullmatch: no trailing newline into logs
COST_HEADER = "x-imagegate-cost-usd"
RESERVED_HEADER = "x-imagegate-cost-reserved-usd"
_NO_COST = (COST_HEADER.encode(), b"0.000000")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _CLIENT_ID.fullmatch(incoming) else f"req_{secrets.token_hex(12)}"
        scope.setdefault("state", {})["request_id"] = request_id

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                names = {name.lower() for name, _ in headers}
                # Every response says what it cost; one that did not run a request cost nothing.
                if COST_HEADER.encode() not in names and RESERVED_HEADER.encode() not in names:
                    headers.append(_NO_COST)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Answered here, inside this middleware, so the 500 carries the request id
            # (Starlette's own handler for Exception runs outside every middleware).
            if started:
                raise  # the answer has begun; the server ends it
            if isinstance(exc, ImagegateError):  # raised outside the routes (a middleware's own)
                response = error_response(exc)
            else:
                response = internal_error(scope.get("method", ""), scope.get("path", ""), request_id, exc)
            await response(scope, receive, send_with_id)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is larger than this server's limit of {self.max_bytes // (1024 * 1024)} MB.",
            code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            err = self._error()
            response = JSONBody(err.envelope(), status_code=err.status, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._error()
            return message

        await self.app(scope, counting_receive, send)


class _CORSMiddleware(CORSMiddleware):
    """Starlette's, with a refused preflight answered in the error envelope
    and without any ``Access-Control-*`` header."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        reason = bytes(response.body).decode()  # "Disallowed CORS origin, method, headers"
        err = InvalidRequestError(f"{reason}.", code="cors_preflight_refused")
        return JSONBody(err.envelope(), status_code=400)


def _cors(cors: CorsConfig) -> Middleware:
    return Middleware(
        _CORSMiddleware,
        allow_origins=cors.allow_origins,
        allow_origin_regex=cors.allow_origin_regex,
        allow_methods=cors.allow_methods,
        allow_headers=cors.allow_headers,
        expose_headers=cors.expose_headers,
        allow_credentials=cors.allow_credentials,
        max_age=cors.max_age,
    )


def build_middleware(max_body_bytes: int, cors: CorsConfig | None = None) -> list[Middleware]:
    return [
        *([_cors(cors)] if cors is not None and cors.enabled else []),
        Middleware(RequestIdMiddleware),
        Middleware(BodyLimitMiddleware, max_bytes=max_body_bytes),
    ]
