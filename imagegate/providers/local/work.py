"""One request as pipeline inputs (:class:`Work`), and one batch of them as
one pipeline call whose images are split back to each request.

Every image gets its own ``torch.Generator`` seeded on the CPU, so an image's
starting noise depends only on its seed: the same seed gives the same image
whether it ran alone or in a batch, on any device.
"""

from __future__ import annotations

import inspect
import io
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageOps

from imagegate.contract.catalog import GENERATIONS, parse_size
from imagegate.contract.requests import ImageRequest
from imagegate.errors import InvalidRequestError
from imagegate.imaging.probe import decode_input
from imagegate.providers.local.batcher import Batch
from imagegate.providers.local.families import ModelInfo
from imagegate.providers.local.runtime import LoadedModel, ModelUnavailable
from imagegate.providers.local.sizing import render_size

# Receives (partial_image_index, PNG) on the worker thread while a request's first image is made.
PartialSink = Callable[[int, bytes], None]

TEXT_TO_IMAGE, IMAGE_TO_IMAGE, INPAINT = "text-to-image", "image-to-image", "inpaint"
_STEP_FACTOR = {"low": 0.5, "high": 1.5, "hd": 1.5}  # quality -> share of the default steps


@dataclass(frozen=True, slots=True)
class Work:
    task: str
    prompt: str
    negative_prompt: str | None
    seeds: tuple[int, ...]  # one per image
    width: int
    height: int
    steps: int
    guidance: float
    strength: float
    image: Image.Image | None = None  # RGB at the render size
    edit_area: Image.Image | None = None  # "L" at the render size, 255 = repaint
    partial_images: int = 0  # previews of the first image, streamed to sink
    sink: PartialSink | None = None

    def preview_steps(self) -> dict[int, int]:
        """Step index -> partial_image_index, evenly spread before the last step."""
        steps = self.steps if self.task == TEXT_TO_IMAGE else max(1, int(self.steps * self.strength))
        if not self.sink or not self.partial_images or steps < 2:
            return {}
        at = sorted({min(steps - 2, (p + 1) * steps // (self.partial_images + 1) - 1) for p in range(self.partial_images)})
        return {step: index for index, step in enumerate(s for s in at if s >= 0)}

    @property
    def key(self) -> tuple[object, ...]:
        """Requests with equal keys can share one pipeline call."""
        return (self.task, self.width, self.height, self.steps, self.guidance, self.strength, self.negative_prompt is None)


def _seeds(request: ImageRequest) -> tuple[int, ...]:
    if request.seed is not None:  # image i gets seed + i: reproducible, and distinct per image
        return tuple((request.seed + i) % 2**32 for i in range(request.n))
    return tuple(secrets.randbits(32) for _ in range(request.n))


def _steps(request: ImageRequest, info: ModelInfo, task: str, strength: float) -> int:
    steps = request.extra_value("num_inference_steps", int)
    if steps is None:
        steps = max(1, round(info.steps * _STEP_FACTOR.get(request.quality, 1.0)))
    if task != TEXT_TO_IMAGE and strength < 1 and int(steps * strength) < 1:
        steps = math.ceil(1 / strength)  # image-to-image runs steps * strength of them: at least one
    return steps


def prepare(request: ImageRequest, info: ModelInfo, max_pixels: int) -> Work:
    """Decode and size the inputs (CPU work: call it off the event loop)."""
    first = request.images[0] if request.images else None
    asked = parse_size(request.params.size) if request.params.size else None
    width, height = render_size(asked, (first.info.width, first.info.height) if first else None, info.native, info.multiple)
    task = TEXT_TO_IMAGE if request.endpoint == GENERATIONS else INPAINT if request.mask is not None else IMAGE_TO_IMAGE
    strength = 1.0 if task == INPAINT else info.strength
    image = edit_area = None
    if first is not None:
        image = ImageOps.fit(decode_input(first.data, first.field, max_pixels=max_pixels).convert("RGB"), (width, height))
    if request.mask is not None:
        # OpenAI's convention: fully transparent mask pixels mark the area to edit.
        alpha = decode_input(request.mask.data, "mask", max_pixels=max_pixels).convert("RGBA").getchannel("A")
        edit_area = ImageOps.fit(alpha.point(lambda a: 255 if a == 0 else 0), (width, height), Image.Resampling.NEAREST)
    guidance = request.extra_value("guidance_scale", float)
    if guidance is None:
        guidance = info.guidance
    return Work(
        task=task,
        prompt=request.prompt,
        negative_prompt=request.extra_value("negative_prompt", str),
        seeds=_seeds(request),
        width=width,
        height=height,
        steps=_steps(request, info, task, strength),
        guidance=float(guidance),
        strength=strength,
        image=image,
        edit_area=edit_area,
    )


def _task_pipeline(model: LoadedModel, task: str) -> Any:
    if task == TEXT_TO_IMAGE or (model.info.family.edit_pipeline and task == IMAGE_TO_IMAGE):
        return model.pipe
    pipe = model.tasks.get(task)
    if pipe is None:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        auto = AutoPipelineForInpainting if task == INPAINT else AutoPipelineForImage2Image
        try:
            pipe = auto.from_pipe(model.pipe)  # shares the loaded modules: no extra memory
        except ValueError as exc:
            param = "mask" if task == INPAINT else "image"
            raise InvalidRequestError(f"Model '{model.info.name}' cannot do {task}: {exc}", param=param) from exc
        pipe.set_progress_bar_config(disable=True)
        model.tasks[task] = pipe
    return pipe


def _encode(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)  # the gateway re-encodes to what the client asked for
    return out.getvalue()


def _decode_preview(pipe: Any, latents: Any, work: Work) -> bytes:
    """A latent preview: the current latents through the VAE, as PNG."""
    if hasattr(pipe, "_unpack_latents"):  # FLUX packs latents into patches
        latents = pipe._unpack_latents(latents, work.height, work.width, pipe.vae_scale_factor)
    config = pipe.vae.config
    latents = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0)
    pixels = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
    image = pipe.image_processor.postprocess(pixels, output_type="pil")[0]
    if work.edit_area is not None and work.image is not None:
        image = Image.composite(image.convert("RGB"), work.image, work.edit_area)
    return _encode(image)


def _previewers(pipe: Any, works: list[Work]) -> list[Callable[[int, Any], None]]:
    """Per request that streams partial images: a hook decoding its first image's row."""
    hooks: list[Callable[[int, Any], None]] = []
    row = 0
    for work in works:
        steps = work.preview_steps()
        if steps and work.sink is not None:

            def hook(
                step: int,
                latents: Any,
                work: Work = work,
                row: int = row,
                steps: dict[int, int] = steps,
                sink: PartialSink = work.sink,
            ) -> None:
                if step in steps:
                    sink(steps[step], _decode_preview(pipe, latents[row : row + 1], work))

            hooks.append(hook)
        row += len(work.seeds)
    return hooks


def run_batch(model: LoadedModel, batch: Batch) -> list[list[bytes] | Exception]:
    """One pipeline call for every job of ``batch`` (same key); PNG bytes per job."""
    works: list[Work] = batch.payloads
    head = works[0]
    pipe = _task_pipeline(model, head.task)

    def per_image(value: Callable[[Work], Any]) -> list[Any]:  # the batch is every job's images in order
        return [value(w) for w in works for _ in w.seeds]

    accepted = inspect.signature(pipe.__call__).parameters
    kwargs: dict[str, Any] = {
        "prompt": per_image(lambda w: w.prompt),
        "num_inference_steps": head.steps,
        "guidance_scale": head.guidance,
        "generator": [torch.Generator("cpu").manual_seed(s) for w in works for s in w.seeds],
        "height": head.height,
        "width": head.width,
        "output_type": "pil",
    }
    if head.negative_prompt is not None:
        kwargs["negative_prompt"] = per_image(lambda w: w.negative_prompt or "")
    if head.task != TEXT_TO_IMAGE:
        kwargs["image"] = per_image(lambda w: w.image)
        kwargs["strength"] = head.strength
    if head.task == INPAINT:
        kwargs["mask_image"] = per_image(lambda w: w.edit_area)
    if "callback_on_step_end" in accepted:
        previews = _previewers(pipe, works)

        def on_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if batch.abandoned():  # every caller hung up: stop at this step
                pipeline._interrupt = True
            elif previews:
                for preview in previews:
                    preview(step, tensors["latents"])
            return tensors

        kwargs["callback_on_step_end"] = on_step
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # per-call notices (e.g. SDXL's VAE upcast) would flood the log
    try:
        with torch.inference_mode():
            output = pipe(**kwargs)
    except torch.OutOfMemoryError as exc:
        raise ModelUnavailable(f"Local model '{model.info.name}' ran out of device memory.", code="out_of_memory") from exc
    finally:
        diffusers_logging.set_verbosity(verbosity)
    images = list(output.images)
    flagged = list(getattr(output, "nsfw_content_detected", None) or [False] * len(images))
    results: list[list[bytes] | Exception] = []
    for w in works:
        mine, images = images[: len(w.seeds)], images[len(w.seeds) :]
        blocked, flagged = any(flagged[: len(w.seeds)]), flagged[len(w.seeds) :]
        if blocked:
            results.append(
                InvalidRequestError("The model's safety checker flagged the generated image.", code="content_policy_violation")
            )
            continue
        if w.edit_area is not None and w.image is not None:  # keep every pixel outside the edit area
            mine = [Image.composite(img.convert("RGB"), w.image, w.edit_area) for img in mine]
        results.append([_encode(img) for img in mine])
    return results
