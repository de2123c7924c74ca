"""What do keys, budgets and reservations cost per request?

Starts, on loopback: the instant stand-in upstream (bench/fast_upstream.py,
with a small image so that accounting, not image bytes, dominates) and the
real ``imagegate serve`` in front of it on SQLite (or ``--database-url``).
Then drives the same generation with wrk, side by side in one run:

* straight to the upstream (the floor);
* through imagegate with a static key (no budget: usage rows batched);
* with a database key without a budget (a reservation row of 0 and a
  settlement transaction per request);
* with a database key with a budget (reservation UPDATE + row, settlement
  transaction).

For each it reports requests/s, p50/p99 latency and the gateway's CPU
milliseconds per request (from /proc, the steadiest figure on a shared
machine), and checks at the end that the budgeted key's spend equals the
sum it was charged and that nothing stays reserved.

    python bench/money_path.py [--seconds 8] [--connections 8] [--database-url URL]

Needs ``wrk`` (Debian: ``apt-get install wrk``). Bounded in time; every
process stops itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402
from overhead import cpu_seconds, free_port, stop, wait_up  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MASTER = "bench-master-key-0123456789abcdef"
STATIC = "sk-bench-static-key-0123456789"
BODY = {"model": "gpt-image-1", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"}


def wrk(url: str, secret: str | None, seconds: float, connections: int, tmp: Path) -> dict[str, float]:
    return overhead.wrk(url, BODY, secret, seconds, connections, tmp)


def cli(config: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    return subprocess.run([sys.executable, "-m", "imagegate", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120, check=True, env=env).stdout  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a SQLite file)")
    opts = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            up_port, gw_port = free_port(), free_port()
            env = {**os.environ, "BENCH_NOISE": "0"}  # a small, flat PNG: accounting dominates
            upstream = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "fast_upstream:app",
                 "--port", str(up_port), "--log-level", "warning", "--no-access-log"], env=env,
            )  # fmt: skip
            procs.append(upstream)
            config = {
                "server": {"data_dir": str(tmp / "data"), "log_level": "warning"},
                "auth": {"master_key": MASTER, "api_keys": [STATIC]},
                "providers": {"up": {"type": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1", "api_key": "sk-b"}},
                "models": {"gpt-image-1": [{"provider": "up"}]},
            }
            if opts.database_url:
                config["database"] = {"url": opts.database_url}
            cfg = tmp / "imagegate.yaml"
            cfg.write_text(yaml.safe_dump(config))
            plain = json.loads(cli(cfg, "keys", "create", "--name", "plain", "--json"))
            budgeted = json.loads(cli(cfg, "keys", "create", "--name", "budgeted", "--budget", "1000000", "--json"))
            gateway = subprocess.Popen(
                [sys.executable, "-m", "imagegate", "serve", "--config", str(cfg), "--port", str(gw_port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(gateway)
            wait_up(f"http://127.0.0.1:{up_port}/", upstream)
            wait_up(f"http://127.0.0.1:{gw_port}/healthz", gateway)
            up_url, gw_url = (
                f"http://127.0.0.1:{up_port}/v1/images/generations",
                f"http://127.0.0.1:{gw_port}/v1/images/generations",
            )
            cases = [
                ("upstream directly", up_url, None),
                ("static key (no budget)", gw_url, STATIC),
                ("database key, no budget", gw_url, plain["key"]),
                ("database key with budget", gw_url, budgeted["key"]),
            ]
            wrk(gw_url, budgeted["key"], 2, opts.connections, tmp)  # warm up: connections, caches, SQLite pages
            print(f"imagegate money path: {os.cpu_count()} CPUs, wrk -c {opts.connections}, {opts.seconds:g} s each, "
                  f"database {'PostgreSQL' if opts.database_url else 'SQLite'}", flush=True)  # fmt: skip
            print(f"{'caller':<28} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'gateway CPU ms/req':>19}")
            rows = []
            for name, url, secret in cases:
                before = cpu_seconds(gateway.pid)
                result = wrk(url, secret, opts.seconds, opts.connections, tmp)
                cpu = (cpu_seconds(gateway.pid) - before) * 1000 / max(1.0, result["requests"])
                rows.append((name, result, cpu))
                shown = f"{cpu:>19.2f}" if secret else f"{'-':>19}"
                print(f"{name:<28} {result['rps']:>8.0f} {result['p50']:>8.2f} {result['p99']:>8.2f} {shown}", flush=True)
            base = rows[1]
            for name, result, cpu in rows[2:]:
                print(f"{name} vs static key: req/s {result['rps'] / base[1]['rps']:.2f}x, "
                      f"CPU/req +{cpu - base[2]:.2f} ms")  # fmt: skip
            time.sleep(0.5)
            view = httpx.get(f"http://127.0.0.1:{gw_port}/admin/keys/{budgeted['id']}",
                             headers={"Authorization": f"Bearer {MASTER}"}, timeout=30).json()  # fmt: skip
            usage = httpx.get(f"http://127.0.0.1:{gw_port}/admin/usage", params={"key": budgeted["id"], "format": "json"},
                              headers={"Authorization": f"Bearer {MASTER}"}, timeout=30).json()  # fmt: skip
            charged = sum(Decimal(r["cost_usd"]) for r in usage["data"])
            print(f"budgeted key: spent ${view['spent_usd']} (usage rows say ${charged:.6f}), reserved ${view['reserved_usd']}")
            if Decimal(view["spent_usd"]) != charged or Decimal(view["reserved_usd"]) != 0:
                sys.exit("MISMATCH: spend and usage disagree, or a reservation was left behind")
        finally:
            stop(procs)


if __name__ == "__main__":
    main()
