"""The one exception tree of imagegate.

Every error a client can see is an :class:`ImagegateError`. Each carries the
four fields of OpenAI's error envelope (``message``, ``type``, ``param``,
``code``), the HTTP status, and optional response headers (``Retry-After``).
One handler in ``imagegate.api.errors`` turns any of them into::

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

The tree::

    ImagegateError                    500 server_error (base; never raised bare)
    ├── InvalidRequestError           400 invalid_request_error
    │   └── InvalidImageError         400 invalid_request_error, code invalid_image*
    ├── AuthenticationError           401 invalid_request_error, code invalid_api_key
    ├── PermissionDeniedError         403 invalid_request_error
    ├── NotFoundError                 404 invalid_request_error
    ├── GoneError                     410 invalid_request_error
    ├── PayloadTooLargeError          413 invalid_request_error
    ├── UnsupportedMediaTypeError     415 invalid_request_error
    ├── RateLimitError                429 rate_limit_error (with Retry-After)
    ├── ServiceUnavailableError       503 server_error (the database or storage is down; Retry-After)
    └── UpstreamError                 502 api_error (a provider failed)
        └── UpstreamTimeoutError      504 api_error

:class:`ConfigError` is separate: it stops the process at start-up with one
line naming the offending key, and never reaches a client.

Lower layers raise these; they never build HTTP responses themselves.
Errors from third-party libraries are re-raised as one of these with
``raise ... from exc`` so the cause stays in the server log, not in the reply.
"""

from __future__ import annotations

from typing import Any


class ImagegateError(Exception):
    status: int = 500
    type: str = "server_error"
    default_code: str | None = None
    # The upstream may have started (paid) work for the failed call: the router
    # sends the request nowhere else (providers.base.AttemptRecord).
    maybe_started: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:  # an upstream's own status, passed through
            self.status = status
        if type is not None:
            self.type = type
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(ImagegateError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_value"


class InvalidImageError(InvalidRequestError):
    default_code = "invalid_image"


class AuthenticationError(ImagegateError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(ImagegateError):
    status = 403
    type = "invalid_request_error"
    default_code = "permission_denied"


class NotFoundError(ImagegateError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class GoneError(ImagegateError):
    status = 410
    type = "invalid_request_error"
    default_code = "gone"


class PayloadTooLargeError(ImagegateError):
    status = 413
    type = "invalid_request_error"
    default_code = "payload_too_large"


class UnsupportedMediaTypeError(ImagegateError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RateLimitError(ImagegateError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(max(1, round(retry_after))))


class ServiceUnavailableError(ImagegateError):
    """A part of the gateway itself (database, storage) is unavailable."""

    status = 503
    type = "server_error"
    default_code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float = 5, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(max(1, round(retry_after))))


class UpstreamError(ImagegateError):
    status = 502
    type = "api_error"
    default_code = "upstream_error"

    def __init__(self, message: str, *, maybe_started: bool = False, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.maybe_started = maybe_started


class UpstreamTimeoutError(UpstreamError):
    status = 504
    default_code = "upstream_timeout"


class ConfigError(Exception):
    """The configuration is invalid; the message is one line naming the key."""
