"""Self-Attention Guidance through the graph equals diffusers' StableDiffusionSAGPipeline."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.stable_diffusion_sag import StableDiffusionSAGPipeline

from engine.session import Session, Workflow
from engine.validation import PromptValidationError
from nodes.diffusion.attention import AttentionStore
from nodes.diffusion.sag import SelfAttentionGuidance
from nodes.diffusion.schedulers import SAMPLERS
from tests.graph_nodes import CAPTURED, reference_pipeline, registry_with_capture, run_graph

PROMPT = "a red circle at the top left"
NEGATIVE = "blurry"
STEPS = 6


@pytest.fixture(scope="module")
def sag_pipe(tiny_model_paths):
    return reference_pipeline(StableDiffusionSAGPipeline, tiny_model_paths["diffusers"])


def sag_prompt(*, ckpt="steerflow-tiny", sampler="ddim", scale=0.75, blur_sigma=1.0,
               width=64, height=64, cfg=7.5, seed=3, sag=True, sega=False, batch=1) -> dict:
    """txt2img on the tiny model, optionally through SelfAttentionGuidance and SEGA."""
    model: list = ["4", 0]
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                           "batch_size": batch}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["8", 0],
                                                       "key": uuid.uuid4().hex}},
    }
    if sag:
        prompt["20"] = {"class_type": "SelfAttentionGuidance", "inputs": {
            "model": model, "scale": scale, "blur_sigma": blur_sigma}}
        model = ["20", 0]
    if sega:
        prompt["c0"] = {"class_type": "SEGAConcept", "inputs": {
            "clip": ["4", 1], "text": "a blue square", "scale": 6.0, "warmup_steps": 1}}
        prompt["21"] = {"class_type": "ApplySEGA", "inputs": {"model": model,
                                                              "concepts": ["c0", 0]}}
        model = ["21", 0]
    prompt["3"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": STEPS, "cfg": cfg, "sampler_name": sampler,
        "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0]}}
    return prompt


def run_reference(pipe, *, sampler="ddim", scale=0.75, width=64, height=64, cfg=7.5,
                  seed=3, batch=1) -> np.ndarray:
    class_name, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.base_config, **extra)
    out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=cfg,
               sag_scale=scale, height=height, width=width, num_images_per_prompt=batch,
               output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed))
    return out.images


# The pipeline blurs with a fixed sigma of 1 (ComfyUI's blur_sigma). 64x40 pixels are
# 8x5 latents and a 4x3 mid block (rounded up); the pipeline's reflect padding needs
# latents of at least 5x5, so it cannot run 48x32.
@pytest.mark.parametrize(("ckpt", "sampler", "width", "height", "scale", "batch"), [
    ("steerflow-tiny", "ddim", 64, 64, 0.75, 1),
    ("steerflow-tiny.safetensors", "ddim", 64, 40, 0.75, 2),
    ("steerflow-tiny", "dpmpp_2m", 64, 40, 1.5, 1),
    ("steerflow-tiny.safetensors", "dpmpp_2m", 64, 64, 0.75, 1),
    ("steerflow-tiny", "uni_pc", 40, 64, 0.75, 1),
])
def test_matches_sag_pipeline(session, sag_pipe, ckpt, sampler, width, height, scale, batch):
    ours = run_graph(session, sag_prompt(ckpt=ckpt, sampler=sampler, scale=scale,
                                         width=width, height=height, batch=batch))
    ref = run_reference(sag_pipe, sampler=sampler, scale=scale, width=width, height=height,
                        batch=batch)
    assert ours.shape == ref.shape == (batch, height, width, 3)
    assert np.abs(ours - ref).max() <= 1e-4
    plain = run_graph(session, sag_prompt(ckpt=ckpt, sampler=sampler, width=width,
                                          height=height, sag=False, batch=batch))
    assert np.abs(ours - plain).max() > 1e-3  # SAG acts


def test_matches_sag_pipeline_without_cfg(session, sag_pipe):
    """cfg 1: the pipeline's other branch (the conditional pass's map and prediction)."""
    ours = run_graph(session, sag_prompt(cfg=1.0, width=64, height=40))
    ref = run_reference(sag_pipe, cfg=1.0, width=64, height=40)
    assert np.abs(ours - ref).max() <= 1e-4
    plain = run_graph(session, sag_prompt(cfg=1.0, width=64, height=40, sag=False))
    assert np.abs(ours - plain).max() > 1e-3


@pytest.mark.parametrize("sampler", ["euler", "heun", "euler_ancestral"])
def test_sigma_space_samplers_and_small_latents(session, sampler):
    """σ-space samplers (no pipeline reference takes them) and 48x32 (6x4 latents, a
    smaller blur kernel) run and act."""
    ours = run_graph(session, sag_prompt(sampler=sampler, width=48, height=32))
    plain = run_graph(session, sag_prompt(sampler=sampler, width=48, height=32, sag=False))
    assert np.isfinite(ours).all()
    assert np.abs(ours - plain).max() > 1e-3


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_unmasked_degradation_gives_back_the_latent(sampler, tiny_model_paths):
    """With no token masked nothing is blurred: x̂0 noised back with ε̂ is x_t, in the
    space the UNet sees, for variance-preserving and σ-space schedulers alike."""
    from nodes.diffusion.loading import load_components

    class_name, extra = SAMPLERS[sampler]
    config = load_components(tiny_model_paths["diffusers"]).scheduler_config
    scheduler = getattr(diffusers, class_name).from_config(config, **extra)
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    if hasattr(scheduler, "_init_step_index"):
        scheduler._init_step_index(t)
    store = AttentionStore()
    store.learn_sizes(8, 6)
    run = SimpleNamespace(scheduler=scheduler, attention=store)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 6, generator=generator)
    eps = torch.randn(1, 4, 8, 6, generator=generator)
    uniform = torch.full((1, 48, 48), 1 / 48)  # every column sums to 1: not above it
    degraded = SelfAttentionGuidance(0.75, 2.0).degraded_latents(run, t, latents, eps, uniform)
    assert torch.allclose(degraded, latents, atol=1e-5)
    peaked = uniform.clone()
    peaked[:, :, :8] = 1 / 8  # every query attends to 8 tokens only: those are masked
    peaked[:, :, 8:] = 0
    degraded = SelfAttentionGuidance(0.75, 2.0).degraded_latents(run, t, latents, eps, peaked)
    changed = ((degraded - latents).abs().amax(dim=1)[0] > 1e-4).flatten()
    assert changed[:8].all() and not changed[8:].any()  # tokens are row-major latent pixels


def test_sag_with_sega_in_one_run(session):
    """SAG and SEGA act together: each changes the image the other makes."""
    both = run_graph(session, sag_prompt(sega=True))
    sega_only = run_graph(session, sag_prompt(sega=True, sag=False))
    sag_only = run_graph(session, sag_prompt())
    assert np.isfinite(both).all()
    assert np.abs(both - sega_only).max() > 1e-3  # SAG still acts with SEGA
    assert np.abs(both - sag_only).max() > 1e-3  # SEGA still acts with SAG


def test_sag_in_the_combined_workflow(tmp_path_factory):
    """SAG + SEGA + ControlNet + LoRA + an inpainting mask, default model, one run: the
    degraded pass gets the ControlNet's residuals, and the mask still keeps its region."""
    session = Session(tmp_path_factory.mktemp("sag_combined"), device="cpu",
                      registry=registry_with_capture())

    def run(sag: bool, sega: bool = True):
        wf = Workflow.load("workflows/combined.json").set("3.steps", 6)
        prompt = wf.prompt
        model = prompt["3"]["inputs"]["model"]
        if not sega:
            model = prompt[model[0]]["inputs"]["model"]  # ApplySEGA's input
        if sag:
            prompt["sag"] = {"class_type": "SelfAttentionGuidance",
                             "inputs": {"model": model, "scale": 0.75, "blur_sigma": 1.0}}
            model = ["sag", 0]
        prompt["3"]["inputs"]["model"] = model
        key = uuid.uuid4().hex
        prompt["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["3", 0],
                                                                 "key": key}}
        result = session.run(wf)
        assert result.ok, result.run.error
        return CAPTURED.pop(key).samples

    with_sag, without = run(True), run(False)
    assert torch.isfinite(with_sag).all()
    changed = (with_sag - without).abs() > 1e-4
    assert changed.any()
    unmasked = (with_sag - without).abs() == 0
    assert unmasked.any()  # the kept region is the input's either way
    assert (with_sag - run(True, sega=False)).abs().max() > 1e-3  # SEGA still acts


def test_scale_zero_is_exactly_no_sag(session):
    off = run_graph(session, sag_prompt(scale=0.0))
    plain = run_graph(session, sag_prompt(sag=False))
    assert np.array_equal(off, plain)


@pytest.fixture(scope="module")
def parts(session):
    """MODEL, positive and negative CONDITIONING and a 64x40 LATENT of the tiny model."""
    key = uuid.uuid4().hex
    prompt = sag_prompt(width=64, height=40, sag=False)
    for node in ("4", "6", "7", "5"):
        prompt[f"c{node}"] = {"class_type": "TestCapture",
                              "inputs": {"value": [node, 0], "key": key + node}}
    del prompt["10"], prompt["8"], prompt["3"]
    assert session.run(prompt).ok
    return [CAPTURED.pop(key + n) for n in "4675"]


def sample_with(model, parts, *extensions, cfg=7.5):
    from nodes.diffusion.sampling import SamplingParams, sample
    from nodes.diffusion.schedulers import make_scheduler

    _, pos, neg, latent = parts
    for ext in extensions:
        model = model.with_extension(ext)
    scheduler = make_scheduler("ddim", "normal", model.scheduler_config)
    return sample(model, scheduler, pos, neg, latent, SamplingParams(seed=1, steps=3, cfg=cfg))


def test_the_degraded_pass_gets_other_extensions_unet_inputs(parts):
    """Each step: the main pass, then SAG's own pass on the guided role's rows with its
    own batch role; the UNet's processors are restored after the run."""
    from nodes.diffusion.extensions import SamplerExtension

    seen: list[tuple[int, tuple[str, ...]]] = []

    class Spy(SamplerExtension):
        def unet_inputs(self, run, step, call):
            seen.append((call.sample.shape[0], run.attention.roles))

    model = parts[0]
    before = dict(model.unet.attn_processors)
    sample_with(model, parts, SelfAttentionGuidance(0.75, 1.0), Spy())
    assert seen == [(2, ("uncond", "cond")), (1, ("sag",))] * 3
    seen.clear()
    sample_with(model, parts, SelfAttentionGuidance(0.75, 1.0), Spy(), cfg=1.0)
    assert seen == [(1, ("cond",)), (1, ("sag",))] * 3
    assert dict(model.unet.attn_processors) == before


def test_sag_drives_a_9_channel_inpainting_unet(parts):
    """The degraded pass gets the inpainting model's extra channels (it cannot run without)."""
    from dataclasses import replace

    from diffusers import UNet2DConditionModel

    from nodes.diffusion.handles import InpaintCondition
    from nodes.diffusion.tiny import UNET_CONFIG

    torch.manual_seed(0)
    model = replace(parts[0], unet=UNet2DConditionModel(**{**UNET_CONFIG, "in_channels": 9}))
    latent = parts[3]
    mask = torch.zeros(1, 40, 64)
    mask[:, 8:32, 16:48] = 1
    latent = replace(latent, inpaint=InpaintCondition(mask, torch.randn_like(latent.samples)))
    nine = [*parts[:3], latent]
    with_sag = sample_with(model, nine, SelfAttentionGuidance(0.75, 1.0))
    without = sample_with(model, nine)
    assert torch.isfinite(with_sag).all() and (with_sag - without).abs().max() > 1e-3


def test_inputs_are_bounded_and_defaults_are_comfyuis(session):
    inputs = session.registry.schema(session.env)["SelfAttentionGuidance"]["input"]["required"]
    assert inputs["scale"][1]["default"] == 0.5 and inputs["blur_sigma"][1]["default"] == 2.0
    for name, bad in (("scale", 6.0), ("scale", -3.0), ("blur_sigma", 0.0),
                      ("blur_sigma", 11.0)):
        prompt = sag_prompt()
        prompt["20"]["inputs"][name] = bad
        with pytest.raises(PromptValidationError) as info:
            session.validate(prompt)
        errors = [i for i in info.value.issues if i.severity == "error"]
        assert [(i.node_id, i.input_name, i.kind) for i in errors] == [
            ("20", name, "out_of_range")]


def test_example_workflow_runs(tmp_path):
    wf = Workflow.load("workflows/sag.json").set("3.steps", 4)
    assert any(n["class_type"] == "SelfAttentionGuidance" for n in wf.prompt.values())
    result = Session(tmp_path, device="cpu").run(wf)
    assert result.ok, result.run.error
    assert len(result.image_paths) == 1
