"""A stand-in webhook receiver on loopback: what a client of imagegate runs
to hear about its finished jobs.

Protocol, as the Standard Webhooks spec has it
(https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md):
a ``POST`` whose body is the JSON payload and whose headers are
``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` (``v1,<base64>``, space-separated if several); any
2xx is a success, anything else a failure to retry; 410 means "send no
more"; a redirect is not followed. The receiver checks what every sender
must send (the three headers, ``Content-Type: application/json``, a body
that parses as JSON, POST only) and answers 400 for a request without them,
so a malformed delivery is seen as a failed attempt, not accepted.

It records every request (:class:`Received`); a test verifies the signature
with the reference library itself (``standardwebhooks``). Scripted answers
(``script``: a status code, a :class:`Slow` or a :class:`Redirect`) answer
the next deliveries instead of 204, so it can fail N times and then succeed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from standardwebhooks.webhooks import Webhook
from standin_http import Handler, StandInServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived

    def verify(self, secret: str) -> Any:
        """The payload, after the reference library checked the signature (it raises otherwise)."""
        return Webhook(secret).verify(self.body, self.headers)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


@dataclass(frozen=True)
class Slow:
    seconds: float  # wait this long, then answer 204


@dataclass(frozen=True)
class Redirect:
    location: str  # answer 307 to here


Answer = int | Slow | Redirect
REQUIRED = ("webhook-id", "webhook-timestamp", "webhook-signature")


class _Receiver(Handler):
    server_ref: ReceiverStandIn

    def do_POST(self) -> None:
        body = self.read_body()
        headers = self.header_map()
        problem = None
        if any(not headers.get(name) for name in REQUIRED):
            problem = "missing webhook-* headers"
        elif headers.get("content-type", "").split(";")[0].strip() != "application/json":
            problem = "not application/json"
        else:
            try:
                json.loads(body)
            except ValueError:
                problem = "not JSON"
        answer = self.server_ref.record(Received(self.path, headers, body, time.time()))
        if problem is not None:
            self.send_json(400, {"error": problem})
        elif isinstance(answer, Slow):
            time.sleep(answer.seconds)
            self._send(204, b"", "text/plain")
        elif isinstance(answer, Redirect):
            self._send(307, b"", "text/plain", {"Location": answer.location})
        elif isinstance(answer, int):
            self.send_json(answer, {"scripted": answer}, {"Retry-After": "0"} if answer in (429, 503) else None)
        else:
            self._send(204, b"", "text/plain")

    def do_GET(self) -> None:
        self.send_json(405, {"error": "webhooks are POSTed"})


class ReceiverStandIn(StandInServer[Received, Answer]):
    def __init__(self) -> None:
        handler = type("Receiver", (_Receiver,), {})
        super().__init__(handler, "/hooks/imagegate")
        handler.server_ref = self

    def fail_next(self, *answers: Answer) -> None:
        self.script.extend(answers)

    def wait_for(self, count: int, seconds: float = 15.0) -> list[Received]:
        """Until ``count`` requests have arrived (they are returned), or fail."""
        deadline = time.monotonic() + seconds
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} webhook(s) arrived, not {count}")
            time.sleep(0.02)
        return list(self.received)
