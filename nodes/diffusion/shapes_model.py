"""Steerflow's built-in default model: ``steerflow-shapes``, trained by ``training/``.

A small SD 1.x-architecture latent diffusion model (VAE with 4x downscale, a
3-layer CLIP text encoder with the real tokenizer, a 2.7 M-parameter UNet) and
a ControlNet on shape masks, trained on the generated "shapes world" (see
training/README.md). It draws prompts such as "a red circle at the top left on
a white background" at 64x64, offline.

The repository ships one original-layout ``.safetensors`` file per model in
float16 (``nodes/assets/weights/``, ~16 MB in all). First set-up copies each
into the models folder and derives the diffusers folder from it, so both
formats exist for the normal loaders; they hold the same values (the loaders
cast to the run's dtype), so they give identical images.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline

from nodes.diffusion.builtin_models import (  # noqa: F401  (WEIGHTS_DIR: re-exported)
    SHAPES_CONTROLNET_NAME,
    SHAPES_NAME,
    WEIGHTS_DIR,
    shipped_weights,
)
from nodes.diffusion.controlnet_loading import load_controlnet
from nodes.diffusion.loading import load_components
from nodes.diffusion.tiny import ensure_built


def _install(target_dir: Path, name: str, save_folder: Callable[[Path, Path], None]
             ) -> dict[str, Path]:
    """Copy the shipped single file of ``name`` into ``target_dir`` and derive its diffusers
    folder with ``save_folder(single_file, folder)``."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    single, folder = target_dir / f"{name}.safetensors", target_dir / name
    shutil.copyfile(shipped_weights(name), single)
    save_folder(single, folder)
    return {"diffusers": folder, "single_file": single}


def _save_pipeline_folder(single: Path, folder: Path) -> None:
    loaded = load_components(single)
    pipe = StableDiffusionPipeline(
        vae=loaded.vae, text_encoder=loaded.text_encoder, tokenizer=loaded.tokenizer,
        unet=loaded.unet, scheduler=PNDMScheduler.from_config(loaded.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)


def _save_controlnet_folder(single: Path, folder: Path) -> None:
    load_controlnet(single, dtype=torch.float32).save_pretrained(folder, safe_serialization=True)


def install_shapes_model(target_dir: Path) -> dict[str, Path]:
    """Write ``steerflow-shapes`` in both formats under ``target_dir``."""
    return _install(target_dir, SHAPES_NAME, _save_pipeline_folder)


def install_shapes_controlnet(target_dir: Path) -> dict[str, Path]:
    """Write ``steerflow-shapes-controlnet`` in both formats under ``target_dir``."""
    return _install(target_dir, SHAPES_CONTROLNET_NAME, _save_controlnet_folder)


def ensure_shapes_model(models_dir: Path) -> Path | None:
    """Install the shipped default model (and its ControlNet) into ``models_dir`` once.

    Returns the model's diffusers folder, or None when the weights are not shipped.
    """
    if not shipped_weights(SHAPES_NAME).is_file():
        return None
    folder = ensure_built(models_dir, "checkpoints", SHAPES_NAME, "model_index.json",
                          install_shapes_model)
    if shipped_weights(SHAPES_CONTROLNET_NAME).is_file():
        ensure_built(models_dir, "controlnet", SHAPES_CONTROLNET_NAME, "config.json",
                     install_shapes_controlnet)
    return folder
