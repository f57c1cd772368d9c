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

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import PNDMScheduler, StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import save_file

from engine.paths import give_plain_mode
from nodes.diffusion.builtin_models import (  # noqa: F401  (WEIGHTS_DIR: re-exported)
    DIFFUSERS_MARKERS,
    SHAPES_ADAPTER_NAME,
    SHAPES_CLIP_NAME,
    SHAPES_CONTROLNET_NAME,
    SHAPES_IP2P_NAME,
    SHAPES_IP2P_UNET,
    SHAPES_IP_ADAPTER_NAME,
    SHAPES_NAME,
    SHIPPED_MODELS,
    SINGLE_FILES,
    WEIGHTS_DIR,
    installed_single,
    shipped_stamp,
    shipped_weights,
    single_is_current,
)
from nodes.diffusion.controlnet_loading import load_controlnet, load_t2i_adapter
from nodes.diffusion.loading import load_components
from nodes.diffusion.original_layout import CONFIG_METADATA_KEY, UNET_PREFIX
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


def _save_pipeline_folder(single: Path, folder: Path,
                          pipeline_cls: type = StableDiffusionPipeline) -> None:
    loaded = load_components(single)
    pipe = pipeline_cls(
        vae=loaded.vae, text_encoder=loaded.text_encoder, tokenizer=loaded.tokenizer,
        unet=loaded.unet, scheduler=PNDMScheduler.from_config(loaded.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)


def _save_controlnet_folder(single: Path, folder: Path) -> None:
    load_controlnet(single, dtype=torch.float32).save_pretrained(folder, safe_serialization=True)


def _save_adapter_folder(single: Path, folder: Path) -> None:
    load_t2i_adapter(single, dtype=torch.float32).save_pretrained(folder, safe_serialization=True)


def install_shapes_model(target_dir: Path) -> dict[str, Path]:
    """Write ``steerflow-shapes`` in both formats under ``target_dir``."""
    return _install(target_dir, SHAPES_NAME, _save_pipeline_folder)


def install_shapes_controlnet(target_dir: Path) -> dict[str, Path]:
    """Write ``steerflow-shapes-controlnet`` in both formats under ``target_dir``."""
    return _install(target_dir, SHAPES_CONTROLNET_NAME, _save_controlnet_folder)


def install_shapes_adapter(target_dir: Path) -> dict[str, Path]:
    """Write ``steerflow-shapes-adapter`` (the T2I-Adapter on shape masks) in both formats."""
    return _install(target_dir, SHAPES_ADAPTER_NAME, _save_adapter_folder)


def merge_unet(base: Path, unet_file: Path, out: Path) -> None:
    """Write ``base`` (an original-layout single file) with its UNet replaced by the one in
    ``unet_file`` (UNet keys and config alone, as ``training.export.save_unet_half``)."""
    with safe_open(str(base), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()  # noqa: SIM118 - not a Mapping
                   if not k.startswith(UNET_PREFIX)}
    with safe_open(str(unet_file), framework="pt") as f:
        unet_config = json.loads(f.metadata()[CONFIG_METADATA_KEY])["unet"]
        tensors.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    configs = {**json.loads(metadata[CONFIG_METADATA_KEY]), "unet": unet_config}
    metadata[CONFIG_METADATA_KEY] = json.dumps(configs, sort_keys=True)
    save_file(tensors, str(out), metadata=metadata)


def install_shapes_ip2p(target_dir: Path) -> dict[str, Path]:
    """Write ``steerflow-shapes-ip2p`` in both formats under ``target_dir``: the shipped
    Instruct-Pix2Pix UNet with steerflow-shapes' VAE, text encoder and scheduler."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    single, folder = target_dir / f"{SHAPES_IP2P_NAME}.safetensors", target_dir / SHAPES_IP2P_NAME
    merge_unet(shipped_weights(SHAPES_NAME), shipped_weights(SHAPES_IP2P_UNET), single)
    _save_pipeline_folder(single, folder, StableDiffusionInstructPix2PixPipeline)
    return {"diffusers": folder, "single_file": single}


def install_single_file(models_dir: Path, folder: str, name: str) -> Path | None:
    """Copy the shipped single file ``name`` to ``models_dir/<folder>`` (its loader reads
    it directly); None when it is not shipped."""
    source = shipped_weights(name)
    if not source.is_file():
        return None
    target = installed_single(models_dir, folder, name)
    if not single_is_current(models_dir, folder, name):
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copied under a hidden name of its own (two processes may install at once) and
        # renamed: listings never see a half-written file.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)
            give_plain_mode(tmp)  # mkstemp's file is 0600
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return target


def install_shapes_clip(models_dir: Path) -> Path | None:
    """The shapes-world CLIP into ``models_dir/clip_vision``."""
    return install_single_file(models_dir, "clip_vision", SHAPES_CLIP_NAME)


def ensure_shapes_model(models_dir: Path) -> Path | None:
    """Install the shipped default model (and its ControlNet, T2I-Adapter, Instruct-Pix2Pix
    model, shapes-world CLIP and IP-Adapter) into ``models_dir`` once.

    Returns the model's diffusers folder, or None when the weights are not shipped.
    """
    if not shipped_weights(SHAPES_NAME).is_file():
        return None
    install = {SHAPES_NAME: install_shapes_model, SHAPES_CONTROLNET_NAME: install_shapes_controlnet,
               SHAPES_ADAPTER_NAME: install_shapes_adapter, SHAPES_IP2P_NAME: install_shapes_ip2p}
    folders = {}
    for role, name, sources in SHIPPED_MODELS:
        stamp = shipped_stamp(*sources)
        if stamp is not None:  # None: not shipped in this install
            folders[name] = ensure_built(models_dir, role, name, DIFFUSERS_MARKERS[role],
                                         install[name], stamp=stamp)
    for folder, name in SINGLE_FILES:  # the shapes CLIP and its IP-Adapter
        install_single_file(models_dir, folder, name)
    return folders[SHAPES_NAME]
