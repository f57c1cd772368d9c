"""Depth2Image through the graph equals diffusers' StableDiffusionDepth2ImgPipeline."""

from __future__ import annotations

import functools
import json
import shutil
import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_depth2img as d2i_module
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation, DPTForDepthEstimation

from engine.session import Session
from engine.validation import PromptValidationError
from nodes.diffusion.schedulers import SAMPLERS
from nodes.diffusion.tiny_depth import (
    TINY_DEPTH_NAME,
    TINY_ESTIMATORS,
    save_tiny_depth_model,
    save_tiny_estimator,
)
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

PROMPT = "a red circle at the top left on a white background"
NEGATIVE = "blurry"
STEPS = 8
TOL = 1e-4
ESTIMATOR_CLASSES = {"dpt": DPTForDepthEstimation,
                     "depth_anything": DepthAnythingForDepthEstimation}


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth gradient with a disc and a square (structure for the estimator to see)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = x / (w - 1), y / (h - 1)
    cx, cy = np.random.default_rng(seed).uniform(0.25, 0.75, 2)
    arr = np.stack([x, y, 1 - x * y], axis=-1)
    arr[(x - cx) ** 2 + (y - cy) ** 2 < 0.04] = (0.9, 0.1, 0.1)
    arr[(abs(x - 0.7) < 0.12) & (abs(y - 0.7) < 0.12)] = (0.1, 0.2, 0.8)
    return Image.fromarray((arr * 255).round().astype(np.uint8))


def depth_picture(size: tuple[int, int]) -> Image.Image:
    """A grey depth map, near = bright: a ramp with a bright disc (not at the image size:
    it is resized to the latent grid)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    arr = 0.2 + 0.5 * y / (h - 1)
    arr[(x - 0.6 * w) ** 2 + (y - 0.4 * h) ** 2 < (0.2 * min(w, h)) ** 2] = 0.95
    return Image.fromarray((np.repeat(arr[..., None], 3, axis=-1) * 255).round().astype(np.uint8))


def as_image(img: Image.Image) -> torch.Tensor:
    """IMAGE [1, H, W, 3] exactly as LoadImage reads it."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]


@pytest.fixture(scope="module")
def depth_paths(models_dir) -> dict[str, Path]:
    """The tiny depth model in models/checkpoints and the two tiny estimators in models/depth."""
    paths = save_tiny_depth_model(models_dir / "checkpoints")
    for kind in TINY_ESTIMATORS:
        paths[kind] = save_tiny_estimator(models_dir / "depth", kind)
    return paths


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / "input").mkdir()
    picture((64, 64)).save(home / "input" / "picture.png")
    picture((80, 48), 1).save(home / "input" / "wide.png")
    depth_picture((40, 40)).save(home / "input" / "depth.png")
    depth_picture((50, 30)).save(home / "input" / "depth_wide.png")
    return home


@pytest.fixture(scope="module")
def session(models_dir, depth_paths, controlnet_paths, home):
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def components(depth_paths):
    """The reference pipeline loaded by diffusers itself from the tiny depth folder."""
    pipe = diffusers.StableDiffusionDepth2ImgPipeline.from_pretrained(
        depth_paths["diffusers"], local_files_only=True)
    pipe.depth_estimator.eval()
    return pipe


RETRIEVE_LATENTS = d2i_module.retrieve_latents


def reference(components, image: Image.Image, *, estimator: Path | None = None,
              depth_map: torch.Tensor | None = None, strength: float = 0.8,
              sampler: str = "ddim", seed: int = 5, cfg: float = 7.5) -> np.ndarray:
    """The pipeline's image, with the estimator in the folder ``estimator`` (else the one
    bundled with the pipeline folder). Its VAE encoding samples the posterior with the
    generator; VAE Encode (ours and ComfyUI's) takes the posterior's mode, so the pipeline
    runs with ``retrieve_latents(..., sample_mode="argmax")`` (as test_img2img passes it
    the mode latents)."""
    class_name, extra = SAMPLERS[sampler]
    parts = dict(components.components)
    parts["scheduler"] = getattr(diffusers, class_name).from_config(
        components.scheduler.config, **extra)
    if estimator is not None:
        model_type = json.loads((estimator / "config.json").read_text())["model_type"]
        parts["depth_estimator"] = ESTIMATOR_CLASSES[model_type].from_pretrained(
            estimator, local_files_only=True).eval()
        parts["feature_extractor"] = AutoImageProcessor.from_pretrained(
            estimator, local_files_only=True)
    pipe = diffusers.StableDiffusionDepth2ImgPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    d2i_module.retrieve_latents = functools.partial(RETRIEVE_LATENTS, sample_mode="argmax")
    try:
        return pipe(PROMPT, negative_prompt=NEGATIVE, image=image, depth_map=depth_map,
                    strength=strength, num_inference_steps=STEPS, guidance_scale=cfg,
                    output_type="np", generator=torch.Generator("cpu").manual_seed(seed)).images
    finally:
        d2i_module.retrieve_latents = RETRIEVE_LATENTS


def graph_prompt(*, ckpt: str = TINY_DEPTH_NAME, image: str = "picture.png",
                 depth: str | None = None, estimator: str | None = "steerflow-tiny-dpt",
                 via_estimate: bool = False, denoise: float = 0.8, sampler: str = "ddim",
                 seed: int = 5, cfg: float = 7.5, conditioning: bool = True,
                 sega: bool = False, lora: str | None = None, controlnet: bool = False,
                 sag: bool = False) -> dict:
    """Depth2Image on ``ckpt``: the image's latent at ``denoise``, the depth from a depth
    image (``depth``), from Estimate Depth (``via_estimate``) or from the estimator input;
    optionally SEGA, SAG, a LoRA and the tiny ControlNet in the same run."""
    prompt: dict = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["ckpt", 1]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
    }
    model, clip = ["ckpt", 0], ["ckpt", 1]
    if lora:
        prompt["lora"] = {"class_type": "LoraLoader", "inputs": {
            "model": model, "clip": clip, "lora_name": lora, "strength_model": 1.0,
            "strength_clip": 1.0}}
        model, clip = ["lora", 0], ["lora", 1]
        for key in ("pos", "neg"):
            prompt[key]["inputs"]["clip"] = clip
    pos, neg = ["pos", 0], ["neg", 0]
    if conditioning:
        inputs = {"positive": pos, "negative": neg, "vae": ["ckpt", 2], "pixels": ["img", 0]}
        if estimator:
            prompt["est"] = {"class_type": "DepthEstimatorLoader",
                             "inputs": {"estimator_name": estimator}}
        if depth:
            prompt["depth"] = {"class_type": "LoadImage", "inputs": {"image": depth}}
            inputs["depth"] = ["depth", 0]
        elif via_estimate:
            prompt["estimate"] = {"class_type": "EstimateDepth",
                                  "inputs": {"image": ["img", 0], "depth_estimator": ["est", 0]}}
            inputs["depth"] = ["estimate", 0]
        elif estimator:
            inputs["depth_estimator"] = ["est", 0]
        prompt["d2i"] = {"class_type": "Depth2ImageConditioning", "inputs": inputs}
        pos, neg, latent = ["d2i", 0], ["d2i", 1], ["d2i", 2]
    else:
        prompt["enc"] = {"class_type": "VAEEncode",
                         "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}}
        latent = ["enc", 0]
    if controlnet:
        prompt["cn"] = {"class_type": "ControlNetLoader",
                        "inputs": {"control_net_name": "steerflow-tiny-controlnet"}}
        prompt["cnapply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": pos, "negative": neg, "control_net": ["cn", 0],
            "image": ["img", 0], "strength": 0.8}}
        pos, neg = ["cnapply", 0], ["cnapply", 1]
    if sag:  # its own UNet pass must get the depth channel too
        prompt["sag"] = {"class_type": "SelfAttentionGuidance",
                         "inputs": {"model": model, "scale": 0.75, "blur_sigma": 1.0}}
        model = ["sag", 0]
    if sega:
        prompt["concept"] = {"class_type": "SEGAConcept", "inputs": {
            "clip": clip, "text": "a blue square", "scale": 6.0, "warmup_steps": 1}}
        prompt["sega"] = {"class_type": "ApplySEGA",
                          "inputs": {"model": model, "concepts": ["concept", 0]}}
        model = ["sega", 0]
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": STEPS, "cfg": cfg, "sampler_name": sampler,
        "scheduler": "normal", "positive": pos, "negative": neg, "latent_image": latent,
        "denoise": denoise}}
    prompt["decode"] = {"class_type": "VAEDecode",
                        "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    prompt["capture"] = {"class_type": "TestCapture", "inputs": {"value": ["decode", 0]}}
    return prompt


def run_capture(session, prompt, node: str = "decode", output: int = 0) -> torch.Tensor:
    key = uuid.uuid4().hex  # a fresh key so the capture node runs again
    prompt["capture"]["inputs"].update(value=[node, output], key=key)
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key)


def graph_image(session, prompt) -> np.ndarray:
    return run_capture(session, prompt).cpu().numpy()



# --- parity with the pipeline ----------------------------------------------------------------

@pytest.mark.parametrize(("single", "estimator", "image", "sampler", "strength", "cfg"), [
    (False, "dpt", "picture.png", "ddim", 0.8, 7.5),
    (True, "dpt", "wide.png", "euler", 0.6, 7.5),
    (False, "depth_anything", "wide.png", "dpmpp_2m", 0.9, 5.0),
    (True, "depth_anything", "picture.png", "ddim", 0.5, 1.0),
])
def test_estimated_depth_matches_pipeline(session, components, home, depth_paths, single,
                                          estimator, image, sampler, strength, cfg):
    ckpt = f"{TINY_DEPTH_NAME}.safetensors" if single else TINY_DEPTH_NAME
    ours = graph_image(session, graph_prompt(ckpt=ckpt, image=image,
                                             estimator=TINY_ESTIMATORS[estimator],
                                             denoise=strength, sampler=sampler, cfg=cfg))
    ref = reference(components, Image.open(home / "input" / image),
                    estimator=depth_paths[estimator], strength=strength, sampler=sampler,
                    cfg=cfg)
    assert ours.shape == ref.shape
    diff = float(np.abs(ours - ref).max())
    print(f"estimated depth {estimator} single={single} {image} {sampler}: {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize(("single", "image", "depth", "sampler", "strength"), [
    (False, "picture.png", "depth.png", "ddim", 0.8),
    (True, "picture.png", "depth.png", "euler", 0.7),
    (False, "wide.png", "depth_wide.png", "ddim", 0.6),
    (True, "wide.png", "depth_wide.png", "dpmpp_2m", 0.9),
])
def test_given_depth_map_matches_pipeline(session, components, home, single, image, depth,
                                          sampler, strength):
    ckpt = f"{TINY_DEPTH_NAME}.safetensors" if single else TINY_DEPTH_NAME
    ours = graph_image(session, graph_prompt(ckpt=ckpt, image=image, depth=depth,
                                             denoise=strength, sampler=sampler))
    depth_map = as_image(Image.open(home / "input" / depth))[..., 0]  # [1, H, W]
    ref = reference(components, Image.open(home / "input" / image), depth_map=depth_map,
                    strength=strength, sampler=sampler)
    diff = float(np.abs(ours - ref).max())
    print(f"given depth single={single} {image} {sampler}: {diff:.2e}")
    assert ours.shape == ref.shape and diff <= TOL
    estimated = graph_image(session, graph_prompt(ckpt=ckpt, image=image, denoise=strength,
                                                  sampler=sampler))
    assert np.abs(ours - estimated).max() > 1e-3  # the depth steers the image


def test_estimator_from_a_pipeline_folder_matches_the_bundled_one(session, components, home,
                                                                  models_dir, depth_paths):
    """A stable-diffusion-2-depth style folder copied to models/depth: its depth_estimator/
    and feature_extractor/ are used, as the pipeline uses them."""
    target = models_dir / "depth" / "sd2-depth-copy"
    shutil.copytree(depth_paths["diffusers"], target, dirs_exist_ok=True)
    try:
        ours = graph_image(session, graph_prompt(estimator="sd2-depth-copy"))
        ref = reference(components, Image.open(home / "input" / "picture.png"))
        assert np.abs(ours - ref).max() <= TOL
    finally:
        shutil.rmtree(target)


def test_estimate_depth_node_output(session, home, depth_paths):
    """IMAGE: grey, near = bright, 0..1 per image at the image size; MASK: the same map;
    both equal the estimator's predicted depth bicubic-resized and stretched."""
    prompt = graph_prompt(image="wide.png", via_estimate=True)
    image = run_capture(session, prompt, "estimate", 0)
    mask = run_capture(session, prompt, "estimate", 1)
    assert image.shape == (1, 48, 80, 3) and mask.shape == (1, 48, 80)
    assert torch.equal(image[..., 0], mask) and torch.equal(image[..., 2], mask)
    assert float(mask.min()) == 0.0 and abs(float(mask.max()) - 1.0) < 1e-6
    model = DPTForDepthEstimation.from_pretrained(depth_paths["dpt"], local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(depth_paths["dpt"], local_files_only=True)
    pil = Image.open(home / "input" / "wide.png")
    with torch.no_grad():
        raw = model(processor(images=[pil], return_tensors="pt").pixel_values).predicted_depth
    expected = processor.post_process_depth_estimation(
        type("Out", (), {"predicted_depth": raw})(), target_sizes=[(48, 80)])[0]
    expected = expected["predicted_depth"]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert float((mask[0] - expected).abs().max()) < 1e-5


def test_estimate_depth_output_feeds_the_conditioning(session):
    """Estimate Depth → depth: close to the direct estimator path (one resampling more)."""
    via = graph_image(session, graph_prompt(via_estimate=True))
    direct = graph_image(session, graph_prompt())
    assert np.abs(via - direct).max() < 0.05


def test_depth_guided_text_to_image(session):
    """An Empty Latent Image at denoise 1: the depth still steers."""
    def run(depth: str) -> np.ndarray:
        prompt = graph_prompt(depth=depth, estimator=None, denoise=1.0)
        prompt["empty"] = {"class_type": "EmptyLatentImage",
                           "inputs": {"width": 64, "height": 64, "batch_size": 2,
                                      "vae": ["ckpt", 2]}}
        prompt["sample"]["inputs"]["latent_image"] = ["empty", 0]
        return graph_image(session, prompt)

    a, b = run("depth.png"), run("depth_wide.png")
    assert a.shape == (2, 64, 64, 3) and np.abs(a - b).max() > 1e-3


# --- with other techniques -------------------------------------------------------------------

@pytest.fixture(scope="module")
def depth_lora(models_dir, depth_paths) -> str:
    """A random rank-4 LoRA (diffusers/kohya key layout) on the tiny depth UNet's attention."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(depth_paths["diffusers"], subfolder="unet")
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, module in unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_v")):
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(
                4, module.in_features, generator=generator) * 0.3
            tensors[f"{key}.lora_up.weight"] = torch.randn(
                module.out_features, 4, generator=generator) * 0.3
            tensors[f"{key}.alpha"] = torch.tensor(4.0)
    folder = models_dir / "loras"
    folder.mkdir(exist_ok=True)
    save_file(tensors, str(folder / "tiny-depth-lora.safetensors"))
    return "tiny-depth-lora.safetensors"


def test_depth_sega_sag_lora_and_controlnet_each_act_in_one_run(session, depth_lora):
    every = {"sega": True, "sag": True, "lora": depth_lora, "controlnet": True}
    out = graph_image(session, graph_prompt(depth="depth.png", estimator=None, **every))
    assert np.isfinite(out).all()
    other_depth = graph_image(session, graph_prompt(depth="depth_wide.png", estimator=None,
                                                    **every))
    assert np.abs(out - other_depth).max() > 1e-3, "depth"
    for technique in every:
        without = graph_image(session, graph_prompt(
            depth="depth.png", estimator=None, **{**every, technique: None}))
        assert np.abs(out - without).max() > 1e-3, technique


def test_second_depth_conditioning_replaces_the_first(session):
    prompt = graph_prompt(depth="depth.png", estimator=None)
    prompt["depth2"] = {"class_type": "LoadImage", "inputs": {"image": "depth_wide.png"}}
    prompt["d2i_b"] = {"class_type": "Depth2ImageConditioning", "inputs": {
        "positive": ["d2i", 0], "negative": ["d2i", 1], "vae": ["ckpt", 2],
        "pixels": ["img", 0], "depth": ["depth2", 0]}}
    prompt["sample"]["inputs"].update(positive=["d2i_b", 0], negative=["d2i_b", 1])
    chained = graph_image(session, prompt)
    direct = graph_image(session, graph_prompt(depth="depth_wide.png", estimator=None))
    assert np.array_equal(chained, direct)


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("ckpt", [TINY_DEPTH_NAME, f"{TINY_DEPTH_NAME}.safetensors"])
def test_plain_run_on_a_depth_model_names_the_node(session, ckpt):
    message = run_error(session, graph_prompt(ckpt=ckpt, conditioning=False))
    assert "depth-to-image model" in message and "Depth2Image Conditioning" in message


def test_depth_conditioning_on_a_plain_model_is_refused(session):
    message = run_error(session, graph_prompt(ckpt="steerflow-tiny", depth="depth.png",
                                              estimator=None))
    assert "needs a depth model (5 input channels" in message and "with 4" in message


def test_neither_depth_nor_estimator_is_an_error(session):
    message = run_error(session, graph_prompt(estimator=None))
    assert "needs a depth map" in message and "depth_estimator" in message


def test_depth_batch_must_be_one_or_the_image_batch(session):
    prompt = graph_prompt(depth="depth.png", estimator=None)
    prompt["two"] = {"class_type": "EmptyLatentImage",
                     "inputs": {"width": 64, "height": 64, "batch_size": 2, "vae": ["ckpt", 2]}}
    prompt["twoimg"] = {"class_type": "VAEDecode",
                        "inputs": {"samples": ["two", 0], "vae": ["ckpt", 2]}}
    prompt["three"] = {"class_type": "EmptyLatentImage",
                       "inputs": {"width": 64, "height": 64, "batch_size": 3,
                                  "vae": ["ckpt", 2]}}
    prompt["threeimg"] = {"class_type": "VAEDecode",
                          "inputs": {"samples": ["three", 0], "vae": ["ckpt", 2]}}
    prompt["d2i"]["inputs"].update(pixels=["threeimg", 0], depth=["twoimg", 0])
    message = run_error(session, prompt)
    assert "depth map has a batch of 2 but the image has 3" in message
    # a depth batch that fits the image but not the sampled latent
    prompt["d2i"]["inputs"].update(pixels=["twoimg", 0])
    prompt["sample"]["inputs"]["latent_image"] = ["three", 0]
    message = run_error(session, prompt)
    assert "depth map has a batch of 2 but the latent has 3" in message


def test_depth_is_resized_to_the_sampled_latent(session):
    """The depth map is resized to whatever latent the sampler gets (here another size)."""
    prompt = graph_prompt(depth="depth.png", estimator=None)
    prompt["other"] = {"class_type": "EmptyLatentImage",
                       "inputs": {"width": 80, "height": 48, "batch_size": 1,
                                  "vae": ["ckpt", 2]}}
    prompt["sample"]["inputs"].update(latent_image=["other", 0], denoise=1.0)
    assert graph_image(session, prompt).shape == (1, 48, 80, 3)


def _estimator_folder(models_dir: Path, name: str) -> Path:
    folder = models_dir / "depth" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_bad_estimator_folders_fail_validation(session, models_dir, depth_paths):
    made = []

    def folder(name: str) -> Path:
        made.append(_estimator_folder(models_dir, name))
        return made[-1]

    try:
        # pickle weights only
        pickled = folder("pickled-dpt")
        for item in ("config.json", "preprocessor_config.json"):
            shutil.copy(depth_paths["dpt"] / item, pickled / item)
        torch.save(load_file(depth_paths["dpt"] / "model.safetensors"),
                   pickled / "pytorch_model.bin")
        # not a depth model: a CLIP text encoder's folder
        text = folder("text-encoder")
        shutil.copytree(depth_paths["diffusers"] / "text_encoder", text, dirs_exist_ok=True)
        # unreadable config
        broken = folder("broken")
        (broken / "config.json").write_text("{not json")
        # metric Depth Anything
        metric = folder("metric")
        shutil.copytree(depth_paths["depth_anything"], metric, dirs_exist_ok=True)
        config = json.loads((metric / "config.json").read_text())
        (metric / "config.json").write_text(json.dumps({**config,
                                                        "depth_estimation_type": "metric"}))
        # no image processor settings
        bare = folder("no-processor")
        shutil.copytree(depth_paths["dpt"], bare, dirs_exist_ok=True)
        (bare / "preprocessor_config.json").unlink()
        expected = {"pickled-dpt": "only pickle-based weights",
                    "text-encoder": "not a supported depth estimator (model_type 'clip_text",
                    "broken": "cannot read broken's config.json",
                    "metric": "predicts metric depth",
                    "no-processor": "no preprocessor_config.json"}
        for name, text_part in expected.items():
            with pytest.raises(PromptValidationError) as info:
                session.run(graph_prompt(estimator=name))
            assert text_part in str(info.value), (name, str(info.value))
    finally:
        for path in made:
            shutil.rmtree(path)


def test_corrupt_estimator_weights_give_an_execution_error(session, models_dir, depth_paths):
    folder = _estimator_folder(models_dir, "corrupt")
    try:
        shutil.copytree(depth_paths["dpt"], folder, dirs_exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"not a safetensors file")
        message = run_error(session, graph_prompt(estimator="corrupt"))
        assert "cannot load the depth estimator corrupt" in message
    finally:
        shutil.rmtree(folder)


def test_estimator_names_are_confined_to_the_depth_folder(session):
    with pytest.raises(PromptValidationError):
        session.run(graph_prompt(estimator="../checkpoints/steerflow-tiny-depth"))


def test_loader_lists_estimators_and_pipeline_folders(session, models_dir, depth_paths):
    from engine.environment import Environment
    from nodes.depth2img import list_depth_estimators

    target = models_dir / "depth" / "nested" / "sd2-depth"
    shutil.copytree(depth_paths["diffusers"], target)
    try:
        names = list_depth_estimators(Environment.create(models_dir.parent,
                                                         models_dir=models_dir))
        assert {*TINY_ESTIMATORS.values(), "nested/sd2-depth"} <= set(names)
        assert not any(n.startswith("nested/sd2-depth/") for n in names)
    finally:
        shutil.rmtree(target.parent)
