"""What a local model is, read from its files without loading it: the
pipeline family (from ``model_index.json`` and the name), the native
resolution (the denoiser's ``sample_size`` times the VAE's scale factor),
per-family defaults, and the catalog rules requests are checked against.

Nothing here imports torch; ``imagegate check-config`` runs it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegate.contract.catalog import (
    DIFFUSION_FIELDS,
    EDITS,
    GENERATIONS,
    MB,
    VARIATIONS,
    FreeSizeRule,
    InputRule,
    ModelSpec,
)
from imagegate.errors import ConfigError
from imagegate.providers.local.options import DiffusersOptions, LocalModelOptions

_INPUT_FORMATS = frozenset({"png", "webp", "jpeg"})
QUALITIES = ("auto", "low", "medium", "high", "standard", "hd")
_ACCEPTS = frozenset({"quality", "background", "output_format", "output_compression", "stream", "partial_images"})


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    steps: int  # default num_inference_steps
    guidance: float  # default guidance_scale
    strength: float  # default image-to-image strength
    native: int  # native edge when the files do not say
    max_aspect: float  # widest aspect ratio the family renders well
    negative_prompt: bool = True
    inpainting: bool = True  # edits with a mask
    image_to_image: bool = True  # edits without a mask, variations
    edit_pipeline: bool = False  # the base pipeline itself takes the input image (Kontext)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sd", steps=30, guidance=7.5, strength=0.75, native=512, max_aspect=2.0),
        Family("sd-turbo", steps=1, guidance=0.0, strength=0.5, native=512, max_aspect=2.0),
        Family("sdxl", steps=30, guidance=5.0, strength=0.6, native=1024, max_aspect=2.5),
        Family("sdxl-turbo", steps=1, guidance=0.0, strength=0.5, native=512, max_aspect=2.5),
        Family("sd3", steps=28, guidance=7.0, strength=0.6, native=1024, max_aspect=2.5),
        Family("flux-schnell", steps=4, guidance=0.0, strength=0.6, native=1024, max_aspect=3.0, negative_prompt=False),
        Family("flux-dev", steps=28, guidance=3.5, strength=0.6, native=1024, max_aspect=3.0, negative_prompt=False),
        Family(
            "flux-kontext",
            steps=28,
            guidance=2.5,
            strength=1.0,
            native=1024,
            max_aspect=3.0,
            negative_prompt=False,
            inpainting=False,
            edit_pipeline=True,
        ),
    )
}

# model_index.json "_class_name" -> family (the name refines turbo / schnell).
_BY_CLASS = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionInpaintPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux-dev",
    "FluxKontextPipeline": "flux-kontext",
}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A configured local model, as far as its files tell before loading."""

    name: str  # as configured: a directory or a hub id
    source: str  # what to load: the directory, or the hub id
    local_dir: Path | None  # where its files are, when they are on disk
    family: Family
    native: int  # native square edge in pixels
    multiple: int  # render sizes are multiples of this
    options: LocalModelOptions

    @property
    def steps(self) -> int:
        return self.options.steps or self.family.steps

    @property
    def guidance(self) -> float:
        return self.options.guidance_scale if self.options.guidance_scale is not None else self.family.guidance

    @property
    def strength(self) -> float:
        return self.options.strength or self.family.strength


def offline(options: DiffusersOptions) -> bool:
    if options.offline is not None:
        return options.offline
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(name))


def _locate(name: str, options: DiffusersOptions) -> Path | None:
    """The model's directory on disk; None for a hub id not downloaded yet."""
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ConfigError(f"local model {name!r}: no such directory")
        if not (path / "model_index.json").is_file():
            raise ConfigError(f"local model {name!r}: no model_index.json there (not a diffusers pipeline directory)")
        return path
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "model_index.json", cache_dir=options.cache_dir)
    if isinstance(found, str):
        return Path(found).parent
    if offline(options):
        raise ConfigError(
            f"local model {name!r} is not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE); "
            f"download it first (hf download {name}) or set model: to a local directory"
        )
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# Name fragments -> family, for a hub model not downloaded yet (first match wins).
_BY_NAME = (
    ("kontext", "flux-kontext"),
    ("schnell", "flux-schnell"),
    ("flux", "flux-dev"),
    ("sdxlturbo", "sdxl-turbo"),
    ("sdturbo", "sd-turbo"),
    ("sdxl", "sdxl"),
    ("stablediffusionxl", "sdxl"),
    ("stablediffusion3", "sd3"),
    ("sd3", "sd3"),
    ("stablediffusion", "sd"),
)


def _family(name: str, class_name: str | None, chosen: str | None) -> Family:
    if chosen:
        return FAMILIES[chosen]
    if class_name is None:  # not downloaded yet: the name is all there is
        squashed = name.lower().replace("-", "").replace("_", "").replace(".", "")
        guess = next((family for fragment, family in _BY_NAME if fragment in squashed), None)
        if guess is None:
            raise ConfigError(f"local model {name!r}: cannot tell its family before it is downloaded; set family:")
        return FAMILIES[guess]
    family = _BY_CLASS.get(class_name)
    if family is None:
        known = ", ".join(sorted(set(_BY_CLASS)))
        raise ConfigError(f"local model {name!r} is a {class_name}, which the diffusers provider does not serve (known: {known})")
    return _refine(FAMILIES[family], name)


def _refine(family: Family, name: str) -> Family:
    lowered = name.lower()
    if "turbo" in lowered and family.name in ("sd", "sdxl"):
        return FAMILIES[f"{family.name}-turbo"]
    if "schnell" in lowered and family.name == "flux-dev":
        return FAMILIES["flux-schnell"]
    return family


def _native(local_dir: Path | None, family: Family) -> int:
    if local_dir is None:
        return family.native
    denoiser = _read_json(local_dir / "unet" / "config.json") or _read_json(local_dir / "transformer" / "config.json")
    vae = _read_json(local_dir / "vae" / "config.json")
    sample = denoiser.get("sample_size")
    levels = len(vae.get("block_out_channels") or ()) or 4
    if isinstance(sample, list):
        sample = sample[0]
    if not isinstance(sample, int) or sample <= 0:
        return family.native
    return sample * (1 << (levels - 1))


def describe_model(name: str, options: DiffusersOptions) -> ModelInfo:
    """Read what a configured model is; ConfigError names the model when it cannot be served."""
    own = options.model(name)
    local_dir = _locate(name, options)
    class_name = _read_json(local_dir / "model_index.json").get("_class_name") if local_dir else None
    family = _family(name, class_name, own.family)
    native = _native(local_dir, family)
    source = str(local_dir) if local_dir is not None and _looks_like_path(name) else name
    return ModelInfo(name, source, local_dir, family, native, max(8, native // 16), own)


def rules(info: ModelInfo) -> ModelSpec:
    """The catalog rules for a local model: every endpoint its family can
    serve, sizes up to twice the native edge within the family's aspect range
    (rendered natively, then resized), the extensions, no transparency."""
    family = info.family
    endpoints = {GENERATIONS}
    if family.image_to_image or family.edit_pipeline:
        endpoints |= {EDITS, VARIATIONS}
    extensions = {k: v for k, v in DIFFUSION_FIELDS.items() if family.negative_prompt or k != "negative_prompt"}
    one_image = InputRule(_INPUT_FORMATS, max_images=1, max_bytes=50 * MB)
    return ModelSpec(
        name=f"diffusers:{info.name}",
        endpoints=frozenset(endpoints),
        sizes=("auto",),
        default_size="auto",
        qualities=QUALITIES,
        default_quality="auto",
        prompt_max=32000,
        accepts=_ACCEPTS,
        extra_fields=extensions,
        free_size=FreeSizeRule(
            multiple_of=1,
            max_edge=2 * info.native,
            max_pixels=4 * info.native * info.native,
            min_pixels=(info.native // 4) ** 2,
            max_aspect=family.max_aspect,
        ),
        edit_input=one_image,
        variation_input=one_image,
        mask_max_bytes=50 * MB,
        reports_output_meta=True,
        transparency=False,
        masks=family.inpainting,
    )
