"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# Nothing in the test suite may reach the Hugging Face hub; with this set a stray
# lookup fails at once instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The test machines are small and shared: with more than one intra-op thread,
# any competing process makes torch's thread pool stall (a 0.1 s tiny-model run
# took 15 s on 2 busy cores). STEERFLOW_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("STEERFLOW_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder whose checkpoints/ holds the tiny model in both formats."""
    from nodes.diffusion.tiny import save_tiny_model  # heavy import, only when used

    root = tmp_path_factory.mktemp("models")
    save_tiny_model(root / "checkpoints")
    return root


@pytest.fixture(scope="session")
def tiny_model_paths(models_dir: Path) -> dict[str, Path]:
    """The tiny SD 1.x model saved once per session: {"diffusers": dir, "single_file": file}."""
    from nodes.diffusion.tiny import TINY_NAME

    checkpoints = models_dir / "checkpoints"
    return {"diffusers": checkpoints / TINY_NAME,
            "single_file": checkpoints / f"{TINY_NAME}.safetensors"}


@pytest.fixture(scope="session")
def controlnet_paths(models_dir: Path) -> dict[str, Path]:
    """The tiny ControlNet in models/controlnet: {"diffusers": dir, "single_file": file}."""
    from nodes.diffusion.tiny_controlnet import TINY_CONTROLNET_NAME, ensure_default_controlnet

    folder = ensure_default_controlnet(models_dir)
    return {"diffusers": folder,
            "single_file": folder.parent / f"{TINY_CONTROLNET_NAME}.safetensors"}


@pytest.fixture(scope="module")
def session(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A session per test module over the tiny models, with the TestCapture node
    (modules that need another session define their own ``session``)."""
    from engine.session import Session
    from tests.graph_nodes import registry_with_capture

    return Session(tmp_path_factory.mktemp("session"), models_dir=models_dir, device="cpu",
                   registry=registry_with_capture())


# --- a tiny 9-channel inpainting model (inpainting and outpainting tests) -------------------

INPAINT_NAME = "steerflow-tiny-inpaint"


@pytest.fixture(scope="module")
def inpaint_models(models_dir, tmp_path_factory) -> Path:
    """A models folder with the tiny model and a tiny 9-channel inpainting model (same VAE
    and text encoder, UNet with in_channels=9), in diffusers format."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    from nodes.diffusion.tiny import UNET_CONFIG, build_tiny_pipeline

    root = tmp_path_factory.mktemp("inpaint_models")
    (root / "checkpoints").mkdir()
    shutil.copytree(models_dir / "checkpoints" / "steerflow-tiny",
                    root / "checkpoints" / "steerflow-tiny")
    base = build_tiny_pipeline()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        unet = UNet2DConditionModel(**{**UNET_CONFIG, "in_channels": 9}).eval()
    StableDiffusionInpaintPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(root / "checkpoints" / INPAINT_NAME, safe_serialization=True)
    return root


def load_pipe(folder: Path):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.base_scheduler_config = dict(pipe.scheduler.config)
    return pipe


@pytest.fixture(scope="module")
def pipe4(inpaint_models):
    return load_pipe(inpaint_models / "checkpoints" / "steerflow-tiny")


@pytest.fixture(scope="module")
def pipe9(inpaint_models):
    return load_pipe(inpaint_models / "checkpoints" / INPAINT_NAME)
