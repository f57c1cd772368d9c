"""The shipped default model, ``steerflow-shapes``: set-up installs it in both formats, it
draws what fixed-seed prompts ask for (read by the analytic judge), its ControlNet places
the shape, and our graph reproduces diffusers' pipeline on it."""

from __future__ import annotations

import uuid

import diffusers
import numpy as np
import pytest
import torch

from engine.session import Session
from nodes.diffusion.shapes_model import (
    SHAPES_CONTROLNET_NAME,
    SHAPES_NAME,
    WEIGHTS_DIR,
    shipped_weights,
)
from tests.graph_nodes import CAPTURED, registry_with_capture
from training.evaluate import EvalConfig, txt2img_graph
from training.judge import detect, foreground, mask_iou

CFG = EvalConfig(steps=20, progress=False)

# (prompt, expected (color, shape, position) of the main shape); each runs with seeds
# 0-3. The full evaluation (README) measures ~90% per attribute, so 3 of 4 must be right.
CASES = [
    ("a red circle at the top left on a white background", ("red", "circle", "top left")),
    ("a blue square at the bottom right on a black background",
     ("blue", "square", "bottom right")),
    ("a yellow star in the center on a gray background", ("yellow", "star", "center")),
    ("a green triangle at the top on a beige background", ("green", "triangle", "top")),
]
SEEDS = range(4)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    # No models_dir: the built-in set-up installs the shipped model, as for a user.
    session = Session(tmp_path_factory.mktemp("home"), device="cpu",
                      registry=registry_with_capture())
    session.executor.ensure_setup()
    return session


def run_float(session: Session, graph: dict) -> np.ndarray:
    """The graph's decoded image, float ``[H, W, 3]`` in 0..1, captured before saving."""
    key = uuid.uuid4().hex
    graph = {**graph, "capture": {"class_type": "TestCapture",
                                  "inputs": {"value": ["decode", 0], "key": key}}}
    result = session.run(graph)
    assert result.ok, result.run.error
    return CAPTURED.pop(key)[0].cpu().numpy()


def run_image(session: Session, graph: dict) -> np.ndarray:
    """The graph's decoded image as uint8 ``[H, W, 3]``."""
    return np.clip(np.rint(run_float(session, graph) * 255), 0, 255).astype(np.uint8)


def test_shipped_weights_fit_the_budget_and_install_in_both_formats(session):
    shipped = sorted(WEIGHTS_DIR.glob("*.safetensors"))
    assert {p.name for p in shipped} == {f"{SHAPES_NAME}.safetensors",
                                         f"{SHAPES_CONTROLNET_NAME}.safetensors"}
    assert sum(p.stat().st_size for p in shipped) <= 40 * 2**20
    models = session.env.folder("models")
    for role, name, marker in (("checkpoints", SHAPES_NAME, "model_index.json"),
                               ("controlnet", SHAPES_CONTROLNET_NAME, "config.json")):
        assert (models / role / name / marker).is_file()
        assert (models / role / f"{name}.safetensors").read_bytes() == \
            shipped_weights(name).read_bytes()


@pytest.mark.parametrize(("prompt", "expected"), CASES, ids=[c[1][1] for c in CASES])
def test_fixed_seed_prompts_draw_what_they_say(session, prompt, expected):
    read = []
    for seed in SEEDS:
        image = run_image(session, txt2img_graph(CFG, prompt, seed, 64))
        assert image.shape == (64, 64, 3)  # 16x16 latent, 4x VAE
        found = detect(image, max_objects=1)
        read.append((found[0].color, found[0].shape, found[0].position) if found else None)
    assert sum(r == expected for r in read) >= 3, read


def test_the_two_formats_draw_the_same_image(session):
    graph = txt2img_graph(CFG, CASES[0][0], 0, 64)
    folder = run_image(session, graph)
    graph["ckpt"]["inputs"]["ckpt_name"] = f"{SHAPES_NAME}.safetensors"
    assert np.array_equal(run_image(session, graph), folder)


def test_controlnet_places_the_shape_on_the_mask(session):
    mask = np.zeros((64, 64), bool)
    yy, xx = np.mgrid[:64, :64]
    mask[(xx - 20) ** 2 + (yy - 40) ** 2 <= 10**2] = True  # a disc, left of centre, low
    hint = np.repeat(mask[..., None] * np.uint8(255), 3, axis=2)
    from PIL import Image

    Image.fromarray(hint).save(session.env.folder("input", create=True) / "disc.png")
    image = run_image(session, txt2img_graph(CFG, "a purple circle", 5, 64,
                                             control_image="disc.png"))
    assert mask_iou(foreground(image), mask) >= 0.6


def test_graph_matches_stable_diffusion_pipeline(session):
    folder = session.env.folder("models") / "checkpoints" / SHAPES_NAME
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    (prompt, _), seed = CASES[1], 1
    ref = pipe(prompt, negative_prompt="", num_inference_steps=CFG.steps, guidance_scale=CFG.cfg,
               height=64, width=64, output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    ours = run_float(session, txt2img_graph(CFG, prompt, seed, 64))
    assert np.abs(ours - ref).max() <= 1e-4


def test_ddim_inversion_example_reconstructs_its_input(session):
    """workflows/ddim_inversion.json as shipped: invert the example image, sample it back."""
    from PIL import Image

    from engine.session import Workflow
    from training.judge import psnr

    result = session.run(Workflow.load("workflows/ddim_inversion.json"))
    assert result.ok, result.run.error
    source = np.asarray(Image.open("workflows/assets/steerflow_example.png").convert("RGB"))
    recon = np.asarray(Image.open(result.image_paths[-1]).convert("RGB"))
    assert psnr(source, recon) >= 25.0
