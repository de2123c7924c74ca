"""Config keys of the ``diffusers`` provider and of each model it serves."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from imagegate.providers.base import ProviderOptions

FamilyName = Literal["sd", "sd-turbo", "sdxl", "sdxl-turbo", "sd3", "flux-schnell", "flux-dev", "flux-kontext"]


class LocalModelOptions(ProviderOptions):
    """Per-model settings, under ``models:`` keyed by the deployment's ``model``."""

    family: FamilyName | None = None  # default: detected from model_index.json and the name
    preload: bool | None = None  # default: the provider's preload
    steps: int | None = Field(None, ge=1, le=500)  # default num_inference_steps
    guidance_scale: float | None = Field(None, ge=0, le=100)
    strength: float | None = Field(None, gt=0, le=1)  # image-to-image strength for edits and variations
    variant: str | None = None  # weight file variant, e.g. "fp16"


class DiffusersOptions(ProviderOptions):
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: float32 on CPU, half on GPUs
    offload: Literal["none", "model", "sequential"] = "none"  # accelerate CPU offload (GPUs only)
    offline: bool | None = None  # None: follow HF_HUB_OFFLINE
    cache_dir: str | None = None  # Hugging Face cache; default: HF_HOME's
    preload: bool = False  # load every model this provider serves at start, not on first use
    memory_budget_gb: float | None = Field(None, gt=0)  # LRU-evict loaded models above this; None: never evict
    max_batch_size: int = Field(8, ge=1, le=256)  # images per pipeline call
    max_batch_wait_ms: float = Field(10.0, ge=0, le=60_000)  # how long a request waits for companions
    max_queue: int = Field(64, ge=0, le=100_000)  # requests waiting per model; more get 429
    models: dict[str, LocalModelOptions] = Field(default_factory=dict)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        base, _, index = value.partition(":")
        numbered = index.isascii() and index.isdigit()  # str.isdigit alone takes "²"
        if base not in ("auto", "cpu", "cuda", "mps") or (index and (base != "cuda" or not numbered)):
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps, not {value!r}")
        return value

    def model(self, name: str) -> LocalModelOptions:
        return self.models.get(name) or LocalModelOptions()

    def preloads(self, name: str) -> bool:
        own = self.model(name).preload
        return self.preload if own is None else own
