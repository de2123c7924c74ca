"""Imaging: sniffing, bomb refusal, conversion; and URL signing."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from imagegate.contract import catalog
from imagegate.contract.requests import GenerationFields, ImageRequest
from imagegate.contract.results import GeneratedImage
from imagegate.errors import InvalidImageError, UpstreamError
from imagegate.gateway.output import shape_images
from imagegate.imaging.convert import Target, conform
from imagegate.imaging.probe import ImageProbeError, decode_input, probe
from imagegate.storage.signing import SignatureExpired, SignatureInvalid, URLSigner
from support import BROKEN_PNGS, decode_bytes, make_image, png_with_idat

BIG = 50_000_000


@pytest.mark.parametrize("fmt,name", [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("GIF", "gif")])
def test_probe_sniffs_format_from_content(fmt: str, name: str) -> None:
    mode = "P" if fmt == "GIF" else "RGB"
    color = (3,) if fmt == "GIF" else (1, 2, 3)
    info = probe(make_image(40, 30, fmt, mode, color), max_pixels=BIG)
    assert (info.format, info.width, info.height) == (name, 40, 30)


def test_probe_alpha() -> None:
    assert probe(make_image(8, 8, "PNG", "RGBA", (0, 0, 0, 0)), max_pixels=BIG).has_alpha
    assert not probe(make_image(8, 8, "PNG", "RGB"), max_pixels=BIG).has_alpha


def test_probe_refuses_too_many_pixels_before_decoding() -> None:
    data = make_image(100, 100)
    with pytest.raises(ImageProbeError) as info:
        probe(data, max_pixels=9_999)
    assert info.value.code == "image_too_large"


@pytest.mark.parametrize(
    "data,code", [(b"", "invalid_image"), (make_image(64, 64)[:60], "invalid_image"), (b"hello", "invalid_image_format")]
)
def test_probe_rejects_garbage(data: bytes, code: str) -> None:
    with pytest.raises(ImageProbeError) as info:
        probe(data, max_pixels=BIG)
    assert info.value.code == code


def test_conform_returns_same_bytes_when_nothing_to_do() -> None:
    data = make_image(64, 64)
    out, size, resized = conform(data, Target("png", size=(64, 64)), max_pixels=BIG)
    assert out is data and size == (64, 64) and not resized


def test_conform_converts_format_size_and_flattens_alpha() -> None:
    data = make_image(100, 50, "PNG", "RGBA", (255, 0, 0, 0))
    out, size, resized = conform(data, Target("jpeg", compression=80, size=(64, 64)), max_pixels=BIG)
    img = decode_bytes(out)
    assert (img.format, img.size, img.mode, size, resized) == ("JPEG", (64, 64), "RGB", (64, 64), True)
    # fully transparent red flattened onto white
    assert np.asarray(img).mean() > 240


def test_conform_keeps_alpha_for_transparent_webp() -> None:
    data = make_image(32, 32, "PNG", "RGBA", (0, 255, 0, 0))
    out, _, _ = conform(data, Target("webp", transparent=True), max_pixels=BIG)
    img = decode_bytes(out)
    assert img.format == "WEBP" and img.mode == "RGBA"
    assert np.asarray(img.getchannel("A")).max() == 0


def test_conform_compression_changes_size() -> None:
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, "PNG")
    small, _, _ = conform(buf.getvalue(), Target("jpeg", compression=10), max_pixels=BIG)
    large, _, _ = conform(buf.getvalue(), Target("jpeg", compression=95), max_pixels=BIG)
    assert len(small) < len(large) / 2


def test_catalog_sizes() -> None:
    gpt2 = catalog.lookup("gpt-image-2")
    assert gpt2 is not None
    assert gpt2.allows_size("1536x864") is None
    assert "multiples of 16" in (gpt2.allows_size("1000x1000") or "")
    assert "aspect ratio" in (gpt2.allows_size("3840x1152") or "")
    dalle2 = catalog.lookup("dall-e-2")
    assert dalle2 is not None and dalle2.allows_size("512x512") is None
    assert dalle2.allows_size("1024x1536") is not None
    assert catalog.parse_size("auto") is None and catalog.parse_size("12x34") == (12, 34)


def test_signer_round_trip_expiry_and_tampering() -> None:
    signer = URLSigner(b"k" * 32, ttl_seconds=60)
    url = signer.url("http://h/", "abc.png", now=1000)
    query = dict(p.split("=") for p in url.split("?")[1].split("&"))
    assert url.startswith("http://h/v1/images/files/abc.png?")
    assert signer.verify("abc.png", query["expires"], query["signature"], now=1059) == 1060
    with pytest.raises(SignatureExpired):
        signer.verify("abc.png", query["expires"], query["signature"], now=1061)
    with pytest.raises(SignatureInvalid):
        signer.verify("abd.png", query["expires"], query["signature"], now=1000)
    with pytest.raises(SignatureInvalid):
        signer.verify("abc.png", "1061", query["signature"], now=1000)
    with pytest.raises(SignatureInvalid):
        URLSigner(b"x" * 32, 60).verify("abc.png", query["expires"], query["signature"], now=1000)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_probe_detects_truncation_of_each_format(fmt: str) -> None:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    whole = buf.getvalue()
    assert probe(whole, max_pixels=BIG).nbytes == len(whole)
    for cut in (len(whole) // 2, len(whole) - 3):
        with pytest.raises(ImageProbeError) as info:
            probe(whole[:cut], max_pixels=BIG)
        assert info.value.code == "invalid_image"


@pytest.mark.parametrize("idat", list(BROKEN_PNGS.values()), ids=list(BROKEN_PNGS))
def test_undecodable_pixels_pass_the_header_probe_then_fail_typed(idat: bytes) -> None:
    broken = png_with_idat(idat)
    assert probe(broken, max_pixels=BIG).width == 64  # headers and chunk chain are fine
    with pytest.raises(InvalidImageError) as client_err:  # a client's image: 400 naming the field
        decode_input(broken, "image[2]", max_pixels=BIG)
    assert (client_err.value.status, client_err.value.param, client_err.value.code) == (400, "image[2]", "invalid_image")
    spec = catalog.lookup("gpt-image-1")
    assert spec is not None
    request = ImageRequest("generations", "gpt-image-1", spec, GenerationFields(prompt="x", output_format="jpeg"))
    with pytest.raises(UpstreamError) as upstream_err:  # a provider's image that needs converting: 502
        asyncio.run(shape_images(request, [GeneratedImage(broken, "png")], BIG))
    assert (upstream_err.value.status, upstream_err.value.code) == (502, "invalid_upstream_image")
