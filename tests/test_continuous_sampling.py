"""Continuous-σ models (Model Sampling Continuous EDM / V, CosXL, Playground v2.5) through the
graph equal diffusers' StableDiffusionXLPipeline with its EDM schedulers (tiny SDXL
weights), ContinuousV equals a written-out loop, single files are detected by their
marker keys, and what cannot run says so."""

from __future__ import annotations

import itertools
import math
import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file

from engine.session import Session
from nodes.diffusion.continuous import (
    PLAYGROUND_LATENT_FORMAT,
    continuous_config,
    continuous_samplers,
    continuous_sigmas,
    continuous_spec,
)
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

PROMPT = "a red circle at the top left on a white background"
NEGATIVE = "blurry"
WIDTH, HEIGHT = 96, 64  # non-square
BASE = "steerflow-tiny-sdxl"
PLAYGROUND = "tiny-playground"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    from nodes.diffusion.tiny_sdxl import build_tiny_sdxl_pipeline, ensure_tiny_sdxl

    root = tmp_path_factory.mktemp("continuous_models")
    ensure_tiny_sdxl(root)
    checkpoints = root / "checkpoints"
    # Playground v2.5 as diffusers ships it: EDM DPM-Solver, σ_data 0.5, latent statistics
    pipe = build_tiny_sdxl_pipeline(0)
    pipe.vae.register_to_config(latents_mean=PLAYGROUND_LATENT_FORMAT["mean"],
                                latents_std=PLAYGROUND_LATENT_FORMAT["std"], scaling_factor=0.5)
    pipe.scheduler = diffusers.EDMDPMSolverMultistepScheduler(
        sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, prediction_type="epsilon")
    pipe.save_pretrained(checkpoints / PLAYGROUND, safe_serialization=True)
    # single files with ComfyUI's marker keys
    single = checkpoints / f"{BASE}.safetensors"
    with safe_open(str(single), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(single))
    markers = {
        "tiny-cosxl": {"edm_vpred.sigma_max": torch.tensor(120.0),
                       "edm_vpred.sigma_min": torch.tensor(0.002)},
        "tiny-playground-file": {"edm_mean": torch.zeros(1, 4, 1, 1),
                                 "edm_std": torch.ones(1, 4, 1, 1)},
        "tiny-vpred": {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])},
    }
    for name, extra in markers.items():
        save_file({**tensors, **extra}, str(checkpoints / f"{name}.safetensors"), metadata)
    return root


@pytest.fixture(scope="module")
def session(models, tmp_path_factory):
    return Session(tmp_path_factory.mktemp("continuous_session"), models_dir=models,
                   device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def pipe(models):
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
        models / "checkpoints" / BASE, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode(text: str) -> dict:
    return {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "clip": ["4", 1], "width": WIDTH, "height": HEIGHT, "crop_w": 0, "crop_h": 0,
        "target_width": WIDTH, "target_height": HEIGHT, "text_g": text, "text_l": text}}


def graph(ckpt: str = BASE, sampler: str = "euler", schedule: str = "karras", *,
          node: str | None = "ModelSamplingContinuousEDM", sampling: str = "v_prediction",
          sigma_max: float = 120.0, sigma_min: float = 0.002, steps: int = 5,
          capture: str = "image") -> dict:
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": encode(PROMPT), "7": encode(NEGATIVE),
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["11", 0] if node else ["4", 0], "seed": 3, "steps": steps, "cfg": 5.0,
            "sampler_name": sampler, "scheduler": schedule, "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {
            "value": ["8", 0] if capture == "image" else [capture, 0]}},
    }
    if node:
        prompt["11"] = {"class_type": node, "inputs": {
            "model": ["4", 0], "sampling": sampling, "sigma_max": sigma_max,
            "sigma_min": sigma_min}}
    return prompt


def run(session, prompt: dict):
    key = uuid.uuid4().hex
    prompt["10"]["inputs"]["key"] = key
    result = session.run(prompt)
    assert result.ok, result.run.error
    value = CAPTURED.pop(key)
    return value.cpu().numpy() if isinstance(value, torch.Tensor) else value


def reference(pipe, scheduler, steps: int = 5) -> np.ndarray:
    pipe.scheduler = scheduler
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=5.0,
                height=HEIGHT, width=WIDTH, output_type="np",
                generator=torch.Generator("cpu").manual_seed(3)).images


# --- parity with StableDiffusionXLPipeline + EDM schedulers --------------------------------


CASES = [  # (our sampling, sampler, schedule, diffusers class, its config)
    ("v_prediction", "euler", "karras", "EDMEulerScheduler",
     {"sigma_data": 1.0, "prediction_type": "v_prediction"}),
    ("edm", "dpmpp_2m", "karras", "EDMDPMSolverMultistepScheduler",
     {"sigma_data": 0.5, "prediction_type": "epsilon"}),
    ("v_prediction", "dpmpp_2m", "exponential", "EDMDPMSolverMultistepScheduler",
     {"sigma_data": 1.0, "prediction_type": "v_prediction", "sigma_schedule": "exponential"}),
    ("edm", "euler", "exponential", "EDMEulerScheduler",
     {"sigma_data": 0.5, "prediction_type": "epsilon", "sigma_schedule": "exponential"}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("sampling", "sampler", "schedule", "cls", "config"), CASES)
def test_node_matches_sdxl_pipeline_with_edm_scheduler(session, pipe, sampling, sampler,
                                                       schedule, cls, config):
    ours = run(session, graph(sampler=sampler, schedule=schedule, sampling=sampling))
    ref = reference(pipe, getattr(diffusers, cls)(sigma_min=0.002, sigma_max=120.0, **config))
    assert ours.shape == ref.shape == (1, HEIGHT, WIDTH, 3)
    assert np.abs(ours - ref).max() <= TOLERANCE


@pytest.mark.slow
def test_playground_folder_matches_pipeline_with_its_latent_format(session, models):
    """The diffusers folder's EDM scheduler and VAE latents_mean/std are read on load; the
    node (edm_playground_v2.5, σ_max 80) on it, and the single file with Playground's marker
    keys, sample the same picture."""
    folder = models / "checkpoints" / PLAYGROUND
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    ref = reference(pipe, pipe.scheduler)
    loaded = run(session, graph(PLAYGROUND, "dpmpp_2m", "karras", node=None))
    assert np.abs(loaded - ref).max() <= TOLERANCE
    with_node = run(session, graph(PLAYGROUND, "dpmpp_2m", "karras",
                                   sampling="edm_playground_v2.5", sigma_max=80.0))
    assert np.abs(with_node - ref).max() <= TOLERANCE
    # the single file's VAE keeps SDXL's scaling factor: the latent format bridges it
    single = run(session, graph("tiny-playground-file.safetensors", "dpmpp_2m", "karras",
                                node=None))
    assert np.abs(single - ref).max() <= TOLERANCE
    # without the latent format the picture is another one
    plain_edm = run(session, graph(PLAYGROUND, "dpmpp_2m", "karras", sampling="edm",
                                   sigma_max=80.0))
    assert np.abs(plain_edm - ref).max() > 1e-2


@pytest.mark.slow
def test_continuous_v_matches_a_written_out_loop(session, pipe):
    """ModelSamplingContinuousV: timestep atan(σ)·2/π, v-prediction at σ_data 1, ComfyUI's
    normal schedule (even in that timestep) from σ 500 to 0.03, Euler."""
    steps = 4
    ours = run(session, graph(node="ModelSamplingContinuousV", schedule="normal",
                              sigma_max=500.0, sigma_min=0.03, steps=steps))
    top, bottom = math.atan(500.0) * 2 / math.pi, math.atan(0.03) * 2 / math.pi
    sigmas = [math.tan((top + (bottom - top) * i / (steps - 1)) * math.pi / 2)
              for i in range(steps)] + [0.0]
    with torch.no_grad():
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(
            PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=NEGATIVE)
        ids = torch.tensor([[HEIGHT, WIDTH, 0, 0, HEIGHT, WIDTH]], dtype=torch.float32)
        generator = torch.Generator("cpu").manual_seed(3)
        x = torch.randn((1, 4, HEIGHT // 8, WIDTH // 8), generator=generator)
        x = x * (sigmas[0] ** 2 + 1) ** 0.5
        for sigma, sigma_next in itertools.pairwise(sigmas):
            x_in = torch.cat([x, x]) / (sigma ** 2 + 1) ** 0.5
            t = torch.tensor(math.atan(sigma) * 2 / math.pi)
            out = pipe.unet(x_in, t, encoder_hidden_states=torch.cat([neg, pos]),
                            added_cond_kwargs={"text_embeds": torch.cat([neg_pooled, pooled]),
                                               "time_ids": torch.cat([ids, ids])}).sample
            uncond, cond = out.chunk(2)
            v = uncond + 5.0 * (cond - uncond)
            x0 = x / (sigma ** 2 + 1) - v * sigma / (sigma ** 2 + 1) ** 0.5
            x = x + (sigma_next - sigma) * (x - x0) / sigma
        image = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
    ref = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - ref).max() <= TOLERANCE


# --- single files: ComfyUI's marker keys ---------------------------------------------------


@pytest.mark.slow
def test_cosxl_keys_load_as_the_node_would_set_them(session):
    model = run(session, graph("tiny-cosxl.safetensors", node=None, capture="4"))
    spec = continuous_spec(model.scheduler_config)
    assert (spec.sampling, spec.sigma_max, spec.sigma_min, spec.sigma_data) == \
        ("v_prediction", 120.0, pytest.approx(0.002), 1.0)
    detected = run(session, graph("tiny-cosxl.safetensors", node=None))
    with_node = run(session, graph(f"{BASE}.safetensors"))
    assert np.abs(detected - with_node).max() <= TOLERANCE  # σ_min read as float32
    # Model Sampling Discrete goes back to the file's discrete schedule
    prompt = graph("tiny-cosxl.safetensors", node="ModelSamplingDiscrete", capture="11")
    prompt["11"]["inputs"] = {"model": ["4", 0], "sampling": "eps", "zsnr": False}
    discrete = run(session, prompt)
    assert continuous_spec(discrete.scheduler_config) is None
    assert discrete.scheduler_config["_class_name"] == "EulerDiscreteScheduler"


@pytest.mark.slow  # the models fixture
def test_v_pred_and_playground_keys(session):
    model = run(session, graph("tiny-vpred.safetensors", node=None, capture="4"))
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    assert model.scheduler_config["rescale_betas_zero_snr"] is True
    assert continuous_spec(model.scheduler_config) is None
    model = run(session, graph("tiny-playground-file.safetensors", node=None, capture="4"))
    spec = continuous_spec(model.scheduler_config)
    assert (spec.sampling, spec.sigma_max, spec.sigma_data) == ("edm", 80.0, 0.5)
    assert model.scheduler_config["latent_format"] == PLAYGROUND_LATENT_FORMAT


# --- samplers, schedules, errors ------------------------------------------------------------


@pytest.mark.slow
def test_every_continuous_sampler_runs(session):
    for sampler in continuous_samplers():
        image = run(session, graph(sampler=sampler, schedule="normal", sampling="edm",
                                   steps=3))
        assert image.shape == (1, HEIGHT, WIDTH, 3) and np.isfinite(image).all(), sampler


@pytest.mark.slow  # the models fixture
def test_discrete_only_samplers_and_modes_are_structured_errors(session):
    message = run_error(session, graph(sampler="ddpm", schedule="normal"))
    assert "discrete timesteps only" in message and "dpmpp_2m" in message
    assert "cosmos_rflow" in run_error(session, graph(sampling="cosmos_rflow"))
    message = run_error(session, graph(sigma_min=0.0))
    assert "sigma_min" in message and "above 0" in message
    assert "sigma_min" in run_error(session, graph(sigma_min=200.0, sigma_max=100.0))
    assert "continuous-σ" in run_error(session, graph(schedule="linspace"))


def test_schedules_are_comfyuis():
    edm = continuous_spec(continuous_config("edm", 0.002, 80.0, 0.5))
    # EDM's timestep is 0.25·log σ: "normal" is log-even, as "exponential"
    assert continuous_sigmas("normal", 6, edm) == pytest.approx(
        continuous_sigmas("exponential", 6, edm))
    karras = diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0)
    karras.set_timesteps(6)
    assert continuous_sigmas("karras", 6, edm) == pytest.approx(karras.sigmas.tolist(),
                                                                rel=1e-5)
    v = continuous_spec(continuous_config("v_prediction", 0.03, 500.0, timestep_form="atan"))
    levels = continuous_sigmas("normal", 5, v)
    steps = [math.atan(s) for s in levels[:-1]]
    assert np.allclose(np.diff(steps), steps[1] - steps[0]) and levels[-1] == 0
    table = edm.table()
    assert continuous_sigmas("simple", 4, edm) == pytest.approx(
        [table[-1], table[-251], table[-501], table[-751], 0.0])
    for name in ("sgm_uniform", "ddim_uniform", "beta", "kl_optimal", "linear_quadratic"):
        levels = continuous_sigmas(name, 8, edm)
        assert levels[-1] == 0 and all(a > b for a, b in itertools.pairwise(levels))


def test_validation_refuses_only_pairs_no_model_runs():
    # validation cannot see the model: a pair the continuous path runs (every continuous
    # sampler takes every continuous schedule) passes, and a discrete model refuses it at
    # run time (tests/test_sampler_extras_continuous.py)
    from nodes.diffusion.continuous import CONTINUOUS_SCHEDULES
    from nodes.diffusion.schedulers import (
        SAMPLERS,
        SCHEDULES,
        unsupported_combination,
        validation_problem,
    )

    runs = set(continuous_samplers())
    for sampler, schedule in itertools.product(SAMPLERS, SCHEDULES):
        problem = unsupported_combination(sampler, schedule)
        continuous = sampler in runs and schedule in CONTINUOUS_SCHEDULES
        assert validation_problem(sampler, schedule) == (None if continuous else problem)
    assert validation_problem("euler_ancestral", "karras") is None
    assert validation_problem("ddpm", "karras")  # discrete-only sampler: still refused
    assert validation_problem("ddim", "linspace") is None  # the discrete model runs it


def test_sigmas_of_a_continuous_model_are_its_schedule():
    from nodes.diffusion.sigma_schedules import SigmaSchedule

    config = continuous_config("v_prediction", 0.002, 120.0)
    levels = SigmaSchedule(config, "karras", 5).sigmas()
    assert levels.tolist() == pytest.approx(
        continuous_sigmas("karras", 5, continuous_spec(config)), rel=1e-6)


def _toy_run(sampler: str, config: dict, steps: int = 4):
    """Our scheduler on a toy model F(x_in, t) = 0.3·x_in + 0.1·t: (final x, D(x, σ))."""
    from nodes.diffusion.schedulers import make_scheduler

    scheduler = make_scheduler(sampler, "karras", config)
    scheduler.set_timesteps(steps)
    x = torch.linspace(-1, 1, 8).view(1, 2, 2, 2) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        x = scheduler.step(0.3 * x_in + 0.1 * t, t, x, return_dict=False)[0]
    spec = continuous_spec(config)

    def denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
        c_in = 1 / (sigma ** 2 + spec.sigma_data ** 2) ** 0.5
        return x - sigma * (0.3 * c_in * x + 0.1 * spec.timestep(sigma))  # eps reading

    return x, denoiser, continuous_sigmas("karras", steps, spec)


def test_heun_and_dpm2_are_comfyuis_updates():
    config = continuous_config("eps", 0.002, 80.0, 0.5)
    x, denoiser, sigmas = _toy_run("heun", config)
    ref = torch.linspace(-1, 1, 8).view(1, 2, 2, 2) * (sigmas[0] ** 2 + 1) ** 0.5
    for sigma, nxt in itertools.pairwise(sigmas):
        d = (ref - denoiser(ref, sigma)) / sigma
        if nxt == 0:
            ref = ref + d * (nxt - sigma)
            continue
        x2 = ref + d * (nxt - sigma)
        d2 = (x2 - denoiser(x2, nxt)) / nxt
        ref = ref + (d + d2) / 2 * (nxt - sigma)
    assert torch.allclose(x, ref, atol=1e-4)
    x, denoiser, sigmas = _toy_run("dpm_2", config)
    ref = torch.linspace(-1, 1, 8).view(1, 2, 2, 2) * (sigmas[0] ** 2 + 1) ** 0.5
    for sigma, nxt in itertools.pairwise(sigmas):
        d = (ref - denoiser(ref, sigma)) / sigma
        if nxt == 0:
            ref = ref + d * (nxt - sigma)
            continue
        mid = math.exp((math.log(sigma) + math.log(nxt)) / 2)
        x2 = ref + d * (mid - sigma)
        ref = ref + (x2 - denoiser(x2, mid)) / mid * (nxt - sigma)
    assert torch.allclose(x, ref, atol=1e-4)


def test_x0_helpers_read_a_continuous_model():
    from nodes.diffusion.denoised import alpha_bar_at, denoised_estimate, x0_coefficients
    from nodes.diffusion.schedulers import make_scheduler

    for sampling in ("edm", "v_prediction", "eps"):
        scheduler = make_scheduler("euler", "karras", continuous_config(sampling, 0.002, 80.0,
                                                                        0.5))
        scheduler.set_timesteps(4)
        t = scheduler.timesteps[1]
        x = torch.randn(1, 4, 3, 3)
        out = torch.randn(1, 4, 3, 3)
        sigma = float(scheduler.sigmas[1])
        expected = scheduler.precondition_outputs(x, out, sigma)
        x_in = x / (sigma ** 2 + 0.25) ** 0.5
        a, b = x0_coefficients(scheduler, t, 1.0, x)
        assert torch.allclose(a * x_in + b * out, expected, atol=1e-4)
        assert torch.allclose(denoised_estimate(scheduler, t, x, out), expected, atol=1e-4)
        assert float(alpha_bar_at(scheduler, t, 1.0, x)) == pytest.approx(
            0.25 / (sigma ** 2 + 0.25), rel=1e-4)


@pytest.mark.slow
def test_sag_and_windows_on_a_continuous_model(session):
    """SAG's degraded pass runs on EDM's preconditioning; KSamplerAdvanced's two windows
    (leftover noise handed on) equal one run on Playground's latent format."""
    prompt = graph(PLAYGROUND, "euler", "karras", node="SelfAttentionGuidance")
    prompt["11"]["inputs"] = {"model": ["4", 0], "scale": 0.5, "blur_sigma": 2.0}
    guided = run(session, prompt)
    plain = run(session, graph(PLAYGROUND, "euler", "karras", node=None))
    assert np.isfinite(guided).all() and np.abs(guided - plain).max() > 1e-4
    prompt = graph(PLAYGROUND, "euler", "karras", node=None, steps=6)
    common = {"model": ["4", 0], "noise_seed": 3, "steps": 6, "cfg": 5.0,
              "sampler_name": "euler", "scheduler": "karras", "positive": ["6", 0],
              "negative": ["7", 0], "end_at_step": 10000}
    prompt["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "enable", "latent_image": ["5", 0], "start_at_step": 0,
        "end_at_step": 3, "return_with_leftover_noise": "enable"}}
    prompt["12"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "disable", "latent_image": ["3", 0], "start_at_step": 3,
        "return_with_leftover_noise": "disable"}}
    prompt["8"]["inputs"]["samples"] = ["12", 0]
    split = run(session, prompt)
    whole = run(session, graph(PLAYGROUND, "euler", "karras", node=None, steps=6))
    assert np.abs(split - whole).max() <= TOLERANCE


def test_nodes_keep_the_loaded_model_and_bound_their_inputs():
    from nodes.diffusion.handles import DiffusionModel
    from nodes.model_sampling import ModelSamplingContinuousEDM, ModelSamplingContinuousV

    config = {"_class_name": "EulerDiscreteScheduler", "prediction_type": "epsilon"}
    model = DiffusionModel(unet=None, scheduler_config=config, family="sdxl")
    out = ModelSamplingContinuousEDM(model=model, sampling="edm_playground_v2.5",
                                     sigma_max=1000.0, sigma_min=0.001).execute(None)[0]
    assert model.scheduler_config == config  # the loaded model is untouched
    spec = continuous_spec(out.scheduler_config)
    assert (spec.sampling, spec.sigma_data, spec.sigma_max) == ("edm", 0.5, 1000.0)
    assert out.scheduler_config["latent_format"] == PLAYGROUND_LATENT_FORMAT
    again = ModelSamplingContinuousV(model=out, sampling="v_prediction", sigma_max=500.0,
                                     sigma_min=0.03).execute(None)[0]
    assert continuous_spec(again.scheduler_config).timestep_form == "atan"
    assert "latent_format" not in again.scheduler_config
    assert again.scheduler_config["discrete_config"] == config  # still the original one
    for low, high in ((0.0, 1.0), (5.0, 5.0), (1000.0, 0.0)):
        with pytest.raises(ValueError, match="sigma_min"):
            ModelSamplingContinuousV(model=model, sampling="v_prediction", sigma_max=high,
                                     sigma_min=low).execute(None)
