"""Streaming ``multipart/form-data`` parsing into memory, once.

python-multipart's incremental parser is fed the request body as it arrives;
each part's bytes are collected as they stream in and joined once at the end
of the part. Nothing is spooled to disk, nothing goes through a thread pool,
and part file names are read only to tell files from text fields. Parts named
in ``file_names`` may be files sent without a ``filename=`` (as OpenAI
accepts them), so the text-size cap does not apply to them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from imagegate.errors import InvalidRequestError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks


@dataclass(slots=True)
class Part:
    name: str
    is_file: bool
    content: bytes = b""
    _chunks: list[bytes] = field(default_factory=list)
    _size: int = 0


def _malformed(detail: str) -> InvalidRequestError:
    return InvalidRequestError(f"Could not parse the multipart body: {detail}.", code="invalid_multipart")


class _Collector:
    def __init__(self, max_parts: int, max_text_bytes: int, file_names: frozenset[str]) -> None:
        self.max_parts = max_parts
        self.max_text_bytes = max_text_bytes
        self.file_names = file_names
        self.parts: list[Part] = []
        self.error: InvalidRequestError | None = None
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._current: Part | None = None

    def _fail(self, error: InvalidRequestError) -> None:
        if self.error is None:
            self.error = error

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        kind, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            self._fail(_malformed("a part has no Content-Disposition form-data name"))
            self._current = None
            return
        if len(self.parts) >= self.max_parts:
            self._fail(
                InvalidRequestError(
                    f"Too many parts: at most {self.max_parts} are accepted.", param="image", code="too_many_images"
                )
            )
        self._current = Part(name.decode("utf-8", "replace"), is_file=b"filename" in options)
        self.parts.append(self._current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        if part is None or self.error is not None:
            return
        part._size += end - start
        if not part.is_file and part.name not in self.file_names and part._size > self.max_text_bytes:
            self._fail(_malformed(f"the field '{part.name}' is larger than {self.max_text_bytes} bytes"))
            return
        part._chunks.append(data[start:end])

    def on_part_end(self) -> None:
        part = self._current
        if part is not None:
            part.content = part._chunks[0] if len(part._chunks) == 1 else b"".join(part._chunks)
            part._chunks = []
        self._current = None


async def parse_multipart(
    content_type: str,
    body: AsyncIterator[bytes],
    *,
    max_parts: int,
    max_text_bytes: int,
    file_names: frozenset[str] = frozenset(),
) -> list[Part]:
    """All parts of a multipart body, in order. Raises InvalidRequestError."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise _malformed("the Content-Type has no boundary")
    collector = _Collector(max_parts, max_text_bytes, file_names)
    callbacks: MultipartCallbacks = {
        "on_part_begin": collector.on_part_begin,
        "on_part_data": collector.on_part_data,
        "on_part_end": collector.on_part_end,
        "on_header_field": collector.on_header_field,
        "on_header_value": collector.on_header_value,
        "on_header_end": collector.on_header_end,
        "on_headers_finished": collector.on_headers_finished,
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        async for chunk in body:
            parser.write(chunk)
            if collector.error is not None:
                raise collector.error
        parser.finalize()
    except MultipartParseError as exc:
        raise _malformed(str(exc) or "malformed body") from exc
    if collector.error is not None:
        raise collector.error
    if collector._current is not None or not collector.parts:
        raise _malformed("the body ended before the closing boundary" if collector.parts else "no parts")
    return collector.parts
