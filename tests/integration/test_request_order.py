"""What a request meets first: the model (a 404 before any 400), near-miss
values named, and multipart file parts taken by their name as OpenAI takes
them (with or without ``filename=``). Raw HTTP: hand-built bodies."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image

from support import data_url, decode_b64, make_image, make_mask

PNG = make_image(64, 64)
BOUNDARY = "imagegate-hand-built-boundary"


def _error(r: httpx.Response, status: int, param: str, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code), err
    return err


def _multipart(*parts: tuple[str, bytes, bool]) -> tuple[bytes, dict[str, str]]:
    """A multipart body built by hand: (name, content, with a filename=?) per part."""
    body = b""
    for name, content, with_filename in parts:
        disposition = f'form-data; name="{name}"' + ('; filename="upload.png"' if with_filename else "")
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def _post_form(server, endpoint: str, *parts: tuple[str, bytes, bool]) -> httpx.Response:  # noqa: ANN001
    body, headers = _multipart(*parts)
    return httpx.post(f"{server.base_url}/v1/images/{endpoint}", content=body, headers=headers, timeout=60)


# -- the model first ----------------------------------------------------------

UNSERVED = [
    ("generations", {"model": "nope", "prompt": "x", "response_format": "json"}),
    ("generations", {"model": "nope", "colour": "red", "n": "2", "size": "big"}),
    ("generations", {"model": "nope"}),  # no prompt either
    ("edits", {"model": "nope", "image": "a"}),  # JSON edit: 'image' is wrong there too
    ("edits", {"model": "nope", "prompt": "x", "images": [], "response_format": "json"}),
]


@pytest.mark.parametrize("endpoint,body", UNSERVED, ids=[f"{e}-{i}" for i, (e, _) in enumerate(UNSERVED)])
def test_a_model_not_served_is_404_before_any_400(server, endpoint: str, body: dict[str, Any]) -> None:
    r = httpx.post(f"{server.base_url}/v1/images/{endpoint}", json=body, timeout=30)
    assert "nope" in _error(r, 404, "model", "model_not_found")["message"]


@pytest.mark.parametrize("endpoint", ["edits", "variations"])
def test_a_multipart_model_not_served_is_404_before_any_400(server, endpoint: str) -> None:
    r = _post_form(server, endpoint, ("model", b"nope", False), ("response_format", b"json", False), ("n", b"99", False),
                   ("image", PNG, True))  # fmt: skip
    _error(r, 404, "model", "model_not_found")


def test_a_model_of_the_wrong_type_is_named(server) -> None:
    r = httpx.post(f"{server.base_url}/v1/images/generations", json={"model": 5, "prompt": "x"}, timeout=30)
    assert "expected a string" in _error(r, 400, "model", "invalid_type")["message"]


@pytest.mark.parametrize(
    "field,value,guess",
    [("response_format", "json", "b64_json"), ("response_format", "base64", "b64_json"), ("response_format", "URL", "url"),
     ("output_format", "jpg", "jpeg"), ("background", "transparant", "transparent")],
)  # fmt: skip
def test_a_near_miss_value_says_did_you_mean(server, field: str, value: str, guess: str) -> None:
    body = {"model": "gpt-image-1", "prompt": "x", field: value}
    err = _error(httpx.post(f"{server.base_url}/v1/images/generations", json=body, timeout=30), 400, field, "invalid_value")
    assert err["message"].endswith(f"Did you mean '{guess}'?"), err["message"]


def test_a_far_value_guesses_nothing(server) -> None:
    body = {"model": "gpt-image-1", "prompt": "x", "response_format": "png"}
    err = _error(httpx.post(f"{server.base_url}/v1/images/generations", json=body, timeout=30), 400, "response_format",
                 "invalid_value")  # fmt: skip
    assert "Did you mean" not in err["message"]


# -- file parts by their name -------------------------------------------------


def test_an_image_part_without_a_filename_is_a_file(server) -> None:
    r = _post_form(server, "edits", ("model", b"test-pattern", False), ("prompt", b"a red boat", False), ("image", PNG, False))
    assert r.status_code == 200, r.text
    assert decode_b64(r.json()["data"][0]["b64_json"]).size == (64, 64)


def test_image_list_and_mask_parts_without_filenames_are_files(server) -> None:
    mask = make_mask(64, 64, (0, 0, 32, 32))
    r = _post_form(server, "edits", ("model", b"gpt-image-1", False), ("prompt", b"x", False), ("image[]", PNG, False),
                   ("image[]", make_image(64, 64, "JPEG"), False), ("mask", mask, False))  # fmt: skip
    assert r.status_code == 200, r.text
    r = _post_form(server, "variations", ("model", b"dall-e-2", False), ("image", PNG, False),
                   ("response_format", b"b64_json", False))  # fmt: skip
    assert r.status_code == 200, r.text


def test_a_large_image_part_without_a_filename_is_not_capped_as_text(server) -> None:
    noise = Image.frombytes("RGB", (720, 720), bytes(range(256)) * (720 * 720 * 3 // 256))
    buf = io.BytesIO()
    noise.save(buf, "PNG", compress_level=0)
    assert len(buf.getvalue()) > 1024 * 1024  # over the text-field cap
    r = _post_form(server, "edits", ("model", b"test-pattern", False), ("prompt", b"x", False), ("image", buf.getvalue(), False),
                   ("size", b"64x64", False))  # fmt: skip
    assert r.status_code == 200, r.text


def test_a_binary_non_image_part_without_a_filename_is_judged_as_an_image(server) -> None:
    r = _post_form(
        server, "edits", ("model", b"gpt-image-1", False), ("prompt", b"x", False), ("image", b"\xff\x00\xfe" * 10, False)
    )
    _error(r, 400, "image", "invalid_image_format")


def test_text_parts_stay_text_fields(server) -> None:
    # an `image` part holding text (a URL) is still refused as a text field...
    r = _post_form(server, "edits", ("prompt", b"x", False), ("image", data_url(PNG).encode(), False))
    assert "got a text field" in _error(r, 400, "image", "invalid_type")["message"]
    # ...a textual prompt is a text field (the request works) and a prompt sent as a file is refused
    ok = _post_form(server, "edits", ("model", b"test-pattern", False), ("prompt", "a lighthouse \u00e0 dusk".encode(), False),
                    ("image", PNG, True))  # fmt: skip
    assert ok.status_code == 200, ok.text
    r = _post_form(server, "edits", ("prompt", b"x", True), ("image", PNG, True))
    assert "got a file upload" in _error(r, 400, "prompt", "invalid_type")["message"]
