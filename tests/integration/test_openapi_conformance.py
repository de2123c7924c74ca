"""The API keeps its word: schemathesis generates requests from imagegate's own
``/openapi.json`` (every operation) and from OpenAI's published spec (the
images operations), sends them to a running server and checks every answer
against the document.

It runs schemathesis' engine (what its command line runs: the examples,
coverage and fuzzing phases, two workers), bounded to stay cheap: a few
examples per operation, a fixed seed, no shrinking. A failure lists each
broken check with a curl command that reproduces it. (Its pytest plugin's
lazy fixtures do not run under pytest 9.2.)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from cryptography.fernet import Fernet
from hypothesis import strategies as st
from schemathesis.engine import Status, events, from_schema

from support import BASE_CONFIG, Running, make_image, run_server

MASTER = "master-key-0123456789abcdef"
ENCRYPTION_KEY = Fernet.generate_key().decode()
AUTH = {"Authorization": f"Bearer {MASTER}"}
# OpenAI's spec: in CI the repository has shared/ beside it; a copy of its images part ships with the tests.
_SHARED_SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "openai-openapi.yaml"
_OWN_COPY = Path(__file__).resolve().parents[1] / "data" / "openai-images.yaml"

OWN_CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "unsupported_method",  # with allow_header_conformance: a 405 lists every method of the path
    "allow_header_conformance",
    "ignored_auth",  # operations that declare a key refuse requests without one
    "missing_required_header",
)


# Image parts get real images (64x64 RGBA and 32x32 RGB PNGs), so edits and variations get past decoding.
schemathesis.openapi.media_type("image/png", st.sampled_from([make_image(64, 64, "PNG", "RGBA"), make_image(32, 32)]))


@schemathesis.check
def errors_use_openais_envelope(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Any error answer (OpenAI's spec documents none) is OpenAI's ErrorResponse."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), error
    assert all(error[k] is None or isinstance(error[k], str) for k in ("type", "param", "code")), error
    return None


def _config(
    *, checks: tuple[str, ...], max_examples: int, base_url: str, headers: dict[str, str] | None = None
) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": 20260601,
            "base-url": base_url,
            "headers": headers or {},
            "workers": 2,
            "generation": {"max-examples": max_examples, "database": "none", "no-shrink": True},
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in checks}},
        }
    )


def run(schema: Any) -> tuple[int, list[str], dict[str, set[str]]]:
    """Run every phase; return how many checks ran, the failures, and what
    each operation answered ("200 text/event-stream", "400 application/json")."""
    ran, failures, answers = 0, [], {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    media = (interaction.response.headers.get("content-type") or [""])[0].split(";")[0]
                    answers.setdefault(event.recorder.label, set()).add(f"{interaction.response.status_code} {media}")
            for checks in event.recorder.checks.values():
                for check in checks:
                    ran += 1
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        info = check.failure_info
                        failures.append(f"{event.recorder.label}: {check.name}: {info.failure.title}\n"
                                        f"{info.failure.message}\n{info.code_sample}")  # fmt: skip
        elif isinstance(event, events.NonFatalError | events.FatalError):
            failures.append(f"schemathesis error: {event!r}")
        elif isinstance(event, events.EngineFinished):
            assert event.stop_reason == "completed", event.stop_reason
    return ran, failures, answers


@pytest.fixture(scope="module")
def own_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    config = {**BASE_CONFIG, "auth": {"master_key": MASTER, "encryption_key": ENCRYPTION_KEY}}
    with run_server(config, tmp_path_factory.mktemp("own-openapi")) as running:
        yield running


def test_the_document_describes_answers_errors_and_keys(own_api: Running) -> None:
    doc = httpx.get(f"{own_api.base_url}/openapi.json").json()
    assert "422" not in str(doc) and "HTTPValidationError" not in doc["components"]["schemas"]
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "portkeyApiKey"}
    assert doc["components"]["securitySchemes"]["portkeyApiKey"]["name"] == "x-portkey-api-key"
    for name, stream in (("generations", "image_generation"), ("edits", "image_edit"), ("variations", None)):
        op = doc["paths"][f"/v1/images/{name}"]["post"]
        assert op["security"] == [{"bearer": []}, {"portkeyApiKey": []}]  # keys are required on this server
        ok = op["responses"]["200"]
        assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ImagesResponse"}
        if stream:
            events_ = ok["content"]["text/event-stream"]["schema"]["oneOf"]
            assert [e["properties"]["event"]["const"] for e in events_] == [
                f"{stream}.partial_image",
                f"{stream}.completed",
                "error",
            ]
        else:
            assert "text/event-stream" not in ok["content"]
        assert {"x-request-id", "x-imagegate-cost-usd", "x-imagegate-provider", "x-imagegate-attempts"} <= set(ok["headers"])
        errors = {s for s in op["responses"] if s.startswith(("4", "5"))}
        assert errors == {"400", "401", "403", "404", "409", "410", "413", "415", "429", "499", "500", "501", "502", "503", "504"}
        for status in errors - {"499"}:
            assert op["responses"][status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"
            }
        assert {p["name"] for p in op["parameters"]} == {"x-portkey-virtual-key", "Idempotency-Key"}
        body = next(iter(op["requestBody"]["content"].values()))["schema"]["properties"]
        assert body["seed"]["x-imagegate-extension"] is True and "unsupported_parameter" in body["seed"]["description"]
    admin = doc["paths"]["/admin/keys/{ref}"]["patch"]
    assert set(admin["responses"]) == {"200", "400", "401", "403", "404", "413", "500", "503"}
    assert admin["operationId"] == "update_key"
    assert doc["paths"]["/admin/usage"]["get"]["responses"]["200"]["content"].keys() == {"application/json", "text/csv"}
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert set(doc["paths"]["/v1/images/files/{key}"]["get"]["responses"]["200"]["content"]) == {
        "image/png",
        "image/jpeg",
        "image/webp",
    }


def test_every_answer_matches_the_servers_own_openapi_document(own_api: Running) -> None:
    config = _config(checks=OWN_CHECKS, max_examples=6, base_url=own_api.base_url, headers=AUTH)
    schema = schemathesis.openapi.from_url(f"{own_api.base_url}/openapi.json", config=config)
    assert len(list(schema.get_all_operations())) >= 25
    ran, failures, answers = run(schema)
    assert not failures, "\n\n".join(failures)
    assert ran > 5000, f"only {ran} checks ran"
    # Not only refusals were checked: images, event streams, a created key.
    for op in ("POST /v1/images/generations", "POST /v1/images/edits"):
        assert {"200 application/json", "200 text/event-stream"} <= answers[op], (op, answers[op])
    assert "200 application/json" in answers["POST /v1/images/variations"]
    assert "201 application/json" in answers["POST /admin/keys"]


# -- OpenAI's spec, images operations ---------------------------------------------

IMAGES_PATHS = ("/images/generations", "/images/edits", "/images/variations")


def openai_images_spec() -> dict[str, Any]:
    """OpenAI's spec cut to the images operations and the schemas they use:
    the copy in tests/data (kept equal to shared/spec's images part by the
    test below)."""
    return yaml.load(_OWN_COPY.read_text(), Loader=yaml.CSafeLoader)


def cut_images_part(full: dict[str, Any]) -> dict[str, Any]:
    paths = {p: full["paths"][p] for p in IMAGES_PATHS}
    schemas = full["components"]["schemas"]
    needed: set[str] = set()
    todo: list[Any] = [paths]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in needed:
                    needed.add(name)
                    todo.append(schemas[name])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    needed |= {"Error", "ErrorResponse"}
    return {
        "openapi": full["openapi"],
        "info": {"title": "OpenAI API, images operations", "version": full["info"]["version"]},
        "paths": copy.deepcopy(paths),
        "components": {"schemas": {n: copy.deepcopy(schemas[n]) for n in sorted(needed)}},
    }


def _for_schemathesis(spec: dict[str, Any]) -> dict[str, Any]:
    """Two things OpenAI's spec says in its own way, said schemathesis' way.

    * Image parts "must be a valid PNG file" (prose): an ``encoding`` says
      so, and the PNG strategy above fills them.
    * A ``text/event-stream`` schema there describes each event's *data*
      (the pre-3.2 habit); schemathesis reads it as the whole event (its
      ``event`` and ``data`` fields). So: the data is JSON matching OpenAI's
      own event schema."""
    for item in spec["paths"].values():
        for op in item.values():
            multipart = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if multipart is not None:
                multipart["encoding"] = {"image": {"contentType": "image/png"}, "mask": {"contentType": "image/png"}}
            for response in op.get("responses", {}).values():
                stream = response.get("content", {}).get("text/event-stream")
                if stream is not None:
                    stream["schema"] = {
                        "type": "object",
                        "properties": {
                            "event": {"type": "string"},
                            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": stream["schema"]},
                        },
                        "required": ["data"],
                    }
    return spec


# The models OpenAI's spec names, served by the offline test provider; no
# default model, so a request without one gets the catalog's default, as at OpenAI.
OPENAI_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5")


@pytest.fixture(scope="module")
def openai_like_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    config = {
        "storage": BASE_CONFIG["storage"],
        "providers": {"demo": {"type": "test-pattern"}},
        "models": {m: [{"provider": "demo"}] for m in OPENAI_MODELS},
    }
    with run_server(config, tmp_path_factory.mktemp("openai-spec")) as running:
        yield running


def test_openai_spec_requests_get_no_5xx_and_answers_within_its_schema(openai_like_api: Running) -> None:
    config = _config(
        checks=("not_a_server_error", "response_schema_conformance", "errors_use_openais_envelope"),
        max_examples=30,
        base_url=f"{openai_like_api.base_url}/v1",
    )
    schema = schemathesis.openapi.from_dict(_for_schemathesis(openai_images_spec()), config=config)
    ran, failures, answers = run(schema)
    assert not failures, "\n\n".join(failures)
    assert ran > 1000, f"only {ran} checks ran"
    # Images were checked against OpenAI's ImagesResponse, not only refusals. (Its edits
    # rarely pass validation by chance: the own-document test above covers their answers.)
    for op in ("POST /images/generations", "POST /images/variations"):
        assert "200 application/json" in answers[op], (op, answers[op])


def test_the_copy_of_openais_images_part_is_current() -> None:
    """tests/data/openai-images.yaml is the images part of the shared spec
    (the copy lets the suite run where shared/ is not beside the repository)."""
    if not _SHARED_SPEC.exists():
        pytest.skip("shared/spec is not beside the repository; the copy in tests/data is used")
    current = cut_images_part(yaml.load(_SHARED_SPEC.read_text(), Loader=yaml.CSafeLoader))
    assert openai_images_spec() == current, (
        "shared/spec/openai-openapi.yaml changed: write its images part to tests/data/openai-images.yaml "
        "with cut_images_part() (see the file's first lines)"
    )


# -- what the fuzzing found ---------------------------------------------------------


def test_huge_budgets_and_limits_are_a_400_not_a_500(own_api: Running) -> None:
    with httpx.Client(base_url=own_api.base_url, headers=AUTH) as http:
        for body, param in (
            ({"name": "x", "budget_usd": 1.6e308}, "budget_usd"),
            ({"name": "x", "rpm": 10**30}, "rpm"),
            ({"name": "x", "ipm": 10**12}, "ipm"),
        ):
            r = http.post("/admin/keys", json=body)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == param
        r = http.put("/admin/teams/big", json={"budget_usd": 1e300})
        assert r.status_code == 400 and r.json()["error"]["param"] == "budget_usd"
