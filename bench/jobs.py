"""What does waiting on many slow submit-poll-fetch jobs cost the gateway?

Starts, on loopback: a stand-in Black Forest Labs upstream whose every job is
``Pending`` for ``--pending-seconds`` after its submission, then ``Ready``
with a small PNG (bench/fast_bfl.py), and the real ``imagegate serve`` in
front of it with a ``bfl`` provider and a flux-kontext-pro route (the job
engine, imagegate/providers/jobs.py). Then, in one run, side by side:

* **idle**: the same gateway with nothing to do, for the same window (its CPU
  at rest: the floor);
* **jobs**: ``--jobs`` generations at once (an asyncio aiohttp client holding
  them all open), each waiting out its pending time.

For the pending window (from the last submission to just before the first
job can be ready: only polling) it reports the gateway's CPU as % of one core
(from /proc/<pid>/stat), the polls the stand-in answered per second and the
gateway's CPU per poll; for the whole run, its CPU seconds, its peak RSS
(VmHWM), how long after turning Ready a job was first polled and its image
fetched, and the answer times. Every request must answer 200 with a decodable
PNG charged the upstream's stated cost ($0.04: BFL's ``cost`` of 4 credits).
The issue's target is printed next to each figure: under 5% of one core and
300 MB for 500 jobs pending 20 s.

    python bench/jobs.py [--jobs 500] [--pending-seconds 20]
        [--poll-initial-seconds S] [--poll-multiplier X] [--poll-max-seconds S]

The poll options set the provider's backoff (default: the provider's own).
``--provider engine`` runs a minimal JobProvider defined here (the engine
alone, without the bfl dialect's checks) instead of ``bfl``. Bounded in time;
every process stops itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import aiohttp
import httpx
import orjson
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import cpu_seconds, free_port, rss_mb, stop, wait_up  # noqa: E402

from imagegate.providers import registry  # noqa: E402
from imagegate.providers.jobs import JobOptions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STATIC = "sk-bench-static-key-0123456789"
BFL_KEY = "bfl-bench-key-0123456789"
MODEL = "flux-kontext-pro"
WARM_UP = "warm up"  # the stand-in's jobs with this prompt are Ready at once
CPU_TARGET, RSS_TARGET_MB = 5.0, 300.0
# The job engine's poll backoff options (providers/jobs.py JobOptions).
POLLING = ("poll_initial_seconds", "poll_multiplier", "poll_max_seconds")


# -- the engine alone: a minimal BFL-speaking JobProvider (--provider engine) ------


def engine_provider() -> type:
    """A JobProvider speaking BFL's protocol in as few lines as possible: the
    engine's own cost without a dialect's checks. Only ever registered in the
    gateway this benchmark starts (``_gateway`` below)."""
    from imagegate.contract.requests import ImageRequest
    from imagegate.contract.results import Deployment
    from imagegate.providers.jobs import Job, JobProvider, Poll

    class EngineOptions(JobOptions):
        auth_header: ClassVar[str] = "x-key"
        auth_prefix: ClassVar[str] = ""

    class EngineProvider(JobProvider):
        type_name: ClassVar[str] = "bench-engine"
        options_model = EngineOptions

        async def submit(self, request: ImageRequest, deployment: Deployment, index: int) -> Job:
            body = orjson.dumps({"prompt": request.prompt})
            call = self.build("POST", f"/{deployment.model}", deployment, content=body,
                              headers={"Content-Type": "application/json"})  # fmt: skip
            async with self.exchange(call, deployment, ok=(200, 201), starts_work=True) as response:
                answer = orjson.loads(await self.read(response))
            cost = round(answer["cost"] * 10_000_000)  # credits: 1 = $0.01 = 10^7 nano-USD
            return Job(answer["id"], self.checked_url(answer["polling_url"], "polling_url"), cost_nusd=cost)

        async def poll(self, job: Job, deployment: Deployment) -> Poll:
            async with self.exchange(self.build("GET", job.poll_url, deployment), deployment) as response:
                answer = orjson.loads(await self.read(response))
            if answer["status"] == "Ready":
                return Poll("ready", "Ready", urls=[answer["result"]["sample"]])
            return Poll("pending", answer["status"])

    return EngineProvider


def _gateway(argv: list[str]) -> None:
    """``imagegate serve`` with the engine-only provider type registered."""
    from imagegate.cli import main

    registry.register("bench-engine", engine_provider())
    main(argv, prog_name="imagegate")


# -- the client ---------------------------------------------------------------------


class Answer(NamedTuple):
    status: int
    cost: str | None  # x-imagegate-cost-usd
    body: bytes


async def drive(gw: str, up: str, jobs: int, pending: float, pid: int) -> dict[str, Any]:
    """``jobs`` generations at once; CPU and polls over the pending window.

    The client is aiohttp: httpx's connection pool, holding 500 connections,
    burnt a core of its own as the answers came in (its bookkeeping grows
    with the pool), which delayed the gateway's answers on 2 cores."""
    body = {"model": MODEL, "prompt": "a lighthouse at dusk", "response_format": "b64_json"}
    window: dict[str, float] = {}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=jobs + 8)
    timeout = aiohttp.ClientTimeout(total=pending + 120)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client, httpx.AsyncClient(timeout=10) as probe:

        async def one() -> Answer:
            sent = time.monotonic()
            try:
                async with client.post(f"{gw}/v1/images/generations", json=body,
                                       headers={"Authorization": f"Bearer {STATIC}"}) as response:  # fmt: skip
                    return Answer(response.status, response.headers.get("x-imagegate-cost-usd"), await response.read())
            finally:
                latencies.append(time.monotonic() - sent)

        async def watch(start: float, before: int) -> None:
            # The window opens when the stand-in has every job, and closes
            # half a second before the first one can turn Ready.
            while True:
                stats = (await probe.get(f"{up}/stats")).json()
                if stats["submitted"] - before >= jobs:
                    break
                await asyncio.sleep(0.05)
            window.update(t0=time.monotonic(), cpu0=cpu_seconds(pid), polls0=stats["polls"],
                          submitted_in=stats["last_submit"] - start)  # fmt: skip
            await asyncio.sleep(max(0.0, start + pending - 0.5 - time.monotonic()))
            stats = (await probe.get(f"{up}/stats")).json()
            window.update(t1=time.monotonic(), cpu1=cpu_seconds(pid), polls1=stats["polls"], ready_polls=stats["ready_polls"])

        before = (await probe.get(f"{up}/stats")).json()
        start, cpu_start = time.monotonic(), cpu_seconds(pid)
        watcher = asyncio.create_task(watch(start, before["submitted"]))
        answers = await asyncio.gather(*(one() for _ in range(jobs)), return_exceptions=True)
        elapsed, cpu_total = time.monotonic() - start, cpu_seconds(pid) - cpu_start
        await asyncio.wait_for(watcher, 5)
        stats = (await probe.get(f"{up}/stats")).json()
    window["ready_polls"] -= before["ready_polls"]
    delays = {k: sorted(v for job, v in stats[k].items() if job not in before[k]) for k in ("seen_ready", "fetched")}
    stats = {k: stats[k] - before[k] for k in ("submitted", "polls", "samples")} | delays
    latencies.sort()
    return {"answers": answers, "elapsed": elapsed, "cpu_total": cpu_total, "window": window, "stats": stats,
            "p50": latencies[len(latencies) // 2], "max": latencies[-1]}  # fmt: skip


def check(answers: list[Any]) -> tuple[int, list[str]]:
    """How many answers are a 200 with a decodable PNG charged BFL's cost; the first failures."""
    good, failures = 0, []
    for answer in answers:
        try:
            if isinstance(answer, BaseException):
                raise RuntimeError(repr(answer))
            if answer.status != 200:
                raise RuntimeError(f"{answer.status}: {answer.body[:200]!r}")
            image = Image.open(io.BytesIO(base64.b64decode(orjson.loads(answer.body)["data"][0]["b64_json"])))
            image.load()
            if image.format != "PNG":
                raise RuntimeError(f"a {image.format}, not a PNG")
            if answer.cost is None or Decimal(answer.cost) != Decimal("0.04"):
                raise RuntimeError(f"charged {answer.cost}, not BFL's cost of 4 credits ($0.04)")
            good += 1
        except Exception as exc:  # counted and shown, never raised: the table comes first
            if len(failures) < 3:
                failures.append(str(exc))
    return good, failures


def spread(values: list[float]) -> str:
    """p50 / max of sorted ``values``."""
    return f"{values[len(values) // 2]:.1f} / {values[-1]:.1f}" if values else "-"


def gateway_config(tmp: Path, up: str, provider: str, polling: dict[str, float]) -> dict:
    return {
        "server": {
            "data_dir": str(tmp / "data"),
            "log_level": "warning",
            "fetch": {"allow_private_networks": True},  # the stand-in's sample URLs are on 127.0.0.1
        },
        "auth": {"api_keys": [STATIC]},
        "providers": {  # bfl's base_url ends in /v1 (https://api.bfl.ai/v1), as does the engine-only one's
            "up": {"type": "bfl" if provider == "bfl" else "bench-engine", "base_url": f"{up}/v1", "api_key": BFL_KEY, **polling}
        },
        "models": {MODEL: [{"provider": "up"}]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--pending-seconds", type=float, default=20)
    parser.add_argument("--provider", choices=["bfl", "engine"], default="bfl")
    for option in POLLING:
        parser.add_argument(f"--{option.replace('_', '-')}", type=float, help=f"the provider's {option}")
    opts = parser.parse_args()
    polling = {option: getattr(opts, option) for option in POLLING if getattr(opts, option) is not None}
    defaults = (registry.provider_class("bfl").options_model if opts.provider == "bfl" else JobOptions).model_fields
    schedule = {option: polling.get(option, defaults[option].default) for option in POLLING}
    procs: list[subprocess.Popen] = []
    lifetime = str(2 * opts.pending_seconds + 300)  # the stand-in stops itself even if this process dies
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            up_port, gw_port = free_port(), free_port()
            up, gw = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
            upstream = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "fast_bfl.py"), "--port", str(up_port), "--key", BFL_KEY,
                 "--pending-seconds", str(opts.pending_seconds), "--lifetime", lifetime],
            )  # fmt: skip
            procs.append(upstream)
            cfg = tmp / "imagegate.yaml"
            cfg.write_text(yaml.safe_dump(gateway_config(tmp, up, opts.provider, polling)))
            serve = ["serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(gw_port)]
            command = [sys.executable, "-m", "imagegate", *serve]
            if opts.provider == "engine":
                command = [sys.executable, str(Path(__file__).resolve()), "_gateway", *serve]
            gateway = subprocess.Popen(
                command, env={k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")},
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(gateway)
            wait_up(f"{up}/", upstream)
            wait_up(f"{gw}/healthz", gateway)
            # Warm up (imports on first use, connections), then let it settle.
            warm = httpx.post(f"{gw}/v1/images/generations", json={"model": MODEL, "prompt": WARM_UP},
                              headers={"Authorization": f"Bearer {STATIC}"}, timeout=opts.pending_seconds + 60)  # fmt: skip
            if warm.status_code != 200:
                sys.exit(f"FAILED: the warm-up request answered {warm.status_code}: {warm.text[:300]}")
            time.sleep(1)

            print(f"imagegate jobs: {os.cpu_count()} CPUs, provider {opts.provider}, {opts.jobs} jobs pending "
                  f"{opts.pending_seconds:g} s each, poll backoff {schedule['poll_initial_seconds']:g} s "
                  f"x{schedule['poll_multiplier']:g} up to {schedule['poll_max_seconds']:g} s"
                  f"{'' if polling else ' (the defaults)'}", flush=True)  # fmt: skip
            idle_cpu0, idle_t0 = cpu_seconds(gateway.pid), time.monotonic()
            time.sleep(opts.pending_seconds)
            idle_pct = (cpu_seconds(gateway.pid) - idle_cpu0) / (time.monotonic() - idle_t0) * 100
            idle_rss = rss_mb(gateway.pid, "VmRSS")

            run = asyncio.run(drive(gw, up, opts.jobs, opts.pending_seconds, gateway.pid))
            good, failures = check(run["answers"])
            hwm = rss_mb(gateway.pid, "VmHWM")
            w, stats = run["window"], run["stats"]
            span = w["t1"] - w["t0"]
            cpu = w["cpu1"] - w["cpu0"]
            polls = w["polls1"] - w["polls0"]
            busy_pct = cpu / span * 100

            rows = [
                ("gateway CPU, idle (% of one core)", f"{idle_pct:.2f}", "-"),
                ("gateway CPU, jobs pending (% of one core)", f"{busy_pct:.2f}", f"< {CPU_TARGET:g}"),
                ("  ratio pending / idle", f"{busy_pct / idle_pct:.1f}x" if idle_pct > 0 else "-", "-"),
                ("polls the upstream answered per second", f"{polls / span:.1f}", "-"),
                ("gateway CPU per poll (ms)", f"{cpu * 1000 / polls:.2f}" if polls else "-", "-"),
                ("gateway RSS idle (MB)", f"{idle_rss:.0f}", "-"),
                ("gateway peak RSS, VmHWM (MB)", f"{hwm:.0f}", f"< {RSS_TARGET_MB:g}"),
                ("gateway CPU, whole run (s)", f"{run['cpu_total']:.2f}", "-"),
                ("  per job (ms)", f"{run['cpu_total'] * 1000 / opts.jobs:.1f}", "-"),
                ("first poll after Ready p50 / max (s)", spread(stats["seen_ready"]), "-"),
                ("  then the sample fetched p50 / max (s)", spread(stats["fetched"]), "-"),
                ("answer time p50 / max (s)", f"{run['p50']:.1f} / {run['max']:.1f}", "-"),
                ("answers 200 with a PNG charged $0.04", f"{good}/{opts.jobs}", f"{opts.jobs}/{opts.jobs}"),
            ]
            print(f"pending window {span:.1f} s (all submitted within {w['submitted_in']:.2f} s; "
                  f"ready polls inside it: {w['ready_polls']}); whole run {run['elapsed']:.1f} s; "
                  f"upstream: {stats['submitted']} jobs, {stats['polls']} polls, {stats['samples']} samples")  # fmt: skip
            print(f"{'figure':<44} {'measured':>10} {'target':>10}")
            for name, value, target in rows:
                print(f"{name:<44} {value:>10} {target:>10}")
            verdict = busy_pct < CPU_TARGET and hwm < RSS_TARGET_MB and good == opts.jobs
            print("within target" if verdict else "NOT within target")
            if good != opts.jobs:
                sys.exit(f"FAILED: {opts.jobs - good} requests did not answer 200 with a PNG; first: {failures}")
        finally:
            stop(procs)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_gateway"]:
        _gateway(sys.argv[2:])
    else:
        main()
