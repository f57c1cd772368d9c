"""Configs and builders of the shapes-world model: SD 1.x classes at small sizes.

Every component is the class Stable Diffusion uses (``AutoencoderKL``,
``UNet2DConditionModel``, ``CLIPTextModel`` with the real CLIP tokenizer,
``ControlNetModel.from_unet``), so the trained model goes through every SD 1.x
code path of the engine. Sizes and timings are argued in ``training/README.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from nodes.diffusion.tiny import SCHEDULER_CONFIG as TINY_SCHEDULER_CONFIG

# Downscale 4 (three VAE levels): 64x64 images ↔ 16x16x4 latents. A small shape
# (~14 px) then spans 3-4 latent pixels instead of 1-2: at equal steps and time
# the 8x VAE reconstructed 3 dB worse (README: "VAE downscale"). 16 channels at
# full resolution (one per group) keep the 64x64 convolutions cheap.
VAE_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (16, 32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "norm_num_groups": 16,
    "scaling_factor": 1.0,  # replaced by 1/std of the trained VAE's latents (SD's recipe)
}

# Token ids as SD 1.5's text encoder (eos_token_id 2 selects the legacy argmax pooling).
TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "projection_dim": 64,
    "hidden_act": "quick_gelu",
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# Cross-attention at 8x8 and 4x4 only: 3x3-grid layout needs no finer text lookup,
# and attention at 16x16 doubled the step time (README: "Sizing").
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64, 96),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

# Four entries = three stride-2 convs = SD's 8x hint: the engine feeds the control
# image at latent size x 8 (128x128 here). diffusers' single-file reader only knows
# that layout (input_hint_block.14 is always conv_out), so a 4x hint would not load
# from one file. Binary masks need few channels; these keep 128x128 cheap.
CONTROLNET_HINT_CHANNELS: tuple[int, ...] = (4, 8, 16, 32)

# SD 1.5's training schedule (scaled_linear 0.00085-0.012, epsilon prediction): the
# same config the built-in tiny model ships, so both load the same way.
SCHEDULER_CONFIG: dict[str, Any] = dict(TINY_SCHEDULER_CONFIG)


@dataclass
class ModelConfigs:
    """The component configs one run uses (tests pass smaller ones)."""

    vae: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(VAE_CONFIG))
    text: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(TEXT_CONFIG))
    unet: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(UNET_CONFIG))
    hint_channels: tuple[int, ...] = CONTROLNET_HINT_CHANNELS
    image_size: int = 64

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)


def build_vae(cfg: ModelConfigs) -> AutoencoderKL:
    return AutoencoderKL(**cfg.vae)


def build_text_encoder(cfg: ModelConfigs) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**cfg.text))


def build_unet(cfg: ModelConfigs) -> UNet2DConditionModel:
    config = {**cfg.unet, "sample_size": cfg.image_size // cfg.downscale,
              "cross_attention_dim": cfg.text["hidden_size"],
              "in_channels": cfg.vae["latent_channels"],
              "out_channels": cfg.vae["latent_channels"]}
    return UNet2DConditionModel(**config)


def build_controlnet(unet: UNet2DConditionModel, cfg: ModelConfigs) -> ControlNetModel:
    """A ControlNet copying ``unet``'s encoder, zero convolutions zero (the standard start)."""
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=cfg.hint_channels)


def build_noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler.from_config(SCHEDULER_CONFIG)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
