"""Inpainting through the graph equals diffusers' StableDiffusionInpaintPipeline
(4-channel UNet with a latent noise mask, and a 9-channel inpainting UNet), and the
mask nodes do what they say."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from engine import Input, Node, Output
from engine.session import Session, Workflow
from engine.validation import PromptValidationError
from nodes.diffusion.schedulers import SAMPLERS
from tests.conftest import INPAINT_NAME
from tests.graph_nodes import CAPTURED, registry_with_capture

PROMPT = "a red circle at the top left on a white background"
NEGATIVE = "blurry"
SIZE = 64
STEPS = 8
TOL = 1e-4
WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "inpaint.json"


def sample_picture(size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    arr = np.stack([x, y, 1 - x * y], axis=-1)
    arr[(x - 0.3) ** 2 + (y - 0.35) ** 2 < 0.04] = (0.9, 0.1, 0.1)
    return (arr * 255).round().astype(np.uint8)


def box_mask(size: int = SIZE) -> np.ndarray:
    """1 (repaint) in a 24x32 box at the top right, 0 elsewhere."""
    mask = np.zeros((size, size), np.float32)
    mask[8:32, 28:60] = 1.0
    return mask


def blurred_mask() -> np.ndarray:
    """The box with soft, blurred edges (values strictly between 0 and 1 at the seams)."""
    from nodes.masks import gaussian_blur

    return gaussian_blur(torch.from_numpy(box_mask())[None], 6)[0].numpy()


def as_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.astype(np.float32) / 255.0)[None]


@torch.no_grad()
def vae_latents(vae, image: torch.Tensor) -> torch.Tensor:
    x = image.permute(0, 3, 1, 2) * 2 - 1
    return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor


@torch.no_grad()
def vae_image(vae, latents: torch.Tensor) -> np.ndarray:
    image = vae.decode(latents / vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / "input").mkdir()
    Image.fromarray(sample_picture()).save(home / "input" / "picture.png")
    for name, mask in (("mask.png", box_mask()), ("soft.png", blurred_mask())):
        Image.fromarray((mask * 255).round().astype(np.uint8)).save(home / "input" / name)
    Image.fromarray((box_mask()[:48] * 255).astype(np.uint8)).save(home / "input" / "short.png")
    rgba = np.dstack([sample_picture(), ((1 - box_mask()) * 255).astype(np.uint8)])
    Image.fromarray(rgba).save(home / "input" / "hole.png")
    return home


class HandInpaint(Node):
    """Test node: the LATENT with an InpaintCondition built by hand from its own noise mask
    and samples (what ComfyUI gives a 9-channel UNet for VAE Encode + Set Latent Noise Mask)."""

    TYPE = "TestHandInpaint"
    OUTPUTS = (Output("LATENT"),)
    samples: Any = Input(type="LATENT")

    def execute(self, ctx):
        from nodes.diffusion.handles import InpaintCondition
        from nodes.diffusion.masking import binarize, mask_to_latent

        latent = self.samples
        mask = binarize(mask_to_latent(latent.noise_mask, tuple(latent.samples.shape[-2:])))
        return (replace(latent, inpaint=InpaintCondition(mask, latent.samples)),)


@pytest.fixture(scope="module")
def session(inpaint_models, home):
    registry = registry_with_capture()
    registry.register(HandInpaint)
    return Session(home, models_dir=inpaint_models, device="cpu", registry=registry)


def reference(pipe, sampler: str, strength: float, mask: np.ndarray,
              masked_latents: torch.Tensor | None = None) -> np.ndarray:
    """The pipeline on latents (no VAE sampling): ``image`` is the clean latent and
    ``masked_image_latents`` the greyed image's (a stand-in for a 4-channel UNet)."""
    class_name, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.base_scheduler_config,
                                                                **extra)
    latents = vae_latents(pipe.vae, as_tensor(sample_picture()))
    return pipe(PROMPT, negative_prompt=NEGATIVE, image=latents,
                mask_image=torch.from_numpy(mask)[None, None],
                masked_image_latents=latents if masked_latents is None else masked_latents,
                height=SIZE, width=SIZE, strength=strength, num_inference_steps=STEPS,
                guidance_scale=7.5, output_type="np",
                generator=torch.Generator("cpu").manual_seed(9)).images


def base_prompt(ckpt: str = "steerflow-tiny", mask_file: str = "mask.png") -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "picture.png"}},
        "5": {"class_type": "LoadImageMask", "inputs": {"image": mask_file, "channel": "red"}},
    }


def sampler_nodes(prompt: dict, latent: list, sampler: str, denoise: float,
                  positive: list | None = None, negative: list | None = None) -> dict:
    prompt["20"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 9, "steps": STEPS, "cfg": 7.5, "sampler_name": sampler,
        "scheduler": "normal", "positive": positive or ["2", 0],
        "negative": negative or ["3", 0], "latent_image": latent, "denoise": denoise}}
    prompt["21"] = {"class_type": "VAEDecode", "inputs": {"samples": ["20", 0],
                                                          "vae": ["1", 2]}}
    prompt["22"] = {"class_type": "TestCapture", "inputs": {"value": ["21", 0],
                                                            "key": uuid.uuid4().hex}}
    prompt["23"] = {"class_type": "TestCapture", "inputs": {"value": ["20", 0],
                                                            "key": uuid.uuid4().hex}}
    return prompt


def noise_mask_prompt(sampler: str, denoise: float, mask_node: list | None = None,
                      mask_file: str = "mask.png") -> dict:
    prompt = base_prompt(mask_file=mask_file)
    prompt["6"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}}
    prompt["7"] = {"class_type": "SetLatentNoiseMask",
                   "inputs": {"samples": ["6", 0], "mask": mask_node or ["5", 0]}}
    return sampler_nodes(prompt, ["7", 0], sampler, denoise)


def model_conditioning_prompt(sampler: str, denoise: float, noise_mask: bool) -> dict:
    prompt = base_prompt(INPAINT_NAME)
    prompt["6"] = {"class_type": "InpaintModelConditioning", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": ["4", 0],
        "mask": ["5", 0], "noise_mask": noise_mask}}
    return sampler_nodes(prompt, ["6", 2], sampler, denoise, ["6", 0], ["6", 1])


def run(session, prompt) -> tuple[np.ndarray, torch.Tensor]:
    result = session.run(prompt)
    assert result.ok, result.run.error
    image = CAPTURED.pop(prompt["22"]["inputs"]["key"]).cpu().numpy()
    return image, CAPTURED.pop(prompt["23"]["inputs"]["key"]).samples



# --- parity -------------------------------------------------------------------------


@pytest.mark.parametrize(("sampler", "strength"), [
    ("ddim", 1.0), ("euler", 1.0), ("ddim", 0.6), ("euler", 0.5)])
def test_noise_mask_matches_inpaint_pipeline_4_channel(session, pipe4, sampler, strength):
    ours, _ = run(session, noise_mask_prompt(sampler, strength))
    ref = reference(pipe4, sampler, strength, box_mask())
    diff = float(np.abs(ours - ref).max())
    print(f"4-channel inpaint {sampler} strength {strength}: max abs diff {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize(("sampler", "strength"), [("ddim", 1.0), ("euler", 1.0),
                                                   ("ddim", 0.6)])
def test_inpaint_model_matches_inpaint_pipeline_9_channel(session, pipe9, sampler, strength):
    ours, _ = run(session, model_conditioning_prompt(sampler, strength, noise_mask=False))
    picture = as_tensor(sample_picture())
    grey = torch.where(torch.from_numpy(box_mask())[None, ..., None] >= 0.5, 0.5, picture)
    ref = reference(pipe9, sampler, strength, box_mask(), vae_latents(pipe9.vae, grey))
    diff = float(np.abs(ours - ref).max())
    print(f"9-channel inpaint {sampler} strength {strength}: max abs diff {diff:.2e}")
    assert diff <= TOL


def test_soft_mask_thresholded_matches_pipeline(session, pipe4):
    """diffusers binarises a soft mask at 0.5; ThresholdMask in front does the same."""
    prompt = noise_mask_prompt("ddim", 1.0, ["8", 0], mask_file="soft.png")
    prompt["8"] = {"class_type": "ThresholdMask", "inputs": {"mask": ["5", 0], "value": 0.499}}
    ours, _ = run(session, prompt)
    soft = np.asarray(Image.open(Path(session.env.resolve("input", "soft.png"))),
                      dtype=np.float32) / 255.0
    assert np.mean((soft > 0.01) & (soft < 0.99)) > 0  # really soft
    ref = reference(pipe4, "ddim", 1.0, soft)
    assert float(np.abs(ours - ref).max()) <= TOL


def test_soft_mask_blends_proportionally(session):
    """Without a threshold, latents where the soft mask is between 0 and 1 are a blend."""
    _, hard = run(session, noise_mask_prompt("ddim", 1.0))
    _, soft = run(session, noise_mask_prompt("ddim", 1.0, mask_file="soft.png"))
    _, init = run(session, noise_mask_prompt("ddim", 1.0, mask_file="mask.png") | {
        "20": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 9, "steps": STEPS, "cfg": 7.5, "sampler_name": "ddim",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0],
            "latent_image": ["6", 0], "denoise": 0.0}}})
    grid = torch.from_numpy(blurred_mask())[None, None, ::8, ::8]  # nearest to 8x8
    inside, outside = grid[0, 0] == 1, grid[0, 0] == 0
    assert torch.equal(soft[..., outside], init[..., outside])
    assert torch.allclose(soft[..., inside], hard[..., inside], atol=1e-5)
    partial = (grid[0, 0] > 0.05) & (grid[0, 0] < 0.95)
    assert partial.any()
    assert not torch.allclose(soft[..., partial], init[..., partial])


# --- the unmasked region is kept --------------------------------------------------------


def outside_box(margin: int) -> np.ndarray:
    """Pixels at least ``margin`` away from the box mask."""
    far = np.ones((SIZE, SIZE), bool)
    far[max(8 - margin, 0): 32 + margin, max(28 - margin, 0): 60 + margin] = False
    return far


def test_unmasked_region_is_kept(session, pipe4):
    image, latents = run(session, noise_mask_prompt("euler", 1.0))
    init = vae_latents(pipe4.vae, as_tensor(sample_picture()))
    keep = (torch.from_numpy(box_mask())[None, None, ::8, ::8] == 0).expand_as(init)
    assert torch.equal(latents[keep], init[keep])  # exactly, in latent space
    # In pixels the VAE decoder mixes all latents (the random tiny one has a receptive
    # field as large as the image), so measure against the input's VAE round trip and
    # against the same sampler run without a mask.
    roundtrip = vae_image(pipe4.vae, init)
    plain = base_prompt() | {"6": {"class_type": "VAEEncode",
                                   "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}}}
    free, _ = run(session, sampler_nodes(plain, ["6", 0], "euler", 1.0))
    far = outside_box(8)
    kept = float(np.abs(image - roundtrip)[0][far].mean())
    unmasked = float(np.abs(free - roundtrip)[0][far].mean())
    print(f"8 px outside the mask: mean abs diff to the VAE round trip {kept:.3f} "
          f"(without a mask {unmasked:.3f})")
    assert kept < 0.8 * unmasked


def test_composite_keeps_unmasked_pixels_exactly(session):
    """Pasting the result back through the mask leaves the unmasked pixels untouched."""
    prompt = noise_mask_prompt("euler", 1.0, ["8", 0])
    prompt["8"] = {"class_type": "MaskBlur", "inputs": {"mask": ["5", 0], "radius": 4}}
    prompt["9"] = {"class_type": "ImageCompositeMasked", "inputs": {
        "destination": ["4", 0], "source": ["21", 0], "x": 0, "y": 0,
        "resize_source": False, "mask": ["8", 0]}}
    prompt["22"]["inputs"]["value"] = ["9", 0]
    image, _ = run(session, prompt)
    picture = sample_picture().astype(np.float32) / 255.0
    from nodes.masks import gaussian_blur

    weight = gaussian_blur(torch.from_numpy(box_mask())[None], 4)[0].numpy()
    untouched = weight == 0
    assert untouched.mean() > 0.4
    diff = float(np.abs(image[0] - picture)[untouched].max())
    print(f"composited: max abs diff to the input where the mask is 0: {diff:.1e}")
    assert diff == 0.0
    assert float(np.abs(image[0] - picture)[weight == 1].mean()) > 0.05


def test_vae_encode_for_inpaint_9_channel_keeps_unmasked_latents(session):
    prompt = base_prompt(INPAINT_NAME)
    prompt["6"] = {"class_type": "VAEEncodeForInpaint", "inputs": {
        "pixels": ["4", 0], "vae": ["1", 2], "mask": ["5", 0], "grow_mask_by": 6}}
    prompt["7"] = {"class_type": "TestCapture", "inputs": {"value": ["6", 0], "key": "enc"}}
    _, latents = run(session, sampler_nodes(prompt, ["6", 0], "dpmpp_2m", 1.0))
    encoded = CAPTURED.pop("enc")
    grown = encoded.noise_mask[:, :, ::8, ::8]
    assert grown.sum() > torch.from_numpy(box_mask())[::8, ::8].sum()  # grew
    keep = (grown == 0).expand_as(latents)
    assert torch.equal(latents[keep], encoded.samples[keep])
    assert encoded.inpaint is not None and encoded.inpaint.mask.shape == (1, 1, 8, 8)


# --- errors -------------------------------------------------------------------------------


def test_a_noise_mask_of_another_size_is_stretched_as_comfyui_does(session):
    """ComfyUI's sampler stretches a noise mask of any size over the latent (bilinear);
    a 64x48 mask on a 64x64 picture (8x8 latent) is stretched, with a warning."""
    from nodes.diffusion.handles import Latent
    from nodes.inpaint import SetLatentNoiseMask

    prompt = noise_mask_prompt("ddim", 1.0, mask_file="short.png")
    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    warnings = [d["message"] for n, d in result.events if n == "node_warning"]
    assert any("64x48 mask fits neither the latent (8x8)" in w for w in warnings), warnings

    class Ctx:
        warned: list[str] = []

        def warn(self, message):
            self.warned.append(message)

    mask = torch.rand(1, 48, 64)
    out = SetLatentNoiseMask(samples=Latent(torch.zeros(1, 4, 8, 8)), mask=mask
                             ).execute(Ctx())[0].noise_mask
    want = torch.nn.functional.interpolate(mask[:, None], size=(8, 8), mode="bilinear")
    assert torch.equal(out, want) and len(Ctx.warned) == 1


def test_inpaint_encoders_stretch_a_mask_of_another_size_to_the_image():
    """As ComfyUI's VAEEncodeForInpaint and InpaintModelConditioning (its inpainting
    template scales the image after Load Image and takes the mask straight from it)."""
    from nodes.inpaint import fit_mask_to_image

    mask = torch.zeros(1, 8, 8)
    mask[:, 2:6, 2:6] = 1
    fitted, _, _ = fit_mask_to_image(mask, torch.zeros(1, 16, 16, 3), 8)
    want = torch.nn.functional.interpolate(mask[:, None], size=(16, 16), mode="bilinear")
    assert torch.equal(fitted, want[:, 0])
    assert fitted[0, 6:10, 6:10].eq(1).all() and fitted[0, 0].eq(0).all()


def test_mask_batch_mismatch_is_a_clear_error():
    from nodes.diffusion.handles import Latent
    from nodes.inpaint import SetLatentNoiseMask

    three = Latent(torch.zeros(3, 4, 8, 8))
    with pytest.raises(ValueError, match="batch of 2 but the latent has 3"):
        SetLatentNoiseMask(samples=three, mask=torch.ones(2, SIZE, SIZE)).execute(None)
    with pytest.raises(ValueError, match=r"must be \[B, H, W\]"):
        SetLatentNoiseMask(samples=three, mask=torch.ones(1, 3, SIZE, SIZE)).execute(None)
    one = SetLatentNoiseMask(samples=three, mask=torch.ones(1, SIZE, SIZE)).execute(None)[0]
    assert one.noise_mask.shape == (1, 1, SIZE, SIZE)  # a single mask serves every latent


# --- a 9-channel UNet on a latent without inpainting inputs (as ComfyUI runs it) ---------

WIDE = (80, 48)  # width, height: a non-square picture (10x6 latent)


def wide_inputs(session) -> None:
    """``wide.png`` and its box mask ``wide_mask.png`` (80x48) in the session's input/."""
    width, height = WIDE
    inputs = session.env.folder("input")
    Image.fromarray(sample_picture(width)[:height]).save(inputs / "wide.png")
    mask = np.zeros((height, width), np.uint8)
    mask[8:32, 40:72] = 255
    Image.fromarray(mask).save(inputs / "wide_mask.png")


def nine_channel_noise_mask_prompt(hand_built: bool) -> dict:
    """VAE Encode → Set Latent Noise Mask → KSampler on the 9-channel model (ComfyUI's
    graph for an ``*-inpainting`` checkpoint); ``hand_built`` adds the InpaintCondition."""
    prompt = base_prompt(INPAINT_NAME, mask_file="wide_mask.png")
    prompt["4"]["inputs"]["image"] = "wide.png"
    prompt["6"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}}
    prompt["7"] = {"class_type": "SetLatentNoiseMask",
                   "inputs": {"samples": ["6", 0], "mask": ["5", 0]}}
    latent = ["7", 0]
    if hand_built:
        prompt["8"] = {"class_type": "TestHandInpaint", "inputs": {"samples": ["7", 0]}}
        latent = ["8", 0]
    return sampler_nodes(prompt, latent, "euler", 0.8)


def test_9_channel_model_with_a_noise_mask_uses_it_and_the_latent(session):
    """ComfyUI's ``concat_cond``: the noise mask is the mask channel and the latent itself
    the masked image; the same run as with that InpaintCondition built by hand."""
    wide_inputs(session)
    ours, latents = run(session, nine_channel_noise_mask_prompt(hand_built=False))
    hand, hand_latents = run(session, nine_channel_noise_mask_prompt(hand_built=True))
    assert latents.shape == (1, 4, WIDE[1] // 8, WIDE[0] // 8)
    assert torch.equal(latents, hand_latents) and np.array_equal(ours, hand)


def test_9_channel_txt2img_matches_pipeline_with_an_all_ones_mask(session, pipe9):
    """No noise mask (Empty Latent Image): mask all ones, masked image a grey picture
    encoded with the model's VAE, as diffusers' inpainting pipeline with an all-ones mask."""
    width, height = WIDE
    prompt = base_prompt(INPAINT_NAME)
    prompt["6"] = {"class_type": "EmptyLatentImage",
                   "inputs": {"width": width, "height": height, "batch_size": 1}}
    ours, latents = run(session, sampler_nodes(prompt, ["6", 0], "euler", 1.0))
    assert latents.shape == (1, 4, height // 8, width // 8)
    class_name, extra = SAMPLERS["euler"]
    pipe9.scheduler = getattr(diffusers, class_name).from_config(pipe9.base_scheduler_config,
                                                                 **extra)
    mask = torch.ones(1, 1, height, width)
    # the pipeline's masked image, ``image * (mask < 0.5)``: grey (0 in -1..1) everywhere.
    # Encoded here with the posterior's mode (the pipeline would sample it), as a
    # contiguous NCHW tensor as the pipeline has it: a flat grey picture is a constant
    # map to the VAE's group norms, whose rounding (memory layout) it amplifies.
    picture = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    masked_image = (picture * 2 - 1) * (mask < 0.5)
    with torch.no_grad():
        masked_latents = pipe9.vae.encode(masked_image).latent_dist.mode()
    ref = pipe9(PROMPT, negative_prompt=NEGATIVE,
                image=torch.zeros(1, 4, height // 8, width // 8),  # unused at strength 1
                mask_image=mask,
                masked_image_latents=masked_latents * pipe9.vae.config.scaling_factor,
                height=height, width=width,
                strength=1.0, num_inference_steps=STEPS, guidance_scale=7.5, output_type="np",
                generator=torch.Generator("cpu").manual_seed(9)).images
    diff = float(np.abs(ours - ref).max())
    print(f"9-channel txt2img {width}x{height}: max abs diff {diff:.2e}")
    assert diff <= TOL


def stub_model(in_channels: int = 9):
    from types import SimpleNamespace

    from nodes.diffusion.handles import DiffusionModel

    unet = torch.nn.Linear(1, 1)  # no VAE is linked to it
    unet.config = SimpleNamespace(in_channels=in_channels)
    return DiffusionModel(unet, {})


def test_9_channel_without_a_known_vae_uses_comfyuis_blank_latent():
    from nodes.diffusion.handles import Latent
    from nodes.diffusion.masking import SD_BLANK_LATENT, InpaintConcat, latent_extensions

    (concat,) = latent_extensions(stub_model(), Latent(torch.zeros(2, 4, 6, 10)))
    assert isinstance(concat, InpaintConcat)
    condition = concat.condition
    assert torch.equal(condition.mask, torch.ones(2, 1, 6, 10))
    assert condition.masked_latents.shape == (1, 4, 6, 10)
    assert torch.equal(condition.masked_latents[0, :, 3, 7], torch.tensor(SD_BLANK_LATENT))


def test_9_channel_keeps_the_latents_own_inpaint_condition():
    from nodes.diffusion.handles import InpaintCondition, Latent
    from nodes.diffusion.masking import latent_extensions

    condition = InpaintCondition(torch.ones(1, 1, 6, 10), torch.zeros(1, 4, 6, 10))
    latent = Latent(torch.zeros(1, 4, 6, 10), noise_mask=torch.ones(1, 1, 6, 10),
                    inpaint=condition)
    extensions = latent_extensions(stub_model(), latent)
    assert [type(e).__name__ for e in extensions] == ["NoiseMaskBlend", "InpaintConcat"]
    assert extensions[1].condition is condition


def test_9_channel_model_with_another_latent_is_a_clear_error():
    from nodes.diffusion.handles import Latent
    from nodes.diffusion.masking import latent_extensions

    for latent in (Latent(torch.zeros(1, 8, 6, 10)),
                   Latent(torch.zeros(1, 8, 6, 10), noise_mask=torch.ones(1, 1, 6, 10))):
        with pytest.raises(ValueError, match=r"9-channel inpainting model.*has 8 channels"):
            latent_extensions(stub_model(), latent)


def test_bad_constants_are_validation_errors(session):
    prompt = noise_mask_prompt("ddim", 1.0)
    prompt["5"]["inputs"]["channel"] = "purple"
    with pytest.raises(PromptValidationError):
        session.validate(prompt)
    prompt = noise_mask_prompt("ddim", 1.0, ["8", 0])
    prompt["8"] = {"class_type": "GrowMask", "inputs": {"mask": ["5", 0], "expand": 10**9}}
    with pytest.raises(PromptValidationError):
        session.validate(prompt)


# --- mask nodes ------------------------------------------------------------------------


def node_output(cls, **inputs):
    return cls(**inputs).execute(None)[0]


def test_grow_mask_shapes():
    from nodes.masks import GrowMask

    dot = torch.zeros(1, 9, 9)
    dot[0, 4, 4] = 1
    square = node_output(GrowMask, mask=dot, expand=2, tapered_corners=False)
    diamond = node_output(GrowMask, mask=dot, expand=2, tapered_corners=True)
    assert square.sum() == 25 and square[0, 2:7, 2:7].all()
    assert diamond.sum() == 13 and diamond[0, 2, 4] == 1 and diamond[0, 2, 3] == 0
    assert torch.equal(node_output(GrowMask, mask=square, expand=-2, tapered_corners=False), dot)


def test_feather_and_blur_and_threshold():
    from nodes.masks import FeatherMask, InvertMask, MaskBlur, MaskToImage, ThresholdMask

    ones = torch.ones(1, 8, 10)
    feathered = node_output(FeatherMask, mask=ones, left=4, top=0, right=0, bottom=2)
    assert torch.allclose(feathered[0, 0, :5], torch.tensor([0.25, 0.5, 0.75, 1.0, 1.0]))
    assert torch.allclose(feathered[0, :, 9], torch.tensor([1.0] * 6 + [1.0, 0.5]))
    blurred = node_output(MaskBlur, mask=torch.from_numpy(box_mask())[None], radius=4)
    assert blurred.min() >= 0 and blurred.max() <= 1
    assert 0.3 < float(blurred[0, 20, 27]) < 0.5 < float(blurred[0, 20, 28]) < 0.7  # edge
    hard = node_output(ThresholdMask, mask=blurred, value=0.5)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(node_output(InvertMask, mask=hard), 1 - hard)
    assert node_output(MaskToImage, mask=hard).shape == (1, SIZE, SIZE, 3)


def test_load_image_mask_channels(session):
    prompt = {
        "1": {"class_type": "LoadImageMask", "inputs": {"image": "hole.png", "channel": "alpha"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "red"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "hole.png"}},
        "4": {"class_type": "LoadImageMask", "inputs": {"image": "picture.png",
                                                        "channel": "alpha"}},
    }
    for node in ("1", "2", "4"):
        prompt[f"c{node}"] = {"class_type": "TestCapture",
                              "inputs": {"value": [node, 0], "key": f"mask{node}"}}
    prompt["c3"] = {"class_type": "TestCapture", "inputs": {"value": ["3", 1], "key": "mask3"}}
    assert session.run(prompt).ok
    box = torch.from_numpy(box_mask())[None]
    for key in ("mask1", "mask2", "mask3"):
        assert torch.equal(CAPTURED.pop(key), box), key
    assert not CAPTURED.pop("mask4").any()  # no alpha channel: nothing to repaint
    # the mask editor's value: an annotated name in input/clipspace/, as ComfyUI accepts
    inputs = session.env.folder("input")
    (inputs / "clipspace").mkdir(exist_ok=True)
    (inputs / "clipspace" / "hole-mask.png").write_bytes((inputs / "hole.png").read_bytes())
    annotated = {"1": {"class_type": "LoadImageMask", "inputs": {
                     "image": "clipspace/hole-mask.png [input]", "channel": "alpha"}},
                 "c1": {"class_type": "TestCapture",
                        "inputs": {"value": ["1", 0], "key": "clip"}}}
    assert session.run(annotated).ok
    assert torch.equal(CAPTURED.pop("clip"), box)
    # the editor's files are not offered in the image lists (each Save made one more entry
    # there), and its plain name still loads (as an older ComfyUI front end sets it)
    from nodes.image import list_input_images

    assert "hole.png" in list_input_images(session.env)
    assert not [n for n in list_input_images(session.env) if n.startswith("clipspace/")]
    annotated["1"]["inputs"]["image"] = "clipspace/hole-mask.png"
    assert session.run(annotated).ok
    assert torch.equal(CAPTURED.pop("clip"), box)
    annotated["1"]["inputs"]["image"] = "clipspace/none.png"
    with pytest.raises(PromptValidationError, match="not one of"):
        session.run(annotated)


def test_load_image_alpha_mask_drives_inpainting(session, pipe4):
    """LoadImage's MASK (1 - alpha) is the same mask as a white-on-black mask image."""
    prompt = noise_mask_prompt("ddim", 1.0, ["8", 1])
    prompt["8"] = {"class_type": "LoadImage", "inputs": {"image": "hole.png"}}
    ours, _ = run(session, prompt)
    assert float(np.abs(ours - reference(pipe4, "ddim", 1.0, box_mask())).max()) <= TOL


# --- workflow ------------------------------------------------------------------------------


def test_workflow_runs(models_dir, tmp_path):
    wf = Workflow.load(WORKFLOW)
    (tmp_path / "input").mkdir()
    name = wf.prompt["10"]["inputs"]["image"]
    shutil.copy(WORKFLOW.parent / "assets" / name, tmp_path / "input" / name)
    wf.set("3.steps", 3)
    session = Session(tmp_path, models_dir=models_dir, device="cpu")
    session.validate(wf)
    result = session.run(wf)
    assert result.ok, result.run.error
    (png,) = result.image_paths
    assert Image.open(png).size == (SIZE, SIZE)


# --- Differential Diffusion -------------------------------------------------------------


def with_differential_diffusion(prompt: dict, strength: float = 1.0) -> dict:
    prompt["30"] = {"class_type": "DifferentialDiffusion",
                    "inputs": {"model": ["1", 0], "strength": strength}}
    prompt["20"]["inputs"]["model"] = ["30", 0]
    return prompt


def test_differential_diffusion_thresholds_the_mask_each_step():
    from types import SimpleNamespace

    from nodes.diffusion.differential_diffusion import DifferentialDiffusion

    run_ = SimpleNamespace(timesteps=torch.tensor([800.0, 600.0, 400.0, 200.0]))
    mask = torch.tensor([0.0, 0.2, 0.5, 0.76, 1.0]).view(1, 1, 1, 5)
    dd = DifferentialDiffusion()
    # at timestep 600 the threshold is 600 / 800 = 0.75: only 0.76 and 1 are repainted
    assert dd.noise_mask(run_, 600.0, mask).flatten().tolist() == [0, 0, 0, 1, 1]
    assert dd.noise_mask(run_, 200.0, mask).flatten().tolist() == [0, 0, 1, 1, 1]
    half = DifferentialDiffusion(0.5).noise_mask(run_, 600.0, mask)
    assert torch.allclose(half, 0.5 * torch.tensor([0, 0, 0, 1, 1.0]) + 0.5 * mask)
    assert torch.equal(DifferentialDiffusion(0.0).noise_mask(run_, 600.0, mask), mask)


def test_differential_diffusion_with_a_hard_mask_changes_nothing(session):
    _, plain = run(session, noise_mask_prompt("ddim", 1.0))
    _, dd = run(session, with_differential_diffusion(noise_mask_prompt("ddim", 1.0)))
    assert torch.allclose(dd, plain, atol=1e-6)


def test_differential_diffusion_repaints_a_soft_mask_by_its_value(session):
    _, soft = run(session, noise_mask_prompt("euler", 1.0, mask_file="soft.png"))
    _, dd = run(session, with_differential_diffusion(
        noise_mask_prompt("euler", 1.0, mask_file="soft.png")))
    _, init = run(session, noise_mask_prompt("euler", 0.0, mask_file="soft.png"))
    grid = torch.from_numpy(blurred_mask())[None, None, ::8, ::8]
    outside, partial = grid[0, 0] == 0, (grid[0, 0] > 0.05) & (grid[0, 0] < 0.95)
    assert torch.equal(dd[..., outside], init[..., outside])  # mask 0: never repainted
    assert partial.any() and not torch.allclose(dd[..., partial], soft[..., partial])
