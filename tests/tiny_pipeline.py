"""A tiny random Stable Diffusion pipeline, built in-process and saved with
``save_pretrained`` so the provider's real loading code reads it.

The configs are the ones diffusers' own tests use for Stable Diffusion
(a UNet with ``block_out_channels=(4, 8)``, a two-level AutoencoderKL, a
2-layer CLIP text model of hidden size 8), with a byte-level CLIP tokenizer
made from a vocabulary and merges file written next to it. Native size:
``sample_size`` 32 x VAE scale factor 2 = 64x64. Nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in keep:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


_TOKENS = ["<|startoftext|>", "<|endoftext|>", *_byte_chars(), *(c + "</w>" for c in _byte_chars())]


def clip_tokenizer():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as vocab_dir:
        (Path(vocab_dir) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(_TOKENS)}))
        (Path(vocab_dir) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(vocab_dir, model_max_length=77)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
    )


def _text_config(hidden: int, intermediate: int, heads: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_hidden_layers=2,
        vocab_size=len(_TOKENS),
        max_position_embeddings=77,
        projection_dim=hidden,
    )


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_pipeline(path: Path, *, seed: int = 0, sample_size: int = 32) -> Path:
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    path = Path(path)
    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
        attention_head_dim=2,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config(hidden=8, intermediate=16, heads=2))
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_sdxl_pipeline(path: Path, *, seed: int = 0) -> Path:
    """SDXL's shape in miniature (two text encoders, micro-conditioning), as in
    diffusers' SDXL tests; native 64x64."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=8 * 6 + 32,  # six time ids + the pooled text embedding
        cross_attention_dim=64,  # both text encoders' hidden states side by side
        norm_num_groups=1,
    )
    config = _text_config(hidden=32, intermediate=37, heads=4)
    tokenizer = clip_tokenizer()
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=_vae(),
        text_encoder=CLIPTextModel(config),
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=_scheduler(),
    )
    pipe.save_pretrained(path)
    return Path(path)


def copy_pipeline(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return Path(target)
