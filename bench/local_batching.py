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
        [--model DIR | --architecture sd-turbo|sdxl] [--device auto] [--dtype auto] [--size auto]

``--architecture`` builds a real-size model with random weights (speed does
not depend on the weights): SD-Turbo's (SD 2.1 UNet, OpenCLIP-H text encoder,
512x512) or SDXL's (2.6B UNet, two text encoders, 1024x1024). For GPUs:
``--architecture sdxl --device cuda --dtype float16``.
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


def build_real_size(path: Path, architecture: str) -> Path:
    """A real-size SD-Turbo or SDXL architecture with random weights (fp16 files)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from tiny_pipeline import clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        scaling_factor=0.18215 if architecture == "sd-turbo" else 0.13025,
    )
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # fmt: skip

    def text(hidden: int, layers: int, heads: int, act: str, projection: int | None = None):
        config = CLIPTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                                num_attention_heads=heads, hidden_act=act, vocab_size=49408, max_position_embeddings=77,
                                bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=projection or hidden)  # fmt: skip
        return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)

    if architecture == "sd-turbo":
        unet = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
        )
        pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text(1024, 23, 16, "gelu"), tokenizer=tokenizer,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)  # fmt: skip
    else:
        unet = UNet2DConditionModel(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            cross_attention_dim=2048,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        pipe = StableDiffusionXLPipeline(unet=unet, vae=vae, text_encoder=text(768, 12, 12, "quick_gelu"),
                                         text_encoder_2=text(1280, 32, 20, "gelu", projection=1280), tokenizer=tokenizer,
                                         tokenizer_2=tokenizer, scheduler=scheduler)  # fmt: skip
    pipe.to(torch.float16).save_pretrained(path)
    return path


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
    parser.add_argument("--architecture", choices=["sd-turbo", "sdxl"], help="build a real-size model with random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if args.architecture:
            model = str(build_real_size(tmp / args.architecture, args.architecture))
        elif model is None:
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
