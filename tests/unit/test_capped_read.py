"""The one capped body read (``providers.http.read_capped``) that hosted
providers and the URL fetcher share: an oversize body is refused from its
Content-Length before any byte is read, or as soon as the running count
passes the cap, and the rest is never read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from imagegate.providers.http import read_capped


class TooLarge(Exception):
    pass


def answer(chunks: list[bytes], read: list[int], declared: int | None = None) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            read.append(len(chunk))
            yield chunk

    headers = {"content-length": str(declared)} if declared is not None else {}
    return httpx.Response(200, headers=headers, content=body())


async def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    read: list[int] = []
    with pytest.raises(TooLarge):
        await read_capped(answer([b"x" * 10], read, declared=11), 10, TooLarge)
    assert read == []


async def test_an_undeclared_body_is_refused_as_soon_as_it_passes_the_cap() -> None:
    read: list[int] = []
    with pytest.raises(TooLarge):
        await read_capped(answer([b"x" * 6, b"x" * 6, b"x" * 6], read), 10, TooLarge)
    assert read == [6, 6]  # the third chunk is never read


async def test_a_body_of_exactly_the_cap_is_read_whole() -> None:
    read: list[int] = []
    assert await read_capped(answer([b"ab" * 3, b"cd" * 2], read, declared=10), 10, TooLarge) == b"abababcdcd"
