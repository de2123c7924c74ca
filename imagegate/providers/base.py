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
* A call that may have started work the upstream charges for, and then
  fails (a job was submitted, then the answer timed out or the connection
  broke), says so: :func:`work_may_have_started` during the call, or
  ``UpstreamError(..., maybe_started=True)``. The router then sends the
  request nowhere else (see :class:`AttemptRecord`). Hosted providers get this
  from ``HostedProvider.exchange(..., starts_work=True)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from imagegate.contract.catalog import ModelSpec
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import CompletedImage, Deployment, ProviderResult, StreamItem, split_cost


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
class AttemptRecord:
    """The router's record of one provider call (one try on one deployment).

    ``maybe_started``: the upstream may have started work for this call that
    it charges for whatever happens next (a job submission was sent; then its
    answer timed out, the connection broke, or polling failed). The router
    does not send such a request again, to any deployment or fallback, unless
    the model's routing policy sets ``resubmit_started``; the call's error goes
    to the client. A call that fails before that point (refused, no
    connection) is retried as usual.

    Synchronous OpenAI-shaped calls (the answer is the image) never mark it:
    they are treated as not started, so their timeouts and broken connections
    are retried as before, unless the provider says otherwise.
    """

    maybe_started: bool = False


_ATTEMPT: ContextVar[AttemptRecord | None] = ContextVar("imagegate_attempt", default=None)


@contextmanager
def attempt_record() -> Iterator[AttemptRecord]:
    """Open the record of one provider call; the router wraps every call in
    one. It reaches the provider through the call's context, so it survives
    the router's own timeout of the call (a cancelled call cannot raise)."""
    record = AttemptRecord()
    token = _ATTEMPT.set(record)
    try:
        yield record
    finally:
        _ATTEMPT.reset(token)


def current_attempt() -> AttemptRecord:
    """The record of the call running now (a throwaway one outside the router)."""
    return _ATTEMPT.get() or AttemptRecord()


def work_may_have_started() -> None:
    """Say, during a call, that the upstream may have started paid work for it
    from now on (call it just before sending a job submission)."""
    current_attempt().maybe_started = True


@dataclass(slots=True)
class ProviderContext:
    """What the app hands every provider at construction. A provider fetches
    an upstream-supplied URL only through ``fetch_url``, never on its own."""

    max_image_pixels: int
    fetch_url: FetchURL | None = None


class Provider(ABC):
    type_name: ClassVar[str]
    options_model: ClassVar[type[ProviderOptions]] = ProviderOptions
    # The catalog entry whose rules apply to a model served by this provider
    # when neither the public name nor the upstream name is in the catalog
    # (and rules_for has none). None: the name must be known.
    default_rules: ClassVar[str | None] = None

    @classmethod
    def rules_for(cls, options: ProviderOptions, model: str) -> ModelSpec | None:
        """Catalog rules for ``model`` on a provider with ``options``, when the
        catalog has none for it (a local model's rules depend on its files).
        Raise ConfigError when the model cannot be served at all. None: the
        catalog entry named by ``default_rules`` applies."""
        return None

    @classmethod
    def check_route(cls, options: ProviderOptions, spec: ModelSpec, model: str) -> None:
        """Check, when the config loads, that this provider can serve upstream
        ``model`` under the catalog rules ``spec`` (its ``wire`` facts, say);
        raise ConfigError saying what is wrong."""
        return None

    @classmethod
    def unknown_fields(cls, options: ProviderOptions) -> Literal["forward", "reject"] | None:
        """Whether fields the catalog does not know go upstream untouched
        ("forward") or are refused ("reject"), overriding the model's entry;
        None: the entry decides. Only a provider that passes fields through
        as sent (the openai dialects) may forward."""
        return None

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

    async def stream(self, request: ImageRequest, deployment: Deployment) -> AsyncIterator[StreamItem]:
        result = await self.run(request, deployment)
        last = len(result.images) - 1
        shares = split_cost(result.upstream_cost_nusd, len(result.images))
        for i, (image, share) in enumerate(zip(result.images, shares, strict=True)):
            yield CompletedImage(image, result.usage if i == last else None, result.meta, share)

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
