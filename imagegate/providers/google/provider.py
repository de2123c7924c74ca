"""``gemini``: Google's image models on the Gemini API (generativelanguage.googleapis.com).

The base of the ``vertex`` provider too: the two serve the same models with
the same request and answer shapes (``wire.py``) and differ in where a
model's method lives (:meth:`GoogleProvider.model_path`) and how a call is
authorised (:meth:`GoogleProvider.call_headers`: the Gemini API's
``x-goog-api-key``, Vertex's OAuth bearer token).

Which method serves a model is catalog data, not code: the entry's ``wire``
facts (``method: generateContent`` for Gemini image models, ``predict`` for
Imagen), checked by :meth:`GoogleProvider.check_route` when the config loads.

(The request mapping, answers, refusals and errors: filled in by the Gemini
API's implementation.)
"""

from __future__ import annotations

from typing import ClassVar

from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment, ProviderResult
from imagegate.providers.http import HostedOptions, HostedProvider


class GoogleOptions(HostedOptions):
    auth_header: ClassVar[str] = "x-goog-api-key"
    auth_prefix: ClassVar[str] = ""

    base_url: str = "https://generativelanguage.googleapis.com/v1beta"


class GoogleProvider(HostedProvider):
    type_name: ClassVar[str] = "gemini"
    options_model = GoogleOptions
    options: GoogleOptions

    # -- what differs between the Gemini API and Vertex AI -----------------

    def model_path(self, model: str, method: str) -> str:
        """The path (under ``base_url``) of ``model``'s ``method``
        (``generateContent``, ``predict``)."""
        return f"/models/{model}:{method}"

    async def call_headers(self, deployment: Deployment) -> dict[str, str]:
        """Headers one call adds to :meth:`build`'s (Vertex: its bearer token).
        The Gemini API's key already rides on every request (``auth_headers``)."""
        return {}

    # -- the contract ------------------------------------------------------

    async def generate(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        raise NotImplementedError

    async def edit(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        raise NotImplementedError

    async def variation(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        raise NotImplementedError


__all__ = ["GoogleOptions", "GoogleProvider"]
