"""Hosted images: what ``response_format=url`` answers point at.

An image is stored (the configured :class:`~imagegate.storage.base.Storage`)
and linked: by the backend's own URL when it hands one out
(``Storage.url_for``, e.g. a presigned object-store URL), else by a URL the
gateway signs (HMAC, expiring; ``storage/signing.py``) and serves itself
(``GET /v1/images/files/{key}``, :meth:`HostedFiles.open`).

A replayed answer (an Idempotency-Key seen again) gets its links issued
afresh and its images kept as long again, while they are stored; 410 once
they are not.
"""

from __future__ import annotations

import orjson

from imagegate.contract.results import GeneratedImage
from imagegate.errors import GoneError, NotFoundError
from imagegate.storage.base import ObjectStream, Storage
from imagegate.storage.signing import SignatureExpired, SignatureInvalid, URLSigner, key_of_url


class HostedFiles:
    def __init__(self, storage: Storage, signer: URLSigner, public_url: str | None) -> None:
        self.storage = storage
        self.signer = signer
        self.public_url = public_url

    @property
    def ttl_seconds(self) -> int:
        return self.signer.ttl_seconds

    async def publish(self, image: GeneratedImage, format: str, base_url: str) -> str:
        """Store ``image`` and return its URL."""
        # .data makes the bytes from base64 text only when needed; with pybase64 that is
        # ~0.1 ms for 2 MB, less than a hop to a worker thread would cost.
        key = await self.storage.put(image.data, format)
        return await self._link(key, base_url)

    async def _link(self, key: str, base_url: str) -> str:
        own = await self.storage.url_for(key, self.signer.ttl_seconds)
        return own if own is not None else self.signer.url(self.public_url or base_url, key)

    def _key_of(self, url: str) -> str | None:
        return key_of_url(url) or self.storage.key_of_url(url)

    async def refresh_urls(self, body: bytes, base_url: str) -> bytes:
        """A replayed answer's hosted URLs, issued afresh (and their images
        kept as long again) while the images are stored; 410 once they are not."""
        if b'"url"' not in body:  # b64_json answers: nothing to refresh
            return body
        doc = orjson.loads(body)
        for item in doc.get("data") or ():
            key = self._key_of(item.get("url") or "")
            if key is None:
                continue
            if not await self.storage.touch(key):
                raise GoneError(
                    "The images of the request first made with this Idempotency-Key are no longer stored; "
                    "send the request again with a new key.",
                    param="Idempotency-Key",
                    code="idempotent_result_expired",
                )
            item["url"] = await self._link(key, base_url)
        return orjson.dumps(doc)

    async def open(self, key: str, expires: str, signature: str) -> tuple[ObjectStream, int]:
        """The stored image a signed URL names, opened for streaming, and the
        link's expiry (Unix time). 404 for a bad signature, 410 for an expired
        link or an image no longer stored. The caller closes the stream."""
        try:
            expiry = self.signer.verify(key, expires, signature)
        except SignatureInvalid:
            raise NotFoundError("No such image: the link is invalid.", code="invalid_signature") from None
        except SignatureExpired:
            raise GoneError(
                f"This image link has expired; image URLs are valid for {self.signer.ttl_seconds // 60} minutes.",
                code="url_expired",
            ) from None
        stream = await self.storage.open(key)
        if stream is None:
            raise GoneError("This image is no longer stored.", code="url_expired")
        return stream, expiry
