"""Routing under failure: one of two deployments fails half the time.

Starts two stand-in upstreams on loopback (bench/fast_upstream.py: a 2 MB
PNG answer after BENCH_DELAY_MS, the time a generation takes) and imagegate
in front of both (equal weights, default retries and cooldown). Measures,
side by side in one run, at the same concurrency:

* both deployments healthy;
* deployment B answering 50% of requests with a 500 at once;
* deployment B answering 50% of requests with a 500 after the generation time.

and prints the success rate and p50/p99 latency of each, with the ratios.
Targets: 100% success and p50 within 1.5x of the healthy run.

    python bench/routing.py [--seconds 8] [--concurrency 8] [--delay-ms 200]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from overhead import free_port, load, start_gateway, start_upstream  # noqa: E402


def gateway_config(tmp: Path, a: int, b: int) -> dict:
    return {
        "server": {"log_level": "error", "data_dir": str(tmp / "data")},
        "providers": {
            "a": {"type": "openai", "base_url": f"http://127.0.0.1:{a}/v1", "api_key": "sk-bench"},
            "b": {"type": "openai", "base_url": f"http://127.0.0.1:{b}/v1", "api_key": "sk-bench"},
        },
        "models": {"gpt-image-1": [{"provider": "a"}, {"provider": "b"}]},
    }


def measure(fail_rate: float, opts: argparse.Namespace, slow: bool = False) -> dict:
    a, b, gw = free_port(), free_port(), free_port()
    delay = {"BENCH_DELAY_MS": str(opts.delay_ms)}
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_upstream(a, **delay),
        start_upstream(b, **delay, BENCH_FAIL_RATE=str(fail_rate), BENCH_FAIL_SLOW="1" if slow else "0"),
        start_gateway(gw, "", Path(tmp), gateway_config(Path(tmp), a, b)),
    ):
        return asyncio.run(load(f"http://127.0.0.1:{gw}/v1", "generations", opts.concurrency, opts.seconds, b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--delay-ms", type=int, default=200, help="how long a successful generation takes upstream")
    opts = parser.parse_args()
    healthy = measure(0.0, opts)
    failing = measure(0.5, opts)
    slow = measure(0.5, opts, slow=True)
    print(f"concurrency {opts.concurrency}, {opts.seconds:g} s each, upstream generation time {opts.delay_ms} ms")
    print(f"{'':<34} {'requests':>9} {'success':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}")
    runs = (("both deployments healthy", healthy), ("B fails 50%, at once", failing), ("B fails 50%, after generating", slow))
    for name, r in runs:
        total = r["n"]
        ok = total - r["errors"]
        print(f"{name:<34} {total:>9} {ok / total:>8.1%} {r['rps']:>7.1f} {r['p50']:>8.1f} {r['p99']:>8.1f}")
    print()
    for name, r in runs[1:]:
        success = (r["n"] - r["errors"]) / r["n"]
        print(f"{name}: success {success:.1%} (target 100%), p50 {r['p50'] / healthy['p50']:.2f}x healthy "
              f"(target <= 1.5x), p99 {r['p99'] / healthy['p99']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
