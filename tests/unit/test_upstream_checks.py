"""Plausibility checks on upstream usage, and secret redaction in upstream text."""

from __future__ import annotations

from dataclasses import replace

import pytest

from imagegate.contract.results import Usage
from imagegate.errors import ImagegateError, UpstreamError
from imagegate.gateway.checks import MAX_TOKENS, check_usage
from imagegate.providers.redact import redact, redact_error

GOOD = Usage(input_tokens=200, output_tokens=1056, total_tokens=1256, input_text_tokens=40, input_image_tokens=160,
             output_image_tokens=1056, output_text_tokens=0)  # fmt: skip


@pytest.mark.parametrize(
    "usage",
    [
        GOOD,
        None,
        Usage(0, 0, 0),
        replace(GOOD, total_tokens=0),  # not reported
        replace(GOOD, total_tokens=2000),  # more than its parts: not charged, passed on
        replace(GOOD, output_image_tokens=None, output_text_tokens=None),
        Usage(input_tokens=MAX_TOKENS, output_tokens=0, total_tokens=MAX_TOKENS),
    ],
)
def test_plausible_usage_passes(usage: Usage | None) -> None:
    check_usage(usage, "up")


@pytest.mark.parametrize(
    "usage,fragment",
    [
        (replace(GOOD, output_tokens=-1), "output_tokens is -1"),
        (replace(GOOD, input_tokens=-100_000_000), "input_tokens is -100000000"),
        (replace(GOOD, total_tokens=-1), "total_tokens is -1"),
        (replace(GOOD, input_text_tokens=-1), "input_tokens_details.text_tokens"),
        (replace(GOOD, output_image_tokens=-1), "output_tokens_details.image_tokens"),
        (replace(GOOD, output_tokens=MAX_TOKENS + 1, total_tokens=MAX_TOKENS + 201), "output_tokens is"),
        (replace(GOOD, input_image_tokens=500), "input token details"),
        (replace(GOOD, output_text_tokens=5000), "output token details"),
        (replace(GOOD, total_tokens=1255), "total_tokens is less"),
    ],
)
def test_impossible_usage_is_an_invalid_upstream_response(usage: Usage, fragment: str) -> None:
    with pytest.raises(UpstreamError) as info:
        check_usage(usage, "up")
    assert info.value.status == 502 and info.value.code == "invalid_upstream_response"
    assert fragment in info.value.message and "'up'" in info.value.message


@pytest.mark.parametrize(
    "text,secrets,expected",
    [
        ("key abc-secret-value leaked", ["abc-secret-value"], "key [redacted] leaked"),
        ("Authorization: Bearer tok.en_123 sent", [], "Authorization: Bearer [redacted] sent"),
        ("Incorrect API key provided: sk-proj-Ab12***xyz9.", [], "Incorrect API key provided: sk-[redacted]."),
        ('{"api-key": "0123abcd"}', [], '{"api-key": "[redacted]"}'),
        ("see ?api_key=zzz&x=1", [], "see ?api_key=[redacted]&x=1"),
        ("a longer-secret and its prefix longer", ["longer", "longer-secret"], "a [redacted] and its prefix [redacted]"),
        ("Invalid size 64x64 for task-runner", [None, ""], "Invalid size 64x64 for task-runner"),
    ],
)
def test_redact(text: str, secrets: list[str | None], expected: str) -> None:
    assert redact(text, secrets) == expected


def test_redact_error_scrubs_every_field_and_the_traceback_text() -> None:
    exc = ImagegateError("bad key s3cr3t-value", param="s3cr3t-value", code="s3cr3t-value", status=400, type="x s3cr3t-value")
    assert redact_error(exc, ["s3cr3t-value"]) is exc
    assert "s3cr3t" not in f"{exc} {exc.args} {exc.envelope()}"
