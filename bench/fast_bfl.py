"""A stand-in Black Forest Labs upstream whose jobs take a fixed time (for benchmarks).

It speaks BFL's asynchronous protocol, as documented:

* ``POST /v1/{model}`` with the key in ``x-key`` and a JSON body holding a
  ``prompt`` answers ``{id, polling_url, cost, input_mp, output_mp}``
  (``cost`` in credits, 1 credit = $0.01);
* ``GET polling_url`` (``/v1/get_result?id=...``, here on this server) with
  ``x-key`` answers ``{"id", "status": "Pending", "result": null}`` until
  ``--pending-seconds`` after the job's submission, then ``{"id", "status":
  "Ready", "result": {"sample": URL}}``; an unknown id is ``"Task not found"``;
* the ``sample`` URL (a signed delivery URL upstream: no key) answers a
  small PNG.

A job whose prompt is ``warm up`` is ``Ready`` at once (the benchmark's
warm-up request).

Sources: https://docs.bfl.ml/quick_start/generating_images (submit, then
poll ``get_result`` until ``Ready``, ``result.sample``),
https://docs.bfl.ml/api-reference/models/edit-or-create-an-image-with-flux-kontext-pro
(``x-key``, the body, ``AsyncResponse``: ``id``, ``polling_url``, ``cost``,
``input_mp``, ``output_mp``), https://github.com/black-forest-labs/skills
(bfl-api: poll the returned ``polling_url``, statuses, delivery URLs).

``GET /stats`` (not BFL's) answers counters for the benchmark: jobs
submitted, polls answered (pending and ready), samples fetched, the first
and last submission's ``time.monotonic()`` (system-wide on Linux, so
comparable with the benchmark's own clock), and per job how long after it
turned Ready it was first polled (``seen_ready``) and how long after that
its sample was fetched (``fetched``).

    python bench/fast_bfl.py --port 9000 [--pending-seconds 20] [--key KEY] [--lifetime 600]

Stops itself after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
import uuid

from aiohttp import web
from PIL import Image

COST_CREDITS = 4.0  # flux-kontext-pro: $0.04 (https://docs.bfl.ai/quick_start/pricing)
SIZE = (64, 64)


def small_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", SIZE, (200, 120, 40)).save(buf, "PNG")
    return buf.getvalue()


class FastBFL:
    def __init__(self, port: int, pending_seconds: float, key: str) -> None:
        self.origin = f"http://127.0.0.1:{port}"
        self.pending = pending_seconds
        self.key = key
        self.png = small_png()
        self.jobs: dict[str, float] = {}  # id -> when it turns Ready (monotonic)
        self.seen_ready: dict[str, float] = {}  # id -> how long after it turned Ready it was first polled
        self.fetched: dict[str, float] = {}  # id -> how long after that its sample was fetched
        self.stats = {"submitted": 0, "polls": 0, "pending_polls": 0, "ready_polls": 0, "samples": 0,
                      "first_submit": None, "last_submit": None}  # fmt: skip

    def _refused(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-key") != self.key:
            return web.json_response({"detail": "Not authenticated"}, status=403)
        return None

    async def submit(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            detail = [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}]
            return web.json_response({"detail": detail}, status=422)
        job = str(uuid.uuid4())
        now = time.monotonic()
        self.jobs[job] = now if body["prompt"] == "warm up" else now + self.pending
        self.stats["submitted"] += 1
        self.stats["first_submit"] = self.stats["first_submit"] or now
        self.stats["last_submit"] = now
        return web.json_response({"id": job, "polling_url": f"{self.origin}/v1/get_result?id={job}",
                                  "cost": COST_CREDITS, "input_mp": 0, "output_mp": SIZE[0] * SIZE[1] / 1e6})  # fmt: skip

    async def get_result(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        job = request.query.get("id", "")
        self.stats["polls"] += 1
        ready_at = self.jobs.get(job)
        if ready_at is None:
            return web.json_response({"id": job, "status": "Task not found", "result": None})
        if time.monotonic() < ready_at:
            self.stats["pending_polls"] += 1
            return web.json_response({"id": job, "status": "Pending", "result": None, "progress": None})
        self.stats["ready_polls"] += 1
        self.seen_ready.setdefault(job, time.monotonic() - ready_at)
        sample = f"{self.origin}/delivery/{job}/sample.png"
        return web.json_response({"id": job, "status": "Ready", "result": {"sample": sample, "seed": 1}})

    async def sample(self, request: web.Request) -> web.Response:
        job = request.match_info["job"]
        if job not in self.jobs:
            return web.Response(status=404)
        self.stats["samples"] += 1
        self.fetched.setdefault(job, time.monotonic() - self.jobs[job] - self.seen_ready.get(job, 0.0))
        return web.Response(body=self.png, content_type="image/png")

    async def stats_view(self, request: web.Request) -> web.Response:
        return web.json_response({**self.stats, "seen_ready": self.seen_ready, "fetched": self.fetched})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.get("/", self.health),
            web.get("/stats", self.stats_view),
            web.get("/v1/get_result", self.get_result),
            web.get("/delivery/{job}/sample.png", self.sample),
            web.post("/v1/{model}", self.submit),
        ])  # fmt: skip
        return app


async def serve(port: int, pending_seconds: float, key: str, lifetime: float) -> None:
    runner = web.AppRunner(FastBFL(port, pending_seconds, key).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    try:
        await asyncio.sleep(lifetime)
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pending-seconds", type=float, default=20)
    parser.add_argument("--key", default="bfl-bench-key")
    parser.add_argument("--lifetime", type=float, default=600, help="stop after this many seconds")
    opts = parser.parse_args()
    asyncio.run(serve(opts.port, opts.pending_seconds, opts.key, opts.lifetime))


if __name__ == "__main__":
    main()
