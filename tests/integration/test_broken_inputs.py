"""Images whose headers read fine but whose pixels cannot be decoded are the
client's fault: 400 ``invalid_image`` naming the field, never a 500 from
inside a provider."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from support import BROKEN_PNGS, data_url, make_image, png_with_idat

BROKEN = pytest.mark.parametrize("idat", list(BROKEN_PNGS.values()), ids=list(BROKEN_PNGS))


def _refused(err: pytest.ExceptionInfo[openai.BadRequestError], param: str) -> None:
    body = err.value.body
    assert err.value.status_code == 400
    assert (body["type"], body["code"], body["param"]) == ("invalid_request_error", "invalid_image", param), body
    assert param in body["message"]


@BROKEN
def test_edit_with_undecodable_image(client: OpenAI, idat: bytes) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(model="test-pattern", image=("a.png", png_with_idat(idat), "image/png"), prompt="x")
    _refused(err, "image")


@BROKEN
def test_edit_with_an_undecodable_second_image(client: OpenAI, idat: bytes) -> None:
    images = [("a.png", make_image(64, 64), "image/png"), ("b.png", png_with_idat(idat), "image/png")]
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(model="test-pattern", image=images, prompt="x")
    _refused(err, "image[1]")


@BROKEN
def test_edit_with_undecodable_mask(client: OpenAI, idat: bytes) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(
            model="test-pattern",
            image=("a.png", make_image(64, 64), "image/png"),
            mask=("m.png", png_with_idat(idat, mode="RGBA"), "image/png"),
            prompt="x",
        )
    _refused(err, "mask")


@BROKEN
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_variation_with_undecodable_image(client: OpenAI, idat: bytes) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.create_variation(model="test-pattern", image=("a.png", png_with_idat(idat), "image/png"))
    _refused(err, "image")


def test_json_edit_with_undecodable_image_url(server) -> None:
    body = {
        "model": "test-pattern",
        "prompt": "x",
        "images": [{"image_url": data_url(png_with_idat(BROKEN_PNGS["garbage_idat"]))}],
    }
    r = httpx.post(f"{server.base_url}/v1/images/edits", json=body)
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("invalid_image", "images[0]")
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("size", ["64x64\n", "64x64\r\n", "64x64 ", "\n64x64"])
def test_a_size_with_trailing_junk_is_refused(client: OpenAI, size: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="test-pattern", prompt="x", size=size)  # type: ignore[arg-type]
    assert (err.value.body["param"], err.value.body["code"]) == ("size", "invalid_value")
