"""SEGA through the graph equals diffusers' SemanticStableDiffusionPipeline."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from diffusers.pipelines.deprecated.semantic_stable_diffusion import (
    SemanticStableDiffusionPipeline,
)

from engine.session import Session
from tests.graph_nodes import CAPTURED, reference_pipeline

PROMPT = "a red circle at the top left"
NEGATIVE = "blurry"
STEPS = 8


@pytest.fixture(scope="module")
def sega_pipe(tiny_model_paths):
    return reference_pipeline(SemanticStableDiffusionPipeline, tiny_model_paths["diffusers"])


CONCEPTS = [
    {"text": "a blue square", "direction": "add", "scale": 6.0, "warmup_steps": 2,
     "cooldown_steps": 10000, "threshold": 0.9, "weight": 1.0},
    {"text": "green", "direction": "remove", "scale": 4.0, "warmup_steps": 4,
     "cooldown_steps": 6, "threshold": 0.8, "weight": 0.5},
    {"text": "a star", "direction": "add", "scale": 3.0, "warmup_steps": 0,
     "cooldown_steps": 10000, "threshold": 0.95, "weight": 2.0},
]


def sega_prompt(concepts, sampler="ddim", seed=3, momentum=(0.1, 0.4), cfg=7.5):
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["20", 0], "seed": seed, "steps": STEPS, "cfg": cfg,
            "sampler_name": sampler, "scheduler": "normal", "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["8", 0],
                                                       "key": uuid.uuid4().hex}},
        "20": {"class_type": "ApplySEGA", "inputs": {
            "model": ["4", 0], "concepts": [f"c{len(concepts) - 1}", 0],
            "momentum_scale": momentum[0], "momentum_beta": momentum[1]}},
    }
    for i, concept in enumerate(concepts):
        inputs = {**concept, "clip": ["4", 1]}
        if i:
            inputs["previous"] = [f"c{i - 1}", 0]
        prompt[f"c{i}"] = {"class_type": "SEGAConcept", "inputs": inputs}
    return prompt


def run_graph(session, prompt):
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["10"]["inputs"]["key"]).numpy()


def run_reference(pipe, concepts, scheduler_cls=DDIMScheduler, seed=3, momentum=(0.1, 0.4),
                  cfg=7.5):
    pipe.scheduler = scheduler_cls.from_config(pipe.base_config)
    out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=cfg,
               height=64, width=64, output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed),
               editing_prompt=[c["text"] for c in concepts],
               reverse_editing_direction=[c["direction"] == "remove" for c in concepts],
               edit_guidance_scale=[c["scale"] for c in concepts],
               edit_warmup_steps=[c["warmup_steps"] for c in concepts],
               edit_cooldown_steps=[c["cooldown_steps"] for c in concepts],
               edit_threshold=[c["threshold"] for c in concepts],
               edit_weights=[c["weight"] for c in concepts],
               edit_momentum_scale=momentum[0], edit_mom_beta=momentum[1])
    return out.images


@pytest.mark.parametrize("n", [1, 3])
def test_matches_semantic_pipeline(session, sega_pipe, n):
    ours = run_graph(session, sega_prompt(CONCEPTS[:n]))
    ref = run_reference(sega_pipe, CONCEPTS[:n])
    assert np.abs(ours - ref).max() <= 1e-4


def test_matches_with_euler_and_other_momentum(session, sega_pipe):
    ours = run_graph(session, sega_prompt(CONCEPTS, "euler", seed=9, momentum=(0.5, 0.6)))
    ref = run_reference(sega_pipe, CONCEPTS, EulerDiscreteScheduler, seed=9, momentum=(0.5, 0.6))
    assert np.abs(ours - ref).max() <= 1e-4


def test_sega_changes_the_image_and_removing_it_restores_base(session):
    with_sega = run_graph(session, sega_prompt(CONCEPTS[:1]))
    base = sega_prompt(CONCEPTS[:1])
    base["3"]["inputs"]["model"] = ["4", 0]
    without = run_graph(session, base)
    assert np.abs(with_sega - without).max() > 1e-3


def test_sega_without_cfg_is_a_clear_error(session):
    result = session.run(sega_prompt(CONCEPTS[:1], cfg=1.0))
    assert result.run.status == "error"
    assert "cfg" in result.run.error["exception_message"]


def test_a_concept_that_cools_down_before_anothers_warm_up_leaves_no_nan(session):
    """One concept stops (cooldown 2) before the other starts (warm-up 4): in between the
    warm concepts' weights sum to 0, which diffusers divides by (a NaN image)."""
    concepts = [{**CONCEPTS[1], "warmup_steps": 0, "cooldown_steps": 2},
                {**CONCEPTS[0], "warmup_steps": 4}]
    image = run_graph(session, sega_prompt(concepts))
    assert np.isfinite(image).all()
    plain = sega_prompt(concepts)
    plain["3"]["inputs"]["model"] = ["4", 0]
    assert np.abs(image - run_graph(session, plain)).max() > 1e-3  # the second still acts


def test_a_concept_that_never_steers_says_so(session):
    """A warm-up as long as the run (or a cool-down before the warm-up) left the concept
    doing nothing without a word."""
    for change, why in (({"warmup_steps": STEPS}, "not shorter than the run's"),
                        ({"warmup_steps": 3, "cooldown_steps": 2}, "not after its warm-up")):
        prompt = sega_prompt([{**CONCEPTS[0], **change}])
        result = session.run(prompt, keep_events=True)
        assert result.ok, result.run.error
        CAPTURED.pop(prompt["10"]["inputs"]["key"])
        warnings = [d["message"] for e, d in result.events if e == "node_warning"]
        assert any("never steers" in w and why in w for w in warnings), warnings
    prompt = sega_prompt(CONCEPTS[:1])
    result = session.run(prompt, keep_events=True)
    CAPTURED.pop(prompt["10"]["inputs"]["key"], None)
    assert not [d for e, d in result.events if e == "node_warning"]


def test_a_concept_without_text_is_refused_when_queued(session):
    """Before, an empty concept passed validation, loaded the model and failed at run time."""
    from engine.validation import PromptValidationError

    prompt = sega_prompt([{**CONCEPTS[0], "text": "  \n"}])
    with pytest.raises(PromptValidationError, match="SEGA concept needs text"):
        session.validate(prompt)


def test_example_workflow_runs(models_dir, tmp_path):
    from engine.session import Workflow

    wf = Workflow.load("workflows/sega.json").set("3.steps", 6)
    result = Session(tmp_path, models_dir=models_dir, device="cpu").run(wf)
    assert result.ok, result.run.error
    assert len(result.image_paths) == 1
