"""A stand-in OpenAI Images API upstream on loopback.

Protocol: OpenAI's published OpenAPI spec, images part (``CreateImageRequest``,
``CreateImageEditRequest``, ``CreateImageVariationRequest``, ``ImagesResponse``,
``ImageGen*Event``/``ImageEdit*Event``, ``Error``; a copy is
``tests/data/openai-images.yaml``) and the API reference,
https://platform.openai.com/docs/api-reference/images.

It speaks that wire protocol (JSON generations, multipart edits and
variations, ``ImagesResponse``, SSE streams, the error envelope) over real
HTTP, records every request it receives, and answers either like OpenAI
would or with the next scripted fault: an error status with envelope, garbage,
a truncated body, a connection reset, a hang, image URLs, or a stream.
A fault with ``echo`` set repeats the request's headers into its text
(``$AUTHORIZATION``, ``$TOKEN``: the bare credential, ``$HEADERS``), as
careless upstreams do in their errors.
"""

from __future__ import annotations

import base64
import io
import json
import select
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image
from standin_http import Handler, StandInServer, map_strings, multipart_parts


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, str, str, bytes]] = field(default_factory=list)  # (field, filename, content type, bytes)


@dataclass
class Fault:
    kind: str  # status | garbage | truncated | reset | hang | url | stream | json | slow
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    gate: threading.Event | None = None  # stream: wait for it after the first event
    echo: bool = False  # replace $AUTHORIZATION, $TOKEN, $HEADERS in body and events with the request's


def png_of(width: int, height: int, color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


USAGE = {
    "total_tokens": 1256,
    "input_tokens": 200,
    "output_tokens": 1056,
    "input_tokens_details": {"text_tokens": 40, "image_tokens": 160},
    "output_tokens_details": {"image_tokens": 1056, "text_tokens": 0},
}


class OpenAIStandIn(StandInServer[Received, Fault]):
    def __init__(self, image: bytes | None = None) -> None:
        self.image = image or png_of(64, 48)
        self.fetched: list[Received] = []  # GETs of image URLs, with their headers
        self.get_delay = 0.0  # seconds each GET waits before answering
        self.gets_in_flight = 0
        self.max_gets_in_flight = 0
        self.served: list[bytes] = []  # the image bytes of each success answer
        self.gate_released_in_time: bool | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.aborted = 0  # "slow" answers whose caller hung up first
        standin = self

        class OpenAIHandler(Handler):
            def do_GET(self) -> None:  # noqa: N802 - image URLs handed out by "url" answers
                with standin._lock:
                    standin.fetched.append(Received(self.path, self.header_map()))
                    standin.gets_in_flight += 1
                    standin.max_gets_in_flight = max(standin.max_gets_in_flight, standin.gets_in_flight)
                try:
                    time.sleep(standin.get_delay)
                    if self.path.startswith("/files/"):
                        self._send(200, standin.image, "image/png")
                    elif self.path.startswith("/redirect/"):  # /redirect/<url, percent-encoded>
                        self._send(302, b"", "text/plain", {"Location": urllib.parse.unquote(self.path[10:])})
                    else:
                        self._send(404, b"{}", "application/json")
                finally:
                    with standin._lock:
                        standin.gets_in_flight -= 1

            def do_POST(self) -> None:  # noqa: N802
                body = self.read_body()
                rec = Received(self.path, self.header_map())
                ctype = self.headers.get("Content-Type", "")
                if ctype.startswith("application/json"):
                    rec.json = json.loads(body)
                elif ctype.startswith("multipart/form-data"):
                    _parse_multipart(ctype, body, rec)
                fault = standin.record(rec)
                with standin._lock:
                    standin.in_flight += 1
                    standin.max_in_flight = max(standin.max_in_flight, standin.in_flight)
                try:
                    standin.answer(self, rec, fault)
                finally:
                    with standin._lock:
                        standin.in_flight -= 1

        self.Handler = OpenAIHandler
        super().__init__(OpenAIHandler, "/v1")

    def reset(self) -> None:
        super().reset()
        self.served.clear()
        self.gate_released_in_time = None

    # -- answers ---------------------------------------------------------------

    def success_payload(self, rec: Received) -> dict[str, Any]:
        params = rec.json if rec.json is not None else rec.fields
        n = int(params.get("n", 1))
        size = str(params.get("size", "auto"))
        image = self.image
        if "x" in size:  # honour the asked size, as the real API does
            width, height = (int(v) for v in size.split("x"))
            image = png_of(width, height)
        self.served.append(image)
        b64 = base64.b64encode(image).decode()
        data = [{"b64_json": b64, "revised_prompt": f"revised: {params.get('prompt', '')}"} for _ in range(n)]
        return {
            "created": 1_700_000_123,
            "data": data,
            "background": "opaque",
            "output_format": "png",
            "size": "1024x1024",
            "quality": "medium",
            "usage": USAGE,
        }

    def answer(self, h: Any, rec: Received, fault: Fault | None) -> None:
        if fault is not None and fault.echo:
            fault = replace(fault, body=_echo(fault.body, rec), events=_echo(fault.events, rec))
        if fault is None or fault.kind == "json":
            payload = fault.body if fault is not None and fault.body is not None else self.success_payload(rec)
            h._send(
                fault.status if fault else 200, json.dumps(payload).encode(), "application/json", fault.headers if fault else None
            )
        elif fault.kind == "status":
            h._send(fault.status, json.dumps(fault.body).encode(), "application/json", fault.headers)
        elif fault.kind == "garbage":
            h._send(fault.status, b"<html>upstream proxy error</html>", "text/html")
        elif fault.kind == "truncated":
            body = json.dumps(self.success_payload(rec)).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
        elif fault.kind == "reset":
            h.reset_connection()
        elif fault.kind == "hang":
            time.sleep(fault.seconds)
            h.close_connection = True
        elif fault.kind == "url":  # body: the URL to hand out (default: this stand-in's own)
            self.success_payload(rec)  # picks (and records) the image of the asked size
            url = fault.body or f"{self.base_url.removesuffix('/v1')}/files/img.png"
            payload = {"created": 1_700_000_124, "data": [{"url": url, "revised_prompt": "r"}]}
            h._send(200, json.dumps(payload).encode(), "application/json")
        elif fault.kind == "stream":
            self._stream(h, fault)
        elif fault.kind == "slow":  # answer normally (or the fault's events) after a while, unless the caller hangs up
            deadline = time.monotonic() + fault.seconds
            while time.monotonic() < deadline:
                readable, _, _ = select.select([h.connection], [], [], 0.02)
                if readable and not h.connection.recv(1, socket.MSG_PEEK):
                    with self._lock:
                        self.aborted += 1
                    h.close_connection = True
                    return
            if fault.events:  # an upstream stream whose first event takes that long
                self._stream(h, fault)
                return
            payload = self.success_payload(rec)
            h._send(200, json.dumps(payload).encode(), "application/json")

    def _stream(self, h: Any, fault: Fault) -> None:
        h.start_events()
        for i, event in enumerate(fault.events):
            name = event.get("type", "message")
            h.wfile.write(f"event: {name}\ndata: {json.dumps(event)}\n\n".encode())
            h.wfile.flush()
            if i == 0 and fault.gate is not None:
                self.gate_released_in_time = fault.gate.wait(timeout=15)


def _echo(value: Any, rec: Received) -> Any:
    headers = json.dumps(rec.headers)
    auth = rec.headers.get("authorization", "")

    def fill(text: str) -> str:
        text = text.replace("$AUTHORIZATION", auth).replace("$TOKEN", auth.removeprefix("Bearer "))
        return text.replace("$HEADERS", headers)

    return map_strings(value, fill)


def _parse_multipart(ctype: str, body: bytes, rec: Received) -> None:
    for part in multipart_parts(ctype, body):
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True) or b""
        if filename is None:
            rec.fields[name] = payload.decode()
        else:
            rec.files.append((name, filename, part.get_content_type(), payload))
