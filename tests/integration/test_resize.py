"""A provider image of another size than asked: the model's ``resize``
(crop, pad, none) decides, and the answer says what was done
(``x-imagegate-resized``, the answer's ``size``, an INFO log line)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from imagegate.providers.testpattern import caption_geometry
from support import BASE_CONFIG, Running, decode_b64, run_server

FIXED = {"type": "test-pattern", "formats": ["png"], "fixed_size": "640x480"}  # landscape, whatever is asked


def _model(**extra: Any) -> dict[str, Any]:
    return {"rules": "gpt-image-1", "deployments": [{"provider": "fixed"}], **extra}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    config = {
        **BASE_CONFIG,
        "providers": {**BASE_CONFIG["providers"], "fixed": FIXED, "square": {**FIXED, "fixed_size": "512x512"}},
        "models": {
            "crop": _model(),  # the default
            "pad": _model(resize="pad"),
            "pad-magenta": _model(resize="pad", pad_color="#ff00ff"),
            "none": _model(resize="none"),
            "square": {"rules": "gpt-image-1", "deployments": [{"provider": "square"}], "resize": "pad"},
            "gpt-image-1": [{"provider": "demo"}],
        },
        "default_model": "crop",
    }
    with run_server(config, tmp_path_factory.mktemp("resize")) as running:
        yield running


@pytest.fixture
def generate(gw: Running) -> Iterator[Callable[..., httpx.Response]]:
    with gw.http() as http:

        def call(model: str, **body: Any) -> httpx.Response:
            r = http.post("/v1/images/generations", json={"model": model, "prompt": "a lighthouse", **body})
            assert r.status_code == 200, r.text
            return r

        yield call


def _image(r: httpx.Response) -> Image.Image:
    return decode_b64(r.json()["data"][0]["b64_json"])


def _below_caption(pixels: np.ndarray) -> np.ndarray:
    """The provider's 640x480 render without its caption band (the caption names the model)."""
    return pixels[caption_geometry((640, 480))[2] + 4 :]


def test_crop_is_the_default_and_says_so(generate: Callable[..., httpx.Response], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imagegate.gateway")
    r = generate("crop", size="1024x1536")
    assert r.headers["x-imagegate-resized"] == "640x480->1024x1536; crop"
    assert _image(r).size == (1024, 1536) and r.json()["size"] == "1024x1536"
    assert any("640x480->1024x1536; crop" in rec.getMessage() and rec.levelno == logging.INFO for rec in caplog.records)
    # nothing resized, nothing said: a provider that renders the asked size, or no size asked
    assert "x-imagegate-resized" not in generate("gpt-image-1", size="1024x1536").headers
    assert "x-imagegate-resized" not in generate("crop").headers


def test_pad_keeps_the_whole_source_with_transparent_bars(generate: Callable[..., httpx.Response]) -> None:
    source = np.asarray(_image(generate("none", size="1024x1536")).convert("RGB"), dtype=float)
    assert source.shape[:2] == (480, 640)
    r = generate("pad", size="1024x1536")
    assert r.headers["x-imagegate-resized"] == "640x480->1024x1536; pad"
    padded = _image(r)
    assert padded.size == (1024, 1536) and padded.mode == "RGBA"
    assert r.json()["size"] == "1024x1536" and r.json()["background"] == "transparent"  # the bars are
    rgba = np.asarray(padded)
    # 640x480 scaled by 1.6 is 1024x768, centred: rows 384..1151 hold the source, the rest is padding
    assert (rgba[:380, :, 3] == 0).all() and (rgba[1156:, :, 3] == 0).all()
    assert (rgba[390:1146, :, 3] == 255).all()
    content = Image.fromarray(rgba[384:1152, :, :3]).resize((640, 480), Image.Resampling.LANCZOS)
    diff = np.abs(_below_caption(np.asarray(content, dtype=float)) - _below_caption(source))
    assert diff.mean() < 4, "the whole source, edge to edge, is in the padded image"


def test_pad_without_alpha_uses_the_edge_colour_or_the_configured_one(generate: Callable[..., httpx.Response]) -> None:
    source = np.asarray(_image(generate("none", output_format="jpeg", size="1024x1536")).convert("RGB"), dtype=float)
    edge = np.concatenate([source[:15], source[-15:]]).reshape(-1, 3).mean(axis=0)  # the edges the bars continue
    jpeg = generate("pad", size="1024x1536", output_format="jpeg")
    img = _image(jpeg)
    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (1024, 1536))
    assert "background" not in jpeg.json() or jpeg.json()["background"] != "transparent"
    bar = np.asarray(img, dtype=float)[:300].reshape(-1, 3).mean(axis=0)
    assert np.abs(bar - edge).max() < 12, (bar, edge)
    opaque = _image(generate("pad-magenta", size="1024x1536", background="opaque"))
    assert (
        opaque.mode == "RGB"
        and np.abs(np.asarray(opaque, dtype=float)[:300].reshape(-1, 3).mean(axis=0) - (255, 0, 255)).max() < 2
    )


def test_none_returns_the_provider_image_and_its_true_size(generate: Callable[..., httpx.Response]) -> None:
    r = generate("none", size="1024x1536", output_format="webp")
    img = _image(r)
    assert (img.format, img.size) == ("WEBP", (640, 480))  # converted, not resized
    assert r.json()["size"] == "640x480" and "x-imagegate-resized" not in r.headers


def test_same_aspect_ratio_is_only_scaled(generate: Callable[..., httpx.Response]) -> None:
    r = generate("square", size="1024x1024")
    assert r.headers["x-imagegate-resized"] == "512x512->1024x1024; scale"
    assert _image(r).size == (1024, 1024) and _image(r).mode == "RGB"  # no bars, no alpha added


def test_a_stream_says_so_in_its_headers(gw: Running) -> None:
    body = {"model": "pad", "prompt": "x", "size": "1536x1024", "stream": True, "partial_images": 1}
    with httpx.stream("POST", f"{gw.base_url}/v1/images/generations", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["x-imagegate-resized"] == "640x480->1536x1024; pad"
        text = r.read().decode()
    completed = [line for line in text.splitlines() if line.startswith("data:") and "completed" in line][-1]
    event = json.loads(completed[5:])
    assert event["size"] == "1536x1024" and event["background"] == "transparent"
    assert decode_b64(event["b64_json"]).size == (1536, 1024)
    assert base64.b64decode(event["b64_json"])[:4] == b"\x89PNG"
