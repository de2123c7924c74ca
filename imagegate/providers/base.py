"""The provider contract.

A provider turns a validated :class:`~imagegate.contract.requests.ImageRequest`
into images for one upstream kind (an HTTP API, a local pipeline, the offline
test pattern). It knows its upstream's wire format and nothing about keys,
budgets, storage or HTTP responses to the client.

Contract:

* ``generate``, ``edit`` and ``variation`` return a :class:`ProviderResult`
  with exactly ``request.n`` images, or raise an
  :class:`~imagegate.errors.ImagegateError` (upstream failures mapped with
  ``raise ... from exc``). An endpoint the provider cannot serve raises
  :class:`~imagegate.errors.InvalidRequestError` naming ``model``.
* Images may come back in any format and size; the gateway converts them to
  what the client asked for. A provider that already applied
  ``output_compression`` says so in :attr:`GeneratedImage.compressed`.
* ``stream`` yields :class:`PartialImage` events and one
  :class:`CompletedImage` per image, as they become available; the default
  implementation runs ``run`` and yields the completions, so every provider
  streams. Usage rides on the last completion.
* ``deployment`` carries the upstream model name to use (model aliasing).
* Long CPU work runs off the event loop; cancellation (client gone) must stop
  the work as soon as practical.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from imagegate.contract.catalog import ModelSpec
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import CompletedImage, Deployment, PartialImage, ProviderResult


class ProviderOptions(BaseModel):
    """Base for each provider type's options (the keys next to ``type:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FetchURL(Protocol):
    """The gateway's SSRF-checked fetcher for image URLs an upstream answers
    with (``ImageFetcher.download``): ``headers`` go only to
    ``trusted_origin`` (the provider's base URL); failures are UpstreamErrors."""

    async def __call__(
        self,
        url: str,
        *,
        provider: str,
        headers: Mapping[str, str] | None = None,
        trusted_origin: str | None = None,
        max_bytes: int | None = None,
    ) -> bytes: ...


@dataclass(slots=True)
class ProviderContext:
    """What the app hands every provider at construction. A provider fetches
    an upstream-supplied URL only through ``fetch_url``, never on its own."""

    max_image_pixels: int
    fetch_url: FetchURL | None = None


class Provider(ABC):
    type_name: ClassVar[str]
    options_model: ClassVar[type[ProviderOptions]] = ProviderOptions
    # Catalog rules for models served by this provider when neither the public
    # name nor the upstream name is in the catalog. None: the name must be known.
    default_rules: ClassVar[ModelSpec | None] = None

    @classmethod
    def rules_for(cls, options: ProviderOptions, model: str) -> ModelSpec | None:
        """Catalog rules for ``model`` on a provider with ``options``, when the
        catalog has none for it (a local model's rules depend on its files).
        Raise ConfigError when the model cannot be served at all."""
        return cls.default_rules

    def __init__(self, name: str, options: ProviderOptions, context: ProviderContext) -> None:
        self.name = name
        self.options = options
        self.context = context

    @abstractmethod
    async def generate(self, request: ImageRequest, deployment: Deployment) -> ProviderResult: ...

    @abstractmethod
    async def edit(self, request: ImageRequest, deployment: Deployment) -> ProviderResult: ...

    @abstractmethod
    async def variation(self, request: ImageRequest, deployment: Deployment) -> ProviderResult: ...

    async def run(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        handler = {"generations": self.generate, "edits": self.edit, "variations": self.variation}
        return await handler[request.endpoint](request, deployment)

    async def stream(self, request: ImageRequest, deployment: Deployment) -> AsyncIterator[PartialImage | CompletedImage]:
        result = await self.run(request, deployment)
        last = len(result.images) - 1
        for i, image in enumerate(result.images):
            yield CompletedImage(image, result.usage if i == last else None, result.meta)

    async def start(self, models: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """Work to do when the server starts; ``models`` are the upstream model
        names the config's deployments use on this provider (for preloading)."""

    def describe(self) -> dict[str, object]:
        """Runtime state for ``/admin/providers`` (loaded models, queues, counters)."""
        return {}

    async def ready(self) -> bool:
        """Whether the provider can take requests now (for ``/readyz``)."""
        return True

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections, models, threads."""
