"""Image-to-image through the graph equals diffusers' StableDiffusionImg2ImgPipeline."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from engine.session import Session, Workflow
from nodes.diffusion.schedulers import SAMPLERS
from tests.graph_nodes import CAPTURED, registry_with_capture

PROMPT = "a red circle at the top left on a white background"
NEGATIVE = "blurry"
SIZE = 64
STEPS = 10
TOL = 1e-4
WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "img2img.json"


def sample_picture(size: int = SIZE) -> Image.Image:
    """A smooth gradient with a disc and a square: structure at a few scales."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    arr = np.stack([x, y, 1 - x * y], axis=-1)
    arr[(x - 0.3) ** 2 + (y - 0.35) ** 2 < 0.04] = (0.9, 0.1, 0.1)
    arr[(abs(x - 0.7) < 0.12) & (abs(y - 0.7) < 0.12)] = (0.1, 0.2, 0.8)
    return Image.fromarray((arr * 255).round().astype(np.uint8))


def picture_tensor(img: Image.Image) -> torch.Tensor:
    """IMAGE [1, H, W, 3] exactly as LoadImage reads it."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]


@torch.no_grad()
def vae_latents(vae, image: torch.Tensor) -> torch.Tensor:
    """The posterior's mode × scaling factor (the pipelines' latents without sampling)."""
    x = image.permute(0, 3, 1, 2) * 2 - 1
    return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / "input").mkdir()
    sample_picture().save(home / "input" / "picture.png")
    return home


@pytest.fixture(scope="module")
def session(models_dir, home):
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def pipe(tiny_model_paths):
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(
        tiny_model_paths["diffusers"], local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.base_scheduler_config = dict(pipe.scheduler.config)
    return pipe


def img2img_prompt(sampler: str, denoise: float, *, seed: int = 3, steps: int = STEPS,
                   cfg: float = 7.5) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "picture.png"}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0],
            "latent_image": ["5", 0], "denoise": denoise}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "TestCapture", "inputs": {"value": ["7", 0],
                                                       "key": uuid.uuid4().hex}},
    }


def graph_image(session, prompt) -> np.ndarray:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["8"]["inputs"]["key"]).cpu().numpy()


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
@pytest.mark.parametrize("strength", [0.3, 0.6, 0.9])
def test_matches_img2img_pipeline(session, pipe, sampler, strength):
    ours = graph_image(session, img2img_prompt(sampler, strength))
    class_name, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.base_scheduler_config,
                                                                **extra)
    latents = vae_latents(pipe.vae, picture_tensor(sample_picture()))
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, image=latents, strength=strength,
               num_inference_steps=STEPS, guidance_scale=7.5, output_type="np",
               generator=torch.Generator("cpu").manual_seed(3)).images
    assert ours.shape == ref.shape == (1, SIZE, SIZE, 3)
    diff = float(np.abs(ours - ref).max())
    print(f"img2img {sampler} strength {strength}: max abs diff {diff:.2e}")
    assert diff <= TOL


def test_low_strength_stays_closer_to_the_input(session, pipe):
    """A sanity check on the direction of ``denoise``: less of it changes the image less."""
    base = vae_latents(pipe.vae, picture_tensor(sample_picture()))
    with torch.no_grad():
        roundtrip = (pipe.vae.decode(base / pipe.vae.config.scaling_factor).sample / 2 + 0.5)
    roundtrip = roundtrip.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    errors = [float(np.abs(graph_image(session, img2img_prompt("ddim", s)) - roundtrip).mean())
              for s in (0.1, 0.5, 1.0)]
    assert errors[0] < errors[1] < errors[2]


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
