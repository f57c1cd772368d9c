"""DDIM inversion equals diffusers' (DiffEdit's ``invert``), reconstructs the image when
re-sampled without added noise, and KSamplerAdvanced's windows compose."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from engine.session import Session, Workflow
from engine.validation import PromptValidationError
from tests.graph_nodes import CAPTURED, registry_with_capture

PROMPT = "a red circle at the top left on a white background"
NEGATIVE = "blurry"
SIZE = 64
TOL = 1e-4
WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "ddim_inversion.json"


def sample_picture(size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    arr = np.stack([x, y, 1 - x * y], axis=-1)
    arr[(x - 0.3) ** 2 + (y - 0.35) ** 2 < 0.04] = (0.9, 0.1, 0.1)
    return (arr * 255).round().astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / "input").mkdir()
    Image.fromarray(sample_picture()).save(home / "input" / "picture.png")
    return home


@pytest.fixture(scope="module")
def session(models_dir, home):
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def diffedit(tiny_model_paths):
    base = diffusers.StableDiffusionPipeline.from_pretrained(
        tiny_model_paths["diffusers"], local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    pipe = diffusers.StableDiffusionDiffEditPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        scheduler=diffusers.DDIMScheduler.from_config(base.scheduler.config),
        inverse_scheduler=diffusers.DDIMInverseScheduler.from_config(base.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def key() -> str:
    return uuid.uuid4().hex


def encode_prompt() -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "picture.png"}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "c5": {"class_type": "TestCapture", "inputs": {"value": ["5", 0], "key": key()}},
    }


def invert_prompt(steps: int, cfg: float = 1.0, denoise: float = 1.0) -> dict:
    prompt = encode_prompt()
    prompt["6"] = {"class_type": "DDIMInvert", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "latent": ["5", 0], "steps": steps,
        "cfg": cfg, "denoise": denoise}}
    if cfg > 1:
        prompt["6"]["inputs"]["negative"] = ["3", 0]
    prompt["c6"] = {"class_type": "TestCapture", "inputs": {"value": ["6", 1], "key": key()}}
    return prompt


def advanced(prompt: dict, node: str, latent: list, sampler: str, steps: int, *,
             add_noise: str = "enable", start: int = 0, end: int = 10000,
             leftover: str = "disable", cfg: float = 1.0, seed: int = 4) -> dict:
    prompt[node] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["1", 0], "add_noise": add_noise, "noise_seed": seed, "steps": steps,
        "cfg": cfg, "sampler_name": sampler, "scheduler": "normal", "positive": ["2", 0],
        "negative": ["3", 0], "latent_image": latent, "start_at_step": start,
        "end_at_step": end, "return_with_leftover_noise": leftover}}
    prompt[f"c{node}"] = {"class_type": "TestCapture", "inputs": {"value": [node, 0],
                                                                 "key": key()}}
    return prompt


def run(session, prompt) -> dict:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return {node[1:]: CAPTURED.pop(spec["inputs"]["key"]) for node, spec in prompt.items()
            if spec["class_type"] == "TestCapture"}


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> np.ndarray:
    image = vae.decode(latents / vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


# --- parity with diffusers ---------------------------------------------------------------


@pytest.mark.parametrize(("steps", "cfg", "denoise"), [(10, 1.0, 1.0), (10, 3.0, 1.0),
                                                       (12, 1.0, 0.5)])
def test_inversion_matches_diffedit_invert(session, diffedit, steps, cfg, denoise):
    out = run(session, invert_prompt(steps, cfg, denoise))
    clean, trajectory = out["5"].samples, out["6"]
    ref = diffedit.invert(prompt=PROMPT, negative_prompt=NEGATIVE if cfg > 1 else None,
                          image=clean, num_inference_steps=steps, inpaint_strength=denoise,
                          guidance_scale=cfg, num_reg_steps=0, decode_latents=False).latents
    # diffedit: [B, n, C, h, w], noisiest first; ours: [n + 1, B, C, h, w], clean first
    ours = trajectory.latents[1:].flip(0).transpose(0, 1)
    assert ours.shape == ref.shape == (1, int(steps * denoise), 4, 8, 8)
    assert torch.equal(trajectory.latents[0], clean)
    diff = float((ours - ref).abs().max())
    print(f"inversion steps {steps} cfg {cfg} denoise {denoise}: max abs diff {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize(("cfg", "denoise", "seed"), [(1.0, 1.0, 0), (3.0, 0.5, 7)])
def test_regularised_inversion_matches_diffedit_invert(session, diffedit, cfg, denoise, seed):
    """Pix2Pix-Zero's noise regularisation (DDIMInvert's num_reg_steps > 0) is also
    DiffEdit's: the same trajectory, the same random rolls from the seed's generator. (The
    code follows Pix2Pix-Zero's rounding, exactly: DiffEdit's KL term computes the variance
    twice, which rounds its gradient differently, ~1e-5 after the regularisation.)"""
    steps, reg = 8, {"num_reg_steps": 2, "num_auto_corr_rolls": 3, "lambda_auto_corr": 20.0,
                     "lambda_kl": 20.0}
    prompt = invert_prompt(steps, cfg, denoise)
    prompt["6"]["inputs"].update(reg, seed=seed)
    out = run(session, prompt)
    clean, trajectory = out["5"].samples, out["6"]
    ref = diffedit.invert(prompt=PROMPT, negative_prompt=NEGATIVE if cfg > 1 else None,
                          image=clean, num_inference_steps=steps, inpaint_strength=denoise,
                          guidance_scale=cfg, decode_latents=False,
                          generator=torch.Generator().manual_seed(seed), **reg).latents
    ours = trajectory.latents[1:].flip(0).transpose(0, 1)
    diff = float((ours - ref).abs().max())
    print(f"regularised inversion cfg {cfg} denoise {denoise}: max abs diff {diff:.2e}")
    assert ours.shape == ref.shape and diff <= TOL
    plain = run(session, invert_prompt(steps, cfg, denoise))["6"].latents
    assert float((plain - trajectory.latents).abs().max()) > 0.1


# --- reconstruction ----------------------------------------------------------------------


class ConstantNoiseUNet(torch.nn.Module):
    """A denoiser that predicts the same noise ``e`` everywhere. DDIM with it is exactly
    invertible, so inversion then resampling must give the input back up to rounding:
    any misalignment of timesteps, alphas or sample spaces shows."""

    def __init__(self, noise: torch.Tensor):
        super().__init__()
        self.noise = noise
        self.config = SimpleNamespace(time_cond_proj_dim=None, in_channels=4)
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
        return (self.noise.expand_as(sample),)


class StubContext:
    extra: dict = {}

    def progress(self, value, total, preview=None):
        pass

    def check_interrupt(self):
        pass


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_inversion_round_trip_is_exact_with_an_invertible_denoiser(sampler):
    from diffusers import DDIMScheduler

    from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel, Latent
    from nodes.diffusion.tiny import SCHEDULER_CONFIG
    from nodes.inversion import DDIMInvert, LatentFromTrajectory
    from nodes.sampling_advanced import KSamplerAdvanced

    gen = torch.Generator().manual_seed(0)
    clean = torch.randn(1, 4, 8, 8, generator=gen)
    model = DiffusionModel(ConstantNoiseUNet(torch.randn(1, 4, 8, 8, generator=gen)),
                           {**SCHEDULER_CONFIG, "timestep_spacing": "leading"})
    cond = Conditioning((CondEntry(torch.zeros(1, 77, 32)),))
    ctx = StubContext()
    steps = 20
    inverted, trajectory = DDIMInvert(model=model, positive=cond, latent=Latent(clean),
                                      steps=steps).execute(ctx)

    def resample(latent, start):
        return KSamplerAdvanced(
            model=model, add_noise="disable", steps=steps, cfg=1.0, sampler_name=sampler,
            positive=cond, negative=cond, latent_image=latent,
            start_at_step=start).execute(ctx)[0].samples

    expected = clean
    if sampler == "euler":
        # Euler ends at σ = 0, DDIM (set_alpha_to_one False) at ᾱ₀, where the inversion
        # took the clean latent to be: Euler gives DDIM's x̂₀ from there.
        alpha_bar = DDIMScheduler.from_config(model.scheduler_config).alphas_cumprod[0]
        expected = (clean - (1 - alpha_bar).sqrt() * model.unet.noise) / alpha_bar.sqrt()
    error = float((resample(inverted, 0) - expected).abs().max())
    halfway = LatentFromTrajectory(trajectory=trajectory, start_at_step=8).execute(ctx)[0]
    half_error = float((resample(halfway, 8) - expected).abs().max())
    off_by_one = float((resample(halfway, 7) - expected).abs().max())
    print(f"{sampler}: round trip max abs err {error:.1e} (from step 8: {half_error:.1e}; "
          f"resumed one step off: {off_by_one:.1e})")
    assert error <= 1e-4 and half_error <= 1e-4
    assert off_by_one > 1e-2


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_shortened_window_without_leftover_noise_ends_on_x0(sampler):
    """With a constant noise prediction every step agrees on x̂₀, so stopping at step 3
    without leftover noise must give exactly the full run's clean latent."""
    from diffusers import DDIMScheduler

    from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel, Latent
    from nodes.diffusion.tiny import SCHEDULER_CONFIG
    from nodes.sampling_advanced import KSamplerAdvanced

    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    model = DiffusionModel(ConstantNoiseUNet(noise),
                           {**SCHEDULER_CONFIG, "timestep_spacing": "leading"})
    cond = Conditioning((CondEntry(torch.zeros(1, 77, 32)),))

    def run_window(end, leftover="disable"):
        return KSamplerAdvanced(
            model=model, noise_seed=3, steps=8, cfg=1.0, sampler_name=sampler, positive=cond,
            negative=cond, latent_image=Latent(torch.zeros(1, 4, 8, 8)), end_at_step=end,
            return_with_leftover_noise=leftover).execute(StubContext())[0].samples

    full, early = run_window(10000), run_window(3)
    x0 = full
    if sampler == "ddim":  # DDIM ends at ᾱ₀ (set_alpha_to_one False); the others at σ = 0
        alpha_bar = DDIMScheduler.from_config(model.scheduler_config).alphas_cumprod[0]
        x0 = (full - (1 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()
    assert float((early - x0).abs().max()) <= 1e-4
    assert float((run_window(3, "enable") - x0).abs().max()) > 0.1  # still noisy


def test_inverted_latent_reconstructs_the_image(session, diffedit):
    """On the random tiny UNet (whose 'noise' predictions are far from a real model's, so
    DDIM's linearisation is poor) the reconstruction is weak but well above chance."""
    steps = 50
    prompt = invert_prompt(steps)
    prompt = advanced(prompt, "7", ["6", 0], "ddim", steps, add_noise="disable")
    out = run(session, prompt)
    clean, rebuilt = out["5"].samples, out["7"].samples
    target, image = decode(diffedit.vae, clean), decode(diffedit.vae, rebuilt)
    noise_only = run(session, advanced(encode_prompt(), "7", ["5", 0], "ddim", steps))["7"]
    baseline = decode(diffedit.vae, noise_only.samples)  # a fresh sample, same prompt
    value, fresh = psnr(image, target), psnr(baseline, target)
    latent_value = psnr_latent(rebuilt, clean)
    # The same chain in diffusers: DiffEdit's inversion, then the text-to-image pipeline
    # (DDIM, guidance 1) started from the inverted latents.
    inverted = diffedit.invert(prompt=PROMPT, image=clean, num_inference_steps=steps,
                               inpaint_strength=1.0, guidance_scale=1.0,
                               num_reg_steps=0).latents[:, 0]
    sd = diffusers.StableDiffusionPipeline(
        vae=diffedit.vae, text_encoder=diffedit.text_encoder, tokenizer=diffedit.tokenizer,
        unet=diffedit.unet, scheduler=diffedit.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    ref = sd(PROMPT, latents=inverted, num_inference_steps=steps, guidance_scale=1.0,
             height=SIZE, width=SIZE, output_type="np").images
    chain_diff = float(np.abs(image - ref).max())
    print(f"inversion + resampling vs diffusers' chain: max abs diff {chain_diff:.1e}")
    assert chain_diff <= TOL
    print(f"DDIM inversion + resampling, {steps} steps: PSNR {value:.1f} dB vs the VAE round "
          f"trip (a fresh sample: {fresh:.1f} dB); latent PSNR {latent_value:.1f} dB")
    assert value >= 12.0
    assert value > fresh


def psnr_latent(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR with the reference's value range as the peak."""
    peak = float(b.max() - b.min())
    return float(10 * torch.log10(peak**2 / ((a - b) ** 2).mean()))


def test_partial_inversion_resumes_at_start_step(session, diffedit):
    steps, denoise = 20, 0.5
    start = steps - int(steps * denoise)
    prompt = invert_prompt(steps, denoise=denoise)
    prompt["7"] = {"class_type": "LatentFromTrajectory",
                   "inputs": {"trajectory": ["6", 1], "start_at_step": start}}
    prompt = advanced(prompt, "8", ["7", 0], "ddim", steps, add_noise="disable", start=start)
    prompt = advanced(prompt, "9", ["6", 0], "ddim", steps, add_noise="disable", start=start)
    out = run(session, prompt)
    assert torch.equal(out["8"].samples, out["9"].samples)
    value = psnr(decode(diffedit.vae, out["8"].samples), decode(diffedit.vae, out["5"].samples))
    print(f"half inversion + resampling from step {start}: PSNR {value:.1f} dB")
    assert value >= 12.0


# --- KSamplerAdvanced ------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["euler", "ddim", "dpmpp_2m"])
def test_advanced_full_window_equals_ksampler(session, sampler):
    prompt = encode_prompt()
    prompt = advanced(prompt, "7", ["5", 0], sampler, 6, cfg=7.5)
    prompt["8"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 4, "steps": 6, "cfg": 7.5, "sampler_name": sampler,
        "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0],
        "latent_image": ["5", 0], "denoise": 1.0}}
    prompt["c8"] = {"class_type": "TestCapture", "inputs": {"value": ["8", 0], "key": key()}}
    out = run(session, prompt)
    assert torch.equal(out["7"].samples, out["8"].samples)


@pytest.mark.parametrize("sampler", ["euler", "ddim", "heun"])
def test_two_stages_equal_one_run(session, sampler):
    """Leftover noise handed on (in VP space) and resumed gives the single run's result,
    for single-step samplers (multistep ones restart their history)."""
    prompt = encode_prompt()
    prompt = advanced(prompt, "7", ["5", 0], sampler, 8, cfg=7.5)
    prompt = advanced(prompt, "8", ["5", 0], sampler, 8, cfg=7.5, end=3, leftover="enable")
    prompt = advanced(prompt, "9", ["8", 0], sampler, 8, cfg=7.5, start=3,
                      add_noise="disable")
    prompt = advanced(prompt, "10", ["5", 0], sampler, 8, cfg=7.5, end=3)  # x̂₀ at step 3
    out = run(session, prompt)
    diff = float((out["9"].samples - out["7"].samples).abs().max())
    print(f"{sampler}: two stages vs one run max abs diff {diff:.1e}")
    assert diff <= 1e-4
    assert not torch.allclose(out["10"].samples, out["8"].samples)
    assert out["10"].samples.abs().max() < out["8"].samples.abs().max() * 2


def test_empty_window_returns_the_latent(session):
    prompt = advanced(encode_prompt(), "7", ["5", 0], "euler", 6, start=6)
    out = run(session, prompt)
    assert torch.equal(out["7"].samples, out["5"].samples)


def test_inversion_needs_a_negative_for_cfg(session):
    prompt = invert_prompt(4, cfg=3.0)
    del prompt["6"]["inputs"]["negative"]
    result = session.run(prompt)
    assert result.run.status == "error"
    assert "negative" in result.run.error["exception_message"]


def test_inverting_no_step_is_a_validation_error(session):
    with pytest.raises(PromptValidationError, match="inverts no step"):
        session.validate(invert_prompt(10, denoise=0.05))


def test_trajectory_start_step_out_of_range(session):
    prompt = invert_prompt(10, denoise=0.5)
    prompt["7"] = {"class_type": "LatentFromTrajectory",
                   "inputs": {"trajectory": ["6", 1], "start_at_step": 2}}
    prompt["c7"] = {"class_type": "TestCapture", "inputs": {"value": ["7", 0], "key": key()}}
    result = session.run(prompt)
    assert result.run.status == "error"
    assert "start_at_step 5..10" in result.run.error["exception_message"]


# --- workflow --------------------------------------------------------------------------------


def test_workflow_runs(models_dir, tmp_path):
    wf = Workflow.load(WORKFLOW)
    (tmp_path / "input").mkdir()
    name = wf.prompt["10"]["inputs"]["image"]
    shutil.copy(WORKFLOW.parent / "assets" / name, tmp_path / "input" / name)
    wf.set("12.steps", 4).set("3.steps", 4)
    session = Session(tmp_path, models_dir=models_dir, device="cpu")
    session.validate(wf)
    result = session.run(wf)
    assert result.ok, result.run.error
    (png,) = result.image_paths
    assert Image.open(png).size == (SIZE, SIZE)
