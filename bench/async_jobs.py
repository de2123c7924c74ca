"""What does a burst of 1,000 asynchronous jobs cost the gateway?

Starts, on loopback: the stand-in OpenAI upstream (bench/fast_upstream.py)
taking ``--delay-ms`` (5 s) for each image, and the real ``imagegate serve``
in front of it (SQLite, or ``--postgres URL``) with an ``openai`` deployment
capped at ``max_concurrency: 64`` towards the upstream and ``jobs.workers``
set to the same 64 (a worker beyond the cap would only hold a claimed job,
its lease and its deadline, waiting for a slot). Then:

* a warm-up key sends one round of 64 jobs (imports, connections, the
  workers' path): the gateway's CPU is measured while they all wait on the
  upstream (heartbeats, the claim loop: the cost of waiting), beside its CPU
  at rest; what one reserved is a job's worst case, what it cost the
  per-image price;
* a budgeted key is made through the admin API (the money path: a
  reservation per job, then its settlement), with room for every job's
  reservation at once;
* ``--jobs`` generations (distinct prompts) are submitted at once with
  ``Prefer: respond-async`` by wrk (``-c 64 -t 2``; a Lua script sends
  exactly ``--jobs`` requests, then waits for their answers): submissions/s
  and the 202's p50/p99 (target p99 < 50 ms);
* the key's jobs are listed (``GET /v1/images/jobs``, paginated) and polled,
  one page every 0.5 s (newest first: the newest finish last), until every
  one has ended: the time to drain (ideally ceil(jobs / 64) x 5 s);
* every job must have succeeded, charged the per-image price; one result's
  image is decoded with Pillow; the key's spend must equal jobs x that price
  and the sum of the jobs' ``cost_usd``, with nothing left reserved;
* the gateway's peak RSS (VmHWM) and CPU ms per job (from /proc: the
  submission, and submission + run + settlement).

    python bench/async_jobs.py [--jobs 1000] [--connections 64] [--delay-ms 5000]
        [--max-concurrency 64] [--workers 64] [--postgres URL] [--noise 0] [--profile FILE]

With ``--connections 1 --threads 1`` the submission latency is one
submission's own time (no queueing behind the others). ``--profile``
writes the gateway's cProfile stats and prints the top. ``--noise 0`` (the default) makes the stand-in's 1024x1024 PNG flat and
small, so 1,000 stored b64 results stay small; ``--noise 9`` is the ~2 MB
photo-like one (about 2.7 GB of results in the database). Needs ``wrk``
(Debian: ``apt-get install wrk``; its LuaJIT FFI gives the script a
monotonic clock). Bounded in time; every process stops itself (and dies with
this one).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import io
import json
import math
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import cpu_seconds, free_port, rss_mb, stop, wait_up  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MASTER = "bench-master-key-0123456789abcdef"
MODEL = "gpt-image-1"
FINAL = {"succeeded", "failed", "cancelled"}
P99_TARGET_MS = 50.0
POLL_SECONDS = 0.5

# wrk: each thread sends exactly its quota (delay() hands out the sends; a
# connection past the quota waits an hour), stops once all its answers are
# in and says so on stdout; done() prints the figures as one JSON line.
LUA = r"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long s; long ns; } bench_ts; int clock_gettime(int, bench_ts *); ]]
local ts = ffi.new("bench_ts")
local function now() ffi.C.clock_gettime(1, ts); return tonumber(ts.s) + tonumber(ts.ns) * 1e-9 end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer __KEY__"
wrk.headers["Prefer"] = "respond-async"
granted, sent, answered, accepted, first, last, other = 0, 0, 0, 0, 0, 0, ""
local threads = {}
function setup(thread)
  local index = #threads
  thread:set("index", index)
  thread:set("quota", math.floor(__JOBS__ / __THREADS__) + ((index < __JOBS__ % __THREADS__) and 1 or 0))
  table.insert(threads, thread)
end
function delay()
  if granted < quota then granted = granted + 1; return 0 end
  return 3600000
end
function request()
  local body = '{"model":"__MODEL__","prompt":"a lighthouse at dusk, take ' .. index .. '-' .. sent .. '","size":"1024x1024"}'
  if granted == 0 then return wrk.format(nil, nil, nil, body) end  -- wrk's check of the script, never sent
  sent = sent + 1
  if first == 0 then first = now() end
  return wrk.format(nil, nil, nil, body)
end
function response(status, headers, body)
  answered = answered + 1
  if status == 202 then accepted = accepted + 1 elseif other == "" then other = status .. " " .. body:sub(1, 300) end
  last = now()
  if answered == quota then io.write("thread-done\n"); io.flush(); wrk.thread:stop() end
end
function done(summary, latency, requests)
  local out = {sent = 0, answered = 0, accepted = 0, first = 1e18, last = 0, other = ""}
  for _, t in ipairs(threads) do
    out.sent = out.sent + t:get("sent"); out.answered = out.answered + t:get("answered")
    out.accepted = out.accepted + t:get("accepted")
    out.first = math.min(out.first, t:get("first")); out.last = math.max(out.last, t:get("last"))
    if out.other == "" then out.other = t:get("other") end
  end
  local e = summary.errors
  io.write(string.format('RESULT {"sent":%d,"answered":%d,"accepted":%d,"first":%.6f,"last":%.6f,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d,"errors":%d}\n', out.sent, out.answered, out.accepted, out.first, out.last,
    latency:percentile(50), latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout))
  if out.other ~= "" then io.write("OTHER " .. out.other:gsub("\n", " ") .. "\n") end
end
"""


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: this bench dying stops its children


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                            preexec_fn=_die_with_parent)  # fmt: skip


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the stand-in upstream did not come up on port {port}")


def submit(url: str, key: str, jobs: int, connections: int, threads: int, tmp: Path, limit: float) -> dict:
    """``jobs`` async generations with wrk; its RESULT line as a dict."""
    script = tmp / "submit.lua"
    script.write_text(LUA.replace("__KEY__", key).replace("__JOBS__", str(jobs)).replace("__THREADS__", str(threads))
                      .replace("__MODEL__", MODEL))  # fmt: skip
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{math.ceil(limit)}s", "--timeout", "30s",
               "-s", str(script), url]  # fmt: skip
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
    done, result = 0, None
    assert wrk.stdout is not None
    for line in wrk.stdout:  # ends when wrk does: at the latest after -d
        if line.startswith("thread-done"):
            done += 1
            if done == threads:
                wrk.send_signal(signal.SIGINT)  # every answer is in: end wrk's -d sleep now
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
        elif line.startswith("OTHER "):
            print(f"first answer other than 202: {line[len('OTHER ') :].strip()}", flush=True)
    wrk.wait(timeout=30)
    if result is None:
        raise RuntimeError(f"wrk printed no result (exit {wrk.returncode})")
    return result


def drain(gw: str, key: str, jobs: int, pid: int, limit: float) -> dict:
    """Poll the key's jobs until all have ended: when, and the gateway's CPU at each poll."""
    samples: list[tuple[float, float]] = []
    deadline = time.monotonic() + limit
    with httpx.Client(base_url=gw, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        while time.monotonic() < deadline:
            tick = time.monotonic()
            samples.append((tick, cpu_seconds(pid)))
            after, seen, pending = None, 0, False
            while True:  # newest first, stopping at the first page with a job still to end
                page = client.get("/v1/images/jobs", params={"limit": 100, **({"after": after} if after else {})}).json()
                seen += len(page["data"])
                if any(job["status"] not in FINAL for job in page["data"]):
                    pending = True
                    break
                if not page["has_more"]:
                    break
                after = page["last_id"]
            if not pending and seen >= jobs:
                return {"ended": time.monotonic(), "samples": samples}
            time.sleep(max(0.0, tick + POLL_SECONDS - time.monotonic()))
    raise RuntimeError(f"the jobs did not all end within {limit:.0f} s")


def list_all(client: httpx.Client) -> list[dict]:
    out, after = [], None
    while True:
        page = client.get("/v1/images/jobs", params={"limit": 100, **({"after": after} if after else {})}).json()
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["last_id"]


def wait_job(client: httpx.Client, job_id: str, limit: float) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        job = client.get(f"/v1/images/jobs/{job_id}").json()
        if job["status"] in FINAL:
            return job
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} did not end within {limit:.0f} s")


def gateway_config(tmp: Path, up: str, opts: argparse.Namespace) -> dict:
    config = {
        "server": {"data_dir": str(tmp / "data"), "log_level": "warning"},
        "auth": {"master_key": MASTER},
        "providers": {"up": {"type": "openai", "base_url": f"{up}/v1", "api_key": "sk-bench-upstream"}},
        "models": {MODEL: [{"provider": "up", "max_concurrency": opts.max_concurrency}]},
        "jobs": {"workers": opts.workers},
    }
    if opts.postgres:
        config["database"] = {"url": opts.postgres}
    return config


def main() -> None:  # noqa: PLR0915 - one linear scenario
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--delay-ms", type=int, default=5000, help="the stand-in upstream's time per image")
    parser.add_argument("--max-concurrency", type=int, default=64, help="the deployment's cap towards the upstream")
    parser.add_argument("--workers", type=int, help="jobs.workers (default: --max-concurrency)")
    parser.add_argument("--postgres", help="a PostgreSQL URL (postgresql+asyncpg://...) of an empty database")
    parser.add_argument("--profile", help="run the gateway under cProfile, its stats written to this file at the end")
    parser.add_argument("--noise", default="0", help="the stand-in PNG's noise (0: flat and small; 9: ~2 MB)")
    opts = parser.parse_args()
    opts.workers = opts.workers or opts.max_concurrency
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    rounds = math.ceil(opts.jobs / min(opts.max_concurrency, opts.workers))
    ideal = rounds * opts.delay_ms / 1000
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            up_port, gw_port = free_port(), free_port()
            up, gw = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
            env = {**os.environ, "BENCH_DELAY_MS": str(opts.delay_ms), "BENCH_NOISE": opts.noise}
            upstream = spawn([sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "fast_upstream:app",
                              "--host", "127.0.0.1", "--port", str(up_port), "--log-level", "warning", "--no-access-log",
                              "--backlog", "4096"], tmp / "upstream.log", env)  # fmt: skip
            procs.append(upstream)
            cfg = tmp / "imagegate.yaml"
            cfg.write_text(yaml.safe_dump(gateway_config(tmp, up, opts)))
            gw_env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
            serve = ["-m", "imagegate", "serve"]
            if opts.profile:
                serve = [str(Path(__file__).resolve()), "_profiled", str(Path(opts.profile).resolve()), "serve"]
            gateway = spawn([sys.executable, *serve, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(gw_port)],
                            tmp / "gateway.log", gw_env)  # fmt: skip
            procs.append(gateway)
            wait_listening(up_port, upstream)  # its every answer takes --delay-ms
            wait_up(f"{gw}/healthz", gateway)
            master = httpx.Client(base_url=gw, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30)

            def new_key(name: str, budget: float) -> tuple[str, str]:
                made = master.post("/admin/keys", json={"name": name, "budget_usd": budget})
                if made.status_code != 201:
                    sys.exit(f"FAILED: creating a key answered {made.status_code}: {made.text[:300]}")
                return made.json()["id"], made.json()["key"]

            # Warm up (imports, connections, the workers' path) with a round of
            # max_concurrency jobs of another budgeted key, and measure the CPU while
            # they all wait on the upstream (from when all run to before the first
            # can be done). What one reserved is a job's worst case; what it cost,
            # the per-image price the bench key's jobs must each be charged.
            warm_client = httpx.Client(base_url=gw, headers={"Authorization": f"Bearer {new_key('warm-up', 1000)[1]}"},
                                       timeout=30)  # fmt: skip
            t_first, warm_ids = time.monotonic(), []
            for i in range(opts.max_concurrency):
                warm = warm_client.post("/v1/images/generations", headers={"Prefer": "respond-async"},
                                        json={"model": MODEL, "prompt": f"warm up {i}", "size": "1024x1024"})  # fmt: skip
                if warm.status_code != 202:
                    sys.exit(f"FAILED: a warm-up job answered {warm.status_code}: {warm.text[:300]}")
                warm_ids.append(warm.json()["id"])
            reserved_each = Decimal(warm.json()["reserved_usd"])
            while any(job["status"] == "queued" for job in list_all(warm_client)):
                time.sleep(0.05)
            time.sleep(0.3)  # their upstream calls are out
            wait_cpu0, wait_t0 = cpu_seconds(gateway.pid), time.monotonic()
            time.sleep(max(0.5, t_first + opts.delay_ms / 1000 - 0.5 - wait_t0))
            waiting_pct = (cpu_seconds(gateway.pid) - wait_cpu0) / (time.monotonic() - wait_t0) * 100
            waiting_window = time.monotonic() - wait_t0
            warmed = [wait_job(warm_client, job_id, opts.delay_ms / 1000 + 60) for job_id in warm_ids]
            if any(job["status"] != "succeeded" for job in warmed):
                sys.exit(f"FAILED: a warm-up job did not succeed: {[j.get('error') for j in warmed if j.get('error')][:1]}")
            price = Decimal(warmed[0]["cost_usd"])
            # Room for every job's reservation at once (all may be queued before one settles).
            key_id, secret = new_key("async-bench", math.ceil(reserved_each * opts.jobs) + 1)

            time.sleep(1)
            rest_cpu0, rest_t0 = cpu_seconds(gateway.pid), time.monotonic()
            time.sleep(3)
            rest_pct = (cpu_seconds(gateway.pid) - rest_cpu0) / (time.monotonic() - rest_t0) * 100
            rss_rest = rss_mb(gateway.pid, "VmRSS")
            db = "PostgreSQL" if opts.postgres else "SQLite"
            print(f"imagegate async jobs: {os.cpu_count()} CPUs, {db}, {opts.jobs} jobs by wrk -c {opts.connections} "
                  f"-t {opts.threads}, upstream {opts.delay_ms / 1000:g} s per image, max_concurrency "
                  f"{opts.max_concurrency}, jobs.workers {opts.workers}, ${price} per image "
                  f"(${reserved_each} reserved)", flush=True)  # fmt: skip

            cpu0 = cpu_seconds(gateway.pid)
            sub = submit(f"{gw}/v1/images/generations", secret, opts.jobs, opts.connections, opts.threads, tmp, 120)
            cpu_sub = cpu_seconds(gateway.pid) - cpu0
            span = sub["last"] - sub["first"]
            print(f"submitted: {sub['accepted']} answered 202 of {sub['sent']} sent in {span:.2f} s; "
                  f"p50 {sub['p50_us'] / 1000:.1f} ms, p99 {sub['p99_us'] / 1000:.1f} ms, max {sub['max_us'] / 1000:.1f} ms",
                  flush=True)  # fmt: skip
            keyed = httpx.Client(base_url=gw, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
            listed = len(list_all(keyed))
            drained = drain(gw, secret, listed, gateway.pid, 2 * ideal + 120)
            drain_s = drained["ended"] - sub["first"]
            cpu_total = cpu_seconds(gateway.pid) - cpu0
            hwm = rss_mb(gateway.pid, "VmHWM")

            (t0, c0), (t1, c1) = drained["samples"][0], drained["samples"][-1]
            drain_pct = (c1 - c0) / (t1 - t0) * 100 if t1 > t0 else float("nan")
            jobs = list_all(keyed)
            succeeded = [job for job in jobs if job["status"] == "succeeded"]
            costs = [Decimal(job["cost_usd"]) for job in jobs if job.get("cost_usd") is not None]
            mispriced = sum(1 for job in succeeded if Decimal(job["cost_usd"]) != price)
            one = keyed.get(f"/v1/images/jobs/{succeeded[0]['id']}").json() if succeeded else {}
            image = Image.open(io.BytesIO(base64.b64decode(one["result"]["data"][0]["b64_json"]))) if one else None
            if image is not None:
                image.load()
            view = master.get(f"/admin/keys/{key_id}").json()
            spent, reserved = Decimal(view["spent_usd"]), Decimal(view["reserved_usd"])

            n = opts.jobs
            rows = [
                ("jobs accepted (202) / sent / listed", f"{sub['accepted']}/{sub['sent']}/{listed}", f"{n}/{n}/{n}"),
                ("submissions/s", f"{sub['accepted'] / span:.0f}" if span > 0 else "-", "-"),
                ("submission p50 (ms)", f"{sub['p50_us'] / 1000:.1f}", "-"),
                ("submission p99 (ms)", f"{sub['p99_us'] / 1000:.1f}", f"< {P99_TARGET_MS:g}"),
                ("time to drain, from the first submission (s)", f"{drain_s:.1f}", f"~{ideal:g}"),
                ("jobs succeeded", f"{len(succeeded)}/{len(jobs)}", f"{n}/{n}"),
                ("  charged the per-image price", f"{len(succeeded) - mispriced}/{len(succeeded)}", f"{n}/{n}"),
                ("one result", f"{image.format} {image.size[0]}x{image.size[1]}" if image else "-", "PNG 1024x1024"),
                ("key's spend (USD)", f"{spent}", f"{price * n}"),
                ("  sum of the jobs' cost_usd", f"{sum(costs, Decimal(0))}", f"{price * n}"),
                ("  left reserved", f"{reserved}", "0"),
                ("gateway RSS at rest / peak VmHWM (MB)", f"{rss_rest:.0f} / {hwm:.0f}", "-"),
                ("gateway CPU per job: submission (ms)", f"{cpu_sub * 1000 / n:.2f}", "-"),
                ("  submission + run + settlement (ms)", f"{cpu_total * 1000 / n:.2f}", "-"),
                ("gateway CPU at rest (% of one core)", f"{rest_pct:.2f}", "-"),
                (f"  {opts.max_concurrency} jobs waiting on the upstream ({waiting_window:.1f} s)", f"{waiting_pct:.2f}", "-"),
                ("  the drain, average (completions, claims)", f"{drain_pct:.1f}", "-"),
            ]
            print(f"{'figure':<48} {'measured':>16} {'target':>14}")
            for name, value, target in rows:
                print(f"{name:<48} {value:>16} {target:>14}")
            ok = (sub["accepted"] == n and listed == n and len(succeeded) == n and not mispriced and image is not None
                  and image.format == "PNG" and image.size == (1024, 1024) and spent == price * n
                  and spent == sum(costs, Decimal(0)) and reserved == 0)  # fmt: skip
            print("within target" if ok and sub["p99_us"] / 1000 < P99_TARGET_MS else "NOT within target")
            if not ok:
                log = (tmp / "gateway.log").read_text(errors="replace")[-2000:]
                sys.exit(f"FAILED: jobs lost, failed or mischarged (see the table); gateway log tail:\n{log}")
        finally:
            stop(procs)
    if opts.profile:  # the gateway's main thread (its event loop): where its CPU went
        pstats.Stats(opts.profile).sort_stats("tottime").print_stats(25)


def _profiled(out: str, argv: list[str]) -> None:
    """``imagegate serve`` under cProfile (``--profile``): the stats are written when it stops."""
    import cProfile

    from imagegate.cli import main as cli

    def _stop(*_: object) -> None:  # uvicorn re-raises the SIGTERM it handled once it has shut down
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    profile = cProfile.Profile()
    profile.enable()
    try:
        cli(argv, prog_name="imagegate", standalone_mode=False)
    except SystemExit:
        pass
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_profiled"]:
        _profiled(sys.argv[2], sys.argv[3:])
    else:
        main()
