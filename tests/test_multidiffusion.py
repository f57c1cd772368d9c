"""MultiDiffusion: panoramas through the graph equal diffusers' StableDiffusionPanoramaPipeline;
region prompts (Conditioning Set Area / Mask + Combine) fuse predictions by weight, checked
by hand with a stub UNet; both combine with other techniques."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.stable_diffusion_panorama import (
    StableDiffusionPanoramaPipeline,
)
from PIL import Image

from engine.session import Session, Workflow
from engine.validation import PromptValidationError
from nodes.diffusion.extensions import SamplerExtension
from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel, Latent
from nodes.diffusion.multidiffusion import MultiDiffusionPanorama, get_views
from nodes.diffusion.sampling import SamplingParams, sample
from nodes.diffusion.schedulers import SAMPLERS, make_scheduler
from nodes.diffusion.tiny import SCHEDULER_CONFIG
from tests.graph_nodes import CAPTURED, reference_pipeline, registry_with_capture
from tests.region_graphs import with_region

PROMPT = "a red circle"
NEGATIVE = "blurry"
STEPS = 6
STRIDE = 4  # latent pixels; the tiny model's native window is 8 (64 px at its 8x VAE)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("md_home")
    (home / "input").mkdir()
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (8, 20, 3), dtype=np.uint8)
    Image.fromarray(np.kron(coarse, np.ones((8, 8, 1), np.uint8))).save(
        home / "input" / "control_wide.png")  # 160x64: the panorama's size
    half = np.zeros((64, 128, 3), np.uint8)
    half[:, 64:] = 255
    Image.fromarray(half).save(home / "input" / "right_half.png")
    return home


@pytest.fixture(scope="module")
def session(models_dir, controlnet_paths, home):
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def panorama_pipe(tiny_model_paths):
    pipe = reference_pipeline(StableDiffusionPanoramaPipeline, tiny_model_paths["diffusers"])

    # __call__ takes SD's window (64 latent pixels) and stride 8 from get_views' defaults;
    # the tiny model's native window is 8: the same views as our node's window 0, stride 4.
    def views(height, width, window_size=64, stride=8, circular_padding=False):
        return StableDiffusionPanoramaPipeline.get_views(pipe, height, width, 8, STRIDE,
                                                         circular_padding)

    pipe.get_views = views
    return pipe


def panorama_prompt(*, ckpt="steerflow-tiny", sampler="ddim", width=160, height=64,
                    circular=False, view_batch=1, stride=STRIDE, window=0, pano=True,
                    sega=False, control=False, seed=3, weights="uniform") -> dict:
    model: list = ["4", 0]
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                           "batch_size": 1}},
        "8": {"class_type": "VAEDecodeCircular" if circular else "VAEDecode",
              "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["8", 0],
                                                       "key": uuid.uuid4().hex}},
    }
    if pano:
        prompt["20"] = {"class_type": "MultiDiffusionPanorama", "inputs": {
            "model": model, "window_size": window, "stride": stride,
            "circular_padding": circular, "view_batch_size": view_batch,
            "view_weights": weights}}
        model = ["20", 0]
    if sega:
        prompt["c0"] = {"class_type": "SEGAConcept", "inputs": {
            "clip": ["4", 1], "text": "a blue square", "scale": 6.0, "warmup_steps": 1}}
        prompt["21"] = {"class_type": "ApplySEGA", "inputs": {"model": model,
                                                              "concepts": ["c0", 0]}}
        model = ["21", 0]
    positive, negative = ["6", 0], ["7", 0]
    if control:
        prompt["cn"] = {"class_type": "ControlNetLoader",
                        "inputs": {"control_net_name": "steerflow-tiny-controlnet"}}
        prompt["img"] = {"class_type": "LoadImage", "inputs": {"image": "control_wide.png"}}
        prompt["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": positive, "negative": negative, "control_net": ["cn", 0],
            "image": ["img", 0], "strength": 1.0}}
        positive, negative = ["apply", 0], ["apply", 1]
    prompt["3"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": STEPS, "cfg": 7.5, "sampler_name": sampler,
        "scheduler": "normal", "positive": positive, "negative": negative,
        "latent_image": ["5", 0]}}
    return prompt


def run_graph(session, prompt, output="10") -> np.ndarray:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt[output]["inputs"]["key"]).numpy()


def run_reference(pipe, *, sampler="ddim", width=160, height=64, circular=False,
                  view_batch=1, seed=3) -> np.ndarray:
    class_name, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.base_config, **extra)
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=7.5,
                height=height, width=width, view_batch_size=view_batch,
                circular_padding=circular, output_type="np",
                generator=torch.Generator("cpu").manual_seed(seed)).images


# 160x64 px = 20x8 latents: 4 windows (7 wrapping ones with circular padding); 128x96 =
# 16x12 latents: two rows of windows. Per-window scheduler state makes the multistep
# samplers (DPM-Solver++ 2M, UniPC) match; euler_ancestral draws its noise per window batch.
@pytest.mark.parametrize(("ckpt", "sampler", "width", "height", "circular", "view_batch"), [
    ("steerflow-tiny", "ddim", 160, 64, False, 1),
    ("steerflow-tiny.safetensors", "ddim", 160, 64, True, 1),
    ("steerflow-tiny", "dpmpp_2m", 160, 64, True, 2),
    ("steerflow-tiny.safetensors", "dpmpp_2m", 128, 96, False, 1),
    ("steerflow-tiny", "uni_pc", 160, 64, False, 3),
    ("steerflow-tiny.safetensors", "euler_ancestral", 160, 64, False, 1),
])
def test_matches_panorama_pipeline(session, panorama_pipe, ckpt, sampler, width, height,
                                   circular, view_batch):
    ours = run_graph(session, panorama_prompt(ckpt=ckpt, sampler=sampler, width=width,
                                              height=height, circular=circular,
                                              view_batch=view_batch))
    ref = run_reference(panorama_pipe, sampler=sampler, width=width, height=height,
                        circular=circular, view_batch=view_batch)
    assert ours.shape == ref.shape == (1, height, width, 3)
    diff = float(np.abs(ours - ref).max())
    print(f"{ckpt} {sampler} {width}x{height} circular={circular}: max abs diff {diff:.1e}")
    assert diff <= 1e-4


def test_windows_change_the_image(session):
    plain = run_graph(session, panorama_prompt(pano=False))
    windows = run_graph(session, panorama_prompt())
    circular = run_graph(session, panorama_prompt(circular=True))
    gaussian = run_graph(session, panorama_prompt(weights="gaussian"))
    assert np.abs(windows - plain).max() > 1e-2
    assert np.abs(circular - windows).max() > 1e-2
    assert np.abs(gaussian - windows).max() > 1e-2


# --- the windows -----------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "window", "stride", "circular"), [
    (8, 20, 8, 4, False), (8, 20, 8, 4, True), (12, 16, 8, 4, False), (16, 64, 16, 8, False),
    (64, 256, 64, 8, False), (64, 256, 64, 8, True),
])
def test_views_are_the_pipelines_where_they_cover_the_latent(height, width, window, stride,
                                                             circular):
    ours = get_views(height, width, window, stride, circular)
    ref = StableDiffusionPanoramaPipeline.get_views(None, height * 8, width * 8, window,
                                                    stride, circular)
    assert ours == ref


def coverage(views, height, width):
    count = np.zeros((height, width))
    for h0, h1, w0, w1 in views:
        for w in range(w0, w1):
            count[h0:h1, w % width] += 1
    return count


@pytest.mark.parametrize(("height", "width", "window", "stride", "circular"), [
    (8, 22, 8, 4, False), (10, 20, 8, 4, False), (8, 22, 8, 4, True), (8, 21, 8, 8, True),
    (20, 30, 8, 8, True), (4, 6, 8, 2, False), (4, 6, 8, 2, True),
])
def test_views_cover_every_latent_pixel(height, width, window, stride, circular):
    """Where the pipeline's grid stops short of an edge (it leaves that strip at zero) one
    window flush with the edge is added; windows never pass the latent except by wrapping."""
    views = get_views(height, width, window, stride, circular)
    assert (coverage(views, height, width) > 0).all()
    assert all(h1 <= height and (circular or w1 <= width) for _, h1, _, w1 in views)
    assert all(w1 - w0 == min(window, width) and h1 - h0 == min(window, height)
               for h0, h1, w0, w1 in views)


class PointwiseUNet(torch.nn.Module):
    """A denoiser acting on each latent pixel alone: any window sees what the whole latent
    would, so MultiDiffusion must reproduce the plain sampler exactly."""

    def __init__(self, native: int = 8):
        super().__init__()
        self.config = SimpleNamespace(time_cond_proj_dim=None, in_channels=4,
                                      sample_size=native, block_out_channels=(32, 64))
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
        text = encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None]
        return (0.3 * sample + text + 0.01 * torch.sin(sample * 3),)


def stub_parts(height=8, width=22, batch=1):
    model = DiffusionModel(PointwiseUNet(), dict(SCHEDULER_CONFIG))
    pos = Conditioning((CondEntry(torch.full((1, 77, 32), 0.5)),))
    neg = Conditioning((CondEntry(torch.full((1, 77, 32), -0.2)),))
    return model, pos, neg, Latent(torch.zeros(batch, 4, height, width))


@pytest.mark.parametrize(("sampler", "height", "width", "circular", "view_batch", "batch",
                          "weights"), [
    ("ddim", 8, 22, False, 1, 1, "uniform"), ("dpmpp_2m", 20, 22, True, 2, 1, "uniform"),
    ("euler", 12, 18, True, 3, 2, "gaussian"), ("uni_pc", 10, 30, False, 4, 2, "gaussian"),
])
def test_pointwise_denoiser_gives_the_plain_sampler(sampler, height, width, circular,
                                                    view_batch, batch, weights):
    """Gap-filling windows, circular windows on several rows (where the pipeline fails),
    view batches, image batches and Gaussian window weights all average back to the plain
    step."""
    model, pos, neg, latent = stub_parts(height, width, batch)

    def run(m):
        return sample(m, make_scheduler(sampler, "normal", m.scheduler_config), pos, neg,
                      latent, SamplingParams(seed=4, steps=5, cfg=5.0))

    plain = run(model)
    windows = run(model.with_extension(MultiDiffusionPanorama(8, 4, circular, view_batch,
                                                              weights)))
    assert torch.allclose(windows, plain, atol=1e-5)


@pytest.mark.parametrize(("height", "width", "circular", "view_batch", "batch", "weights"), [
    (8, 22, False, 1, 1, "uniform"), (12, 18, True, 2, 2, "gaussian"),
])
def test_dpmpp_sde_windows_read_the_whole_latents_brownian_noise(height, width, circular,
                                                                 view_batch, batch, weights):
    """DPM++ SDE's Brownian-tree noise (a raw torchsde KeyError with windows before): each
    window batch adds its crop of the whole latent's increment, so with a pointwise
    denoiser the windows give the plain sampler exactly."""
    model, pos, neg, latent = stub_parts(height, width, batch)

    def run(m):
        return sample(m, make_scheduler("dpmpp_sde", "karras", m.scheduler_config, seed=9),
                      pos, neg, latent, SamplingParams(seed=9, steps=4, cfg=5.0))

    plain = run(model)
    windows = run(model.with_extension(MultiDiffusionPanorama(8, 4, circular, view_batch,
                                                              weights)))
    assert torch.allclose(windows, plain, atol=1e-5)


class StubContext:
    extra: dict = {}

    def progress(self, value, total, preview=None):
        pass

    def check_interrupt(self):
        pass

    def warn(self, message):  # the stub latent is far above the stub UNet's sample_size
        pass


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_panorama_ends_early_without_leftover_noise(sampler):
    """KSamplerAdvanced's early end on x̂₀ reads what its extension recorded in the window
    passes, put back on the whole canvas: with a pointwise denoiser, the plain result."""
    from nodes.sampling_advanced import KSamplerAdvanced

    model, pos, neg, latent = stub_parts(8, 22)

    def run(m):
        return KSamplerAdvanced(
            model=m, add_noise="enable", noise_seed=2, steps=6, cfg=5.0, sampler_name=sampler,
            positive=pos, negative=neg, latent_image=latent, start_at_step=0, end_at_step=3,
            return_with_leftover_noise="disable").execute(StubContext())[0].samples

    plain = run(model)
    windows = run(model.with_extension(MultiDiffusionPanorama(8, 4, True, 2)))
    assert torch.allclose(windows, plain, atol=1e-5)


# --- regions ---------------------------------------------------------------------------------


class RampUNet(PointwiseUNet):
    """Predicts its prompt's value plus a ramp 0..1 across the width of the latent it is
    given: a crop's ramp is the crop's own, so the hand computation tells crops apart."""

    def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
        text = encoder_hidden_states[:, 0, 0][:, None, None, None]
        ramp = torch.linspace(0, 1, sample.shape[-1])
        return (text + ramp + 0 * sample,)


def test_region_fusion_by_hand():
    """One DDIM step: a whole-image prompt (strength 1), an area on the left half (strength
    2, predicted on its crop, feathered at its inner edge) and a soft mask on the right half;
    the negative gets the area's twin. ε = Σ wᵢ εᵢ / Σ wᵢ, each region guided against its
    partner on the same crop."""
    model = DiffusionModel(RampUNet(native=16), dict(SCHEDULER_CONFIG))
    g, a, m, n = (torch.full((1, 77, 32), v) for v in (0.1, 0.7, -0.4, 0.25))
    mask = torch.zeros(1, 8, 16)
    mask[..., 8:] = 0.5
    positive = Conditioning((
        CondEntry(g), CondEntry(a, {"area": (8, 8, 0, 0), "strength": 2.0}),
        CondEntry(m, {"mask": mask, "mask_strength": 1.0})))
    negative = Conditioning((CondEntry(n),))
    latent = Latent(torch.zeros(1, 4, 8, 16))
    cfg = 4.0
    ours = sample(model, make_scheduler("ddim", "normal", model.scheduler_config), positive,
                  negative, latent, SamplingParams(seed=5, steps=1, cfg=cfg))

    whole = torch.linspace(0, 1, 16)[None].expand(8, 16)
    crop = torch.zeros(8, 16)
    crop[:, :8] = torch.linspace(0, 1, 8)
    w_area = torch.zeros(8, 16)
    w_area[:, :8] = 2.0
    w_area[:, 7] *= 0.5  # feathering: 2 latent pixels at 16 native (ComfyUI's 8 at 64)
    w_mask = mask[0]
    total = 1 + w_area + w_mask
    cond = (1 * (0.1 + whole) + w_area * (0.7 + crop) + w_mask * (-0.4 + whole)) / total
    uncond = (1 * (0.25 + whole) + w_area * (0.25 + crop) + w_mask * (0.25 + whole)) / total
    guided = (uncond + cfg * (cond - uncond)).expand(1, 4, 8, 16)
    scheduler = make_scheduler("ddim", "normal", model.scheduler_config)
    scheduler.set_timesteps(1)
    x = torch.randn((1, 4, 8, 16), generator=torch.Generator().manual_seed(5))
    expected = scheduler.step(guided, scheduler.timesteps[0], x).prev_sample
    assert torch.allclose(ours, expected, atol=1e-5)


def test_areas_without_a_whole_image_prompt():
    """Two areas covering the image, no whole-image prompt: each is guided against the
    negative on its own crop (ComfyUI would mix in the negative's whole-image prediction)."""
    model = DiffusionModel(RampUNet(native=64), dict(SCHEDULER_CONFIG))
    a, b, n = (torch.full((1, 77, 32), v) for v in (0.7, -0.3, 0.25))
    positive = Conditioning((CondEntry(a, {"area": ("percentage", 1.0, 0.5, 0.0, 0.0)}),
                             CondEntry(b, {"area": ("percentage", 1.0, 0.5, 0.0, 0.5)})))
    negative = Conditioning((CondEntry(n),))
    cfg = 3.0
    ours = sample(model, make_scheduler("ddim", "normal", model.scheduler_config), positive,
                  negative, Latent(torch.zeros(1, 4, 4, 8)), SamplingParams(seed=1, steps=1,
                                                                               cfg=cfg))
    ramp = torch.linspace(0, 1, 4)
    w = torch.ones(4, 4)
    for t in range(8):  # ComfyUI's 8-pixel feathering at native 64, all on 4 columns
        w[:, max(3 - t, 0):max(4 - t, 0)] *= (t + 1) / 8
    w_left, w_right = torch.cat([w, torch.zeros(4, 4)], 1), torch.cat([torch.zeros(4, 4),
                                                                       w.flip(1)], 1)
    crop = torch.cat([ramp, ramp])[None].expand(4, 8)
    total = w_left + w_right
    cond = (w_left * (0.7 + crop) + w_right * (-0.3 + crop)) / total
    uncond = 0.25 + crop
    guided = (uncond + cfg * (cond - uncond)).expand(1, 4, 4, 8)
    scheduler = make_scheduler("ddim", "normal", model.scheduler_config)
    scheduler.set_timesteps(1)
    x = torch.randn((1, 4, 4, 8), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ours, scheduler.step(guided, scheduler.timesteps[0], x).prev_sample,
                          atol=1e-5)


def region_prompt(*, regions="area", sega=False, pano=False, extra_mask=None) -> dict:
    """128x64 on the tiny model: "a red circle" left and "a blue square" right of a
    whole-image prompt, as areas or as mask regions."""
    prompt = panorama_prompt(width=128, pano=False, sega=sega)
    prompt["a"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle",
                                                              "clip": ["4", 1]}}
    prompt["b"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue square",
                                                              "clip": ["4", 1]}}
    if regions == "area":
        prompt["ra"] = {"class_type": "ConditioningSetArea", "inputs": {
            "conditioning": ["a", 0], "width": 64, "height": 64, "x": 0, "y": 0,
            "strength": 1.0}}
        prompt["rb"] = {"class_type": "ConditioningSetAreaPercentage", "inputs": {
            "conditioning": ["b", 0], "width": 0.5, "height": 1.0, "x": 0.5, "y": 0.0,
            "strength": 1.0}}
    else:
        prompt["mb"] = {"class_type": "LoadImageMask", "inputs": {"image": "right_half.png",
                                                                  "channel": "red"}}
        prompt["ra"] = {"class_type": "ConditioningSetStrength", "inputs": {
            "conditioning": ["a", 0], "strength": 0.5}}
        prompt["rb"] = {"class_type": "ConditioningSetMask", "inputs": {
            "conditioning": ["b", 0], "mask": ["mb", 0], "strength": 1.0,
            "set_cond_area": regions}}
    prompt["ab"] = {"class_type": "ConditioningCombine", "inputs": {
        "conditioning_1": ["ra", 0], "conditioning_2": ["rb", 0]}}
    prompt["all"] = {"class_type": "ConditioningCombine", "inputs": {
        "conditioning_1": ["6", 0], "conditioning_2": ["ab", 0]}}
    prompt["3"]["inputs"]["positive"] = ["all", 0]
    if pano:
        prompt["20"] = {"class_type": "MultiDiffusionPanorama", "inputs": {
            "model": prompt["3"]["inputs"]["model"], "window_size": 0, "stride": STRIDE,
            "circular_padding": False, "view_batch_size": 2}}
        prompt["3"]["inputs"]["model"] = ["20", 0]
    return prompt


@pytest.mark.parametrize("regions", ["area", "default", "mask bounds"])
def test_region_nodes_act_in_a_graph(session, regions):
    plain = panorama_prompt(width=128, pano=False)
    with_regions = run_graph(session, region_prompt(regions=regions))
    assert np.abs(with_regions - run_graph(session, plain)).max() > 1e-3


def test_regions_with_sega_in_one_run(session):
    both = run_graph(session, region_prompt(sega=True))
    assert np.abs(both - run_graph(session, region_prompt())).max() > 1e-3  # SEGA acts
    assert np.abs(both - run_graph(session, panorama_prompt(width=128, pano=False,
                                                            sega=True))).max() > 1e-3


def test_mask_regions_in_a_panorama(session):
    """Mask regions work inside windows (their weights cropped per window)."""
    both = run_graph(session, region_prompt(regions="default", pano=True))
    assert np.abs(both - run_graph(session, region_prompt(regions="default"))).max() > 1e-3
    assert np.abs(both - run_graph(session, panorama_prompt(width=128))).max() > 1e-3


# --- with other techniques -------------------------------------------------------------------


def test_panorama_with_sega_in_one_run(session):
    both = run_graph(session, panorama_prompt(sega=True))
    assert np.abs(both - run_graph(session, panorama_prompt())).max() > 1e-3  # SEGA acts
    assert np.abs(both - run_graph(session, panorama_prompt(sega=True, pano=False))
                  ).max() > 1e-3  # the windows act


def test_panorama_crops_the_control_image_per_window(session, monkeypatch):
    """A ControlNet's control image at the panorama's size is cropped to each window."""
    from nodes.diffusion import controlnet

    seen = []
    original = controlnet.ControlNetResiduals.unet_inputs

    def spy(self, run, step, call):
        seen.append((tuple(run.state[self].image.shape), tuple(call.latent_input.shape)))
        return original(self, run, step, call)

    monkeypatch.setattr(controlnet.ControlNetResiduals, "unet_inputs", spy)
    both = run_graph(session, panorama_prompt(control=True, view_batch=2))
    assert seen and all(img == (lat[0] // 2, 3, lat[2] * 8, lat[3] * 8) for img, lat in seen)
    assert {lat[0] for _, lat in seen} == {4}  # two windows x [uncond, cond]
    monkeypatch.undo()
    assert np.abs(both - run_graph(session, panorama_prompt())).max() > 1e-3
    assert np.abs(both - run_graph(session, panorama_prompt(control=True, pano=False))
                  ).max() > 1e-3


@pytest.fixture(scope="module")
def adapter_name(models_dir) -> str:
    from nodes.diffusion.tiny_adapter import TINY_ADAPTER_NAME, save_tiny_adapter

    if not (models_dir / "controlnet" / TINY_ADAPTER_NAME).is_dir():
        save_tiny_adapter(models_dir / "controlnet", "full_adapter")
    return TINY_ADAPTER_NAME


def add_adapter(prompt: dict, adapter_name: str) -> dict:
    """``prompt`` with the tiny T2I-Adapter (control_wide.png) on the KSampler's prompts."""
    ks = prompt["3"]["inputs"]
    prompt["ad"] = {"class_type": "ControlNetLoader",
                    "inputs": {"control_net_name": adapter_name}}
    prompt["img"] = {"class_type": "LoadImage", "inputs": {"image": "control_wide.png"}}
    prompt["apply"] = {"class_type": "T2IAdapterApply", "inputs": {
        "positive": ks["positive"], "negative": ks["negative"], "image": ["img", 0],
        "adapter": ["ad", 0], "adapter_conditioning_scale": 1.0,
        "adapter_conditioning_factor": 1.0}}
    ks.update(positive=["apply", 0], negative=["apply", 1])
    return prompt


def test_panorama_with_an_adapter_and_sag_in_one_run(session, adapter_name):
    """A T2I-Adapter's features (at 1/1 and 1/2 of the latent) are cropped per window; SAG
    reads the windows' self-attention; each still acts."""
    def prompt(adapter: bool, sag: bool) -> dict:
        g = panorama_prompt()
        if adapter:
            add_adapter(g, adapter_name)
        if sag:
            g["sag"] = {"class_type": "SelfAttentionGuidance",
                        "inputs": {"model": ["20", 0], "scale": 0.75, "blur_sigma": 1.0}}
            g["3"]["inputs"]["model"] = ["sag", 0]
        return g

    both = run_graph(session, prompt(True, True))
    assert np.isfinite(both).all()
    assert np.abs(both - run_graph(session, prompt(False, True))).max() > 1e-3
    assert np.abs(both - run_graph(session, prompt(True, False))).max() > 1e-3


SHRINK = {"block_number": 1, "downscale_factor": 2.0, "start_percent": 0.0,
          "end_percent": 0.5, "downscale_after_skip": True, "downscale_method": "bicubic",
          "upscale_method": "bicubic"}


def with_shrink(prompt: dict) -> dict:
    prompt["shrink"] = {"class_type": "PatchModelAddDownscale",
                        "inputs": {"model": prompt["3"]["inputs"]["model"], **SHRINK}}
    prompt["3"]["inputs"]["model"] = ["shrink", 0]
    return prompt


@pytest.mark.parametrize("control", ["adapter", "controlnet"])
def test_deep_shrink_resizes_a_windows_control_residuals(session, adapter_name, control):
    """T2I-Adapter / ControlNet + MultiDiffusion + Deep Shrink (the drill's shape mismatch):
    inside the windows Deep Shrink resizes the window's residuals as on the whole latent
    (one window over the whole latent gives the run without windows), and with several
    windows the control still acts."""
    def prompt(pano: bool = True, window: int = 0, with_control: bool = True) -> dict:
        g = panorama_prompt(pano=pano, window=window,
                            control=with_control and control == "controlnet")
        if with_control and control == "adapter":
            add_adapter(g, adapter_name)
        return with_shrink(g)

    whole = run_graph(session, prompt(window=20))  # 20x8 latent: one window
    assert np.abs(whole - run_graph(session, prompt(pano=False))).max() < 1e-5
    windows = run_graph(session, prompt())
    assert np.isfinite(windows).all()
    assert np.abs(windows - run_graph(session, prompt(with_control=False))).max() > 1e-3


@pytest.mark.parametrize("regions", ["area", "mask bounds"])
def test_regions_off_the_feature_grid_take_an_adapter(session, adapter_name, regions):
    """An area / "mask bounds" region whose box is off the adapter's 1/2-size feature grid
    (x, y = 1 latent pixel) runs with a T2I-Adapter (it was refused with a message about
    windows the graph does not have), and the adapter acts; with Deep Shrink too."""
    def prompt(adapter: bool = True, shrink: bool = False) -> dict:
        g = with_region(panorama_prompt(width=64, pano=False), regions, "a blue square")
        if adapter:
            add_adapter(g, adapter_name)
        return with_shrink(g) if shrink else g

    both = run_graph(session, prompt())
    assert np.isfinite(both).all()
    assert np.abs(both - run_graph(session, prompt(adapter=False))).max() > 1e-3
    assert np.isfinite(run_graph(session, prompt(shrink=True))).all()


def test_feature_maps_are_cropped_on_their_grid():
    """A window or region on a 1/d-size feature map: exactly its pixels / d on the grid;
    off it, the ⌈side/d⌉ cells nearest its centre, inside the map or wrapping around."""
    from nodes.diffusion.multidiffusion import _crop_tensor, feature_view

    assert feature_view((4, 12, 8, 16), 4, (16, 24)) == (1, 3, 2, 4)
    assert feature_view((1, 4, 1, 6), 2, (8, 8)) == (0, 2, 0, 3)
    assert feature_view((5, 8, 0, 8), 4, (8, 8)) == (1, 2, 0, 2)  # kept inside the map
    assert feature_view((0, 8, 18, 26), 2, (8, 20)) == (0, 4, 9, 13)  # circular: wraps
    features = torch.arange(5 * 5, dtype=torch.float32).reshape(1, 1, 5, 5)  # 9x9 at 1/2
    crops = _crop_tensor(features, [(0, 4, 0, 4), (5, 9, 5, 9)], (9, 9))
    assert torch.equal(crops, torch.cat([features[..., :2, :2], features[..., 3:5, 3:5]]))


def test_panorama_keeps_a_noise_masks_region(session):
    """A latent noise mask blends on the whole canvas after each windowed step."""
    prompt = panorama_prompt()
    prompt["mask"] = {"class_type": "LoadImageMask", "inputs": {"image": "control_wide.png",
                                                                "channel": "red"}}
    prompt["thr"] = {"class_type": "ThresholdMask", "inputs": {"mask": ["mask", 0],
                                                               "value": 0.5}}
    prompt["noise"] = {"class_type": "SetLatentNoiseMask", "inputs": {
        "samples": ["5", 0], "mask": ["thr", 0]}}
    prompt["3"]["inputs"]["latent_image"] = ["noise", 0]
    prompt["3"]["inputs"]["denoise"] = 1.0
    prompt["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["3", 0],
                                                             "key": uuid.uuid4().hex}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    latents = CAPTURED.pop(prompt["cap"]["inputs"]["key"]).samples
    CAPTURED.pop(prompt["10"]["inputs"]["key"])
    mask = np.asarray(Image.open(session.env.folder("input") / "control_wide.png"))[..., 0]
    kept = torch.from_numpy(mask[::8, ::8] < 128)  # 0 = keep the input (zeros) there
    assert kept.any() and (latents[..., kept] == 0).all()
    assert (latents[..., ~kept] != 0).any()


def test_panorama_with_dpmpp_sde_on_the_tiny_model(session):
    """The drill's graph (MultiDiffusion + dpmpp_sde) runs; one window over the whole
    latent is the run without windows (the same Brownian noise)."""
    windows = run_graph(session, panorama_prompt(sampler="dpmpp_sde"))
    assert np.isfinite(windows).all()
    whole = run_graph(session, panorama_prompt(sampler="dpmpp_sde", window=20))
    assert np.abs(whole - run_graph(session, panorama_prompt(sampler="dpmpp_sde", pano=False))
                  ).max() < 1e-5
    assert np.abs(windows - whole).max() > 1e-3


# --- bad input -------------------------------------------------------------------------------


def issues(session, prompt):
    with pytest.raises(PromptValidationError) as info:
        session.validate(prompt)
    return [(i.node_id, i.input_name) for i in info.value.issues if i.severity == "error"]


def test_validation_errors(session):
    prompt = panorama_prompt(window=8, stride=9)
    assert issues(session, prompt) == [("20", "stride")]
    prompt = panorama_prompt(window=1, stride=1)  # ~1,000 UNet calls a step on 1x1 latents
    assert issues(session, prompt) == [("20", "window_size")]
    prompt["w"] = {"class_type": "PrimitiveInt", "inputs": {"value": 1}}
    prompt["20"]["inputs"]["window_size"] = ["w", 0]  # linked: refused when it arrives
    assert "too small for a UNet" in run_error(session, prompt)
    prompt = panorama_prompt(view_batch=0)
    assert issues(session, prompt) == [("20", "view_batch_size")]
    prompt = panorama_prompt(weights="cosine")
    assert issues(session, prompt) == [("20", "view_weights")]
    prompt = region_prompt()
    prompt["rb"]["inputs"]["x"] = 0.75  # 0.75 + 0.5 passes the right edge
    assert issues(session, prompt) == [("rb", "x")]
    prompt["rb"]["inputs"].update(x=0.0, width=0.0)
    assert issues(session, prompt) == [("rb", "width")]
    prompt = region_prompt()
    prompt["ra"]["inputs"]["width"] = 66  # not a multiple of 4
    assert issues(session, prompt) == [("ra", "width")]


def run_error(session, prompt) -> str:
    result = session.run(prompt)
    assert not result.ok
    for node in prompt.values():
        if node["class_type"] == "TestCapture":
            CAPTURED.pop(node["inputs"]["key"], None)
    return str(result.run.error)


def test_run_time_errors(session):
    prompt = panorama_prompt(stride=10)  # window 0: the tiny model's 8
    assert "stride at most 8" in run_error(session, prompt)
    prompt = region_prompt()
    prompt["ra"]["inputs"]["x"] = 128  # past the 128 px wide image
    assert "outside" in run_error(session, prompt)
    prompt = region_prompt(pano=True)  # areas inside panorama windows
    assert "Conditioning Set Mask" in run_error(session, prompt)
    prompt = region_prompt()
    prompt["3"]["inputs"]["cfg"] = 1.0  # the positive regions alone, as ComfyUI at cfg 1
    result = session.run(prompt)
    assert result.ok, result.run.error
    for node in prompt.values():
        if node["class_type"] == "TestCapture":
            CAPTURED.pop(node["inputs"]["key"], None)


def test_region_mask_of_another_aspect_is_stretched_with_a_warning(session):
    prompt = region_prompt(regions="default")
    prompt["5"]["inputs"]["width"] = 64  # the 128x64 masks on a 64x64 image, as ComfyUI
    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    warnings = [d["message"] for n, d in result.events if n == "node_warning"]
    assert any("128x64 region mask has another aspect ratio" in w for w in warnings), warnings


def test_region_errors_by_api():
    from nodes.diffusion.combine import resize_mask, resolve_area

    with pytest.raises(ValueError, match="empty"):
        resolve_area((0, 4, 0, 0), (8, 8))
    with pytest.raises(ValueError, match="batch of 3"):
        resize_mask(torch.ones(3, 8, 8), (8, 8), batch=2)
    model, pos, neg, latent = stub_parts(8, 16)
    left = Conditioning((CondEntry(pos.embeds, {"area": (8, 8, 0, 0)}),))
    only_left = Conditioning((CondEntry(neg.embeds, {"area": (8, 8, 0, 0)}),))
    with pytest.raises(ValueError, match="no region"):
        sample(model, make_scheduler("ddim", "normal", model.scheduler_config), left,
               only_left, latent, SamplingParams(seed=0, steps=1, cfg=5.0))


def test_panorama_refuses_whole_latent_techniques():
    class WholeLatent(SamplerExtension):
        def pre_step(self, run, step, latents):
            return latents

    model, pos, neg, latent = stub_parts()
    model = model.with_extension(MultiDiffusionPanorama()).with_extension(WholeLatent())
    with pytest.raises(ValueError, match="WholeLatent"):
        sample(model, make_scheduler("ddim", "normal", model.scheduler_config), pos, neg,
               latent, SamplingParams(seed=0, steps=1, cfg=5.0))


def test_refusals_name_techniques_as_the_user_knows_them():
    """Attend-and-Excite was named by its word list, LEDITS++ by an internal class."""
    from nodes.diffusion.attend_excite import AttendAndExcite
    from nodes.diffusion.ledits_pp import LEditsPPGuidance

    excite = AttendAndExcite(torch.zeros(1, 77, 32), [1], label="circle, square")
    ledits = LEditsPPGuidance([SimpleNamespace()], SimpleNamespace())
    assert AttendAndExcite(torch.zeros(1, 77, 32), [1]).label == "Attend-and-Excite"
    model, pos, neg, latent = stub_parts()
    for ext, name in ((excite, "Attend-and-Excite (circle, square)"), (ledits, "LEDITS++")):
        refused = model.with_extension(MultiDiffusionPanorama()).with_extension(ext)
        with pytest.raises(ValueError, match=rf"MultiDiffusion cannot run with {re.escape(name)}:"):
            sample(refused, make_scheduler("ddim", "normal", model.scheduler_config), pos,
                   neg, latent, SamplingParams(seed=0, steps=1, cfg=5.0))


def test_inputs_are_bounded(session):
    inputs = session.registry.schema(session.env)["MultiDiffusionPanorama"]["input"]["required"]
    assert inputs["window_size"][1]["default"] == 0 and inputs["stride"][1]["default"] == 8
    area = session.registry.schema(session.env)["ConditioningSetArea"]["input"]
    assert set(area["required"]) == {"conditioning", "width", "height", "x", "y", "strength"}
    mask = session.registry.schema(session.env)["ConditioningSetMask"]["input"]["required"]
    assert set(mask) == {"conditioning", "mask", "strength", "set_cond_area"}


# --- examples --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["panorama", "regions"])
def test_example_workflow_runs(tmp_path, name):
    wf = Workflow.load(ROOT / "workflows" / f"{name}.json")
    for node_id, node in wf.prompt.items():
        if node["class_type"] == "KSampler":
            wf.set(f"{node_id}.steps", 3)
    result = Session(tmp_path, device="cpu").run(wf)
    assert result.ok, result.run.error
    assert len(result.image_paths) == 1


def test_panorama_takes_techniques_that_only_set_step_state():
    """IP-Adapter and the LoRA hooks override pre_step only to set this step's weight:
    windows leave them working (they were refused as "works on the whole latent", the
    hooks under an internal class name); masks drawn on the whole canvas are refused."""
    from nodes.diffusion.hooks import HookedWeights
    from nodes.diffusion.ip_adapter import IPAdapter

    assert IPAdapter.step_state_only and HookedWeights.step_state_only

    class StepWeight(SamplerExtension):
        step_state_only = True
        label = "Step Weight"

        def pre_step(self, run, step, latents):
            run.state[self] = step.index
            return latents

    model, pos, neg, latent = stub_parts()
    panorama = model.with_extension(MultiDiffusionPanorama())
    sample(panorama.with_extension(StepWeight()), make_scheduler(
        "ddim", "normal", model.scheduler_config), pos, neg, latent,
        SamplingParams(seed=0, steps=1, cfg=5.0))
    masked = StepWeight()
    masked.canvas_masks = True
    with pytest.raises(ValueError, match="Step Weight given attention masks"):
        sample(panorama.with_extension(masked), make_scheduler(
            "ddim", "normal", model.scheduler_config), pos, neg, latent,
            SamplingParams(seed=0, steps=1, cfg=5.0))


def test_panorama_with_an_ip_adapter_on_the_default_model(tmp_path):
    """The drill's graph: MultiDiffusion + Apply IP-Adapter (steerflow-shapes' own) runs,
    and the image prompt still acts inside the windows."""
    import numpy as np
    from PIL import Image

    session = Session(tmp_path, device="cpu")
    images = []
    for weight in (0.0, 1.0):
        prompt = {
            "4": {"class_type": "CheckpointLoaderSimple",
                  "inputs": {"ckpt_name": "steerflow-shapes"}},
            "26": {"class_type": "LoadImage", "inputs": {"image": "ip_adapter_reference.png"}},
            "27": {"class_type": "CLIPVisionLoader",
                   "inputs": {"clip_name": "steerflow-shapes-clip.safetensors"}},
            "28": {"class_type": "IPAdapterModelLoader",
                   "inputs": {"ipadapter_file": "steerflow-shapes-ip-adapter.safetensors"}},
            "29": {"class_type": "ApplyIPAdapter", "inputs": {
                "model": ["4", 0], "ipadapter": ["28", 0], "clip_vision": ["27", 0],
                "image": ["26", 0], "weight": weight, "start_percent": 0.0,
                "end_percent": 1.0, "crop": "center"}},
            "11": {"class_type": "MultiDiffusionPanorama", "inputs": {
                "model": ["29", 0], "window_size": 0, "stride": 16,
                "circular_padding": False, "view_batch_size": 2, "view_weights": "gaussian"}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
            "5": {"class_type": "EmptyLatentImage",
                  "inputs": {"width": 128, "height": 64, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {
                "model": ["11", 0], "seed": 3, "steps": 3, "cfg": 7.5, "sampler_name": "ddim",
                "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
                "latent_image": ["5", 0], "denoise": 1.0}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0],
                                                        "filename_prefix": f"md{weight}"}}}
        result = session.run(prompt)
        assert result.ok, result.run.error
        images.append(np.asarray(Image.open(result.image_paths[0]), dtype=np.float32))
    assert images[0].shape == (64, 128, 3)
    assert np.abs(images[0] - images[1]).max() > 10  # the image prompt acts
