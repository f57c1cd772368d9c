"""A tiny, randomly initialised Instruct-Pix2Pix model for tests: the tiny SD 1.x model of
:mod:`nodes.diffusion.tiny` with an 8-channel UNet (latents + input image latents)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    PNDMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)

from nodes.diffusion.instruct_pix2pix import IP2P_UNET_CHANNELS
from nodes.diffusion.original_layout import save_original_checkpoint
from nodes.diffusion.tiny import SCHEDULER_CONFIG, UNET_CONFIG, _seeded, build_tiny_pipeline

TINY_IP2P_NAME = "steerflow-tiny-ip2p"


def build_tiny_ip2p_pipeline(seed: int = 0) -> StableDiffusionInstructPix2PixPipeline:
    """The tiny pipeline with an 8-channel UNet (CPU, float32; same seed, same weights).

    Random weights give a UNet whose image channels barely matter; the image part of
    ``conv_in`` is scaled up so the input image visibly steers the output in tests.
    """
    base = build_tiny_pipeline(seed)
    unet = _seeded(seed + 3, lambda: UNet2DConditionModel(
        **{**UNET_CONFIG, "in_channels": IP2P_UNET_CHANNELS}))
    with torch.no_grad():
        unet.conv_in.weight[:, 4:] *= 4.0
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet.eval(),
        scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_ip2p_model(target_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write ``steerflow-tiny-ip2p`` as a diffusers folder and an original-layout single
    file (configs in its metadata) under ``target_dir``."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_ip2p_pipeline(seed)
    folder, single = target_dir / TINY_IP2P_NAME, target_dir / f"{TINY_IP2P_NAME}.safetensors"
    pipe.save_pretrained(folder, safe_serialization=True)
    save_original_checkpoint(single, unet=pipe.unet, vae=pipe.vae,
                             text_encoder=pipe.text_encoder,
                             scheduler_config=dict(pipe.scheduler.config), family="sd1")
    return {"diffusers": folder, "single_file": single}
