"""The ``diffusers`` provider: OpenAI requests to local diffusion pipelines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import ClassVar

from imagegate.contract.catalog import ModelSpec
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import (
    CompletedImage,
    Deployment,
    GeneratedImage,
    ImageMeta,
    PartialImage,
    ProviderResult,
)
from imagegate.errors import ConfigError, ImagegateError, RateLimitError
from imagegate.providers.base import Provider, ProviderContext
from imagegate.providers.local.batcher import Batch, Batcher, QueueFull
from imagegate.providers.local.families import ModelInfo, describe_model, rules
from imagegate.providers.local.options import DiffusersOptions
from imagegate.providers.local.runtime import GB, ModelCache, ModelUnavailable, pick_device
from imagegate.providers.local.work import PartialSink, prepare, run_batch

log = logging.getLogger("imagegate.providers.diffusers")


class DiffusersProvider(Provider):
    type_name: ClassVar[str] = "diffusers"
    options_model = DiffusersOptions
    options: DiffusersOptions

    @classmethod
    def rules_for(cls, options: DiffusersOptions, model: str) -> ModelSpec:  # type: ignore[override]
        return rules(describe_model(model, options))

    def __init__(self, name: str, options: DiffusersOptions, context: ProviderContext) -> None:
        super().__init__(name, options, context)
        self.cache = ModelCache(options)
        # One device, one pipeline call at a time: loads and batches share this thread.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"imagegate-{name}")
        self._infos: dict[str, ModelInfo] = {}
        self._batchers: dict[str, Batcher] = {}
        self._preloading: asyncio.Task[None] | None = None

    # -- models ------------------------------------------------------------

    def _info(self, model: str) -> ModelInfo:
        info = self._infos.get(model)
        if info is None:
            try:
                info = self._infos[model] = describe_model(model, self.options)
            except ConfigError as exc:  # checked at start; the files have gone since
                raise ModelUnavailable(str(exc), code="model_unavailable") from exc
        return info

    def _batcher(self, info: ModelInfo) -> Batcher:
        batcher = self._batchers.get(info.name)
        if batcher is None:

            async def run(batch: Batch) -> list[list[bytes] | Exception]:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._thread, lambda: run_batch(self.cache.get(info), batch))

            batcher = self._batchers[info.name] = Batcher(
                run,
                max_batch_size=self.options.max_batch_size,
                max_wait=self.options.max_batch_wait_ms / 1000,
                max_queue=self.options.max_queue,
            )
        return batcher

    async def start(self, models: Sequence[str]) -> None:
        wanted = [self._info(m) for m in dict.fromkeys(models) if self.options.preloads(m)]
        if wanted:
            self._preloading = asyncio.create_task(self._preload(wanted), name=f"imagegate-preload-{self.name}")

    async def _preload(self, infos: list[ModelInfo]) -> None:
        loop = asyncio.get_running_loop()
        for info in infos:
            try:
                await loop.run_in_executor(self._thread, self.cache.get, info)
            except ImagegateError as exc:
                log.error("preloading %s failed: %s", info.name, exc.message)

    # -- the contract ------------------------------------------------------

    async def _images(self, request: ImageRequest, deployment: Deployment, sink: PartialSink | None = None) -> list[bytes]:
        info = self._info(deployment.model)
        work = await asyncio.to_thread(prepare, request, info, self.context.max_image_pixels)
        batcher, size = self._batcher(info), self.options.max_batch_size
        # More images than one call may hold: run them in parts (each may share a call with others).
        # Partial images, when streamed, are of the first image.
        parts = [
            replace(work, seeds=work.seeds[i : i + size], partial_images=request.partial_images if i == 0 else 0, sink=sink)
            for i in range(0, len(work.seeds), size)
        ]
        tasks = [asyncio.ensure_future(batcher.submit(part.key, len(part.seeds), part)) for part in parts]
        try:
            try:
                results = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:  # one part failed or the caller left: the others are not wanted
                    task.cancel()
                raise
        except QueueFull as exc:
            raise RateLimitError(
                f"Local model '{info.name}' is busy: its queue of {self.options.max_queue} requests is full. "
                f"Retry after {exc.retry_after:.0f} seconds.",
                code="queue_full",
                retry_after=exc.retry_after,
            ) from None
        return [png for part in results for png in part]

    @staticmethod
    def _meta(request: ImageRequest) -> ImageMeta:
        quality = request.quality if request.quality in ("low", "medium", "high") else "medium"
        return ImageMeta(quality=quality, background="opaque")

    async def run(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        pngs = await self._images(request, deployment)
        return ProviderResult([GeneratedImage(png, "png") for png in pngs], meta=self._meta(request))

    async def stream(self, request: ImageRequest, deployment: Deployment) -> AsyncIterator[PartialImage | CompletedImage]:
        """Partial images are previews decoded from the latents part way
        through the steps (fewer than asked when there are fewer steps)."""
        loop = asyncio.get_running_loop()
        partials: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

        def sink(index: int, png: bytes) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(partials.put_nowait, (index, png))

        meta = self._meta(request)
        images = asyncio.ensure_future(self._images(request, deployment, sink if request.partial_images else None))
        try:
            while not images.done():
                waiter = asyncio.ensure_future(partials.get())
                await asyncio.wait({waiter, images}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    waiter.cancel()
                    break
                index, png = waiter.result()
                yield PartialImage(index, GeneratedImage(png, "png"), meta)
            while not partials.empty():  # sent before the last step finished
                index, png = partials.get_nowait()
                yield PartialImage(index, GeneratedImage(png, "png"), meta)
            for png in images.result():
                yield CompletedImage(GeneratedImage(png, "png"), None, meta)
        finally:
            images.cancel()

    generate = edit = variation = run

    async def ready(self) -> bool:
        return self._preloading is None or self._preloading.done()

    def describe(self) -> dict[str, object]:
        loaded = self.cache.loaded()
        return {
            "type": self.type_name,
            "device": pick_device(self.options.device),
            "memory_budget_gb": self.options.memory_budget_gb,
            "memory_used_gb": round(sum(m.nbytes for m in loaded.values()) / GB, 6),
            "loads": self.cache.loads,
            "evictions": self.cache.evictions,
            "models": {
                name: {
                    "family": info.family.name,
                    "native_size": f"{info.native}x{info.native}",
                    "loaded": name in loaded,
                    "memory_gb": round(loaded[name].nbytes / GB, 6) if name in loaded else None,
                    "queued": self._batchers[name].queued if name in self._batchers else 0,
                    **(vars(self._batchers[name].stats) if name in self._batchers else {}),
                }
                for name, info in self._infos.items()
            },
        }

    async def aclose(self) -> None:
        for batcher in self._batchers.values():
            await batcher.aclose()
        if self._preloading is not None:
            self._preloading.cancel()
        await asyncio.get_running_loop().run_in_executor(self._thread, self.cache.clear)
        self._thread.shutdown(wait=False, cancel_futures=True)
