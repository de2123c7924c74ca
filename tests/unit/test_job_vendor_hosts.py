"""Where a job upstream's credential may go when ``base_url`` is a proxy:
BFL's and fal's own hosts are the default ``poll_hosts`` only when
``base_url`` is on them (``providers/job_hosts.py``). With a proxy in front,
the key is the proxy's, and a poll URL on the vendor's host is a 502 that
gets nothing: driven through the engine with every request recorded."""

from __future__ import annotations

import httpx
import pytest

from imagegate.contract import catalog
from imagegate.contract.requests import GenerationFields, ImageRequest
from imagegate.contract.results import Deployment
from imagegate.errors import UpstreamError
from imagegate.providers.base import ProviderContext
from imagegate.providers.bfl import BFLOptions
from imagegate.providers.bfl.provider import BFLProvider
from imagegate.providers.fal import FalOptions, FalProvider

KEY = "bfl-proxy-key-0123456789"
CLUSTER_POLL = "https://api.us1.bfl.ai/v1/get_result?id=task-1"


def test_bfls_hosts_are_the_default_only_on_bfls_own_base_url() -> None:
    vendor = ["api.bfl.ai", "api.*.bfl.ai"]
    assert BFLOptions().poll_hosts == vendor
    assert BFLOptions(region="eu").poll_hosts == vendor
    assert BFLOptions(base_url="https://api.us.bfl.ai/v1").poll_hosts == vendor
    assert BFLOptions(base_url="https://bfl-proxy.internal.example/v1").poll_hosts == []
    assert BFLOptions(base_url="https://api.bfl.ai.evil.example/v1").poll_hosts == []  # a look-alike is no vendor host
    # listed explicitly, a proxy's config may still name them
    assert BFLOptions(base_url="https://bfl-proxy.internal.example/v1", poll_hosts=vendor).poll_hosts == vendor


def test_fals_hosts_are_the_default_only_on_fals_own_base_url() -> None:
    assert FalOptions().poll_hosts == ["queue.fal.run", "queue.falrun.com"]
    assert FalOptions(base_url="https://queue.falrun.com").poll_hosts == ["queue.fal.run", "queue.falrun.com"]
    assert FalOptions(base_url="http://127.0.0.1:8080/fal").poll_hosts == []


def _provider(base_url: str) -> tuple[BFLProvider, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"id": "task-1", "polling_url": CLUSTER_POLL, "cost": 4})
        return httpx.Response(404, json={"detail": "Not Found"})

    options = BFLOptions(base_url=base_url, api_key=KEY, poll_initial_seconds=0.01)
    provider = BFLProvider("bfl", options, ProviderContext(max_image_pixels=10**8))
    provider.client = httpx.AsyncClient(base_url=options.base_url, transport=httpx.MockTransport(upstream))
    return provider, sent


def _request() -> ImageRequest:
    spec = catalog.lookup("flux-kontext-pro")
    assert spec is not None
    return ImageRequest("generations", "flux-kontext-pro", spec, GenerationFields(prompt="x"))


async def test_a_proxys_key_never_goes_to_bfls_cluster_host() -> None:
    provider, sent = _provider("https://bfl-proxy.internal.example/v1")
    assert provider.options.poll_hosts == []
    with pytest.raises(UpstreamError) as info:
        provider.checked_url(CLUSTER_POLL, "polling_url")
    assert (info.value.status, info.value.code) == (502, "invalid_upstream_response")
    with pytest.raises(UpstreamError) as info:
        await provider.run(_request(), Deployment("bfl", "flux-kontext-pro"))
    assert (info.value.status, info.value.code) == (502, "invalid_upstream_response")
    assert "does not send the credential to" in info.value.message
    # the submission went to the proxy; nothing, x-key least of all, to api.us1.bfl.ai
    assert [(r.method, r.url.host) for r in sent] == [("POST", "bfl-proxy.internal.example")]
    assert sent[0].headers["x-key"] == KEY
    await provider.aclose()


def test_on_bfls_own_base_url_the_cluster_host_gets_the_key() -> None:
    provider = BFLProvider("bfl", BFLOptions(api_key=KEY), ProviderContext(max_image_pixels=10**8))
    assert provider.checked_url(CLUSTER_POLL, "polling_url") == CLUSTER_POLL  # the same URL, now BFL's own: polled


def test_fal_behind_a_proxy_refuses_fals_queue_host() -> None:
    provider = FalProvider("fal", FalOptions(base_url="https://fal-proxy.internal.example", api_key="k" * 20),
                           ProviderContext(max_image_pixels=10**8))  # fmt: skip
    with pytest.raises(UpstreamError) as info:
        provider.checked_url("https://queue.fal.run/fal-ai/flux/requests/r1/status", "status_url")
    assert info.value.code == "invalid_upstream_response"
    assert provider.checked_url("https://fal-proxy.internal.example/fal-ai/flux/requests/r1/status", "status_url")
