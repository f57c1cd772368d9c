"""GLIGEN through the graph equals diffusers' StableDiffusionGLIGENPipeline, its layers sit in
the UNet for the run only, and files and boxes that do not fit say why."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.session import Session
from engine.validation import PromptValidationError
from nodes.diffusion.schedulers import SAMPLERS
from nodes.diffusion.tiny_gligen import (
    TINY_GLIGEN_NAME,
    build_tiny_gligen_unet,
    save_tiny_gligen,
    to_original_layout,
)
from tests.graph_nodes import CAPTURED, registry_with_capture

PROMPT = "a picture of shapes on a white background"
NEGATIVE = "blurry"
STEPS = 6
TOL = 1e-4
FILE = f"{TINY_GLIGEN_NAME}.safetensors"
RED = ("a red circle", 8, 16, 32, 40)  # phrase, x, y, width, height (pixels)
BLUE = ("a blue square", 40, 0, 24, 24)
LOW_RED = ("a red circle", 8, 8, 40, 32)  # fits 80x48


@pytest.fixture(scope="module")
def gligen_dir(models_dir) -> Path:
    """models/gligen with the tiny GLIGEN in every layout the loader reads."""
    folder = models_dir / "gligen"
    paths = save_tiny_gligen(folder)
    state = load_file(paths["single_file"])
    unet = build_tiny_gligen_unet()
    save_file(to_original_layout(state, unet), str(folder / "comfy-layout.safetensors"))
    save_file({f"model.diffusion_model.{k}": v for k, v in
               to_original_layout(state, unet).items()}, str(folder / "prefixed.safetensors"))
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()},
              str(folder / "whole-unet.safetensors"))
    return folder


@pytest.fixture(scope="module")
def session(models_dir, gligen_dir, controlnet_paths, tmp_path_factory):
    return Session(tmp_path_factory.mktemp("gligen_home"), models_dir=models_dir, device="cpu",
                   registry=registry_with_capture())


@pytest.fixture(scope="module")
def gligen_pipe(tiny_model_paths):
    """The pipeline on the tiny model's parts with the gated (GLIGEN) UNet."""
    from nodes.diffusion.loading import load_components

    c = load_components(tiny_model_paths["diffusers"])
    pipe = diffusers.StableDiffusionGLIGENPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer,
        unet=build_tiny_gligen_unet(), scheduler=diffusers.DDIMScheduler.from_config(
            c.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.base_config = dict(c.scheduler_config)
    return pipe


def reference(pipe, boxes, *, beta=1.0, sampler="ddim", cfg=7.5, width=64, height=64,
              batch=1) -> np.ndarray:
    class_name, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.base_config, **extra)
    return pipe(PROMPT, negative_prompt=NEGATIVE, gligen_phrases=[b[0] for b in boxes],
                gligen_boxes=[[x / width, y / height, (x + w) / width, (y + h) / height]
                              for _, x, y, w, h in boxes],
                gligen_scheduled_sampling_beta=beta, num_inference_steps=STEPS,
                guidance_scale=cfg, height=height, width=width, num_images_per_prompt=batch,
                output_type="np", generator=torch.Generator("cpu").manual_seed(7)).images


def graph(boxes, *, beta=1.0, sampler="ddim", cfg=7.5, width=64, height=64, batch=1,
          ckpt="steerflow-tiny", gligen=FILE, negative_boxes=(), controlnet=False, sag=False,
          attend_excite=False, sega=False) -> dict:
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["ckpt", 1]}},
        "gligen": {"class_type": "GLIGENLoader", "inputs": {"gligen_name": gligen}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": width, "height": height, "batch_size": batch}},
    }
    if attend_excite:
        prompt["pos"] = {"class_type": "AttendAndExcite", "inputs": {
            "clip": ["ckpt", 1], "text": PROMPT, "words": "shapes", "max_iter_to_alter": 3,
            "thresholds": "0:0.99", "max_refinement_steps": 2}}
    sides = {"pos": ["pos", 0], "neg": ["neg", 0]}
    for side, chosen in (("pos", boxes), ("neg", negative_boxes)):
        for i, (text, x, y, w, h) in enumerate(chosen):
            node = f"{side}box{i}"
            prompt[node] = {"class_type": "GLIGENTextBoxApply", "inputs": {
                "conditioning_to": sides[side], "clip": ["ckpt", 1],
                "gligen_textbox_model": ["gligen", 0], "text": text, "x": x, "y": y,
                "width": w, "height": h, "gligen_scheduled_sampling_beta": beta}}
            sides[side] = [node, 0]
    model = ["ckpt", 0]
    if controlnet:
        prompt["cn"] = {"class_type": "ControlNetLoader",
                        "inputs": {"control_net_name": "steerflow-tiny-controlnet"}}
        prompt["cnimg"] = {"class_type": "VAEDecode",
                           "inputs": {"samples": ["latent", 0], "vae": ["ckpt", 2]}}
        prompt["cnapply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": sides["pos"], "negative": sides["neg"], "control_net": ["cn", 0],
            "image": ["cnimg", 0], "strength": 1.0}}
        sides = {"pos": ["cnapply", 0], "neg": ["cnapply", 1]}
    if sag:
        prompt["sag"] = {"class_type": "SelfAttentionGuidance",
                         "inputs": {"model": model, "scale": 0.75, "blur_sigma": 1.0}}
        model = ["sag", 0]
    if sega:
        prompt["concept"] = {"class_type": "SEGAConcept", "inputs": {
            "clip": ["ckpt", 1], "text": "a green triangle", "scale": 6.0, "warmup_steps": 1}}
        prompt["sega"] = {"class_type": "ApplySEGA",
                          "inputs": {"model": model, "concepts": ["concept", 0]}}
        model = ["sega", 0]
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 7, "steps": STEPS, "cfg": cfg, "sampler_name": sampler,
        "scheduler": "normal", "positive": sides["pos"], "negative": sides["neg"],
        "latent_image": ["latent", 0], "denoise": 1.0}}
    prompt["decode"] = {"class_type": "VAEDecode",
                        "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    prompt["capture"] = {"class_type": "TestCapture", "inputs": {"value": ["decode", 0]}}
    prompt["model"] = {"class_type": "TestCapture", "inputs": {"value": ["ckpt", 0]}}
    return prompt


def graph_image(session, prompt) -> np.ndarray:
    key = uuid.uuid4().hex  # fresh keys so the capture nodes run again
    prompt["capture"]["inputs"]["key"] = key
    prompt["model"]["inputs"]["key"] = key + "-model"
    result = session.run(prompt)
    assert result.ok, (result.run.error or {}).get("exception_message")
    assert_unet_restored(CAPTURED.pop(key + "-model").unet)
    return CAPTURED.pop(key).cpu().numpy()


def run_error(session, prompt) -> str:
    key = uuid.uuid4().hex
    prompt["capture"]["inputs"]["key"] = key
    prompt["model"]["inputs"]["key"] = key + "-model"
    result = session.run(prompt)
    assert result.run.status == "error", "expected the run to fail"
    model = CAPTURED.pop(key + "-model", None)
    if model is not None:
        assert_unet_restored(model.unet)
    return result.run.error["exception_message"]


def assert_unet_restored(unet) -> None:
    names = [name for name, _ in unet.named_modules()]
    assert not any(".fuser" in n or n == "position_net" for n in names)
    assert not any(".fuser." in n for n in unet.attn_processors)


# --- parity with the pipeline ----------------------------------------------------------------

@pytest.mark.parametrize(("boxes", "beta", "sampler", "size", "ckpt", "cfg"), [
    ([RED], 1.0, "ddim", (64, 64), "steerflow-tiny", 7.5),
    ([RED, BLUE], 0.5, "euler", (64, 64), "steerflow-tiny.safetensors", 7.5),
    ([LOW_RED, BLUE], 0.3, "dpmpp_2m", (80, 48), "steerflow-tiny", 7.5),
    ([LOW_RED, BLUE], 1.0, "ddim", (80, 48), "steerflow-tiny.safetensors", 5.0),
    ([RED], 1.0, "ddim", (64, 64), "steerflow-tiny", 1.0),  # no CFG: one grounded row
])
def test_matches_gligen_pipeline(session, gligen_pipe, boxes, beta, sampler, size, ckpt, cfg):
    width, height = size
    common = {"beta": beta, "sampler": sampler, "width": width, "height": height, "cfg": cfg}
    ours = graph_image(session, graph(boxes, ckpt=ckpt, **common))
    ref = reference(gligen_pipe, boxes, **common)
    assert ours.shape == ref.shape == (1, height, width, 3)
    diff = float(np.abs(ours - ref).max())
    print(f"GLIGEN {len(boxes)} box(es), beta {beta}, {sampler}, {width}x{height}, {ckpt}: "
          f"max abs diff {diff:.2e}")
    assert diff <= TOL
    plain = graph_image(session, graph([], ckpt=ckpt, **common))
    assert np.abs(ours - plain).max() > 1e-3  # GLIGEN does something


def test_batch_of_two_matches_pipeline(session, gligen_pipe):
    ours = graph_image(session, graph([RED, BLUE], batch=2))
    ref = reference(gligen_pipe, [RED, BLUE], batch=2)
    assert ours.shape == ref.shape == (2, 64, 64, 3)
    assert np.abs(ours - ref).max() <= TOL


def test_boxes_are_in_pixels_of_the_checkpoints_own_vae(gligen_dir, tmp_path_factory):
    """A checkpoint with a 4x VAE makes a 48x32 image from 12x8 latents: boxes are in its
    pixels, not in those of SD's 8x VAE (which would shrink them and refuse most)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from nodes.diffusion.tiny import VAE_CONFIG, _seeded, build_tiny_pipeline

    base = build_tiny_pipeline()
    vae = _seeded(1, lambda: AutoencoderKL(**{
        **VAE_CONFIG, "block_out_channels": (32, 32, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3})).eval()
    root = tmp_path_factory.mktemp("gligen_vae4")
    StableDiffusionPipeline(
        vae=vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).save_pretrained(root / "checkpoints" / "vae4",
                                                        safe_serialization=True)
    shutil.copytree(gligen_dir, root / "gligen")
    session = Session(tmp_path_factory.mktemp("gligen_vae4_home"), models_dir=root,
                      device="cpu", registry=registry_with_capture())
    pipe = diffusers.StableDiffusionGLIGENPipeline(
        vae=vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
        unet=build_tiny_gligen_unet(), scheduler=diffusers.DDIMScheduler.from_config(
            base.scheduler.config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.base_config = dict(base.scheduler.config)
    boxes = [("a red circle", 8, 8, 24, 16), ("a blue square", 32, 16, 16, 16)]
    prompt = graph(boxes, width=48, height=32, ckpt="vae4")
    prompt["latent"]["inputs"]["vae"] = ["ckpt", 2]
    ours = graph_image(session, prompt)
    ref = reference(pipe, boxes, width=48, height=32)
    assert ours.shape == ref.shape == (1, 32, 48, 3)
    assert np.abs(ours - ref).max() <= TOL


def test_every_file_layout_gives_the_same_image(session):
    expected = graph_image(session, graph([RED, BLUE], beta=0.5))
    for name in (f"{TINY_GLIGEN_NAME}-unet", "comfy-layout.safetensors",
                 "prefixed.safetensors", "whole-unet.safetensors"):
        assert np.array_equal(graph_image(session, graph([RED, BLUE], beta=0.5, gligen=name)),
                              expected), name


def test_scheduled_sampling(session):
    plain = graph_image(session, graph([]))
    assert np.array_equal(graph_image(session, graph([RED], beta=0.0)), plain)
    full, part = graph_image(session, graph([RED])), graph_image(session, graph([RED], beta=0.5))
    assert np.abs(full - part).max() > 1e-3 and np.abs(part - plain).max() > 1e-3


def test_boxes_on_the_negative_and_combined_conditionings(session):
    plain = graph_image(session, graph([]))
    negative = graph_image(session, graph([], negative_boxes=[BLUE]))
    assert np.abs(negative - plain).max() > 1e-3
    prompt = graph([RED])
    prompt["other"] = {"class_type": "CLIPTextEncode",
                       "inputs": {"text": "a green triangle", "clip": ["ckpt", 1]}}
    prompt["combine"] = {"class_type": "ConditioningCombine",
                         "inputs": {"conditioning_1": ["other", 0],
                                    "conditioning_2": ["posbox0", 0]}}
    prompt["sample"]["inputs"]["positive"] = ["combine", 0]
    grounded = graph_image(session, prompt)
    prompt["combine"]["inputs"]["conditioning_2"] = ["pos", 0]
    assert np.abs(grounded - graph_image(session, prompt)).max() > 1e-3


# --- with other techniques -------------------------------------------------------------------

def test_gligen_controlnet_sag_sega_and_attend_excite_each_act(session):
    every = {"controlnet": True, "sag": True, "sega": True, "attend_excite": True}
    out = graph_image(session, graph([RED, BLUE], **every))
    assert np.isfinite(out).all()
    assert np.abs(out - graph_image(session, graph([], **every))).max() > 1e-3, "gligen"
    for technique in every:
        without = graph_image(session, graph([RED, BLUE], **{**every, technique: False}))
        assert np.abs(out - without).max() > 1e-3, technique


# --- the run-scoped module patches -----------------------------------------------------------

def test_module_patches_are_restored():
    from nodes.diffusion import module_patches
    from nodes.diffusion.module_patches import ModulePatch, attach

    root = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    root[0].note = "plain"
    first, extra = root[1], torch.nn.Identity()
    with pytest.raises(RuntimeError, match="during a sampling run"):
        attach(root, [ModulePatch("", "1", extra)])
    with pytest.raises(KeyError), module_patches.scope():
        attach(root, [ModulePatch("", "1", extra), ModulePatch("", "added", extra),
                      ModulePatch("0", "note", extra)])
        assert root[1] is extra and root.added is extra and root[0].note is extra
        raise KeyError("fails mid-run")
    assert root[1] is first and not hasattr(root, "added") and root[0].note == "plain"
    assert "note" not in root[0]._modules
    assert list(root._modules) == ["0", "1"]  # a replaced child is back in its place
    with module_patches.scope():
        attach(root, [ModulePatch("", "0", extra)])
    assert list(root._modules) == ["0", "1"] and isinstance(root[0], torch.nn.Linear)
    with module_patches.scope(), pytest.raises(TypeError, match="torch module"):
        attach(root, [ModulePatch("", "scale", 1.5)])  # type: ignore[arg-type]
    assert not hasattr(root, "scale")
    with module_patches.scope(), pytest.raises(ValueError, match="two techniques"):
        attach(root, [ModulePatch("", "added", extra), ModulePatch("", "added", extra)])
    with module_patches.scope(), pytest.raises(ValueError, match="is a weight"):
        attach(root, [ModulePatch("0", "weight", extra)])
    assert not hasattr(root, "added") and isinstance(root[0].weight, torch.nn.Parameter)


# --- bad input -------------------------------------------------------------------------------

def test_box_outside_the_image_is_an_error(session):
    message = run_error(session, graph([("a red circle", 48, 0, 32, 16)]))
    assert "reaches outside the 64x64 image" in message and "x 48..80" in message
    message = run_error(session, graph([("a red circle", 0, 40, 16, 16)], width=80, height=48))
    assert "outside the 80x48 image" in message


def test_zero_sized_or_misplaced_boxes_are_validation_errors(session):
    for change in ({"width": 0}, {"height": 4}, {"x": 4}, {"y": -8}, {"x": 16384}):
        prompt = graph([RED])
        prompt["posbox0"]["inputs"].update(change)
        with pytest.raises(PromptValidationError):
            session.validate(prompt)


def test_more_than_30_boxes_is_an_error(session):
    boxes = [(f"shape {i}", 8 * (i % 6), 8 * (i // 6), 8, 8) for i in range(31)]
    message = run_error(session, graph(boxes))
    assert "at most 30 boxes" in message
    graph_image(session, graph(boxes[:30]))  # 30 is fine


def write_variant(gligen_dir: Path, name: str, change) -> str:
    state = dict(load_file(gligen_dir / FILE))
    change(state)
    save_file(state, str(gligen_dir / name))
    return name


def test_files_that_do_not_fit_say_why(session, gligen_dir):
    def wide_context(state):
        state["position_net.linears.4.weight"] = torch.zeros(48, 512)
        state["position_net.linears.4.bias"] = torch.zeros(48)

    def wide_phrases(state):
        state["position_net.null_positive_feature"] = torch.zeros(48)
        state["position_net.linears.0.weight"] = torch.zeros(512, 48 + 64)

    def missing_block(state):
        for key in [k for k in state if k.startswith("mid_block.")]:
            del state[key]

    def other_sizes(state):
        key = "up_blocks.1.attentions.0.transformer_blocks.0.fuser.ff.net.2.weight"
        state[key] = torch.zeros(32, 64)

    expected = {wide_context: "made for a model with 48-wide text embeddings",
                wide_phrases: "takes 48-wide phrase embeddings but this CLIP gives 32",
                missing_block: "does not fit this model's blocks",
                other_sizes: "its layer for up_blocks.1.attentions.0.transformer_blocks.0 has "
                             "other sizes"}
    for change, text in expected.items():
        name = write_variant(gligen_dir, f"bad-{change.__name__}.safetensors", change)
        assert text in run_error(session, graph([RED], gligen=name)), change.__name__


def test_files_that_are_not_gligen_are_refused(session, gligen_dir):
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)},
              str(gligen_dir / "a-lora.safetensors"))
    assert "not a GLIGEN file" in run_error(session, graph([RED], gligen="a-lora.safetensors"))

    def text_image(state):
        for key in [k for k in state if k.startswith("position_net.linears.")]:
            state[key.replace("linears.", "linears_text.")] = state.pop(key)

    name = write_variant(gligen_dir, "text-image.safetensors", text_image)
    assert "text-image GLIGEN" in run_error(session, graph([RED], gligen=name))


def test_model_it_cannot_fit_is_refused(gligen_dir):
    """The tiny GLIGEN on the default model (64-wide text embeddings, other blocks), and the
    family check for models that are not SD 1.x/2.x."""
    from nodes.diffusion.builtin_models import SHAPES_NAME, shipped_weights
    from nodes.diffusion.gligen import fit, load_gligen
    from nodes.diffusion.loading import load_components

    gligen = load_gligen(gligen_dir / FILE)
    with pytest.raises(ValueError, match=r"Stable Diffusion 1\.x/2\.x UNets; this model is 'sdxl'"):
        fit(gligen, build_tiny_gligen_unet(), family="sdxl")
    if not shipped_weights(SHAPES_NAME).is_file():
        pytest.skip("the default model's weights are not shipped")
    shapes = load_components(shipped_weights(SHAPES_NAME))
    with pytest.raises(ValueError, match="made for a model with 32-wide text embeddings; this "
                                         "model has 64"):
        fit(gligen, shapes.unet, shapes.family)


def test_two_gligen_models_in_one_run_are_refused(session, gligen_dir):
    shutil.copy(gligen_dir / FILE, gligen_dir / "copy.safetensors")
    prompt = graph([RED], negative_boxes=[BLUE])
    prompt["gligen2"] = {"class_type": "GLIGENLoader",
                         "inputs": {"gligen_name": "copy.safetensors"}}
    prompt["negbox0"]["inputs"]["gligen_textbox_model"] = ["gligen2", 0]
    assert "one run can use one GLIGEN model" in run_error(session, prompt)


def test_pickle_gligen_refused_unless_opted_in(session, gligen_dir, models_dir, tmp_path):
    torch.save(load_file(gligen_dir / FILE), gligen_dir / "pickled.pt")
    prompt = graph([RED], gligen="pickled.pt")
    with pytest.raises(PromptValidationError, match=r"pickled\.pt is a pickle"):
        session.validate(prompt)
    opted = Session(tmp_path, models_dir=models_dir, device="cpu", allow_pickle=True,
                    registry=registry_with_capture())
    assert np.array_equal(graph_image(opted, prompt), graph_image(session, graph([RED])))


def test_loader_lists_files_and_unet_folders(session):
    from nodes.gligen import list_gligen

    names = list_gligen(session.env)
    assert FILE in names and f"{TINY_GLIGEN_NAME}-unet" in names
