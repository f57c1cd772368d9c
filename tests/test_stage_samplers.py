"""ComfyUI's er_sde, seeds_2/3, sa_solver(_pece) and dpmpp_2s_ancestral_cfg_pp
(nodes.diffusion.stage_samplers): their updates by hand, their order on Gaussian data (whose
probability-flow ODE is known), their noise, their layout under windows, their runs through
KSampler / KSamplerAdvanced / SamplerCustom, and ComfyUI's option nodes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from nodes.diffusion.schedulers import (
    SAMPLERS,
    kl_optimal_sigmas,
    make_scheduler,
    make_sigma_list_scheduler,
)
from nodes.diffusion.stage_samplers import (
    STAGE_OPTIONS,
    ERSDESampler,
    adams_weights,
    percent_to_sigma,
    simple_order_2_weights,
    with_stage_options,
)

CONFIG = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
          "num_train_timesteps": 1000}
V = 0.25  # the Gaussian data's variance
NEW = ("er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece",
       "dpmpp_2s_ancestral_cfg_pp")
SHAPE = (1, 4, 3, 5)


def _scheduler(name: str, schedule: str = "karras", steps: int = 4, **attrs):
    scheduler = make_scheduler(name, schedule, CONFIG)
    for key, value in attrs.items():
        setattr(scheduler, key, value)
    scheduler.set_timesteps(steps)
    return scheduler


def _run(scheduler, x: torch.Tensor, model, seed: int | None = None, **kwargs) -> list:
    """Every call's sample: ``model(x, σ)`` gives the x0, handed to ``step`` as ε."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    samples = [x]
    for t in scheduler.timesteps:
        scheduler.scale_model_input(samples[-1], t)
        sigma = float(scheduler.sigmas[scheduler.step_index])
        eps = (samples[-1] - model(samples[-1], sigma)) / sigma
        samples.append(scheduler.step(eps, t, samples[-1], generator=generator,
                                      return_dict=False, **kwargs)[0].double())
    return samples


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x * V / (V + sigma ** 2)  # the ideal denoiser of N(0, V) data


def _error(name: str, steps: int, schedule: str = "karras", **attrs) -> float:
    """Relative error on Gaussian data against the exact ODE to the last σ > 0 followed
    by the same final denoise (every sampler here ends on D there)."""
    scheduler = _scheduler(name, schedule, steps, **attrs)
    start = torch.full((1, 1, 2, 2), float(scheduler.init_noise_sigma), dtype=torch.float64)
    out = _run(scheduler, start, _gaussian)[-1]
    levels = getattr(scheduler, "levels", [float(s) for s in scheduler.sigmas])
    top, last = levels[0], levels[-2]
    exact = _gaussian(start * math.sqrt((V + last ** 2) / (V + top ** 2)), last)
    return float((out - exact).abs().max() / exact.abs().max())


# --- by hand --------------------------------------------------------------------------------

def test_er_sde_by_hand():
    """Stage 1, 2 and 3 terms of the ODE form (f = λ), and the first noisy step."""
    torch.manual_seed(0)
    x = torch.randn(SHAPE, dtype=torch.float64) * 14
    ds = [torch.randn(SHAPE, dtype=torch.float64) for _ in range(3)]
    scheduler = _scheduler("er_sde", steps=5, power=1.0, s_noise=0.0)
    s = [float(v) for v in scheduler.sigmas]
    out = _run(scheduler, x, lambda _x, sigma: ds[min(s.index(sigma), 2)])
    # f = λ: r = σ'/σ; ∫dλ/λ = log(σ/σ'); ∫(λ − σ)/λ dλ = σ − σ' − σ·log(σ/σ')
    assert torch.allclose(out[1], s[1] / s[0] * x + (1 - s[1] / s[0]) * ds[0], atol=1e-4)
    slope = (ds[1] - ds[0]) / (s[1] - s[0])
    second = (s[2] / s[1] * out[1] + (1 - s[2] / s[1]) * ds[1]
              + (s[2] - s[1] + s[2] * math.log(s[1] / s[2])) * slope)
    assert torch.allclose(out[2], second, atol=1e-4)
    slope2 = (ds[2] - ds[1]) / (s[2] - s[1])
    curvature = (slope2 - slope) / ((s[2] - s[0]) / 2)
    third = (s[3] / s[2] * out[2] + (1 - s[3] / s[2]) * ds[2]
             + (s[3] - s[2] + s[3] * math.log(s[2] / s[3])) * slope2
             + ((s[3] - s[2]) ** 2 / 2 + s[3] * (s[2] - s[3] - s[2] * math.log(s[2] / s[3])))
             * curvature)
    assert torch.allclose(out[3], third, atol=1e-4)
    # ER-SDE's own f, with noise √(σ'² − r²σ²) from the generator
    noisy = _scheduler("er_sde", steps=5)
    first = _run(noisy, x, lambda _x, _sigma: ds[0], seed=4)[1]
    f = noisy.scaler
    r = f(s[1]) / f(s[0])
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    expected = r * x + (1 - r) * ds[0] + math.sqrt(s[1] ** 2 - (r * s[0]) ** 2) * z
    assert torch.allclose(first, expected, atol=1e-4)


@pytest.mark.parametrize("power", [None, 1.0, 1.5, 2.0, 3.0, 101.0])
@pytest.mark.parametrize(("sigma", "sigma_next"), [(9.0, 0.7), (14.6, 0.03), (0.5, 0.49)])
def test_er_sde_integrals(power, sigma, sigma_next):
    scheduler = ERSDESampler.from_config(CONFIG)
    scheduler.power = power
    f = scheduler.scaler
    first, whole = scheduler.integrals(sigma, sigma_next)
    # the reference in log λ, where λ^{-101}'s steep fall stays resolvable
    def integral(g):
        return quad(lambda u: g(math.exp(u)) * math.exp(u) * f(sigma_next) / f(math.exp(u)),
                    math.log(sigma_next), math.log(sigma), epsabs=0, epsrel=1e-12,
                    limit=200)[0]

    assert first == pytest.approx(integral(lambda lam: 1.0), rel=1e-8)
    assert whole == pytest.approx(integral(lambda lam: lam - sigma), rel=1e-8)


def test_seeds_by_hand():
    """seeds_2 at η = 0 is DPM-Solver++(2S); with noise, the second stage carries the
    first stage's noise on (one Brownian path); seeds_3's three stages."""
    torch.manual_seed(1)
    x = torch.randn(SHAPE, dtype=torch.float64) * 14
    d1, d2, d3 = (torch.randn(SHAPE, dtype=torch.float64) for _ in range(3))
    ds = iter([d1, d2, d3])

    def model(_x, _sigma):  # the stages' x0s, then anything
        return next(ds, d3)

    scheduler = _scheduler("seeds_2", eta=0.0)
    assert scheduler.order == 2 and len(scheduler.timesteps) == 2 * 4 - 1
    s0, s1 = scheduler.levels[:2]
    h = math.log(s0 / s1)
    x2, out = _run(scheduler, x, model)[1:3]
    assert float(scheduler.sigmas[1]) == pytest.approx(math.sqrt(s0 * s1), rel=1e-5)
    assert torch.allclose(x2, math.exp(-h / 2) * x - math.expm1(-h / 2) * d1, atol=1e-4)
    assert torch.allclose(out, math.exp(-h) * x - math.expm1(-h) * d2, atol=1e-4)  # 2S

    eta, ds = 0.6, iter([d1, d2])
    x2, out = _run(_scheduler("seeds_2", eta=eta, solver_type="phi_2"), x, model, seed=7)[1:3]
    gen = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    y = (1 + eta) * h
    w1 = math.sqrt(1 - math.exp(-eta * h)) * z1  # the path over the first half
    assert torch.allclose(x2, math.exp(-y / 2) * x + (1 - math.exp(-y / 2)) * d1
                          + math.sqrt(s0 * s1) * w1, atol=1e-4)
    w2 = math.exp(-eta * h / 2) * w1 + math.sqrt(1 - math.exp(-eta * h)) * z2
    ramp = (y - 1 + math.exp(-y)) / y
    assert torch.allclose(out, math.exp(-y) * x + (1 - math.exp(-y)) * d1
                          + ramp / 0.5 * (d2 - d1) + s1 * w2, atol=1e-4)

    ds = iter([d1, d2, d3])
    scheduler = _scheduler("seeds_3", eta=0.0)
    assert scheduler.order == 3 and len(scheduler.timesteps) == 3 * 4 - 2
    x2, x3, out = _run(scheduler, x, model)[1:4]

    def ramp_(v):
        return (v - 1 + math.exp(-v)) / v

    assert torch.allclose(x2, math.exp(-h / 3) * x + (1 - math.exp(-h / 3)) * d1, atol=1e-4)
    assert torch.allclose(x3, math.exp(-2 * h / 3) * x + (1 - math.exp(-2 * h / 3)) * d1
                          + 2 * ramp_(2 * h / 3) * (d2 - d1), atol=1e-4)
    assert torch.allclose(out, math.exp(-h) * x + (1 - math.exp(-h)) * d1
                          + 1.5 * ramp_(h) * (d3 - d1), atol=1e-4)


def test_dpmpp_2s_ancestral_cfg_pp():
    """From x̃ = D_guided + σ·ε_uncond; with the unconditional prediction the guided one it
    is dpmpp_2s_ancestral (KDPM2 ancestral's layout) over a whole run, noise included."""
    torch.manual_seed(2)
    x = torch.randn(SHAPE) * 14
    guided = [torch.randn(SHAPE) for _ in range(9)]
    uncond = [torch.randn(SHAPE) for _ in range(9)]

    def run(name: str, unconds: list | None) -> list:
        scheduler = make_scheduler(name, "normal", CONFIG)
        scheduler.set_timesteps(5)
        gen, samples = torch.Generator().manual_seed(3), [x]
        for i, t in enumerate(scheduler.timesteps):
            scheduler.scale_model_input(samples[-1], t)
            kwargs = {} if unconds is None else {"uncond_output": unconds[i]}
            samples.append(scheduler.step(guided[i], t, samples[-1], generator=gen,
                                          return_dict=False, **kwargs)[0])
        return samples

    reference = run("dpmpp_2s_ancestral", None)
    same = run("dpmpp_2s_ancestral_cfg_pp", guided)
    assert len(same) == len(reference) == 10
    assert all(torch.allclose(a, b, atol=1e-3, rtol=1e-4) for a, b in zip(same, reference,
                                                                         strict=True))
    other = run("dpmpp_2s_ancestral_cfg_pp", uncond)
    scheduler = _scheduler("dpmpp_2s_ancestral_cfg_pp", "normal", 5)
    s0, s_mid = float(scheduler.sigmas[0]), float(scheduler.sigmas[1])
    # the first stage is CFG++'s Euler step to the midpoint: D_guided + σ_s·ε_uncond
    assert torch.allclose(other[1], (x - s0 * guided[0]) + s_mid * uncond[0], atol=1e-3)
    assert (other[-1] - same[-1]).abs().max() > 1e-2


@pytest.mark.parametrize(("tau", "h"), [(0.8, 0.5), (0.0, 0.01), (10.0, 3.0)])
def test_adams_weights(tau, h):
    start, end = 0.1, 0.1 + h
    nodes = [start - 3 * h, start - 2 * h, start - h, start]
    c = 1 + tau ** 2
    weights = adams_weights(nodes, start, end, tau)
    assert sum(weights) == pytest.approx(-math.expm1(-c * (end - start)), rel=1e-12)
    cubic = np.poly1d([0.3, -1.0, 2.0, 0.5])  # exact for a cubic D(λ) through four nodes
    exact = c * quad(lambda lam: math.exp(c * (lam - end)) * cubic(lam), start, end,
                     epsabs=0, epsrel=1e-13, limit=200)[0]
    assert sum(w * cubic(n) for w, n in zip(weights, nodes, strict=True)) == pytest.approx(
        exact, rel=1e-9)


def test_simple_order_2_weights():
    nodes, start, end, tau = [-0.2, 0.1], 0.1, 0.6, 0.8
    c = 1 + tau ** 2
    h = end - start
    assert simple_order_2_weights(nodes, start, end, tau, corrector=True) == pytest.approx(
        [-math.expm1(-c * h) - c * h / 2, c * h / 2])
    older = c * h ** 2 / 2 / (nodes[0] - nodes[1])
    assert simple_order_2_weights(nodes, start, end, tau, corrector=False) == pytest.approx(
        [older, -math.expm1(-c * h) - older])


def _sa_reference(levels, x, model, predictor=3, corrector=4, pece=False, tau=0.0):
    """SA-Solver's loop as the paper lays it out (predict, evaluate, correct, evaluate)."""
    lams = [-math.log(s) for s in levels[:-1]]
    n, nodes, state, x_pred = len(levels) - 1, [], None, x
    for i in range(n):
        nodes = [*nodes, model(x_pred, levels[i])][-max(predictor, corrector):]
        p_order = min(predictor, len(nodes), n - 1 - i)
        c_order = 0 if i == 0 or (levels[i + 1] == 0 and not pece) else min(corrector,
                                                                           len(nodes), n - i)
        current = x_pred
        if c_order:
            x_prev, tau_prev = state
            h = lams[i] - lams[i - 1]
            b = adams_weights(lams[i - c_order + 1:i + 1], lams[i - 1], lams[i], tau_prev)
            current = levels[i] / levels[i - 1] * math.exp(-tau_prev ** 2 * h) * x_prev + sum(
                w * d for w, d in zip(b, nodes[-c_order:], strict=True))
            if pece:
                nodes[-1] = model(current, levels[i])
        if levels[i + 1] == 0:
            return nodes[-1]
        h = math.log(levels[i] / levels[i + 1])
        b = adams_weights(lams[i - p_order + 1:i + 1], lams[i], -math.log(levels[i + 1]), tau)
        x_pred = levels[i + 1] / levels[i] * math.exp(-tau ** 2 * h) * current + sum(
            w * d for w, d in zip(b, nodes[-p_order:], strict=True))
        state = (current, tau)
    return x_pred


@pytest.mark.parametrize(("name", "pece"), [("sa_solver", False), ("sa_solver_pece", True)])
def test_sa_solver_equals_the_papers_loop(name, pece):
    """PEC on one call a step; PECE regrouped on Heun's layout (evaluate the corrected
    state, predict, evaluate the prediction, correct): the same model calls and result."""
    torch.manual_seed(3)
    x = torch.randn(SHAPE, dtype=torch.float64) * 14

    def model(x_, sigma):
        return _gaussian(x_, sigma) + 0.1 * torch.tanh(x_) * sigma / (1 + sigma)

    scheduler = _scheduler(name, steps=9, eta=0.0)
    calls: list[float] = []

    def counted(x_, sigma):
        calls.append(sigma)
        return model(x_, sigma)

    ours = _run(scheduler, x, counted)[-1]
    levels = getattr(scheduler, "levels", [float(s) for s in scheduler.sigmas])
    reference = _sa_reference(levels, x, model, pece=pece)
    assert float((ours - reference).abs().max()) < 1e-5 * float(reference.abs().max())
    assert len(calls) == (2 * 9 - 1 if pece else 9)


# --- order, noise, layout -------------------------------------------------------------------

@pytest.mark.parametrize(("name", "attrs", "ratio"), [
    ("er_sde", {"power": 1.0, "s_noise": 0.0}, 3.5),
    ("seeds_2", {"eta": 0.0}, 3.5),
    ("seeds_2", {"eta": 0.0, "solver_type": "phi_2"}, 3.5),
    ("seeds_3", {"eta": 0.0}, 5.5),
    ("sa_solver", {"eta": 0.0}, 3.5),
    ("sa_solver_pece", {"eta": 0.0}, 3.5),
    ("dpmpp_2s_ancestral_cfg_pp", {"eta": 0.0}, 3.5),
])
def test_deterministic_forms_converge(name, attrs, ratio):
    """Error ratio as steps double (24 → 48): 4 is second order, 8 third; Euler's is 2."""
    euler = [_error("euler", n) for n in (24, 48)]
    errors = [_error(name, n, **attrs) for n in (24, 48)]
    assert euler[0] / euler[1] < 2.2
    assert errors[0] / errors[1] > ratio
    assert errors[1] < euler[1] / 10


@pytest.mark.parametrize(("name", "attrs"), [
    ("er_sde", {}), ("er_sde", {"power": 3.0}), ("seeds_2", {}), ("seeds_3", {}),
    ("sa_solver", {}), ("sa_solver", {"eta": 2.0}), ("sa_solver_pece", {}),
    ("dpmpp_2s_ancestral_cfg_pp", {})])
def test_stochastic_forms_keep_the_marginal_variance(name, attrs):
    """From x_T ~ N(0, V + σ_T²) the SDE ends at N(0, V): without the noise these
    samplers contract far below it; a seed reproduces a run and another seed does not."""
    def run(seed: int, **extra) -> torch.Tensor:
        scheduler = _scheduler(name, steps=30, **attrs, **extra)
        start = torch.randn(1, 1, 80, 80, generator=torch.Generator().manual_seed(9))
        return _run(scheduler, start * math.sqrt(V + float(scheduler.sigmas[0]) ** 2),
                    _gaussian, seed=seed)[-1]

    out = run(1)
    assert float(out.var()) == pytest.approx(V, rel=0.06)
    assert torch.equal(out, run(1)) and (out - run(2)).abs().max() > 1e-2
    assert float(run(1, s_noise=0.0).var()) < V / 2


@pytest.mark.parametrize("name", ["seeds_2", "seeds_3", "sa_solver_pece",
                                  "dpmpp_2s_ancestral_cfg_pp"])
def test_windows_cut_whole_steps(name):
    """A step k starts at call k·order (the last step, to σ = 0, is one call), so a run
    resumed at step 3 with set_begin_index(3·order) (KSamplerAdvanced, denoise < 1) picks
    up where the first one left; the one-step samplers equal the whole run."""
    scheduler = _scheduler(name, steps=6, eta=0.0)
    order = scheduler.order
    assert len(scheduler.timesteps) == 6 * order - (order - 1)
    assert [k for k, stage in scheduler.plan if stage == 0] == list(range(6))
    assert all(scheduler.plan[k * order] == (k, 0) for k in range(6))
    torch.manual_seed(5)
    x = torch.randn(SHAPE, dtype=torch.float64) * 14
    whole = _run(scheduler, x, _gaussian)
    resumed = _scheduler(name, steps=6, eta=0.0)
    resumed.set_begin_index(3 * order)
    resumed.timesteps = resumed.timesteps[3 * order:]
    tail = _run(resumed, whole[3 * order], _gaussian)[-1]
    if name != "sa_solver_pece":  # single-step: nothing carried over
        assert torch.allclose(tail, whole[-1], atol=1e-5)
    else:  # multistep: restarts at order 1, close to the whole run
        assert float((tail - whole[-1]).abs().max()) < 0.15 * float(whole[-1].abs().max())


def test_explicit_sigma_lists_and_one_step():
    sigmas = kl_optimal_sigmas(4, 0.03, 14.6)
    for name in NEW:
        scheduler = make_sigma_list_scheduler(name, CONFIG)
        scheduler.set_timesteps(sigmas=sigmas)
        levels = getattr(scheduler, "levels", [float(s) for s in scheduler.sigmas])
        assert levels == pytest.approx(sigmas, rel=1e-5), name
        # one step lands on D, as Euler's
        x = torch.randn(SHAPE) * 14
        one = _run(_scheduler(name, steps=1), x.double(), _gaussian)[-1]
        assert torch.allclose(one, _gaussian(x.double(), float(_scheduler(
            "euler", steps=1).sigmas[0])), atol=1e-4), name


def test_options_and_their_errors():
    er = with_stage_options(make_scheduler("er_sde", "karras", CONFIG), "er_sde", eta=0.5,
                            s_noise=0.7, options={"solver_type": "Reverse-time SDE",
                                                  "max_stage": 2})
    assert (er.power, er.s_noise, er.max_stage) == (1.5, 0.7, 2)
    ode = with_stage_options(make_scheduler("er_sde", "karras", CONFIG), "er_sde",
                             options={"solver_type": "ODE"})
    assert (ode.power, ode.s_noise) == (1.0, 0.0)
    seeds = with_stage_options(make_scheduler("seeds_2", "karras", CONFIG), "seeds_2", 0.3,
                               options={"solver_type": "phi_2", "r": 1.0})
    assert (seeds.eta, seeds.solver_type, seeds.nodes) == (0.3, "phi_2", (1.0,))
    sa = with_stage_options(make_scheduler("sa_solver", "karras", CONFIG), "sa_solver",
                            options={"use_pece": True, "predictor_order": 2})
    assert type(sa).__name__ == "SASolverPECESampler" and sa.predictor_order == 2
    kept = with_stage_options(make_scheduler("sa_solver_pece", "karras", CONFIG),
                              "sa_solver_pece", eta=0.5)
    assert type(kept).__name__ == "SASolverPECESampler" and kept.eta == 0.5
    for name, options, message in [
            ("er_sde", {"solver_type": "SDE"}, "solver_type"),
            ("seeds_2", {"r": 0.0}, "r 0.0"),
            ("seeds_3", {"r": 0.5}, "takes no option r"),
            ("sa_solver", {"predictor_order": 9}, "predictor_order 9"),
            ("sa_solver", {"sde_sigmas": (1.0, 5.0)}, "SDE window"),
            ("euler", {"r": 0.5}, "takes none of")]:
        with pytest.raises(ValueError, match=message):
            with_stage_options(make_scheduler(name, "karras", CONFIG), name, options=options)
    with pytest.raises(ValueError, match="eta must be in"):
        with_stage_options(make_scheduler("dpmpp_2s_ancestral_cfg_pp", "karras", CONFIG),
                           "dpmpp_2s_ancestral_cfg_pp", eta=2.0)
    assert set(STAGE_OPTIONS) == set(NEW) and all(name in SAMPLERS for name in NEW)
    # τ = η inside the SDE window only: 20 % to 80 % of the model's schedule by default
    from nodes.diffusion.schedulers import training_sigmas

    sa = make_scheduler("sa_solver", "karras", CONFIG)
    top, bottom = (percent_to_sigma(training_sigmas(sa), p) for p in (0.2, 0.8))
    assert 0.1 < bottom < 1 < top < 10
    assert [sa.tau(s) for s in (top * 1.01, top, math.sqrt(top * bottom), bottom,
                                bottom * 0.99)] == [0.0, 1.0, 1.0, 1.0, 0.0]
    sa = with_stage_options(sa, "sa_solver", eta=0.4, options={"sde_sigmas": (5.0, 2.0)})
    assert [sa.tau(s) for s in (5.5, 3.0, 1.5)] == [0.0, 0.4, 0.0]
    model = [0.01 * (t + 1) for t in range(1000)]
    assert percent_to_sigma(model, 0.5) == pytest.approx(0.01 * (1 + 499.5), rel=1e-3)
    assert percent_to_sigma(model, 0.0) == math.inf and percent_to_sigma(model, 1.0) == 0


# --- through the graph ----------------------------------------------------------------------

def _ks(latent: str, sampler: str, scheduler: str, denoise: float = 1.0, cfg: float = 5.0,
        negative: str = "neg") -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": ["ckpt", 0], "seed": 3, "steps": 4, "cfg": cfg, "sampler_name": sampler,
        "scheduler": scheduler, "positive": ["pos", 0], "negative": [negative, 0],
        "latent_image": [latent, 0], "denoise": denoise}}


def _advanced(latent: str, sampler: str, start: int, end: int, add_noise: str = "enable",
              leftover: str = "enable") -> dict:
    return {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["ckpt", 0], "add_noise": add_noise, "noise_seed": 3, "steps": 4, "cfg": 5.0,
        "sampler_name": sampler, "scheduler": "karras", "positive": ["pos", 0],
        "negative": ["neg", 0], "latent_image": [latent, 0], "start_at_step": start,
        "end_at_step": end, "return_with_leftover_noise": leftover}}


@pytest.mark.parametrize("sampler", NEW)
def test_runs_through_ksampler(session, sampler):
    """karras and normal schedules, denoise < 1, and KSamplerAdvanced's two windows."""
    from tests.test_custom_sampling import base, captured

    graph = {**base(), "karras": _ks("empty", sampler, "karras"),
             "normal": _ks("empty", sampler, "normal"),
             "img2img": _ks("init", sampler, "karras", denoise=0.5),
             "first": _advanced("empty", sampler, 0, 2),
             "second": _advanced("first", sampler, 2, 10000, add_noise="disable")}
    karras, normal, img2img, first, second = captured(
        session, graph, ["karras", 0], ["normal", 0], ["img2img", 0], ["first", 0],
        ["second", 0])
    for out in (karras, normal, img2img, first, second):
        assert torch.isfinite(out.samples).all() and out.samples.abs().max() > 0.1
    assert (karras.samples - normal.samples).abs().max() > 1e-3
    assert (img2img.samples - karras.samples).abs().max() > 1e-3
    # the two windows make an image like the whole run (multistep ones restart at step 2)
    assert (second.samples - karras.samples).abs().mean() < karras.samples.abs().mean()


def test_cfg_pp_runs_the_unconditional_pass(session):
    from tests.test_custom_sampling import base, captured

    graph = {**base(), "cfg1": _ks("empty", "dpmpp_2s_ancestral_cfg_pp", "karras", cfg=1.0),
             "plain1": _ks("empty", "dpmpp_2s_ancestral", "karras", cfg=1.0),
             "same": _ks("empty", "dpmpp_2s_ancestral_cfg_pp", "normal", cfg=1.5,
                         negative="pos"),
             "plain": _ks("empty", "dpmpp_2s_ancestral", "normal", cfg=1.5, negative="pos")}
    cfg1, plain1, same, plain = captured(session, graph, ["cfg1", 0], ["plain1", 0],
                                         ["same", 0], ["plain", 0])
    assert (cfg1.samples - plain1.samples).abs().max() > 1e-3  # the uncond pass ran at cfg 1
    assert torch.allclose(same.samples, plain.samples, atol=1e-4)


def test_sigma_lists_run_them(session):
    from tests.test_custom_sampling import base, captured, custom, select

    graph = {**base(), "sig": {"class_type": "KarrasScheduler", "inputs": {
        "steps": 4, "sigma_max": 14.6, "sigma_min": 0.03, "rho": 7.0}}}
    for name in NEW:
        graph[f"select_{name}"] = select(name)
        graph[f"sc_{name}"] = custom(["sig", 0], ["empty", 0], sampler=f"select_{name}")
    outs = captured(session, graph, *[[f"sc_{name}", 0] for name in NEW])
    assert all(torch.isfinite(out.samples).all() for out in outs)


def test_sd_turbo_timesteps_run_the_staged_ones(session):
    """SDTurboScheduler's timesteps (img2img from 0.7): the samplers with several calls a
    step take custom timesteps as Euler does; the one-call σ-space ones refuse clearly."""
    from tests.test_custom_sampling import captured, turbo_graph

    for name in ("seeds_3", "sa_solver_pece", "dpmpp_2s_ancestral_cfg_pp"):
        out, init = captured(session, turbo_graph(name, 3, denoise=0.7, latent="init"),
                             ["custom", 0], ["init", 0])
        assert torch.isfinite(out.samples).all()
        assert (out.samples - init.samples).abs().max() > 1e-3
    graph = turbo_graph("er_sde", 2)
    graph["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["custom", 0]}}
    result = session.run(graph)
    assert not result.ok and "SDTurboScheduler" in str(result.run.error)


def _custom_with(session, sampler_node: dict) -> torch.Tensor:
    from tests.test_custom_sampling import base, basic_scheduler, captured, custom

    graph = {**base(), "sampler": sampler_node, "sched": basic_scheduler("karras", steps=4),
             "sc": custom(["sched", 0], ["empty", 0], sampler="sampler")}
    return captured(session, graph, ["sc", 0])[0].samples


def _node(type_: str, **inputs) -> dict:
    return {"class_type": type_, "inputs": inputs}


ER = {"solver_type": "ER-SDE", "max_stage": 3, "eta": 1.0, "s_noise": 1.0}
SA = {"model": ["ckpt", 0], "eta": 1.0, "sde_start_percent": 0.2, "sde_end_percent": 0.8,
      "s_noise": 1.0, "predictor_order": 3, "corrector_order": 4, "use_pece": False,
      "simple_order_2": False}
SEEDS = {"solver_type": "phi_1", "eta": 1.0, "s_noise": 1.0, "r": 0.5}


def test_option_nodes(session):
    from nodes.custom_sampling import SamplerChoice
    from nodes.sampler_nodes import NODE_CLASSES

    by_type = {cls.TYPE: cls for cls in NODE_CLASSES}
    assert list(by_type["SamplerER_SDE"].INPUT_SPECS) == list(ER)
    assert list(by_type["SamplerSASolver"].INPUT_SPECS) == list(SA)
    assert list(by_type["SamplerSEEDS2"].INPUT_SPECS) == list(SEEDS)
    assert by_type["SamplerSEEDS2"].INPUT_SPECS["r"].min == 0.01
    assert by_type["SamplerSASolver"].INPUT_SPECS["corrector_order"].min == 0
    select = {name: _custom_with(session, _node("KSamplerSelect", sampler_name=name))
              for name in ("er_sde", "sa_solver", "seeds_2", "sa_solver_pece")}
    # at their defaults they are KSamplerSelect's choice
    assert torch.equal(_custom_with(session, _node("SamplerER_SDE", **ER)), select["er_sde"])
    assert torch.equal(_custom_with(session, _node("SamplerSASolver", **SA)),
                       select["sa_solver"])
    assert torch.equal(_custom_with(session, _node("SamplerSEEDS2", **SEEDS)),
                       select["seeds_2"])
    # a window that starts after it ends is an error, whatever the wiring
    bad = _node("SamplerSASolver", **{**SA, "sde_start_percent": 0.9})
    assert "sde_start_percent" in _node_error(session, bad)
    # use_pece is the sampler's name: sa_solver_pece
    assert torch.equal(_custom_with(session, _node("SamplerSASolver", **{**SA, "use_pece": True})),
                       select["sa_solver_pece"])
    tuned = [_node("SamplerER_SDE", **{**ER, "solver_type": "ODE"}),
             _node("SamplerSEEDS2", **{**SEEDS, "eta": 0.0, "r": 1.0}),
             _node("SamplerSASolver", **{**SA, "predictor_order": 1})]
    if "options" not in {f.name for f in SamplerChoice.__dataclass_fields__.values()}:
        # SamplerChoice cannot carry the options yet: a structured error, not a silent
        # default run
        for node in tuned:
            assert "SamplerChoice to carry sampler options" in _node_error(session, node)
        return
    er_ode, heun, second = (_custom_with(session, node) for node in tuned)
    assert (er_ode - select["er_sde"]).abs().max() > 1e-3
    assert (heun - select["seeds_2"]).abs().max() > 1e-3
    assert (second - select["sa_solver"]).abs().max() > 1e-3


def _node_error(session, sampler_node: dict) -> str:
    from tests.test_custom_sampling import base, basic_scheduler, custom

    graph = {**base(), "sampler": sampler_node, "sched": basic_scheduler("karras", steps=4),
             "sc": custom(["sched", 0], ["empty", 0], sampler="sampler"),
             "cap": {"class_type": "TestCapture", "inputs": {"value": ["sc", 0]}}}
    result = session.run(graph)
    assert not result.ok
    return str(result.run.error)


@pytest.mark.parametrize("name", ["dpm_adaptive", "dpm_fast", "heunpp2"])
def test_samplers_left_out_are_unknown(session, name):
    from engine.validation import PromptValidationError
    from tests.test_custom_sampling import base

    graph = {**base(), "ks": _ks("empty", name, "karras"),
             "cap": {"class_type": "TestCapture", "inputs": {"value": ["ks", 0]}}}
    with pytest.raises(PromptValidationError, match=name):
        session.validate(graph)
    assert name not in SAMPLERS
