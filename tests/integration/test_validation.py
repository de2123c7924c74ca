"""Every validation rule: a failing request, its status, ``param`` and ``code``.

Raw HTTP (httpx) so malformed requests the SDK would never send can be sent.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import httpx
import pytest
from PIL import Image

from support import data_url, make_image, make_mask

MB = 1024 * 1024


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares huge dimensions (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _expect(r: httpx.Response, status: int, param: str | None, code: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param, err
    assert err["code"] == code, err
    assert err["message"] and "Traceback" not in err["message"]
    return err


GEN_CASES = [
    # (body, param, code)
    ({}, "prompt", "missing_required_parameter"),
    ({"prompt": ""}, "prompt", "empty_string"),
    ({"prompt": 5}, "prompt", "invalid_type"),
    ({"prompt": "x", "colour": "red"}, "colour", "unknown_parameter"),
    ({"prompt": "x", "n": 0}, "n", "integer_below_min_value"),
    ({"prompt": "x", "n": 11}, "n", "integer_above_max_value"),
    ({"prompt": "x", "n": "2"}, "n", "invalid_type"),
    ({"prompt": "x", "n": 1.5}, "n", "invalid_type"),
    ({"prompt": "x", "n": True}, "n", "invalid_type"),
    ({"prompt": "x", "model": "dall-e-3", "n": 2}, "n", "integer_above_max_value"),
    ({"prompt": "x" * 1001, "model": "dall-e-2"}, "prompt", "string_above_max_length"),
    ({"prompt": "x" * 4001, "model": "dall-e-3"}, "prompt", "string_above_max_length"),
    ({"prompt": "x" * 32001, "model": "gpt-image-1"}, "prompt", "string_above_max_length"),
    ({"prompt": "x", "model": "dall-e-2", "size": "1792x1024"}, "size", "invalid_value"),
    ({"prompt": "x", "model": "dall-e-3", "size": "512x512"}, "size", "invalid_value"),
    ({"prompt": "x", "model": "gpt-image-1", "size": "512x512"}, "size", "invalid_value"),
    ({"prompt": "x", "model": "gpt-image-1", "size": "big"}, "size", "invalid_value"),
    ({"prompt": "x", "model": "gpt-image-2", "size": "1000x1000"}, "size", "invalid_value"),  # not /16
    ({"prompt": "x", "model": "gpt-image-2", "size": "3840x640"}, "size", "invalid_value"),  # 6:1
    ({"prompt": "x", "model": "gpt-image-2", "size": "4096x2304"}, "size", "invalid_value"),  # too big
    ({"prompt": "x", "model": "dall-e-3", "quality": "low"}, "quality", "invalid_value"),
    ({"prompt": "x", "model": "gpt-image-1", "quality": "hd"}, "quality", "invalid_value"),
    ({"prompt": "x", "model": "dall-e-2", "quality": "hd"}, "quality", "invalid_value"),
    ({"prompt": "x", "model": "gpt-image-1", "style": "vivid"}, "style", "unsupported_parameter"),
    ({"prompt": "x", "model": "dall-e-3", "style": "loud"}, "style", "invalid_value"),
    ({"prompt": "x", "model": "dall-e-2", "background": "transparent"}, "background", "unsupported_parameter"),
    ({"prompt": "x", "model": "dall-e-3", "output_format": "png"}, "output_format", "unsupported_parameter"),
    ({"prompt": "x", "model": "dall-e-2", "output_compression": 50}, "output_compression", "unsupported_parameter"),
    ({"prompt": "x", "model": "dall-e-3", "moderation": "low"}, "moderation", "unsupported_parameter"),
    ({"prompt": "x", "model": "dall-e-2", "stream": True}, "stream", "unsupported_parameter"),
    ({"prompt": "x", "model": "dall-e-3", "partial_images": 1}, "partial_images", "unsupported_parameter"),
    ({"prompt": "x", "input_fidelity": "high"}, "input_fidelity", "unknown_parameter"),  # edits only
    ({"prompt": "x", "model": "gpt-image-1", "output_format": "gif"}, "output_format", "invalid_value"),
    ({"prompt": "x", "model": "gpt-image-1", "background": "clear"}, "background", "invalid_value"),
    ({"prompt": "x", "model": "gpt-image-1", "moderation": "high"}, "moderation", "invalid_value"),
    ({"prompt": "x", "response_format": "png"}, "response_format", "invalid_value"),
    (
        {"prompt": "x", "model": "gpt-image-1", "background": "transparent", "output_format": "jpeg"},
        "background",
        "invalid_value",
    ),
    ({"prompt": "x", "model": "gpt-image-1", "output_compression": 50}, "output_compression", "invalid_value"),  # png
    (
        {"prompt": "x", "model": "gpt-image-1", "output_format": "png", "output_compression": 80},
        "output_compression",
        "invalid_value",
    ),
    (
        {"prompt": "x", "model": "gpt-image-1", "output_format": "jpeg", "output_compression": 101},
        "output_compression",
        "integer_above_max_value",
    ),
    (
        {"prompt": "x", "model": "gpt-image-1", "output_format": "jpeg", "output_compression": -1},
        "output_compression",
        "integer_below_min_value",
    ),
    ({"prompt": "x", "model": "gpt-image-1", "partial_images": 4}, "partial_images", "integer_above_max_value"),
    ({"prompt": "x", "model": "gpt-image-1", "stream": "yes"}, "stream", "invalid_type"),
    ({"prompt": "x", "model": "gpt-image-1", "stream": True, "response_format": "url"}, "response_format", "invalid_value"),
    ({"prompt": "x", "model": "gpt-image-1", "seed": 1}, "seed", "unknown_parameter"),  # extension not for this model
    ({"prompt": "x", "model": "dall-e-3", "negative_prompt": "y"}, "negative_prompt", "unknown_parameter"),
    ({"prompt": "x", "model": "gpt-image-1", "num_inference_steps": 4}, "num_inference_steps", "unknown_parameter"),
    ({"prompt": "x", "model": "gpt-image-1", "guidance_scale": 3.5}, "guidance_scale", "unknown_parameter"),
    ({"prompt": "x", "seed": -1}, "seed", "integer_below_min_value"),
    ({"prompt": "x", "seed": "abc"}, "seed", "invalid_type"),
    ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps", "integer_below_min_value"),
    ({"prompt": "x", "user": 7}, "user", "invalid_type"),
]


@pytest.mark.parametrize("body,param,code", GEN_CASES, ids=[f"{c[1]}-{c[2]}-{i}" for i, c in enumerate(GEN_CASES)])
def test_generation_rule(server, body: dict[str, Any], param: str, code: str) -> None:
    r = httpx.post(f"{server.base_url}/v1/images/generations", json=body, timeout=30)
    _expect(r, 400, param, code)


def test_unknown_model_is_404(server) -> None:
    r = httpx.post(f"{server.base_url}/v1/images/generations", json={"prompt": "x", "model": "nope"})
    _expect(r, 404, "model", "model_not_found")


@pytest.mark.parametrize("model,endpoint", [("dall-e-3", "edits"), ("gpt-image-1", "variations")])
def test_model_without_that_endpoint(server, model: str, endpoint: str) -> None:
    files = {"image": ("i.png", make_image(256, 256), "image/png")}
    data = {"model": model} | ({"prompt": "x"} if endpoint == "edits" else {})
    r = httpx.post(f"{server.base_url}/v1/images/{endpoint}", files=files, data=data)
    _expect(r, 400, "model", "unsupported_model")


def test_null_means_default(server) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/images/generations",
        json={"prompt": "x", "n": None, "size": "256x256", "quality": None, "style": None},
    )
    assert r.status_code == 200, r.text


def _edit(server, files: list, data: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/images/edits", files=files, data={"prompt": "x", **(data or {})}, timeout=60)


PNG = make_image(256, 256)


EDIT_CASES = [
    # (files, data, param, code)
    ([("model", (None, "gpt-image-1"))], {}, "image", "missing_required_parameter"),
    ([("image", ("a.png", PNG, "image/png"))], {"model": "gpt-image-1", "prompt": ""}, "prompt", "empty_string"),
    ([("image", ("a.png", PNG, "image/png"))], {"model": "gpt-image-1", "style": "vivid"}, "style", "unknown_parameter"),
    ([("image", ("a.png", PNG, "image/png"))], {"model": "gpt-image-1", "n": "many"}, "n", "invalid_type"),
    ([("image", ("a.png", PNG, "image/png"))], {"model": "gpt-image-1", "stream": "maybe"}, "stream", "invalid_type"),
    (
        [("image", ("a.png", PNG, "image/png"))],
        {"model": "gpt-image-1", "input_fidelity": "max"},
        "input_fidelity",
        "invalid_value",
    ),
    (
        [("image", ("a.png", PNG, "image/png"))],
        {"model": "gpt-image-1-mini", "input_fidelity": "high"},
        "input_fidelity",
        "unsupported_parameter",
    ),
    (
        [("image", ("a.png", PNG, "image/png"))],
        {"model": "dall-e-2", "input_fidelity": "high"},
        "input_fidelity",
        "unsupported_parameter",
    ),
    ([("image", ("a.png", PNG, "image/png"))], {"model": "dall-e-2", "prompt": "x" * 1001}, "prompt", "string_above_max_length"),
    ([("image[]", ("a.png", PNG, "image/png"))] * 17, {"model": "gpt-image-1"}, "image", "too_many_images"),
    ([("image[]", ("a.png", PNG, "image/png"))] * 2, {"model": "dall-e-2"}, "image", "too_many_images"),
    ([("image[]", ("a.png", PNG, "image/png"))] * 40, {"model": "gpt-image-1"}, "image", "too_many_images"),
    # Sniffed from content: a JPEG named .png is a JPEG.
    ([("image", ("a.png", make_image(256, 256, "JPEG"), "image/png"))], {"model": "dall-e-2"}, "image", "invalid_image_format"),
    ([("image", ("a.png", make_image(256, 128), "image/png"))], {"model": "dall-e-2"}, "image", "invalid_image_dimensions"),
    (
        [("image", ("a.gif", make_image(64, 64, "GIF", "P", (1,)), "image/gif"))],
        {"model": "gpt-image-1"},
        "image",
        "invalid_image_format",
    ),
    ([("image", ("a.png", b"this is not an image", "image/png"))], {"model": "gpt-image-1"}, "image", "invalid_image_format"),
    ([("image", ("a.png", b"", "image/png"))], {"model": "gpt-image-1"}, "image", "invalid_image"),
    ([("image", ("a.png", PNG[: len(PNG) // 2], "image/png"))], {"model": "gpt-image-1"}, "image", "invalid_image"),
    (
        [("image", ("bomb.png", _png_header_only(60000, 60000), "image/png"))],
        {"model": "gpt-image-1"},
        "image",
        "image_too_large",
    ),
    (
        [("image", ("a.png", PNG, "image/png")), ("mask", ("m.jpg", make_image(256, 256, "JPEG"), "image/jpeg"))],
        {"model": "gpt-image-1"},
        "mask",
        "invalid_image_format",
    ),
    (
        [("image", ("a.png", PNG, "image/png")), ("mask", ("m.png", make_image(256, 256), "image/png"))],
        {"model": "gpt-image-1"},
        "mask",
        "invalid_mask",
    ),
    (
        [("image", ("a.png", PNG, "image/png")), ("mask", ("m.png", make_mask(128, 128, (0, 0, 8, 8)), "image/png"))],
        {"model": "gpt-image-1"},
        "mask",
        "invalid_image_dimensions",
    ),
    (
        [("image[]", ("a.png", PNG, "image/png")), ("image[]", ("b.png", b"junk", "image/png"))],
        {"model": "gpt-image-1"},
        "image[1]",
        "invalid_image_format",
    ),
    (
        [("image", ("a.png", PNG, "image/png")), ("prompt", ("p.txt", b"x", "text/plain"))],
        {"model": "gpt-image-1"},
        "prompt",
        "invalid_type",
    ),
    (
        [
            ("image", ("a.png", PNG, "image/png")),
            ("mask", ("m.png", make_mask(256, 256, (0, 0, 8, 8)), "image/png")),
            ("mask", ("m.png", make_mask(256, 256, (0, 0, 8, 8)), "image/png")),
        ],
        {"model": "gpt-image-1"},
        "mask",
        "duplicate_parameter",
    ),
]


@pytest.mark.parametrize("files,data,param,code", EDIT_CASES, ids=[f"{c[2]}-{c[3]}-{i}" for i, c in enumerate(EDIT_CASES)])
def test_edit_rule(server, files: list, data: dict[str, str], param: str, code: str) -> None:
    _expect(_edit(server, files, data), 400, param, code)


def test_image_sent_as_text_field(server) -> None:
    r = httpx.post(f"{server.base_url}/v1/images/edits", files=[("prompt", (None, "x")), ("image", (None, "not-a-file"))])
    _expect(r, 400, "image", "invalid_type")


def test_duplicate_text_field(server) -> None:
    files = [("image", ("a.png", PNG, "image/png")), ("n", (None, "1")), ("n", (None, "2")), ("prompt", (None, "x"))]
    _expect(httpx.post(f"{server.base_url}/v1/images/edits", files=files), 400, "n", "duplicate_parameter")


def test_dalle2_edit_image_over_4mb(server) -> None:
    noise = Image.frombytes("RGB", (1400, 1400), bytes(range(256)) * (1400 * 1400 * 3 // 256) + b"\0" * (1400 * 1400 * 3 % 256))
    buf = io.BytesIO()
    noise.save(buf, "PNG", compress_level=0)
    assert len(buf.getvalue()) > 4 * MB
    _expect(
        _edit(server, [("image", ("big.png", buf.getvalue(), "image/png"))], {"model": "dall-e-2"}),
        400,
        "image",
        "image_too_large",
    )


def test_gpt_image_edit_image_over_50mb(server) -> None:
    big = PNG + b"\0" * (50 * MB)  # the size check comes before any parsing
    _expect(_edit(server, [("image", ("big.png", big, "image/png"))], {"model": "gpt-image-1"}), 400, "image", "image_too_large")


JSON_EDIT_CASES = [
    ({"prompt": "x"}, "images", "missing_required_parameter"),
    ({"prompt": "x", "images": []}, "images", "invalid_type"),
    ({"prompt": "x", "images": "data:"}, "images", "invalid_type"),
    ({"prompt": "x", "images": ["data:image/png;base64,AAAA"]}, "images[0]", "invalid_type"),
    ({"prompt": "x", "images": [{"file_id": "file-123"}]}, "images[0].file_id", "unsupported_parameter"),
    ({"prompt": "x", "images": [{"image_url": data_url(PNG), "detail": "high"}]}, "images[0].detail", "unknown_parameter"),
    ({"prompt": "x", "images": [{}]}, "images[0].image_url", "missing_required_parameter"),
    ({"prompt": "x", "images": [{"image_url": "ftp://example.com/a.png"}]}, "images[0]", "invalid_image_url"),
    ({"prompt": "x", "images": [{"image_url": "data:image/png,rawbytes"}]}, "images[0]", "invalid_image_url"),
    ({"prompt": "x", "images": [{"image_url": "data:image/png;base64,!!!!"}]}, "images[0]", "invalid_image_url"),
    ({"prompt": "x", "images": [{"image_url": data_url(b"nope")}]}, "images[0]", "invalid_image_format"),
    ({"prompt": "x", "images": [{"image_url": data_url(PNG)}] * 17}, "images", "too_many_images"),
    ({"prompt": "x", "image": "a", "images": [{"image_url": data_url(PNG)}]}, "image", "unknown_parameter"),
    ({"prompt": "x", "images": [{"image_url": data_url(PNG)}], "mask": {"image_url": data_url(PNG)}}, "mask", "invalid_mask"),
    ({"prompt": "x", "images": [{"image_url": data_url(PNG)}], "n": "3"}, "n", "invalid_type"),
]


@pytest.mark.parametrize("body,param,code", JSON_EDIT_CASES, ids=[f"{c[1]}-{c[2]}-{i}" for i, c in enumerate(JSON_EDIT_CASES)])
def test_json_edit_rule(server, body: dict[str, Any], param: str, code: str) -> None:
    r = httpx.post(f"{server.base_url}/v1/images/edits", json={"model": "gpt-image-1", **body}, timeout=30)
    _expect(r, 400, param, code)


VARIATION_CASES = [
    ([("image", ("a.png", PNG, "image/png"))], {"prompt": "x"}, "prompt", "unknown_parameter"),
    ([("image", ("a.png", PNG, "image/png"))], {"size": "1024x1536"}, "size", "invalid_value"),
    ([("image", ("a.png", PNG, "image/png"))], {"quality": "high"}, "quality", "unknown_parameter"),
    ([("image", ("a.png", make_image(256, 200), "image/png"))], {}, "image", "invalid_image_dimensions"),
    ([("image", ("a.webp", make_image(256, 256, "WEBP"), "image/webp"))], {}, "image", "invalid_image_format"),
    ([("image[]", ("a.png", PNG, "image/png"))] * 2, {}, "image", "too_many_images"),
    ([], {}, "image", "missing_required_parameter"),
]


@pytest.mark.parametrize(
    "files,data,param,code", VARIATION_CASES, ids=[f"{c[2]}-{c[3]}-{i}" for i, c in enumerate(VARIATION_CASES)]
)
def test_variation_rule(server, files: list, data: dict[str, str], param: str, code: str) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/images/variations",
        files=files or [("model", (None, "dall-e-2"))],
        data={"model": "dall-e-2", **data} if files else data,
        timeout=30,
    )
    _expect(r, 400, param, code)
