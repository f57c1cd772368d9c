"""Live previews: a latent→RGB map fitted per VAE reads like the decoded image."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from nodes.diffusion import preview


@pytest.fixture(scope="module")
def shapes_vae():
    from nodes.diffusion.builtin_models import SHAPES_NAME, shipped_weights
    from nodes.diffusion.loading import load_components

    if not shipped_weights(SHAPES_NAME).is_file():
        pytest.skip("the default model's weights are not shipped")
    return load_components(shipped_weights(SHAPES_NAME)).vae


def _scene() -> torch.Tensor:
    """A red disc and a blue square on white, ``[1, 3, 64, 64]`` in [0, 1]."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((6, 6, 30, 30), fill=(220, 30, 30))
    draw.rectangle((34, 30, 58, 58), fill=(30, 40, 220))
    return torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None].float() / 255


def _error(encoder, image: torch.Tensor, **kw) -> float:
    with torch.no_grad():
        latents = encoder.encode(image * 2 - 1).latent_dist.mean * encoder.config.scaling_factor
    shown = preview.latent_preview(latents, "sd1", **kw)
    down = image.shape[-1] // latents.shape[-1]
    small = shown.resize((latents.shape[-1], latents.shape[-2]))  # back to one pixel per latent
    want = torch.nn.functional.avg_pool2d(image, down)[0].permute(1, 2, 0).numpy()
    return float(np.abs(np.asarray(small, dtype=np.float32) / 255 - want).mean())


def test_fitted_map_reads_like_the_image_and_is_cached(shapes_vae):
    start = time.perf_counter()
    w = preview.latent_rgb_map(shapes_vae)
    fit_s = time.perf_counter() - start
    assert w.shape == (preview.feature_count(shapes_vae.config.latent_channels), 3)
    assert preview.latent_rgb_map(shapes_vae) is w  # cached per VAE
    scene = _scene()
    fitted = _error(shapes_vae, scene, vae=shapes_vae)
    constants = _error(shapes_vae, scene)  # SD 1.x's map: the old confetti on this 4× VAE
    print(f"fit {fit_s:.2f} s; mean |error| fitted {fitted:.3f}, SD 1.x constants {constants:.3f}")
    assert fitted < 0.12
    assert fitted < constants / 2


def test_muted_backgrounds_keep_their_colour(shapes_vae):
    """The default model's slate, grey and beige backgrounds: a linear map drew them lime
    and pink (41 of 255 off at worst); the channels' products bring that under 30."""
    worst = 0
    for rgb in ((75, 81, 102), (128, 128, 128), (220, 200, 170), (30, 30, 30)):
        image = torch.tensor(rgb, dtype=torch.float32).div(255)[None, :, None, None]
        worst = max(worst, _error(shapes_vae, image.expand(1, 3, 64, 64).contiguous(),
                                  vae=shapes_vae))
    assert worst * 255 < 30, worst * 255


def test_the_sampler_finds_the_vae_through_its_unet(shapes_vae):
    unet = torch.nn.Linear(1, 1)  # any object the loader would pair with the VAE
    preview.link_vae(unet, shapes_vae)
    scene = _scene()
    direct = _error(shapes_vae, scene, vae=shapes_vae)
    assert _error(shapes_vae, scene, unet=unet) == pytest.approx(direct)


def test_unknown_vae_falls_back_without_failing():
    latents = torch.randn(1, 4, 8, 8)
    assert preview.latent_preview(latents).size == (64, 64)  # scaled up 8x
    assert preview.latent_preview(torch.randn(1, 16, 8, 8)).mode == "RGB"  # 16 channels: normalised


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_live_previews_show_the_denoised_estimate(tmp_path, sampler):
    """Each step's preview is x̂₀ (as ComfyUI's), not the noisy latents: from the first
    steps on it already reads like the final image (σ-space and VP samplers alike)."""
    from engine.session import Session

    session = Session(tmp_path, device="cpu")  # installs the default model
    prompt = {
        "c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-shapes"}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {
            "text": "a large red circle in the center on a white background", "clip": ["c", 1]}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["c", 1]}},
        "l": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                          "vae": ["c", 2]}},
        "k": {"class_type": "KSampler", "inputs": {
            "model": ["c", 0], "seed": 3, "steps": 10, "cfg": 7.5, "sampler_name": sampler,
            "scheduler": "normal", "positive": ["p", 0], "negative": ["n", 0],
            "latent_image": ["l", 0], "denoise": 1.0}},
        "d": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["c", 2]}},
        "s": {"class_type": "SaveImage", "inputs": {"images": ["d", 0], "filename_prefix": "p"}},
    }
    result = session.run(prompt, keep_events=True, extra={"preview": True})
    assert result.ok, result.run.error
    shown = [np.asarray(d["image"].convert("RGB"), dtype=np.float32) / 255
             for name, d in result.events if name == "preview" and d.get("node") == "k"]
    assert len(shown) == 10
    final = shown[-1]
    # a third of the way in, the preview is already close to the end (the noisy latents'
    # preview is confetti: far off); the white background reads white
    assert np.abs(shown[3] - final).mean() < 0.1
    assert shown[3].mean() > 0.7
