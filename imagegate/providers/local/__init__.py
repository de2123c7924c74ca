"""``diffusers``: local diffusion models (Stable Diffusion 1.x/2.x, SD-Turbo,
SDXL, SDXL-Turbo, SD3, FLUX.1 schnell/dev, FLUX.1 Kontext) run in-process
with Hugging Face diffusers.

Modules, from the outside in:

* ``options``  - the provider's and each model's config keys;
* ``families`` - what a model directory is (read from its JSON files, no
  torch), its native resolution, defaults, and the catalog rules built from them;
* ``sizing``   - OpenAI ``size`` to the model's native resolution;
* ``batcher``  - the bounded per-model queue and dynamic batching (asyncio only);
* ``runtime``  - device, dtype, loading with a progress bar, LRU eviction;
* ``work``     - one request as pipeline inputs, and one batch as one pipeline call;
* ``provider`` - the :class:`~imagegate.providers.base.Provider` tying them together.

torch and diffusers are imported only by ``runtime`` and ``work``, and only
when a config names this provider type (``pip install 'imagegate[local]'``).
"""
