"""A tiny, randomly initialised Stable Diffusion 1.x model for tests and offline demos.

It uses the real diffusers/transformers classes and the real CLIP tokenizer with
small sizes, so every code path that handles SD 1.x handles it too; the images it
makes are noise. Weights depend only on the seed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from engine.paths import give_plain_mode
from nodes.diffusion.builtin_models import TINY_NAME
from nodes.diffusion.original_layout import save_original_checkpoint
from nodes.diffusion.tokenizer import load_clip_tokenizer

T = TypeVar("T")

# SD's 8x VAE downscale (four encoder blocks), so workflows built for real
# checkpoints (Empty Latent Image at width/8) behave the same on this model;
# sample size 8 makes the pipeline's default image 64x64.
UNET_CONFIG: dict[str, object] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 32,
}

VAE_CONFIG: dict[str, object] = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (32, 32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}

# Token ids mirror SD 1.5's text encoder config (eos_token_id 2 selects the
# legacy argmax pooling that real SD 1.x checkpoints use).
TEXT_CONFIG: dict[str, object] = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# SD 1.5's published scheduler settings; from_config keeps clip_sample (unused by
# PNDM) in the config so a DDIM built from it later does not clip.
SCHEDULER_CONFIG: dict[str, object] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "prediction_type": "epsilon",
}


def _seeded(seed: int, build: Callable[[], T]) -> T:
    """Build a module with the global RNG seeded, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Build the tiny SD 1.x pipeline on CPU in float32; same seed, same weights."""
    # Distinct seeds per module so no two share their initial random stream.
    unet = _seeded(seed, lambda: UNet2DConditionModel(**UNET_CONFIG))
    vae = _seeded(seed + 1, lambda: AutoencoderKL(**VAE_CONFIG))
    text_encoder = _seeded(seed + 2, lambda: CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for module in (unet, vae, text_encoder):
        module.eval()
    return pipe


def save_tiny_model(target_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny model in both formats under ``target_dir``.

    Returns ``{"diffusers": <target>/steerflow-tiny, "single_file":
    <target>/steerflow-tiny.safetensors}``; the single file uses the original
    (CompVis/LDM) key layout and carries its component configs as metadata.
    """
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(seed)
    folder = target_dir / TINY_NAME
    single = target_dir / f"{TINY_NAME}.safetensors"
    pipe.save_pretrained(folder, safe_serialization=True)
    save_original_checkpoint(
        single,
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        scheduler_config=dict(pipe.scheduler.config),
        family="sd1",
    )
    return {"diffusers": folder, "single_file": single}


def ensure_built(models_dir: Path, folder_role: str, name: str, marker: str,
                 build: Callable[[Path], dict[str, Path]], stamp: str | None = None) -> Path:
    """Make sure ``models_dir/folder_role/name`` (a diffusers folder whose ``marker`` file
    proves it complete) and ``name.safetensors`` exist; build them if not. With ``stamp``
    (what the model is built from: see ``builtin_models.shipped_stamp``) a copy whose stamp
    file names other shipped files is built again and replaces it; a copy without a stamp
    file (from before the stamps, or the user's own) is kept.

    Built in a temporary folder and renamed into place, so a crash or a concurrent
    caller never leaves a half-written model behind. Returns the folder.
    """
    from nodes.diffusion.builtin_models import STAMP_FILE, installed_stamp

    target = Path(models_dir) / folder_role
    folder = target / name
    single = target / f"{name}.safetensors"

    def current() -> bool:
        return (folder / marker).is_file() and (stamp is None
                                                or installed_stamp(folder) in (None, stamp))

    if current() and single.is_file():
        return folder
    target.mkdir(parents=True, exist_ok=True)
    # Outside the role folder so model listings never see the half-built copy; same
    # filesystem so the final moves are atomic renames.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir))
    try:
        paths = build(tmp)
        give_plain_mode(tmp)  # safetensors' writer makes 0600 files
        if stamp is not None:
            (Path(paths["diffusers"]) / STAMP_FILE).write_text(stamp + "\n")
        if stamp is not None or not single.is_file():
            os.replace(paths["single_file"], single)
        if not current():
            if folder.exists():  # an earlier, incomplete or outdated copy: moved aside
                os.replace(folder, tmp / "replaced")
            try:
                os.replace(paths["diffusers"], folder)
            except OSError:
                # Another process won the race; its copy is identical.
                if not current():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def ensure_default_model(models_dir: Path) -> Path:
    """Make sure the tiny model exists under ``models_dir/checkpoints``; return its folder."""
    return ensure_built(models_dir, "checkpoints", TINY_NAME, "model_index.json",
                        save_tiny_model)
