"""PAG through the graph equals diffusers' StableDiffusionPAGPipeline, and combines."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPAGPipeline

from engine import PromptValidationError
from nodes.diffusion.pag import parse_layer_ids, select_layers
from tests.graph_nodes import CAPTURED, reference_pipeline

PROMPT = "a red circle at the top left"
NEGATIVE = "blurry"
STEPS = 8
SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}


@pytest.fixture(scope="module")
def pag_pipe(tiny_model_paths):
    return reference_pipeline(StableDiffusionPAGPipeline, tiny_model_paths["diffusers"])


def pag_prompt(ckpt="steerflow-tiny", sampler="ddim", seed=3, cfg=7.5, width=64, height=64,
               batch=1, pag: dict | None = None, sega: float | None = None,
               combine: bool = False):
    """txt2img on the tiny model; ``pag`` holds the PerturbedAttentionGuidance inputs."""
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                            "batch_size": batch}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": STEPS, "cfg": cfg,
            "sampler_name": sampler, "scheduler": "normal", "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["8", 0],
                                                       "key": uuid.uuid4().hex}},
    }
    model = ["4", 0]
    if sega is not None:  # SEGA first on the chain (the sampler orders by priority anyway)
        prompt["c0"] = {"class_type": "SEGAConcept", "inputs": {
            "clip": ["4", 1], "text": "a blue square", "scale": sega, "warmup_steps": 1,
            "threshold": 0.8}}
        prompt["21"] = {"class_type": "ApplySEGA", "inputs": {"model": model,
                                                             "concepts": ["c0", 0]}}
        model = ["21", 0]
    if pag is not None:
        prompt["20"] = {"class_type": "PerturbedAttentionGuidance",
                        "inputs": {"model": model, **pag}}
        model = ["20", 0]
    if combine:  # the same prompt twice: Conditioning Combine's average is the prompt itself
        prompt["9"] = {"class_type": "ConditioningCombine",
                       "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["6", 0]}}
        prompt["3"]["inputs"]["positive"] = ["9", 0]
    prompt["3"]["inputs"]["model"] = model
    return prompt


def run_graph(session, prompt):
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["10"]["inputs"]["key"]).numpy()


def run_reference(pipe, layers, scale, adaptive, sampler="ddim", seed=3, cfg=7.5, width=64,
                  height=64, batch=1):
    pipe.scheduler = SCHEDULERS[sampler].from_config(pipe.base_config)
    pipe.set_pag_applied_layers(layers)
    out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=cfg,
               height=height, width=width, num_images_per_prompt=batch, output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed), pag_scale=scale,
               pag_adaptive_scale=adaptive)
    return out.images


CASES = {
    # name: graph settings, PAG inputs (layers as the node's comma-separated string)
    "folder-ddim-mid": ({}, {"scale": 3.0, "layers": "mid", "adaptive_scale": 0.0}),
    "file-euler-48x32-two-ids-adaptive": (
        {"ckpt": "steerflow-tiny.safetensors", "sampler": "euler", "width": 48, "height": 32,
         "seed": 5},
        {"scale": 5.0, "layers": "mid, up_blocks.1.attentions.(0|2)", "adaptive_scale": 0.002}),
    # the adaptive scale reaches its floor of 0 for t < 500: the late steps are plain CFG
    "folder-ddim-48x32-batch2-floor": (
        {"width": 48, "height": 32, "batch": 2, "seed": 7},
        {"scale": 2.0, "layers": "down_blocks.0", "adaptive_scale": 0.004}),
    "file-ddim-no-cfg": ({"ckpt": "steerflow-tiny.safetensors", "cfg": 1.0},
                         {"scale": 3.0, "layers": "mid", "adaptive_scale": 0.0}),
    "folder-euler-48x32-no-cfg-adaptive": (
        {"sampler": "euler", "cfg": 1.0, "width": 48, "height": 32},
        {"scale": 4.0, "layers": "up_blocks.1", "adaptive_scale": 0.001}),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_pag_pipeline(session, pag_pipe, case):
    graph, pag = CASES[case]
    ours = run_graph(session, pag_prompt(**graph, pag=pag))
    ref = run_reference(pag_pipe, parse_layer_ids(pag["layers"]), pag["scale"],
                        pag["adaptive_scale"], **{k: v for k, v in graph.items() if k != "ckpt"})
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4


def test_pag_acts_and_scale_zero_is_the_plain_model(session):
    plain = run_graph(session, pag_prompt())
    with_pag = run_graph(session, pag_prompt(pag={"scale": 3.0}))
    off = run_graph(session, pag_prompt(pag={"scale": 0.0}))
    assert np.abs(with_pag - plain).max() > 1e-3
    assert np.array_equal(off, plain)


def test_layers_are_selected_as_the_pipeline_does(session, pag_pipe):
    from diffusers.models.attention_processor import PAGCFGIdentitySelfAttnProcessor2_0

    from nodes.diffusion.pag import self_attention_layers

    unet = pag_pipe.unet
    names = self_attention_layers(unet)
    assert all(name.endswith("attn1") for name in names)
    for text in ("mid", "down_blocks.0", "up_blocks.1.attentions.(0|2), mid", "attentions.1"):
        before = dict(unet.attn_processors)
        pag_pipe.set_pag_applied_layers(parse_layer_ids(text))
        pag_pipe._set_pag_attn_processor(pag_pipe.pag_applied_layers, True)
        theirs = {name.removesuffix(".processor") for name, proc in unet.attn_processors.items()
                  if isinstance(proc, PAGCFGIdentitySelfAttnProcessor2_0)}
        unet.set_attn_processor(before)
        assert set(select_layers(names, parse_layer_ids(text))) == theirs, text


def test_a_layer_that_matches_nothing_is_an_error_listing_the_layers(session):
    result = session.run(pag_prompt(pag={"layers": "mid, down.block_1"}))
    assert result.run.status == "error"
    error = result.run.error
    assert error["node_id"] == "20" and error["node_type"] == "PerturbedAttentionGuidance"
    message = error["exception_message"]
    assert "'down.block_1'" in message
    assert "mid_block.attentions.0.transformer_blocks.0.attn1" in message
    assert "down_blocks.0.attentions.1.transformer_blocks.0.attn1" in message


@pytest.mark.parametrize("layers", ["", " , ", "mid_block.(attentions"])
def test_bad_layer_text_is_a_validation_error(session, layers):
    with pytest.raises(PromptValidationError) as info:
        session.run(pag_prompt(pag={"layers": layers}))
    (issue,) = [i for i in info.value.issues if i.severity == "error"]
    assert issue.kind == "node_error" and issue.input_name == "layers"


def test_out_of_range_inputs_are_refused(session):
    with pytest.raises(PromptValidationError) as info:
        session.run(pag_prompt(pag={"scale": -1.0, "adaptive_scale": 2.0}))
    assert sorted(i.input_name for i in info.value.issues) == ["adaptive_scale", "scale"]


def test_combines_with_sega_in_one_run_and_each_still_acts(session):
    pag = {"scale": 3.0, "layers": "mid, up_blocks.1"}
    plain = run_graph(session, pag_prompt())
    both = run_graph(session, pag_prompt(pag=pag, sega=6.0))
    sega_only = run_graph(session, pag_prompt(sega=6.0))
    pag_only = run_graph(session, pag_prompt(pag=pag))
    for one in (plain, sega_only, pag_only):
        assert np.abs(both - one).max() > 1e-3
    # SEGA still acts: it moves the image about as much with PAG as without (not zero)
    moved_alone = np.abs(sega_only - plain).mean()
    moved_with_pag = np.abs(both - pag_only).mean()
    assert 0.3 < moved_with_pag / moved_alone < 3
    # PAG still finds its own batch entry next to SEGA's: with a SEGA concept of scale 0
    # (no edit at all) the run is PAG alone, up to float noise from the larger batch
    idle_sega = run_graph(session, pag_prompt(pag=pag, sega=0.0))
    assert np.abs(idle_sega - pag_only).max() <= 1e-4


def test_combined_conditioning_perturbs_each_entry(session):
    # Combine(p, p) averages to p for the cond and for the perturbed entries, so it must
    # equal PAG on p alone; PAG's entries come after Conditioning Combine's here.
    pag = {"scale": 3.0, "layers": "mid"}
    alone = run_graph(session, pag_prompt(pag=pag))
    combined = run_graph(session, pag_prompt(pag=pag, combine=True))
    assert np.abs(combined - alone).max() <= 1e-4


def test_roles_of_names_each_extensions_entries(parts_run):
    roles, pag_roles, sega_roles = parts_run
    assert roles == ("uncond", "cond", "extra:0", "extra:1")
    assert pag_roles == ("extra:0",) and sega_roles == ("extra:1",)


@pytest.fixture
def parts_run(session):
    """The roles a PAG + SEGA run assigns, read from inside the run."""
    from nodes.diffusion import pag as pag_module

    seen = []
    original = pag_module.PerturbedAttentionGuidance.guidance

    def spy(self, run, step, preds, guidance):
        sega = next(e for e in run.extensions if type(e).__name__ == "SemanticGuidance")
        seen.append((run.roles, run.roles_of(self), run.roles_of(sega)))
        return original(self, run, step, preds, guidance)

    pag_module.PerturbedAttentionGuidance.guidance = spy
    try:
        run_graph(session, pag_prompt(pag={"scale": 2.5}, sega=5.0, seed=11))
    finally:
        pag_module.PerturbedAttentionGuidance.guidance = original
    return seen[0]
