"""Dynamic batching of a local diffusers model: images/s with batching on
versus off, through the HTTP API, same model, same seeds.

Builds the tiny random Stable Diffusion pipeline of diffusers' own tests
(``block_out_channels=(4, 8)``, 64x64; tests/tiny_pipeline.py) in a temp
directory unless ``--model DIR`` names a real one, and measures, one after
the other on the same machine:

* plain diffusers: one pipeline call per image, in a loop (the reference);
* plain diffusers: one call of ``--concurrency`` images (the ceiling);
* imagegate, batching off (``max_batch_size: 1``), N concurrent clients;
* imagegate, batching on (``max_batch_size: N``), N concurrent clients;

then sends the same N seeded requests to both gateways and compares the
decoded images (batched float math may move a pixel by a level or two).
Target on CPU with the tiny pipeline: batching on >= 1.5x batching off at 8
concurrent requests.

    python bench/local_batching.py [--concurrency 8] [--seconds 10] [--steps 4]
        [--model DIR] [--device auto] [--dtype auto] [--size auto]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from overhead import free_port, process  # noqa: E402

MASTER = "sk-bench-master-0123456789abcdef"


def gateway_config(model: str, tmp: Path, args: argparse.Namespace, batch: int) -> dict:
    return {
        "server": {"log_level": "warning", "data_dir": str(tmp / f"data-{batch}")},
        "auth": {"master_key": MASTER},
        "providers": {
            "local": {
                "type": "diffusers",
                "device": args.device,
                "dtype": args.dtype,
                "preload": True,
                "max_batch_size": batch,
                "max_batch_wait_ms": args.wait_ms,
                "max_queue": 1000,
            }
        },
        "models": {"local": [{"provider": "local", "model": model}]},
    }


def start_gateway(config: dict, tmp: Path, name: str):
    import yaml

    port = free_port()
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    args = [sys.executable, "-m", "imagegate", "serve", "--config", str(path), "--port", str(port)]
    return port, process(args, f"http://127.0.0.1:{port}/healthz")


def wait_ready(base: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{base}/readyz", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the model did not load")
        time.sleep(0.2)


def model_stats(base: str) -> dict:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {MASTER}"}) as http:
        return next(iter(http.get("/admin/providers").json()["local"]["models"].values()), {})


def body(args: argparse.Namespace, seed: int) -> dict:
    out = {"model": "local", "prompt": f"a lighthouse at dusk, study {seed}", "seed": seed, "num_inference_steps": args.steps}
    if args.size != "auto":
        out["size"] = args.size
    return out


async def closed_loop(base: str, args: argparse.Namespace) -> tuple[float, int]:
    """N clients, each sending its next request as soon as the last returns; images/s."""
    images = 0
    stop = time.monotonic() + args.seconds
    headers = {"Authorization": f"Bearer {MASTER}"}
    async with httpx.AsyncClient(base_url=base, timeout=600, headers=headers) as http:

        async def client(i: int) -> None:
            nonlocal images
            k = 0
            while time.monotonic() < stop:
                r = await http.post("/v1/images/generations", json=body(args, 1000 * i + k))
                r.raise_for_status()
                images += len(r.json()["data"])
                k += 1

        await http.post("/v1/images/generations", json=body(args, 0))  # warm
        started = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(args.concurrency)))
        return images / (time.monotonic() - started), images


async def one_burst(base: str, args: argparse.Namespace) -> list[np.ndarray]:
    headers = {"Authorization": f"Bearer {MASTER}"}
    async with httpx.AsyncClient(base_url=base, timeout=600, headers=headers) as http:
        rs = await asyncio.gather(*(http.post("/v1/images/generations", json=body(args, 7 + i)) for i in range(args.concurrency)))
    decoded = []
    for r in rs:
        r.raise_for_status()
        img = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
        decoded.append(np.asarray(img.convert("RGB"), dtype=np.int16))
    return decoded


def plain_diffusers(model: str, args: argparse.Namespace) -> tuple[float, float]:
    """images/s of diffusers itself: one image per call, and one call of N images."""
    import torch
    from diffusers import DiffusionPipeline

    from imagegate.providers.local.runtime import pick_device, pick_dtype

    device = pick_device(args.device)
    pipe = DiffusionPipeline.from_pretrained(model, dtype=pick_dtype(args.dtype, device, "sd")).to(device)
    pipe.set_progress_bar_config(disable=True)
    extra = {}
    if args.size != "auto":
        w, h = (int(v) for v in args.size.split("x"))
        extra = {"width": w, "height": h}

    def call(n: int, seed: int) -> None:
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
        with torch.inference_mode():
            pipe([f"a lighthouse, study {seed}"] * n, num_inference_steps=args.steps, generator=gens, **extra)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def rate(n: int) -> float:
        call(n, 0)  # warm
        done, started = 0, time.monotonic()
        while time.monotonic() - started < args.seconds:
            call(n, done)
            done += n
        return done / (time.monotonic() - started)

    return rate(1), rate(args.concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--wait-ms", type=float, default=20)
    parser.add_argument("--model", help="a diffusers model directory (default: build the tiny test pipeline)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if model is None:
            from tiny_pipeline import build_tiny_pipeline

            model = str(build_tiny_pipeline(tmp / "tiny-sd"))
        print(f"model {model}, {args.concurrency} concurrent, {args.steps} steps, size {args.size}, {args.seconds:g} s each")
        one, many = plain_diffusers(model, args)
        print(f"  plain diffusers, 1 image per call     {one:8.2f} images/s")
        print(f"  plain diffusers, {args.concurrency} images per call    {many:8.2f} images/s   ({many / one:.2f}x)")
        results = {}
        images = {}
        for name, batch in (("off", 1), ("on", args.concurrency)):
            port, gateway = start_gateway(gateway_config(model, tmp, args, batch), tmp, f"batching-{name}")
            base = f"http://127.0.0.1:{port}"
            with gateway:
                wait_ready(base)
                before = model_stats(base)
                results[name], count = asyncio.run(closed_loop(base, args))
                calls = model_stats(base)["batches"] - before.get("batches", 0) - 1  # less the warm-up call
                images[name] = asyncio.run(one_burst(base, args))
            print(f"  imagegate, batching {name:3}              {results[name]:8.2f} images/s   "
                  f"({count} images in {calls} pipeline calls)")  # fmt: skip
        diff = max(int(np.abs(a - b).max()) for a, b in zip(images["off"], images["on"], strict=True))
        print(f"  batching on / off                     {results['on'] / results['off']:8.2f}x   (target >= 1.5x)")
        print(f"  imagegate batching on / plain 1 per call {results['on'] / one:5.2f}x")
        print(f"  same seeds, batched vs unbatched: largest pixel difference {diff}/255 over {args.concurrency} images")


if __name__ == "__main__":
    main()
