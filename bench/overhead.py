"""What does imagegate cost in front of an OpenAI-compatible upstream?

Starts, on loopback: a stand-in upstream that answers instantly with a ~2 MB
PNG as b64_json (bench/fast_upstream.py), and imagegate (the real
``imagegate serve``) in front of it. Then measures, side by side in one run:

* requests/s and p50/p99 latency, direct vs through imagegate, at
  concurrency 8, for generations (JSON) and edits (a ~2.5 MB PNG upload);
* added p50 latency at concurrency 1;
* generations with response_format=url (decode, store, answer with a URL);
* the gateway's peak RSS under that load;
* the gateway's growth while taking one ~49 MB upload (a fresh process), as
  multipart and as a JSON edit with a ``data:`` URL (a ~65 MB body).

    python bench/overhead.py [--seconds 8] [--concurrency 8]

Prints a table and the ratios. Bounded in time; every process stops itself.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import orjson
import pybase64
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited early")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(args: list[str], health: str, env: dict[str, str] | None = None):
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_up(health, proc)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def start_upstream(port: int, **env: str):
    args = [sys.executable, "-m", "uvicorn", "--app-dir", "bench", "fast_upstream:app", "--port", str(port),
            "--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"]  # fmt: skip
    return process(args, f"http://127.0.0.1:{port}/", {**os.environ, **env} if env else None)


def start_gateway(port: int, upstream: str, tmp: Path, config: dict | None = None):
    config = config or {
        "server": {"log_level": "warning", "data_dir": str(tmp / "data")},
        "providers": {"up": {"type": "openai", "base_url": upstream, "api_key": "sk-bench"}},
        "models": {"gpt-image-1": [{"provider": "up"}]},
    }
    path = tmp / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    args = [sys.executable, "-m", "imagegate", "serve", "--config", str(path), "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    return process(args, f"http://127.0.0.1:{port}/healthz", env)


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    """Start a new peak-RSS (VmHWM) window for the process (Linux clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, payload: dict, secret: str | None, seconds: float, connections: int, tmp: Path) -> dict[str, float]:
    """POST ``payload`` to ``url`` with wrk (a Bearer ``secret`` if given): requests, req/s, p50 and p99 in ms."""
    script = tmp / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = '{json.dumps(payload)}'", 'wrk.headers["Content-Type"] = "application/json"']
    if secret:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {secret}"')
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"{bad.group(1)} failed requests:\n{out}")

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": ms("50%"),
        "p99": ms("99%"),
    }


def stop(procs: list[subprocess.Popen]) -> None:
    """Terminate the processes a benchmark started, then kill what lingers."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def measured(pids: dict[str, int], fn) -> tuple[dict, dict[str, float]]:
    """Run ``fn()`` and return its result and each process's CPU ms per request."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    own = os.times()
    result = fn()
    own_after = os.times()
    cpu = {name: (cpu_seconds(pid) - before[name]) * 1000 / max(1, result["n"]) for name, pid in pids.items()}
    cpu["client"] = (own_after.user + own_after.system - own.user - own.system) * 1000 / max(1, result["n"])
    return result, cpu


def upload_png(megabytes: float, seed: int = 1) -> bytes:
    """A PNG of about the given size (noise does not compress)."""
    side = int((megabytes * 1024 * 1024 / 3) ** 0.5)
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


async def load(base: str, kind: str, concurrency: int, seconds: float, upload: bytes, url_mode: bool = False) -> dict:
    latencies: list[float] = []
    errors = 0
    body = {"model": "gpt-image-1", "prompt": "a lighthouse at dusk", "size": "1024x1024"}
    if url_mode:
        body["response_format"] = "url"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits, headers={"Authorization": "Bearer sk"}) as client:

        async def one() -> None:
            nonlocal errors
            start = time.perf_counter()
            if kind == "generations":
                r = await client.post("/images/generations", json=body)
            else:
                r = await client.post(
                    "/images/edits",
                    data={"model": "gpt-image-1", "prompt": "make it blue"},
                    files={"image": ("in.png", upload, "image/png")},
                )
            await r.aread()
            if r.status_code != 200:
                errors += 1
            latencies.append(time.perf_counter() - start)

        for _ in range(3):  # warm the connections
            await one()
        latencies.clear()
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await one()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "n": len(latencies),
        "errors": errors,
    }


def run_load(*args) -> dict:
    return asyncio.run(load(*args))


def row(name: str, direct: dict, gateway: dict) -> str:
    ratio = gateway["rps"] / direct["rps"]
    return (
        f"{name:<28} {direct['rps']:>8.1f} {gateway['rps']:>8.1f} {ratio:>7.2f}  "
        f"{direct['p50']:>7.1f} {gateway['p50']:>7.1f} {gateway['p50'] - direct['p50']:>+7.1f}  "
        f"{direct['p99']:>7.1f} {gateway['p99']:>7.1f}  {direct['errors'] + gateway['errors']:>4}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    opts = parser.parse_args()
    edit_png = upload_png(2.5)
    big_png = upload_png(48)
    up_port, gw_port, gw2_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    gateway = f"http://127.0.0.1:{gw_port}/v1"
    print(f"upload for edits: {len(edit_png) / 1e6:.2f} MB PNG; big upload: {len(big_png) / 1e6:.1f} MB; "
          f"{os.cpu_count()} CPUs; {opts.seconds:g} s per measurement", flush=True)  # fmt: skip
    results = []
    cpu_rows = []
    with tempfile.TemporaryDirectory() as tmp, start_upstream(up_port) as up, start_gateway(gw_port, upstream, Path(tmp)) as gw:
        pids = {"upstream": up.pid, "gateway": gw.pid}
        c = opts.concurrency
        for name, kind, conc, url_mode in [
            (f"generations c={c}", "generations", c, False),
            (f"edits 2.5MB c={c}", "edits", c, False),
            ("generations c=1", "generations", 1, False),
            ("edits 2.5MB c=1", "edits", 1, False),
            (f"generations url c={c}", "generations", c, True),
        ]:
            direct, direct_cpu = measured(pids, partial(run_load, upstream, kind, conc, opts.seconds, edit_png))
            reset_peak(gw.pid)
            through, through_cpu = measured(pids, partial(run_load, gateway, kind, conc, opts.seconds, edit_png, url_mode))
            through_cpu["peak_rss"] = rss_mb(gw.pid)
            results.append((name, direct, through))
            cpu_rows.append((name, direct_cpu, through_cpu))
        peak = max(row[2]["peak_rss"] for row in cpu_rows[:2])  # generations and edits at c=8
        # a fresh gateway for the one big upload, so its peak is that upload's
        with start_gateway(gw2_port, upstream, Path(tmp)) as gw2:
            before = rss_mb(gw2.pid, "VmRSS")
            r = httpx.post(
                f"http://127.0.0.1:{gw2_port}/v1/images/edits",
                data={"model": "gpt-image-1", "prompt": "x"},
                files={"image": ("big.png", big_png, "image/png")},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            growth = rss_mb(gw2.pid) - before
        gw3_port = free_port()
        with start_gateway(gw3_port, upstream, Path(tmp)) as gw3:  # the same image as a JSON data: URL
            image_url = "data:image/png;base64," + pybase64.b64encode(big_png).decode()
            json_body = orjson.dumps({"model": "gpt-image-1", "prompt": "x", "images": [{"image_url": image_url}]})
            del image_url
            before = rss_mb(gw3.pid, "VmRSS")
            r = httpx.post(
                f"http://127.0.0.1:{gw3_port}/v1/images/edits",
                content=json_body,
                headers={"content-type": "application/json"},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            json_growth = rss_mb(gw3.pid) - before
    print()
    head = f"{'req/s':>8} {'req/s':>8} {'ratio':>7}  {'p50 ms':>7} {'p50 ms':>7} {'added':>7}  {'p99 ms':>7} {'p99 ms':>7}"
    print(f"{'':<28} {head}  {'errs':>4}")
    print(f"{'':<28} {'direct':>8} {'gateway':>8} {'':>7}  {'direct':>7} {'gateway':>7} {'':>7}  {'direct':>7} {'gateway':>7}")
    for name, direct, through in results:
        print(row(name, direct, through))
    print()
    print("CPU ms per request (user+system), independent of how the 2 cores are shared; gateway peak RSS per phase:")
    print(f"{'':<28} {'client':>8} {'upstream':>9} | {'client':>8} {'upstream':>9} {'gateway':>8} {'peak MB':>8}")
    for name, direct_cpu, through_cpu in cpu_rows:
        print(f"{name:<28} {direct_cpu['client']:>8.1f} {direct_cpu['upstream']:>9.1f} | "
              f"{through_cpu['client']:>8.1f} {through_cpu['upstream']:>9.1f} {through_cpu['gateway']:>8.1f} "
              f"{through_cpu['peak_rss']:>8.0f}")  # fmt: skip
    big_mb = len(big_png) / (1024 * 1024)
    print()
    print(f"gateway peak RSS under generations and edits at c={opts.concurrency}: {peak:.0f} MB (target < 250 MB)")
    print(f"gateway growth for one {big_mb:.0f} MB upload: {growth:.0f} MB = {growth / big_mb:.2f}x its size (target < 3x)")
    json_mb = len(json_body) / (1024 * 1024)
    print(f"gateway growth for the same image as a {json_mb:.0f} MB JSON body (data: URL): "
          f"{json_growth:.0f} MB = {json_growth / json_mb:.2f}x the body")  # fmt: skip
    gen, edit, gen1 = results[0], results[1], results[2]
    print()
    print(f"ratios: generations {gen[2]['rps'] / gen[1]['rps']:.2f} (target >= 0.5), "
          f"edits {edit[2]['rps'] / edit[1]['rps']:.2f} (target >= 0.5), "
          f"added p50 at c=1 {gen1[2]['p50'] - gen1[1]['p50']:+.1f} ms (target < 10 ms)")  # fmt: skip


if __name__ == "__main__":
    main()
