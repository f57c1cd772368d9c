"""Shared pytest fixtures."""

from __future__ import annotations

import os
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
