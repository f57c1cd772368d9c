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
from pathlib import Path

import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import save_file

from nodes.diffusion.controlnet_loading import load_controlnet
from nodes.diffusion.loading import load_components
from nodes.diffusion.tiny import ensure_built

SHAPES_NAME = "steerflow-shapes"
SHAPES_CONTROLNET_NAME = "steerflow-shapes-controlnet"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "assets" / "weights"


def shipped_weights(name: str) -> Path:
    """The shipped single file of ``name`` (it may be absent in a stripped install)."""
    return WEIGHTS_DIR / f"{name}.safetensors"


def save_half_precision(src: Path, dst: Path) -> None:
    """Copy a safetensors file with its floating tensors in float16, metadata kept."""
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
        tensors = {}
        for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
            t = f.get_tensor(key)
            tensors[key] = t.half() if t.is_floating_point() else t
    save_file(tensors, str(dst), metadata=metadata)


def install_shapes_model(target_dir: Path) -> dict[str, Path]:
    """Write ``steerflow-shapes`` in both formats under ``target_dir``."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    single = target_dir / f"{SHAPES_NAME}.safetensors"
    folder = target_dir / SHAPES_NAME
    shutil.copyfile(shipped_weights(SHAPES_NAME), single)
    loaded = load_components(single)
    pipe = StableDiffusionPipeline(
        vae=loaded.vae, text_encoder=loaded.text_encoder, tokenizer=loaded.tokenizer,
        unet=loaded.unet, scheduler=PNDMScheduler.from_config(loaded.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return {"diffusers": folder, "single_file": single}


def install_shapes_controlnet(target_dir: Path) -> dict[str, Path]:
    """Write ``steerflow-shapes-controlnet`` in both formats under ``target_dir``."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    single = target_dir / f"{SHAPES_CONTROLNET_NAME}.safetensors"
    folder = target_dir / SHAPES_CONTROLNET_NAME
    shutil.copyfile(shipped_weights(SHAPES_CONTROLNET_NAME), single)
    net = load_controlnet(single, dtype=torch.float32)
    net.save_pretrained(folder, safe_serialization=True)
    return {"diffusers": folder, "single_file": single}


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
