"""The model catalog: every per-model rule of the OpenAI Images API in one table.

The OpenAPI spec gives field names and types; the rules below are the ones it
states only in prose (sizes, ``n``, prompt lengths, which fields a model takes,
edit-input limits). Fields outside the spec that a provider takes are declared
in the model's entry too (``extra_fields``, see ``contract.fields``).
Validation (``contract.validate``) reads this table and nothing else, so
supporting a new model means adding a row, not an ``if``.

Providers extend the table at import time with :func:`register` (for example
the offline ``test-pattern`` model).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from imagegate.contract.fields import FieldSpec

MB = 1024 * 1024

GENERATIONS: Final = "generations"
EDITS: Final = "edits"
VARIATIONS: Final = "variations"

# Optional spec fields that only some models take. Fields every model takes
# (prompt, model, n, size, user, response_format) are not listed.
GPT_IMAGE_FIELDS = frozenset(
    {
        "quality",
        "background",
        "output_format",
        "output_compression",
        "moderation",
        "stream",
        "partial_images",
        "input_fidelity",
    }
)
SPEC_OPTIONAL_FIELDS = GPT_IMAGE_FIELDS | {"style"}
_COMMON_FIELDS = frozenset({"model", "prompt", "n", "size", "user", "response_format", "image", "images", "mask"})

# Fields outside the spec that diffusion models commonly take (local
# diffusers models, the test model, OpenAI-compatible gateways in front of
# FLUX or Stable Diffusion). A model takes them only if its entry lists them
# in ``extra_fields``; a provider with fields of its own declares those the
# same way.
DIFFUSION_FIELDS: Mapping[str, FieldSpec] = MappingProxyType(
    {
        "seed": FieldSpec(
            "int",
            minimum=0,
            maximum=2**32 - 1,
            description="Seed of the random generator: the same seed and request give the same pixels.",
        ),
        "negative_prompt": FieldSpec("str", max_length=32000, description="What the image should not show."),
        "num_inference_steps": FieldSpec("int", minimum=1, maximum=500, description="Denoising steps of a diffusion model."),
        "guidance_scale": FieldSpec(
            "float", minimum=0, maximum=100, description="Classifier-free guidance scale of a diffusion model."
        ),
    }
)

_SIZE_RE = re.compile(r"([1-9][0-9]{1,4})x([1-9][0-9]{1,4})")


def parse_size(size: str) -> tuple[int, int] | None:
    """``"1024x768"`` -> ``(1024, 768)``; None for anything else (including ``auto``)."""
    m = _SIZE_RE.fullmatch(size)  # not match + "$": "64x64\n" is not a size
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True, slots=True)
class FreeSizeRule:
    """Arbitrary ``WIDTHxHEIGHT`` sizes within limits (gpt-image-2 style)."""

    multiple_of: int = 16
    max_edge: int = 3840
    max_pixels: int = 3840 * 2160
    min_pixels: int = 0
    max_aspect: float = 3.0

    def check(self, width: int, height: int) -> str | None:
        if width % self.multiple_of or height % self.multiple_of:
            return f"width and height must both be multiples of {self.multiple_of}"
        if max(width, height) > self.max_edge:
            return f"the longest edge may be at most {self.max_edge} pixels"
        if width * height > self.max_pixels:
            return f"at most {self.max_pixels} pixels are supported"
        if width * height < self.min_pixels:
            return f"at least {self.min_pixels} pixels are required"
        if max(width, height) / min(width, height) > self.max_aspect:
            return f"the aspect ratio must be between 1:{self.max_aspect:g} and {self.max_aspect:g}:1"
        return None


@dataclass(frozen=True, slots=True)
class InputRule:
    """What an endpoint accepts as input images."""

    formats: frozenset[str]
    max_images: int
    max_bytes: int
    square: bool = False


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    endpoints: frozenset[str]
    sizes: tuple[str, ...]  # fixed sizes accepted (may include "auto")
    default_size: str
    qualities: tuple[str, ...]
    default_quality: str
    prompt_max: int
    n_max: int = 10
    default_response_format: str = "b64_json"
    # The optional fields the model takes: the spec fields (SPEC_OPTIONAL_FIELDS)
    # listed here, plus every name in extra_fields (added on creation).
    accepts: frozenset[str] = frozenset()
    free_size: FreeSizeRule | None = None
    edit_input: InputRule | None = None
    variation_input: InputRule | None = None
    mask_max_bytes: int = 4 * MB
    # ImagesResponse carries size/quality/background/output_format for these.
    reports_output_meta: bool = False
    # Fields the gateway itself implements for this model and does not send
    # upstream (GPT image models take no response_format: the gateway hosts URLs).
    gateway_fields: frozenset[str] = frozenset()
    # background=transparent can be honoured (else a clear 400 naming 'background').
    transparency: bool = True
    # Edits take a mask (inpainting); else a clear 400 naming 'mask'.
    masks: bool = True
    # Fields outside the spec the model's provider takes, each with its type
    # and limits; any other field outside the spec is 400 unknown_parameter.
    extra_fields: Mapping[str, FieldSpec] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        shadowed = set(self.extra_fields) & (SPEC_OPTIONAL_FIELDS | _COMMON_FIELDS)
        if shadowed:
            raise ValueError(f"{self.name}: extra_fields may not redefine spec fields ({', '.join(sorted(shadowed))})")
        object.__setattr__(self, "extra_fields", MappingProxyType(dict(self.extra_fields)))
        # Names outside the spec come from extra_fields alone (so a copy made
        # with dataclasses.replace(spec, extra_fields=...) takes exactly those).
        object.__setattr__(self, "accepts", (self.accepts & SPEC_OPTIONAL_FIELDS) | frozenset(self.extra_fields))

    def allows_size(self, size: str) -> str | None:
        """None if ``size`` is fine for this model, else the reason."""
        if size in self.sizes:
            return None
        dims = parse_size(size)
        if self.free_size is not None and dims is not None:
            return self.free_size.check(*dims)
        listed = ", ".join(f"'{s}'" for s in self.sizes)
        extra = " or WIDTHxHEIGHT within the model's limits" if self.free_size else ""
        return f"supported values are: {listed}{extra}"


_CATALOG: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    _CATALOG[spec.name] = spec
    return spec


def lookup(name: str | None) -> ModelSpec | None:
    return _CATALOG.get(name) if name else None


def names() -> list[str]:
    return sorted(_CATALOG)


_GPT_SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536")
_GPT_QUALITIES = ("auto", "low", "medium", "high")
_GPT_EDIT_INPUT = InputRule(frozenset({"png", "webp", "jpeg"}), max_images=16, max_bytes=50 * MB)
_DALLE2_INPUT = InputRule(frozenset({"png"}), max_images=1, max_bytes=4 * MB, square=True)


def _gpt_image(name: str, *, input_fidelity: bool = True, free_size: bool = False) -> ModelSpec:
    accepts = GPT_IMAGE_FIELDS if input_fidelity else GPT_IMAGE_FIELDS - {"input_fidelity"}
    return ModelSpec(
        name=name,
        endpoints=frozenset({GENERATIONS, EDITS}),
        sizes=_GPT_SIZES,
        default_size="auto",
        qualities=_GPT_QUALITIES,
        default_quality="auto",
        prompt_max=32000,
        accepts=accepts,
        free_size=FreeSizeRule() if free_size else None,
        edit_input=_GPT_EDIT_INPUT,
        mask_max_bytes=50 * MB,
        reports_output_meta=True,
        gateway_fields=frozenset({"response_format"}),
    )


register(
    ModelSpec(
        name="dall-e-2",
        endpoints=frozenset({GENERATIONS, EDITS, VARIATIONS}),
        sizes=("256x256", "512x512", "1024x1024"),
        default_size="1024x1024",
        qualities=("standard", "auto"),
        default_quality="standard",
        prompt_max=1000,
        default_response_format="url",
        accepts=frozenset({"quality"}),
        edit_input=_DALLE2_INPUT,
        variation_input=_DALLE2_INPUT,
    )
)
register(
    ModelSpec(
        name="dall-e-3",
        endpoints=frozenset({GENERATIONS}),
        sizes=("1024x1024", "1792x1024", "1024x1792"),
        default_size="1024x1024",
        qualities=("standard", "hd", "auto"),
        default_quality="standard",
        prompt_max=4000,
        n_max=1,
        default_response_format="url",
        accepts=frozenset({"quality", "style"}),
    )
)
register(_gpt_image("gpt-image-1"))
register(_gpt_image("gpt-image-1-mini", input_fidelity=False))
register(_gpt_image("gpt-image-1.5"))
register(_gpt_image("chatgpt-image-latest"))
register(_gpt_image("gpt-image-2", free_size=True))
register(_gpt_image("gpt-image-2-2026-04-21", free_size=True))


ANY_IMAGE_INPUT = InputRule(frozenset({"png", "webp", "jpeg"}), max_images=16, max_bytes=50 * MB)
STANDARD_SIZES = ("auto", "256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024", "1024x1792")


def permissive(name: str, free_size: FreeSizeRule) -> ModelSpec:
    """Rules that accept every field of the spec and the diffusion fields, any
    standard size or ``WIDTHxHEIGHT`` within ``free_size``, any quality, all
    three endpoints, and png/webp/jpeg inputs: for models whose own rules are
    enforced elsewhere (an upstream's) or that take anything (test models)."""
    return ModelSpec(
        name=name,
        endpoints=frozenset({GENERATIONS, EDITS, VARIATIONS}),
        sizes=STANDARD_SIZES,
        default_size="auto",
        qualities=("auto", "low", "medium", "high", "standard", "hd"),
        default_quality="auto",
        prompt_max=32000,
        accepts=SPEC_OPTIONAL_FIELDS,
        extra_fields=DIFFUSION_FIELDS,
        free_size=free_size,
        edit_input=ANY_IMAGE_INPUT,
        variation_input=InputRule(ANY_IMAGE_INPUT.formats, max_images=1, max_bytes=50 * MB),
        mask_max_bytes=50 * MB,
        reports_output_meta=True,
    )
