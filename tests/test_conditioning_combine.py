"""Conditioning Combine averages the noise predictions of its prompts."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch

from engine.session import Session
from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel, Latent
from nodes.diffusion.sampling import SamplingParams, sample
from nodes.diffusion.schedulers import make_scheduler
from tests.graph_nodes import CAPTURED, registry_with_capture


@pytest.fixture(scope="module")
def parts(tiny_model_paths):
    from nodes.diffusion.loading import load_components

    return load_components(tiny_model_paths["diffusers"])


def embeds(parts, text):
    from nodes.conditioning import encode_text
    from nodes.diffusion.handles import TextEncoder

    return encode_text(TextEncoder(parts.text_encoder, parts.tokenizer), text)


def test_combined_prediction_is_the_weighted_mean(parts):
    """One step by hand: the sampler's prediction equals uncond + cfg (mean(conds) - uncond)."""
    model = DiffusionModel(parts.unet, dict(parts.scheduler_config))
    a, b, neg = embeds(parts, "a red circle"), embeds(parts, "a blue square"), embeds(parts, "")
    positive = Conditioning((CondEntry(a, {"strength": 1.0}), CondEntry(b, {"strength": 3.0})))
    negative = Conditioning((CondEntry(neg),))
    latent = Latent(torch.zeros(1, 4, 8, 8))
    params = SamplingParams(seed=5, steps=1, cfg=4.0)
    ours = sample(model, make_scheduler("euler", "normal", model.scheduler_config), positive,
                  negative, latent, params)
    scheduler = make_scheduler("euler", "normal", model.scheduler_config)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    x = noise * scheduler.init_noise_sigma
    inp = scheduler.scale_model_input(x, t)
    with torch.no_grad():
        eps = [parts.unet(inp, t, encoder_hidden_states=e).sample for e in (neg, a, b)]
    pred = eps[0] + 4.0 * ((1.0 * eps[1] + 3.0 * eps[2]) / 4.0 - eps[0])
    expected = scheduler.step(pred, t, x).prev_sample
    assert torch.allclose(ours, expected, atol=1e-5)


def _graph(positive: list, *, cfg: float, sampler: str, extra: dict | None = None) -> dict:
    """txt2img on the tiny model with prompts "a" (a red circle), "b" (a blue square), "n"
    (empty) and ``extra`` nodes, ``positive`` into the sampler; "c" captures the latent."""
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "a": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle",
                                                         "clip": ["4", 1]}},
        "b": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue square",
                                                         "clip": ["4", 1]}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": 1, "steps": 3, "cfg": cfg, "sampler_name": sampler,
            "scheduler": "normal", "positive": positive, "negative": ["n", 0],
            "latent_image": ["5", 0]}},
        "c": {"class_type": "TestCapture", "inputs": {"value": ["3", 0],
                                                      "key": uuid.uuid4().hex}},
    }
    prompt.update(extra or {})
    return prompt


def test_combine_nodes_in_a_graph(models_dir, tmp_path):
    session = Session(tmp_path, models_dir=models_dir, device="cpu",
                      registry=registry_with_capture())

    def run(positive):
        prompt = _graph(positive, cfg=5.0, sampler="ddim", extra={
            "bs": {"class_type": "ConditioningSetStrength",
                   "inputs": {"conditioning": ["b", 0], "strength": 0.0}},
            "ab": {"class_type": "ConditioningCombine",
                   "inputs": {"conditioning_1": ["a", 0], "conditioning_2": ["bs", 0]}}})
        assert session.run(prompt).ok
        return CAPTURED.pop(prompt["c"]["inputs"]["key"]).samples.numpy()

    # a second prompt at strength 0 contributes nothing: same as the first alone
    assert np.abs(run(["ab", 0]) - run(["a", 0])).max() < 1e-5


def test_combined_and_region_prompts_run_at_cfg_1(models_dir, tmp_path):
    """cfg 1 predicts the positive side only (ComfyUI skips the unconditional pass there):
    combined prompts and region prompts are fused on it (they were refused)."""

    session = Session(tmp_path, models_dir=models_dir, device="cpu",
                      registry=registry_with_capture())

    def graph(positive, extra=None):
        return _graph(positive, cfg=1.0, sampler="euler", extra=extra)

    def run(prompt):
        result = session.run(prompt)
        assert result.ok, result.run.error
        return CAPTURED.pop(prompt["c"]["inputs"]["key"]).samples.numpy()

    plain = run(graph(["a", 0]))
    zero_b = {"bs": {"class_type": "ConditioningSetStrength",
                     "inputs": {"conditioning": ["b", 0], "strength": 0.0}},
              "ab": {"class_type": "ConditioningCombine",
                     "inputs": {"conditioning_1": ["a", 0], "conditioning_2": ["bs", 0]}}}
    assert np.abs(run(graph(["ab", 0], zero_b)) - plain).max() < 1e-5
    both = {"ab": {"class_type": "ConditioningCombine",
                   "inputs": {"conditioning_1": ["a", 0], "conditioning_2": ["b", 0]}}}
    assert np.abs(run(graph(["ab", 0], both)) - plain).max() > 1e-3
    # a region: the same prompt on an area as large as the image is the prompt itself
    whole = {"r": {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["a", 0], "width": 64, "height": 64, "x": 0, "y": 0, "strength": 1.0}},
        "ar": {"class_type": "ConditioningCombine",
               "inputs": {"conditioning_1": ["a", 0], "conditioning_2": ["r", 0]}}}
    assert np.abs(run(graph(["ar", 0], whole)) - plain).max() < 1e-5
    box = {"r": {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["b", 0], "width": 32, "height": 32, "x": 0, "y": 0, "strength": 1.0}},
        "ar": {"class_type": "ConditioningCombine",
               "inputs": {"conditioning_1": ["a", 0], "conditioning_2": ["r", 0]}}}
    assert np.abs(run(graph(["ar", 0], box)) - plain).max() > 1e-3
    # a region alone leaves pixels to no positive prompt: said, not drawn as zeros
    result = session.run(graph(["r", 0], box))
    assert not result.ok and "at cfg 1 only the positive side" in str(result.run.error)
