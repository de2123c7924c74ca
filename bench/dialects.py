"""What does each OpenAI-like dialect, and each native provider, cost per request?

Starts, on loopback: the instant stand-in upstream (bench/fast_upstream.py,
with a small, flat 1536x864 PNG, the size every request asks, so that the
dialect's translation and the catalog's validation, not image bytes or a
resize, dominate) and the real ``imagegate serve`` in front of it, with one
provider of each type pointed at it. Then drives a generation with wrk, side
by side in one run:

* straight to the upstream (the floor);
* ``openai`` serving gpt-image-2 under its YAML catalog entry (a free size,
  1536x864, checked against its multiple-of-16, edge and aspect limits);
* ``openai`` serving a model the catalog does not list (the permissive
  ``openai-compatible`` rules) with a field nobody declared, forwarded;
* ``azure``: the v1 path ``/openai/v1/images/generations``, the ``api-key``
  header, a deployment name under gpt-image-2's rules;
* ``xai``: the size converted to xAI's ``aspect_ratio`` and ``resolution``;
* ``seedream``: Ark's ``/api/v3/images/generations`` and Ark's answer shape;
* ``gemini``: a JSON ``generateContent`` call built from the OpenAI request
  (size to aspect ratio), its ``inlineData`` answer and ``usageMetadata``;
* ``gemini`` serving Imagen 4: ``predict`` and ``predictions[]``;
* ``vertex``: the same Gemini call at Vertex's path, with an OAuth token
  minted (once) from a service-account key at the stand-in's ``/token``;
* ``stability``: a multipart ``generate/core`` call answered with the
  image's bytes and a ``finish-reason`` header.

For each it reports requests/s, p50/p99 latency and the gateway's CPU
milliseconds per request (from /proc, the steadiest figure on a shared
machine), and checks at the end that every dialect answered 200 with an
image (decoded with Pillow: format and size, nothing resized) and that
Seedream's usage is Ark's (so Ark's path and shape were used).

    python bench/dialects.py [--seconds 6] [--connections 8]

Needs ``wrk`` (Debian: ``apt-get install wrk``). Bounded in time; every
process stops itself.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import cpu_seconds, free_port, stop, wait_up, wrk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STATIC = "sk-bench-static-key-0123456789"
SIZE = "1536x864"
PROMPT = "a lighthouse"
# (name, public model, request body beyond model/prompt/size). xAI's and Ark's
# models answer URLs by default: they ask b64_json like the others, so that
# no row stores files.
CASES = [
    ("openai gpt-image-2", "gpt-image-2", {"quality": "low"}),
    ("openai unlisted + unknown field", "reseller-image-1", {"style_preset": "photographic"}),
    ("azure (v1 path, api-key)", "azure-image", {"quality": "low"}),
    ("xai (size -> aspect_ratio)", "grok-imagine-image", {"response_format": "b64_json"}),
    ("seedream (Ark)", "seedream-4-0-250828", {"response_format": "b64_json"}),
    ("gemini (generateContent)", "gemini-2.5-flash-image", {}),
    ("gemini imagen (predict)", "imagen-4.0-fast-generate-001", {}),
    ("vertex (OAuth, generateContent)", "vertex-gemini", {}),
    ("stability (multipart, bytes)", "stable-image-core", {}),
]


def body(model: str, extra: dict) -> dict:
    return {"model": model, "prompt": PROMPT, "size": SIZE, **extra}


def service_account(token_uri: str) -> str:
    """A throwaway service-account key (google-auth signs its token request with it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "bench",
            "private_key_id": "bench",
            "private_key": pem.decode(),
            "client_email": "bench@bench.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": token_uri,
        }
    )


def gateway_config(tmp: Path, up: str) -> dict:
    return {
        "server": {"data_dir": str(tmp / "data"), "log_level": "warning"},
        "auth": {"api_keys": [STATIC]},
        "providers": {
            "oai": {"type": "openai", "base_url": f"{up}/v1", "api_key": "sk-b"},
            "az": {"type": "azure", "endpoint": up, "api_key": "azure-key"},
            "xai": {"type": "xai", "base_url": f"{up}/v1", "api_key": "xai-b"},
            "ark": {"type": "seedream", "base_url": f"{up}/api/v3", "api_key": "ark-b"},
            "gem": {"type": "gemini", "base_url": f"{up}/v1beta", "api_key": "gem-b"},
            "vtx": {
                "type": "vertex",
                "base_url": f"{up}/v1",
                "project": "bench",
                "location": "us-central1",
                "credentials_json": service_account(f"{up}/token"),
            },
            "stab": {"type": "stability", "base_url": up, "api_key": "sk-stab-b"},
        },
        "models": {
            "gpt-image-2": [{"provider": "oai"}],
            "reseller-image-1": [{"provider": "oai"}],
            "azure-image": {"rules": "gpt-image-2", "deployments": [{"provider": "az", "model": "prod-img"}]},
            "grok-imagine-image": [{"provider": "xai"}],
            "seedream-4-0-250828": [{"provider": "ark"}],
            "gemini-2.5-flash-image": [{"provider": "gem"}],
            "imagen-4.0-fast-generate-001": [{"provider": "gem"}],
            "vertex-gemini": [{"provider": "vtx", "model": "gemini-2.5-flash-image"}],
            "stable-image-core": [{"provider": "stab"}],
        },
    }


def check(gw: str) -> None:
    """One request per dialect: a 200 with a decodable image of the asked size."""
    width, height = (int(edge) for edge in SIZE.split("x"))
    with httpx.Client(base_url=gw, headers={"Authorization": f"Bearer {STATIC}"}, timeout=30) as http:
        for name, model, extra in CASES:
            r = http.post("/v1/images/generations", json=body(model, extra))
            if r.status_code != 200:
                sys.exit(f"FAILED: {name} answered {r.status_code}: {r.text[:300]}")
            answer = r.json()
            image = Image.open(io.BytesIO(base64.b64decode(answer["data"][0]["b64_json"])))
            image.load()
            usage = answer.get("usage") or {}
            print(f"{name:<34} 200, {image.format} {image.size[0]}x{image.size[1]} {image.mode}, "
                  f"usage output_tokens {usage.get('output_tokens', '-')}")  # fmt: skip
            if image.format != "PNG" or image.size != (width, height) or "x-imagegate-resized" in r.headers:
                sys.exit(f"FAILED: {name}: {image.format} {image.size}, resized: {r.headers.get('x-imagegate-resized')}")
            if model.startswith("seedream") and usage.get("output_tokens") != width * height // 256:
                sys.exit(f"FAILED: {name}: usage {usage} is not Ark's ({width * height // 256} image tokens)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--connections", type=int, default=8)
    opts = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            up_port, gw_port = free_port(), free_port()
            env = {**os.environ, "BENCH_NOISE": "0", "BENCH_SIZE": SIZE}  # a small, flat PNG of the asked size
            upstream = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "fast_upstream:app",
                 "--host", "127.0.0.1", "--port", str(up_port), "--log-level", "warning", "--no-access-log"], env=env,
            )  # fmt: skip
            procs.append(upstream)
            cfg = tmp / "imagegate.yaml"
            cfg.write_text(yaml.safe_dump(gateway_config(tmp, f"http://127.0.0.1:{up_port}")))
            gateway = subprocess.Popen(
                [sys.executable, "-m", "imagegate", "serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(gw_port)],
                env={k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(gateway)
            wait_up(f"http://127.0.0.1:{up_port}/", upstream)
            wait_up(f"http://127.0.0.1:{gw_port}/healthz", gateway)
            up_url, gw_url = (
                f"http://127.0.0.1:{up_port}/v1/images/generations",
                f"http://127.0.0.1:{gw_port}/v1/images/generations",
            )
            cases = [("upstream directly", up_url, body("gpt-image-2", {"quality": "low"}), None)]
            cases += [(name, gw_url, body(model, extra), STATIC) for name, model, extra in CASES]
            for _, url, payload, secret in cases[1:]:  # warm up: each provider's connections, caches
                wrk(url, payload, secret, 1, opts.connections, tmp)
            print(f"imagegate dialects: {os.cpu_count()} CPUs, wrk -c {opts.connections}, {opts.seconds:g} s each, "
                  f"a {SIZE} PNG", flush=True)  # fmt: skip
            print(f"{'caller':<34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'gateway CPU ms/req':>19}")
            rows = []
            for name, url, payload, secret in cases:
                before = cpu_seconds(gateway.pid)
                result = wrk(url, payload, secret, opts.seconds, opts.connections, tmp)
                cpu = (cpu_seconds(gateway.pid) - before) * 1000 / max(1.0, result["requests"])
                rows.append((name, result, cpu))
                shown = f"{cpu:>19.2f}" if secret else f"{'-':>19}"
                print(f"{name:<34} {result['rps']:>8.0f} {result['p50']:>8.2f} {result['p99']:>8.2f} {shown}", flush=True)
            base = rows[1]
            for name, result, cpu in rows[2:]:
                print(f"{name} vs openai gpt-image-2: req/s {result['rps'] / base[1]['rps']:.2f}x, "
                      f"CPU/req {cpu - base[2]:+.2f} ms")  # fmt: skip
            check(f"http://127.0.0.1:{gw_port}")
        finally:
            stop(procs)


if __name__ == "__main__":
    main()
