"""The offline test model: its caption tells what the answer says, and an
edit of a test pattern repaints the old caption instead of writing over it."""

from __future__ import annotations

import base64

import numpy as np
from openai import OpenAI

from imagegate.providers.testpattern import caption_geometry
from support import decode_b64, make_image

LONG_PROMPT = "a lighthouse at dusk, oil painting, long waves breaking on the rocks, gulls, a very long prompt " * 3


def _pixels(b64: str | None) -> np.ndarray:
    assert b64 is not None
    return np.asarray(decode_b64(b64).convert("RGB"))


def test_caption_shows_the_quality_the_answer_reports(client: OpenAI) -> None:
    common = dict(model="test-pattern", prompt="a red fox", size="256x256")
    auto = client.images.generate(**common, quality="auto")
    medium = client.images.generate(**common, quality="medium")
    high = client.images.generate(**common, quality="high")
    assert auto.quality == medium.quality == "medium" and high.quality == "high"
    # The caption is the only thing quality changes: "auto" renders exactly as
    # the "medium" it resolves to (it used to print q=auto), "high" does not.
    assert np.array_equal(_pixels(auto.data[0].b64_json), _pixels(medium.data[0].b64_json))
    assert not np.array_equal(_pixels(auto.data[0].b64_json), _pixels(high.data[0].b64_json))


def _edit(client: OpenAI, image: bytes, **extra: object) -> np.ndarray:
    result = client.images.edit(
        model="test-pattern", image=("in.png", image, "image/png"), prompt="add a boat", extra_body={"seed": 7}, **extra
    )
    return _pixels(result.data[0].b64_json)


def test_an_edit_repaints_the_caption_band_of_a_test_pattern(client: OpenAI) -> None:
    """The edit of a test pattern whose caption runs over several lines, and
    the edit of a plain image, with the same prompt and seed: their caption
    bands are pixel for pixel the same (nothing of the old caption shows
    through), while below the band each shows its own input."""
    for size in ("256x256", "384x256", "256x384"):
        source = client.images.generate(model="test-pattern", prompt=LONG_PROMPT, size=size)
        captioned = base64.b64decode(source.data[0].b64_json or "")
        width, height = (int(v) for v in size.split("x"))
        plain = make_image(width, height, color=(40, 120, 200))
        for edit_size in (None, "256x256", "512x512"):
            extra = {"size": edit_size} if edit_size else {}
            over_caption, over_plain = _edit(client, captioned, **extra), _edit(client, plain, **extra)
            band = caption_geometry((over_caption.shape[1], over_caption.shape[0]))[2]
            assert np.array_equal(over_caption[:band], over_plain[:band]), (size, edit_size)
            assert (over_caption[:band] < 64).all(axis=2).any(), "the band holds the new caption's dark text"
            assert not np.array_equal(over_caption[band:], over_plain[band:]), "below it, the inputs differ"
