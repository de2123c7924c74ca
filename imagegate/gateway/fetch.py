"""Load images given by URL: a client's (JSON edit requests) and an upstream's.

``data:`` URLs are decoded in place. ``http(s)`` URLs are fetched with a size
cap and a deadline, and - unless ``allow_private_networks`` is set - never
from an address that is not public (:func:`is_public_address`: loopback,
private, link-local, site-local, unique-local, CGNAT, multicast, reserved,
benchmarking, documentation ranges, and IPv6 forms that embed such an IPv4
address). The host is resolved once, every address is checked, and the
connection goes to the checked address (TLS still verifies the original host
name via SNI), so DNS rebinding cannot slip past the check. Redirects are
followed by hand, each hop checked the same way.

Image URLs an upstream hands out go through :meth:`ImageFetcher.download`
(providers get it as ``ProviderContext.fetch_url``): the same checks, failures
as 502/504, and the provider's own headers only for its configured origin.
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
import pybase64

from imagegate.config import FetchConfig
from imagegate.errors import ImagegateError, InvalidRequestError, UpstreamError, UpstreamTimeoutError
from imagegate.providers.http import read_capped

_MB = 1024 * 1024
_DATA_URL_SLICE = 4 * _MB  # base64 characters decoded at a time (a multiple of 4)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Not public, though some Python versions' ``is_global`` says otherwise.
_ALSO_DENIED = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # CGNAT
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "240.0.0.0/4",  # reserved
        "64:ff9b:1::/48",  # local-use NAT64
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "fc00::/7",  # unique local
        "fec0::/10",  # site-local (deprecated, still routed inside sites)
    )
)
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(addr: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 transition form carries: IPv4-mapped
    (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), NAT64
    (``64:ff9b::/96``), 6to4 (``2002::/16``), Teredo (``2001::/32``: server
    and client). Empty for any other address."""
    if addr.ipv4_mapped is not None:
        return (addr.ipv4_mapped,)
    if addr in _NAT64:
        return (ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF),)
    if addr in _IPV4_COMPATIBLE and int(addr) > 1:  # :: and ::1 are themselves
        return (ipaddress.IPv4Address(int(addr)),)
    if addr.sixtofour is not None:
        return (addr.sixtofour,)
    if addr.teredo is not None:
        return addr.teredo
    return ()


def is_public_address(addr: Address) -> bool:
    """Whether a connection to ``addr`` goes to the public internet. An IPv6
    form that embeds an IPv4 address is judged by that address."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            return False
        embedded = embedded_ipv4(addr)
        if embedded:
            return all(is_public_address(v4) for v4 in embedded)
        if addr.is_site_local:
            return False
    if not addr.is_global or addr.is_private or addr.is_reserved or addr.is_multicast:
        return False
    if addr.is_loopback or addr.is_link_local or addr.is_unspecified:
        return False
    return not any(addr in net for net in _ALSO_DENIED)


Fail = Callable[[str, str], ImagegateError]  # (message, code) -> the error to raise

_Origin = tuple[str, str, int]


def _origin(url: httpx.URL) -> _Origin:
    return url.scheme, url.host.lower(), url.port or (443 if url.scheme == "https" else 80)


@dataclass(frozen=True, slots=True)
class _Job:
    label: str  # what is fetched, for messages: "the URL in 'images[0]'"
    fail: Fail
    max_bytes: int
    max_mb: float
    headers: Mapping[str, str] = field(default_factory=dict)  # sent only to trusted_origin
    trusted_origin: _Origin | None = None  # checked by whoever configured it, not here


# Upstream image URL failures: a 502 naming the provider (a timeout: 504).
_UPSTREAM_CODES = {"image_url_unreachable": "upstream_error"}


def _upstream_failure(provider: str) -> Fail:
    def fail(message: str, code: str) -> ImagegateError:
        message = f"The upstream '{provider}' returned an image URL that could not be used: {message}"
        if code == "image_url_timeout":
            return UpstreamTimeoutError(message)
        return UpstreamError(message, code=_UPSTREAM_CODES.get(code, "invalid_upstream_response"))

    return fail


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

            def fail(message: str, code: str) -> ImagegateError:
                return InvalidRequestError(message, param=param, code=code)

            return await self._get(url, _Job(f"the URL in '{param}'", fail, self.max_bytes, self.config.max_mb))
        raise InvalidRequestError("Image URLs must be data: URLs or http(s) URLs.", param=param, code="invalid_image_url")

    async def download(
        self,
        url: str,
        *,
        provider: str,
        headers: Mapping[str, str] | None = None,
        trusted_origin: str | None = None,
        max_bytes: int | None = None,
    ) -> bytes:
        """Fetch an image URL that the upstream ``provider`` answered with.

        The URL is checked like a client's. ``headers`` (the provider's own)
        go only to ``trusted_origin`` (its configured base URL's scheme, host
        and port), which is also exempt from the address check: the
        configuration already trusts it. Failures are UpstreamErrors."""
        trusted = None
        if trusted_origin is not None:
            trusted = _origin(httpx.URL(trusted_origin))
        limit = max_bytes if max_bytes is not None else self.max_bytes
        job = _Job(
            f"the image URL from the upstream '{provider}'",
            _upstream_failure(provider),
            limit,
            limit / _MB,
            headers or {},
            trusted,
        )
        if not url.startswith(("http://", "https://")):
            raise job.fail("it is not an http(s) URL.", "invalid_image_url")
        return await self._get(url, job)

    async def _get(self, url: str, job: _Job) -> bytes:
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                return await self._fetch(url, job)
        except TimeoutError:
            raise job.fail(
                f"Fetching {job.label} timed out after {self.config.timeout_seconds:g} s.", "image_url_timeout"
            ) from None

    def _data_url(self, url: str, param: str) -> bytes:
        """Decode a base64 ``data:`` URL, capped at ``fetch.max_mb`` like a
        fetched one. The size is checked before decoding, and the payload is
        decoded slice by slice so it is never copied whole (it can be 100 MB)."""
        comma = url.find(",", 0, 256)
        if comma < 0 or not url[:comma].endswith(";base64"):
            raise InvalidRequestError(
                "data: URLs must be base64-encoded (data:image/png;base64,...).", param=param, code="invalid_image_url"
            )
        size = (len(url) - comma - 1) // 4 * 3 - url.endswith("=") - url.endswith("==")
        if size > self.max_bytes:
            raise InvalidRequestError(
                f"The data: URL in '{param}' holds more than {self.config.max_mb:g} MB.", param=param, code="image_too_large"
            )
        step = _DATA_URL_SLICE
        try:
            data = b"".join(pybase64.b64decode(url[i : i + step], validate=True) for i in range(comma + 1, len(url), step))
            if len(data) != size:  # padding in mid-string, where two slices meet
                raise binascii.Error("padding before the end")
        except binascii.Error as exc:
            raise InvalidRequestError("The data: URL holds invalid base64.", param=param, code="invalid_image_url") from exc
        return data

    async def _checked_address(self, host: str, port: int, job: _Job) -> str:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise job.fail(f"Cannot resolve the host of {job.label}.", "invalid_image_url") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not self.config.allow_private_networks and not all(is_public_address(a) for a in addresses):
            raise job.fail(
                f"{job.label[0].upper()}{job.label[1:]} points to a non-public address; fetching it is not allowed.",
                "invalid_image_url",
            )
        return str(addresses[0])

    async def _fetch(self, url: str, job: _Job) -> bytes:
        for _ in range(self.config.max_redirects + 1):
            try:
                target = httpx.URL(url)
            except httpx.InvalidURL as exc:
                raise job.fail(f"Invalid URL: {job.label}.", "invalid_image_url") from exc
            if target.scheme not in ("http", "https") or not target.host:
                raise job.fail(f"Invalid URL: {job.label}.", "invalid_image_url")
            if job.trusted_origin is not None and _origin(target) == job.trusted_origin:
                request = self._client.build_request("GET", target, headers=job.headers)
            else:
                address = await self._checked_address(target.host, _origin(target)[2], job)
                request = self._client.build_request(
                    "GET",
                    target.copy_with(host=address),
                    headers={"Host": target.netloc.decode("ascii")},
                    extensions={"sni_hostname": target.host},
                )
            try:
                response = await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise job.fail(f"Could not fetch {job.label}: {type(exc).__name__}.", "image_url_unreachable") from exc
            try:
                if response.is_redirect and "location" in response.headers:
                    url = str(target.join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise job.fail(f"Fetching {job.label} failed with HTTP {response.status_code}.", "image_url_unreachable")
                return await self._read_capped(response, job)
            finally:
                await response.aclose()
        raise job.fail(f"Too many redirects fetching {job.label}.", "image_url_unreachable")

    async def _read_capped(self, response: httpx.Response, job: _Job) -> bytes:
        def too_large() -> ImagegateError:
            return job.fail(f"The image at {job.label} is larger than {job.max_mb:g} MB.", "image_too_large")

        try:
            return await read_capped(response, job.max_bytes, too_large)
        except httpx.HTTPError as exc:
            raise job.fail(f"The download of {job.label} broke off.", "image_url_unreachable") from exc
