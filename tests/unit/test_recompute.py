"""A usage row keeps what its request reported, so its cost can be computed
again later (``imagegate usage reprice``): recomputing from the row equals
what ``actual`` charged when the request ran, for every kind of price."""

from __future__ import annotations

import pytest

from imagegate.accounting.prices import Cost, Recorded, actual, price_from_config, recompute, shipped_prices
from imagegate.contract import catalog
from imagegate.contract.requests import GenerationFields, ImageRequest
from imagegate.contract.results import ImageMeta, Usage

DETAILED = Usage(
    1300, 1056, 2356, input_text_tokens=40, input_image_tokens=160, output_image_tokens=1000, output_text_tokens=50
)  # undetailed input: 1100 tokens, billed as text
UNDETAILED = Usage(200, 1056, 1256)

BUILTIN = shipped_prices()


def _request(**fields: object) -> ImageRequest:
    spec = catalog.lookup("gpt-image-1")
    assert spec is not None
    return ImageRequest("generations", "gpt-image-1", spec, GenerationFields(prompt="a red fox", **fields))  # type: ignore[arg-type]


def _row(cost: Cost, images: int, quality: str, size: str) -> Recorded:
    """What settle writes into the usage row."""
    return Recorded(images, quality, size, cost.input_text_tokens, cost.input_image_tokens, cost.output_tokens,
                    cost.output_image_tokens, cost.output_text_tokens, cost.estimated)  # fmt: skip


def test_an_unpriced_request_keeps_the_usage_its_upstream_reported() -> None:
    cost = actual(None, _request(), 1, DETAILED, ImageMeta(quality="high", size="1024x1024"))
    assert (cost.nusd, cost.estimated) == (0, True)
    assert (cost.input_text_tokens, cost.input_image_tokens, cost.output_tokens) == (1140, 160, 1056)
    assert (cost.output_image_tokens, cost.output_text_tokens) == (1000, 50)
    none = actual(None, _request(), 1, None, ImageMeta())
    assert (none.input_text_tokens, none.output_tokens, none.output_image_tokens) == (None, None, None)


PRICES = {
    "tokens, text output rate": BUILTIN["gpt-image-1.5"],
    "tokens": price_from_config({"text_input_per_1m": 5, "image_input_per_1m": 10, "image_output_per_1m": 40}),
    "per image by size": BUILTIN["dall-e-2"],
    "per image flat": price_from_config({"per_image": 0.03}),
}


@pytest.mark.parametrize("price", list(PRICES.values()), ids=list(PRICES))
@pytest.mark.parametrize("usage", [DETAILED, UNDETAILED, None], ids=["detailed", "undetailed", "no usage"])
@pytest.mark.parametrize("images", [1, 3])
def test_recomputing_a_row_gives_what_was_charged(price: object, usage: Usage | None, images: int) -> None:
    meta = ImageMeta(quality="medium", size="1024x1024")
    request = _request(size="1024x1024", quality="medium")
    charged = actual(price, request, images, usage, meta)  # type: ignore[arg-type]
    assert recompute(price, _row(charged, images, "medium", "1024x1024")) == (charged.nusd, charged.estimated)  # type: ignore[arg-type]


@pytest.mark.parametrize("price", list(PRICES.values()), ids=list(PRICES))
@pytest.mark.parametrize("usage", [DETAILED, UNDETAILED], ids=["detailed", "undetailed"])
def test_a_price_added_later_costs_the_row_as_if_it_had_been_there(price: object, usage: Usage) -> None:
    meta = ImageMeta(quality="medium", size="1024x1024")
    request = _request(size="1024x1024", quality="medium")
    unpriced = actual(None, request, 2, usage, meta)
    then = actual(price, request, 2, usage, meta)  # type: ignore[arg-type]
    assert then.nusd > 0 and not then.estimated
    assert recompute(price, _row(unpriced, 2, "medium", "1024x1024")) == (then.nusd, False)  # type: ignore[arg-type]


def test_a_row_without_usage_is_estimated_from_the_published_tokens() -> None:
    unpriced = actual(None, _request(), 2, None, ImageMeta())
    nusd, estimated = recompute(BUILTIN["gpt-image-1"], _row(unpriced, 2, "low", "1024x1024"))
    assert estimated and nusd == 2 * 272 * BUILTIN["gpt-image-1"].image_output  # type: ignore[union-attr]
