"""A tiny, randomly initialised Stable Diffusion x4 upscaler for tests: the released
model's architecture (a 7-channel UNet with a 1000-entry noise-level class embedding and
cross-attention-only blocks, a 3-level VAE with scaling factor 0.08333, an SD 2-style
text encoder, v-prediction, a DDPM ``low_res_scheduler``) at small sizes, as diffusers'
real classes. Saved as a ``StableDiffusionUpscalePipeline`` folder and as one
original-layout file (configs in its metadata: the sizes are not the released ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from nodes.diffusion.loading import FAMILY_CONFIG_DIRS
from nodes.diffusion.original_layout import save_original_checkpoint
from nodes.diffusion.sd_upscale import (
    DEFAULT_LOW_RES_SCHEDULER,
    DEFAULT_MAX_NOISE_LEVEL,
    X4_UNET_CHANNELS,
)
from nodes.diffusion.tiny import TEXT_CONFIG, _seeded
from nodes.diffusion.tokenizer import load_clip_tokenizer

TINY_X4_NAME = "steerflow-tiny-x4-upscaler"

X4_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16, "in_channels": X4_UNET_CHANNELS, "out_channels": 4,
    "block_out_channels": (32, 32, 64), "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "only_cross_attention": (True, True, False), "cross_attention_dim": 32,
    "attention_head_dim": 4, "norm_num_groups": 32, "num_class_embeds": 1000,
    "use_linear_projection": True,
}
X4_VAE_CONFIG: dict[str, Any] = {
    "sample_size": 64, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "block_out_channels": (32, 32, 64), "layers_per_block": 1,
    "down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3,
    "norm_num_groups": 32, "scaling_factor": 0.08333,
}
X4_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
    "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
    "steps_offset": 1, "prediction_type": "v_prediction",
}


def build_tiny_x4_pipeline(seed: int = 0) -> StableDiffusionUpscalePipeline:
    """The tiny x4 upscaler pipeline (CPU, float32; same seed, same weights).

    The image part of ``conv_in`` and the class embedding are scaled up so that the
    low-res image and the noise level visibly steer the output in tests.
    """
    unet = _seeded(seed, lambda: UNet2DConditionModel(**X4_UNET_CONFIG))
    with torch.no_grad():
        unet.conv_in.weight[:, 4:] *= 4.0
        unet.class_embedding.weight.mul_(4.0)
    vae = _seeded(seed + 1, lambda: AutoencoderKL(**X4_VAE_CONFIG))
    text_encoder = _seeded(seed + 2, lambda: CLIPTextModel(CLIPTextConfig(
        **{**TEXT_CONFIG, "hidden_act": "gelu"})))  # OpenCLIP's activation: family sd2
    for module in (unet, vae, text_encoder):
        module.eval()
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(FAMILY_CONFIG_DIRS["sd2"] / "tokenizer"), unet=unet,
        low_res_scheduler=DDPMScheduler.from_config(DEFAULT_LOW_RES_SCHEDULER),
        scheduler=DDIMScheduler.from_config(X4_SCHEDULER_CONFIG),
        max_noise_level=DEFAULT_MAX_NOISE_LEVEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_x4_model(target_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write ``steerflow-tiny-x4-upscaler`` under ``target_dir``: ``{"diffusers": <name>/,
    "single_file": <name>.safetensors}``."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_x4_pipeline(seed)
    folder, single = target_dir / TINY_X4_NAME, target_dir / f"{TINY_X4_NAME}.safetensors"
    pipe.save_pretrained(folder, safe_serialization=True)
    save_original_checkpoint(single, unet=pipe.unet, vae=pipe.vae,
                             text_encoder=pipe.text_encoder,
                             scheduler_config=dict(pipe.scheduler.config), family="sd2")
    return {"diffusers": folder, "single_file": single}
