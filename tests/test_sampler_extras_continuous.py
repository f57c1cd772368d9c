"""SamplerLCMUpscale, SamplerDPMAdaptative and KSampler's validation on continuous-σ models
(Model Sampling Continuous EDM / V on the tiny SD1 model): each reads the model through its
own σ_data, c_noise and x0 (c_skip / c_out), and the sampler/schedule pairs only the
continuous path runs pass validation."""

from __future__ import annotations

import math
import uuid

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from nodes.diffusion.adaptive_sampler import ContinuousAdaptiveEvaluator
from nodes.diffusion.continuous import continuous_config
from nodes.diffusion.continuous_samplers import make_continuous_scheduler
from nodes.diffusion.lcm_upscale import UpscaleOptions, lcm_upscale_scheduler
from nodes.diffusion.resize import common_upscale
from tests.graph_nodes import CAPTURED
from tests.test_custom_sampling import base, select
from tests.test_sampler_extras import dpm_node, lcm_upscale

EDM = {"class_type": "ModelSamplingContinuousEDM", "inputs": {
    "model": ["ckpt", 0], "sampling": "edm", "sigma_max": 80.0, "sigma_min": 0.002}}
EDM_V = {"class_type": "ModelSamplingContinuousEDM", "inputs": {
    "model": ["ckpt", 0], "sampling": "v_prediction", "sigma_max": 120.0, "sigma_min": 0.002}}
CONT_V = {"class_type": "ModelSamplingContinuousV", "inputs": {
    "model": ["ckpt", 0], "sampling": "v_prediction", "sigma_max": 500.0, "sigma_min": 0.03}}
MODES = {"edm": EDM, "edm_v": EDM_V, "continuous_v": CONT_V}


def _graph(ms: dict | None, sampler: dict, schedule: str, steps: int, cfg: float = 3.0) -> dict:
    graph = base()
    model = ["ckpt", 0]
    if ms is not None:
        graph["ms"], model = ms, ["ms", 0]
    graph.update({
        "smp": sampler,
        "sched": {"class_type": "BasicScheduler", "inputs": {
            "model": model, "scheduler": schedule, "steps": steps, "denoise": 1.0}},
        "s": {"class_type": "SamplerCustom", "inputs": {
            "model": model, "add_noise": True, "noise_seed": 3, "cfg": cfg,
            "positive": ["pos", 0], "negative": ["neg", 0], "sampler": ["smp", 0],
            "sigmas": ["sched", 0], "latent_image": ["empty", 0]}}})
    return graph


def _samples(session, graph: dict) -> tuple[torch.Tensor, torch.Tensor]:
    keys = []
    for n in range(2):
        key = uuid.uuid4().hex
        graph[f"cap{n}"] = {"class_type": "TestCapture", "inputs": {"value": ["s", n],
                                                                    "key": key}}
        keys.append(key)
    result = session.run(graph)
    assert result.ok, result.run.error
    return CAPTURED.pop(keys[0]).samples, CAPTURED.pop(keys[1]).samples


# --- SamplerLCMUpscale ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
def test_lcm_upscale_at_ratio_1_is_the_continuous_lcm(session, mode):
    out, den = _samples(session, _graph(MODES[mode], lcm_upscale(1.0), "normal", 3))
    ref, ref_den = _samples(session, _graph(MODES[mode], select("lcm"), "normal", 3))
    assert torch.equal(out, ref)
    assert torch.equal(den, ref_den)


def test_continuous_lcm_upscale_step_resizes_x0_then_adds_the_next_sigma():
    config = continuous_config("edm", 0.002, 80.0)
    made = make_continuous_scheduler("lcm", "karras", config)
    scheduler = lcm_upscale_scheduler(made, UpscaleOptions(2.0, 1, "bilinear"), 2)
    scheduler.set_timesteps(2)
    sigma, sigma_next = float(scheduler.sigmas[0]), float(scheduler.sigmas[1])
    x = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(1)) * sigma
    output = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(2))
    prev, x0 = scheduler.step(output, scheduler.timesteps[0], x,
                              generator=torch.Generator().manual_seed(3), return_dict=False)
    assert torch.allclose(x0, scheduler.precondition_outputs(x, output, sigma))
    grown = common_upscale(x0, 12, 8, "bilinear")
    noise = randn_tensor(grown.shape, generator=torch.Generator().manual_seed(3))
    assert prev.shape == (1, 4, 8, 12)
    assert torch.allclose(prev, grown + sigma_next * noise, atol=1e-5)
    # the second (last) step keeps the size and lands on x0
    prev2, x02 = scheduler.step(torch.zeros_like(prev), scheduler.timesteps[1], prev,
                                return_dict=False)
    assert prev2.shape == prev.shape and torch.allclose(prev2, x02)


def test_lcm_upscale_grows_a_continuous_models_latent(session):
    out, _ = _samples(session, _graph(EDM, lcm_upscale(1.5, 1), "karras", 3))
    assert out.shape[-2:] == (6, 9)
    assert bool(torch.isfinite(out).all()) and float(out.std()) < 5  # x0-scale, not noise


# --- SamplerDPMAdaptative -------------------------------------------------------------------


@pytest.mark.parametrize(("sampling", "data", "form"), [
    ("edm", 0.5, "log"), ("v_prediction", 1.0, "log"), ("eps", 1.0, "log"),
    ("v_prediction", 1.0, "atan")])
def test_dpm_adaptive_reads_a_continuous_model_as_its_scheduler(sampling, data, form):
    evaluator = ContinuousAdaptiveEvaluator.from_config(
        continuous_config(sampling, 0.002, 80.0, sigma_data=data, timestep_form=form))
    sigma = 2.5
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    out = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    expected_t = 0.25 * math.log(sigma) if form == "log" else math.atan(sigma) * 2 / math.pi
    assert evaluator.call_timestep(sigma) == pytest.approx(expected_t, rel=1e-6)
    evaluator.call.sigma = sigma
    assert torch.allclose(evaluator.scale_model_input(x), x / math.sqrt(sigma ** 2 + data ** 2))
    d, _ = evaluator.step(out, None, x, return_dict=False)
    assert torch.allclose(d, evaluator.precondition_outputs(x, out, sigma))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["edm", "edm_v"])
def test_dpm_adaptive_on_a_continuous_model_solves_the_ode(session, mode):
    # dpm_adaptive (tight tolerances) and dpmpp_2m over many steps solve the same ODE over
    # the same σ range (the EDM karras range does not depend on the step count)
    tight = dpm_node(rtol=0.001, atol=0.0005)
    out, _ = _samples(session, _graph(MODES[mode], tight, "karras", 10))
    ref, _ = _samples(session, _graph(MODES[mode], select("dpmpp_2m"), "karras", 120))
    assert float((out - ref).norm() / ref.norm()) < 0.01


# --- validation: pairs the continuous path runs ----------------------------------------------


def _ksampler_graph(ms: dict | None, sampler: str, schedule: str) -> dict:
    graph = base()
    model = ["ckpt", 0]
    if ms is not None:
        graph["ms"], model = ms, ["ms", 0]
    graph["k"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 1, "steps": 2, "cfg": 3.0, "sampler_name": sampler,
        "scheduler": schedule, "positive": ["pos", 0], "negative": ["neg", 0],
        "latent_image": ["empty", 0], "denoise": 1.0}}
    graph["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["k", 0],
                                                            "key": uuid.uuid4().hex}}
    return graph


@pytest.mark.parametrize(("sampler", "schedule"), [
    ("heun", "kl_optimal"), ("dpm_2", "linear_quadratic"), ("dpmpp_2s_ancestral", "kl_optimal")])
def test_continuous_only_pairs_run_on_continuous_and_fail_at_run_time_on_discrete(
        session, sampler, schedule):
    result = session.run(_ksampler_graph(EDM_V, sampler, schedule))
    assert result.ok, result.run.error
    CAPTURED.clear()
    result = session.run(_ksampler_graph(None, sampler, schedule))
    assert not result.ok
    message = result.run.error["exception_message"]
    assert "does not support" in message and "Continuous" in message
