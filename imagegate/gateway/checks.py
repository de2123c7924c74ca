"""Checks on what an upstream returns, before it is returned or charged.

An upstream is trusted with its images, not with its numbers:

* More images than the request's ``n``: the extra ones are dropped and a
  WARNING is logged. The client gets, and pays for, the ``n`` it asked for
  (reported output tokens are scaled to the images kept).
  (Rejecting would throw away paid work the client can still use.)
* Usage: every token count must lie in ``0..MAX_TOKENS``, the details may
  not add up to more than their totals, and a reported total may not be
  less than input + output. Anything else is a 502
  ``invalid_upstream_response``, and the request is charged nothing.
* A cost the upstream reports (Black Forest Labs' ``cost``): between 0 and
  ``MAX_UPSTREAM_COST_NUSD``, else the same 502. With extra images dropped,
  the cost is scaled to the images kept.

Every provider's results pass here (``ImageService`` calls these right after
a provider returns, and on each streamed completion).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import ProviderResult, Usage
from imagegate.errors import UpstreamError

log = logging.getLogger("imagegate.gateway")

# Far above any real request (10 images of the largest size with 16 input
# images stay under 100k tokens), far below what could overflow a budget.
MAX_TOKENS = 10_000_000
# $100 for one request: far above any image model's price, far below what
# could wreck a budget through a bug or a hostile upstream.
MAX_UPSTREAM_COST_NUSD = 100 * 10**9


def invalid_usage(provider: str, what: str) -> UpstreamError:
    return UpstreamError(f"The upstream '{provider}' reported impossible usage: {what}.", code="invalid_upstream_response")


def check_upstream_cost(cost_nusd: int | None, provider: str) -> None:
    """A 502 for a reported cost that cannot be right (negative, absurd)."""
    if cost_nusd is not None and not 0 <= cost_nusd <= MAX_UPSTREAM_COST_NUSD:
        raise UpstreamError(
            f"The upstream '{provider}' reported an impossible cost: {cost_nusd / 1e9:.6f} USD.", code="invalid_upstream_response"
        )


def check_usage(usage: Usage | None, provider: str) -> None:
    """Raise a 502 ``invalid_upstream_response`` for usage no upstream could
    have meant; pass anything plausible."""
    if usage is None:
        return
    counts = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "input_tokens_details.text_tokens": usage.input_text_tokens,
        "input_tokens_details.image_tokens": usage.input_image_tokens,
        "output_tokens_details.image_tokens": usage.output_image_tokens,
        "output_tokens_details.text_tokens": usage.output_text_tokens,
        "input_tokens_details.cached_tokens": usage.input_cached_tokens,
    }
    for name, value in counts.items():
        if value is not None and not 0 <= value <= MAX_TOKENS:
            raise invalid_usage(provider, f"{name} is {value}")
    if usage.input_text_tokens + usage.input_image_tokens > usage.input_tokens:
        raise invalid_usage(provider, "the input token details add up to more than input_tokens")
    if usage.input_cached_tokens > usage.input_tokens:
        raise invalid_usage(provider, "input_tokens_details.cached_tokens is more than input_tokens")
    if (usage.output_image_tokens or 0) + (usage.output_text_tokens or 0) > usage.output_tokens:
        raise invalid_usage(provider, "the output token details add up to more than output_tokens")
    if usage.total_tokens and usage.total_tokens < usage.input_tokens + usage.output_tokens:
        raise invalid_usage(provider, "total_tokens is less than input_tokens + output_tokens")


def warn_extra_images(request: ImageRequest, count: int, provider: str) -> None:
    log.warning(
        "upstream %s answered %d images for n=%d (model %s): only the first %d returned and charged",
        provider,
        count,
        request.n,
        request.model,
        request.n,
    )


def checked_result(request: ImageRequest, result: ProviderResult, provider: str) -> ProviderResult:
    """``result`` with usage and cost checked and no more images than ``request.n``."""
    check_usage(result.usage, provider)
    check_upstream_cost(result.upstream_cost_nusd, provider)
    made = len(result.images)
    if made <= request.n:
        return result
    warn_extra_images(request, made, provider)
    cost = None if result.upstream_cost_nusd is None else -(-result.upstream_cost_nusd * request.n // made)
    return ProviderResult(result.images[: request.n], _output_share(result.usage, request.n, made), result.meta, cost)


def _output_share(usage: Usage | None, kept: int, made: int) -> Usage | None:
    """Usage with its output scaled to the images kept (rounded up): the
    client pays for the ``n`` it asked for, never for the extras."""
    if usage is None:
        return None

    def share(tokens: int | None) -> int | None:
        return None if tokens is None else -(-tokens * kept // made)

    output = share(usage.output_tokens) or 0
    return replace(
        usage,
        output_tokens=output,
        total_tokens=usage.input_tokens + output,
        output_image_tokens=share(usage.output_image_tokens),
        output_text_tokens=share(usage.output_text_tokens),
    )
