"""ControlNet through the graph equals diffusers' StableDiffusionControlNetPipeline."""

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
from engine.validation import PromptValidationError
from nodes.diffusion.schedulers import SAMPLERS
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

PROMPT = "a red circle at the top left on a white background"
NEGATIVE = "blurry"
SIZE = 64
STEPS = 6
TOL = 1e-4


def control_picture(size: tuple[int, int], seed: int) -> Image.Image:
    """A blocky random RGB picture (structure at several scales, like an edge map)."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, (max(h // 8, 1), max(w // 8, 1), 3), dtype=np.uint8)
    arr = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
    arr[rng.random((h, w)) < 0.1] = 255
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / "input").mkdir()
    control_picture((SIZE, SIZE), 0).save(home / "input" / "control_a.png")
    control_picture((SIZE, SIZE), 1).save(home / "input" / "control_b.png")
    control_picture((48, 80), 2).save(home / "input" / "control_wide.png")
    return home


@pytest.fixture(scope="module")
def second_controlnet(models_dir) -> Path:
    from nodes.diffusion.tiny_controlnet import save_tiny_controlnet

    return save_tiny_controlnet(models_dir / "controlnet" / "seed1", seed=1)["diffusers"]


@pytest.fixture(scope="module")
def session(models_dir, controlnet_paths, second_controlnet, home):
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def base_pipe(tiny_model_paths):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        tiny_model_paths["diffusers"], local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_reference_controlnet(path: Path) -> diffusers.ControlNetModel:
    return diffusers.ControlNetModel.from_pretrained(path, local_files_only=True).eval()


def reference_image(base, controlnet, image, *, sampler="euler", seed=7, **kwargs) -> np.ndarray:
    class_name, extra = SAMPLERS[sampler]
    pipe = diffusers.StableDiffusionControlNetPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        controlnet=controlnet, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
        scheduler=getattr(diffusers, class_name).from_config(base.scheduler.config, **extra))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, negative_prompt=NEGATIVE, image=image, num_inference_steps=STEPS,
               guidance_scale=7.5, height=SIZE, width=SIZE, output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed), **kwargs)
    return out.images


def graph_prompt(controls: list[dict], *, sampler="euler", seed=7) -> dict:
    """txt2img with one ControlNetApplyAdvanced per entry of ``controls``, chained."""
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
    }
    pos, neg = ["pos", 0], ["neg", 0]
    for i, control in enumerate(controls):
        prompt[f"cn{i}"] = {"class_type": "ControlNetLoader",
                            "inputs": {"control_net_name": control["net"]}}
        prompt[f"img{i}"] = {"class_type": "LoadImage", "inputs": {"image": control["image"]}}
        prompt[f"apply{i}"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": pos, "negative": neg, "control_net": [f"cn{i}", 0],
            "image": [f"img{i}", 0], "strength": control.get("strength", 1.0),
            "start_percent": control.get("start", 0.0), "end_percent": control.get("end", 1.0),
            "guess_mode": control.get("guess", False)}}
        pos, neg = [f"apply{i}", 0], [f"apply{i}", 1]
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "model": ["ckpt", 0], "seed": seed, "steps": STEPS, "cfg": 7.5,
        "sampler_name": sampler, "scheduler": "normal", "positive": pos, "negative": neg,
        "latent_image": ["latent", 0], "denoise": 1.0}}
    prompt["decode"] = {"class_type": "VAEDecode",
                        "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    prompt["capture"] = {"class_type": "TestCapture", "inputs": {"value": ["decode", 0]}}
    return prompt


def graph_image(session, prompt) -> np.ndarray:
    key = uuid.uuid4().hex  # a fresh key so the capture node runs again
    prompt["capture"]["inputs"]["key"] = key
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).cpu().numpy()



NET = "steerflow-tiny-controlnet"


@pytest.mark.parametrize(("sampler", "strength", "start", "end", "guess"), [
    ("euler", 1.0, 0.0, 1.0, False),
    ("ddim", 0.7, 0.2, 0.8, False),
    ("dpmpp_2m", 1.3, 0.0, 0.5, True),
])
def test_one_controlnet_matches_pipeline(session, base_pipe, controlnet_paths, home,
                                         sampler, strength, start, end, guess):
    control = {"net": NET, "image": "control_a.png", "strength": strength, "start": start,
               "end": end, "guess": guess}
    ours = graph_image(session, graph_prompt([control], sampler=sampler))
    ref = reference_image(
        base_pipe, load_reference_controlnet(controlnet_paths["diffusers"]),
        Image.open(home / "input" / "control_a.png"), sampler=sampler,
        controlnet_conditioning_scale=strength, control_guidance_start=start,
        control_guidance_end=end, guess_mode=guess)
    assert ours.shape == ref.shape == (1, SIZE, SIZE, 3)
    assert np.abs(ours - ref).max() <= TOL
    plain = graph_image(session, graph_prompt([], sampler=sampler))
    assert np.abs(ours - plain).max() > 1e-2  # the ControlNet does something


def test_batch_of_two_matches_pipeline(session, base_pipe, controlnet_paths, home):
    prompt = graph_prompt([{"net": NET, "image": "control_a.png", "guess": True}])
    prompt["latent"]["inputs"]["batch_size"] = 2
    ours = graph_image(session, prompt)
    ref = reference_image(base_pipe, load_reference_controlnet(controlnet_paths["diffusers"]),
                          Image.open(home / "input" / "control_a.png"), guess_mode=True,
                          num_images_per_prompt=2)
    assert ours.shape == ref.shape == (2, SIZE, SIZE, 3)
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize("guess", [False, True])
def test_several_controlnets_match_multicontrolnet(session, base_pipe, controlnet_paths,
                                                   second_controlnet, home, guess):
    controls = [
        {"net": NET, "image": "control_a.png", "strength": 1.0, "start": 0.0, "end": 1.0},
        {"net": f"seed1/{NET}", "image": "control_b.png", "strength": 0.6, "start": 0.3,
         "end": 0.7},
    ]
    for c in controls:
        c["guess"] = guess
    ours = graph_image(session, graph_prompt(controls))
    nets = [load_reference_controlnet(controlnet_paths["diffusers"]),
            load_reference_controlnet(second_controlnet)]
    images = [Image.open(home / "input" / c["image"]) for c in controls]
    ref = reference_image(base_pipe, nets, images,
                          controlnet_conditioning_scale=[c["strength"] for c in controls],
                          control_guidance_start=[c["start"] for c in controls],
                          control_guidance_end=[c["end"] for c in controls], guess_mode=guess)
    assert np.abs(ours - ref).max() <= TOL
    first_only = graph_image(session, graph_prompt(controls[:1]))
    assert np.abs(ours - first_only).max() > 1e-3


def test_single_file_equals_diffusers_folder(session):
    a = graph_image(session, graph_prompt([{"net": NET, "image": "control_a.png"}]))
    b = graph_image(session, graph_prompt([{"net": f"{NET}.safetensors",
                                            "image": "control_a.png"}]))
    assert np.array_equal(a, b)


def test_wrong_size_control_image_is_stretched_like_a_tensor_in_diffusers(
        session, base_pipe, controlnet_paths, home):
    ours = graph_image(session, graph_prompt([{"net": NET, "image": "control_wide.png"}]))
    # diffusers resizes a tensor control image with F.interpolate (nearest neighbour).
    pixels = np.asarray(Image.open(home / "input" / "control_wide.png"), dtype=np.float32)
    tensor = torch.from_numpy(pixels / 255.0).permute(2, 0, 1)[None]
    ref = reference_image(base_pipe, load_reference_controlnet(controlnet_paths["diffusers"]),
                          tensor)
    assert ours.shape == (1, SIZE, SIZE, 3)
    assert np.abs(ours - ref).max() <= TOL


def test_strength_zero_is_plain_txt2img(session):
    plain = graph_image(session, graph_prompt([]))
    zero = graph_image(session, graph_prompt([{"net": NET, "image": "control_a.png",
                                               "strength": 0.0}]))
    assert np.array_equal(plain, zero)


def _two_stages(prompt: dict, split: int, *, first: bool = True) -> dict:
    """``prompt``'s KSampler as two KSamplerAdvanced windows of its schedule, split at step
    ``split`` (ComfyUI's base / refiner pattern); ``first`` False keeps only the second."""
    k = prompt.pop("sample")["inputs"]
    common = {key: k[key] for key in ("model", "steps", "cfg", "sampler_name", "scheduler",
                                      "positive", "negative")}
    prompt["stage1"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "enable", "noise_seed": k["seed"], "latent_image": ["latent", 0],
        "start_at_step": 0, "end_at_step": split, "return_with_leftover_noise": "enable"}}
    prompt["sample"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "disable" if first else "enable", "noise_seed": k["seed"],
        "latent_image": ["stage1" if first else "latent", 0], "start_at_step": split,
        "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    if not first:
        del prompt["stage1"]
    return prompt


def test_a_run_split_in_two_samplers_keeps_the_controlnets_window(session):
    """start / end percent are fractions of the whole schedule, not of each sampler's
    window: two KSamplerAdvanced halves draw the one KSampler's image (the ControlNet
    stopped at half the steps acted again in the second half), and a second half alone
    is past a ControlNet that ends at 40%."""
    control = [{"net": NET, "image": "control_a.png", "end": 0.5}]
    whole = graph_image(session, graph_prompt(control))
    split = graph_image(session, _two_stages(graph_prompt(control), 3))
    assert np.abs(split - whole).max() <= 1e-5
    early = [{"net": NET, "image": "control_a.png", "end": 0.4}]
    late = graph_image(session, _two_stages(graph_prompt(early), 3, first=False))
    plain = graph_image(session, _two_stages(graph_prompt([]), 3, first=False))
    assert np.array_equal(late, plain)
    acting = [{"net": NET, "image": "control_a.png", "start": 0.5}]
    assert np.abs(graph_image(session, _two_stages(graph_prompt(acting), 3, first=False))
                  - plain).max() > 1e-2


def test_comfyui_optional_vae_input_is_accepted_and_unused(session):
    """ComfyUI's Apply ControlNet has an optional VAE (its T2I-Adapter template links
    it): it validates without an unknown-input warning and changes nothing on SD 1.x."""
    control = [{"net": NET, "image": "control_a.png"}]
    linked = graph_prompt(control)
    linked["apply0"]["inputs"]["vae"] = ["ckpt", 2]
    assert not session.validate(linked).warnings
    assert np.array_equal(graph_image(session, linked),
                          graph_image(session, graph_prompt(control)))


def test_old_apply_node_steers_the_positive_half_only(session):
    prompt = graph_prompt([])
    prompt["cn"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": NET}}
    prompt["img"] = {"class_type": "LoadImage", "inputs": {"image": "control_a.png"}}
    prompt["apply"] = {"class_type": "ControlNetApply", "inputs": {
        "conditioning": ["pos", 0], "control_net": ["cn", 0], "image": ["img", 0],
        "strength": 1.0}}
    prompt["sample"]["inputs"]["positive"] = ["apply", 0]
    old = graph_image(session, prompt)
    advanced = graph_image(session, graph_prompt([{"net": NET, "image": "control_a.png"}]))
    plain = graph_image(session, graph_prompt([]))
    assert np.abs(old - plain).max() > 1e-3 and np.abs(old - advanced).max() > 1e-3


def test_start_not_below_end_is_rejected_before_running(session):
    prompt = graph_prompt([{"net": NET, "image": "control_a.png", "start": 0.6, "end": 0.4}])
    with pytest.raises(Exception, match="start_percent"):
        session.validate(prompt)


def test_pickle_controlnet_refused_unless_opted_in(session, models_dir, controlnet_paths,
                                                   home):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from nodes.diffusion.original_layout import CONFIG_METADATA_KEY

    single = controlnet_paths["single_file"]
    with safe_open(str(single), "pt") as fh:
        config = fh.metadata()[CONFIG_METADATA_KEY]
    pickled = models_dir / "controlnet" / "pickled.pth"
    torch.save({**load_file(single), CONFIG_METADATA_KEY: config}, pickled)
    try:
        prompt = graph_prompt([{"net": "pickled.pth", "image": "control_a.png"}])
        # refused at validation, before anything loads (load_controlnet refuses it too)
        with pytest.raises(PromptValidationError, match=r"pickled\.pth is a pickle file"):
            session.run(prompt)
        opted = Session(home, models_dir=models_dir, device="cpu", allow_pickle=True,
                        registry=registry_with_capture())
        expected = graph_image(session, graph_prompt([{"net": NET, "image": "control_a.png"}]))
        assert np.array_equal(graph_image(opted, prompt), expected)
    finally:
        pickled.unlink()


@pytest.mark.parametrize(("changes", "expected"), [
    ({"cross_attention_dim": 48}, "48-wide text embeddings"),
    # an SDXL ControlNet (its text width differs too) is named as one (the SDXL drill: the
    # message guessed "an SD 1.x ControlNet on SD 2.x")
    ({"cross_attention_dim": 48, "addition_embed_type": "text_time",
      "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80},
     "is an SDXL ControlNet; this model is not"),
])
def test_controlnet_for_another_model_is_refused(session, models_dir, changes, expected):
    from nodes.diffusion.tiny_controlnet import build_tiny_controlnet

    net = build_tiny_controlnet()
    other = diffusers.ControlNetModel.from_config({**net.config, **changes})
    folder = models_dir / "controlnet" / "other"
    other.save_pretrained(folder)
    try:
        message = run_error(session, graph_prompt([{"net": "other", "image": "control_a.png"}]))
        assert expected in message
    finally:
        shutil.rmtree(folder)


def test_sd15_original_layout_file_gets_its_config_from_the_shapes():
    """A published SD 1.5 ControlNet (no prefix, no metadata) maps onto diffusers' config."""
    from accelerate import init_empty_weights

    from nodes.diffusion.controlnet_loading import (
        controlnet_from_state_dict,
        controlnet_to_original,
    )
    from nodes.diffusion.loading import family_configs

    with init_empty_weights():  # real SD 1.5 sizes, no memory
        unet = diffusers.UNet2DConditionModel.from_config(family_configs("sd1")["unet"])
        net = diffusers.ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    original = controlnet_to_original(net.state_dict(), dict(net.config))
    assert "control_model.input_hint_block.14.weight" in original
    assert "control_model.zero_convs.11.0.weight" in original
    published = {k.removeprefix("control_model."): v for k, v in original.items()}
    loaded = controlnet_from_state_dict(published)
    keys = ("block_out_channels", "cross_attention_dim", "attention_head_dim",
            "conditioning_embedding_out_channels", "layers_per_block", "use_linear_projection")
    assert {k: loaded.config[k] for k in keys} == {k: net.config[k] for k in keys}
    shapes = {k: v.shape for k, v in loaded.state_dict().items()}
    assert shapes == {k: v.shape for k, v in net.state_dict().items()}


@pytest.mark.parametrize("hint", [(8, 16), (8, 16, 32)])
def test_hint_encoder_for_a_2x_or_4x_vae_round_trips_the_original_layout(tmp_path, hint):
    """A ControlNet for a model with a 2x/4x VAE has a shorter hint encoder; its original
    layout file (conv_out not at input_hint_block.14) loads back weight for weight."""
    from nodes.diffusion.controlnet_loading import load_controlnet, save_original_controlnet
    from nodes.diffusion.tiny import UNET_CONFIG, _seeded

    unet = diffusers.UNet2DConditionModel(**UNET_CONFIG)
    net = _seeded(3, lambda: diffusers.ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=hint)).eval()
    path = tmp_path / "hint.safetensors"
    save_original_controlnet(path, net)
    loaded = load_controlnet(path)
    assert tuple(loaded.config.conditioning_embedding_out_channels) == hint
    expected = net.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_canny_and_image_to_mask(session):
    from nodes.preprocessors import canny_edges

    image = torch.zeros(1, 32, 32, 3)
    image[:, 8:24, 8:24] = 1.0
    edges = canny_edges(image, 0.4, 0.8)
    assert edges.shape == (1, 32, 32, 3)
    assert set(edges.unique().tolist()) == {0.0, 1.0}
    columns = set(edges[0, 16, :, 0].nonzero().flatten().tolist())
    assert columns and columns <= {7, 8, 23, 24}  # on the square's border only
    prompt = {
        "img": {"class_type": "LoadImage", "inputs": {"image": "control_a.png"}},
        "canny": {"class_type": "Canny", "inputs": {"image": ["img", 0], "low_threshold": 0.2,
                                                     "high_threshold": 0.5}},
        "mask": {"class_type": "ImageToMask", "inputs": {"image": ["canny", 0],
                                                         "channel": "green"}},
        "capture": {"class_type": "TestCapture", "inputs": {"value": ["mask", 0]}},
    }
    mask = graph_image(session, prompt)
    assert mask.shape == (1, SIZE, SIZE) and 0 < mask.mean() < 1
    prompt["mask"]["inputs"]["channel"] = "alpha"
    assert "no alpha channel" in run_error(session, prompt)
    prompt["canny"]["inputs"]["low_threshold"] = 0.9
    with pytest.raises(Exception, match="low_threshold"):
        session.validate(prompt)


def test_example_workflow_runs(models_dir, controlnet_paths, tmp_path):
    wf = Workflow.load("workflows/controlnet.json")
    (tmp_path / "input").mkdir()
    shutil.copy("workflows/assets/controlnet_control.png", tmp_path / "input")
    wf.prompt["3"]["inputs"]["steps"] = 2
    result = Session(tmp_path, models_dir=models_dir, device="cpu").run(wf)
    assert result.ok, result.run.error
    assert len(result.image_paths) == 1
