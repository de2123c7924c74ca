"""The results every layer shares: what a provider returns, what the gateway
post-processes and stores, what accounting charges.

They live in the contract layer so that ``gateway/`` and ``accounting/`` read
them without importing ``providers/`` (which builds them), and ``providers/``
depends on the contract, never the other way round.

* :class:`Deployment` - where an attempt goes: the provider's name in the
  config and the upstream model name (plus a per-call credential and timeouts).
* :class:`GeneratedImage` - one image's bytes and/or the base64 text an
  upstream sent (each made from the other only when needed).
* :class:`Usage`, :class:`ImageMeta` - token usage and what the upstream
  reported about its output.
* :class:`ProviderResult` (a whole answer), :class:`PartialImage` and
  :class:`CompletedImage` (stream events).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pybase64


@dataclass(frozen=True, slots=True)
class Deployment:
    provider: str  # the provider's name in the config
    model: str  # the model name to send upstream
    # A credential for this call only (a virtual key), instead of the provider's own.
    api_key: str | None = field(default=None, repr=False)
    timeout: float | None = None  # seconds for one attempt, end to end (the router enforces it)
    connect_timeout: float | None = None  # seconds to connect (providers with connections apply it)


class GeneratedImage:
    """An image from a provider: its bytes, and the base64 text an upstream
    sent, when it sent one. An image that passes through unchanged goes back
    to the client as that same text, never re-encoded; the base64 form of
    bytes is made (SIMD, pybase64) only when a client needs it."""

    __slots__ = ("_data", "_b64", "format", "revised_prompt", "compressed")

    def __init__(
        self,
        data: bytes | None,
        format: str,  # png | jpeg | webp
        *,
        b64: str | None = None,
        revised_prompt: str | None = None,
        compressed: bool = False,  # output_compression already applied upstream
    ) -> None:
        if data is None and b64 is None:
            raise ValueError("an image needs bytes or base64 text")
        self._data = data
        self._b64 = b64
        self.format = format
        self.revised_prompt = revised_prompt
        self.compressed = compressed

    @property
    def data(self) -> bytes:
        if self._data is None:
            assert self._b64 is not None
            self._data = pybase64.b64decode(self._b64)
        return self._data

    @property
    def b64(self) -> str:
        if self._b64 is None:
            self._b64 = pybase64.b64encode(self.data).decode("ascii")
        return self._b64

    def head(self, size: int = 64 * 1024) -> bytes:
        """The first ``size`` bytes or so, without decoding the rest."""
        if self._data is not None:
            return self._data[:size]
        assert self._b64 is not None
        return pybase64.b64decode(self._b64[: (size // 3) * 4])

    def replace(self, data: bytes, format: str) -> GeneratedImage:
        return GeneratedImage(data, format, revised_prompt=self.revised_prompt, compressed=self.compressed)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as OpenAI reports it (``ImageGenUsage``)."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_text_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int | None = None
    output_text_tokens: int | None = None
    # Input tokens served from the upstream's cache (input_tokens_details.cached_tokens):
    # part of input_tokens, billed at the cached rates.
    input_cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ImageMeta:
    """What the upstream reports about its output ("auto" resolved), when it does."""

    created: int | None = None
    size: str | None = None
    quality: str | None = None
    background: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderResult:
    images: list[GeneratedImage]
    usage: Usage | None = None
    meta: ImageMeta = ImageMeta()
    # What the upstream says it charged for these images (Black Forest Labs'
    # `cost`), in nano-dollars: when given, it is the charge (checked first).
    upstream_cost_nusd: int | None = None


@dataclass(frozen=True, slots=True)
class PartialImage:
    index: int  # 0-based partial_image_index
    image: GeneratedImage
    meta: ImageMeta = ImageMeta()


@dataclass(frozen=True, slots=True)
class CompletedImage:
    image: GeneratedImage
    usage: Usage | None = None
    meta: ImageMeta = ImageMeta()
    upstream_cost_nusd: int | None = None  # this image's share of what the upstream charged


@dataclass(frozen=True, slots=True)
class Progress:
    """A stream item that carries no image: the upstream job is still running
    (queued, generating). The gateway turns it into a keep-alive, so a
    stream stays open through proxies while a slow job runs."""

    status: str  # the upstream's own word ("Pending", "IN_QUEUE", "processing")


def split_cost(cost: int | None, images: int) -> list[int | None]:
    """A stated cost as shares of ``images`` completions, summing to it
    exactly (the last takes the remainder); None for each when none was stated."""
    if cost is None or images <= 0:
        return [None] * images
    each = cost // images
    shares: list[int | None] = [each] * (images - 1)
    return [*shares, cost - each * (images - 1)]


# What a provider's stream yields.
StreamItem = PartialImage | CompletedImage | Progress
