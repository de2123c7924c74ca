"""Google's wire format: RetryInfo delays, usage as billed, sizes to image sizes."""

from __future__ import annotations

import orjson
import pytest

from imagegate.providers.google import wire


def _error(details: list[object]) -> bytes:
    return orjson.dumps({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": details}})


@pytest.mark.parametrize(
    "delay,seconds",
    [("12s", 12), ("0.5s", 1), ("1.2s", 2), ({"seconds": 3, "nanos": 1}, 4), ("99999s", 3600), ("soon", None)],
)
def test_retry_info_becomes_whole_seconds(delay: object, seconds: int | None) -> None:
    body = _error([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}])
    assert wire.retry_delay(body) == seconds


def test_no_retry_info_and_other_bodies() -> None:
    assert wire.retry_delay(_error([{"@type": "type.googleapis.com/google.rpc.QuotaFailure"}])) is None
    assert wire.retry_delay(b"not json") is None
    assert wire.error_fields(b'{"detail": "x"}') is None
    fields = wire.error_fields(_error([]))
    assert fields is not None and (fields.message, fields.code) == ("quota", "resource_exhausted")


def test_usage_bills_image_tokens_at_the_image_rate_and_the_rest_as_text() -> None:
    usage = wire.usage(
        "g",
        {
            "promptTokenCount": 615,
            "candidatesTokenCount": 2478,
            "thoughtsTokenCount": 208,
            "totalTokenCount": 3301,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 99}, {"modality": "IMAGE", "tokenCount": 516}],
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 2240}],
        },
    )  # fmt: skip  (a recorded gemini-3-pro-image usage, docs.apiyi.com)
    assert usage is not None
    assert (usage.input_text_tokens, usage.input_image_tokens, usage.input_tokens) == (99, 516, 615)
    assert (usage.output_tokens, usage.output_image_tokens, usage.output_text_tokens) == (2686, 2240, 446)
    assert usage.total_tokens == 3301
    undetailed = wire.usage("g", {"prompt_token_count": 5, "candidates_token_count": 1290})  # snake_case, no details
    assert undetailed is not None and undetailed.output_image_tokens is None and undetailed.output_tokens == 1290
    both = wire.add_usage([usage, usage])
    assert both is not None and both.output_image_tokens == 4480 and both.total_tokens == 6602


def test_the_smallest_covering_image_size() -> None:
    spec = wire.WireSpec(method="generateContent", aspect_ratios=("1:1", "3:2"), image_sizes={"1K": 1024, "2K": 2048, "4K": 4096})
    assert wire.covering_size((1024, 1024), "1:1", spec) == "1K"
    assert wire.covering_size((1536, 1024), "3:2", spec) == "2K"
    assert wire.covering_size((9000, 6000), "3:2", spec) == "4K"  # beyond the largest: the largest
    assert wire.covering_size((512, 512), "1:1", spec.model_copy(update={"image_sizes": {}})) is None
