"""SD_4XUpscale_Conditioning through the graph equals diffusers' StableDiffusionUpscalePipeline
on a tiny random x4 upscaler (folder and single file), and the x4 upscaler's detection."""

from __future__ import annotations

import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from PIL import Image

from engine.session import Session
from nodes.diffusion.original_layout import unet_to_original, vae_to_original
from nodes.diffusion.tiny_sd_upscale import TINY_X4_NAME, save_tiny_x4_model
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

PROMPT = "a red circle at the top left on a white background"
NEGATIVE = "blurry"
STEPS = 6
TOL = 1e-4


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = x / (w - 1), y / (h - 1)
    cx, cy = np.random.default_rng(seed).uniform(0.3, 0.7, 2)
    arr = np.stack([x, y, 1 - x * y], axis=-1)
    arr[(x - cx) ** 2 + (y - cy) ** 2 < 0.05] = (0.9, 0.1, 0.1)
    return Image.fromarray((arr * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def x4_paths(models_dir) -> dict[str, Path]:
    return save_tiny_x4_model(models_dir / "checkpoints")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / "input").mkdir()
    picture((16, 16)).save(home / "input" / "small.png")
    picture((24, 16), 1).save(home / "input" / "wide.png")
    return home


@pytest.fixture(scope="module")
def session(models_dir, x4_paths, home):
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def pipe(x4_paths):
    pipe = diffusers.StableDiffusionUpscalePipeline.from_pretrained(
        x4_paths["diffusers"], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference(pipe, image: Image.Image, *, noise_level: int, seed: int = 3,
              cfg: float = 7.5) -> np.ndarray:
    """The pipeline's image, given the sampler's initial noise as ``latents`` (the pipeline
    draws the low-res image's noise first from its generator, as the node does). At level
    0 its ``add_noise`` is skipped: the pipeline would still noise at DDPM timestep 0
    (1 %), ComfyUI (and the node) use the image as it is."""
    w, h = image.size
    latents = torch.randn((1, 4, h, w), generator=torch.Generator("cpu").manual_seed(seed))
    add_noise = pipe.low_res_scheduler.add_noise
    if noise_level == 0:
        pipe.low_res_scheduler.add_noise = lambda sample, noise, t: sample
    try:
        return pipe(PROMPT, image=image, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                    guidance_scale=cfg, noise_level=noise_level, latents=latents,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images
    finally:
        pipe.low_res_scheduler.add_noise = add_noise


def graph_prompt(*, ckpt: str = TINY_X4_NAME, image: str = "small.png", seed: int = 3,
                 cfg: float = 7.5, scale_ratio: float = 4.0, noise_augmentation: float = 0.0,
                 sag: bool = False, sega: bool = False, conditioning: bool = True) -> dict:
    prompt: dict = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["ckpt", 1]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
    }
    model, pos, neg = ["ckpt", 0], ["pos", 0], ["neg", 0]
    if conditioning:
        prompt["up"] = {"class_type": "SD_4XUpscale_Conditioning", "inputs": {
            "images": ["img", 0], "positive": pos, "negative": neg,
            "scale_ratio": scale_ratio, "noise_augmentation": noise_augmentation}}
        pos, neg, latent = ["up", 0], ["up", 1], ["up", 2]
    else:
        prompt["empty"] = {"class_type": "EmptyLatentImage",
                           "inputs": {"width": 64, "height": 64, "batch_size": 1}}
        latent = ["empty", 0]
    if sag:
        prompt["sag"] = {"class_type": "SelfAttentionGuidance",
                         "inputs": {"model": model, "scale": 0.75, "blur_sigma": 1.0}}
        model = ["sag", 0]
    if sega:
        prompt["concept"] = {"class_type": "SEGAConcept", "inputs": {
            "clip": ["ckpt", 1], "text": "a blue square", "scale": 6.0, "warmup_steps": 1}}
        prompt["sega"] = {"class_type": "ApplySEGA",
                          "inputs": {"model": model, "concepts": ["concept", 0]}}
        model = ["sega", 0]
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": STEPS, "cfg": cfg, "sampler_name": "ddim",
        "scheduler": "normal", "positive": pos, "negative": neg, "latent_image": latent,
        "denoise": 1.0}}
    prompt["decode"] = {"class_type": "VAEDecode",
                        "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    prompt["capture"] = {"class_type": "TestCapture", "inputs": {"value": ["decode", 0]}}
    return prompt


def run_capture(session, prompt, node: str = "decode", output: int = 0) -> torch.Tensor:
    key = uuid.uuid4().hex
    prompt["capture"]["inputs"].update(value=[node, output], key=key)
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key)


# --- parity with the pipeline ----------------------------------------------------------------

@pytest.mark.parametrize(("single", "image", "augmentation", "cfg"), [
    (False, "small.png", 0.0, 7.5),
    (True, "wide.png", 0.0, 7.5),
    (False, "wide.png", 0.2, 9.0),
    (True, "small.png", 0.5, 1.0),
])
def test_matches_pipeline(session, pipe, home, single, image, augmentation, cfg):
    ckpt = f"{TINY_X4_NAME}.safetensors" if single else TINY_X4_NAME
    ours = run_capture(session, graph_prompt(ckpt=ckpt, image=image, cfg=cfg,
                                             noise_augmentation=augmentation)).numpy()
    level = round(350 * augmentation)
    ref = reference(pipe, Image.open(home / "input" / image), noise_level=level, cfg=cfg)
    w, h = Image.open(home / "input" / image).size
    assert ours.shape == ref.shape == (1, 4 * h, 4 * w, 3)
    diff = float(np.abs(ours - ref).max())
    print(f"x4 single={single} {image} aug={augmentation} cfg={cfg}: {diff:.2e}")
    assert diff <= TOL


def test_image_and_noise_level_steer_the_output(session):
    base = run_capture(session, graph_prompt())
    other = run_capture(session, graph_prompt(image="wide.png", scale_ratio=4.0))
    noised = run_capture(session, graph_prompt(noise_augmentation=0.3))
    assert base.shape == (1, 64, 64, 3) and other.shape == (1, 64, 96, 3)
    assert float((base - noised).abs().max()) > 1e-3


def test_scale_ratio_sizes_as_comfyui(session):
    """Output side round(side · ratio); the latent a quarter of it (floor)."""
    latent = run_capture(session, graph_prompt(image="wide.png", scale_ratio=2.0), "up", 2)
    assert tuple(latent.samples.shape) == (1, 4, 8, 12)
    image = run_capture(session, graph_prompt(image="wide.png", scale_ratio=2.0))
    assert image.shape == (1, 32, 48, 3)


def test_combines_with_sag_and_sega(session):
    """SAG's own UNet pass and SEGA's concept rows get the image channels and labels."""
    plain = run_capture(session, graph_prompt())
    both = run_capture(session, graph_prompt(sag=True, sega=True))
    assert both.shape == plain.shape and torch.isfinite(both).all()
    assert float((both - plain).abs().max()) > 1e-4


# --- errors ------------------------------------------------------------------------------------

def test_not_an_upscaler_is_a_clear_error(session):
    prompt = graph_prompt(ckpt="steerflow-tiny")
    message = run_error(session, prompt)
    assert "SD_4XUpscale_Conditioning needs the Stable Diffusion x4 upscaler" in message


def test_upscaler_without_the_node_says_which_node(session):
    message = run_error(session, graph_prompt(conditioning=False))
    assert "x4 upscaler" in message and "SD_4XUpscale_Conditioning" in message


def test_too_large_output_is_refused(session):
    prompt = graph_prompt(scale_ratio=10.0)
    prompt["img"] = {"class_type": "EmptyImage", "inputs": {
        "width": 1700, "height": 40, "batch_size": 1, "color": 0}}
    message = run_error(session, prompt)
    assert "17000x400 px output" in message and "lower scale_ratio" in message


def test_tiny_scale_is_refused(session):
    message = run_error(session, graph_prompt(scale_ratio=0.1))
    assert "scale_ratio" in message


# --- detection of the released single file ----------------------------------------------------

def test_released_layout_is_detected():
    """Keys and shapes of x4-upscaler-ema.safetensors (built on the meta device from the
    shipped configs) pick the shipped x4 configs; SD 2.1's layout does not."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from nodes.diffusion.loading import family_configs, original_configs
    from nodes.diffusion.sd_upscale import CONFIG_DIR, is_x4_layout, x4_configs

    def layout(configs: dict) -> dict[str, tuple[int, ...]]:
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(configs["unet"])
            vae = AutoencoderKL.from_config(configs["vae"])
        shapes = {k: tuple(v.shape) for k, v in
                  unet_to_original(unet.state_dict(), dict(unet.config)).items()}
        shapes.update({k: tuple(v.shape) for k, v in
                       vae_to_original(vae.state_dict(), dict(vae.config)).items()})
        shapes["cond_stage_model.model.token_embedding.weight"] = (49408, 1024)
        return shapes

    x4 = layout(x4_configs())
    assert x4["model.diffusion_model.input_blocks.0.0.weight"][1] == 7
    assert x4["model.diffusion_model.label_emb.weight"] == (1000, 1024)
    assert is_x4_layout(x4)
    configs, detected = original_configs(x4)
    assert detected and configs["family"] == "sd2"
    assert configs["vae"]["scaling_factor"] == 0.08333
    assert configs["scheduler"]["prediction_type"] == "v_prediction"
    assert configs["unet"]["num_class_embeds"] == 1000
    assert (CONFIG_DIR / "low_res_scheduler" / "scheduler_config.json").is_file()
    assert not is_x4_layout(layout(family_configs("sd2")))


def test_released_layout_converts_to_the_shipped_configs():
    """diffusers' converters map every UNet and VAE key of the released layout onto models
    built from the shipped configs (the cross-attention-only blocks, the class table)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    from nodes.diffusion.sd_upscale import x4_configs

    configs = x4_configs()
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
    original = unet_to_original(unet.state_dict(), dict(unet.config))
    original.update(vae_to_original(vae.state_dict(), dict(vae.config)))
    unet_keys = set(convert_ldm_unet_checkpoint(original, configs["unet"]))
    vae_keys = set(convert_ldm_vae_checkpoint(original, configs["vae"]))
    assert unet_keys == set(unet.state_dict())
    assert vae_keys == set(vae.state_dict())
    assert unet.class_embedding.weight.shape == (1000, 1024)
    assert unet.down_blocks[1].attentions[0].transformer_blocks[0].only_cross_attention
