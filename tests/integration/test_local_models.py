"""The diffusers provider end to end: a tiny random Stable Diffusion
pipeline saved to disk, loaded by the real loading code, served through the
HTTP API and called with the official SDK."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import yaml
from PIL import Image
from tiny_pipeline import build_tiny_pipeline, build_tiny_sdxl_pipeline, copy_pipeline

from support import BROKEN_PNGS, SIGNING_KEY, Running, decode_b64, make_mask, png_with_idat

MASTER = "sk-master-local-models-0123456789"
NATIVE = 64  # the tiny pipeline: sample_size 32 x VAE factor 2
FAST = {"num_inference_steps": 2}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


def local_config(model: Path | str, routing: dict | None = None, **options: Any) -> dict[str, Any]:
    return {
        "storage": {"signing_key": SIGNING_KEY},
        "auth": {"master_key": MASTER},
        "providers": {"local": {"type": "diffusers", **options}},
        "models": {"tiny": [{"provider": "local", "model": str(model)}]},
        "routing": routing or {"max_attempts": 1},
    }


@pytest.fixture(scope="module")
def local(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    from support import run_server

    with run_server(local_config(tiny_model, max_batch_wait_ms=0), tmp_path_factory.mktemp("local")) as running:
        yield running


@pytest.fixture
def sdk(local: Running) -> openai.OpenAI:
    return local.sdk(MASTER)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(decode_b64(b64).convert("RGB"), dtype=np.int16)


def provider_state(server: Running) -> dict[str, Any]:
    with server.http() as http:
        r = http.get("/admin/providers", headers={"Authorization": f"Bearer {MASTER}"})
    r.raise_for_status()
    return r.json()["local"]


def stats(server: Running) -> dict[str, Any]:
    """The counters of the server's one local model."""
    (model,) = provider_state(server)["models"].values()
    return model


def textured(width: int = NATIVE, height: int = NATIVE, seed: int = 0) -> bytes:
    """Noise over a seed-dependent gradient, so inputs differ at every scale."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(0, 256, (2, 3))
    ramp = np.linspace(0, 1, width)[None, :, None]
    base = colors[0] * (1 - ramp) + colors[1] * ramp
    pixels = np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


# -- generations ----------------------------------------------------------------


def test_auto_size_is_the_native_resolution(sdk: openai.OpenAI) -> None:
    r = sdk.images.generate(model="tiny", prompt="a lighthouse", extra_body=FAST)
    img = decode_b64(r.data[0].b64_json)
    assert (img.format, img.size, img.mode) == ("PNG", (NATIVE, NATIVE), "RGB")
    assert r.size == f"{NATIVE}x{NATIVE}" and r.background == "opaque" and r.output_format == "png"
    assert np.asarray(img).std() > 1  # an actual picture, not a flat fill


@pytest.mark.parametrize(("size", "expected"), [("128x64", (128, 64)), ("48x96", (48, 96)), ("100x100", (100, 100))])
def test_sizes_render_natively_then_resize(sdk: openai.OpenAI, size: str, expected: tuple[int, int]) -> None:
    r = sdk.images.generate(model="tiny", prompt="a lighthouse", size=size, extra_body=FAST)  # type: ignore[arg-type]
    assert decode_b64(r.data[0].b64_json).size == expected
    assert r.size == size


@pytest.mark.parametrize(
    ("size", "why"),
    [
        ("1024x1024", "longest edge may be at most 128"),
        ("256x256", "at most 128"),
        ("128x32", "aspect ratio"),
        ("12x12", "at least 256 pixels"),
    ],
)
def test_sizes_the_model_cannot_do_are_refused(sdk: openai.OpenAI, size: str, why: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.images.generate(model="tiny", prompt="x", size=size, extra_body=FAST)  # type: ignore[arg-type]
    assert err.value.body["param"] == "size" and why in err.value.body["message"]


def test_n_images_get_distinct_seeds_and_a_seed_reproduces(sdk: openai.OpenAI) -> None:
    first = sdk.images.generate(model="tiny", prompt="a red boat", n=3, extra_body={"seed": 7, **FAST})
    again = sdk.images.generate(model="tiny", prompt="a red boat", n=3, extra_body={"seed": 7, **FAST})
    images = [pixels(d.b64_json) for d in first.data]
    assert len(images) == 3
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert np.abs(images[a] - images[b]).max() > 20, "each image has its own seed"
    for a, b in zip(images, (pixels(d.b64_json) for d in again.data), strict=True):
        assert np.array_equal(a, b)
    # image i has seed + i: the second image is what seed 8 alone gives
    alone = pixels(sdk.images.generate(model="tiny", prompt="a red boat", extra_body={"seed": 8, **FAST}).data[0].b64_json)
    assert np.abs(alone - images[1]).max() <= 2


def test_without_a_seed_images_differ(sdk: openai.OpenAI) -> None:
    a = sdk.images.generate(model="tiny", prompt="same prompt", extra_body=FAST)
    b = sdk.images.generate(model="tiny", prompt="same prompt", extra_body=FAST)
    assert np.abs(pixels(a.data[0].b64_json) - pixels(b.data[0].b64_json)).max() > 20


@pytest.mark.parametrize(
    "change", [{"negative_prompt": "blurry"}, {"guidance_scale": 1.0}, {"num_inference_steps": 4}, {"prompt": "other"}]
)
def test_extension_fields_reach_the_pipeline(sdk: openai.OpenAI, change: dict[str, Any]) -> None:
    base = {"seed": 3, "num_inference_steps": 2}
    plain = sdk.images.generate(model="tiny", prompt="a cat", extra_body=base)
    prompt = change.pop("prompt", "a cat")
    changed = sdk.images.generate(model="tiny", prompt=prompt, extra_body={**base, **change})
    assert np.abs(pixels(plain.data[0].b64_json) - pixels(changed.data[0].b64_json)).max() > 2


def test_output_format_and_compression_are_applied(sdk: openai.OpenAI) -> None:
    r = sdk.images.generate(model="tiny", prompt="x", output_format="webp", output_compression=50, extra_body=FAST)
    img = decode_b64(r.data[0].b64_json)
    assert (img.format, img.size) == ("WEBP", (NATIVE, NATIVE)) and r.output_format == "webp"
    r = sdk.images.generate(model="tiny", prompt="x", output_format="jpeg", response_format="url", extra_body=FAST)
    with httpx.Client() as http:
        fetched = http.get(r.data[0].url)
    assert Image.open(io.BytesIO(fetched.content)).format == "JPEG"


def test_transparency_is_refused_clearly(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.images.generate(model="tiny", prompt="x", background="transparent", extra_body=FAST)
    assert err.value.body["param"] == "background" and err.value.body["code"] == "unsupported_background"


def test_streaming_sends_latent_previews_then_the_image(sdk: openai.OpenAI) -> None:
    stream = sdk.images.generate(
        model="tiny", prompt="x", stream=True, partial_images=2, extra_body={"seed": 4, "num_inference_steps": 6}
    )
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    final = pixels(events[-1].b64_json)
    previews = [pixels(e.b64_json) for e in events[:2]]
    assert all(p.shape == final.shape == (NATIVE, NATIVE, 3) for p in previews)
    assert np.abs(previews[0] - final).mean() > np.abs(previews[1] - final).mean(), "previews converge on the image"
    plain = sdk.images.generate(model="tiny", prompt="x", extra_body={"seed": 4, "num_inference_steps": 6})
    assert np.array_equal(pixels(plain.data[0].b64_json), final), "previews do not change the result"


def test_streaming_without_partials_and_with_few_steps(sdk: openai.OpenAI) -> None:
    events = list(sdk.images.generate(model="tiny", prompt="x", stream=True, extra_body=FAST))
    assert [e.type for e in events] == ["image_generation.completed"]
    events = list(sdk.images.generate(model="tiny", prompt="x", stream=True, partial_images=3, extra_body=FAST))
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]


def test_an_inpainting_stream_previews_keep_the_unmasked_pixels(sdk: openai.OpenAI) -> None:
    source = textured(seed=12)
    box = (8, 8, 40, 40)
    events = list(
        sdk.images.edit(
            model="tiny",
            image=("in.png", source, "image/png"),
            mask=("mask.png", make_mask(NATIVE, NATIVE, box), "image/png"),
            prompt="x",
            stream=True,
            partial_images=1,
            extra_body={"seed": 1, "num_inference_steps": 4},
        )
    )
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    before = np.asarray(Image.open(io.BytesIO(source)).convert("RGB"), dtype=np.int16)
    inside = np.zeros((NATIVE, NATIVE), dtype=bool)
    inside[box[1] : box[3], box[0] : box[2]] = True
    for event in events:
        assert np.array_equal(pixels(event.b64_json)[~inside], before[~inside])


# -- edits and variations -------------------------------------------------------


def test_edit_without_mask_is_image_to_image(sdk: openai.OpenAI) -> None:
    def edit(image: bytes, seed: int = 5) -> np.ndarray:
        r = sdk.images.edit(
            model="tiny", image=("in.png", image, "image/png"), prompt="paint it", extra_body={"seed": seed, **FAST}
        )
        return pixels(r.data[0].b64_json)

    source = textured(seed=1)
    out = edit(source)
    assert out.shape == (NATIVE, NATIVE, 3)
    assert np.array_equal(out, edit(source)), "same input and seed: same image"
    assert np.abs(out - edit(textured(seed=2))).max() > 20, "the input image matters"
    assert np.abs(out - np.asarray(Image.open(io.BytesIO(source)), dtype=np.int16)).mean() > 5, "and it was changed"


def test_edit_of_another_aspect_keeps_it(sdk: openai.OpenAI) -> None:
    r = sdk.images.edit(model="tiny", image=("wide.png", textured(120, 60), "image/png"), prompt="x", extra_body=FAST)
    width, height = decode_b64(r.data[0].b64_json).size
    assert width / height == pytest.approx(2, rel=0.15) and width * height == pytest.approx(NATIVE * NATIVE, rel=0.1)


def test_inpainting_changes_only_the_masked_area(sdk: openai.OpenAI) -> None:
    source = textured(seed=4)
    box = (16, 16, 48, 40)  # transparent in the mask: repaint here
    r = sdk.images.edit(
        model="tiny",
        image=("in.png", source, "image/png"),
        mask=("mask.png", make_mask(NATIVE, NATIVE, box), "image/png"),
        prompt="a window",
        extra_body={"seed": 9, "num_inference_steps": 3},
    )
    out = pixels(r.data[0].b64_json)
    before = np.asarray(Image.open(io.BytesIO(source)).convert("RGB"), dtype=np.int16)
    inside = np.zeros(out.shape[:2], dtype=bool)
    inside[box[1] : box[3], box[0] : box[2]] = True
    assert np.array_equal(out[~inside], before[~inside]), "pixels outside the mask are the input's"
    assert np.abs(out[inside] - before[inside]).mean() > 20, "the masked area was repainted"


def test_several_input_images_are_refused(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.images.edit(model="tiny", image=[("a.png", textured(), "image/png"), ("b.png", textured(), "image/png")], prompt="x")
    assert err.value.body["param"] == "image" and err.value.body["code"] == "too_many_images"


@pytest.mark.parametrize("idat", list(BROKEN_PNGS.values()), ids=list(BROKEN_PNGS))
def test_undecodable_inputs_are_the_clients_400(sdk: openai.OpenAI, idat: bytes) -> None:
    """Headers that read fine over pixel data that does not decode: 400 naming the field, not 500."""
    broken, good = png_with_idat(idat, NATIVE, NATIVE, "RGBA"), ("in.png", textured(), "image/png")
    for kwargs, param in [
        ({"image": ("in.png", broken, "image/png")}, "image"),
        ({"image": good, "mask": ("mask.png", broken, "image/png")}, "mask"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            sdk.images.edit(model="tiny", prompt="x", extra_body=FAST, **kwargs)
        assert (err.value.body["code"], err.value.body["param"]) == ("invalid_image", param)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_variations_are_image_to_image_without_a_prompt(sdk: openai.OpenAI) -> None:
    source = textured(seed=6)
    r = sdk.images.create_variation(model="tiny", image=("in.png", source, "image/png"), n=2, extra_body={"seed": 11})
    a, b = (pixels(d.b64_json) for d in r.data)
    assert a.shape == b.shape == (NATIVE, NATIVE, 3)
    assert np.abs(a - b).max() > 20


# -- batching, queueing, disconnects ------------------------------------------------


def _burst(server: Running, requests: list[dict[str, Any]]) -> list[Any]:
    client = server.sdk(MASTER, timeout=120)
    barrier = threading.Barrier(len(requests))

    def one(kwargs: dict[str, Any]) -> Any:
        barrier.wait()
        try:
            return client.images.generate(model="tiny", **kwargs)
        except openai.APIStatusError as exc:
            return exc

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_concurrent_requests_are_batched_and_match_unbatched_runs(make_server, tiny_model: Path) -> None:
    batched = make_server(local_config(tiny_model, max_batch_size=8, max_batch_wait_ms=400))
    alone = make_server(local_config(tiny_model, max_batch_size=1))
    requests = [
        {"prompt": f"prompt {i}", "n": 1 + i % 2, "extra_body": {"seed": 100 + 10 * i, "num_inference_steps": 3}}
        for i in range(5)
    ]  # 7 images
    for server in (batched, alone):  # load the model first
        server.sdk(MASTER).images.generate(model="tiny", prompt="warm up", extra_body=FAST)
    before = stats(batched)["batches"]
    together = _burst(batched, requests)
    after = stats(batched)
    assert after["batches"] - before == 1, "five concurrent requests, one pipeline call"
    assert after["largest_batch"] == 7
    for request, response in zip(requests, together, strict=True):
        single = alone.sdk(MASTER).images.generate(model="tiny", **request)
        assert len(response.data) == request["n"]
        for got, want in zip(response.data, single.data, strict=True):
            assert np.abs(pixels(got.b64_json) - pixels(want.b64_json)).max() <= 2
    assert stats(alone)["largest_batch"] == 1


def test_only_compatible_requests_share_a_call(make_server, tiny_model: Path) -> None:
    server = make_server(local_config(tiny_model, max_batch_size=8, max_batch_wait_ms=400))
    server.sdk(MASTER).images.generate(model="tiny", prompt="warm up", extra_body=FAST)
    before = stats(server)["batches"]
    requests = [{"prompt": "a", "extra_body": {"seed": i, "num_inference_steps": 2 + i % 2}} for i in range(4)]
    assert all(not isinstance(r, Exception) for r in _burst(server, requests))
    assert stats(server)["batches"] - before == 2, "two step counts, two pipeline calls"


def test_a_full_queue_gives_429_with_retry_after(make_server, tiny_model: Path) -> None:
    server = make_server(local_config(tiny_model, max_batch_size=1, max_queue=1))
    server.sdk(MASTER).images.generate(model="tiny", prompt="warm up", extra_body=FAST)
    results = _burst(server, [{"prompt": "slow", "extra_body": {"num_inference_steps": 60}}] * 6)
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    served = [r for r in results if not isinstance(r, Exception)]
    assert refused and served and len(refused) + len(served) == 6
    assert refused[0].body["code"] == "queue_full"
    assert int(refused[0].response.headers["retry-after"]) >= 1
    assert stats(server)["rejected"] == len(refused)


def test_a_client_that_hangs_up_has_its_queued_work_dropped(make_server, tiny_model: Path) -> None:
    server = make_server(local_config(tiny_model, max_batch_size=1))
    server.sdk(MASTER).images.generate(model="tiny", prompt="warm up", extra_body=FAST)
    before = stats(server)
    slow = ThreadPoolExecutor(1).submit(
        server.sdk(MASTER, timeout=120).images.generate, model="tiny", prompt="long", extra_body={"num_inference_steps": 150}
    )
    deadline = time.monotonic() + 30
    while stats(server)["requests"] == before["requests"] and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(openai.APITimeoutError):  # queued behind the slow one; gives up
        server.sdk(MASTER, timeout=0.5).images.generate(model="tiny", prompt="impatient", extra_body=FAST)
    assert len(slow.result(timeout=120).data) == 1
    after = stats(server)
    assert after["dropped"] - before["dropped"] == 1
    assert after["batches"] - before["batches"] == 1, "the abandoned request never ran"


# -- loading, memory, offline -------------------------------------------------------


def test_models_are_evicted_least_recently_used_under_the_memory_budget(make_server, tiny_model: Path, tmp_path: Path) -> None:
    other = copy_pipeline(tiny_model, tmp_path / "tiny-copy")
    size = sum(p.stat().st_size for p in tiny_model.rglob("*.safetensors"))
    config = local_config(tiny_model, memory_budget_gb=1.5 * size / 1024**3)
    config["models"]["copy"] = [{"provider": "local", "model": str(other)}]
    server = make_server(config)
    client = server.sdk(MASTER)
    for model in ("tiny", "copy", "tiny", "tiny"):
        client.images.generate(model=model, prompt="x", extra_body=FAST)
    provider = provider_state(server)
    assert (provider["loads"], provider["evictions"]) == (3, 2)
    assert provider["models"][str(tiny_model)]["loaded"] and not provider["models"][str(other)]["loaded"]


def test_preload_loads_at_start_with_a_progress_bar(make_server, tiny_model: Path, capfd: pytest.CaptureFixture) -> None:
    server = make_server(local_config(tiny_model, preload=True))
    deadline = time.monotonic() + 60
    with server.http() as http:
        while http.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    provider = provider_state(server)
    assert provider["loads"] == 1 and provider["models"][str(tiny_model)]["loaded"]
    assert "Loading pipeline components" in capfd.readouterr().err


def test_a_hub_model_is_served_from_the_cache_offline(make_server, tiny_model: Path, tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--acme--tiny-sd" / "snapshots" / "0123abcd"
    copy_pipeline(tiny_model, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    server = make_server(local_config("acme/tiny-sd", offline=True, cache_dir=str(tmp_path / "hub")))
    r = server.sdk(MASTER).images.generate(model="tiny", prompt="x", extra_body=FAST)
    assert decode_b64(r.data[0].b64_json).size == (NATIVE, NATIVE)


def _check_config(tmp_path: Path, config: dict[str, Any], **env: str) -> subprocess.CompletedProcess:
    path = tmp_path / "imagegate.yaml"
    path.write_text(yaml.safe_dump(config))
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEGATE_", "HF_"))}
    return subprocess.run(
        [sys.executable, "-m", "imagegate", "check-config", str(path)],
        env={**environ, "HF_HOME": str(tmp_path / "hf"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_offline_mode_names_the_missing_model(tmp_path: Path) -> None:
    r = _check_config(tmp_path, local_config("acme/never-downloaded-sdxl"), HF_HUB_OFFLINE="1")
    assert r.returncode == 2
    assert "'acme/never-downloaded-sdxl' is not in the Hugging Face cache" in r.stderr and "HF_HUB_OFFLINE" in r.stderr


def test_a_missing_model_directory_is_a_config_error(tmp_path: Path) -> None:
    r = _check_config(tmp_path, local_config(tmp_path / "nowhere"))
    assert r.returncode == 2 and f"local model '{tmp_path / 'nowhere'}': no such directory" in r.stderr


def test_family_rules_refuse_what_the_family_cannot_do(make_server, tiny_model: Path) -> None:
    # The rules come from the family (here forced to Kontext's): no mask, no negative prompt.
    config = local_config(tiny_model, models={str(tiny_model): {"family": "flux-kontext"}})
    client = make_server(config).sdk(MASTER)
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(
            model="tiny",
            image=("in.png", textured(), "image/png"),
            mask=("mask.png", make_mask(NATIVE, NATIVE, (0, 0, 8, 8)), "image/png"),
            prompt="x",
        )
    assert err.value.body["param"] == "mask" and err.value.body["code"] == "unsupported_mask"
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="tiny", prompt="x", extra_body={"negative_prompt": "blur"})
    assert err.value.body["param"] == "negative_prompt"


def test_an_sdxl_pipeline_generates_batches_and_inpaints(make_server, tmp_path: Path) -> None:
    model = build_tiny_sdxl_pipeline(tmp_path / "tiny-sdxl")
    server = make_server(local_config(model, max_batch_size=8, max_batch_wait_ms=400))
    assert provider_state(server)["models"] == {}  # nothing loaded before the first request
    requests = [
        {"prompt": f"p{i}", "extra_body": {"seed": i, "num_inference_steps": 2, "negative_prompt": "x"}} for i in range(3)
    ]
    together = _burst(server, requests)
    assert stats(server)["largest_batch"] == 3
    assert stats(server)["family"] == "sdxl"
    alone = server.sdk(MASTER).images.generate(model="tiny", **requests[1])
    assert np.abs(pixels(together[1].data[0].b64_json) - pixels(alone.data[0].b64_json)).max() <= 2
    source = textured(seed=8)
    box = (0, 0, 32, 24)
    r = server.sdk(MASTER).images.edit(
        model="tiny",
        image=("in.png", source, "image/png"),
        mask=("mask.png", make_mask(NATIVE, NATIVE, box), "image/png"),
        prompt="x",
        extra_body={"seed": 2, "num_inference_steps": 2},
    )
    out, before = pixels(r.data[0].b64_json), np.asarray(Image.open(io.BytesIO(source)).convert("RGB"), dtype=np.int16)
    inside = np.zeros(out.shape[:2], dtype=bool)
    inside[box[1] : box[3], box[0] : box[2]] = True
    assert np.array_equal(out[~inside], before[~inside]) and np.abs(out[inside] - before[inside]).mean() > 20
