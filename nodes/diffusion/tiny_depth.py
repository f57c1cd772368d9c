"""A tiny random depth-to-image model and tiny random depth estimators, for tests.

The model is ``steerflow-tiny`` with a 5-channel UNet (4 latents + 1 depth), saved
like ``stabilityai/stable-diffusion-2-depth`` (a diffusers folder with its
``depth_estimator/`` and ``feature_extractor/``) and as one original-layout file.
The estimators are transformers' real ``DPTForDepthEstimation`` (plain ViT, no
hybrid backbone) and ``DepthAnythingForDepthEstimation`` at tiny sizes, with
their image processors; their weights are re-drawn so the predicted depth is
order 1 and varies over the image (at the default initialisation the head's
ReLU output is ~1e-8 and mostly 0, which would test nothing). Everything here is
noise, for parity tests only: no depth model exists for ``steerflow-shapes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    PNDMScheduler,
    StableDiffusionDepth2ImgPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    DPTConfig,
    DPTForDepthEstimation,
)
from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

from nodes.diffusion.original_layout import save_original_checkpoint
from nodes.diffusion.tiny import SCHEDULER_CONFIG, TEXT_CONFIG, UNET_CONFIG, VAE_CONFIG, _seeded
from nodes.diffusion.tokenizer import load_clip_tokenizer

TINY_DEPTH_NAME = "steerflow-tiny-depth"
TINY_ESTIMATORS = {"dpt": "steerflow-tiny-dpt", "depth_anything": "steerflow-tiny-depth-anything"}
IMAGE_SIZE = 32  # the estimators' input size: 2x2 ViT patches of 16

# The sizes of transformers' own DPT tests (hidden 32, 4 layers, 4 heads), plain ViT.
DPT_CONFIG: dict[str, Any] = {
    "image_size": IMAGE_SIZE, "patch_size": 16, "num_channels": 3, "hidden_size": 32,
    "num_hidden_layers": 4, "backbone_out_indices": [0, 1, 2, 3], "num_attention_heads": 4,
    "intermediate_size": 37, "is_hybrid": False, "neck_hidden_sizes": [16, 16, 32, 32],
    "fusion_hidden_size": 16, "reassemble_factors": [4, 2, 1, 0.5],
}
DINOV2_CONFIG: dict[str, Any] = {
    "image_size": IMAGE_SIZE, "patch_size": 16, "hidden_size": 32, "num_hidden_layers": 4,
    "num_attention_heads": 4, "intermediate_size": 37, "reshape_hidden_states": False,
    "out_features": ["stage1", "stage2", "stage3", "stage4"], "apply_layernorm": True,
}
DEPTH_ANYTHING_CONFIG: dict[str, Any] = {
    "reassemble_hidden_size": 32, "patch_size": 16, "neck_hidden_sizes": [16, 16, 32, 32],
    "fusion_hidden_size": 16, "head_hidden_size": 16, "depth_estimation_type": "relative",
}


def _liven(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw the linear and conv weights at unit gain and lift the last head bias, so
    the depth is order 1, rarely clipped by the head's final ReLU, and follows the image."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                    / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
        convs = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)]
        convs[-1].bias.fill_(1.0)
    return model.eval()


def build_tiny_estimator(kind: str = "dpt", seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """A tiny depth estimator and its image processor: ``kind`` "dpt" (square 32x32 input,
    as DPT's ViT needs) or "depth_anything" (aspect kept, sides multiples of 16)."""
    if kind == "dpt":
        model = _seeded(seed + 30, lambda: DPTForDepthEstimation(DPTConfig(**DPT_CONFIG)))
        processor = DPTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                         keep_aspect_ratio=False, ensure_multiple_of=1)
    elif kind == "depth_anything":
        config = DepthAnythingConfig(backbone_config=Dinov2Config(**DINOV2_CONFIG),
                                     **DEPTH_ANYTHING_CONFIG)
        model = _seeded(seed + 30, lambda: DepthAnythingForDepthEstimation(config))
        processor = DPTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                         keep_aspect_ratio=True, ensure_multiple_of=16)
    else:
        raise ValueError(f"unknown tiny estimator {kind!r}: one of {list(TINY_ESTIMATORS)}")
    return _liven(model, seed + 40), processor


def save_tiny_estimator(target_dir: Path, kind: str = "dpt", seed: int = 0) -> Path:
    """Write a tiny estimator as a transformers folder (config.json, model.safetensors,
    preprocessor_config.json) at ``target_dir/<name>``; returns the folder."""
    model, processor = build_tiny_estimator(kind, seed)
    folder = Path(target_dir) / TINY_ESTIMATORS[kind]
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def build_tiny_depth_pipeline(seed: int = 0) -> StableDiffusionDepth2ImgPipeline:
    """The tiny SD model with a 5-channel UNet and the tiny DPT, on CPU in float32."""
    unet = _seeded(seed, lambda: UNet2DConditionModel(**{**UNET_CONFIG, "in_channels": 5}))
    vae = _seeded(seed + 1, lambda: AutoencoderKL(**VAE_CONFIG))
    text_encoder = _seeded(seed + 2, lambda: CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)))
    estimator, processor = build_tiny_estimator("dpt", seed)
    for module in (unet, vae, text_encoder):
        module.eval()
    return StableDiffusionDepth2ImgPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=load_clip_tokenizer(), unet=unet,
        scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG), depth_estimator=estimator,
        feature_extractor=processor)


def save_tiny_depth_model(target_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny depth model under ``target_dir``: ``{"diffusers": <name>/,
    "single_file": <name>.safetensors}`` (the file without the depth estimator, which
    the original checkpoints bundle but Steerflow loads from models/depth)."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_depth_pipeline(seed)
    folder, single = target_dir / TINY_DEPTH_NAME, target_dir / f"{TINY_DEPTH_NAME}.safetensors"
    pipe.save_pretrained(folder, safe_serialization=True)
    save_original_checkpoint(single, unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
                             scheduler_config=dict(pipe.scheduler.config), family="sd1")
    return {"diffusers": folder, "single_file": single}
