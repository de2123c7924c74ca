"""A stand-in OpenAI Images upstream that answers instantly (for benchmarks).

Generations and edits get the same prebuilt ``ImagesResponse`` holding one
realistic ~2 MB 1024x1024 PNG as ``b64_json``; request bodies are read in
full (as a real server must) and otherwise ignored. Run with uvicorn:
``python -m uvicorn --app-dir bench fast_upstream:app``.

Any path gets that answer (OpenAI's ``/v1/images/...``, Azure's v1
``/openai/v1/images/...``, xAI's ``/v1/images/generations``: the same shape),
except Ark's ``.../api/v3/images/generations`` (Seedream), which gets Ark's:
``data[].b64_json`` + ``size``, ``usage: {generated_images, output_tokens,
total_tokens}`` (tokens ``w*h/256``; tests/standin_seedream.py cites the docs).
``BENCH_SIZE=WxH`` sets the image's size (default 1024x1024).

Google's and Stability's native shapes, by path: ``...:generateContent``
(Gemini: ``candidates[0].content.parts[0].inlineData`` and a
``usageMetadata`` of 1290 image tokens), ``...:predict`` (Imagen:
``predictions[0].bytesBase64Encoded``), ``/v2beta/stable-image/...``
(Stability: the PNG's bytes with ``finish-reason: SUCCESS``), and ``/token``
(an OAuth token for Vertex's service-account exchange; the assertion is not
checked here, tests/standin_google_oauth.py does). Their documented shapes
are cited in tests/standin_google.py and tests/standin_stability.py.

``BENCH_DELAY_MS`` makes each success take that long (a generation's time);
``BENCH_FAIL_RATE`` (0-1) answers that share of requests with an OpenAI-style
500, at once or, with ``BENCH_FAIL_SLOW=1``, after the generation time.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import random

import numpy as np
import orjson
from PIL import Image


def realistic_png(seed: int = 0, width: int = 1024, height: int = 1024) -> bytes:
    """RGB PNG (1024x1024: about 2 MB) of smooth gradients plus noise, like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x / 4) % 256, (y / 4) % 256, ((x + y) / 8) % 256], axis=-1)
    noisy = base + rng.normal(0, float(os.environ.get("BENCH_NOISE", "9")), base.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "PNG", compress_level=6)
    return buf.getvalue()


SIZE = os.environ.get("BENCH_SIZE", "1024x1024")
WIDTH, HEIGHT = (int(edge) for edge in SIZE.split("x"))
PNG = realistic_png(0, WIDTH, HEIGHT)
B64 = base64.b64encode(PNG).decode()
BODY = orjson.dumps(
    {
        "created": 1_700_000_000,
        "data": [{"b64_json": B64}],
        "background": "opaque",
        "output_format": "png",
        "size": SIZE,
        "quality": "medium",
        "usage": {
            "total_tokens": 1106,
            "input_tokens": 50,
            "output_tokens": 1056,
            "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
        },
    }
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
ARK_PATH = "/api/v3/images/generations"
ARK_TOKENS = WIDTH * HEIGHT // 256
ARK_BODY = orjson.dumps(
    {
        "model": "seedream-4-0-250828",
        "created": 1_700_000_000,
        "data": [{"b64_json": B64, "size": SIZE}],
        "usage": {"generated_images": 1, "output_tokens": ARK_TOKENS, "total_tokens": ARK_TOKENS},
    }
)
ARK_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ARK_BODY)).encode())]


def _json(payload: object) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = orjson.dumps(payload)
    return body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


GEMINI = _json(
    {
        "candidates": [{"content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": B64}}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {
            "promptTokenCount": 6, "candidatesTokenCount": 1290, "totalTokenCount": 1296,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 6}],
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
        },
        "modelVersion": "gemini-2.5-flash-image",
    }
)  # fmt: skip
IMAGEN = _json({"predictions": [{"bytesBase64Encoded": B64, "mimeType": "image/png"}]})
STABILITY = (
    PNG,
    [
        (b"content-type", b"image/png"),
        (b"content-length", str(len(PNG)).encode()),
        (b"finish-reason", b"SUCCESS"),
        (b"seed", b"1"),
    ],
)
TOKEN = _json({"access_token": "ya29.bench-token", "expires_in": 3600, "token_type": "Bearer"})


def answer_for(path: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    if path.endswith(ARK_PATH):
        return ARK_BODY, ARK_HEADERS
    if path.endswith(":generateContent"):
        return GEMINI
    if path.endswith(":predict"):
        return IMAGEN
    if path.startswith("/v2beta/stable-image/"):
        return STABILITY
    if path == "/token":
        return TOKEN
    return BODY, HEADERS


DELAY = float(os.environ.get("BENCH_DELAY_MS", "0")) / 1000
FAIL_RATE = float(os.environ.get("BENCH_FAIL_RATE", "0"))
ERROR = orjson.dumps({"error": {"message": "The server had an error", "type": "server_error", "param": None, "code": None}})
ERROR_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ERROR)).encode())]
_rng = random.Random(1)


async def app(scope, receive, send) -> None:  # noqa: ANN001 - a bare ASGI app
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole request body
        message = await receive()
        more = message.get("more_body", False)
    if FAIL_RATE and _rng.random() < FAIL_RATE:
        if os.environ.get("BENCH_FAIL_SLOW") == "1" and DELAY:
            await asyncio.sleep(DELAY)
        await send({"type": "http.response.start", "status": 500, "headers": ERROR_HEADERS})
        await send({"type": "http.response.body", "body": ERROR})
        return
    if DELAY:
        await asyncio.sleep(DELAY)
    body, headers = answer_for(scope["path"])
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
