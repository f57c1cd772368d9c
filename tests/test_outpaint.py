"""Outpainting: Pad Image for Outpainting makes ComfyUI's canvas and feathered mask, and the
padded picture through the inpainting nodes equals diffusers' StableDiffusionInpaintPipeline
(4-channel UNet and 9-channel inpainting UNet) on the padded image and mask."""

from __future__ import annotations

import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from engine.session import Session, Workflow
from engine.validation import PromptValidationError
from nodes.diffusion.schedulers import SAMPLERS
from tests.conftest import INPAINT_NAME
from tests.graph_nodes import CAPTURED, registry_with_capture

PROMPT = "a red circle at the top left on a white background"
NEGATIVE = "blurry"
STEPS = 6
TOL = 1e-4
WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "outpaint.json"


def sample_picture(height: int = 64, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / 63
    arr = np.stack([x, y, 1 - x * y], axis=-1)
    arr[(x - 0.3) ** 2 + (y - 0.35) ** 2 < 0.04] = (0.9, 0.1, 0.1)
    return (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)


def comfy_rule(height: int, width: int, left: int, top: int, right: int, bottom: int,
               feathering: int) -> np.ndarray:
    """The outpainting mask computed pixel by pixel from ComfyUI's rule (distance to each
    padded side, 0 from a top/left edge and 1 from a bottom/right one; ((f - d) / f)²)."""
    mask = np.ones((height + top + bottom, width + left + right), np.float32)
    inner = np.zeros((height, width), np.float32)
    if feathering > 0 and 2 * feathering < height and 2 * feathering < width:
        for i in range(height):
            for j in range(width):
                d = min(i if top else height, height - i if bottom else height,
                        j if left else width, width - j if right else width)
                if d < feathering:
                    inner[i, j] = ((feathering - d) / feathering) ** 2
    mask[top:top + height, left:left + width] = inner
    return mask


def pad(image: torch.Tensor, **sides: int) -> tuple[torch.Tensor, torch.Tensor]:
    from nodes.inpaint import ImagePadForOutpaint

    inputs = {"left": 0, "top": 0, "right": 0, "bottom": 0, "feathering": 0, **sides}
    return ImagePadForOutpaint(image=image, **inputs).execute(None)


# --- the canvas and the mask -----------------------------------------------------------------

def test_canvas_and_mask_by_hand():
    image = torch.rand(2, 20, 24, 3)
    canvas, mask = pad(image, left=8, right=16, bottom=8, feathering=4)
    assert canvas.shape == (2, 28, 48, 3) and mask.shape == (1, 28, 48)
    assert torch.equal(canvas[:, :20, 8:32], image)
    grey = torch.ones_like(canvas, dtype=torch.bool)
    grey[:, :20, 8:32] = False
    assert (canvas[grey] == 0.5).all()
    assert (mask[0, 20:] == 1).all() and (mask[0, :, :8] == 1).all()
    assert (mask[0, :, 32:] == 1).all()
    inner = mask[0, :20, 8:32]
    # left is padded: column 0 is at distance 0, then (3/4)², (2/4)², (1/4)², 0
    assert torch.allclose(inner[10, :5], torch.tensor([1.0, 0.5625, 0.25, 0.0625, 0.0]))
    # right and bottom are padded: the last column/row is at distance 1 (ComfyUI's count)
    assert torch.allclose(inner[10, -4:], torch.tensor([0.0, 0.0625, 0.25, 0.5625]))
    assert torch.allclose(inner[-4:, 12], torch.tensor([0.0, 0.0625, 0.25, 0.5625]))
    # the top is not padded: no feathering along it
    assert inner[0, 12] == 0
    assert torch.isclose(inner[19, 0], torch.tensor(1.0))  # corner: nearest side wins


@pytest.mark.parametrize(("size", "sides"), [
    ((20, 24), dict(left=8, top=0, right=16, bottom=8, feathering=4)),
    ((17, 30), dict(left=0, top=8, right=0, bottom=0, feathering=8)),
    ((16, 16), dict(left=8, top=8, right=8, bottom=8, feathering=8)),  # 2f = side: off
    ((12, 40), dict(left=0, top=0, right=0, bottom=0, feathering=3)),  # no padding
    ((33, 21), dict(left=24, top=16, right=8, bottom=0, feathering=10)),
])
def test_mask_follows_comfyui_rule(size, sides):
    _, mask = pad(torch.rand(1, *size, 3), **sides)
    expected = comfy_rule(*size, **sides)
    assert mask.shape == (1, *expected.shape)
    assert np.array_equal(mask[0].numpy(), expected)


def test_channels_and_device_follow_the_image():
    canvas, _ = pad(torch.rand(1, 8, 8, 4), right=8)
    assert canvas.shape == (1, 8, 16, 4) and canvas.dtype == torch.float32
    assert (canvas[0, :, 8:] == 0.5).all()


# --- through the inpainting paths ------------------------------------------------------------

@pytest.fixture(scope="module")
def session(inpaint_models, tmp_path_factory):
    home = tmp_path_factory.mktemp("outpaint_home")
    (home / "input").mkdir()
    Image.fromarray(sample_picture()).save(home / "input" / "picture.png")
    Image.fromarray(sample_picture(60, 60)).save(home / "input" / "odd.png")
    return Session(home, models_dir=inpaint_models, device="cpu",
                   registry=registry_with_capture())


@torch.no_grad()
def vae_latents(vae, image: torch.Tensor) -> torch.Tensor:
    x = image.permute(0, 3, 1, 2) * 2 - 1
    return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor


def padded_inputs(sides: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The padded picture, its mask, and the picture with the masked pixels grey."""
    picture = torch.from_numpy(sample_picture().astype(np.float32) / 255.0)[None]
    canvas, mask = pad(picture, **sides)
    greyed = torch.where(mask[..., None] >= 0.5, 0.5, canvas)
    return canvas, mask, greyed


def reference(pipe, sampler: str, sides: dict, nine: bool) -> np.ndarray:
    """The pipeline given the padded image and the (soft) mask, as latents (no VAE
    sampling): it binarises the mask at 0.5 itself."""
    class_name, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.base_scheduler_config,
                                                                **extra)
    canvas, mask, greyed = padded_inputs(sides)
    masked = vae_latents(pipe.vae, greyed)
    image = vae_latents(pipe.vae, canvas) if nine else masked
    return pipe(PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask[None],
                masked_image_latents=masked, height=canvas.shape[1], width=canvas.shape[2],
                strength=1.0, num_inference_steps=STEPS, guidance_scale=7.5, output_type="np",
                generator=torch.Generator("cpu").manual_seed(9)).images


def graph(sides: dict, *, nine: bool = False, sampler: str = "ddim", encoder: str = "for_inpaint",
          image: str = "picture.png", grow: int = 0) -> dict:
    ckpt = INPAINT_NAME if nine else "steerflow-tiny"
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": {"class_type": "ImagePadForOutpaint", "inputs": {
            "image": ["4", 0], "left": 0, "top": 0, "right": 0, "bottom": 0, "feathering": 0,
            **sides}},
    }
    positive, negative = ["2", 0], ["3", 0]
    if encoder == "for_inpaint":
        prompt["6"] = {"class_type": "VAEEncodeForInpaint", "inputs": {
            "pixels": ["5", 0], "vae": ["1", 2], "mask": ["5", 1], "grow_mask_by": grow}}
        latent = ["6", 0]
    elif encoder == "model_conditioning":
        prompt["6"] = {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": positive, "negative": negative, "vae": ["1", 2], "pixels": ["5", 0],
            "mask": ["5", 1], "noise_mask": False}}
        positive, negative, latent = ["6", 0], ["6", 1], ["6", 2]
    else:  # VAE Encode + Set Latent Noise Mask
        prompt["6"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["5", 0], "vae": ["1", 2]}}
        prompt["7"] = {"class_type": "SetLatentNoiseMask",
                       "inputs": {"samples": ["6", 0], "mask": ["5", 1]}}
        latent = ["7", 0]
    prompt["20"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 9, "steps": STEPS, "cfg": 7.5, "sampler_name": sampler,
        "scheduler": "normal", "positive": positive, "negative": negative,
        "latent_image": latent, "denoise": 1.0}}
    prompt["21"] = {"class_type": "VAEDecode", "inputs": {"samples": ["20", 0], "vae": ["1", 2]}}
    for node, value in (("22", ["21", 0]), ("23", ["20", 0]), ("24", latent)):
        prompt[node] = {"class_type": "TestCapture",
                        "inputs": {"value": value, "key": uuid.uuid4().hex}}
    return prompt


def run(session, prompt) -> tuple[np.ndarray, torch.Tensor, object]:
    result = session.run(prompt)
    assert result.ok, result.run.error
    keys = [prompt[n]["inputs"]["key"] for n in ("22", "23", "24")]
    image, out, latent = (CAPTURED.pop(k) for k in keys)
    return image.cpu().numpy(), out.samples, latent



#: 64x64 → 128x64 with a soft seam inside the picture whose values on the latent grid
#: (every 8th pixel) are 0.51 and 0.18: one side of 0.5 each
FEATHERED = dict(right=64, feathering=28)


@pytest.mark.parametrize(("sampler", "sides"), [
    ("ddim", FEATHERED), ("euler", dict(left=16, top=8, bottom=24, feathering=4))])
def test_four_channel_outpaint_matches_pipeline(session, pipe4, sampler, sides):
    """VAE Encode (for Inpainting), no growth, on a 4-channel UNet: the pipeline given the
    greyed padded picture and the soft mask (which it binarises, as the node now does)."""
    ours, _, latent = run(session, graph(sides, sampler=sampler))
    _, mask, _ = padded_inputs(sides)
    grid = mask[0, ::8, ::8]
    assert sides is not FEATHERED or bool(((grid > 0) & (grid < 1)).any())
    ref = reference(pipe4, sampler, sides, nine=False)
    assert ours.shape == ref.shape and ours.shape[1:3] != (64, 64)
    diff = float(np.abs(ours - ref).max())
    print(f"4-channel outpaint {sampler} {sides}: max abs diff {diff:.2e}")
    assert diff <= TOL
    assert set(latent.noise_mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_nine_channel_outpaint_matches_pipeline(session, pipe9, sampler):
    ours, _, latent = run(session, graph(FEATHERED, nine=True, sampler=sampler,
                                         encoder="model_conditioning"))
    ref = reference(pipe9, sampler, FEATHERED, nine=True)
    diff = float(np.abs(ours - ref).max())
    print(f"9-channel outpaint {sampler}: max abs diff {diff:.2e}")
    assert ours.shape == (1, 64, 128, 3) and diff <= TOL
    assert set(latent.inpaint.mask.unique().tolist()) == {0.0, 1.0}  # binarised for the UNet


def test_vae_encode_for_inpaint_repaints_every_greyed_pixel(session):
    """A soft mask is rounded before growing (ComfyUI): a noise mask below 1 where the latent
    is grey would blend the grey back in at the seam."""
    from nodes.diffusion.masking import binarize

    _, mask, _ = padded_inputs(FEATHERED)
    assert bool(((mask > 0) & (mask < 0.5)).any()) and bool(((mask >= 0.5) & (mask < 1)).any())
    _, out, latent = run(session, graph(FEATHERED, grow=6))
    noise = latent.noise_mask[0, 0]
    assert set(noise.unique().tolist()) == {0.0, 1.0}
    assert bool((noise[binarize(mask[0]) == 1] == 1).all())  # every greyed pixel repainted
    assert noise.sum() > binarize(mask).sum()  # and grown
    keep = (noise[::8, ::8] == 0)[None, None].expand_as(out)
    assert torch.equal(out[keep], latent.samples[keep])  # the rest is kept exactly


def test_soft_noise_mask_cross_fades_the_seam(session):
    """VAE Encode + Set Latent Noise Mask keeps the soft mask: latents under values between
    0 and 1 are a blend of the picture's and the new ones (ComfyUI's behaviour)."""
    sides = dict(right=64, feathering=24)
    _, out, latent = run(session, graph(sides, encoder="noise_mask"))
    grid = latent.noise_mask[0, 0, ::8, ::8]
    assert torch.equal(out[..., grid == 0], latent.samples[..., grid == 0])
    partial = (grid > 0) & (grid < 1)
    assert partial.any()
    assert not torch.allclose(out[..., partial], latent.samples[..., partial])


# --- bad input -------------------------------------------------------------------------------

def test_bounds_are_validation_errors(session):
    prompt = graph({"right": 16384, "left": 8})
    with pytest.raises(PromptValidationError, match="at most 16384 pixels a side"):
        session.validate(prompt)
    with pytest.raises(PromptValidationError):  # ComfyUI's steps of 8
        session.validate(graph({"right": 5}))
    with pytest.raises(PromptValidationError):
        session.validate(graph({"bottom": -8}))


def test_padded_size_past_the_largest_image_is_an_error():
    from nodes.inpaint import ImagePadForOutpaint

    with pytest.raises(ValueError, match="16392x8; an image has at most 16384"):
        ImagePadForOutpaint(image=torch.zeros(1, 8, 16376, 3), left=0, top=0, right=16,
                            bottom=0, feathering=0).execute(None)


def test_a_size_the_vae_cannot_encode_is_cropped_about_its_centre_with_a_warning(session):
    """As ComfyUI's inpainting encoders: the image and its mask are cut to a multiple of
    the VAE's downscale about the centre; a warning says the masked border was cut."""
    for extra in ({}, {"nine": True, "encoder": "model_conditioning"}):
        result = session.run(graph({"right": 8}, image="odd.png", **extra), keep_events=True)
        assert result.ok, result.run.error
        warnings = [d["message"] for name, d in result.events if name == "node_warning"]
        assert any("68x60, not a multiple of the VAE's downscale 8" in w
                   and "cropped to 64x56 about its centre" in w for w in warnings), warnings


# --- the example -----------------------------------------------------------------------------

def test_workflow_runs(tmp_path):
    """The example on the default model (set up fresh, as on a first run), a few steps."""
    wf = Workflow.load(WORKFLOW)
    wf.set("3.steps", 3)
    session = Session(tmp_path, device="cpu")
    session.validate(wf)
    result = session.run(wf)
    assert result.ok, result.run.error
    (png,) = result.image_paths
    assert Image.open(png).size == (96, 64)
