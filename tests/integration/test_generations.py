"""POST /v1/images/generations through the official openai SDK."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from openai import OpenAI

from support import decode_b64, decode_bytes


def test_sdk_generate_b64_png_of_the_asked_size(client: OpenAI) -> None:
    result = client.images.generate(model="test-pattern", prompt="a lighthouse at dusk", size="512x512")
    assert len(result.data) == 1
    img = decode_b64(result.data[0].b64_json)
    assert (img.format, img.size) == ("PNG", (512, 512))
    assert result.size == "512x512" and result.output_format == "png"
    assert result.created > 1_700_000_000


def test_sdk_generate_url_is_fetchable(client: OpenAI, server) -> None:
    result = client.images.generate(model="test-pattern", prompt="a lighthouse", size="256x256", response_format="url")
    url = result.data[0].url
    assert url and url.startswith(server.base_url + "/v1/images/files/") and result.data[0].b64_json is None
    r = httpx.get(url)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert int(r.headers["content-length"]) == len(r.content)
    img = decode_bytes(r.content)
    assert (img.format, img.size) == ("PNG", (256, 256))


@pytest.mark.parametrize("fmt,pil", [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_output_format(client: OpenAI, fmt: str, pil: str) -> None:
    result = client.images.generate(model="gpt-image-1", prompt="x", size="1024x1536", output_format=fmt)
    img = decode_b64(result.data[0].b64_json)
    assert (img.format, img.size) == (pil, (1024, 1536))
    assert result.output_format == fmt


def test_output_compression_changes_jpeg_size(client: OpenAI) -> None:
    sizes = []
    for level in (10, 95):
        result = client.images.generate(
            model="gpt-image-1", prompt="compress me", size="1024x1024", output_format="jpeg", output_compression=level
        )
        img = decode_b64(result.data[0].b64_json)
        assert img.format == "JPEG"
        sizes.append(len(result.data[0].b64_json))
    assert sizes[0] < sizes[1] * 0.6


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_transparent_background_has_alpha(client: OpenAI, fmt: str) -> None:
    result = client.images.generate(
        model="gpt-image-1", prompt="sticker", size="1024x1024", background="transparent", output_format=fmt
    )
    img = decode_b64(result.data[0].b64_json)
    assert img.mode == "RGBA"
    alpha = np.asarray(img.getchannel("A"))
    assert alpha.min() == 0, "some pixels must be fully transparent"
    assert alpha.max() == 255
    assert result.background == "transparent"


def test_opaque_by_default(client: OpenAI) -> None:
    img = decode_b64(client.images.generate(model="gpt-image-1", prompt="x", size="1024x1024").data[0].b64_json)
    assert img.mode == "RGB"


def test_n_images_distinct_and_seed_reproducible(client: OpenAI) -> None:
    kwargs = dict(model="test-pattern", prompt="seeded", size="256x256", n=3, extra_body={"seed": 42})
    first = client.images.generate(**kwargs)
    second = client.images.generate(**kwargs)
    assert len(first.data) == 3
    pixels = [np.asarray(decode_b64(d.b64_json)) for d in first.data]
    assert not np.array_equal(pixels[0], pixels[1]), "each image gets its own seed"
    for a, b in zip(first.data, second.data, strict=True):
        assert np.array_equal(np.asarray(decode_b64(a.b64_json)), np.asarray(decode_b64(b.b64_json)))
    other = client.images.generate(**{**kwargs, "extra_body": {"seed": 43}})
    assert not np.array_equal(pixels[0], np.asarray(decode_b64(other.data[0].b64_json)))


def test_dalle_models_default_to_url_and_gpt_models_to_b64(client: OpenAI) -> None:
    dalle = client.images.generate(model="dall-e-2", prompt="x", size="256x256")
    assert dalle.data[0].url and dalle.data[0].b64_json is None
    gpt = client.images.generate(model="gpt-image-1", prompt="x", size="1024x1024")
    assert gpt.data[0].b64_json and gpt.data[0].url is None


def test_response_format_url_honoured_for_gpt_image_models(client: OpenAI) -> None:
    result = client.images.generate(
        model="gpt-image-1", prompt="x", size="1024x1024", response_format="url", output_format="webp"
    )
    r = httpx.get(result.data[0].url)
    assert r.headers["content-type"] == "image/webp"
    assert decode_bytes(r.content).format == "WEBP"


def test_gateway_converts_format_and_size_the_provider_cannot_produce(client: OpenAI) -> None:
    # 'converting' is served by a provider that renders PNG at 640x480 only.
    result = client.images.generate(model="converting", prompt="x", size="1536x1024", output_format="jpeg", output_compression=50)
    img = decode_b64(result.data[0].b64_json)
    assert (img.format, img.size) == ("JPEG", (1536, 1024))
    assert result.size == "1536x1024" and result.output_format == "jpeg"


def test_auto_size_and_free_size(client: OpenAI) -> None:
    auto = decode_b64(client.images.generate(model="gpt-image-1", prompt="x").data[0].b64_json)
    assert auto.size == (1024, 1024)
    free = decode_b64(client.images.generate(model="gpt-image-2", prompt="x", size="1536x864").data[0].b64_json)
    assert free.size == (1536, 864)


def test_dalle3_style_reaches_the_provider(client: OpenAI) -> None:
    vivid = decode_b64(
        client.images.generate(model="dall-e-3", prompt="x", style="vivid", response_format="b64_json").data[0].b64_json
    )
    natural = decode_b64(
        client.images.generate(model="dall-e-3", prompt="x", style="natural", response_format="b64_json").data[0].b64_json
    )
    assert vivid.size == natural.size == (1024, 1024)
    assert not np.array_equal(np.asarray(vivid), np.asarray(natural))


def test_streaming_partial_images_then_completed(client: OpenAI) -> None:
    stream = client.images.generate(model="gpt-image-1", prompt="stream me", size="1024x1024", stream=True, partial_images=2)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    final = decode_b64(events[-1].b64_json)
    assert (final.format, final.size) == ("PNG", (1024, 1024))
    partial = decode_b64(events[0].b64_json)
    assert partial.size == final.size
    assert not np.array_equal(np.asarray(partial), np.asarray(final))
    assert events[-1].size == "1024x1024" and events[-1].output_format == "png"


def test_streaming_without_partials_sends_one_completed_event(client: OpenAI) -> None:
    events = list(client.images.generate(model="test-pattern", prompt="x", size="256x256", stream=True))
    assert [e.type for e in events] == ["image_generation.completed"]
    assert decode_b64(events[0].b64_json).size == (256, 256)


def test_default_model_is_used_when_none_is_named(server) -> None:
    r = httpx.post(f"{server.base_url}/v1/images/generations", json={"prompt": "x", "size": "256x256"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"].startswith("req_")
    assert decode_b64(r.json()["data"][0]["b64_json"]).size == (256, 256)
