"""Where local models live: device and dtype choice, loading (with the
library's progress bars in the terminal), and least-recently-used eviction
under a memory budget.

Loading and eviction run on the provider's single worker thread (one device,
one pipeline at a time); a lock only keeps ``/admin/providers`` snapshots
consistent while the worker changes the table.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imagegate.errors import ImagegateError
from imagegate.providers.local.families import ModelInfo, offline
from imagegate.providers.local.options import DiffusersOptions

log = logging.getLogger("imagegate.providers.diffusers")

GB = 1024**3
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt", ".gguf")


class ModelUnavailable(ImagegateError):
    """A local model that cannot be loaded (missing files, out of memory)."""

    status = 503
    type = "server_error"


def pick_device(option: str) -> str:
    if option != "auto":
        return option
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}  # options.dtype's values


def pick_dtype(option: str, device: str, family: str) -> torch.dtype:
    if option != "auto":
        return DTYPES[option]
    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if family.startswith("flux") else torch.float16


def module_bytes(pipe: Any) -> int:
    """Bytes of every parameter and buffer of the pipeline's torch modules."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in (*component.parameters(), *component.buffers()))
    return total


def files_bytes(directory: Path | None) -> int:
    """Size of the weight files on disk: the estimate before loading."""
    if directory is None:
        return 0
    return sum(p.stat().st_size for p in directory.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file())


def _dtype_keyword() -> str:
    """diffusers 0.42 renamed from_pretrained's ``torch_dtype`` to ``dtype``."""
    from importlib.metadata import version

    from packaging.version import Version

    return "dtype" if Version(version("diffusers")) >= Version("0.42") else "torch_dtype"


@dataclass
class LoadedModel:
    info: ModelInfo
    pipe: Any  # the base pipeline
    nbytes: int
    device: str
    dtype: torch.dtype
    loaded_at: float
    last_used: float
    tasks: dict[str, Any] = field(default_factory=dict)  # task -> pipeline sharing pipe's modules


class ModelCache:
    """Loaded pipelines by model name, least recently used first."""

    def __init__(self, options: DiffusersOptions) -> None:
        self.options = options
        self.budget = int(options.memory_budget_gb * GB) if options.memory_budget_gb else None
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.evictions = 0

    @property
    def used(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def loaded(self) -> dict[str, LoadedModel]:
        with self._lock:
            return dict(self._models)

    def get(self, info: ModelInfo) -> LoadedModel:
        model = self._models.get(info.name)
        if model is None:
            model = self._load(info)
        with self._lock:
            self._models.move_to_end(info.name)
        model.last_used = time.time()
        return model

    def _make_room(self, needed: int, keep: str | None = None) -> None:
        if self.budget is None:
            return
        for name in list(self._models):
            if self.used + needed <= self.budget:
                return
            if name != keep:
                self.evict(name)

    def evict(self, name: str) -> None:
        with self._lock:
            model = self._models.pop(name)
        log.info("evicting local model %s (%.2f GB) to stay within the memory budget", name, model.nbytes / GB)
        model.tasks.clear()
        del model
        self.evictions += 1
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self, info: ModelInfo) -> LoadedModel:
        from diffusers import DiffusionPipeline

        device = pick_device(self.options.device)
        dtype = pick_dtype(self.options.dtype, device, info.family.name)
        self._make_room(files_bytes(info.local_dir))
        dtype_name = str(dtype).removeprefix("torch.")
        log.info("loading local model %s (%s) on %s as %s", info.name, info.family.name, device, dtype_name)
        started = time.monotonic()
        kwargs: dict[str, Any] = {_dtype_keyword(): dtype, "local_files_only": offline(self.options)}
        if self.options.cache_dir:
            kwargs["cache_dir"] = self.options.cache_dir
        if info.options.variant:
            kwargs["variant"] = info.options.variant
        try:
            pipe = DiffusionPipeline.from_pretrained(info.source, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"Local model '{info.name}' could not be loaded: {exc}", code="model_unavailable") from exc
        self._place(pipe, device)
        pipe.set_progress_bar_config(disable=True)  # loading shows bars; each request does not
        nbytes = module_bytes(pipe)
        if self.budget is not None and nbytes > self.budget:
            del pipe
            gc.collect()
            raise ModelUnavailable(
                f"Local model '{info.name}' needs {nbytes / GB:.2f} GB, more than the provider's "
                f"memory_budget_gb ({self.budget / GB:.2f} GB).",
                code="model_too_large",
            )
        self._make_room(nbytes, keep=None)
        now = time.time()
        model = LoadedModel(info, pipe, nbytes, device, dtype, now, now)
        with self._lock:
            self._models[info.name] = model
        self.loads += 1
        log.info("loaded local model %s: %.2f GB in %.1f s", info.name, nbytes / GB, time.monotonic() - started)
        return model

    def _place(self, pipe: Any, device: str) -> None:
        offload = self.options.offload
        if offload != "none" and device.startswith("cuda"):
            gpu = int(device.partition(":")[2] or 0)
            if offload == "model":
                pipe.enable_model_cpu_offload(gpu_id=gpu)
            else:
                pipe.enable_sequential_cpu_offload(gpu_id=gpu)
        else:
            pipe.to(device)

    def clear(self) -> None:
        """Drop every model (shutdown); not counted as evictions."""
        with self._lock:
            self._models.clear()
        gc.collect()
