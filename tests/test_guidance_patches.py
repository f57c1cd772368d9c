"""FreSca, Temporal Score Rescaling and Normalized Attention Guidance against the methods
written out by hand on diffusers' UNet (their own loop, diffusers' attention processor),
and ManualSigmas / FlipSigmas: typed schedules, lists that end above 0, unsampling."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor

from engine import PromptValidationError
from nodes.diffusion.cfg_filters import fourier_filter, tsr_factor
from tests.graph_nodes import CAPTURED, reference_pipeline

PROMPT, NEGATIVE = "a red circle at the top left", "a blue square"
STEPS = 6
SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}


@pytest.fixture(scope="module")
def pipe(tiny_model_paths):
    return reference_pipeline(StableDiffusionPipeline, tiny_model_paths["diffusers"])


def graph(patches: dict | None = None, *, sampler="ddim", cfg=7.5, width=64, height=64,
          ckpt="steerflow-tiny", seed=3) -> dict:
    """txt2img on the tiny model, decoded and captured; ``patches`` chain on the MODEL."""
    prompt = {
        "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ck", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE,
                                                          "clip": ["ck", 1]}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                             "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": STEPS, "cfg": cfg, "sampler_name": sampler,
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": ["lat", 0], "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["ck", 2]}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["dec", 0],
                                                        "key": uuid.uuid4().hex}},
    }
    model = ["ck", 0]
    for k, (class_type, inputs) in enumerate((patches or {}).items()):
        prompt[f"p{k}"] = {"class_type": class_type, "inputs": {"model": model, **inputs}}
        model = [f"p{k}", 0]
    prompt["k"]["inputs"]["model"] = model
    return prompt


def run(session, prompt) -> np.ndarray:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["cap"]["inputs"]["key"]).numpy()


class NAGProcessor(AttnProcessor):
    """diffusers' attention, then NAG on the second half of the batch (the conditional
    entries) against the first half, as the method's paper and ComfyUI's node state it."""

    def __init__(self, scale: float, alpha: float, tau: float):
        self.scale, self.alpha, self.tau = scale, alpha, tau

    def __call__(self, attn, hidden_states, *args, **kwargs):
        out = super().__call__(attn, hidden_states, *args, **kwargs)
        z_neg, z_pos = out.chunk(2)
        guided = z_pos * self.scale - z_neg * (self.scale - 1)
        ratio = (guided.abs().sum(-1, keepdim=True).clamp_min(1e-6)
                 / z_pos.abs().sum(-1, keepdim=True).clamp_min(1e-6))
        guided = guided * torch.minimum(ratio, torch.full_like(ratio, self.tau)) / ratio
        return torch.cat([z_neg, guided * self.alpha + z_pos * (1 - self.alpha)])


def reference(pipe, guide, *, sampler="ddim", cfg=7.5, width=64, height=64, seed=3,
              nag: tuple[float, float, float] | None = None) -> np.ndarray:
    """The sampling loop by hand on the pipeline's parts: the UNet on [negative, positive]
    every step (also at cfg 1), ``guide(run)`` forming the noise prediction."""
    scheduler = SCHEDULERS[sampler].from_config(pipe.base_config)
    scheduler.set_timesteps(STEPS)
    pos, neg = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    embeds = torch.cat([neg, pos])
    unet = pipe.unet
    saved = unet.attn_processors
    if nag is not None:
        unet.set_attn_processor({name: NAGProcessor(*nag) if name.endswith("attn1.processor")
                                 else AttnProcessor() for name in saved})
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (1, unet.config.in_channels, height // 8, width // 8)
    x = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
    try:
        with torch.no_grad():
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
                uncond, cond = unet(model_in, t, encoder_hidden_states=embeds).sample.chunk(2)
                eps = guide(uncond, cond, cfg, scheduler, t)
                x = scheduler.step(eps, t, x).prev_sample
            image = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
    finally:
        unet.set_attn_processor(saved)
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def plain(uncond, cond, cfg, scheduler, t):
    return uncond + cfg * (cond - uncond) if cfg > 1 else cond


def sigma_of(scheduler, t) -> float:
    alpha_bar = float(scheduler.alphas_cumprod[int(t)])
    if isinstance(scheduler, EulerDiscreteScheduler):  # σ-space: the step's own σ
        return float(scheduler.sigmas[scheduler.index_for_timestep(t)])
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


# --- the loop itself ------------------------------------------------------------------------

def test_the_hand_loop_is_the_graph(session, pipe):
    assert np.abs(run(session, graph()) - reference(pipe, plain)).max() <= 1e-4


# --- NAG -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("sampler", "cfg", "size", "ckpt"), [
    ("ddim", 7.5, (64, 64), "steerflow-tiny"),
    ("euler", 1.0, (64, 40), "steerflow-tiny.safetensors"),
    ("ddim", 1.0, (40, 64), "steerflow-tiny"),
    ("euler", 4.0, (40, 64), "steerflow-tiny.safetensors"),
])
def test_nag_matches_the_method_on_diffusers_attention(session, pipe, sampler, cfg, size, ckpt):
    nag = (4.0, 0.6, 2.0)
    ours = run(session, graph({"NAGuidance": dict(zip(("nag_scale", "nag_alpha", "nag_tau"),
                                                       nag, strict=True))},
                              sampler=sampler, cfg=cfg, width=size[0], height=size[1],
                              ckpt=ckpt))
    want = reference(pipe, plain, sampler=sampler, cfg=cfg, width=size[0], height=size[1],
                     nag=nag)
    assert np.abs(ours - want).max() <= 1e-4
    without = run(session, graph(sampler=sampler, cfg=cfg, width=size[0], height=size[1]))
    assert np.abs(ours - without).max() > 1e-3  # and it does something


def test_nag_alpha_zero_changes_nothing(session):
    off = {"NAGuidance": {"nag_scale": 5.0, "nag_alpha": 0.0, "nag_tau": 1.5}}
    assert np.abs(run(session, graph(off)) - run(session, graph())).max() <= 1e-5


# --- FreSca --------------------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "cutoff"), [((2, 4, 8, 8), 2), ((1, 4, 7, 10), 3),
                                                ((1, 4, 6, 6), 20)])
def test_fourier_filter_scales_the_centred_square(shape, cutoff):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    low, high = 0.5, 1.7
    spectrum = np.fft.fftshift(np.fft.fft2(x.numpy()), axes=(-2, -1))
    h, w = shape[-2:]
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    inside = ((rows >= h // 2 - cutoff) & (rows < h // 2 + cutoff)
              & (cols >= w // 2 - cutoff) & (cols < w // 2 + cutoff))
    want = np.fft.ifft2(np.fft.ifftshift(spectrum * np.where(inside, low, high),
                                         axes=(-2, -1))).real
    assert np.abs(fourier_filter(x, low, high, cutoff).numpy() - want).max() < 1e-5


def fresca(low, high, cutoff):
    def guide(uncond, cond, cfg, scheduler, t):
        return plain(uncond, uncond + fourier_filter(cond - uncond, low, high, cutoff), cfg,
                     scheduler, t)
    return guide


@pytest.mark.parametrize(("sampler", "size"), [("ddim", (64, 64)), ("euler", (64, 40))])
def test_fresca_matches_the_filter_on_the_guidance(session, pipe, sampler, size):
    args = {"scale_low": 0.8, "scale_high": 1.4, "freq_cutoff": 2}
    ours = run(session, graph({"FreSca": args}, sampler=sampler, width=size[0],
                              height=size[1]))
    want = reference(pipe, fresca(0.8, 1.4, 2), sampler=sampler, width=size[0],
                     height=size[1])
    assert np.abs(ours - want).max() <= 1e-4
    # the same gain on both bands is a higher cfg
    same = run(session, graph({"FreSca": {**args, "scale_low": 1.5, "scale_high": 1.5}},
                              sampler=sampler, cfg=4.0, width=size[0], height=size[1]))
    higher = run(session, graph(sampler=sampler, cfg=6.0, width=size[0], height=size[1]))
    assert np.abs(same - higher).max() <= 1e-4


# --- TSR -----------------------------------------------------------------------------------

def tsr(k, tsr_sigma):
    def guide(uncond, cond, cfg, scheduler, t):
        eps = plain(uncond, cond, cfg, scheduler, t)
        snr = torch.tensor(1 / sigma_of(scheduler, t) ** 2)
        return eps * tsr_factor(snr, k, tsr_sigma**2)  # the noise estimate times r
    return guide


@pytest.mark.parametrize(("sampler", "cfg", "size"), [("ddim", 7.5, (64, 64)),
                                                       ("euler", 1.0, (40, 64))])
def test_tsr_scales_the_noise_estimate_by_r(session, pipe, sampler, cfg, size):
    args = {"tsr_k": 0.8, "tsr_sigma": 2.0}
    ours = run(session, graph({"TemporalScoreRescaling": args}, sampler=sampler, cfg=cfg,
                              width=size[0], height=size[1]))
    want = reference(pipe, tsr(0.8, 2.0), sampler=sampler, cfg=cfg, width=size[0],
                     height=size[1])
    assert np.abs(ours - want).max() <= 1e-4


def test_tsr_factor_runs_from_one_to_k():
    snr = torch.tensor([0.0, 1e-6, 1.0, 1e6])
    r = tsr_factor(snr, 0.9, 1.0)
    assert r[0] == 1.0 and abs(float(r[-1]) - 0.9) < 1e-4 and float(r[2]) == pytest.approx(
        2 / (1 / 0.9 + 1))


def test_patches_combine_with_each_other_and_sega(session):
    both = {"NAGuidance": {"nag_scale": 3.0, "nag_alpha": 0.5, "nag_tau": 1.5},
            "FreSca": {"scale_low": 1.0, "scale_high": 1.3, "freq_cutoff": 2},
            "TemporalScoreRescaling": {"tsr_k": 0.9, "tsr_sigma": 1.0}}
    prompt = graph(both)
    prompt["c0"] = {"class_type": "SEGAConcept", "inputs": {
        "clip": ["ck", 1], "text": "a green star", "scale": 5.0, "warmup_steps": 1,
        "threshold": 0.8}}
    prompt["sega"] = {"class_type": "ApplySEGA", "inputs": {"model": ["p2", 0],
                                                            "concepts": ["c0", 0]}}
    prompt["k"]["inputs"]["model"] = ["sega", 0]
    image = run(session, prompt)
    assert np.isfinite(image).all()
    assert np.abs(image - run(session, graph(both))).max() > 1e-3


@pytest.mark.parametrize(("class_type", "inputs"), [
    ("NAGuidance", {"nag_scale": 60.0, "nag_alpha": 0.5, "nag_tau": 1.5}),
    ("NAGuidance", {"nag_scale": 5.0, "nag_alpha": 0.5, "nag_tau": 0.5}),
    ("FreSca", {"scale_low": 1.0, "scale_high": 1.25, "freq_cutoff": 0}),
    ("TemporalScoreRescaling", {"tsr_k": 0.0, "tsr_sigma": 1.0}),
])
def test_bad_values_are_validation_errors(session, class_type, inputs):
    with pytest.raises(PromptValidationError):
        session.run(graph({class_type: inputs}))


# --- ManualSigmas / FlipSigmas ---------------------------------------------------------------

def custom(sigmas_node: dict, latent=("lat", 0), add_noise=True, extra: dict | None = None,
           sampler="euler") -> dict:
    prompt = graph()
    del prompt["k"]
    prompt.update({
        "ss": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "sig": sigmas_node,
        "k": {"class_type": "SamplerCustom", "inputs": {
            "model": ["ck", 0], "add_noise": add_noise, "noise_seed": 3, "cfg": 5.0,
            "positive": ["pos", 0], "negative": ["neg", 0], "sampler": ["ss", 0],
            "sigmas": ["sig", 0], "latent_image": list(latent)}},
        **(extra or {}),
    })
    return prompt


def manual(text: str) -> dict:
    return {"class_type": "ManualSigmas", "inputs": {"sigmas": text}}


def test_manual_sigmas_run_the_levels_typed(session):
    karras = {"class_type": "KarrasScheduler", "inputs": {
        "steps": 5, "sigma_max": 14.614642, "sigma_min": 0.0291675, "rho": 7.0}}
    typed = ", ".join(repr(v) for v in _levels(session, karras))
    assert np.abs(run(session, custom(manual(typed)))
                  - run(session, custom(karras))).max() <= 1e-5


def _levels(session, sigmas_node: dict) -> list[float]:
    key = uuid.uuid4().hex
    prompt = {"ck": {"class_type": "CheckpointLoaderSimple",
                     "inputs": {"ckpt_name": "steerflow-tiny"}},
              "sig": sigmas_node,
              "cap": {"class_type": "TestCapture", "inputs": {"value": ["sig", 0],
                                                              "key": key}}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    return [float(v) for v in CAPTURED.pop(key).sigmas()]


def test_a_list_ending_above_zero_hands_its_noise_on(session):
    whole = run(session, custom(manual("14.6, 6.0, 2.5, 0.9, 0.3, 0")))
    first = manual("14.6, 6.0, 2.5")
    rest = custom(manual("2.5, 0.9, 0.3, 0"), latent=("k1", 0), add_noise=False, extra={
        "sig1": first,
        "k1": {"class_type": "SamplerCustom", "inputs": {
            "model": ["ck", 0], "add_noise": True, "noise_seed": 3, "cfg": 5.0,
            "positive": ["pos", 0], "negative": ["neg", 0], "sampler": ["ss", 0],
            "sigmas": ["sig1", 0], "latent_image": ["lat", 0]}}})
    assert np.abs(run(session, rest) - whole).max() <= 1e-4


def test_flip_sigmas_reverses_the_window():
    from nodes.diffusion.sigma_schedules import SigmaSchedule
    from nodes.sigma_lists import FlipSigmas

    schedule = SigmaSchedule({}, "normal", 4, start=1, end=3,
                             sigma_list=(10.0, 5.0, 2.0, 1.0, 0.0))
    flipped = FlipSigmas(sigmas=schedule).execute(None)[0]
    assert flipped.sigma_list == (1.0, 2.0, 5.0) and len(flipped) == 2
    whole = FlipSigmas(sigmas=SigmaSchedule({}, "normal", 2, sigma_list=(3.0, 1.0, 0.0)))
    assert whole.execute(None)[0].sigma_list == (0.0001, 1.0, 3.0)


def unsample_resample(sampler: str) -> dict:
    """Sample, unsample with the flipped schedule (cfg 1, no noise), sample back."""
    basic = {"class_type": "BasicScheduler", "inputs": {"model": ["ck", 0],
                                                        "scheduler": "normal", "steps": 20,
                                                        "denoise": 1.0}}
    prompt = custom(basic, latent=("un", 0), add_noise=False, sampler=sampler, extra={
        "k0": {"class_type": "KSampler", "inputs": {
            "model": ["ck", 0], "seed": 3, "steps": 20, "cfg": 5.0, "sampler_name": "ddim",
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": ["lat", 0], "denoise": 1.0}},
        "flip": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sig", 0]}},
        "un": {"class_type": "SamplerCustom", "inputs": {
            "model": ["ck", 0], "add_noise": False, "noise_seed": 0, "cfg": 1.0,
            "positive": ["pos", 0], "negative": ["neg", 0], "sampler": ["ss", 0],
            "sigmas": ["flip", 0], "latent_image": ["k0", 0]}},
        "dec0": {"class_type": "VAEDecode", "inputs": {"samples": ["k0", 0],
                                                      "vae": ["ck", 2]}},
        "cap0": {"class_type": "TestCapture", "inputs": {"value": ["dec0", 0],
                                                        "key": uuid.uuid4().hex}},
    })
    prompt["k"]["inputs"]["cfg"] = 1.0
    return prompt


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_flipped_schedule_unsamples_and_resamples_the_image(session, sampler):
    prompt = unsample_resample(sampler)
    rebuilt = run(session, prompt)
    original = CAPTURED.pop(prompt["cap0"]["inputs"]["key"]).numpy()
    noise_only = run(session, graph(sampler="ddim", seed=4))
    err = np.abs(rebuilt - original).mean()
    assert err < 0.25 * np.abs(noise_only - original).mean(), err


def test_stochastic_samplers_refuse_a_rising_schedule(session):
    result = session.run(unsample_resample("euler_ancestral"))
    assert not result.ok
    assert "rising" in str(result.run.error) and "euler" in str(result.run.error)


@pytest.mark.parametrize(("text", "why"), [("no numbers", "holds no number"),
                                           ("5, -1, 0", "0.."),
                                           ("0, 0", "put 0 last"), ("5, 5, 0", "equal"),
                                           ("1, 0" + ", 0" * 10001, "more than 10000")])
def test_bad_manual_sigmas_are_clear(session, text, why):
    result = session.run(custom(manual(text)))
    assert not result.ok and why in str(result.run.error)


def test_manual_sigmas_take_any_list_as_comfyui_and_flip_sigmas_makes_it_runnable():
    """A rising list (typed for FlipSigmas) and a single level are ComfyUI's too; only a
    sampler refuses what it cannot step through."""
    from nodes.sigma_lists import FlipSigmas, ManualSigmas

    rising = ManualSigmas(sigmas="0, 1, 3, 8, 14.6").execute(None)[0]
    assert rising.sigma_list == (0.0, 1.0, 3.0, 8.0, 14.6)
    flipped = FlipSigmas(sigmas=rising).execute(None)[0]
    assert flipped.sigma_list == (14.6, 8.0, 3.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="before its end"):
        rising.make_scheduler("euler")
    assert len(ManualSigmas(sigmas="7").execute(None)[0]) == 0
