"""``example``: the smallest complete hosted provider (docs/providers.md shows it).

Its upstream speaks OpenAI's ``POST /images/generations`` (JSON in,
``ImagesResponse`` out, errors in OpenAI's envelope: see
https://platform.openai.com/docs/api-reference/images/create) and takes its
key in an ``x-api-key`` header. Generations only. Its stand-in is
``tests/standin_openai.py``; its test, ``tests/integration/test_example_provider.py``.
"""

from __future__ import annotations

from typing import ClassVar

from imagegate.contract.catalog import GENERATIONS, ModelSpec, register
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment, ProviderResult
from imagegate.errors import InvalidRequestError
from imagegate.providers.http import HostedOptions, HostedProvider
from imagegate.providers.openai import wire

# The catalog entry: what validation lets through to this provider's model.
EXAMPLE_1 = register(
    ModelSpec(
        name="example-1",
        endpoints=frozenset({GENERATIONS}),
        sizes=("1024x1024", "512x512"),
        default_size="1024x1024",
        qualities=("auto",),
        default_quality="auto",
        prompt_max=4000,
        n_max=4,
    )
)


class ExampleOptions(HostedOptions):
    auth_header: ClassVar[str] = "x-api-key"  # the credential's header...
    auth_prefix: ClassVar[str] = ""  # ...holds the bare key
    base_url: str = "https://images.example.com/v1"


class ExampleProvider(HostedProvider):
    type_name: ClassVar[str] = "example"
    options_model = ExampleOptions

    async def generate(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        body = wire.json_body(request, deployment.model)  # the fields as sent, the upstream's model name
        call = self.build("POST", "/images/generations", deployment, content=body, headers={"Content-Type": "application/json"})
        async with self.exchange(call, deployment) as response:
            payload = wire.parse_json(self.name, await self.read(response))
        images = [wire.decode_image(self.name, item.get("b64_json"), request) for item in wire.result_items(self.name, payload)]
        return wire.build_result(self.name, images, payload)

    async def edit(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        raise InvalidRequestError(f"'{request.model}' only generates.", param="model", code="unsupported_endpoint")

    variation = edit
