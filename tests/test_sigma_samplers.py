"""ComfyUI's samplers and schedules that diffusers lacks (nodes.diffusion.sigma_samplers,
the kl_optimal / linear_quadratic σ lists): their updates by hand, their order of
accuracy on an ODE with a known solution, and their runs through KSampler."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
import torch

from nodes.diffusion.schedulers import (
    kl_optimal_sigmas,
    linear_quadratic_sigmas,
    make_scheduler,
    unsupported_combination,
)
from nodes.diffusion.sigma_samplers import adams_bashforth_weights, ancestral_sigmas
from tests.graph_nodes import CAPTURED

CONFIG = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
          "num_train_timesteps": 1000}
DATA_VARIANCE = 0.25


def solve_gaussian(sampler: str, schedule: str, steps: int) -> float:
    """Relative error of the sampler on data ~ N(0, s²), whose ideal denoiser is
    ``x·s²/(s² + σ²)`` and whose probability-flow ODE ends at ``x_T·s/√(s² + σ_T²)``."""
    scheduler = make_scheduler(sampler, schedule, CONFIG)
    scheduler.set_timesteps(steps)
    start = torch.full((1, 1, 2, 2), float(scheduler.init_noise_sigma), dtype=torch.float64)
    x = start.clone()
    for i, t in enumerate(scheduler.timesteps):
        scheduler.scale_model_input(x, t)
        sigma = float(scheduler.sigmas[i])
        eps = x * sigma / (DATA_VARIANCE + sigma ** 2)  # (x − D)/σ
        x = scheduler.step(eps, t, x, return_dict=False)[0].double()
    exact = start * math.sqrt(DATA_VARIANCE / (DATA_VARIANCE + float(scheduler.sigmas[0]) ** 2))
    return float((x - exact).abs().max() / exact.abs().max())


@pytest.mark.parametrize("sampler", ["ipndm", "ipndm_v", "res_multistep", "dpmpp_2m_cfg_pp"])
@pytest.mark.parametrize("schedule", ["karras", "kl_optimal"])
def test_higher_order_samplers_converge_faster_than_euler(sampler, schedule):
    euler = [solve_gaussian("euler", schedule, n) for n in (20, 40)]
    errors = [solve_gaussian(sampler, schedule, n) for n in (20, 40)]
    assert euler[0] / euler[1] < 2.2  # Euler: first order
    assert errors[0] / errors[1] > 4  # second order or more
    assert errors[1] < euler[1] / 3


def test_gradient_estimation_beats_euler():
    for steps in (20, 40):
        assert (solve_gaussian("gradient_estimation", "karras", steps)
                < solve_gaussian("euler", "karras", steps))


def test_adams_bashforth_weights():
    assert adams_bashforth_weights([1.0], 0.9) == pytest.approx([-0.1])
    h = -0.1  # even steps: the classic weights times the step
    assert adams_bashforth_weights([1.0, 1.1], 0.9) == pytest.approx([1.5 * h, -0.5 * h])
    assert adams_bashforth_weights([1.0, 1.1, 1.2, 1.3], 0.9) == pytest.approx(
        [55 / 24 * h, -59 / 24 * h, 37 / 24 * h, -9 / 24 * h])
    # uneven nodes: exact for a cubic slope
    nodes, target = [2.0, 2.5, 3.7, 4.0], 1.2
    weights = adams_bashforth_weights(nodes, target)
    cubic = np.poly1d([0.3, -1.0, 2.0, 0.5])
    exact = cubic.integ()(target) - cubic.integ()(nodes[0])
    assert sum(w * cubic(n) for w, n in zip(weights, nodes, strict=True)) == pytest.approx(exact)


def _steps(sampler: str, outputs: list[torch.Tensor], x: torch.Tensor, steps: int = 4,
           schedule: str = "karras", **kwargs) -> tuple[object, list[torch.Tensor]]:
    scheduler = make_scheduler(sampler, schedule, CONFIG)
    scheduler.set_timesteps(steps)
    samples = [x]
    for t, out in zip(scheduler.timesteps, outputs, strict=False):
        scheduler.scale_model_input(samples[-1], t)
        samples.append(scheduler.step(out, t, samples[-1], return_dict=False, **kwargs)[0])
    return scheduler, samples


def test_updates_by_hand():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 5) * 14
    eps = [torch.randn(1, 4, 3, 5) for _ in range(3)]
    scheduler, euler = _steps("euler", eps[:1], x)
    s = [float(v) for v in scheduler.sigmas]
    assert torch.allclose(_steps("ipndm", eps[:1], x)[1][1], euler[1], atol=1e-5)
    assert torch.allclose(_steps("res_multistep", eps[:1], x)[1][1], euler[1], atol=1e-4)
    # second steps: AB2 on the slopes, gradient estimation's 2·d − d_prev, RES's φ weights
    _, ip = _steps("ipndm", eps[:2], x)
    assert torch.allclose(ip[2], ip[1] + (s[2] - s[1]) * (1.5 * eps[1] - 0.5 * eps[0]), atol=1e-4)
    _, ge = _steps("gradient_estimation", eps[:2], x)
    assert torch.allclose(ge[2], ge[1] + (s[2] - s[1]) * (2 * eps[1] - eps[0]), atol=1e-4)
    _, res = _steps("res_multistep", eps[:2], x)
    d0, d1 = x - s[0] * eps[0], res[1] - s[1] * eps[1]
    h, h_prev = math.log(s[1] / s[2]), math.log(s[0] / s[1])
    phi1 = (1 - math.exp(-h)) / h
    phi2 = (h - 1 + math.exp(-h)) / h ** 2
    b2 = phi2 / (-h_prev / h)
    expected = math.exp(-h) * res[1] + h * ((phi1 - b2) * d1 + b2 * d0)
    assert torch.allclose(res[2], expected, atol=1e-4)


def test_cfg_pp_lands_on_the_guided_x0_and_renoises_with_the_unconditional_noise():
    torch.manual_seed(1)
    x = torch.randn(1, 4, 6, 4) * 14
    guided, uncond = torch.randn(1, 4, 6, 4), torch.randn(1, 4, 6, 4)
    scheduler, out = _steps("euler_cfg_pp", [guided], x, uncond_output=uncond)
    s0, s1 = (float(v) for v in scheduler.sigmas[:2])
    assert torch.allclose(out[1], (x - s0 * guided) + s1 * uncond, atol=1e-4)
    # with the unconditional prediction equal to the guided one, it is Euler
    same = _steps("euler_cfg_pp", [guided], x, uncond_output=guided)[1][1]
    assert torch.allclose(same, _steps("euler", [guided], x)[1][1], atol=1e-4)


def test_euler_pp_is_comfyuis_alternative_cfg_pp():
    """x' = x + (σ' − σ)·(x − 2·D_guided + D_uncond)/σ over two steps (ComfyUI's
    sample_euler_pp written out); the first term of the slope is Euler's."""
    torch.manual_seed(2)
    x = torch.randn(1, 4, 5, 3) * 14
    guided = [torch.randn(1, 4, 5, 3) for _ in range(2)]
    uncond = torch.randn(1, 4, 5, 3)
    scheduler, out = _steps("euler_pp", guided, x, uncond_output=uncond)
    s = [float(v) for v in scheduler.sigmas]
    x_i = x
    for i in range(2):
        d_guided, d_uncond = x_i - s[i] * guided[i], x_i - s[i] * uncond
        x_i = x_i + (s[i + 1] - s[i]) * (x_i - 2 * d_guided + d_uncond) / s[i]
        assert torch.allclose(out[i + 1], x_i, atol=1e-4)


@pytest.mark.parametrize(("ours", "reference"), [("euler_ancestral_cfg_pp", "euler_ancestral"),
                                                 ("res_multistep_ancestral", "euler_ancestral")])
def test_ancestral_first_step_equals_euler_ancestral(ours, reference):
    """A first step of an ancestral sampler is Euler ancestral's: the same σ_down, σ_up
    and the same noise from the generator."""
    torch.manual_seed(2)
    x, eps = torch.randn(1, 4, 5, 3) * 14, torch.randn(1, 4, 5, 3)
    kwargs = {"uncond_output": eps} if ours.endswith("cfg_pp") else {}
    a = _steps(ours, [eps], x, schedule="normal", generator=torch.Generator().manual_seed(5),
               **kwargs)[1][1]
    b = _steps(reference, [eps], x, schedule="normal",
               generator=torch.Generator().manual_seed(5))[1][1]
    assert torch.allclose(a, b, atol=1e-4)
    down, up = ancestral_sigmas(10.0, 5.0)
    assert down ** 2 + up ** 2 == pytest.approx(25.0) and up > 0
    assert ancestral_sigmas(10.0, 0.0) == (0.0, 0.0)


def test_sigma_lists():
    kl = kl_optimal_sigmas(5, 0.03, 14.6)
    assert kl[0] == pytest.approx(14.6) and kl[-2] == pytest.approx(0.03) and kl[-1] == 0
    angles = np.arctan(kl[:-1])
    assert np.allclose(np.diff(angles), np.diff(angles)[0])  # even in atan σ
    lq = np.array(linear_quadratic_sigmas(10, 0.03, 14.6)) / 14.6
    assert lq[0] == 1 and lq[-1] == 0 and np.all(np.diff(lq) < 0)
    assert np.allclose(np.diff(lq[:6]), -0.025 / 5)  # linear to 1 − 0.025 at step 5
    assert lq[5] == pytest.approx(0.975)
    for n in (1, 2, 3):
        assert len(kl_optimal_sigmas(n, 0.03, 14.6)) == len(linear_quadratic_sigmas(
            n, 0.03, 14.6)) == n + 1
    scheduler = make_scheduler("ipndm", "kl_optimal", CONFIG)
    scheduler.set_timesteps(6)
    all_sigmas = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5
    assert np.allclose(scheduler.sigmas.numpy(), kl_optimal_sigmas(
        6, float(all_sigmas[0]), float(all_sigmas[-1])), rtol=1e-5)
    assert "euler" in unsupported_combination("ddpm", "kl_optimal")


# --- through the graph ----------------------------------------------------------------------

def _image(session, sampler: str, *, cfg: float = 5.0, negative: str = "blurry",
           scheduler: str = "karras", steps: int = 5) -> torch.Tensor:
    key = uuid.uuid4().hex
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle",
                                                            "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage",
                  "inputs": {"width": 48, "height": 32, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": 3, "steps": steps, "cfg": cfg,
            "sampler_name": sampler, "scheduler": scheduler, "positive": ["pos", 0],
            "negative": ["neg", 0], "latent_image": ["empty", 0], "denoise": 1.0}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["ks", 0], "key": key}},
    }
    result = session.run(graph)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).samples


def test_cfg_pp_through_ksampler(session):
    """CFG++ runs the unconditional pass even at cfg 1 (then it differs from Euler), and
    equals Euler when the negative prompt is the positive one."""
    euler = _image(session, "euler", cfg=1.0)
    assert (_image(session, "euler_cfg_pp", cfg=1.0) - euler).abs().max() > 1e-3
    same = _image(session, "euler_cfg_pp", cfg=1.5, negative="a red circle")
    assert torch.allclose(same, _image(session, "euler", cfg=1.5, negative="a red circle"),
                          atol=1e-4)
    # ComfyUI's alternative form too; with negative = positive both are Euler
    alternative = _image(session, "euler_pp", cfg=1.0)
    assert torch.isfinite(alternative).all() and (alternative - euler).abs().max() > 1e-3
    same_pp = _image(session, "euler_pp", cfg=1.5, negative="a red circle")
    assert torch.allclose(same_pp, same, atol=1e-4)


def test_one_step_samplers_equal_euler(session):
    euler = _image(session, "euler", steps=1)
    for sampler in ("ipndm", "ipndm_v", "res_multistep", "gradient_estimation"):
        assert torch.allclose(_image(session, sampler, steps=1), euler, atol=1e-4), sampler


# --- explicit σ lists (KarrasScheduler, AlignYourStepsScheduler, ...) ------------------------

def _sigma_graph(sigmas_node: dict, sampler: str = "euler", latent: str = "empty") -> dict:
    from tests.test_custom_sampling import base, custom, select

    return {**base(), "select": select(sampler), "sig": sigmas_node,
            "sc": custom(["sig", 0], [latent, 0])}


def _karras(steps: int, sigma_min: float, sigma_max: float) -> dict:
    return {"class_type": "KarrasScheduler", "inputs": {
        "steps": steps, "sigma_max": sigma_max, "sigma_min": sigma_min, "rho": 7.0}}


def test_karras_list_equals_diffusers_on_those_sigmas(session, tiny_model_paths):
    """KarrasScheduler + SamplerCustom = StableDiffusionPipeline with Euler on diffusers'
    Karras σs, started as ComfyUI starts (noise × σ₀; diffusers' own start is
    noise × √(σ₀² + 1) unless the spacing is trailing)."""
    import diffusers

    from tests.test_custom_sampling import PROMPT, captured

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        tiny_model_paths["diffusers"], local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                  use_karras_sigmas=True)
    pipe.scheduler.set_timesteps(8)
    top, bottom = float(pipe.scheduler.sigmas[0]), float(pipe.scheduler.sigmas[-2])
    noise = torch.randn((1, 4, 4, 6), generator=torch.Generator().manual_seed(3))
    reference = pipe(PROMPT, negative_prompt="blurry", num_inference_steps=8,
                     guidance_scale=5.0, height=32, width=48, output_type="latent",
                     latents=noise * top / float(pipe.scheduler.init_noise_sigma)).images
    (ours,) = captured(session, _sigma_graph(_karras(8, bottom, top)), ["sc", 0])
    assert float((ours.samples - reference).abs().max()) < 1e-4


def _error(session, graph: dict) -> str:
    graph["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["sc", 0]}}
    result = session.run(graph)
    assert not result.ok
    return str(result.run.error)


def test_sigma_lists_window_and_refusals(session):
    from tests.test_custom_sampling import captured

    ays = {"class_type": "AlignYourStepsScheduler",
           "inputs": {"model_type": "SD1", "steps": 10, "denoise": 1.0}}
    graph = _sigma_graph(ays)
    graph["show"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sig", 0], "step": 4}}
    schedule, high, low, full = captured(session, graph, ["sig", 0], ["show", 0], ["show", 1],
                                         ["sc", 0])
    assert np.allclose(schedule.sigmas().numpy()[:-1], [14.615, 6.475, 3.861, 2.697, 1.886,
                                                        1.396, 0.963, 0.652, 0.399, 0.152])
    assert schedule.sigmas()[-1] == 0 and len(high.sigmas()) == 5 and len(low.sigmas()) == 7
    # two halves run one after the other equal the whole
    from tests.test_custom_sampling import custom

    graph["first"] = custom(["show", 0], ["empty", 0])
    graph["second"] = custom(["show", 1], ["first", 0], add_noise=False)
    (second,) = captured(session, graph, ["second", 0])
    assert float((second.samples - full.samples).abs().max()) < 1e-4
    # a list below σ_max noises the input latent (img2img): the input shows through
    ays["inputs"]["denoise"] = 0.3
    a, = captured(session, _sigma_graph(ays, latent="init"), ["sc", 0])
    b, = captured(session, _sigma_graph(ays, latent="empty"), ["sc", 0])
    assert float((a.samples - b.samples).abs().max()) > 1e-2
    # samplers without custom σs, and a bad range, are structured errors
    error = _error(session, _sigma_graph(_karras(6, 0.03, 14.6), "ddpm"))
    assert "explicit σ list" in error and "euler" in error
    assert "sigma_min" in _error(session, _sigma_graph(_karras(6, 20.0, 14.6)))


def test_sigma_list_nodes_have_comfyui_schemas():
    from nodes.sigma_lists import NODE_CLASSES

    by_type = {cls.TYPE: cls for cls in NODE_CLASSES}
    assert list(by_type["KarrasScheduler"].INPUT_SPECS) == ["steps", "sigma_max", "sigma_min",
                                                            "rho"]
    assert list(by_type["ExponentialScheduler"].INPUT_SPECS) == ["steps", "sigma_max",
                                                                 "sigma_min"]
    assert list(by_type["PolyexponentialScheduler"].INPUT_SPECS) == [
        "steps", "sigma_max", "sigma_min", "rho"]
    ays = by_type["AlignYourStepsScheduler"].INPUT_SPECS
    assert list(ays) == ["model_type", "steps", "denoise"] and ays["steps"].default == 10
    assert by_type["KarrasScheduler"].INPUT_SPECS["sigma_max"].default == 14.614642
    for cls in NODE_CLASSES:
        assert [o.type for o in cls.OUTPUTS] == (
            ["FLOAT"] if cls.TYPE == "SamplingPercentToSigma" else ["SIGMAS"])


# --- ComfyUI's sampler nodes with options ------------------------------------------------------

def test_our_euler_ancestral_equals_diffusers_over_a_run():
    from diffusers import EulerAncestralDiscreteScheduler

    from nodes.diffusion.sigma_samplers import EulerAncestralSampler

    torch.manual_seed(3)
    x = torch.randn(1, 4, 5, 7) * 14
    outputs = [torch.randn(1, 4, 5, 7) for _ in range(6)]
    results = []
    for cls in (EulerAncestralDiscreteScheduler, EulerAncestralSampler):
        scheduler = cls.from_config(CONFIG)
        scheduler.set_timesteps(6)
        generator, sample = torch.Generator().manual_seed(9), x
        for t, out in zip(scheduler.timesteps, outputs, strict=True):
            scheduler.scale_model_input(sample, t)
            sample = scheduler.step(out, t, sample, generator=generator,
                                    return_dict=False)[0]
        results.append(sample)
    assert torch.allclose(results[0], results[1], atol=1e-4)


def _custom_with(session, sampler_node: dict) -> object:
    from tests.test_custom_sampling import base, basic_scheduler, captured, custom

    graph = {**base(), "sampler": sampler_node, "sched": basic_scheduler(steps=5),
             "sc": custom(["sched", 0], ["empty", 0], sampler="sampler")}
    return captured(session, graph, ["sc", 0])[0].samples


def _node(type_: str, **inputs) -> dict:
    return {"class_type": type_, "inputs": inputs}


def test_sampler_nodes_with_options(session):
    select = {name: _custom_with(session, _node("KSamplerSelect", sampler_name=name))
              for name in ("euler_ancestral", "euler", "lms", "dpmpp_2m_sde_heun")}
    default = _custom_with(session, _node("SamplerEulerAncestral", eta=1.0, s_noise=1.0))
    assert torch.equal(default, select["euler_ancestral"])
    deterministic = _custom_with(session, _node("SamplerEulerAncestral", eta=0.0, s_noise=1.0))
    assert torch.allclose(deterministic, select["euler"], atol=1e-4)
    half = _custom_with(session, _node("SamplerEulerAncestral", eta=0.5, s_noise=1.0))
    assert (half - default).abs().max() > 1e-3 and (half - deterministic).abs().max() > 1e-3
    assert torch.equal(_custom_with(session, _node("SamplerLMS", order=4)), select["lms"])
    assert (_custom_with(session, _node("SamplerLMS", order=1)) - select["lms"]).abs().max() > 1e-3
    heun = _custom_with(session, _node("SamplerDPMPP_2M_SDE", solver_type="heun", eta=1.0,
                                       s_noise=1.0, noise_device="cpu"))
    assert torch.equal(heun, select["dpmpp_2m_sde_heun"])


def test_sampler_node_options_diffusers_cannot_take_are_errors(session):
    from tests.test_custom_sampling import base, basic_scheduler, custom

    graph = {**base(), "sampler": _node("SamplerDPMPP_3M_SDE", eta=0.5, s_noise=1.0,
                                        noise_device="gpu"),
             "sched": basic_scheduler(steps=3),
             "sc": custom(["sched", 0], ["empty", 0], sampler="sampler"),
             "cap": {"class_type": "TestCapture", "inputs": {"value": ["sc", 0]}}}
    result = session.run(graph)
    assert not result.ok and "eta 0.5" in str(result.run.error)
    assert "only eta 1, s_noise 1)" in str(result.run.error)  # no r: the node has none
    from nodes.sampler_nodes import NODE_CLASSES

    by_type = {cls.TYPE: cls for cls in NODE_CLASSES}
    assert list(by_type["SamplerDPMPP_2M_SDE"].INPUT_SPECS) == ["solver_type", "eta", "s_noise",
                                                                "noise_device"]
    assert list(by_type["SamplerDPMPP_SDE"].INPUT_SPECS) == ["eta", "s_noise", "r",
                                                             "noise_device"]
    assert by_type["SamplerEulerAncestralCFGPP"].INPUT_SPECS["eta"].max == 1.0


def test_laplace_vp_and_sigma_edits(session):
    import math as m

    from nodes.sigma_lists import laplace_sigmas, vp_sigmas
    from tests.test_custom_sampling import basic_scheduler, captured

    lap = laplace_sigmas(7, 0.03, 14.6, mu=0.0, beta=0.5)
    assert lap[0] == 14.6 and lap[-2] == 0.03 and lap[3] == pytest.approx(1.0)  # e^mu mid
    assert lap == sorted(lap, reverse=True)
    vp = vp_sigmas(3, 19.9, 0.1, 1e-3)
    assert vp[0] == pytest.approx(m.sqrt(m.expm1(19.9 / 2 + 0.1)))
    # ExtendIntermediateSigmas: each step above 2.0 split in two; the rest kept
    graph = {**_sigma_graph(_karras(4, 0.03, 14.6)),
             "ext": {"class_type": "ExtendIntermediateSigmas", "inputs": {
                 "sigmas": ["sig", 0], "steps": 2, "start_at_sigma": -1.0,
                 "end_at_sigma": 2.0, "spacing": "linear"}},
             "first": {"class_type": "SetFirstSigma", "inputs": {"sigmas": ["sig", 0],
                                                                 "sigma": 20.0}},
             "basic": basic_scheduler("karras", steps=6),
             "split": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["basic", 0],
                                                               "step": 2}},
             "first_low": {"class_type": "SetFirstSigma", "inputs": {
                 "sigmas": ["split", 1], "sigma": 5.0}}}
    karras, ext, first, basic, first_low = captured(
        session, graph, ["sig", 0], ["ext", 0], ["first", 0], ["basic", 0], ["first_low", 0])
    k = karras.sigmas().tolist()
    e = ext.sigmas().tolist()
    assert e[:3] == pytest.approx([k[0], (k[0] + k[1]) / 2, k[1]])
    assert len(e) == len(k) + sum(1 for s in k[:-1] if s >= 2.0)
    assert first.sigmas().tolist()[0] == 20.0 and first.sigmas().tolist()[1:] == k[1:]
    # a model's schedule becomes its explicit σ list, window kept: the low half from step 2
    low = first_low.sigmas().tolist()
    assert low[0] == 5.0 and low[1:] == pytest.approx(basic.sigmas().tolist()[3:])
    # and it runs: Euler over the extended list, finite
    graph["sc_ext"] = {**graph["sc"], "inputs": {**graph["sc"]["inputs"], "sigmas": ["ext", 0]}}
    (out,) = captured(session, graph, ["sc_ext", 0])
    assert torch.isfinite(out.samples).all()
    assert "next level" in _error(session, {**_sigma_graph(
        {"class_type": "SetFirstSigma", "inputs": {"sigmas": ["k", 0], "sigma": 0.01}}),
        "k": _karras(4, 0.03, 14.6)})


def test_add_noise_then_disable_noise_equals_the_sampler_adding_it(session):
    """AddNoise + a DisableNoise sampler over the same window = the sampler adding the
    noise itself (img2img from step 3 of 6): the noisy latent is kept where it belongs."""
    from tests.test_custom_sampling import base, basic_scheduler, captured

    def adv(noise: str, latent: str) -> dict:
        return {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": [noise, 0], "guider": ["guider", 0], "sampler": ["select", 0],
            "sigmas": ["split", 1], "latent_image": [latent, 0]}}

    graph = {**base(), "select": {"class_type": "KSamplerSelect",
                                  "inputs": {"sampler_name": "euler"}},
             "k": _karras(6, 0.03, 14.6),
             "split": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["k", 0], "step": 3}},
             "guider": {"class_type": "CFGGuider", "inputs": {
                 "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                 "cfg": 4.0}},
             "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
             "off": {"class_type": "DisableNoise", "inputs": {}},
             "add": {"class_type": "AddNoise", "inputs": {
                 "model": ["ckpt", 0], "noise": ["noise", 0], "sigmas": ["split", 1],
                 "latent_image": ["init", 0]}},
             "direct": adv("noise", "init"), "after_add": adv("off", "add"),
             "pct": {"class_type": "SamplingPercentToSigma", "inputs": {
                 "model": ["ckpt", 0], "sampling_percent": 0.5, "return_actual_sigma": False}},
             "sched": basic_scheduler()}
    direct, after_add, pct = captured(session, graph, ["direct", 0], ["after_add", 0],
                                      ["pct", 0])
    assert float((direct.samples - after_add.samples).abs().max()) < 1e-4
    assert 0.5 < pct < 5.0  # the middle of SD's schedule


def test_beta_sampling_sigmas():
    from nodes.sigma_lists import beta_sigmas

    model = [0.01 * (t + 1) for t in range(1000)]  # σ = (t + 1)/100
    uniform = beta_sigmas(model, 4, 1.0, 1.0)  # Beta(1, 1): evenly spaced timesteps
    assert uniform == pytest.approx([10.0, 7.5, 5.0, 2.51, 0.0], abs=0.01)
    ends = beta_sigmas(model, 10, 0.6, 0.6)
    gaps = np.abs(np.diff(ends[:-1]))
    # Beta(0.6, 0.6)'s quantiles crowd the ends of [0, 1]: more steps near σ_max and σ_min
    assert gaps[0] < gaps[4] and gaps[-1] < gaps[4]
    assert len(beta_sigmas(model, 2000, 0.6, 0.6)) - 1 < 2000  # repeats dropped


@pytest.mark.parametrize(("cfg_pp", "plain"), [
    ("dpmpp_2m_cfg_pp", None), ("res_multistep_cfg_pp", "res_multistep"),
    ("gradient_estimation_cfg_pp", "gradient_estimation"), ("euler_cfg_pp", "euler")])
def test_cfg_pp_is_the_plain_sampler_when_the_predictions_agree(cfg_pp, plain):
    """x̃ = D_guided + σ·ε_uncond is x itself when the unconditional prediction is the
    guided one; with another one, the step differs."""
    torch.manual_seed(4)
    x = torch.randn(1, 4, 3, 5) * 14
    eps = [torch.randn(1, 4, 3, 5) for _ in range(3)]
    other = [torch.randn(1, 4, 3, 5) for _ in range(3)]
    def run(uncond: list[torch.Tensor]) -> list[torch.Tensor]:
        scheduler = make_scheduler(cfg_pp, "karras", CONFIG)
        scheduler.set_timesteps(3)
        samples = [x]
        for t, e, u in zip(scheduler.timesteps, eps, uncond, strict=True):
            scheduler.scale_model_input(samples[-1], t)
            samples.append(scheduler.step(e, t, samples[-1], uncond_output=u,
                                          return_dict=False)[0])
        return samples

    same = run(eps)  # the unconditional prediction is the guided one
    if plain is not None:
        reference = _steps(plain, eps, x, steps=3)[1]
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(same, reference,
                                                                     strict=True))
    assert (run(other)[-1] - same[-1]).abs().max() > 1e-3


def test_dpmpp_2s_ancestral_by_hand():
    """Two model calls a step on KDPM2 ancestral's layout: to the log-midpoint σ_s, then
    from x with the midpoint's x0 to σ_down, plus σ_up of fresh noise."""
    torch.manual_seed(5)
    scheduler = make_scheduler("dpmpp_2s_ancestral", "normal", CONFIG)
    scheduler.set_timesteps(3)
    assert len(scheduler.timesteps) == 5 and scheduler.order == 2
    x = torch.randn(1, 4, 3, 5) * 14
    e1, e2 = torch.randn(1, 4, 3, 5), torch.randn(1, 4, 3, 5)
    t = scheduler.timesteps
    s0 = float(scheduler.sigmas[0])
    s_mid, s_down = float(scheduler.sigmas_interpol[0]), float(scheduler.sigmas_down[0])
    s_up = float(scheduler.sigmas_up[0])
    assert s_mid == pytest.approx((s0 * s_down) ** 0.5, rel=1e-4)
    x2 = scheduler.step(e1, t[0], x, return_dict=False)[0]
    d1 = x - s0 * e1
    assert torch.allclose(x2, (s_mid / s0) * x + (1 - s_mid / s0) * d1, atol=1e-4)
    out = scheduler.step(e2, t[1], x2, generator=torch.Generator().manual_seed(8),
                         return_dict=False)[0]
    d2 = x2 - s_mid * e2
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(8))
    expected = (s_down / s0) * x + (1 - s_down / s0) * d2 + s_up * noise
    assert torch.allclose(out, expected, atol=1e-4)


def side_by_side(reference, ours, sigmas: list[float]) -> float:
    """Run diffusers' ``reference`` (VP samples) and our σ-space ``ours`` from the same
    noise with a smooth stand-in for ε(x) and the same noise draws; the largest
    difference of the final samples (ours in VP: / √(σ² + 1))."""
    def model(x_vp):
        return torch.tanh(0.7 * x_vp) * 0.8 + 0.1

    start = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(0))
    vp, ve = start.clone(), start * math.sqrt(sigmas[0] ** 2 + 1)
    g_ref, g_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for i, (t_ref, t_ours) in enumerate(zip(reference.timesteps, ours.timesteps, strict=True)):
        vp = reference.step(model(vp), t_ref, vp, generator=g_ref, return_dict=False)[0]
        ours.scale_model_input(ve, t_ours)
        ve = ours.step(model(ve / math.sqrt(sigmas[i] ** 2 + 1)), t_ours, ve, generator=g_ours,
                       return_dict=False)[0]
    return float((ve / math.sqrt(sigmas[-1] ** 2 + 1) - vp).abs().max())


@pytest.mark.parametrize(("algorithm", "solver", "twin"), [
    ("dpmsolver++", "midpoint", "dpmpp_2m"), ("sde-dpmsolver++", "midpoint", "dpmpp_2m_sde"),
    ("sde-dpmsolver++", "heun", "dpmpp_2m_sde_heun")])
@pytest.mark.parametrize("steps", [8, 20])
def test_sigma_space_twins_equal_diffusers_on_the_same_sigmas(algorithm, solver, twin, steps):
    """The σ-space DPM++ 2M (SDE) that explicit σ lists run equals diffusers'
    DPMSolverMultistepScheduler on those σs (its VP samples = ours / √(σ² + 1)), noise
    draws included."""
    from diffusers import DPMSolverMultistepScheduler

    from nodes.diffusion.schedulers import make_sigma_list_scheduler

    reference = DPMSolverMultistepScheduler.from_config(
        CONFIG, algorithm_type=algorithm, solver_order=2, solver_type=solver,
        use_karras_sigmas=True)
    reference.set_timesteps(steps)
    sigmas = [float(s) for s in reference.sigmas]
    ours = make_sigma_list_scheduler(twin, CONFIG)
    ours.set_timesteps(sigmas=sigmas)
    assert side_by_side(reference, ours, sigmas) < 1e-4


def test_lcm_twin_equals_diffusers_lcm_on_the_same_timesteps():
    """lcm on σ lists: LCMScheduler's step (its boundary condition, then fresh noise)
    in σ; on LCMScheduler's own timesteps it equals it, noise draws included."""
    from diffusers import LCMScheduler

    from nodes.diffusion.schedulers import make_sigma_list_scheduler

    reference = LCMScheduler.from_config(CONFIG)
    reference.set_timesteps(timesteps=[999, 759, 499, 259, 20])
    alphas = reference.alphas_cumprod
    sigmas = [float(((1 - alphas[t]) / alphas[t]) ** 0.5) for t in reference.timesteps] + [0.0]
    ours = make_sigma_list_scheduler("lcm", CONFIG)
    ours.set_timesteps(sigmas=sigmas)
    assert torch.allclose(ours.timesteps.float(), reference.timesteps.float(), atol=1e-3)
    assert side_by_side(reference, ours, sigmas) < 1e-4


@pytest.mark.parametrize("schedule", ["karras", "exponential", "beta"])
@pytest.mark.parametrize(("sampler", "twin"), [
    ("euler_ancestral", "EulerAncestralSampler"), ("ddim", "EulerSampler"),
    ("lcm", "LCMSampler")])
def test_sigma_spacings_run_the_twins_on_eulers_sigmas(sampler, twin, schedule):
    """ComfyUI's common euler_ancestral + karras (and ddim, lcm with a σ spacing, which
    diffusers' classes lack) run the sampler's twin on the σs Euler spaces that way."""
    euler = make_scheduler("euler", schedule, CONFIG)
    euler.set_timesteps(9)
    ours = make_scheduler(sampler, schedule, CONFIG)
    ours.set_timesteps(9)
    assert type(ours).__name__ == twin
    assert torch.equal(ours.sigmas, euler.sigmas)
    # exactly Euler's: timesteps derived again from float32 σs were up to 2e-6 off
    assert torch.equal(ours.timesteps, euler.timesteps)


def test_ddim_on_a_sigma_spacing_is_eulers_step():
    """DDIM (η = 0) is Euler's step in σ, so ddim + karras equals euler + karras."""
    torch.manual_seed(4)
    x = torch.randn(1, 4, 3, 5) * 14
    outputs = [torch.randn(1, 4, 3, 5) for _ in range(5)]
    runs = []
    for name in ("ddim", "euler"):
        scheduler = make_scheduler(name, "karras", CONFIG)
        scheduler.set_timesteps(5)
        sample = x
        for t, out in zip(scheduler.timesteps, outputs, strict=True):
            scheduler.scale_model_input(sample, t)
            sample = scheduler.step(out, t, sample, return_dict=False)[0]
        runs.append(sample)
    assert torch.equal(runs[0], runs[1])


def test_sigma_lists_and_kl_optimal_run_the_dpm_twins(session):
    from tests.test_custom_sampling import captured

    outs = []
    for sampler in ("dpmpp_2m", "dpmpp_2m_sde", "euler_ancestral"):
        graph = {**_sigma_graph(_karras(6, 0.03, 14.6), sampler)}
        (out,) = captured(session, graph, ["sc", 0])
        outs.append(out.samples)
        assert torch.isfinite(out.samples).all()
    assert (outs[0] - outs[1]).abs().max() > 1e-3
    assert unsupported_combination("dpmpp_2m", "kl_optimal") is None
    assert "dpmpp_2m" in unsupported_combination("ddpm", "kl_optimal")
    image = _image(session, "dpmpp_2m_sde", scheduler="kl_optimal", steps=4)
    assert torch.isfinite(image).all()


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_sde"])
def test_sigmas_above_the_models_range_run(session, sampler):
    """σs above the model's σ_max all map to its last timestep: the sampler must still
    step through the list by position (a fuzzing find: it ran off the end)."""
    from tests.test_custom_sampling import captured

    exp = {"class_type": "ExponentialScheduler",
           "inputs": {"steps": 3, "sigma_max": 282.0, "sigma_min": 20.0}}
    (out,) = captured(session, _sigma_graph(exp, sampler), ["sc", 0])
    assert torch.isfinite(out.samples).all()


def test_dpmpp_2m_sde_eta():
    """The twin's eta: 0 is the deterministic DPM++ 2M on the same σs (its noise draws
    multiplied by nothing), and a value between moves away from both."""
    from nodes.diffusion.schedulers import make_sigma_list_scheduler

    sigmas = kl_optimal_sigmas(6, 0.03, 14.6)
    torch.manual_seed(6)
    x = torch.randn(1, 4, 3, 5) * 14
    outputs = [torch.randn(1, 4, 3, 5) for _ in range(6)]

    def run(name: str, eta: float | None = None) -> torch.Tensor:
        scheduler = make_sigma_list_scheduler(name, CONFIG)
        if eta is not None:
            scheduler.eta = eta
        scheduler.set_timesteps(sigmas=sigmas)
        generator, sample = torch.Generator().manual_seed(2), x
        for t, out in zip(scheduler.timesteps, outputs, strict=True):
            scheduler.scale_model_input(sample, t)
            sample = scheduler.step(out, t, sample, generator=generator, return_dict=False)[0]
        return sample

    deterministic = run("dpmpp_2m")
    assert torch.allclose(run("dpmpp_2m_sde", 0.0), deterministic, atol=1e-4)
    half, full = run("dpmpp_2m_sde", 0.5), run("dpmpp_2m_sde", 1.0)
    assert (half - deterministic).abs().max() > 1e-3 and (half - full).abs().max() > 1e-3


def test_sampler_dpmpp_2m_sde_node_takes_eta(session):
    default = _custom_with(session, _node("SamplerDPMPP_2M_SDE", solver_type="midpoint",
                                          eta=1.0, s_noise=1.0, noise_device="cpu"))
    half = _custom_with(session, _node("SamplerDPMPP_2M_SDE", solver_type="heun", eta=0.5,
                                       s_noise=0.8, noise_device="gpu"))
    assert torch.isfinite(half).all() and (half - default).abs().max() > 1e-3
