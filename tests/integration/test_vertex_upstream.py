"""The ``vertex`` provider through the real server, called with the official
``openai`` SDK: Google's image models at Vertex AI's path
(``/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:{method}``)
with a bearer token minted from a service account's JSON key at a stand-in
token endpoint that verifies the signed assertion (tests/standin_google_oauth.py).
One token serves many calls, one close to expiry is minted again, concurrent
first calls mint once, a refused grant is a 502 without secrets, a token
Vertex refuses is replaced and the call sent once more, the token never
leaks in an error, Vertex-only fields reach Imagen's ``parameters`` in
camelCase (and are a 400 on the ``gemini`` provider), and config mistakes
fail ``imagegate check-config`` naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from standin_google import KEY, MODELS, Fault, GoogleStandIn, Model, Received, google_error
from standin_google_oauth import OAuthStandIn, private_key_pem

from support import SIGNING_KEY, Running, decode_b64, run_server

PROJECT, LOCATION = "standin-project", "europe-west4"
# Imagen 3 takes negativePrompt (Imagen 4 does not): the stand-in serves it like Imagen 4 Fast.
VERTEX_MODELS = {**MODELS, "imagen-3.0-fast-generate-001": Model("predict", ("1:1", "3:4", "4:3", "9:16", "16:9"), {}, 0)}
VERTEX_FIELDS = frozenset({"addWatermark", "enhancePrompt", "seed", "negativePrompt", "allow_all"})
UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid "
    "authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


class VertexStandIn(GoogleStandIn):
    """Google's stand-in (tests/standin_google.py) on Vertex AI's path only,
    taking the Vertex-only Imagen parameters, and accepting only a bearer
    token the token endpoint issued and that has not expired: otherwise 401
    ``UNAUTHENTICATED`` as Vertex answers
    (https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/imagen-api,
    https://cloud.google.com/apis/design/errors). ``refuse_all`` refuses
    every token (a service account disabled after its token was minted)."""

    def __init__(self, oauth: OAuthStandIn) -> None:
        super().__init__(parameters_extra=VERTEX_FIELDS, models=VERTEX_MODELS, vertex_only=True)
        self.oauth = oauth
        self.refuse_all = False
        self.base_url = f"{self.origin}/v1"

    def authorize(self, rec: Received) -> Fault | None:
        auth = rec.headers.get("authorization", "")
        if "x-goog-api-key" in rec.headers or not auth.startswith("Bearer "):
            return google_error(401, "UNAUTHENTICATED", UNAUTHENTICATED)
        if self.refuse_all or not self.oauth.valid(auth.removeprefix("Bearer ")):
            return google_error(401, "UNAUTHENTICATED", UNAUTHENTICATED)
        return None

    def reset(self) -> None:
        super().reset()
        self.refuse_all = False


def _vertex(base_url: str, account: dict[str, str], **more: Any) -> dict[str, Any]:
    return {"type": "vertex", "project": PROJECT, "location": LOCATION, "base_url": base_url,
            "credentials_json": json.dumps(account), **more}  # fmt: skip


def gateway_config(oauth: OAuthStandIn, vertex: VertexStandIn, gemini: GoogleStandIn, key_file: Path) -> dict[str, Any]:
    account = oauth.account()
    imagen = {"rules": "vertex/imagen-4.0-fast-generate-001"}
    return {
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {"max_attempts": 1},
        "providers": {
            "vx": _vertex(vertex.base_url, account),
            "vx-file": {
                **{k: v for k, v in _vertex(vertex.base_url, account).items() if k != "credentials_json"},
                "credentials_file": str(key_file),
            },  # fmt: skip
            "vx-short": _vertex(vertex.base_url, account),
            "vx-burst": _vertex(vertex.base_url, account),
            "vx-denied": _vertex(vertex.base_url, account),
            "gemini": {"type": "gemini", "base_url": gemini.base_url, "api_key": KEY},
        },
        "catalog": {
            "imagen-3.0-fast-generate-001": {
                "extends": "vertex/imagen-4.0-fast-generate-001",
                "source": "https://cloud.google.com/vertex-ai/generative-ai/docs/image/omit-content-using-a-negative-prompt",
                "extra_fields": {"negative_prompt": {"type": "str", "max_length": 2000}},
                "price": {"per_image": 0.02},
            }
        },
        "models": {
            "gemini-2.5-flash-image": [{"provider": "vx"}],
            "imagen-4.0-fast-generate-001": {**imagen, "deployments": [{"provider": "vx"}]},
            "imagen-3.0-fast-generate-001": [{"provider": "vx"}],
            "imagen-file": {**imagen, "deployments": [{"provider": "vx-file", "model": "imagen-4.0-fast-generate-001"}]},
            "imagen-short": {**imagen, "deployments": [{"provider": "vx-short", "model": "imagen-4.0-fast-generate-001"}]},
            "imagen-burst": {**imagen, "deployments": [{"provider": "vx-burst", "model": "imagen-4.0-fast-generate-001"}]},
            "imagen-denied": {**imagen, "deployments": [{"provider": "vx-denied", "model": "imagen-4.0-fast-generate-001"}]},
            "imagen-gemini": [{"provider": "gemini", "model": "imagen-4.0-fast-generate-001"}],
        },
    }


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OAuthStandIn, VertexStandIn, GoogleStandIn, Running]]:
    tmp = tmp_path_factory.mktemp("vertex")
    with OAuthStandIn() as oauth, VertexStandIn(oauth) as vertex, GoogleStandIn() as gemini:
        key_file = tmp / "service-account.json"
        key_file.write_text(json.dumps(oauth.account()))
        with run_server(gateway_config(oauth, vertex, gemini, key_file), tmp / "server") as running:
            yield oauth, vertex, gemini, running


@pytest.fixture
def oauth(servers: tuple[OAuthStandIn, VertexStandIn, GoogleStandIn, Running]) -> OAuthStandIn:
    servers[0].reset()
    return servers[0]


@pytest.fixture
def up(servers: tuple[OAuthStandIn, VertexStandIn, GoogleStandIn, Running]) -> VertexStandIn:
    servers[1].reset()
    return servers[1]


@pytest.fixture
def gemini(servers: tuple[OAuthStandIn, VertexStandIn, GoogleStandIn, Running]) -> GoogleStandIn:
    servers[2].reset()
    return servers[2]


@pytest.fixture
def sdk(servers: tuple[OAuthStandIn, VertexStandIn, GoogleStandIn, Running]) -> openai.OpenAI:
    return servers[3].sdk()


def _path(model: str, method: str) -> str:
    return f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{model}:{method}"


def _bearer(rec: Received) -> str:
    return rec.headers["authorization"].removeprefix("Bearer ")


# -- the two methods, at Vertex's path, with a valid token ---------------------------------------


def test_a_gemini_image_model_is_called_at_vertexs_path_with_a_minted_token(
    oauth: OAuthStandIn, up: VertexStandIn, sdk: openai.OpenAI
) -> None:
    up.usage = {"promptTokenCount": 10, "candidatesTokenCount": 1290, "totalTokenCount": 1300,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}],
                "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}]}  # fmt: skip
    raw = sdk.images.with_raw_response.generate(model="gemini-2.5-flash-image", prompt="a lighthouse", size="1536x1024")
    img = decode_b64(raw.parse().data[0].b64_json or "")
    assert (img.format, img.size, img.mode) == ("PNG", (1536, 1024), "RGB")
    [rec] = up.received
    assert rec.path == _path("gemini-2.5-flash-image", "generateContent")
    assert "x-goog-api-key" not in rec.headers and oauth.valid(_bearer(rec))
    assert rec.json["generationConfig"]["imageConfig"] == {"aspectRatio": "3:2"}
    # $0.30 per 1M text input tokens, $30 per 1M image output tokens (google.yaml)
    assert raw.headers["x-imagegate-cost-usd"] == f"{(10 * 0.30 + 1290 * 30.0) / 1e6:.6f}"


def test_imagen_is_called_with_predict_and_n_images_are_charged(
    oauth: OAuthStandIn, up: VertexStandIn, sdk: openai.OpenAI
) -> None:
    raw = sdk.images.with_raw_response.generate(model="imagen-4.0-fast-generate-001", prompt="a fox", n=2, size="1024x1024")
    data = raw.parse().data
    assert [decode_b64(d.b64_json or "").size for d in data] == [(1024, 1024)] * 2
    [rec] = up.received
    assert rec.path == _path("imagen-4.0-fast-generate-001", "predict") and oauth.valid(_bearer(rec))
    assert rec.json["parameters"]["sampleCount"] == 2 and rec.json["instances"] == [{"prompt": "a fox"}]
    assert raw.headers["x-imagegate-cost-usd"] == "0.040000"


def test_a_key_file_serves_like_the_inline_json(oauth: OAuthStandIn, up: VertexStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="imagen-file", prompt="a kite")
    assert up.received[0].path == _path("imagen-4.0-fast-generate-001", "predict")
    assert oauth.valid(_bearer(up.received[0]))


# -- tokens ------------------------------------------------------------------------------------


def test_several_calls_share_one_token(oauth: OAuthStandIn, up: VertexStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="imagen-4.0-fast-generate-001", prompt="warm up")  # vx has a token from here on
    minted = len(oauth.mints())
    for i in range(4):
        sdk.images.generate(model="imagen-4.0-fast-generate-001", prompt=f"call {i}")
    assert len(oauth.mints()) == minted <= 1
    assert len({_bearer(r) for r in up.received}) == 1 and len(up.received) == 5


def test_a_token_close_to_expiry_is_minted_again(oauth: OAuthStandIn, up: VertexStandIn, sdk: openai.OpenAI) -> None:
    oauth.expires_in = 120  # inside google-auth's refresh threshold (3 min 45 s) from the start
    sdk.images.generate(model="imagen-short", prompt="one")
    sdk.images.generate(model="imagen-short", prompt="two")
    assert len(oauth.mints()) == 2
    first, second = (_bearer(r) for r in up.received)
    assert first != second and oauth.valid(second)


def test_concurrent_first_calls_mint_one_token(oauth: OAuthStandIn, up: VertexStandIn, sdk: openai.OpenAI) -> None:
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            sdk.images.generate(model="imagen-burst", prompt=f"burst {i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(up.received) == 8
    assert len(oauth.mints()) == 1 and len({_bearer(r) for r in up.received}) == 1


def test_a_refused_grant_is_a_502_without_secrets(oauth: OAuthStandIn, up: VertexStandIn, sdk: openai.OpenAI) -> None:
    oauth.script.append("invalid_grant")  # its description quotes the signed assertion
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.images.generate(model="imagen-denied", prompt="no")
    err = caught.value
    assert err.status_code == 502 and err.body["code"] == "upstream_auth_error"  # type: ignore[index]
    message: str = err.body["message"]  # type: ignore[index]
    assert "'vx-denied'" in message and "invalid_grant" in message
    assertion = oauth.received[0].form["assertion"]
    for secret in (assertion, assertion.split(".")[2], "Invalid JWT", private_key_pem()[40:80]):
        assert secret not in err.response.text
    assert up.received == []  # Vertex was never called
    sdk.images.generate(model="imagen-denied", prompt="again")  # the next call mints
    assert len(oauth.mints()) == 1


def test_a_token_vertex_refuses_is_replaced_and_the_call_sent_once_more(
    oauth: OAuthStandIn, up: VertexStandIn, sdk: openai.OpenAI
) -> None:
    sdk.images.generate(model="imagen-4.0-fast-generate-001", prompt="before")
    old = _bearer(up.received[-1])
    oauth.revoke(old)  # still fresh for google-auth; Vertex now answers 401
    raw = sdk.images.with_raw_response.generate(model="imagen-4.0-fast-generate-001", prompt="after")
    assert raw.http_response.status_code == 200 and raw.headers["x-imagegate-attempts"] == "1"
    refused, resent = up.received[-2:]
    assert _bearer(refused) == old and _bearer(resent) != old and oauth.valid(_bearer(resent))
    assert refused.json == resent.json and len(oauth.mints()) == 1


def test_a_second_401_is_a_502_and_the_token_is_dropped(oauth: OAuthStandIn, up: VertexStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="imagen-4.0-fast-generate-001", prompt="before")
    up.reset()
    up.refuse_all = True
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.images.generate(model="imagen-4.0-fast-generate-001", prompt="refused")
    assert caught.value.status_code == 502 and caught.value.body["code"] == "upstream_auth_error"  # type: ignore[index]
    assert len(up.received) == 2 and len(oauth.mints()) == 1
    tokens = [_bearer(r) for r in up.received]
    assert tokens[0] != tokens[1] and not any(t in caught.value.response.text for t in tokens)
    up.refuse_all = False
    sdk.images.generate(model="imagen-4.0-fast-generate-001", prompt="later")  # the refused token was dropped
    assert len(oauth.mints()) == 2 and _bearer(up.received[-1]) not in tokens


def test_the_token_never_leaks_in_an_error(oauth: OAuthStandIn, up: VertexStandIn, sdk: openai.OpenAI) -> None:
    sdk.images.generate(model="imagen-4.0-fast-generate-001", prompt="before")
    token = _bearer(up.received[-1])
    up.script.append(google_error(400, "INVALID_ARGUMENT", f"Request {token} is invalid (token={token})."))
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(model="imagen-4.0-fast-generate-001", prompt="echo")
    assert token not in caught.value.response.text and "[redacted]" in caught.value.body["message"]  # type: ignore[index]


def test_a_403_is_a_502_naming_the_role(up: VertexStandIn, sdk: openai.OpenAI) -> None:
    up.script.append(google_error(403, "PERMISSION_DENIED", "Permission 'aiplatform.endpoints.predict' denied on resource"))
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.images.generate(model="imagen-4.0-fast-generate-001", prompt="denied")
    body = caught.value.body
    assert body["code"] == "upstream_auth_error" and "Vertex AI User" in body["message"]  # type: ignore[index]
    assert PROJECT in body["message"] and "aiplatform.endpoints" not in body["message"]  # type: ignore[index]
    assert len(up.received) == 1  # a 403 is not a stale token: not sent again


# -- Vertex-only fields ------------------------------------------------------------------------


def test_vertex_only_fields_reach_imagens_parameters_in_camel_case(up: VertexStandIn, sdk: openai.OpenAI) -> None:
    extra = {"add_watermark": False, "enhance_prompt": False, "seed": 1234, "person_generation": "allow_all"}
    sdk.images.generate(model="imagen-4.0-fast-generate-001", prompt="a pier", extra_body=extra)
    params = up.received[0].json["parameters"]
    assert {k: params[k] for k in ("addWatermark", "enhancePrompt", "seed", "personGeneration")} == {
        "addWatermark": False, "enhancePrompt": False, "seed": 1234, "personGeneration": "allow_all"
    }  # fmt: skip
    sdk.images.generate(model="imagen-3.0-fast-generate-001", prompt="a pizza", extra_body={"negative_prompt": "pepperoni"})
    assert up.received[1].json["parameters"]["negativePrompt"] == "pepperoni"
    assert up.received[1].path == _path("imagen-3.0-fast-generate-001", "predict")


def test_a_seed_with_the_watermark_on_is_a_400_before_any_call(up: VertexStandIn, sdk: openai.OpenAI) -> None:
    for extra in ({"seed": 7}, {"seed": 7, "add_watermark": True}):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.images.generate(model="imagen-4.0-fast-generate-001", prompt="x", extra_body=extra)
        assert caught.value.body["param"] == "seed"  # type: ignore[index]
    assert up.received == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("add_watermark", False), ("enhance_prompt", True), ("seed", 3), ("negative_prompt", "cats")],
)
def test_vertex_only_fields_on_the_gemini_api_are_a_400_naming_them(
    gemini: GoogleStandIn, up: VertexStandIn, sdk: openai.OpenAI, field: str, value: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(model="imagen-gemini", prompt="x", extra_body={field: value})
    assert caught.value.body["param"] == field  # type: ignore[index]
    assert gemini.received == [] and up.received == []
    # and without them the same model on the Gemini API works
    sdk.images.generate(model="imagen-gemini", prompt="x")
    assert gemini.received[0].path == "/v1beta/models/imagen-4.0-fast-generate-001:predict"


# -- config --------------------------------------------------------------------------------------


def _check_config(tmp_path: Path, vertex: dict[str, Any], **models: Any) -> subprocess.CompletedProcess[str]:
    config = {
        "providers": {"demo": {"type": "test-pattern"}, "vx": {"type": "vertex", **vertex}},
        "models": {"test-pattern": [{"provider": "demo"}], **models},
    }
    path = tmp_path / "imagegate.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "imagegate", "check-config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_config_mistakes_fail_check_config_naming_the_key(oauth: OAuthStandIn, tmp_path: Path) -> None:
    account = json.dumps(oauth.account())
    key_file = tmp_path / "sa.json"
    key_file.write_text(account)
    wrong_type = json.dumps({**oauth.account(), "type": "authorized_user"})
    cases = [
        ({"project": PROJECT}, "providers.vx.credentials_json: give credentials_file or credentials_json"),
        (
            {"project": PROJECT, "credentials_json": account, "credentials_file": str(key_file)},
            "providers.vx.credentials_json: give credentials_file or credentials_json, not both",
        ),
        ({"project": PROJECT, "credentials_json": "{not json"}, "providers.vx.credentials_json: not JSON"),
        ({"project": PROJECT, "credentials_json": wrong_type}, "providers.vx.credentials_json: not a service account"),
        ({"project": PROJECT, "credentials_file": str(tmp_path / "nope.json")}, "providers.vx.credentials_file: cannot read"),
        ({"credentials_json": account}, "providers.vx.project: Field required"),
        (
            {"project": PROJECT, "credentials_json": account, "api_key": "AIza-not-for-vertex-0123456789"},
            "providers.vx.api_key: Vertex AI is called with a service account",
        ),
        ({"project": PROJECT, "credentials_json": account, "location": "us-central1.evil.example/"}, "providers.vx.location:"),
    ]
    for vertex, says in cases:
        done = _check_config(tmp_path, vertex)
        assert done.returncode == 2, (vertex, done.stdout, done.stderr)
        assert says in done.stderr, done.stderr
        assert "PRIVATE KEY" not in done.stderr and "AIza-not-for-vertex" not in done.stderr
    done = _check_config(tmp_path, {"project": PROJECT, "credentials_file": str(key_file), "location": "global"})
    assert done.returncode == 0, done.stderr
    # a vertex/ catalog name is no upstream model: the deployment must name one
    named = {"vertex/imagen-4.0-fast-generate-001": [{"provider": "vx"}]}
    done = _check_config(tmp_path, {"project": PROJECT, "credentials_json": account}, **named)
    assert done.returncode == 2 and "set the deployment's model (e.g. model: imagen-4.0-fast-generate-001)" in done.stderr
    named = {"vertex/imagen-4.0-fast-generate-001": [{"provider": "vx", "model": "imagen-4.0-fast-generate-001"}]}
    assert _check_config(tmp_path, {"project": PROJECT, "credentials_json": account}, **named).returncode == 0
