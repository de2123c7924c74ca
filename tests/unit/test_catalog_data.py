"""The catalog's data files and the config's catalog: entries: schema,
extends:, overrides, and the errors that name the entry and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imagegate.config import load_settings
from imagegate.contract import catalog
from imagegate.errors import ConfigError

OPENAI_MODELS = (
    "dall-e-2",
    "dall-e-3",
    "gpt-image-1",
    "gpt-image-1-all",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "chatgpt-image-latest",
    "gpt-image-2",
    "gpt-image-2-2026-04-21",
    "flux-kontext-pro",
    "flux-kontext-max",
)


def settings_with(tmp_path: Path, entries: dict[str, Any], **extra: Any) -> Any:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"catalog": entries, **extra}))
    return load_settings(path, environ={})


def test_every_shipped_model_has_rules_and_a_price() -> None:
    shipped = catalog.shipped()
    for name in OPENAI_MODELS:
        entry = shipped.entry(name)
        assert entry is not None and not entry.abstract and entry.price is not None, name
        assert entry.origin.startswith("shipped (") and entry.source, name
    for entry in shipped.entries():  # every entry of the data files names its source
        assert entry.source or not entry.origin.startswith("shipped ("), entry.name


def test_retired_dates_are_facts_of_one_name() -> None:
    retired = {name: catalog.lookup(name).retired for name in OPENAI_MODELS}  # type: ignore[union-attr]
    assert {k: str(v) for k, v in retired.items() if v} == {
        "dall-e-2": "2026-05-12",
        "dall-e-3": "2026-05-12",
        "gpt-image-1": "2026-10-23",
        "gpt-image-1-mini": "2026-12-01",
        "gpt-image-1.5": "2026-12-01",
    }  # gpt-image-1-all and chatgpt-image-latest extend retired entries without inheriting the date


def test_gpt_image_2_rules() -> None:
    spec = catalog.lookup("gpt-image-2")
    assert spec is not None and spec.free_size is not None
    assert spec.allows_size("3840x2160") is None and spec.allows_size("1536x864") is None
    assert "multiples of 16" in (spec.allows_size("1000x1000") or "")
    assert "aspect ratio" in (spec.allows_size("3840x1024") or "")
    assert spec.allows_size("2160x3840") is None and spec.allows_size("3856x2160") is not None
    snapshot = catalog.lookup("gpt-image-2-2026-04-21")
    assert snapshot is not None and snapshot.free_size == spec.free_size and snapshot.accepts == spec.accepts


def test_a_config_entry_extends_a_shipped_one(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path,
        {"mine": {"extends": "gpt-image-2", "sizes": ["1024x1024"], "free_size": None, "price": {"per_image": 0.05}}},
    )
    entry = catalog.effective(settings.catalog).entry("mine")
    assert entry is not None and entry.origin == "config"
    assert entry.spec.sizes == ("1024x1024",) and entry.spec.free_size is None
    assert entry.spec.accepts == catalog.lookup("gpt-image-2").accepts  # type: ignore[union-attr]
    assert entry.price is not None and entry.price.per_image == 0.05


def test_a_config_entry_named_like_a_shipped_one_changes_only_its_keys(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, {"gpt-image-2": {"n_max": 4, "qualities": ["auto", "low", "medium", "high", "xhigh"]}})
    entries = catalog.effective(settings.catalog)
    spec = entries.lookup("gpt-image-2")
    assert spec is not None and spec.n_max == 4 and "xhigh" in spec.qualities
    assert spec.free_size is not None and spec.free_size.max_edge == 3840  # kept
    entry = entries.entry("gpt-image-2")
    assert entry is not None and entry.price is not None and entry.price.image_output_per_1m == 30
    assert catalog.lookup("gpt-image-2").n_max == 10  # type: ignore[union-attr]  # the shipped entry is untouched


def test_extra_fields_merge_by_name_and_price_null_drops_the_inherited_price(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path,
        {
            "k": {"extends": "flux-kontext-pro", "extra_fields": {"raw": {"type": "bool"}}, "price": None},
        },
    )
    entry = catalog.effective(settings.catalog).entry("k")
    assert entry is not None and entry.price is None
    assert set(entry.spec.extra_fields) >= {"raw", "safety_tolerance", "seed", "aspect_ratio"}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"x": {"extends": "nope"}}, "catalog.x.extends: no catalog entry 'nope'"),
        ({"a": {"extends": "b"}, "b": {"extends": "a"}}, "loops"),
        ({"x": {"sizes": ["1024x1024"]}}, "catalog.x: endpoints is required"),
        ({"x": {"endpoints": ["generations"]}}, "catalog.x: sizes or free_size is required"),
        ({"x": {"extends": "gpt-image-2", "sizes": ["big one"]}}, "catalog.x: sizes: 'big one'"),
        ({"x": {"extends": "gpt-image-2", "colour": "red"}}, "catalog.x.colour: unknown key"),
        ({"x": {"extends": "gpt-image-2", "default_quality": "ultra"}}, "default_quality 'ultra'"),
        ({"x": {"extends": "gpt-image-2", "price": {"per_image": 1, "image_output_per_1m": 2}}}, "give either per_image"),
        ({"x": {"extends": "gpt-image-2", "endpoints": ["generations", "variations"]}}, "variations needs variation_input"),
        ({"x": {"extends": "gpt-image-2", "extra_fields": {"quality": {"type": "str"}}}}, "may not redefine spec fields"),
        (
            {"x": {"extends": "gpt-image-2", "extra_fields": {"k": {"type": "bool", "maximum": 3}}}},
            "extra_fields.k: minimum/maximum apply",
        ),
    ],
)
def test_bad_entries_name_the_entry_and_key(tmp_path: Path, entries: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_with(tmp_path, entries)
    assert message in str(err.value)


def test_templates_are_not_models(tmp_path: Path) -> None:
    assert catalog.lookup("openai-gpt-image") is None and "diffusion" not in catalog.names()
    with pytest.raises(ConfigError, match="models.x.rules: no catalog entry 'openai-gpt-image'"):
        from imagegate.gateway.wiring import check_settings

        settings = settings_with(
            tmp_path,
            {},
            providers={"demo": {"type": "test-pattern"}},
            models={"x": {"rules": "openai-gpt-image", "deployments": [{"provider": "demo"}]}},
        )
        check_settings(settings)


def test_diffusion_fields_come_from_the_template() -> None:
    assert set(catalog.DIFFUSION_FIELDS) == {"seed", "negative_prompt", "num_inference_steps", "guidance_scale"}
    assert catalog.DIFFUSION_FIELDS["seed"].maximum == 2**32 - 1


def test_every_entry_survives_a_copy_as_routes_make_it() -> None:
    """routes.rules_for copies a spec with dataclasses.replace (unknown_fields);
    an entry that gives a spec field its provider's meaning (Recraft's style)
    must survive that."""
    from dataclasses import replace

    for name in catalog.names():
        spec = catalog.lookup(name)
        assert spec is not None
        copy = replace(spec, unknown_fields="forward")
        assert copy.accepts == spec.accepts and copy.extra_fields == spec.extra_fields, name


def test_a_config_override_keeps_the_shipped_price_and_its_origin(tmp_path: Path) -> None:
    from imagegate.accounting.prices import PriceBook

    settings = settings_with(tmp_path, {"gpt-image-2": {"n_max": 4}, "mine": {"extends": "gpt-image-2"}})
    entries = catalog.effective(settings.catalog)
    for name in ("gpt-image-2", "mine"):
        entry = entries.entry(name)
        assert entry is not None and entry.price_origin == "shipped (openai.yaml)", name
    book = PriceBook.build(entries.entries(), {})
    assert book.find_with_origin("gpt-image-2")[1] == "gpt-image-2, shipped (openai.yaml)"
    priced = settings_with(tmp_path, {"gpt-image-2": {"price": {"per_image": 0.1}}})
    book = PriceBook.build(catalog.effective(priced.catalog).entries(), {})
    assert book.find_with_origin("gpt-image-2")[1] == "gpt-image-2, config (catalog)"


def test_output_formats_are_those_the_gateway_can_serve(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="catalog.x.output_formats.2"):
        settings_with(tmp_path, {"x": {"extends": "gpt-image-2", "output_formats": ["png", "webp", "gif"]}})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"price": {"image_output_per_1m": 30, "output_tokens": {"low": {"1024x1024": 272}, "high": {"1536x1024": 6208}}}},
            "every output_tokens table needs a 1024x1024 entry",
        ),
        ({"gateway_fields": ["quality"]}, "catalog.x.gateway_fields.0"),
    ],
)
def test_entries_that_would_fail_at_request_time_fail_at_start(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_with(tmp_path, {"x": {"extends": "gpt-image-2", **entry}})
    assert message in str(err.value)


def test_wire_facts_merge_by_name_through_extends_and_reach_the_rules(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path,
        {
            "base": {"extends": "gpt-image-2", "abstract": True, "wire": {"method": "predict", "ratios": ["1:1", "16:9"]}},
            "child": {"extends": "base", "wire": {"ratios": ["1:1"]}, "max_output_tokens": 4096},
        },
    )
    spec = catalog.effective(settings.catalog).lookup("child")
    assert spec is not None
    assert dict(spec.wire) == {"method": "predict", "ratios": ["1:1"]}  # one key replaced, the other inherited
    assert spec.max_output_tokens == 4096
    with pytest.raises(TypeError):
        spec.wire["method"] = "x"  # type: ignore[index]


def test_max_output_tokens_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"catalog\.bad.*max_output_tokens"):
        catalog.effective(settings_with(tmp_path, {"bad": {"extends": "gpt-image-2", "max_output_tokens": 0}}).catalog)
