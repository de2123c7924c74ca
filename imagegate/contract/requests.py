"""Typed requests: the fields of the spec's request schemas, and the resolved
request that travels from the API through the gateway to a provider.

``*Fields`` models hold exactly what the client sent (``None`` or unset means
"not sent"; ``model_fields_set`` tells which were sent) so a provider can pass
them on faithfully. :class:`ImageRequest` adds the resolved model, the input
images and the effective values (defaults applied) the gateway works with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from imagegate.contract.catalog import ModelSpec
from imagegate.imaging.probe import ImageInfo

Endpoint = Literal["generations", "edits", "variations"]


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = None
    n: int | None = Field(None, ge=1, le=10)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    user: str | None = None
    # Extension fields, accepted only where the catalog says so.
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    negative_prompt: str | None = Field(None, max_length=32000)
    num_inference_steps: int | None = Field(None, ge=1, le=500)
    guidance_scale: float | None = Field(None, ge=0, le=100)


class _GptImageFields(_Fields):
    prompt: str = Field(min_length=1)
    quality: str | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    moderation: Literal["low", "auto"] | None = None
    stream: bool | None = None
    partial_images: int | None = Field(None, ge=0, le=3)


class GenerationFields(_GptImageFields):
    """``CreateImageRequest``."""

    style: Literal["vivid", "natural"] | None = None


class EditFields(_GptImageFields):
    """``CreateImageEditRequest`` / ``EditImageBodyJsonParam`` less the images."""

    input_fidelity: Literal["high", "low"] | None = None


class VariationFields(_Fields):
    """``CreateImageVariationRequest`` less the image."""


FIELDS_BY_ENDPOINT: dict[str, type[_Fields]] = {
    "generations": GenerationFields,
    "edits": EditFields,
    "variations": VariationFields,
}


@dataclass(frozen=True, slots=True)
class InputImage:
    """An input image's bytes exactly as the client sent them, plus what the
    header says about them. Never re-encoded on the way to a provider."""

    data: bytes
    info: ImageInfo
    field: str  # the request field it came from, e.g. "image[1]" or "mask"


@dataclass(frozen=True, slots=True)
class ImageRequest:
    endpoint: Endpoint
    model: str  # the public model name the client asked for
    spec: ModelSpec
    params: GenerationFields | EditFields | VariationFields
    images: tuple[InputImage, ...] = ()
    mask: InputImage | None = None

    def fingerprint(self, *context: str | None) -> str:
        """A digest of everything the client sent: endpoint, fields, image
        bytes, and any ``context`` that changes what runs (a virtual key)."""
        digest = hashlib.sha256(self.endpoint.encode())
        for part in context:
            digest.update(b"\x00" + (part or "").encode())
        digest.update(orjson.dumps(self.params.model_dump(exclude_unset=True), option=orjson.OPT_SORT_KEYS))
        for image in (*self.images, *((self.mask,) if self.mask else ())):
            digest.update(image.field.encode())
            digest.update(hashlib.sha256(image.data).digest())
        return digest.hexdigest()

    def sent(self) -> dict[str, object]:
        """The fields the client sent, as sent (``model`` included)."""
        return self.params.model_dump(exclude_none=True, exclude_unset=True)

    def _get(self, name: str) -> object:
        return getattr(self.params, name, None)

    @property
    def prompt(self) -> str:
        return str(self._get("prompt") or "")

    @property
    def n(self) -> int:
        return self.params.n or 1

    @property
    def size(self) -> str:
        return self.params.size or self.spec.default_size

    @property
    def quality(self) -> str:
        return str(self._get("quality") or self.spec.default_quality)

    @property
    def response_format(self) -> str:
        return self.params.response_format or self.spec.default_response_format

    @property
    def output_format(self) -> str:
        return str(self._get("output_format") or "png")

    @property
    def output_compression(self) -> int | None:
        value = self._get("output_compression")
        return int(value) if value is not None else None  # type: ignore[arg-type]

    @property
    def background(self) -> str:
        return str(self._get("background") or "auto")

    @property
    def stream(self) -> bool:
        return bool(self._get("stream"))

    @property
    def partial_images(self) -> int:
        return int(self._get("partial_images") or 0)  # type: ignore[arg-type]

    @property
    def seed(self) -> int | None:
        return self.params.seed
