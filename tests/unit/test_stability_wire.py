"""Stability's wire format without a server: the catalog's wire facts and
extension fields checked when a config names a model (check_route), seeds,
ratios, the multipart body, and Stability's error bodies."""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from imagegate.config import load_settings
from imagegate.contract import catalog
from imagegate.errors import ConfigError
from imagegate.gateway.routes import rules_for
from imagegate.providers.stability import StabilityOptions, StabilityProvider, wire

OPTIONS = StabilityOptions(api_key="k")
# Credits per image (1 credit = $0.01), each method's "Credits" section in Stability's API reference.
CREDITS = {
    "stable-image-ultra": "8", "stable-image-core": "3", "sd3.5-large": "6.5", "sd3.5-large-turbo": "4",
    "sd3.5-medium": "3.5", "sd3.5-flash": "2.5", "stability-inpaint": "5", "stability-outpaint": "4",
    "stability-erase": "5", "stability-search-and-replace": "5", "stability-search-and-recolor": "5",
    "stability-remove-background": "5",
}  # fmt: skip


def spec(name: str) -> catalog.ModelSpec:
    found = catalog.lookup(name)
    assert found is not None
    return found


@pytest.mark.parametrize("name", sorted(CREDITS))
def test_every_shipped_model_names_its_method_and_costs_its_credits(name: str) -> None:
    StabilityProvider.check_route(OPTIONS, spec(name), name)
    entry = catalog.shipped().entry(name)
    assert entry.price is not None and isinstance(entry.price.per_image, float)
    assert Decimal(str(entry.price.per_image)) == Decimal(CREDITS[name]) / 100


@pytest.mark.parametrize(
    "wire_facts,extra,message",
    [
        ({}, None, r"wire\.path: Field required"),
        ({"path": "generate/sd4"}, None, r"wire\.path: Input should be"),
        ({"path": "generate/sd3"}, None, "generate/sd3 needs model"),
        ({"path": "generate/core", "model": "x"}, None, "generate/sd3 needs model"),
        ({"path": "generate/core", "colour": 1}, None, r"wire\.colour: Extra inputs"),
        ({"path": "edit/erase"}, "style_preset", "edit/erase takes no style_preset"),
    ],
)
def test_a_route_the_method_cannot_serve_stops_the_config(wire_facts: dict[str, object], extra: str | None, message: str) -> None:
    base = spec("stability-erase" if extra else "stable-image-core")
    fields = dict(base.extra_fields)
    if extra:
        fields[extra] = spec("stable-image-core").extra_fields[extra]
    changed = dataclasses.replace(base, wire=wire_facts, extra_fields=fields)
    with pytest.raises(ConfigError, match=message):
        StabilityProvider.check_route(OPTIONS, changed, "m")


def test_an_edit_method_listed_for_generations_stops_the_config() -> None:
    changed = dataclasses.replace(spec("stability-erase"), endpoints=frozenset({"generations", "edits"}))
    with pytest.raises(ConfigError, match="is an edit"):
        StabilityProvider.check_route(OPTIONS, changed, "m")


def test_seeds_stay_within_stabilitys_range_and_zero_stays_random() -> None:
    assert [wire.seed_for(7, i) for i in range(3)] == [7, 8, 9]
    assert wire.seed_for(wire.SEED_MAX, 1) == 1  # wraps past 0 (Stability's "random")
    assert [wire.seed_for(0, i) for i in range(3)] == [0, 0, 0]


@pytest.mark.parametrize(
    "size,ratio",
    [((1024, 1024), "1:1"), ((1792, 1024), "16:9"), ((1024, 1792), "9:16"), ((2048, 880), "21:9"), ((1000, 1240), "4:5")],
)
def test_a_size_becomes_the_nearest_ratio(size: tuple[int, int], ratio: str) -> None:
    assert wire.nearest_ratio(*size) == ratio


def test_the_body_is_multipart_with_text_fields_and_files() -> None:
    form = wire.Form(text={"prompt": 'é "quoted"', "seed": "3"}, files=[("image", "image.png", b"\x89PNG...", "image/png")])
    body, ctype = form.encode()
    assert ctype.startswith("multipart/form-data; boundary=")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
    parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
    assert set(parts) == {"prompt", "seed", "image"}
    assert parts["prompt"].get_payload(decode=True).decode() == 'é "quoted"' and parts["prompt"].get_filename() is None
    assert parts["image"].get_filename() == "image.png" and parts["image"].get_payload(decode=True) == b"\x89PNG..."


def test_stabilitys_error_bodies() -> None:
    fields = wire.error_fields(
        b'{"id": "a1", "name": "bad_request", "errors": ["aspect_ratio: must be one of 1:1", "seed: too big"]}'
    )
    assert fields is not None
    assert (fields.param, fields.code, fields.message) == (
        "aspect_ratio",
        "bad_request",
        "aspect_ratio: must be one of 1:1; seed: too big",
    )
    fields = wire.error_fields(b'{"id": "a1", "name": "content_moderation", "errors": ["Your request was flagged."]}')
    assert fields is not None and (fields.param, fields.code) == (None, "content_moderation")
    assert wire.error_fields(b"<html>bad gateway</html>") is None
    assert wire.error_fields(b'{"errors": []}') is None
    assert wire.client_param("aspect_ratio", {"aspect_ratio": "size"}) == "size"


def test_a_config_entry_without_a_method_is_refused_at_start(tmp_path: Path) -> None:
    config = {
        "providers": {"st": {"type": "stability", "api_key": "k"}},
        "catalog": {"my-sd": {"extends": "sd3.5-large", "wire": {"model": None}}},
        "models": {"my-sd": [{"provider": "st"}], "core": {"rules": "stable-image-core", "deployments": [{"provider": "st"}]}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path, environ={})
    assert rules_for(settings, "core").wire == {"path": "generate/core"}
    with pytest.raises(
        ConfigError, match=r"models\.my-sd\.deployments\.0: catalog entry 'my-sd': wire: generate/sd3 needs model"
    ):
        rules_for(settings, "my-sd")
