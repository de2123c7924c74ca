"""Which webhook URLs imagegate will POST to.

The rules of image URLs (:mod:`imagegate.gateway.fetch`) apply, with the
same address filter (:func:`~imagegate.gateway.fetch.is_public_address`):
``https`` only unless ``webhooks.allow_http``; every address the host
resolves to must be public unless ``webhooks.allow_private_addresses``; no
credentials in the URL (it is shown on the job object). A per-request
``Imagegate-Webhook-Url`` must also name a host in ``webhooks.allowed_hosts``
(``hooks.example.com`` exactly, or ``*.example.com`` for its subdomains);
a key's URL is set by an administrator and needs no listing.

The check runs when a URL is given (a 400 naming the header or the admin
field) and again at each delivery, whose connection goes to the address
checked then (TLS still verifies the host name), so a DNS answer that changes
after the submission cannot turn a webhook towards an internal address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx

from imagegate.config import WebhooksConfig
from imagegate.errors import InvalidRequestError
from imagegate.gateway.fetch import is_public_address

HEADER = "Imagegate-Webhook-Url"
MAX_URL_CHARS = 2048


class RefusedAddress(Exception):
    """A webhook host that resolves to nothing, or to an address not allowed."""


def host_listed(host: str, patterns: list[str]) -> bool:
    """``host`` is one of ``patterns`` or a subdomain of a ``*.domain`` one."""
    host = host.lower().rstrip(".")
    return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in patterns)


class WebhookURLs:
    def __init__(self, config: WebhooksConfig) -> None:
        self.config = config

    def parse(self, url: str, param: str) -> httpx.URL:
        """The URL, or a 400 naming ``param`` for one that may not be used."""

        def refuse(why: str) -> InvalidRequestError:
            return InvalidRequestError(f"The webhook URL in '{param}' {why}", param=param, code="invalid_webhook_url")

        if len(url) > MAX_URL_CHARS:
            raise refuse(f"is longer than {MAX_URL_CHARS} characters.")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise refuse("is not a valid URL.") from None
        schemes = ("https", "http") if self.config.allow_http else ("https",)
        if parsed.scheme not in schemes or not parsed.host:
            raise refuse("must be an https:// URL." if not self.config.allow_http else "must be an http(s) URL.")
        if parsed.userinfo:
            raise refuse("may not hold a user name or password.")
        if parsed.fragment:
            raise refuse("may not have a #fragment.")
        return parsed

    async def check(self, url: str, *, param: str, per_request: bool) -> str:
        """Refuse (a 400 naming ``param``) a URL that may not be used: its
        form, for ``per_request`` its host's listing, and its addresses."""
        parsed = self.parse(url, param)
        if per_request and not host_listed(parsed.host, self.config.allowed_hosts):
            listed = "no hosts are" if not self.config.allowed_hosts else f"'{parsed.host}' is not"
            raise InvalidRequestError(
                f"The webhook URL in '{param}' names a host that may not receive webhooks: {listed} "
                "listed in webhooks.allowed_hosts.",
                param=param,
                code="webhook_host_not_allowed",
            )
        try:
            await self.address(parsed)
        except RefusedAddress as exc:
            raise InvalidRequestError(f"The webhook URL in '{param}' {exc}", param=param, code="invalid_webhook_url") from None
        return str(parsed)

    async def check_key_url(self, url: str) -> str:
        """A key's webhook URL as an administrator sets it (a 400 naming ``webhook_url``)."""
        return await self.check(url, param="webhook_url", per_request=False)

    async def address(self, url: httpx.URL) -> str:
        """The address to connect to for ``url``: its host resolved once, every
        address checked. Raises RefusedAddress."""
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise RefusedAddress("names a host that cannot be resolved.") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise RefusedAddress("names a host that cannot be resolved.")
        if not self.config.allow_private_addresses and not all(is_public_address(a) for a in addresses):
            raise RefusedAddress("points to a non-public address; webhooks may not be sent there.")
        return str(addresses[0])
