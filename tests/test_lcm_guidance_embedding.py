"""A guidance-distilled LCM UNet (``time_cond_proj_dim``, e.g. LCM_Dreamshaper_v7) gets
its guidance-scale embedding from the sampler's cfg, as diffusers'
LatentConsistencyModelPipeline gives it (one pass, no CFG)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel

from engine.session import Session
from nodes.diffusion.tiny import SCHEDULER_CONFIG, UNET_CONFIG, build_tiny_pipeline
from tests.graph_nodes import CAPTURED, registry_with_capture

NAME = "tiny-lcm"


@pytest.fixture(scope="module")
def lcm(tmp_path_factory) -> tuple[Path, LatentConsistencyModelPipeline]:
    root = tmp_path_factory.mktemp("lcm_models")
    base = build_tiny_pipeline()
    torch.manual_seed(7)
    unet = UNet2DConditionModel(**{**UNET_CONFIG, "time_cond_proj_dim": 16}).eval()
    pipe = LatentConsistencyModelPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
        scheduler=LCMScheduler.from_config(SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root / "checkpoints" / NAME, safe_serialization=True)
    return root, pipe


def graph(cfg: float, width: int, height: int) -> dict:
    return {
        "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": NAME}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle",
                                                         "clip": ["ck", 1]}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ck", 1]}},
        "l": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                           "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {
            "model": ["ck", 0], "seed": 3, "steps": 4, "cfg": cfg, "sampler_name": "lcm",
            "scheduler": "normal", "positive": ["p", 0], "negative": ["n", 0],
            "latent_image": ["l", 0], "denoise": 1.0}},
        "d": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["ck", 2]}},
        "c": {"class_type": "TestCapture", "inputs": {"value": ["d", 0],
                                                      "key": uuid.uuid4().hex}},
    }


@pytest.mark.parametrize(("cfg", "size"), [(1.0, (72, 64)), (8.0, (72, 64)), (4.5, (40, 64))])
def test_lcm_guidance_embedding_matches_the_pipeline(lcm, tmp_path, cfg, size):
    root, pipe = lcm
    session = Session(tmp_path, models_dir=root, device="cpu",
                      registry=registry_with_capture())
    prompt = graph(cfg, *size)
    result = session.run(prompt)
    assert result.ok, result.run.error
    ours = CAPTURED.pop(prompt["c"]["inputs"]["key"]).numpy()
    ref = pipe("a red circle", num_inference_steps=4, guidance_scale=cfg, width=size[0],
               height=size[1], output_type="np",
               generator=torch.Generator("cpu").manual_seed(3)).images
    assert np.abs(ours - ref).max() <= 1e-4


def test_cfg_reaches_the_model(lcm, tmp_path):
    root, _ = lcm
    session = Session(tmp_path, models_dir=root, device="cpu",
                      registry=registry_with_capture())
    images = []
    for cfg in (1.0, 8.0):
        prompt = graph(cfg, 64, 64)
        assert session.run(prompt).ok
        images.append(CAPTURED.pop(prompt["c"]["inputs"]["key"]).numpy())
    assert np.abs(images[0] - images[1]).max() > 1e-3


def test_save_checkpoint_says_why_it_cannot_hold_the_guidance_embedding(lcm, tmp_path):
    root, _ = lcm
    session = Session(tmp_path, models_dir=root, device="cpu",
                      registry=registry_with_capture())
    prompt = {
        "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": NAME}},
        "save": {"class_type": "CheckpointSave", "inputs": {
            "model": ["ck", 0], "clip": ["ck", 1], "vae": ["ck", 2],
            "filename_prefix": "checkpoints/lcm"}},
    }
    result = session.run(prompt)
    assert not result.ok
    assert "time_cond_proj_dim" in result.run.error["exception_message"]
    assert "diffusers folder" in result.run.error["exception_message"]
