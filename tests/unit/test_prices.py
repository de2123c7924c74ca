"""Costs against OpenAI's published prices, to the nano-dollar."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from imagegate.accounting.money import to_nano, usd_str
from imagegate.accounting.prices import PerMegapixel, PerToken, actual, price_from_config, shipped_prices, worst_case
from imagegate.contract import catalog
from imagegate.contract.requests import EditFields, GenerationFields, ImageRequest, InputImage
from imagegate.contract.results import ImageMeta, Usage
from imagegate.imaging.probe import ImageInfo

BUILTIN = shipped_prices()


def gen(model: str, **fields) -> ImageRequest:
    spec = catalog.lookup(model)
    assert spec is not None
    return ImageRequest("generations", model, spec, GenerationFields(prompt=fields.pop("prompt", "abcd"), **fields))


def usd(value: str) -> int:
    return to_nano(Decimal(value))


@pytest.mark.parametrize("size,price", [("256x256", "0.016"), ("512x512", "0.018"), ("1024x1024", "0.020")])
def test_dalle2_per_image(size: str, price: str) -> None:
    req = gen("dall-e-2", size=size, n=3)
    assert actual(BUILTIN["dall-e-2"], req, 3, None, ImageMeta()).nusd == 3 * usd(price)
    assert worst_case(BUILTIN["dall-e-2"], req) == 3 * usd(price)


@pytest.mark.parametrize(
    "quality,size,price",
    [("standard", "1024x1024", "0.04"), ("standard", "1792x1024", "0.08"), ("standard", "1024x1792", "0.08"),
     ("hd", "1024x1024", "0.08"), ("hd", "1792x1024", "0.12"), ("hd", "1024x1792", "0.12")],
)  # fmt: skip
def test_dalle3_per_image(quality: str, size: str, price: str) -> None:
    req = gen("dall-e-3", size=size, quality=quality)
    assert actual(BUILTIN["dall-e-3"], req, 1, None, ImageMeta()).nusd == usd(price)


def test_dalle3_defaults_are_standard_1024() -> None:
    assert actual(BUILTIN["dall-e-3"], gen("dall-e-3"), 1, None, ImageMeta()).nusd == usd("0.04")
    assert worst_case(BUILTIN["dall-e-3"], gen("dall-e-3", quality="auto")) == usd("0.08")  # could be hd
    assert worst_case(BUILTIN["dall-e-3"], gen("dall-e-3", quality="hd", size="1792x1024")) == usd("0.12")


# Published output cost per image (tokens x image output rate), 1024x1024 / 1024x1536 / 1536x1024.
PUBLISHED = {
    "gpt-image-1": {"low": ("0.01088", "0.01632", "0.016"), "medium": ("0.04224", "0.06336", "0.06272"),
                    "high": ("0.1664", "0.2496", "0.24832")},
    "gpt-image-1.5": {"low": ("0.008704", "0.013056", "0.0128"), "medium": ("0.033792", "0.050688", "0.050176"),
                      "high": ("0.13312", "0.19968", "0.198656")},
    "gpt-image-1-mini": {"low": ("0.002176", "0.003264", "0.0032"), "medium": ("0.008448", "0.012672", "0.012544"),
                         "high": ("0.03328", "0.04992", "0.049664")},
}  # fmt: skip
TEXT_RATE = {"gpt-image-1": "0.000005", "gpt-image-1.5": "0.000005", "gpt-image-1-mini": "0.000002"}  # per token


@pytest.mark.parametrize("model", list(PUBLISHED))
@pytest.mark.parametrize("quality", ["low", "medium", "high"])
@pytest.mark.parametrize("index,size", list(enumerate(["1024x1024", "1024x1536", "1536x1024"])))
def test_gpt_image_without_usage_uses_published_token_counts(model: str, quality: str, index: int, size: str) -> None:
    req = gen(model, quality=quality, size=size, prompt="abcd")  # 4 characters: one estimated text token
    cost = actual(BUILTIN[model], req, 1, None, ImageMeta())
    assert cost.estimated
    assert cost.nusd == usd(PUBLISHED[model][quality][index]) + usd(TEXT_RATE[model])
    assert worst_case(BUILTIN[model], req) >= cost.nusd


def test_partial_images_add_100_tokens_each() -> None:
    plain = actual(BUILTIN["gpt-image-1"], gen("gpt-image-1", quality="low", size="1024x1024"), 1, None, ImageMeta())
    streamed = gen("gpt-image-1", quality="low", size="1024x1024", stream=True, partial_images=2)
    cost = actual(BUILTIN["gpt-image-1"], streamed, 1, None, ImageMeta())
    assert cost.nusd - plain.nusd == 200 * usd("0.00004")


def test_gpt_image_with_usage_bills_each_token_kind_at_its_rate() -> None:
    usage = Usage(input_tokens=200, output_tokens=1056, total_tokens=1256, input_text_tokens=40, input_image_tokens=160)
    cost = actual(BUILTIN["gpt-image-1"], gen("gpt-image-1"), 1, usage, ImageMeta())
    # 40 text x $5/1M + 160 image x $10/1M + 1056 output x $40/1M
    assert usd_str(cost.nusd) == "0.044040"
    assert not cost.estimated
    assert (cost.input_text_tokens, cost.input_image_tokens, cost.output_tokens) == (40, 160, 1056)


def test_gpt_image_15_text_output_tokens() -> None:
    usage = Usage(10, 1100, 1110, 10, 0, output_image_tokens=1056, output_text_tokens=44)
    cost = actual(BUILTIN["gpt-image-1.5"], gen("gpt-image-1.5"), 1, usage, ImageMeta())
    assert cost.nusd == 10 * 5000 + 1056 * 32000 + 44 * 10000


def test_edit_input_images_are_billed_and_reserved() -> None:
    spec = catalog.lookup("gpt-image-1")
    assert spec is not None
    info = ImageInfo("png", 1024, 1024, "RGB", False, 100)
    images = tuple(InputImage(b"", info, f"image[{i}]") for i in range(3))
    req = ImageRequest("edits", "gpt-image-1", spec, EditFields(prompt="x", quality="high", size="1024x1024"), images)
    usage = Usage(input_tokens=3000, output_tokens=4160, total_tokens=7160, input_text_tokens=10, input_image_tokens=2990)
    cost = actual(BUILTIN["gpt-image-1"], req, 1, usage, ImageMeta())
    assert cost.nusd == 10 * 5000 + 2990 * 10000 + 4160 * 40000
    assert worst_case(BUILTIN["gpt-image-1"], req) > cost.nusd
    assert (
        worst_case(BUILTIN["gpt-image-1"], req)
        - worst_case(BUILTIN["gpt-image-1"], ImageRequest("edits", "gpt-image-1", spec, req.params, images[:1]))
        == 2 * 10_000 * 10_000
    )  # each more input image reserves its bound at the image-input rate


def test_worst_case_is_an_upper_bound_across_qualities_and_sizes() -> None:
    for quality in ("auto", "low", "medium", "high"):
        for size in ("auto", "1024x1024", "1024x1536", "1536x1024"):
            req = gen("gpt-image-1", quality=quality, size=size, n=2, prompt="a" * 500)
            bound = worst_case(BUILTIN["gpt-image-1"], req)
            for q in ("low", "medium", "high"):
                for s in ("1024x1024", "1024x1536", "1536x1024"):
                    if quality in ("auto", q) and size in ("auto", s):
                        assert actual(BUILTIN["gpt-image-1"], req, 2, None, ImageMeta(quality=q, size=s)).nusd <= bound


def test_config_prices() -> None:
    flat = price_from_config({"per_image": 0.05})
    assert actual(flat, gen("dall-e-2"), 4, None, ImageMeta()).nusd == usd("0.20")
    table = price_from_config({"per_image": {"hd 1024x1024": 0.1, "default": 0.03}})
    assert actual(table, gen("dall-e-3", quality="hd"), 1, None, ImageMeta()).nusd == usd("0.1")
    assert actual(table, gen("dall-e-3"), 1, None, ImageMeta()).nusd == usd("0.03")
    tokens = price_from_config({"text_input_per_1m": 1, "image_input_per_1m": 2, "image_output_per_1m": 3})
    usage = Usage(input_tokens=10, output_tokens=100, total_tokens=110, input_text_tokens=10)
    assert actual(tokens, gen("gpt-image-1"), 1, usage, ImageMeta()).nusd == 10 * 1000 + 100 * 3000


def test_unpriced_model_costs_nothing_and_says_so() -> None:
    cost = actual(None, gen("gpt-image-2"), 1, None, ImageMeta())
    assert cost.nusd == 0 and cost.estimated


@pytest.mark.parametrize(
    "usage",
    [
        Usage(input_tokens=0, output_tokens=-100_000_000, total_tokens=-100_000_000),
        Usage(input_tokens=-5, output_tokens=10, total_tokens=5, input_text_tokens=-5, input_image_tokens=-7),
        Usage(input_tokens=0, output_tokens=0, total_tokens=0, output_image_tokens=-3, output_text_tokens=-9),
    ],
)
def test_a_cost_is_never_negative_whatever_the_usage(usage: Usage) -> None:
    cost = actual(BUILTIN["gpt-image-1.5"], gen("gpt-image-1.5"), 1, usage, ImageMeta())
    assert cost.nusd >= 0 and (cost.input_text_tokens or 0) >= 0 and (cost.output_tokens or 0) >= 0


def test_worst_case_holds_a_low_request_billed_at_high() -> None:
    """Asked low, billed high (4160 tokens) with OpenAI's input overhead: still within the reservation."""
    req = gen("gpt-image-1", quality="low", size="1024x1024", prompt="x")
    billed = Usage(input_tokens=512, output_tokens=4160, total_tokens=4672, input_text_tokens=1, input_image_tokens=511)
    assert actual(BUILTIN["gpt-image-1"], req, 1, billed, ImageMeta()).nusd <= worst_case(BUILTIN["gpt-image-1"], req)
    assert usd_str(worst_case(BUILTIN["gpt-image-1"], req)) == "0.171525"


# -- gpt-image-2 ------------------------------------------------------------------------


def test_gpt_image_2_estimate_reproduces_openais_published_examples() -> None:
    """OpenAI's image generation guide: output cost per image at $30/1M."""
    price = BUILTIN["gpt-image-2"]
    assert isinstance(price, PerToken) and price.formula is not None
    examples = {
        ("low", 1024, 1024): "0.006",
        ("medium", 1024, 1024): "0.053",
        ("high", 1024, 1024): "0.211",
        ("low", 1536, 1024): "0.005",
        ("medium", 1536, 1024): "0.041",
        ("high", 1536, 1024): "0.165",
        ("low", 1024, 1536): "0.005",
        ("high", 1024, 1536): "0.165",
    }
    for (quality, w, h), usd in examples.items():
        cost = Decimal(price.formula.tokens(quality, w, h) * price.image_output) / 10**9
        assert cost.quantize(Decimal("0.001")) == Decimal(usd), (quality, w, h, cost)
    assert 13_000 < price.formula.tokens("high", 3840, 2160) < 13_500  # "~13.3k tokens" at 4K


def test_gpt_image_2_reserves_by_the_asked_size_and_bounds_every_quality() -> None:
    price = BUILTIN["gpt-image-2"]
    small = worst_case(price, gen("gpt-image-2", size="1024x1024"))
    large = worst_case(price, gen("gpt-image-2", size="3840x2160"))
    assert large > 1.8 * small
    for quality in ("low", "medium", "high", "auto"):
        for size in ("1024x1024", "3840x2160", "1536x864"):
            req = gen("gpt-image-2", quality=quality, size=size)
            for reported in ("low", "medium", "high"):
                assert actual(price, req, 1, None, ImageMeta(quality=reported, size=size)).nusd <= worst_case(price, req)
    auto = worst_case(price, gen("gpt-image-2", size="auto"))
    # "auto" may come back at any size the model makes: reserved for the dearest of
    # the listed sizes and the largest square and rectangle within its limits
    anywhere = ("1024x1024", "1536x1024", "1024x1536", "2880x2880", "3840x2160")
    assert auto == max(worst_case(price, gen("gpt-image-2", size=s)) for s in anywhere)
    assert auto == worst_case(price, gen("gpt-image-2", size="2880x2880")) > large


def test_cached_input_is_billed_at_the_cached_rates_and_never_below_the_real_cost() -> None:
    price = BUILTIN["gpt-image-2"]
    assert isinstance(price, PerToken)
    usage = Usage(input_tokens=1000, output_tokens=0, total_tokens=1000, input_text_tokens=200, input_image_tokens=800,
                  input_cached_tokens=500)  # fmt: skip
    cost = actual(price, gen("gpt-image-2"), 1, usage, ImageMeta())
    # 200 text tokens cached first ($1.25/1M), then 300 of the image tokens ($2/1M); 500 image tokens at $8/1M
    assert cost.nusd == usd("0.00125") * 200 // 1000 + usd("0.002") * 300 // 1000 + usd("0.008") * 500 // 1000
    assert cost.input_cached_tokens == 500
    # whichever way the 500 cached tokens really split, the charge is not below it
    for text_cached in range(0, 201, 50):
        image_cached = 500 - text_cached
        real = (200 - text_cached) * 5000 + text_cached * 1250 + (800 - image_cached) * 8000 + image_cached * 2000
        assert cost.nusd >= real
    no_cache = actual(price, gen("gpt-image-2"), 1, replace(usage, input_cached_tokens=0), ImageMeta())
    assert no_cache.nusd == 200 * 5000 + 800 * 8000


def test_auto_quality_is_reserved_and_charged_alike() -> None:
    for model, size, usd_each in (
        ("dall-e-3", "1024x1024", "0.08"),
        ("dall-e-3", "1792x1024", "0.12"),
        ("dall-e-2", "256x256", "0.016"),
    ):
        req = gen(model, quality="auto", size=size)
        charged = actual(BUILTIN[model], req, 1, None, ImageMeta()).nusd
        assert charged == worst_case(BUILTIN[model], req) == usd(usd_each), (model, size)


def test_output_beyond_its_details_is_billed_at_the_dearer_output_rate() -> None:
    usage = Usage(input_tokens=0, output_tokens=4160, total_tokens=4160, output_image_tokens=0, output_text_tokens=0)
    cost = actual(BUILTIN["gpt-image-1.5"], gen("gpt-image-1.5"), 1, usage, ImageMeta())
    assert cost.nusd == 4160 * usd("0.000032")  # image output, $32/1M
    partly = Usage(input_tokens=0, output_tokens=100, total_tokens=100, output_image_tokens=60, output_text_tokens=10)
    cost = actual(BUILTIN["gpt-image-1.5"], gen("gpt-image-1.5"), 1, partly, ImageMeta())
    assert cost.nusd == 60 * 32_000 + 10 * 10_000 + 30 * 32_000


# -- per megapixel (Black Forest Labs' FLUX.2) ------------------------------------------


def flux2_edit(model: str, sizes: list[tuple[int, int]], **fields) -> ImageRequest:
    spec = catalog.lookup(model)
    assert spec is not None
    images = tuple(InputImage(b"", ImageInfo("png", w, h, "RGB", False, 0), f"image[{i}]") for i, (w, h) in enumerate(sizes))
    return ImageRequest("edits", model, spec, EditFields(prompt="x", **fields), images=images)


@pytest.mark.parametrize(
    "model,size,price",
    [("flux-2-pro", "1024x1024", "0.03"),  # exactly one megapixel (1024x1024 pixels)
     ("flux-2-pro", "1920x1088", "0.045"),  # 1.99 MP: one further megapixel begun
     ("flux-2-pro", "2048x2048", "0.075"),  # 4 MP: three further
     ("flux-2-max", "1024x1024", "0.07"),  # BFL answered cost 7 for a 1024x1024 [max] image
     ("flux-2-klein-4b", "1024x1536", "0.015"),
     ("flux-2-klein-9b", "2048x2048", "0.021"),
     ("flux-2-flex", "1024x1024", "0.06")],
)  # fmt: skip
def test_flux2_per_megapixel_output(model: str, size: str, price: str) -> None:
    req = gen(model, size=size, n=2)
    assert worst_case(BUILTIN[model], req) == 2 * usd(price)
    assert actual(BUILTIN[model], req, 2, None, ImageMeta()).nusd == 2 * usd(price)


def test_flux2_input_images_are_billed_per_megapixel_begun_for_every_job() -> None:
    # 1024x1024 out (3c) + inputs of 1 MP and 1.07 MP (1 + 2 megapixels begun, 1.5c each), twice (n=2: two jobs)
    req = flux2_edit("flux-2-pro", [(1024, 1024), (1000, 1100)], size="1024x1024", n=2)
    assert worst_case(BUILTIN["flux-2-pro"], req) == 2 * usd("0.075")
    assert actual(BUILTIN["flux-2-pro"], req, 2, None, ImageMeta()).nusd == 2 * usd("0.075")
    # BFL's documented "1 MP image editing" price: $0.045 for [pro], $0.10 for [max]
    assert worst_case(BUILTIN["flux-2-pro"], flux2_edit("flux-2-pro", [(1024, 1024)], size="1024x1024")) == usd("0.045")
    assert worst_case(BUILTIN["flux-2-max"], flux2_edit("flux-2-max", [(1024, 1024)], size="1024x1024")) == usd("0.10")


def test_flux2_without_a_size_is_reserved_at_the_largest_output_and_a_stated_cost_is_the_charge() -> None:
    price = BUILTIN["flux-2-pro"]
    auto = worst_case(price, gen("flux-2-pro"))
    assert auto == usd("0.075")  # 4 MP, the most FLUX.2 makes
    assert auto >= max(worst_case(price, gen("flux-2-pro", size=s)) for s in ("4096x1024", "1024x4096", "2048x2048"))
    cost = actual(price, gen("flux-2-pro"), 1, None, ImageMeta(), upstream_cost=45_000_000)
    assert (cost.nusd, cost.estimated, cost.upstream_cost_nusd) == (45_000_000, False, 45_000_000)
    estimate = actual(price, gen("flux-2-pro"), 1, None, ImageMeta())  # no size known: the largest, estimated
    assert (estimate.nusd, estimate.estimated) == (usd("0.075"), True)
    sized = actual(price, gen("flux-2-pro"), 1, None, ImageMeta(size="1536x1024"))  # the size the answer reports
    assert (sized.nusd, sized.estimated) == (usd("0.045"), False)


def test_a_per_megapixel_price_is_one_kind_only() -> None:
    price = price_from_config({"per_megapixel": {"first": 0.03, "additional": 0.015}})
    assert isinstance(price, PerMegapixel) and price.input == 0  # inputs free unless the price says
    for bad in (
        {"per_megapixel": {"first": 0.03, "additional": 0.015}, "per_image": 0.04},
        {"per_megapixel": {"first": 0.03, "additional": 0.015}, "image_output_per_1m": 30},
        {"per_megapixel": {"first": -1, "additional": 0.015}},
        {"per_megapixel": {"first": 0.03}},
    ):
        with pytest.raises(ValueError):
            price_from_config(bad)


def test_a_capped_model_reserves_its_cap_at_the_dearest_output_rate_per_image() -> None:
    price = price_from_config(
        {"text_input_per_1m": 2, "image_input_per_1m": 2, "text_output_per_1m": 12, "image_output_per_1m": 120}
    )
    request = gen("gpt-image-2", size="1024x1024", n=2)
    capped = replace(request, spec=replace(request.spec, max_output_tokens=4000))
    bound = worst_case(price, capped)
    prompt = len(request.prompt.encode())
    # n x cap x $120/1M; the prompt and the overhead for each of the n calls
    assert bound == 2 * 4000 * 120_000 + 2 * (prompt * 2_000 + 512 * 2_000)
    # Any usage within the cap is charged at most the bound.
    usage = Usage(
        input_tokens=prompt, output_tokens=8000, total_tokens=prompt + 8000, output_image_tokens=6000, output_text_tokens=2000
    )
    assert actual(price, capped, 2, usage, ImageMeta()).nusd <= bound


def test_a_large_input_image_is_reserved_by_its_tiles() -> None:
    price = price_from_config({"text_input_per_1m": 0.3, "image_input_per_1m": 0.3, "image_output_per_1m": 30})
    request = gen("gpt-image-2", size="1024x1024")
    small = ImageInfo("png", 1024, 1024, "RGB", False, 1000)
    huge = ImageInfo("png", 7680, 6144, "RGB", False, 1000)  # 10 x 8 tiles of 768 px: 80 x 258 = 20640 tokens
    with_small = replace(request, images=(InputImage(b"x", small, "image"),))
    with_huge = replace(request, images=(InputImage(b"x", huge, "image"),))
    assert worst_case(price, with_huge) - worst_case(price, with_small) == (20640 - 10_000) * 300


def test_a_capped_model_without_usage_is_charged_its_cap_fail_closed() -> None:
    price = price_from_config(
        {"text_input_per_1m": 2, "image_input_per_1m": 2, "text_output_per_1m": 12, "image_output_per_1m": 120}
    )
    request = gen("gpt-image-2", size="1024x1024", n=2)
    capped = replace(request, spec=replace(request.spec, max_output_tokens=8192))
    cost = actual(price, capped, 2, None, ImageMeta())
    assert cost.estimated and cost.nusd >= 2 * 8192 * 120_000
    assert cost.nusd <= worst_case(price, capped)
