"""``openai``: OpenAI itself, or any upstream that speaks the OpenAI Images API
(another gateway, a reseller, a self-hosted server).

A user of the hosted-provider base (``providers/http.py``: pooled client,
timeouts, error mapping, capped reads, result downloads); the dialect - paths,
bodies, answers, usage and stream events - is ``wire.py``. Requests carry
exactly what the client sent, with the deployment's model name; answers,
errors, usage and streams come back faithfully.

Calls are synchronous (the answer is the image), so they never mark their
attempt as having started work: a timeout or broken connection is retried
like any other (``providers.base.AttemptRecord``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

import httpx
import orjson
from httpx_sse import EventSource

from imagegate.contract.catalog import GENERATIONS
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import CompletedImage, Deployment, GeneratedImage, PartialImage, ProviderResult, StreamItem
from imagegate.errors import UpstreamError
from imagegate.providers.base import ProviderOptions
from imagegate.providers.http import HostedOptions, HostedProvider, invalid_response
from imagegate.providers.openai import wire
from imagegate.providers.openai.fastjson import loads_images


class OpenAIOptions(HostedOptions):
    base_url: str = "https://api.openai.com/v1"
    # A request field the model's catalog entry does not know: sent upstream
    # untouched (forward) or refused with 400 unknown_parameter (reject).
    # Default: the entry decides (unlisted models forward, listed ones reject).
    unknown_fields: Literal["forward", "reject"] | None = None


class OpenAIProvider(HostedProvider):
    type_name: ClassVar[str] = "openai"
    options_model = OpenAIOptions
    # Rules for a model name the catalog does not know (e.g. FLUX behind an
    # OpenAI-compatible gateway): every spec field and extension, unknown
    # fields forwarded; the upstream decides and its errors come back faithfully.
    default_rules: ClassVar[str | None] = "openai-compatible"
    options: OpenAIOptions

    @classmethod
    def unknown_fields(cls, options: ProviderOptions) -> Literal["forward", "reject"] | None:
        return options.unknown_fields if isinstance(options, OpenAIOptions) else None

    def _request(self, request: ImageRequest, deployment: Deployment) -> httpx.Request:
        path = wire.PATHS[request.endpoint]
        if request.endpoint == GENERATIONS:
            body = wire.json_body(request, deployment.model)
            return self.build("POST", path, deployment, content=body, headers={"Content-Type": "application/json"})
        data, files = wire.multipart(request, deployment.model)
        return self.build("POST", path, deployment, data=data, files=files)

    # -- the contract ------------------------------------------------------

    async def run(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        async with self.exchange(self._request(request, deployment), deployment) as response:
            payload = wire.parse_json(self.name, await self.read(response))
            images = [await self._image(request, item) for item in wire.result_items(self.name, payload)]
            return wire.build_result(self.name, images, payload)

    generate = edit = variation = run

    async def _image(self, request: ImageRequest, item: dict[str, Any]) -> GeneratedImage:
        if item.get("b64_json") is not None:
            return wire.decode_image(self.name, item["b64_json"], request, item.get("revised_prompt"))
        url = item.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise invalid_response(self.name, "an image has neither b64_json nor an http(s) url")
        return wire.image_from_bytes(self.name, await self.download(url), request, item.get("revised_prompt"))

    async def stream(self, request: ImageRequest, deployment: Deployment) -> AsyncIterator[StreamItem]:
        """The upstream's own stream (the gateway calls this only for stream=true)."""
        completed = 0
        async with self.exchange(self._request(request, deployment), deployment) as response:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise invalid_response(self.name, "a streaming request was not answered with text/event-stream")
            async for event in EventSource(response).aiter_sse():
                if not event.data or event.data == "[DONE]":
                    continue
                try:
                    payload = loads_images(event.data.encode())
                except orjson.JSONDecodeError:
                    raise invalid_response(self.name, "a stream event is not JSON") from None
                if not isinstance(payload, dict):
                    raise invalid_response(self.name, "a stream event is not a JSON object")
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
