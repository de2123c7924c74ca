"""The example provider of docs/providers.md, run: the page shows the module
exactly as it is (so it cannot rot), and the module serves its catalog entry
through the real server to the official SDK, against its stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from example_provider import ExampleProvider
from standin_openai import USAGE, Fault, OpenAIStandIn

from imagegate.providers import registry
from support import Running, decode_b64, make_image, run_server

ROOT = Path(__file__).resolve().parents[2]
KEY = "example-upstream-key-0123456789"


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as up:
        yield up


@pytest.fixture(scope="module")
def gw(upstream: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    registry.register(ExampleProvider.type_name, "example_provider:ExampleProvider")
    cfg = {
        "providers": {"ex": {"type": "example", "base_url": upstream.base_url, "api_key": KEY}},
        "models": {"example-1": [{"provider": "ex"}], "pictures": [{"provider": "ex", "model": "example-1"}]},
    }
    try:
        with run_server(cfg, tmp_path_factory.mktemp("example")) as running:
            yield running
    finally:
        registry.unregister(ExampleProvider.type_name)


@pytest.fixture(autouse=True)
def _fresh(upstream: OpenAIStandIn) -> None:
    upstream.received.clear()
    upstream.script.clear()


def test_the_page_shows_the_example_module_as_it_is() -> None:
    page = (ROOT / "docs" / "providers.md").read_text()
    source = (ROOT / "tests" / "example_provider.py").read_text()
    assert f"```python\n{source}```\n" in page


def test_the_example_generates_through_the_sdk(gw: Running, upstream: OpenAIStandIn) -> None:
    result = gw.sdk().images.generate(model="pictures", prompt="a lighthouse", size="512x512", n=2)
    assert [decode_b64(d.b64_json or "").size for d in result.data] == [(512, 512)] * 2
    assert result.usage is not None and result.usage.total_tokens == USAGE["total_tokens"]
    (sent,) = upstream.received
    assert sent.path == "/v1/images/generations"
    assert sent.json == {"model": "example-1", "prompt": "a lighthouse", "size": "512x512", "n": 2}
    assert sent.headers["x-api-key"] == KEY and "authorization" not in sent.headers


def test_its_catalog_entry_decides_what_reaches_it(gw: Running, upstream: OpenAIStandIn) -> None:
    client = gw.sdk()
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="example-1", prompt="x", size="1536x1024")
    assert info.value.param == "size"
    with pytest.raises(openai.BadRequestError):
        client.images.edit(model="example-1", prompt="x", image=("a.png", make_image(), "image/png"))
    assert upstream.received == []


def test_upstream_errors_come_back_through_the_base(gw: Running, upstream: OpenAIStandIn) -> None:
    refusal = {
        "error": {"message": "The prompt was refused.", "type": "invalid_request_error", "param": "prompt", "code": "refused"}
    }
    rejected = Fault("status", 401, {"error": {"message": f"bad key {KEY}"}})
    upstream.script.extend([Fault("status", 400, refusal), *[rejected] * 3])  # a 502 is retried: three attempts by default
    client = gw.sdk()
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(model="example-1", prompt="x")
    assert bad.value.body == refusal["error"]
    with pytest.raises(openai.APIStatusError) as auth:
        client.images.generate(model="example-1", prompt="x")
    assert auth.value.status_code == 502 and auth.value.code == "upstream_auth_error"
    assert KEY not in auth.value.response.text
