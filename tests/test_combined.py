"""SEGA + ControlNet + LoRA + an inpainting mask in one sampler run, each doing its part."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from engine.session import Session, Workflow
from nodes.diffusion.masking import mask_to_latent
from tests.graph_nodes import CAPTURED, registry_with_capture


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(tmp_path_factory.mktemp("combined"), device="cpu",
                   registry=registry_with_capture())


def run(session, drop: str | None = None):
    """The combined workflow's final LATENT, optionally without one technique."""
    wf = Workflow.load("workflows/combined.json").set("3.steps", 6)
    prompt = wf.prompt
    if drop == "sega":
        prompt["3"]["inputs"]["model"] = ["30", 0]
    elif drop == "controlnet":
        prompt["3"]["inputs"]["positive"] = ["6", 0]
        prompt["3"]["inputs"]["negative"] = ["7", 0]
    elif drop == "lora":
        for node_id, slot in (("20", "model"), ("6", "clip"), ("7", "clip"), ("21", "clip")):
            prompt[node_id]["inputs"][slot] = ["4", 0 if slot == "model" else 1]
    elif drop == "mask":
        prompt["3"]["inputs"]["latent_image"] = ["41", 0]
    key = uuid.uuid4().hex
    prompt["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["3", 0], "key": key}}
    prompt["cap_in"] = {"class_type": "TestCapture",
                        "inputs": {"value": ["41", 0], "key": key + "in"}}
    result = session.run(wf)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).samples, CAPTURED.pop(key + "in").samples


def test_all_four_techniques_act_in_one_run(session):
    out, original = run(session)
    assert torch.isfinite(out).all()
    # the mask: outside the transparent area the latent is the input's, exactly
    with Image.open(session.env.resolve("input", "steerflow_example_hole.png")) as img:
        alpha = np.asarray(img)[..., 3].astype(np.float32) / 255.0
    mask = 1.0 - torch.from_numpy(alpha)[None]  # LoadImage's MASK: 1 - alpha
    keep = mask_to_latent(mask, tuple(out.shape[-2:])) == 0
    assert keep.any() and (~keep).any()
    assert torch.equal(out[keep.expand_as(out)], original[keep.expand_as(original)])
    # every other technique changes the repainted region
    for technique in ("sega", "controlnet", "lora"):
        without, _ = run(session, drop=technique)
        assert (out - without).abs().max() > 1e-3, technique
    unmasked, _ = run(session, drop="mask")
    assert (out - unmasked)[keep.expand_as(out)].abs().max() > 1e-3
