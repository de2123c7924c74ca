"""Typed requests: the fields of the spec's request schemas, and the resolved
request that travels from the API through the gateway to a provider.

``*Fields`` models hold exactly the spec's fields the client sent (``None``
or unset means "not sent"; ``model_fields_set`` tells which were sent) so a
provider can pass them on faithfully. Fields outside the spec that the model's
catalog entry declares (``contract.fields``) are validated per model and
travel in ``ImageRequest.extra``. :class:`ImageRequest` adds the resolved
model, the input images and the effective values (defaults applied) the
gateway works with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeVar

import orjson
import pybase64
from pydantic import BaseModel, ConfigDict, Field

from imagegate.contract.catalog import ModelSpec
from imagegate.imaging.probe import ImageInfo

Endpoint = Literal["generations", "edits", "variations"]
T = TypeVar("T")


class SpecFields(BaseModel):
    """The fields every endpoint of the spec defines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = None
    n: int | None = Field(None, ge=1, le=10)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    user: str | None = None


class _GptImageFields(SpecFields):
    prompt: str = Field(min_length=1)
    quality: str | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    output_format: str | None = None  # one of the model's catalog output_formats (contract.validate)
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


class VariationFields(SpecFields):
    """``CreateImageVariationRequest`` less the image."""


class ImageRefParam(BaseModel):
    """``ImageRefParam``: an input image by URL (a ``data:`` or http(s) URL)
    or by uploaded file ID (which this gateway does not take)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_url: str | None = None
    file_id: str | None = None


class EditImageBodyJsonParam(EditFields):
    """``EditImageBodyJsonParam``: a JSON edit, its images by reference. (The
    spec's ``maxItems: 16`` is the model's own limit here: ``too_many_images``.)"""

    images: list[ImageRefParam] = Field(min_length=1)
    mask: ImageRefParam | None = None

    def edit_fields(self) -> EditFields:
        """The edit's fields without the image references, as sent."""
        sent = self.model_fields_set - {"images", "mask"}
        return EditFields.model_construct(sent, **{name: getattr(self, name) for name in EditFields.model_fields})


_NO_EXTRA: Mapping[str, object] = MappingProxyType({})

FIELDS_BY_ENDPOINT: dict[str, type[SpecFields]] = {
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

    def b64(self) -> str:
        """The exact bytes in base64 (for upstreams that take images inline)."""
        return pybase64.b64encode(self.data).decode("ascii")

    def data_uri(self) -> str:
        """The exact bytes as a ``data:`` URI with the sniffed MIME type (lower case)."""
        return f"data:{self.info.mime_type};base64,{self.b64()}"


@dataclass(frozen=True, slots=True)
class ImageRequest:
    endpoint: Endpoint
    model: str  # the public model name the client asked for
    spec: ModelSpec
    params: SpecFields  # GenerationFields, EditFields or VariationFields, by endpoint
    images: tuple[InputImage, ...] = ()
    mask: InputImage | None = None
    # Fields outside the spec, as validated against the model's extra_fields.
    extra: Mapping[str, object] = field(default_factory=lambda: _NO_EXTRA)

    def fingerprint(self, *context: str | None) -> str:
        """A digest of everything the client sent: endpoint, fields, image
        bytes, and any ``context`` that changes what runs (a virtual key)."""
        digest = hashlib.sha256(self.endpoint.encode())
        for part in context:
            digest.update(b"\x00" + (part or "").encode())
        fields = {**self.params.model_dump(exclude_unset=True), **self.extra}
        digest.update(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))
        for image in (*self.images, *((self.mask,) if self.mask else ())):
            digest.update(image.field.encode())
            digest.update(hashlib.sha256(image.data).digest())
        return digest.hexdigest()

    def sent(self) -> dict[str, object]:
        """The fields the client sent, as sent (``model`` and the extra fields included)."""
        return {**self.params.model_dump(exclude_none=True, exclude_unset=True), **self.extra}

    def extra_value(self, name: str, kind: type[T]) -> T | None:
        """An extra field's value if it was sent and is a ``kind`` (an int is a
        float too), else None: ``request.extra_value("guidance_scale", float)``."""
        value = self.extra.get(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        return value if isinstance(value, kind) else None

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
        """The client's output_format; else png (OpenAI's default), or the
        model's own first format where it makes no png (an svg-only model)."""
        formats = self.spec.output_formats
        return str(self._get("output_format") or ("png" if "png" in formats else formats[0]))

    @property
    def output_compression(self) -> int | None:
        value = self._get("output_compression")  # an int, checked by the fields' model
        return int(value) if isinstance(value, int) else None

    @property
    def background(self) -> str:
        return str(self._get("background") or "auto")

    @property
    def stream(self) -> bool:
        return bool(self._get("stream"))

    @property
    def partial_images(self) -> int:
        value = self._get("partial_images")
        return int(value) if isinstance(value, int) else 0

    @property
    def seed(self) -> int | None:
        return self.extra_value("seed", int)
