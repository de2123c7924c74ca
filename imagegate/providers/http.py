"""The hosted-provider base: what every provider that calls an HTTP API shares.

A hosted provider is a small dialect (paths, request bodies, how its answers
and error bodies read) on :class:`HostedProvider`, which owns the rest:

* **One client per provider** with pooled connections (``max_connections``)
  over the aiohttp transport (``transport.py``); no proxy settings from the
  environment, no redirects followed. ``timeout_seconds`` bounds a whole
  exchange and ``connect_timeout_seconds`` the connect; a deployment's own
  ``timeout``/``connect_timeout`` replace them for its calls (:meth:`~HostedProvider.build`).
* **The credential**: the provider's ``api_key``, or a virtual key's for one
  call, in the header its options name (``auth_header``/``auth_prefix``).
* **One exchange** (:meth:`~HostedProvider.exchange`): send, yield the answer
  with its body unread, and map every failure to the exception tree: a
  timeout is 504 ``upstream_timeout``; no connection, 502
  ``upstream_unreachable``; a connection that broke off (reset, truncated
  body, broken event stream), 502 ``upstream_connection_error``; an error
  answer, :meth:`~HostedProvider.error_from`. Every ImagegateError leaving the
  exchange, those its caller raises inside it included, is redacted
  (``redact.py``): the credentials and configured header values by value,
  token shapes by pattern.
* **Capped reads** (:func:`read_capped`, which the gateway's URL fetcher uses
  too): an answer over ``max_response_mb`` is refused from its
  Content-Length, or as soon as the running count passes it.
* **Result downloads** (:meth:`~HostedProvider.download`): image URLs an
  upstream answers with go through the gateway's SSRF-checked fetcher, never
  with the credential; the configured headers only to the provider's origin.
* **Work that may have started**: ``exchange(..., starts_work=True)`` for a
  request that starts paid work (a job submission) marks the call's
  :class:`~imagegate.providers.base.AttemptRecord` before sending, and lifts the
  mark when the request never got there (no connection) or was refused (an
  answer :meth:`~HostedProvider.refused`). Any other failure leaves it, so
  the router does not submit the job again. Plain exchanges (OpenAI-shaped
  synchronous calls) mark nothing: their failures are retried as usual.

Error answers (:meth:`~HostedProvider.error_from`), in this order:

1. a status neither expected nor 4xx/5xx (1xx, 204, 3xx, 999): 502
   ``invalid_upstream_response``;
2. 401 or 403: 502 ``upstream_auth_error``, naming the provider and repeating
   nothing of the upstream's text (it may quote the key);
3. the upstream's error body as :meth:`~HostedProvider.error_fields` reads it
   (default: OpenAI's envelope ``{"error": {message, type, code, param}}``):
   its status, type, code, param and message pass through, with Retry-After
   and rate-limit headers (:attr:`~HostedProvider.passed_headers`);
4. a body it cannot read: 502 ``invalid_upstream_response``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Container, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import orjson
from httpx_sse import SSEError
from pydantic import Field, SecretStr, field_validator

from imagegate.contract.catalog import MB
from imagegate.contract.results import Deployment
from imagegate.errors import ImagegateError, UpstreamError, UpstreamTimeoutError
from imagegate.providers.base import Provider, ProviderContext, ProviderOptions, current_attempt
from imagegate.providers.redact import redact_error
from imagegate.providers.transport import AiohttpTransport

Files = Sequence[tuple[str, tuple[str, bytes, str]]]  # (field, (filename, bytes, content type))


async def read_capped(response: httpx.Response, max_bytes: int, too_large: Callable[[], Exception]) -> bytes:
    """The body of ``response``; ``too_large()`` is raised as soon as the body
    is known to exceed ``max_bytes`` (from Content-Length before reading, else
    from the running count), so an oversize body is never held whole.
    Transport errors propagate as httpx raises them."""
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:  # str.isdigit takes "²"
        raise too_large()
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def invalid_response(provider: str, what: str) -> UpstreamError:
    """502 ``invalid_upstream_response``: the upstream answered something unusable."""
    return UpstreamError(f"The upstream '{provider}' sent an invalid response: {what}.", code="invalid_upstream_response")


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """An upstream's error body, as its dialect reads it."""

    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None


def error_object(body: bytes) -> dict[str, Any] | None:
    """The ``error`` object of a JSON envelope ``{"error": {"message": <str>, ...}}``
    (OpenAI's, and the dialects' that copy its shape); None for any other body."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("message"), str):
        return None
    return err


def openai_error_fields(body: bytes) -> ErrorFields | None:
    """OpenAI's error envelope ``{"error": {"message", "type", "code", "param"}}``."""
    err = error_object(body)
    if err is None:
        return None
    kind, code, param = err.get("type"), err.get("code"), err.get("param")
    return ErrorFields(
        err["message"],
        type=kind if isinstance(kind, str) else None,
        code=str(code) if code is not None else None,
        param=param if isinstance(param, str) else None,
    )


class HostedOptions(ProviderOptions):
    """The options every hosted provider takes; a dialect's options extend
    them (and may give ``base_url`` a default)."""

    # How the credential is sent; ``headers`` may not set that header (api_key does).
    auth_header: ClassVar[str] = "Authorization"
    auth_prefix: ClassVar[str] = "Bearer "

    base_url: str
    api_key: SecretStr | None = None  # none: no credential header
    headers: dict[str, str] = {}  # sent with every request (e.g. OpenAI-Organization)
    timeout_seconds: float = Field(600.0, gt=0)  # a whole exchange; image generation is slow
    connect_timeout_seconds: float = Field(10.0, gt=0)
    max_connections: int = Field(64, ge=1)
    max_response_mb: float = Field(512.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _no_auth_header(cls, value: dict[str, str]) -> dict[str, str]:
        if any(k.lower() == cls.auth_header.lower() for k in value):
            raise ValueError(f"set api_key instead of an {cls.auth_header} header")
        return value


class HostedProvider(Provider):
    """A provider that calls an HTTP API. A subclass gives ``type_name``, its
    options model (a :class:`HostedOptions`) and the contract's methods,
    built from :meth:`build`, :meth:`exchange`, :meth:`read` and
    :meth:`download`; the hooks :meth:`error_fields`, :meth:`refused` and
    :meth:`auth_headers` adapt the base to its upstream."""

    options_model: ClassVar[type[ProviderOptions]] = HostedOptions
    options: HostedOptions
    # Headers of an error answer that go on to the client.
    passed_headers: ClassVar[frozenset[str]] = frozenset(
        {
            "retry-after",
            "retry-after-ms",
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        }
    )

    def __init__(self, name: str, options: ProviderOptions, context: ProviderContext) -> None:
        if not isinstance(options, HostedOptions):
            raise TypeError(f"{type(self).__name__} needs HostedOptions, not {type(options).__name__}")
        super().__init__(name, options, context)
        self.max_bytes = int(options.max_response_mb * MB)
        key = options.api_key.get_secret_value() if options.api_key else None
        self._own_auth = self.auth_headers(key) if key else {}
        # The one pool of connections; httpx on top for the dialects, and the
        # bare session for the hottest path (job polls, providers/jobs.py).
        self.transport = AiohttpTransport(max_connections=options.max_connections)
        self.client = httpx.AsyncClient(
            base_url=options.base_url,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(options.timeout_seconds, connect=options.connect_timeout_seconds),
            transport=self.transport,
            headers={"User-Agent": "imagegate", **options.headers},
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- hooks -------------------------------------------------------------

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that carry ``api_key`` (default: ``auth_header: auth_prefix + key``)."""
        return {self.options.auth_header: f"{self.options.auth_prefix}{api_key}"}

    def error_fields(self, body: bytes) -> ErrorFields | None:
        """The message, type, code and param of an error answer's body, or None
        when it is not the upstream's error format (default: OpenAI's)."""
        return openai_error_fields(body)

    def refused(self, status: int) -> bool:
        """Whether an error answer with ``status`` means the upstream did not
        take the request (so a ``starts_work`` exchange started nothing):
        4xx and 503; other 5xx may come from a proxy in front of running work."""
        return 400 <= status < 500 or status == 503

    # -- requests ----------------------------------------------------------

    def build(
        self,
        method: str,
        path: str,
        deployment: Deployment,
        *,
        content: bytes | None = None,
        data: Mapping[str, str] | None = None,
        files: Files | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        """A request to ``path`` (under ``base_url``) carrying the credential for
        this call (the deployment's virtual key, else the provider's own) and
        the deployment's timeouts; ``data`` and ``files`` make a multipart body."""
        opts = self.options
        auth = self.auth_headers(deployment.api_key) if deployment.api_key else self._own_auth
        timeout = httpx.Timeout(
            deployment.timeout or opts.timeout_seconds, connect=deployment.connect_timeout or opts.connect_timeout_seconds
        )
        return self.client.build_request(
            method,
            path,
            content=content,
            data=data,
            files=files,
            params=params,
            headers={**auth, **(headers or {})},
            timeout=timeout,
        )

    def secrets(self, deployment: Deployment) -> list[str | None]:
        """What an upstream's text must never pass on: this call's credential,
        the provider's, and its header values (short ones are no secrets and
        would mangle messages)."""
        key = self.options.api_key.get_secret_value() if self.options.api_key else None
        return [deployment.api_key, key, *(v for v in self.options.headers.values() if len(v) >= 8)]

    @asynccontextmanager
    async def exchange(
        self,
        request: httpx.Request,
        deployment: Deployment,
        *,
        ok: Container[int] = (200,),
        starts_work: bool = False,
    ) -> AsyncIterator[httpx.Response]:
        """Send ``request`` and yield its answer (a status in ``ok``) with the
        body unread; the connection is released when the block ends. Failures
        and error answers are mapped and redacted (see the module's doc).
        ``starts_work``: the request starts paid work upstream (see the module's doc)."""
        attempt = current_attempt()
        before = attempt.maybe_started
        try:
            async with asyncio.timeout(self.options.timeout_seconds):
                if starts_work:
                    attempt.maybe_started = True
                try:
                    response = await self.client.send(request, stream=True)
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    attempt.maybe_started = before  # it never got there
                    raise
                try:
                    if response.status_code not in ok:
                        body = await self.read(response)
                        if self.refused(response.status_code):
                            attempt.maybe_started = before
                        raise self.error_from(response.status_code, body, response.headers)
                    yield response
                finally:
                    await response.aclose()
        except ImagegateError as exc:
            redact_error(exc, self.secrets(deployment))
            raise
        except TimeoutError:
            raise self.timeout_error() from None
        except httpx.TimeoutException as exc:
            raise self.timeout_error() from exc
        except httpx.ConnectError as exc:
            raise UpstreamError(f"Could not connect to the upstream '{self.name}'.", code="upstream_unreachable") from exc
        except (httpx.TransportError, SSEError) as exc:
            raise UpstreamError(
                f"The connection to the upstream '{self.name}' broke off ({type(exc).__name__}).",
                code="upstream_connection_error",
            ) from exc

    def timeout_error(self) -> UpstreamTimeoutError:
        return UpstreamTimeoutError(f"The upstream '{self.name}' did not answer within {self.options.timeout_seconds:g} s.")

    async def read(self, response: httpx.Response) -> bytes:
        """The answer's body, at most ``max_response_mb`` (else a 502)."""
        return await read_capped(response, self.max_bytes, self._too_large)

    def _too_large(self) -> UpstreamError:
        return invalid_response(self.name, f"the answer is larger than {self.options.max_response_mb:g} MB")

    async def download(self, url: str) -> bytes:
        """An image the upstream answered with as a URL, through the gateway's
        SSRF-checked fetcher (never with the credential; the configured headers
        only to ``base_url``'s origin), at most ``max_response_mb``."""
        if self.context.fetch_url is None:
            raise invalid_response(self.name, "it answered with an image URL, and this gateway fetches none")
        return await self.context.fetch_url(
            url,
            provider=self.name,
            headers=self.options.headers,
            trusted_origin=self.options.base_url,
            max_bytes=self.max_bytes,
        )

    # -- error answers -----------------------------------------------------

    def error_from(self, status: int, body: bytes, headers: Mapping[str, str]) -> ImagegateError:
        """An error answer as the client's error (rules in the module's doc)."""
        if not 400 <= status <= 599:
            return UpstreamError(
                f"The upstream '{self.name}' answered with HTTP status {status}, which an images API never sends.",
                code="invalid_upstream_response",
            )
        if status in (401, 403):
            return UpstreamError(
                f"The upstream '{self.name}' rejected this gateway's credentials (HTTP {status}); "
                "check the provider's api_key in the gateway's configuration.",
                code="upstream_auth_error",
            )
        fields = self.error_fields(body)
        if fields is None:
            return UpstreamError(
                f"The upstream '{self.name}' answered HTTP {status} without an error envelope "
                f"({headers.get('content-type', 'no content type')}, {len(body)} bytes).",
                code="invalid_upstream_response",
            )
        passed = {k.title(): v for k, v in headers.items() if k.lower() in self.passed_headers}
        return ImagegateError(
            fields.message,
            status=status,
            type=fields.type if fields.type is not None else ("api_error" if status >= 500 else "invalid_request_error"),
            code=fields.code,
            param=fields.param,
            headers=passed,
        )
