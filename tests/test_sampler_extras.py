"""GITSScheduler, SamplerLCMUpscale and SamplerDPMAdaptative: the GITS tables and their
interpolation, LCM upscale against a written-out loop on the tiny model, and the adaptive
DPM-Solver against an independent written-out implementation (an analytic Gaussian
denoiser and the tiny UNet), with their structured errors."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
import torch

from nodes.diffusion import dpm_adaptive as dpm_adaptive_module
from nodes.diffusion.dpm_adaptive import AdaptiveOptions, dpm_adaptive
from nodes.diffusion.lcm_upscale import UpscaleOptions
from nodes.sampler_extras import GITSScheduler, SamplerDPMAdaptative, SamplerLCMUpscale
from tests.graph_nodes import CAPTURED, run_error
from tests.test_custom_sampling import base, basic_scheduler, custom, select

# --- GITS -----------------------------------------------------------------------------------

#: rows of the paper's tables (ComfyUI's nodes_gits.py), written out
ROW_120_3 = [14.61464119, 1.56271636, 0.52423614, 0.02916753]
ROW_080_2 = [14.61464119, 7.49001646, 0.02916753]
ROW_100_10 = [14.61464119, 11.54541874, 7.49001646, 5.85520077, 4.45427561, 3.07277966,
              1.98035145, 1.24153244, 0.72133851, 0.34370604, 0.02916753]
ROW_100_11 = [14.61464119, 11.54541874, 7.49001646, 5.85520077, 4.45427561, 3.1956799,
              2.27973175, 1.51179266, 0.95350921, 0.54755926, 0.25053367, 0.02916753]
ROW_120_20 = [14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.19988537, 1.61558151,
              1.24153244, 0.95350921, 0.74807048, 0.59516323, 0.50118381, 0.41087446,
              0.34370604, 0.29807833, 0.25053367, 0.22545385, 0.19894916, 0.17026083,
              0.13792117, 0.09824532, 0.02916753]


def gits(coeff: float = 1.2, steps: int = 10, denoise: float = 1.0) -> list[float]:
    schedule = GITSScheduler(coeff=coeff, steps=steps, denoise=denoise).execute(None)[0]
    return schedule.sigmas().tolist()


@pytest.mark.parametrize(("coeff", "steps", "row"), [
    (1.2, 3, ROW_120_3), (0.8, 2, ROW_080_2), (1.0, 10, ROW_100_10), (1.0, 11, ROW_100_11),
    (1.2, 20, ROW_120_20)])
def test_gits_rows_are_the_papers(coeff, steps, row):
    assert gits(coeff, steps) == pytest.approx([*row[:-1], 0.0], rel=1e-6)


def test_gits_interpolates_the_20_step_row_log_linearly():
    steps = 27
    # by hand: position i of 28 levels sits at i·20/27 along the 21-level row
    logs = np.log(ROW_120_20)
    expected = []
    for i in range(steps + 1):
        x = i * 20 / steps
        k = min(int(x), 19)
        expected.append(math.exp(logs[k] + (x - k) * (logs[k + 1] - logs[k])))
    expected[-1] = 0.0
    assert gits(1.2, steps) == pytest.approx(expected, rel=1e-6)
    # ComfyUI's numpy form of the same interpolation
    comfy = np.exp(np.interp(np.linspace(0, 1, steps + 1), np.linspace(0, 1, 21),
                             np.log(ROW_120_20[::-1])))[::-1]
    assert gits(1.2, steps)[:-1] == pytest.approx(comfy[:-1].tolist(), rel=1e-6)


@pytest.mark.parametrize(("steps", "denoise", "kept"), [
    (10, 0.5, 5), (10, 0.25, 2), (10, 0.0, 0), (4, 0.125, 0), (10, 0.99, 10)])
def test_gits_denoise_keeps_the_last_rounded_steps(steps, denoise, kept):
    schedule = GITSScheduler(coeff=1.0, steps=steps, denoise=denoise).execute(None)[0]
    assert len(schedule) == kept
    if kept:
        assert schedule.sigmas().tolist() == pytest.approx(
            [*ROW_100_10[-kept - 1:-1], 0.0], rel=1e-6)


def test_gits_coeff_off_the_grid_is_an_error():
    with pytest.raises(ValueError, match=r"multiple of 0\.05"):
        gits(1.23, 10)


# --- graphs on the tiny model -------------------------------------------------------------------


def _capture(graph: dict, *links: list) -> list[str]:
    keys = []
    for n, link in enumerate(links):
        key = uuid.uuid4().hex
        graph[f"cap{n}"] = {"class_type": "TestCapture", "inputs": {"value": link, "key": key}}
        keys.append(key)
    return keys


def _run(session, graph: dict, *links: list, **kwargs) -> list:
    keys = _capture(graph, *links)
    result = session.run(graph, **kwargs)
    assert result.ok, result.run.error
    return [CAPTURED.pop(key) for key in keys]


def gits_node(steps: int = 6, denoise: float = 1.0) -> dict:
    return {"class_type": "GITSScheduler",
            "inputs": {"coeff": 1.2, "steps": steps, "denoise": denoise}}


@pytest.mark.slow
def test_sampling_with_gits_runs_and_matches_manual_sigmas(session):
    levels = ", ".join(f"{v:.8f}" for v in gits(1.2, 6))
    graph = {**base(), "select": select("dpmpp_2m"), "gits": gits_node(),
             "manual": {"class_type": "ManualSigmas", "inputs": {"sigmas": levels}},
             "a": custom(["gits", 0], ["empty", 0]), "b": custom(["manual", 0], ["empty", 0])}
    a, b = _run(session, graph, ["a", 0], ["b", 0])
    assert bool(torch.isfinite(a.samples).all())
    assert float((a.samples - b.samples).abs().max()) < 1e-5


def test_gits_with_a_sampler_that_takes_no_sigma_list_is_a_structured_error(session):
    graph = {**base(), "select": select("ddpm"), "gits": gits_node(),
             "s": custom(["gits", 0], ["empty", 0])}
    _capture(graph, ["s", 0])
    assert "cannot run an explicit σ list" in run_error(session, graph)


# --- LCM upscale ------------------------------------------------------------------------------


def test_upscale_factors_follow_comfyui():
    assert UpscaleOptions(2.0).factors(4) == pytest.approx([1.5, 2.0])  # (5 // 2 + 1) - 1
    assert UpscaleOptions(2.0, 0).factors(4) == []
    assert UpscaleOptions(3.0, 10).factors(4) == pytest.approx([1.4, 1.8, 2.2, 2.6, 3.0])
    assert UpscaleOptions(1.5, 1).sizes(4, 6, 4) == [(6, 9)]


def lcm_upscale(ratio: float, steps: int = -1, method: str = "bislerp") -> dict:
    return {"class_type": "SamplerLCMUpscale", "inputs": {
        "scale_ratio": ratio, "scale_steps": steps, "upscale_method": method}}


def _lcm_reference(model, embeds, shape, seed, steps, options):
    """LCM by hand: x0 with the boundary condition, resized, re-noised."""
    from diffusers import LCMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    from nodes.diffusion.resize import common_upscale

    sched = LCMScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(steps)
    timesteps = sched.timesteps.tolist()
    alphas = sched.alphas_cumprod
    gen = torch.Generator("cpu").manual_seed(seed)
    x = randn_tensor(shape, generator=gen) * sched.init_noise_sigma
    sizes = options.sizes(shape[-2], shape[-1], steps)
    for j, t in enumerate(timesteps):
        with torch.no_grad():
            eps = model.unet(x, torch.tensor(t), encoder_hidden_states=embeds).sample
        a_t = alphas[t]
        a_prev = alphas[timesteps[j + 1]] if j + 1 < steps else None
        c_skip, c_out = sched.get_scalings_for_boundary_condition_discrete(t)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        denoised = c_out * x0 + c_skip * x
        if j < len(sizes):
            h, w = sizes[j]
            denoised = common_upscale(denoised, w, h, options.upscale_method)
        if a_prev is None:
            x = denoised
        else:
            noise = randn_tensor(denoised.shape, generator=gen)
            x = a_prev.sqrt() * denoised + (1 - a_prev).sqrt() * noise
    return x


@pytest.mark.slow
@pytest.mark.parametrize(("ratio", "scale_steps", "method"), [
    (1.5, -1, "bislerp"), (2.0, 3, "bilinear"), (0.75, 1, "area")])
def test_lcm_upscale_equals_a_written_out_loop(session, ratio, scale_steps, method):
    steps, seed = 4, 5
    graph = {**base(64, 48), "up": lcm_upscale(ratio, scale_steps, method),
             "sched": basic_scheduler("normal", steps=steps),
             "s": custom(["sched", 0], ["empty", 0], sampler="up", cfg=1.0, seed=seed)}
    out, model, pos = _run(session, graph, ["s", 0], ["ckpt", 0], ["pos", 0])
    shape = (1, 4, 6, 8)
    expected = _lcm_reference(model, pos.embeds, shape, seed, steps,
                              UpscaleOptions(ratio, scale_steps, method))
    assert out.samples.shape[-2:] == (round(6 * ratio), round(8 * ratio))
    assert out.samples.shape == expected.shape
    assert float((out.samples - expected).abs().max()) <= 1e-4


def test_lcm_upscale_at_ratio_1_is_plain_lcm(session):
    graph = {**base(), "up": lcm_upscale(1.0), "select": select("lcm"),
             "sched": basic_scheduler("normal", steps=3),
             "a": custom(["sched", 0], ["empty", 0], sampler="up"),
             "b": custom(["sched", 0], ["empty", 0])}
    a, b, da, db = _run(session, graph, ["a", 0], ["b", 0], ["a", 1], ["b", 1])
    assert torch.equal(a.samples, b.samples)
    assert torch.equal(da.samples, db.samples)


def test_lcm_upscale_structured_errors(session):
    sched = basic_scheduler("normal", steps=3)
    too_big = {**base(1024, 1024), "up": lcm_upscale(20.0), "sched": sched,
               "s": custom(["sched", 0], ["empty", 0], sampler="up")}
    _capture(too_big, ["s", 0])
    assert "each side must be 1 to 2048" in run_error(session, too_big)
    karras = {**base(), "up": lcm_upscale(1.5), "sched": basic_scheduler("karras", steps=3),
              "s": custom(["sched", 0], ["empty", 0], sampler="up")}
    _capture(karras, ["s", 0])
    assert "karras" in run_error(session, karras)
    masked = {**base(), "up": lcm_upscale(1.5), "sched": sched,
              "mask": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 48,
                                                             "height": 32}},
              "noisemask": {"class_type": "SetLatentNoiseMask",
                            "inputs": {"samples": ["empty", 0], "mask": ["mask", 0]}},
              "s": custom(["sched", 0], ["noisemask", 0], sampler="up")}
    _capture(masked, ["s", 0])
    assert "noise mask" in run_error(session, masked)


def test_lcm_upscale_refuses_techniques_made_for_the_input_size():
    from nodes.diffusion.extensions import SamplerExtension
    from nodes.diffusion.lcm_upscale import check_size_free
    from nodes.sampling_advanced import FinalDenoise

    class ControlNetResiduals(SamplerExtension):
        pass

    check_size_free([FinalDenoise()])
    with pytest.raises(ValueError, match="ControlNetResiduals cannot follow"):
        check_size_free([FinalDenoise(), ControlNetResiduals()])


# --- DPM adaptive: the written-out reference ----------------------------------------------------


def reference_dpm_adaptive(x, sigma_max, sigma_min, denoise, order=3, rtol=0.05, atol=0.0078,
                           h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0,
                           accept_safety=0.81, eta=0.0, s_noise=1.0, noise=None):
    """k-diffusion's algorithm as plain loops (a model call for every ε, retries included);
    returns (x, accepted steps, model calls)."""
    lam = lambda sigma: -math.log(sigma)  # noqa: E731
    sig = lambda t: math.exp(-t)  # noqa: E731

    def eps(x, t):
        return (x - denoise(x, sig(t))) / sig(t)

    t_end, s = lam(sigma_min), lam(sigma_max)
    powers = [(pcoeff + icoeff + dcoeff), -(pcoeff + 2 * dcoeff), dcoeff]
    div = 1.5 if eta else order
    powers = [p / div for p in powers]
    h, errs, x_prev, accepted, calls = h_init, [], x, 0, 0
    while s < t_end - 1e-5:
        t = min(t_end, s + h)
        t_solve, up = t, 0.0
        if eta:
            a, b = sig(s), sig(t)
            su = min(b, eta * math.sqrt(b ** 2 * (a ** 2 - b ** 2) / a ** 2))
            sd = math.sqrt(b ** 2 - su ** 2)
            t_solve = min(t_end, lam(sd))
            up = math.sqrt(sig(t) ** 2 - sig(t_solve) ** 2)
        hh = t_solve - s
        e0 = eps(x, s)
        calls += 1
        if order == 2:
            s1 = s + hh / 2
            u1 = x - sig(s1) * math.expm1(hh / 2) * e0
            e1 = eps(u1, s1)
            calls += 1
            low = x - sig(t_solve) * math.expm1(hh) * e0
            high = low - sig(t_solve) * math.expm1(hh) * (e1 - e0)
        else:
            s1, s2 = s + hh / 3, s + 2 * hh / 3
            u1 = x - sig(s1) * math.expm1(hh / 3) * e0
            e1 = eps(u1, s1)
            u2 = (x - sig(s2) * math.expm1(2 * hh / 3) * e0
                  - sig(s2) * 2 * (math.expm1(2 * hh / 3) / (2 * hh / 3) - 1) * (e1 - e0))
            e2 = eps(u2, s2)
            calls += 2
            base_ = x - sig(t_solve) * math.expm1(hh) * e0
            low = base_ - sig(t_solve) * 1.5 * math.expm1(hh) * (e1 - e0)
            high = base_ - sig(t_solve) * 1.5 * (math.expm1(hh) / hh - 1) * (e2 - e0)
        delta = torch.clamp(rtol * torch.maximum(low.abs(), x_prev.abs()), min=atol)
        error = float(torch.sqrt((((low - high) / delta) ** 2).sum() / low.numel()))
        inv = 1 / (error + 1e-8)
        if not errs:
            errs = [inv, inv, inv]
        errs[0] = inv
        factor = errs[0] ** powers[0] * errs[1] ** powers[1] * errs[2] ** powers[2]
        factor = 1 + math.atan(factor - 1)
        if factor >= accept_safety:
            errs = [errs[0], errs[0], errs[1]]
            x_prev = low
            x = high + (up * s_noise * noise(high) if up else 0)
            s = t
            accepted += 1
        h *= factor
    return x, accepted, calls


class Gaussian:
    """Data ~ N(μ, v) per entry: D(x, σ) = μ + v/(v + σ²)·(x − μ) exactly."""

    def __init__(self, shape=(2, 3, 5, 4), seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(shape, generator=gen, dtype=torch.float64)
        self.var = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.9 + 0.1
        self.x = torch.randn(shape, generator=gen, dtype=torch.float64) * 14.6
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.mu + self.var / (self.var + sigma ** 2) * (x - self.mu)

    def exact(self, sigma_max, sigma_min):
        """The probability-flow ODE's solution: x − μ grows as √(v + σ²)."""
        return self.mu + (self.x - self.mu) * torch.sqrt(
            (self.var + sigma_min ** 2) / (self.var + sigma_max ** 2))


@pytest.mark.parametrize("settings", [
    {}, {"order": 2}, {"rtol": 0.01, "atol": 0.001}, {"pcoeff": 0.3, "icoeff": 0.8,
                                                       "dcoeff": 0.1, "h_init": 0.5},
    {"accept_safety": 0.95, "order": 2}])
def test_dpm_adaptive_equals_the_written_out_algorithm(settings):
    data = Gaussian()
    ours, solver = dpm_adaptive(data.x, 14.6, 0.03, data, AdaptiveOptions(**settings))
    expected, accepted, calls = reference_dpm_adaptive(data.x, 14.6, 0.03, data, **settings)
    assert solver.accepted == accepted
    assert solver.calls == calls - solver.rejected  # a retry reuses its first call
    assert float((ours - expected).abs().max()) <= 1e-4


def test_dpm_adaptive_with_eta_equals_the_written_out_algorithm():
    data = Gaussian(seed=3)

    def noise_from(seed):
        gen = torch.Generator().manual_seed(seed)
        return lambda like: torch.randn(like.shape, generator=gen, dtype=like.dtype)

    options = AdaptiveOptions(eta=0.7, s_noise=0.9)
    ours, _ = dpm_adaptive(data.x, 14.6, 0.03, data, options, noise=noise_from(1))
    expected, _, _ = reference_dpm_adaptive(data.x, 14.6, 0.03, data, eta=0.7, s_noise=0.9,
                                            noise=noise_from(1))
    assert float((ours - expected).abs().max()) <= 1e-4


def test_dpm_adaptive_tolerances_trade_calls_for_accuracy():
    data = Gaussian(seed=1)
    exact = data.exact(14.6, 0.03)
    results = []
    for rtol, atol in ((0.05, 0.0078), (0.005, 5e-4), (5e-4, 5e-5), (5e-5, 5e-6)):
        x, solver = dpm_adaptive(data.x, 14.6, 0.03, data, AdaptiveOptions(rtol=rtol, atol=atol))
        results.append((solver.calls, float((x - exact).abs().max())))
    calls = [c for c, _ in results]
    errors = [e for _, e in results]
    assert calls == sorted(calls) and calls[0] < calls[-1]
    assert errors[-1] < errors[0] / 50 and errors[-1] < 1e-3


def test_dpm_adaptive_runs_backwards_without_eta():
    data = Gaussian(seed=2)
    x, _ = dpm_adaptive(data.x, 0.03, 14.6, data, AdaptiveOptions(rtol=0.001, atol=0.0001))
    back = data.mu + (data.x - data.mu) * torch.sqrt((data.var + 14.6 ** 2)
                                                      / (data.var + 0.03 ** 2))
    assert float(((x - back) / back.abs().clamp(min=1)).abs().max()) < 1e-2
    with pytest.raises(ValueError, match="eta must be 0"):
        dpm_adaptive(data.x, 0.03, 14.6, data, AdaptiveOptions(eta=0.5))


def test_dpm_adaptive_bounds_the_model_calls():
    data = Gaussian()
    with pytest.raises(ValueError, match="made 7 model calls without reaching"):
        dpm_adaptive(data.x, 14.6, 0.03, data, AdaptiveOptions(rtol=1e-9, atol=1e-9),
                     max_calls=7)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("h_init", 0.0, "h_init must be above 0"), ("rtol", 0.0, "both 0")])
def test_dpm_adaptive_node_errors(field, value, message):
    inputs = {"rtol": 0.05, "atol": 0.0078, "h_init": 0.05}
    inputs[field] = value
    if field == "rtol":
        inputs["atol"] = 0.0
    with pytest.raises(ValueError, match=message):
        SamplerDPMAdaptative(**inputs).execute(None)


# --- DPM adaptive on the tiny UNet ----------------------------------------------------------------


def dpm_node(**settings) -> dict:
    inputs = {"order": 3, "rtol": 0.05, "atol": 0.0078, "h_init": 0.05, "pcoeff": 0.0,
              "icoeff": 1.0, "dcoeff": 0.0, "accept_safety": 0.81, "eta": 0.0, "s_noise": 1.0}
    return {"class_type": "SamplerDPMAdaptative", "inputs": {**inputs, **settings}}


def _unet_denoiser(model, pos, neg, cfg):
    """D(x, σ) of the tiny UNet with CFG, written out: the VP input, the continuous
    timestep (log σ interpolated over the training σs), ε → x0."""
    from diffusers import EulerDiscreteScheduler

    alphas = EulerDiscreteScheduler.from_config(model.scheduler_config).alphas_cumprod
    log_sigmas = np.log((((1 - alphas) / alphas) ** 0.5).numpy())
    embeds = torch.cat([neg.embeds, pos.embeds])

    def denoise(x, sigma):
        t = float(np.interp(math.log(sigma), log_sigmas, np.arange(len(log_sigmas))))
        scaled = x.float() / math.sqrt(sigma ** 2 + 1)
        out = model.unet(torch.cat([scaled] * 2), torch.tensor(t, dtype=torch.float32),
                         encoder_hidden_states=embeds).sample
        uncond, cond = out.chunk(2)
        return x - sigma * (uncond + cfg * (cond - uncond))

    return denoise


@pytest.mark.slow
@pytest.mark.parametrize("settings", [{}, {"order": 2, "rtol": 0.1}])
def test_dpm_adaptive_on_the_tiny_unet_equals_the_written_out_algorithm(session, settings):
    from diffusers import EulerDiscreteScheduler
    from diffusers.utils.torch_utils import randn_tensor

    seed, cfg = 4, 5.0
    graph = {**base(), "dpm": dpm_node(**settings), "sched": basic_scheduler("karras", 6),
             "s": custom(["sched", 0], ["empty", 0], sampler="dpm", cfg=cfg, seed=seed)}
    out, den, model, pos, neg, sigmas = _run(
        session, graph, ["s", 0], ["s", 1], ["ckpt", 0], ["pos", 0], ["neg", 0], ["sched", 0],
        keep_events=True)
    levels = sigmas.for_model(model.scheduler_config).sigmas().tolist()
    euler = EulerDiscreteScheduler.from_config(model.scheduler_config)
    euler.set_timesteps(sigmas=levels)
    x = randn_tensor((1, 4, 4, 6), generator=torch.Generator("cpu").manual_seed(seed))
    x = x * euler.init_noise_sigma
    denoise = _unet_denoiser(model, pos, neg, cfg)
    with torch.no_grad():
        expected, _, _ = reference_dpm_adaptive(x, levels[0], levels[-2], denoise, **settings)
    assert float((out.samples - expected).abs().max()) <= 1e-4
    assert bool(torch.isfinite(den.samples).all())


@pytest.mark.slow
def test_dpm_adaptive_reports_progress_by_sigma_and_bounds_calls(session, monkeypatch):
    graph = {**base(), "dpm": dpm_node(rtol=0.01, atol=0.001),
             "sched": basic_scheduler("karras", 5),
             "s": custom(["sched", 0], ["empty", 0], sampler="dpm", cfg=3.0)}
    keys = _capture(graph, ["s", 0])
    result = session.run(graph, keep_events=True)
    assert result.ok, result.run.error
    CAPTURED.pop(keys[0])
    progress = [(d["value"], d["max"]) for name, d in result.events
                if name == "progress" and d.get("node") == "s"]
    values = [v for v, _ in progress]
    assert {m for _, m in progress} == {500} and values[-1] == 500
    assert values == sorted(values) and len(set(values)) > 5  # within steps too
    monkeypatch.setattr(dpm_adaptive_module, "MAX_MODEL_CALLS", 4)
    graph["s"]["inputs"]["noise_seed"] = 11  # not the cached run
    _capture(graph, ["s", 0])
    assert "made 4 model calls without reaching" in run_error(session, graph)


def test_dpm_adaptive_structured_errors(session):
    one_step = {**base(), "dpm": dpm_node(), "sched": basic_scheduler("karras", 1),
                "s": custom(["sched", 0], ["empty", 0], sampler="dpm")}
    _capture(one_step, ["s", 0])
    assert "at least 2 steps" in run_error(session, one_step)
    flipped = {**base(), "dpm": dpm_node(eta=0.5), "sched": basic_scheduler("karras", 3),
               "flip": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sched", 0]}},
               "s": custom(["flip", 0], ["empty", 0], sampler="dpm")}
    _capture(flipped, ["s", 0])
    assert "eta must be 0" in run_error(session, flipped)
    masked = {**base(), "dpm": dpm_node(), "sched": basic_scheduler("karras", 3),
              "mask": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 48,
                                                             "height": 32}},
              "noisemask": {"class_type": "SetLatentNoiseMask",
                            "inputs": {"samples": ["empty", 0], "mask": ["mask", 0]}},
              "s": custom(["sched", 0], ["noisemask", 0], sampler="dpm")}
    _capture(masked, ["s", 0])
    assert "noise mask" in run_error(session, masked)


def test_sampler_nodes_carry_their_options():
    dpm = SamplerDPMAdaptative(order=2, rtol=0.1, eta=0.5).execute(None)[0]
    assert dict(dpm.options)["order"] == 2 and dict(dpm.options)["eta"] == 0.5
    up = SamplerLCMUpscale(scale_ratio=1.5, scale_steps=2,
                           upscale_method="area").execute(None)[0]
    assert dict(up.options) == {"scale_ratio": 1.5, "scale_steps": 2, "upscale_method": "area"}


@pytest.mark.slow
def test_dpm_adaptive_model_calls_go_through_the_extensions(session, monkeypatch):
    from nodes.diffusion.sega import SemanticGuidance

    seen = []
    guidance = SemanticGuidance.guidance

    def spy(self, run, step, preds, g):
        seen.append((step.index, step.total, float(step.timestep)))
        return guidance(self, run, step, preds, g)

    monkeypatch.setattr(SemanticGuidance, "guidance", spy)
    concept = {"text": "a blue square", "direction": "add", "scale": 6.0, "warmup_steps": 2,
               "cooldown_steps": 10000, "threshold": 0.9, "weight": 1.0, "clip": ["ckpt", 1]}
    graph = {**base(), "dpm": dpm_node(), "sched": basic_scheduler("karras", 6),
             "c0": {"class_type": "SEGAConcept", "inputs": concept},
             "sega": {"class_type": "ApplySEGA", "inputs": {
                 "model": ["ckpt", 0], "concepts": ["c0", 0], "momentum_scale": 0.1,
                 "momentum_beta": 0.4}},
             "plain": custom(["sched", 0], ["empty", 0], sampler="dpm", seed=8),
             "s": custom(["sched", 0], ["empty", 0], sampler="dpm", seed=8)}
    graph["s"]["inputs"]["model"] = ["sega", 0]
    out, plain = _run(session, graph, ["s", 0], ["plain", 0])
    assert bool(torch.isfinite(out.samples).all())
    assert float((out.samples - plain.samples).abs().max()) > 1e-3  # SEGA steered
    indices = [i for i, _, _ in seen]
    assert {total for _, total, _ in seen} == {6}
    assert min(indices) == 0 and max(indices) <= 5 and len(seen) > 6
    assert len({t for _, _, t in seen}) > 6  # each call at its own timestep
