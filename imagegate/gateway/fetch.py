"""Load input images given by reference in JSON edit requests.

``data:`` URLs are decoded in place. ``http(s)`` URLs are fetched with a size
cap and a deadline, and - unless ``allow_private_networks`` is set - never
from an address that is not globally routable (loopback, private, link-local,
CGNAT, multicast, reserved...). The host is resolved once, every address is
checked, and the connection goes to the checked address (TLS still verifies
the original host name via SNI), so DNS rebinding cannot slip past the check.
Redirects are followed by hand, each hop checked the same way.
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import socket

import httpx
import pybase64

from imagegate.config import FetchConfig
from imagegate.errors import InvalidRequestError

_MB = 1024 * 1024


class ImageFetcher:
    def __init__(self, config: FetchConfig) -> None:
        self.config = config
        self.max_bytes = int(config.max_mb * _MB)
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(config.timeout_seconds),
            headers={"User-Agent": "imagegate-fetch/1", "Accept": "image/*"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def load(self, url: str, param: str) -> bytes:
        if url.startswith("data:"):
            return self._data_url(url, param)
        if url.startswith(("http://", "https://")):
            try:
                async with asyncio.timeout(self.config.timeout_seconds):
                    return await self._fetch(url, param)
            except TimeoutError:
                raise InvalidRequestError(
                    f"Fetching '{param}' timed out after {self.config.timeout_seconds:g} s.",
                    param=param,
                    code="image_url_timeout",
                ) from None
        raise InvalidRequestError("Image URLs must be data: URLs or http(s) URLs.", param=param, code="invalid_image_url")

    def _data_url(self, url: str, param: str) -> bytes:
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidRequestError(
                "data: URLs must be base64-encoded (data:image/png;base64,...).", param=param, code="invalid_image_url"
            )
        try:
            return pybase64.b64decode(payload, validate=True)
        except binascii.Error as exc:
            raise InvalidRequestError("The data: URL holds invalid base64.", param=param, code="invalid_image_url") from exc

    async def _checked_address(self, host: str, port: int, param: str) -> str:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise InvalidRequestError(f"Cannot resolve the host of '{param}'.", param=param, code="invalid_image_url") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not self.config.allow_private_networks:
            for addr in addresses:
                mapped = getattr(addr, "ipv4_mapped", None) or addr
                if not mapped.is_global:
                    raise InvalidRequestError(
                        f"The URL in '{param}' points to a non-public address; fetching it is not allowed.",
                        param=param,
                        code="invalid_image_url",
                    )
        return str(addresses[0])

    async def _fetch(self, url: str, param: str) -> bytes:
        for _ in range(self.config.max_redirects + 1):
            try:
                target = httpx.URL(url)
            except httpx.InvalidURL as exc:
                raise InvalidRequestError(f"Invalid URL in '{param}'.", param=param, code="invalid_image_url") from exc
            if target.scheme not in ("http", "https") or not target.host:
                raise InvalidRequestError(f"Invalid URL in '{param}'.", param=param, code="invalid_image_url")
            port = target.port or (443 if target.scheme == "https" else 80)
            address = await self._checked_address(target.host, port, param)
            request = self._client.build_request(
                "GET",
                target.copy_with(host=address),
                headers={"Host": target.netloc.decode("ascii")},
                extensions={"sni_hostname": target.host},
            )
            try:
                response = await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise InvalidRequestError(
                    f"Could not fetch the image in '{param}': {type(exc).__name__}.", param=param, code="image_url_unreachable"
                ) from exc
            try:
                if response.is_redirect and "location" in response.headers:
                    url = str(target.join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise InvalidRequestError(
                        f"Fetching the image in '{param}' failed with HTTP {response.status_code}.",
                        param=param,
                        code="image_url_unreachable",
                    )
                return await self._read_capped(response, param)
            finally:
                await response.aclose()
        raise InvalidRequestError(f"Too many redirects fetching '{param}'.", param=param, code="image_url_unreachable")

    async def _read_capped(self, response: httpx.Response, param: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(param)
        chunks: list[bytes] = []
        total = 0
        try:
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > self.max_bytes:
                    raise self._too_large(param)
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise InvalidRequestError(f"The download of '{param}' broke off.", param=param, code="image_url_unreachable") from exc
        return b"".join(chunks)

    def _too_large(self, param: str) -> InvalidRequestError:
        return InvalidRequestError(
            f"The image at '{param}' is larger than {self.config.max_mb:g} MB.", param=param, code="image_too_large"
        )
