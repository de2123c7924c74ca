"""One place that turns every failure into OpenAI's error envelope.

``ImagegateError`` subclasses carry their own status, code and param; Starlette's
HTTP errors (unknown route, wrong method) are wrapped; a client that disconnects
mid-upload is one INFO line; anything else is a 500 whose details stay in the
server log. No stack trace ever reaches a client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match, Mount

from imagegate.api.render import JSONBody
from imagegate.errors import ImagegateError, InvalidRequestError

log = logging.getLogger("imagegate.api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}


def error_response(exc: ImagegateError) -> JSONBody:
    return JSONBody(exc.envelope(), status_code=exc.status, headers=exc.headers)


async def _imagegate_error(request: Request, exc: Exception) -> JSONBody:
    assert isinstance(exc, ImagegateError)
    if exc.status >= 500:
        log.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc.message)
    return error_response(exc)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on this path. The router answers 405
    with the methods of the first route whose path matched, not all of them."""
    allowed = set()
    for method in _METHODS:
        probe = {**request.scope, "method": method}
        for route in request.app.router.routes:
            if not isinstance(route, Mount) and route.matches(probe)[0] is Match.FULL:
                allowed.add(method)
                break
    return [m for m in _METHODS if m in allowed]


async def _http_error(request: Request, exc: Exception) -> JSONBody:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = "Not found." if status == 404 else str(exc.detail)
    headers = dict(exc.headers or {})
    if status == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
        headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
    kind = "invalid_request_error" if status < 500 else "server_error"
    err = ImagegateError(message, code=_HTTP_CODES.get(status, "http_error"), status=status, type=kind)
    return JSONBody(err.envelope(), status_code=status, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONBody:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    return error_response(InvalidRequestError(str(first.get("msg", "Invalid request.")), param=".".join(loc) or None))


def internal_error(method: str, path: str, request_id: str | None, exc: BaseException) -> JSONBody:
    """Log an unexpected exception once (with its traceback) and answer the
    envelope's 500; nothing of the exception reaches the client."""
    log.error("unhandled error on %s %s (request %s)", method, path, request_id or "-", exc_info=exc)
    err = ImagegateError("The server had an error while processing your request.", code="internal_error")
    return JSONBody(err.envelope(), status_code=500)


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    # A client that hangs up mid-upload is not a server error: one line, no traceback.
    # Nobody reads the answer (the server drops it); 499 is nginx's "client closed request".
    request_id = request.scope.get("state", {}).get("request_id", "-")
    log.info(
        "client disconnected before its request body was read: %s %s (request %s)", request.method, request.url.path, request_id
    )
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> JSONBody:
    # Normally RequestIdMiddleware answers these (so the 500 carries x-request-id);
    # this catches what escapes the middleware itself.
    return internal_error(request.method, request.url.path, request.scope.get("state", {}).get("request_id"), exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ImagegateError, _imagegate_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected)
