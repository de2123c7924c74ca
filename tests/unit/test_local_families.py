"""What a local model is, read from its files; sizes mapped to native resolutions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagegate.errors import ConfigError
from imagegate.providers.local.families import describe_model, rules
from imagegate.providers.local.options import DiffusersOptions
from imagegate.providers.local.sizing import render_size


def fake_model(root: Path, class_name: str, *, sample_size: int | None = 64, vae_levels: int = 4, denoiser: str = "unet") -> Path:
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    (root / denoiser).mkdir()
    (root / denoiser / "config.json").write_text(json.dumps({"sample_size": sample_size} if sample_size else {}))
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [128] * vae_levels}))
    return root


@pytest.mark.parametrize(
    ("dirname", "class_name", "sample", "denoiser", "family", "native"),
    [
        ("sd15", "StableDiffusionPipeline", 64, "unet", "sd", 512),
        ("sd21", "StableDiffusionPipeline", 96, "unet", "sd", 768),
        ("sd-turbo", "StableDiffusionPipeline", 64, "unet", "sd-turbo", 512),
        ("sdxl-base", "StableDiffusionXLPipeline", 128, "unet", "sdxl", 1024),
        ("sdxl-turbo", "StableDiffusionXLPipeline", 64, "unet", "sdxl-turbo", 512),
        ("sd3-medium", "StableDiffusion3Pipeline", 128, "transformer", "sd3", 1024),
        ("flux1-schnell", "FluxPipeline", None, "transformer", "flux-schnell", 1024),
        ("flux1-dev", "FluxPipeline", None, "transformer", "flux-dev", 1024),
        ("kontext", "FluxKontextPipeline", None, "transformer", "flux-kontext", 1024),
    ],
)
def test_family_and_native_size_come_from_the_files(
    tmp_path: Path, dirname: str, class_name: str, sample: int | None, denoiser: str, family: str, native: int
) -> None:
    path = fake_model(tmp_path / dirname, class_name, sample_size=sample, denoiser=denoiser)
    info = describe_model(str(path), DiffusersOptions())
    assert (info.family.name, info.native, info.source) == (family, native, str(path))


def test_family_defaults_and_overrides(tmp_path: Path) -> None:
    path = str(fake_model(tmp_path / "m", "StableDiffusionPipeline"))
    plain = describe_model(path, DiffusersOptions())
    assert (plain.steps, plain.guidance, plain.strength) == (30, 7.5, 0.75)
    tuned = describe_model(path, DiffusersOptions(models={path: {"family": "sd-turbo", "steps": 4, "guidance_scale": 1.5}}))
    assert (tuned.family.name, tuned.steps, tuned.guidance, tuned.strength) == ("sd-turbo", 4, 1.5, 0.5)


def test_rules_follow_the_family(tmp_path: Path) -> None:
    sd = rules(describe_model(str(fake_model(tmp_path / "sd", "StableDiffusionPipeline")), DiffusersOptions()))
    assert sd.allows_size("1024x1024") is None and sd.allows_size("1536x1024") is not None  # 2x native at most
    assert sd.allows_size("1024x256") is not None  # 4:1 is beyond SD's aspect range
    assert not sd.transparency and sd.masks and "negative_prompt" in sd.accepts and "seed" in sd.accepts
    assert sd.edit_input is not None and sd.edit_input.max_images == 1
    kontext = rules(
        describe_model(str(fake_model(tmp_path / "k", "FluxKontextPipeline", denoiser="transformer")), DiffusersOptions())
    )
    assert not kontext.masks and "negative_prompt" not in kontext.accepts and "edits" in kontext.endpoints


def test_unknown_pipelines_and_missing_models_are_config_errors(tmp_path: Path) -> None:
    odd = fake_model(tmp_path / "odd", "WuerstchenPipeline")
    with pytest.raises(ConfigError, match="is a WuerstchenPipeline, which the diffusers provider does not serve"):
        describe_model(str(odd), DiffusersOptions())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model_index.json"):
        describe_model(str(tmp_path / "empty"), DiffusersOptions())


def test_hub_ids_offline_and_online(tmp_path: Path) -> None:
    options = DiffusersOptions(cache_dir=str(tmp_path), offline=True)
    with pytest.raises(ConfigError, match="'stabilityai/sd-turbo' is not in the Hugging Face cache"):
        describe_model("stabilityai/sd-turbo", options)
    online = DiffusersOptions(cache_dir=str(tmp_path), offline=False)
    info = describe_model("stabilityai/sdxl-turbo", online)  # to be downloaded on first use: the name tells the family
    assert (info.family.name, info.native, info.local_dir) == ("sdxl-turbo", 512, None)
    with pytest.raises(ConfigError, match="set family"):
        describe_model("acme/mystery", online)


@pytest.mark.parametrize(
    ("asked", "input_size", "native", "multiple", "expected"),
    [
        (None, None, 512, 32, (512, 512)),  # auto: native
        ((1024, 1024), None, 512, 32, (512, 512)),  # rendered natively, resized after
        ((1536, 1024), None, 1024, 64, (1280, 832)),  # aspect kept at the native area
        ((1152, 896), None, 1024, 64, (1152, 896)),  # already native: as asked
        (None, (1200, 600), 1024, 64, (1472, 704)),  # auto on an edit: the input's aspect
    ],
)
def test_render_sizes(asked, input_size, native, multiple, expected) -> None:
    assert render_size(asked, input_size, native, multiple) == expected


def test_a_provider_type_without_its_packages_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagegate.providers import registry

    monkeypatch.setitem(registry._TYPES, "diffusers", "absent_dependency_xyz.provider:Provider")
    with pytest.raises(ConfigError, match="needs the Python package 'absent_dependency_xyz'.*imagegate\\[local\\]"):
        registry.provider_class("diffusers")
