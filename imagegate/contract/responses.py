"""Response models: ``ImagesResponse`` and the streaming events of the spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ImageData(_Out):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class InputTokensDetails(_Out):
    text_tokens: int
    image_tokens: int


class OutputTokensDetails(_Out):
    image_tokens: int
    text_tokens: int


class ImageUsage(_Out):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens_details: OutputTokensDetails | None = None


class ImagesResponse(_Out):
    created: int
    data: list[ImageData]
    background: Literal["transparent", "opaque"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    size: str | None = None
    quality: str | None = None
    usage: ImageUsage | None = None


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Not an event: a comment line on the stream (``: STATUS``) while an
    upstream job runs. SSE clients (the OpenAI SDKs included) skip comments;
    proxies see bytes flowing and keep the connection."""

    status: str


class StreamEvent(_Out):
    """``ImageGen*Event`` / ``ImageEdit*Event``; ``type`` says which."""

    type: str
    b64_json: str
    created_at: int
    size: str
    quality: str
    background: str
    output_format: str
    partial_image_index: int | None = None
    usage: ImageUsage | None = None
