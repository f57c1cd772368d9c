"""ComfyUI's latent operations (Reinhard tonemap, sharpen; applied to a LATENT or to the
guidance), CFGNorm, LatentConcat and LatentCut: each written out by hand here, the CFG
forms in k-diffusion's σ variables (x̂₀ = x − σ·ε) against ours in VP space."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate

from engine.session import Session
from nodes.diffusion.extensions import Predictions, Step
from nodes.diffusion.handles import Latent
from nodes.diffusion.latent_operations import (
    CFGNorm,
    Mahiro,
    OperationCFG,
    Sharpen,
    TonemapReinhard,
)
from tests.graph_nodes import captured_samples, registry_with_capture, run_error, tiny_txt2img


def test_tonemap_is_reinhard_on_the_channel_lengths():
    latent = torch.randn(2, 4, 5, 7, dtype=torch.float64) * 3
    out = TonemapReinhard(0.8)(latent).numpy()
    x = latent.numpy()
    for b in range(2):
        length = np.sqrt((x[b] ** 2).sum(0)) + 1e-10
        top = (length.std(ddof=1) * 5 + length.mean()) * 0.8
        want = x[b] / length * (length / (length + top) * top)
        np.testing.assert_allclose(out[b], want, rtol=1e-10, atol=1e-12)


def test_sharpen_is_unsharp_masking_of_the_directions():
    latent = torch.randn(1, 4, 12, 10, dtype=torch.float64)
    op = Sharpen(radius=2, sigma=0.7, alpha=0.3)
    out = op(latent).numpy()[0]
    x = latent.numpy()[0]
    length = np.sqrt((x ** 2).sum(0)) + 1e-6
    axis = np.linspace(-1, 1, 5)
    g = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * 0.7 ** 2))
    kernel = g / g.sum() * (-10 * 0.3)
    kernel[2, 2] += 1 - kernel.sum()
    for c in range(4):  # scipy's "mirror" is torch's "reflect" (the edge not repeated)
        want = length * correlate(x[c] / length, kernel, mode="mirror")
        np.testing.assert_allclose(out[c], want, rtol=1e-5, atol=1e-6)  # float32 kernel
    with pytest.raises(ValueError, match="sharpen_radius 9"):
        Sharpen(radius=9)(torch.randn(1, 4, 8, 8))


def _euler_step(prediction_type: str = "epsilon"):
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(prediction_type=prediction_type)
    scheduler.set_timesteps(10)
    scheduler._init_step_index(scheduler.timesteps[3])
    sigma = float(scheduler.sigmas[3])
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64) * (1 + sigma ** 2) ** 0.5
    step = Step(3, 10, scheduler.timesteps[3], model_input=x / (1 + sigma ** 2) ** 0.5)
    return scheduler, step, x, sigma


def _run(scheduler, cfg: float) -> SimpleNamespace:
    return SimpleNamespace(scheduler=scheduler, do_cfg=cfg > 1,
                           params=SimpleNamespace(cfg=cfg))


def test_cfg_norm_caps_the_guided_x0_by_the_conditional_ones():
    scheduler, step, x, sigma = _euler_step()
    u, c = torch.randn_like(x), torch.randn_like(x)
    cfg, strength = 7.0, 0.9
    guidance = cfg * (c - u)
    ours = u + CFGNorm(strength).guidance(_run(scheduler, cfg), step, Predictions(u, c),
                                           guidance)
    x0_g, x0_c = x - sigma * (u + guidance), x - sigma * c  # k-diffusion's x̂₀
    scale = (x0_c.norm(dim=1, keepdim=True) / (x0_g.norm(dim=1, keepdim=True) + 1e-8))
    want = x0_g * scale.clamp(0, 1) * strength
    torch.testing.assert_close(x - sigma * ours, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_operation_cfg_acts_on_the_x0_difference(prediction_type):
    scheduler, step, x, sigma = _euler_step(prediction_type)
    u, c = torch.randn_like(x), torch.randn_like(x)

    def x0(p):  # k-diffusion's denoisers for ε and v models (x in σ space)
        if prediction_type == "epsilon":
            return x - sigma * p
        return x / (sigma ** 2 + 1) - p * sigma / (sigma ** 2 + 1) ** 0.5

    op = Sharpen(radius=1, sigma=1.0, alpha=0.5)
    preds = Predictions(u, c.clone())
    OperationCFG(op).predictions(_run(scheduler, 5.0), step, preds)
    torch.testing.assert_close(x0(preds.cond), op(x0(c) - x0(u)) + x0(u),
                               rtol=1e-6, atol=1e-6)
    preds = Predictions(c, c.clone())  # without CFG: op on the conditional x̂₀ itself
    OperationCFG(op).predictions(_run(scheduler, 1.0), step, preds)
    torch.testing.assert_close(x0(preds.cond), op(x0(c)), rtol=1e-6, atol=1e-6)


def test_mahiro_is_comfyuis_formula_on_x0():
    scheduler, step, x, sigma = _euler_step()
    u, c = torch.randn_like(x), torch.randn_like(x)
    cfg = 6.0
    guidance = cfg * (c - u)
    ours = u + Mahiro().guidance(_run(scheduler, cfg), step, Predictions(u, c), guidance)
    cfg_x0, leap, u_leap = x - sigma * (u + guidance), (x - sigma * c) * cfg, (x - sigma * u) * cfg
    merge = (leap + cfg_x0) / 2
    sim = torch.nn.functional.cosine_similarity(u_leap.abs().sqrt() * u_leap.sign(),
                                                merge.abs().sqrt() * merge.sign()).mean()
    simsc = 2 * (sim + 1)
    want = (simsc * cfg_x0 + (4 - simsc) * leap) / 4
    torch.testing.assert_close(x - sigma * ours, want, rtol=1e-6, atol=1e-6)


def test_cfg_norm_in_vp_space_schedulers():
    """DDIM (no σ scaling): x̂₀ = (x − √(1−ᾱ)·ε)/√ᾱ."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[4]
    alpha = scheduler.alphas_cumprod[int(t)].double()
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    u, c = torch.randn_like(x), torch.randn_like(x)
    step = Step(4, 10, t, model_input=x)
    ours = u + CFGNorm(1.0).guidance(_run(scheduler, 4.0), step, Predictions(u, c),
                                      4.0 * (c - u))

    def x0(e):
        return (x - (1 - alpha).sqrt() * e) / alpha.sqrt()

    g = x0(u + 4.0 * (c - u))
    scale = x0(c).norm(dim=1, keepdim=True) / (g.norm(dim=1, keepdim=True) + 1e-8)
    torch.testing.assert_close(x0(ours), g * scale.clamp(0, 1), rtol=1e-6, atol=1e-6)


# --- through the graph -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory) -> Session:
    return Session(tmp_path_factory.mktemp("latent_ops"), models_dir=models_dir, device="cpu",
                   registry=registry_with_capture())


def _graph(model=("ckpt", 0), cfg: float = 7.0, extra: dict | None = None) -> dict:
    return tiny_txt2img(model, seed=2, cfg=cfg, size=(96, 64), steps=4, scheduler="karras",
                        extra=extra)


def test_guidance_operations_run_with_other_techniques(session):
    plain = captured_samples(session, _graph())
    tone = {"op": {"class_type": "LatentOperationTonemapReinhard",
                   "inputs": {"multiplier": 0.5}},
            "m": {"class_type": "LatentApplyOperationCFG",
                  "inputs": {"model": ["ckpt", 0], "operation": ["op", 0]}},
            "mahiro": {"class_type": "Mahiro", "inputs": {"model": ["m", 0]}},
            "norm": {"class_type": "CFGNorm", "inputs": {"model": ["mahiro", 0],
                                                         "strength": 1.0}},
            "sag": {"class_type": "SelfAttentionGuidance",
                    "inputs": {"model": ["norm", 0], "scale": 0.5, "blur_sigma": 2.0}}}
    both = captured_samples(session, _graph(model=("sag", 0), extra=tone))
    assert torch.isfinite(both).all() and (both - plain).abs().max() > 1e-3
    again = captured_samples(session, _graph(model=("sag", 0), extra=tone))
    assert torch.equal(both, again)
    # without CFG both still act (ComfyUI's single-prediction branches)
    alone = captured_samples(session, _graph(model=("norm", 0), cfg=1.0, extra=tone))
    assert torch.isfinite(alone).all()


def test_apply_operation_to_a_latent(session):
    extra = {"op": {"class_type": "LatentOperationSharpen",
                    "inputs": {"sharpen_radius": 2, "sigma": 1.0, "alpha": 0.2}},
             "apply": {"class_type": "LatentApplyOperation",
                       "inputs": {"samples": ["k", 0], "operation": ["op", 0]}}}
    prompt = _graph(extra=extra)
    prompt["cap"]["inputs"]["value"] = ["apply", 0]
    sharpened = captured_samples(session, prompt)
    plain = captured_samples(session, _graph())
    torch.testing.assert_close(sharpened, Sharpen(2, 1.0, 0.2)(plain))


# --- LatentConcat / LatentCut -------------------------------------------------------------------

def test_latent_concat_joins_samples_and_masks():
    from nodes.latent_ops import LatentConcat

    a = Latent(torch.zeros(2, 4, 3, 5), noise_mask=torch.full((2, 3, 5), 0.5))
    b = Latent(torch.ones(1, 4, 3, 2))
    (out,) = LatentConcat(samples1=a, samples2=b, dim="-x").execute(None)
    assert out.samples.shape == (2, 4, 3, 7)
    assert torch.equal(out.samples[..., :2], torch.ones(2, 4, 3, 2))  # samples2 on the left
    assert out.noise_mask.shape == (2, 1, 3, 7)
    assert torch.equal(out.noise_mask[..., :2], torch.ones(2, 1, 3, 2))
    assert torch.equal(out.noise_mask[..., 2:], torch.full((2, 1, 3, 5), 0.5))
    (down,) = LatentConcat(samples1=a, samples2=Latent(torch.ones(1, 4, 4, 5)),
                           dim="y").execute(None)
    assert down.samples.shape == (2, 4, 7, 5) and torch.equal(down.samples[:, :, 3:],
                                                              torch.ones(2, 4, 4, 5))
    for dim, words in (("x", "same channels and heights"), ("t", "frame axis")):
        with pytest.raises(ValueError, match=words):
            LatentConcat(samples1=a, samples2=Latent(torch.ones(1, 4, 4, 5)),
                         dim=dim).execute(None)


@pytest.mark.parametrize(("dim", "index", "amount", "want"), [
    ("x", 1, 2, slice(1, 3)), ("x", 5, 9, slice(5, 7)), ("x", 99, 3, slice(6, 7)),
    ("y", -2, 5, slice(2, 4)), ("y", -99, 1, slice(0, 1))])
def test_latent_cut_clamps_as_comfyui(dim, index, amount, want):
    from nodes.latent_ops import LatentCut

    samples = torch.arange(2 * 4 * 4 * 7, dtype=torch.float32).reshape(2, 4, 4, 7)
    mask = torch.rand(2, 4, 7)
    (out,) = LatentCut(samples=Latent(samples, noise_mask=mask), dim=dim, index=index,
                       amount=amount).execute(None)
    axis = -1 if dim == "x" else -2
    sl = [slice(None)] * 4
    sl[axis] = want
    assert torch.equal(out.samples, samples[tuple(sl)])
    assert torch.equal(out.noise_mask, mask[:, None][tuple(sl)])


def test_bad_operation_inputs_are_clear(session):
    extra = {"op": {"class_type": "LatentOperationSharpen",
                    "inputs": {"sharpen_radius": 31, "sigma": 1.0, "alpha": 0.2}},
             "apply": {"class_type": "LatentApplyOperation",
                       "inputs": {"samples": ["lat", 0], "operation": ["op", 0]}}}
    prompt = _graph(extra=extra)
    prompt["cap"]["inputs"]["value"] = ["apply", 0]
    assert "sharpen_radius 31" in run_error(session, prompt)
