"""Tiny, randomly initialised SDXL base and refiner models for tests and offline demos.

The real diffusers/transformers classes (two text encoders, the text-time added
embedding, per-level transformer depths) with small sizes; CLIP-L is 32 wide and bigG
48 wide so any mix-up of the two shows. Weights depend only on the seed. Images are
noise.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from nodes.diffusion.loading import FAMILY_CONFIG_DIRS, family_configs
from nodes.diffusion.sdxl_loading import save_original_sdxl_checkpoint
from nodes.diffusion.tiny import TEXT_CONFIG, VAE_CONFIG, _seeded, ensure_built
from nodes.diffusion.tokenizer import load_clip_tokenizer

TINY_SDXL_NAME = "steerflow-tiny-sdxl"
TINY_REFINER_NAME = "steerflow-tiny-sdxl-refiner"

CLIP_L_WIDTH = 32
BIG_G_WIDTH = 48
TIME_EMBED_DIM = 8

#: bigG: OpenCLIP's plain GELU, with a projection (the pooled output)
BIG_G_CONFIG: dict[str, object] = {
    **TEXT_CONFIG, "hidden_size": BIG_G_WIDTH, "intermediate_size": 96,
    "num_attention_heads": 4, "num_hidden_layers": 3, "projection_dim": BIG_G_WIDTH,
    "hidden_act": "gelu",
}

_UNET_COMMON: dict[str, object] = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (32, 64), "norm_num_groups": 32,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4), "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": TIME_EMBED_DIM,
}
UNET_CONFIG: dict[str, object] = {
    **_UNET_COMMON, "transformer_layers_per_block": (1, 2),
    "cross_attention_dim": CLIP_L_WIDTH + BIG_G_WIDTH,
    "projection_class_embeddings_input_dim": BIG_G_WIDTH + 6 * TIME_EMBED_DIM,
}
REFINER_UNET_CONFIG: dict[str, object] = {
    **_UNET_COMMON, "transformer_layers_per_block": 2, "cross_attention_dim": BIG_G_WIDTH,
    "projection_class_embeddings_input_dim": BIG_G_WIDTH + 5 * TIME_EMBED_DIM,
}
#: SDXL's VAE scaling factor on the tiny SD VAE (8x downscale)
SDXL_VAE_CONFIG: dict[str, object] = {**VAE_CONFIG, "scaling_factor": 0.13025}


def _scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler.from_config(family_configs("sdxl")["scheduler"])


def build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """The tiny SDXL base pipeline on CPU in float32; same seed, same weights."""
    unet = _seeded(seed, lambda: UNet2DConditionModel(**UNET_CONFIG))
    vae = _seeded(seed + 1, lambda: AutoencoderKL(**SDXL_VAE_CONFIG))
    text_encoder = _seeded(seed + 2, lambda: CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)))
    text_encoder_2 = _seeded(seed + 3, lambda: CLIPTextModelWithProjection(
        CLIPTextConfig(**BIG_G_CONFIG)))
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval()
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=load_clip_tokenizer(FAMILY_CONFIG_DIRS["sdxl"] / "tokenizer"),
        tokenizer_2=load_clip_tokenizer(FAMILY_CONFIG_DIRS["sdxl"] / "tokenizer_2"),
        unet=unet, scheduler=_scheduler())


def build_tiny_sdxl_refiner(seed: int = 0) -> StableDiffusionXLImg2ImgPipeline:
    """The tiny SDXL refiner (bigG and VAE shared with the base of the same seed, as the
    real refiner shares the base's VAE and bigG)."""
    base = build_tiny_sdxl_pipeline(seed)
    unet = _seeded(seed + 10, lambda: UNet2DConditionModel(**REFINER_UNET_CONFIG)).eval()
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, text_encoder_2=base.text_encoder_2, tokenizer=None,
        tokenizer_2=base.tokenizer_2, unet=unet, scheduler=_scheduler(),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)


def save_tiny_sdxl(target_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny SDXL base as a diffusers folder and an original-layout single file."""
    return _save(build_tiny_sdxl_pipeline(seed), Path(target_dir), TINY_SDXL_NAME)


def save_tiny_sdxl_refiner(target_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny SDXL refiner as a diffusers folder and an original-layout single file."""
    return _save(build_tiny_sdxl_refiner(seed), Path(target_dir), TINY_REFINER_NAME)


def _save(pipe: StableDiffusionXLPipeline | StableDiffusionXLImg2ImgPipeline, target: Path,
          name: str) -> dict[str, Path]:
    target.mkdir(parents=True, exist_ok=True)
    folder, single = target / name, target / f"{name}.safetensors"
    pipe.save_pretrained(folder, safe_serialization=True)
    save_original_sdxl_checkpoint(
        single, unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
        text_encoder_2=pipe.text_encoder_2, scheduler_config=dict(pipe.scheduler.config))
    return {"diffusers": folder, "single_file": single}


def ensure_tiny_sdxl(models_dir: Path) -> tuple[Path, Path]:
    """Make sure the tiny SDXL base and refiner exist in ``models_dir/checkpoints`` (both
    formats); returns their folders."""
    base = ensure_built(models_dir, "checkpoints", TINY_SDXL_NAME, "model_index.json",
                        save_tiny_sdxl)
    refiner = ensure_built(models_dir, "checkpoints", TINY_REFINER_NAME, "model_index.json",
                           save_tiny_sdxl_refiner)
    return base, refiner
