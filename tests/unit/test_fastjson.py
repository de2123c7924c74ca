"""loads_images gives exactly what orjson.loads gives, on every shape."""

from __future__ import annotations

import base64
import os

import orjson
import pytest

from imagegate.providers.openai.fastjson import loads_images

B64 = base64.b64encode(os.urandom(30_000)).decode()

CASES = [
    {"created": 1, "data": [{"b64_json": B64}]},
    {"created": 1, "data": [{"b64_json": B64, "revised_prompt": 'he said "b64_json":"x" \\ ok'}, {"b64_json": B64[:100]}]},
    {"data": [{"url": "https://x/y.png"}], "usage": {"input_tokens": 1}},
    {"data": [{"b64_json": ""}]},
    {"data": [{"b64_json": None}]},
    {"data": [{"b64_json": 5}]},
    {"type": "image_generation.completed", "b64_json": B64, "usage": {"total_tokens": 3}},
    {"note": "\u00e9\u4e2d", "data": [{"b64_json": B64}]},
]


@pytest.mark.parametrize("doc", CASES)
@pytest.mark.parametrize("indent", [False, True])
def test_same_as_orjson(doc: dict, indent: bool) -> None:
    body = orjson.dumps(doc, option=orjson.OPT_INDENT_2 if indent else 0)
    assert loads_images(body) == orjson.loads(body)


def test_spaced_key_and_escaped_value_fall_back_correctly() -> None:
    body = b'{"data": [ { "b64_json" :  "QUJD" } , {"b64_json": "a\\/b"} ]}'
    assert loads_images(body) == orjson.loads(body) == {"data": [{"b64_json": "QUJD"}, {"b64_json": "a/b"}]}


@pytest.mark.parametrize("body", [b'{"b64_json": "abc', b'{"b64_json": x}', b"not json", b'{"b64_json":"\xff"}'])
def test_invalid_json_raises_like_orjson(body: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        loads_images(body)


def test_other_keys_give_what_orjson_gives() -> None:
    keys = ("data", "bytesBase64Encoded")
    body = (
        b'{"candidates":[{"content":{"parts":[{"text":"a \\"data\\": x"},{"inlineData":{"mimeType":"image/png","data":"QUJD"}}]}}],'
        b'"predictions":[{"bytesBase64Encoded":"REVG","mimeType":"image/png"}]}'
    )
    assert loads_images(body, keys) == orjson.loads(body)
    assert loads_images(body, keys)["predictions"][0]["bytesBase64Encoded"] == "REVG"
    odd = body[:-1] + b',"data":["not","a","string"]}'  # a key whose value is no string: the plain parse
    assert loads_images(odd, keys) == orjson.loads(odd)
