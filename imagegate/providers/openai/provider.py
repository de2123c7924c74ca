"""``openai``: OpenAI itself, or any upstream that speaks the OpenAI Images API
(another gateway, a reseller, a self-hosted server).

One pooled HTTP client per provider. Requests carry exactly what the client
sent, with the deployment's model name; answers, errors, usage and streams
come back faithfully (see ``wire.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import orjson
from httpx_sse import EventSource, SSEError
from pydantic import Field, SecretStr, field_validator

from imagegate.contract.catalog import GENERATIONS, MB, FreeSizeRule, permissive
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import CompletedImage, Deployment, GeneratedImage, PartialImage, ProviderResult
from imagegate.errors import ImagegateError, UpstreamError, UpstreamTimeoutError
from imagegate.providers.base import Provider, ProviderOptions
from imagegate.providers.openai import wire
from imagegate.providers.openai.fastjson import loads_images
from imagegate.providers.redact import redact_error
from imagegate.providers.transport import AiohttpTransport

# Rules for a model name the catalog does not know (e.g. FLUX behind an
# OpenAI-compatible gateway): accept every spec field and extension and let
# the upstream decide; its errors come back faithfully.
OPENAI_COMPATIBLE_RULES = permissive(
    "openai-compatible", FreeSizeRule(multiple_of=1, max_edge=8192, max_pixels=8192 * 8192, max_aspect=8.0)
)


class OpenAIOptions(ProviderOptions):
    base_url: str = "https://api.openai.com/v1"
    api_key: SecretStr | None = None  # none: no Authorization header
    headers: dict[str, str] = {}  # sent with every request (e.g. OpenAI-Organization)
    timeout_seconds: float = Field(600.0, gt=0)  # the whole request, image generation is slow
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
        if any(k.lower() == "authorization" for k in value):
            raise ValueError("set api_key instead of an Authorization header")
        return value


class OpenAIProvider(Provider):
    type_name: ClassVar[str] = "openai"
    options_model = OpenAIOptions
    default_rules = OPENAI_COMPATIBLE_RULES
    options: OpenAIOptions

    def __init__(self, name: str, options: OpenAIOptions, context: Any) -> None:  # type: ignore[override]
        super().__init__(name, options, context)
        self._auth = {"Authorization": f"Bearer {options.api_key.get_secret_value()}"} if options.api_key else {}
        self._max_bytes = int(options.max_response_mb * MB)
        self._client = httpx.AsyncClient(
            base_url=options.base_url,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(options.timeout_seconds, connect=options.connect_timeout_seconds),
            transport=AiohttpTransport(max_connections=options.max_connections),
            headers={"User-Agent": "imagegate", **options.headers},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- the request -------------------------------------------------------

    def _build(self, request: ImageRequest, deployment: Deployment) -> httpx.Request:
        path = wire.PATHS[request.endpoint]
        auth = {"Authorization": f"Bearer {deployment.api_key}"} if deployment.api_key else self._auth
        extra: dict[str, Any] = {}
        if deployment.connect_timeout is not None or deployment.timeout is not None:
            read = deployment.timeout or self.options.timeout_seconds
            extra["timeout"] = httpx.Timeout(read, connect=deployment.connect_timeout or self.options.connect_timeout_seconds)
        if request.endpoint == GENERATIONS:
            body = wire.json_body(request, deployment.model)
            headers = {**auth, "Content-Type": "application/json"}
            return self._client.build_request("POST", path, content=body, headers=headers, **extra)
        data, files = wire.multipart(request, deployment.model)
        return self._client.build_request("POST", path, data=data, files=files, headers=auth, **extra)

    def _secrets(self, deployment: Deployment) -> list[str | None]:
        """What an upstream's text must never pass on: this call's credential,
        the provider's, and its header values (short ones are no secrets and
        would mangle messages)."""
        key = self.options.api_key.get_secret_value() if self.options.api_key else None
        return [deployment.api_key, key, *(v for v in self.options.headers.values() if len(v) >= 8)]

    @asynccontextmanager
    async def _exchange(self, request: ImageRequest, deployment: Deployment) -> AsyncIterator[httpx.Response]:
        """Send, map transport failures and error answers; yield a 200 response
        whose body has not been read yet. Every error raised in the exchange,
        stream errors included, leaves here with its secrets redacted."""
        try:
            async with asyncio.timeout(self.options.timeout_seconds):
                response = await self._client.send(self._build(request, deployment), stream=True)
                try:
                    if response.status_code != 200:
                        body = await self._read(response)
                        raise wire.error_from(self.name, response.status_code, body, dict(response.headers))
                    yield response
                finally:
                    await response.aclose()
        except ImagegateError as exc:
            redact_error(exc, self._secrets(deployment))
            raise
        except TimeoutError:
            raise self._timeout() from None
        except httpx.TimeoutException as exc:
            raise self._timeout() from exc
        except httpx.ConnectError as exc:
            raise UpstreamError(f"Could not connect to the upstream '{self.name}'.", code="upstream_unreachable") from exc
        except (httpx.TransportError, SSEError) as exc:
            raise UpstreamError(
                f"The connection to the upstream '{self.name}' broke off ({type(exc).__name__}).",
                code="upstream_connection_error",
            ) from exc

    def _timeout(self) -> UpstreamTimeoutError:
        return UpstreamTimeoutError(
            f"The upstream '{self.name}' did not answer within {self.options.timeout_seconds:g} s.",
        )

    async def _read(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise wire.invalid(self.name, f"the answer is larger than {self.options.max_response_mb:g} MB")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > self._max_bytes:
                raise wire.invalid(self.name, f"the answer is larger than {self.options.max_response_mb:g} MB")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- the contract ------------------------------------------------------

    async def run(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        async with self._exchange(request, deployment) as response:
            payload = wire.parse_json(self.name, await self._read(response))
            images = [await self._image(request, item) for item in wire.result_items(self.name, payload)]
            return wire.build_result(self.name, images, payload)

    generate = edit = variation = run

    async def _image(self, request: ImageRequest, item: dict[str, Any]) -> GeneratedImage:
        if item.get("b64_json") is not None:
            return wire.decode_image(self.name, item["b64_json"], request, item.get("revised_prompt"))
        url = item.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise wire.invalid(self.name, "an image has neither b64_json nor an http(s) url")
        if self.context.fetch_url is None:
            raise wire.invalid(self.name, "it answered with an image URL, and this gateway fetches none")
        # Through the gateway's SSRF-checked fetcher, never with the Authorization
        # header; the custom headers only to the provider's own origin.
        data = await self.context.fetch_url(
            url,
            provider=self.name,
            headers=self.options.headers,
            trusted_origin=self.options.base_url,
            max_bytes=self._max_bytes,
        )
        return wire.image_from_bytes(self.name, data, request, item.get("revised_prompt"))

    async def stream(self, request: ImageRequest, deployment: Deployment) -> AsyncIterator[PartialImage | CompletedImage]:
        if not request.stream:  # the client asked no stream: one answer, replayed as completions
            async for item in super().stream(request, deployment):
                yield item
            return
        completed = 0
        async with self._exchange(request, deployment) as response:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise wire.invalid(self.name, "a streaming request was not answered with text/event-stream")
            async for event in EventSource(response).aiter_sse():
                if not event.data or event.data == "[DONE]":
                    continue
                try:
                    payload = loads_images(event.data.encode())
                except orjson.JSONDecodeError:
                    raise wire.invalid(self.name, "a stream event is not JSON") from None
                if not isinstance(payload, dict):
                    raise wire.invalid(self.name, "a stream event is not a JSON object")
                kind = str(payload.get("type") or event.event)
                if kind == "error" or event.event == "error":
                    raise wire.stream_error(self.name, payload)
                image = wire.decode_image(self.name, payload.get("b64_json"), request, payload.get("revised_prompt"))
                meta = wire.parse_meta(payload, "created_at")
                if kind.endswith(".partial_image"):
                    index = payload.get("partial_image_index")
                    yield PartialImage(index if isinstance(index, int) else 0, image, meta)
                elif kind.endswith(".completed"):
                    completed += 1
                    yield CompletedImage(image, wire.parse_usage(payload.get("usage"), self.name), meta)
        if not completed:
            raise UpstreamError(
                f"The upstream '{self.name}' ended the stream before any completed image.", code="upstream_stream_incomplete"
            )
