"""``seedream``: ByteDance Seedream on Volcengine Ark / BytePlus ModelArk.

A dialect of the ``openai`` provider (same hosted base, Bearer key, image
answers read the same way); what differs is Ark's (``wire.py``):

* OpenAI generations **and edits** become one Ark generations call; an
  edit's images go in ``image`` as ``data:`` URIs. Ark takes no mask and has
  no variations (the catalog says so: a 400 before any call).
* ``n`` > 1 asks for a batch (``sequential_image_generation: auto``,
  ``max_images: n``): Ark makes *up to* n images, and the client gets (and
  pays for) the ones it made.
* An image Ark could not make is an item with an ``error`` (or a
  ``partial_failed`` event): the others are delivered; with none at all, a
  content-filter refusal is a 400 ``content_policy_violation`` and any other
  failure a 502 carrying Ark's code.
* ``stream: true``: Ark sends one ``image_generation.partial_succeeded`` per
  finished image (a final image, not a preview), ``partial_failed`` per
  failed one, then ``image_generation.completed`` with the usage and
  ``[DONE]``. Each finished image becomes a :class:`CompletedImage`; the last
  one is held until ``completed`` arrives so that it carries the usage (an
  image therefore reaches the client when the next event arrives).
* ``watermark`` is the provider's option (default false), sent on every
  request; clients cannot set it.

Calls are synchronous (the answer is the image): like the ``openai``
provider's, they never mark their attempt as having started work.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx
import orjson
from httpx_sse import EventSource, ServerSentEvent

from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import CompletedImage, Deployment, PartialImage, ProviderResult
from imagegate.errors import InvalidRequestError, UpstreamError
from imagegate.providers.http import ErrorFields, invalid_response
from imagegate.providers.openai import wire as openai_wire
from imagegate.providers.openai.fastjson import loads_images
from imagegate.providers.openai.provider import OpenAIOptions, OpenAIProvider
from imagegate.providers.seedream import wire

log = logging.getLogger("imagegate.providers.seedream")

SUCCEEDED = "image_generation.partial_succeeded"
FAILED = "image_generation.partial_failed"
COMPLETED = "image_generation.completed"


class SeedreamOptions(OpenAIOptions):
    # BytePlus ModelArk, ap-southeast-1. Also https://ark.eu-west.bytepluses.com/api/v3
    # (BytePlus, eu-west-1) and https://ark.cn-beijing.volces.com/api/v3 (Volcengine, China).
    base_url: str = "https://ark.ap-southeast.bytepluses.com/api/v3"
    # Ark's own default is true (an "AI generated" mark); this gateway's is false.
    watermark: bool = False


class SeedreamProvider(OpenAIProvider):
    type_name: ClassVar[str] = "seedream"
    options_model = SeedreamOptions
    # Every Seedream model needs its catalog entry (or `rules:` naming one):
    # Ark's fields differ by model, so no permissive rules.
    default_rules: ClassVar[str | None] = None
    options: SeedreamOptions

    def _request(self, request: ImageRequest, deployment: Deployment) -> httpx.Request:
        content = wire.body(request, deployment.model, watermark=self.options.watermark)
        return self.build("POST", wire.PATH, deployment, content=content, headers={"Content-Type": "application/json"})

    def error_fields(self, body: bytes) -> ErrorFields | None:
        return wire.error_fields(body)

    # -- the contract ------------------------------------------------------

    async def run(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        if request.endpoint == "variations":
            raise InvalidRequestError(f"'{request.model}' takes no variations.", param="model", code="unsupported_endpoint")
        async with self.exchange(self._request(request, deployment), deployment) as response:
            return await self._answer(request, openai_wire.parse_json(self.name, await self.read(response)))

    generate = edit = variation = run

    async def _answer(self, request: ImageRequest, payload: dict[str, Any]) -> ProviderResult:
        """A whole answer: its images, the failed ones left out (and logged)."""
        items = payload.get("data")
        if items is None and payload.get("error") is not None:
            raise wire.no_image_error(self.name, [wire.failure_of(payload["error"])])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise invalid_response(self.name, "no 'data' list of images")
        images, sizes, failures = [], [], []
        for item in items:
            if item.get("error") is not None and item.get("b64_json") is None and item.get("url") is None:
                failures.append(wire.failure_of(item["error"]))
                continue
            images.append(await self._image(request, item))
            sizes.append(wire.size_of(item))
        wire.log_failures(self.name, request.model, failures, len(images))
        if not images:
            raise wire.no_image_error(self.name, failures)
        return ProviderResult(images, wire.usage(self.name, payload.get("usage")), wire.meta(payload, sizes))

    async def stream(self, request: ImageRequest, deployment: Deployment) -> AsyncIterator[PartialImage | CompletedImage]:
        """Ark's event stream as completed images (see the module's doc)."""
        async with self.exchange(self._request(request, deployment), deployment) as response:
            content_type = response.headers.get("content-type", "")
            if content_type.startswith("application/json"):  # answered whole after all
                result = await self._answer(request, openai_wire.parse_json(self.name, await self.read(response)))
                last = len(result.images) - 1
                for i, image in enumerate(result.images):
                    yield CompletedImage(image, result.usage if i == last else None, result.meta)
                return
            if not content_type.startswith("text/event-stream"):
                raise invalid_response(self.name, "a streaming request was not answered with text/event-stream")
            async for item in self._events(request, EventSource(response).aiter_sse()):
                yield item

    async def _events(self, request: ImageRequest, events: AsyncIterator[ServerSentEvent]) -> AsyncIterator[CompletedImage]:
        pending: CompletedImage | None = None  # the latest image, held for the usage
        failures: list[wire.Failure] = []
        delivered, completed, usage = 0, False, None
        async for event in events:
            if not event.data or event.data == "[DONE]":
                continue
            payload = self._payload(event.data)
            kind = str(payload.get("type") or event.event)
            if kind == SUCCEEDED:
                image = await self._image(request, payload)
                if pending is not None:
                    yield pending
                    delivered += 1
                pending = CompletedImage(image, None, wire.meta(payload, [wire.size_of(payload)]))
            elif kind == FAILED:
                failures.append(wire.failure_of(payload.get("error")))
            elif kind == COMPLETED:
                completed, usage = True, wire.usage(self.name, payload.get("usage"))
                break
            elif kind == "error" or payload.get("error") is not None:
                if pending is not None:  # finished before the error: the client has it
                    yield pending
                raise wire.no_image_error(self.name, [wire.failure_of(payload.get("error"))])
            # any other event (none is documented) carries nothing to deliver
        wire.log_failures(self.name, request.model, failures, delivered + (pending is not None))
        if pending is None:
            if not completed and not failures:
                raise UpstreamError(
                    f"The upstream '{self.name}' ended the stream before any image.", code="upstream_stream_incomplete"
                )
            raise wire.no_image_error(self.name, failures)
        if not completed:
            log.warning("upstream %s ended its stream of %s without %s", self.name, request.model, COMPLETED)
        yield CompletedImage(pending.image, usage, pending.meta)

    def _payload(self, data: str) -> dict[str, Any]:
        try:
            payload = loads_images(data.encode())
        except orjson.JSONDecodeError:
            raise invalid_response(self.name, "a stream event is not JSON") from None
        if not isinstance(payload, dict):
            raise invalid_response(self.name, "a stream event is not a JSON object")
        return payload
