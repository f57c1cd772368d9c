"""Pix2Pix-Zero through the graph equals diffusers' StableDiffusionPix2PixZeroPipeline: the
edit direction, the edit with cross-attention guidance, and the regularised inversion."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.pipelines.deprecated.stable_diffusion_variants import (
    pipeline_stable_diffusion_pix2pix_zero as pix2pix_zero_module,
)
from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_pix2pix_zero import (  # noqa: E501
    StableDiffusionPix2PixZeroPipeline,
)
from PIL import Image

from engine.session import Session, Workflow
from engine.validation import PromptValidationError
from tests.graph_nodes import CAPTURED, registry_with_capture

PROMPT = "a red circle at the top left on a white background"
SOURCE = ["a red circle at the top", "a blue circle on the left", "a small green circle"]
TARGET = ["a red square at the top", "a blue square on the left", "a small green square"]
STEPS = 6
# The tiny random model's attention is nearly flat: the pipeline's 0.1 moves the latent by
# ~1e-5; a large amount makes the guidance change the image visibly.
AMOUNT = 500.0
TOL = 1e-4
# the pipeline's invert: a short schedule, a few regularisation rounds (its defaults 5, 5)
REG = {"num_reg_steps": 2, "num_auto_corr_rolls": 3, "lambda_auto_corr": 20.0,
       "lambda_kl": 20.0}


def picture(width: int = 64, height: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / 63.0
    arr = np.stack([x, y, 1 - x * y], axis=-1)
    arr[(x - 0.3) ** 2 + (y - 0.35) ** 2 < 0.04] = (0.9, 0.1, 0.1)
    return (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("p2pz")
    (home / "input").mkdir()
    for width in (64, 96, 8):
        Image.fromarray(picture(width, 64 if width > 8 else 8)).save(
            home / "input" / f"picture{width}.png")
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


def pix2pix_pipe(folder) -> StableDiffusionPix2PixZeroPipeline:
    from nodes.diffusion.loading import load_components

    c = load_components(folder)
    pipe = StableDiffusionPix2PixZeroPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
        scheduler=DDIMScheduler.from_config(c.scheduler_config),
        inverse_scheduler=DDIMInverseScheduler.from_config(c.scheduler_config),
        caption_generator=None, caption_processor=None, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipes(tiny_model_paths):
    return {"steerflow-tiny": pix2pix_pipe(tiny_model_paths["diffusers"]),
            "steerflow-tiny.safetensors": pix2pix_pipe(tiny_model_paths["single_file"])}


def key() -> str:
    return uuid.uuid4().hex


def capture(prompt: dict, node: str, output: int = 0) -> str:
    name = key()
    prompt[f"c{node}"] = {"class_type": "TestCapture",
                          "inputs": {"value": [node, output], "key": name}}
    return name


def edit_prompt(ckpt="steerflow-tiny", width=64, height=64, amount=AMOUNT, cfg=7.5, batch=1,
                seed=3, source="\n".join(SOURCE), target="\n".join(TARGET),
                edit=True, sampler="ddim") -> dict:
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "d": {"class_type": "Pix2PixZeroEditDirection",
              "inputs": {"clip": ["4", 1], "source": source, "target": target}},
        "p": {"class_type": "Pix2PixZero", "inputs": {
            "conditioning": ["6", 0], "edit_direction": ["d", 0],
            "cross_attention_guidance_amount": amount}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                            "batch_size": batch}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": STEPS, "cfg": cfg,
            "sampler_name": sampler, "scheduler": "normal",
            "positive": ["p", 0] if edit else ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    prompt["out"] = {"class_type": "TestCapture", "inputs": {"value": ["8", 0], "key": key()}}
    return prompt


def run_image(session, prompt) -> np.ndarray:
    prompt["out"]["inputs"]["key"] = key()
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["out"]["inputs"]["key"]).numpy()


# --- parity ---------------------------------------------------------------------------------


def test_direction_is_the_pipelines(session, pipes):
    prompt = edit_prompt()
    name = capture(prompt, "d")
    result = session.run({k: v for k, v in prompt.items() if k in ("4", "d", "cd")})
    assert result.ok, result.run.error
    ours = CAPTURED.pop(name)
    pipe = pipes["steerflow-tiny"]
    ref = pipe.construct_direction(pipe.get_embeds(SOURCE), pipe.get_embeds(TARGET))
    assert ours.direction.shape == ref.shape == (1, 77, 32)
    assert (ours.sources, ours.targets) == (3, 3)
    diff = float((ours.direction - ref).abs().max())
    print(f"direction: max abs diff {diff:.1e}")
    assert diff <= 1e-6


@pytest.mark.parametrize(("ckpt", "width", "height", "cfg", "batch"), [
    ("steerflow-tiny", 64, 64, 7.5, 1),
    ("steerflow-tiny.safetensors", 64, 64, 7.5, 1),
    ("steerflow-tiny", 96, 64, 7.5, 1),  # non-square
    ("steerflow-tiny.safetensors", 96, 64, 7.5, 1),
])
def test_edit_matches_pix2pix_zero_pipeline(session, pipes, ckpt, width, height, cfg, batch):
    ours = run_image(session, edit_prompt(ckpt, width, height, cfg=cfg, batch=batch))
    pipe = pipes[ckpt]
    ref = pipe(PROMPT, source_embeds=pipe.get_embeds(SOURCE), target_embeds=pipe.get_embeds(TARGET),
               num_inference_steps=STEPS, guidance_scale=cfg, negative_prompt="",
               height=height, width=width, num_images_per_prompt=batch,
               generator=torch.Generator("cpu").manual_seed(3),
               cross_attention_guidance_amount=AMOUNT, output_type="np").images
    diff = float(np.abs(ours - ref).max())
    print(f"{ckpt} {width}x{height} cfg {cfg} batch {batch}: max abs diff {diff:.1e}")
    assert ours.shape == ref.shape and diff <= TOL
    unguided = run_image(session, edit_prompt(ckpt, width, height, amount=0.0, cfg=cfg,
                                              batch=batch))
    assert np.abs(ours - unguided).max() > 0.02  # the guidance acts
    plain = run_image(session, edit_prompt(ckpt, width, height, cfg=cfg, batch=batch,
                                           edit=False))
    assert np.abs(unguided - plain).max() > 1e-3  # and so does the direction


@pytest.mark.parametrize(("batch", "cfg", "sampler"), [(2, 7.5, "ddim"), (1, 1.0, "ddim"),
                                                      (1, 7.5, "euler"), (1, 7.5, "dpmpp_2m")])
def test_batches_no_cfg_and_other_samplers_edit(session, batch, cfg, sampler):
    """Where the pipeline has no reference: it adds the direction to row 1 of its prompt
    batch, which for several images is the second *negative* prompt and without CFG does
    not exist (no edit at all); here every image's positive prompt gets it. σ-space and
    multistep samplers: the reference trajectory steps its own copy of the scheduler."""
    both = run_image(session, edit_prompt(batch=batch, cfg=cfg, sampler=sampler))
    unguided = run_image(session, edit_prompt(batch=batch, cfg=cfg, amount=0.0,
                                              sampler=sampler))
    plain = run_image(session, edit_prompt(batch=batch, cfg=cfg, edit=False, sampler=sampler))
    for k in range(batch):
        assert np.abs(both[k] - unguided[k]).max() > 0.02
        assert np.abs(unguided[k] - plain[k]).max() > 1e-3


def invert_prompt(ckpt="steerflow-tiny", width=64, cfg=1.0, **reg) -> dict:
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "l": {"class_type": "LoadImage", "inputs": {"image": f"picture{width}.png"}},
        "e": {"class_type": "VAEEncode", "inputs": {"pixels": ["l", 0], "vae": ["4", 2]}},
        "i": {"class_type": "DDIMInvert", "inputs": {
            "model": ["4", 0], "positive": ["6", 0], "latent": ["e", 0], "steps": 8,
            "cfg": cfg, **({"negative": ["7", 0]} if cfg > 1 else {}), **reg}},
    }
    return prompt


@pytest.mark.parametrize(("ckpt", "width", "cfg", "seed"), [
    ("steerflow-tiny", 64, 1.0, 5),
    ("steerflow-tiny.safetensors", 64, 1.0, 0),
    ("steerflow-tiny", 96, 3.0, 5),  # non-square, with classifier-free guidance
])
def test_regularised_inversion_matches_the_pipelines_invert(session, pipes, monkeypatch, ckpt,
                                                            width, cfg, seed):
    # The pipeline's invert puts its map-recording processors (classic attention) on every
    # layer, and never reads the maps; with them, the 1e-7 differences of SDPA's kernels
    # grow through the regularisation's steps to ~1e-4. With the UNet's default processors
    # (SDPA, as the sampler's) both sides compute attention alike.
    def default_processors(unet):
        unet.set_attn_processor(AttnProcessor2_0())
        return unet

    monkeypatch.setattr(pix2pix_zero_module, "prepare_unet", default_processors)
    prompt = invert_prompt(ckpt, width, cfg, seed=seed, **REG)
    clean, inverted = capture(prompt, "e"), capture(prompt, "i")
    result = session.run(prompt)
    assert result.ok, result.run.error
    clean, inverted = CAPTURED.pop(clean).samples, CAPTURED.pop(inverted).samples
    ref = pipes[ckpt].invert(PROMPT, image=clean, num_inference_steps=8, guidance_scale=cfg,
                             generator=torch.Generator().manual_seed(seed),
                             output_type="np", **REG).latents
    diff = float((inverted - ref).abs().max())
    print(f"invert {ckpt} width {width} cfg {cfg}: max abs diff {diff:.1e}")
    assert inverted.shape == ref.shape and diff <= TOL
    plain = run_latent(session, invert_prompt(ckpt, width, cfg), "i")
    assert float((plain - inverted).abs().max()) > 0.1  # the regularisation acts
    other = run_latent(session, invert_prompt(ckpt, width, cfg, seed=seed + 1, **REG), "i")
    assert float((other - inverted).abs().max()) > 1e-4  # the seed draws the rolls


def run_latent(session, prompt: dict, node: str) -> torch.Tensor:
    name = capture(prompt, node)
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(name).samples


def test_default_inversion_is_unregularised(session):
    plain = run_latent(session, invert_prompt(), "i")
    zero = run_latent(session, invert_prompt(num_reg_steps=0, lambda_kl=5.0, seed=9), "i")
    assert torch.equal(plain, zero)


# --- errors ---------------------------------------------------------------------------------


def _node_errors(session, prompt):
    with pytest.raises(PromptValidationError) as info:
        session.run(prompt)
    return [i for i in info.value.issues if i.kind == "node_error"]


def test_empty_sentences_are_validation_errors(session):
    (issue,) = _node_errors(session, edit_prompt(source="  \n\n \t"))
    assert issue.input_name == "source" and "at least one source sentence" in issue.message
    issues = _node_errors(session, edit_prompt(source="", target="\n"))
    assert {i.input_name for i in issues} == {"source", "target"}
    # an unknown embedding is only a warning (ComfyUI drops it); the empty source still fails
    with pytest.raises(PromptValidationError) as info:
        session.run(edit_prompt(source="", target="a embedding:nowhere square"))
    (warning,) = [i for i in info.value.issues if i.kind == "node_warning"]
    assert warning.input_name == "target" and warning.severity == "warning"
    assert "embedding:nowhere does not exist" in warning.message


def test_linked_empty_sentences_fail_when_run(session):
    prompt = edit_prompt()
    prompt["s"] = {"class_type": "PrimitiveString", "inputs": {"value": "\n \n"}}
    prompt["d"]["inputs"]["target"] = ["s", 0]
    result = session.run(prompt)
    assert result.run.status == "error"
    assert "at least one target sentence" in result.run.error["exception_message"]


def test_misuse_is_a_clear_error(session):
    prompt = edit_prompt()  # on the negative
    prompt["3"]["inputs"]["positive"], prompt["3"]["inputs"]["negative"] = ["7", 0], ["p", 0]
    result = session.run(prompt)
    assert result.run.status == "error"
    assert "positive" in result.run.error["exception_message"]
    prompt = edit_prompt()  # on a combined conditioning
    prompt["c"] = {"class_type": "ConditioningCombine",
                   "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["7", 0]}}
    prompt["p"]["inputs"]["conditioning"] = ["c", 0]
    result = session.run(prompt)
    assert result.run.status == "error"
    assert "edits one prompt" in result.run.error["exception_message"]


def test_direction_of_another_text_encoder_is_refused():
    from nodes.diffusion.pix2pix_zero import edit_embeds

    with pytest.raises(ValueError, match="same model's CLIP"):
        edit_embeds(torch.zeros(1, 77, 32), torch.zeros(1, 77, 64))
    long = edit_embeds(torch.zeros(1, 154, 32), torch.ones(1, 77, 32))
    assert torch.equal(long, torch.ones(1, 154, 32))  # every window of a long prompt


def test_a_latent_too_small_to_regularise_is_a_clear_error(session):
    prompt = invert_prompt(width=8, num_reg_steps=1)
    capture(prompt, "i")
    result = session.run(prompt)
    assert result.run.status == "error"
    message = result.run.error["exception_message"]
    # the tiny UNet (one channel per norm group) cannot take a 1x1 latent at all, so the
    # sampler's size check speaks first; on SD's UNets the regularisation's own does
    assert "latent is 1x1" in message and "shrinks it to one pixel" in message
    from nodes.diffusion.inversion import check_regularizable

    with pytest.raises(ValueError, match="num_reg_steps 0"):
        check_regularizable(1, 1)


# --- composition and the example --------------------------------------------------------


def test_combines_with_sega_controlnet_sag_lora_and_a_mask(session, controlnet_paths,
                                                           models_dir):
    """Pix2Pix-Zero, SEGA, a ControlNet, SAG, a LoRA and a noise mask in one run: each acts
    (the guidance too)."""
    from tests.test_lora import random_lora, save_peft

    (models_dir / "loras").mkdir(exist_ok=True)
    save_peft(models_dir / "loras" / "p2pz_lora.safetensors", random_lora(4))

    def prompt(p2pz=True, guidance=True, sega=True, controlnet=True, sag=True, lora=True,
               mask=True) -> dict:
        p = edit_prompt(edit=p2pz, amount=AMOUNT if guidance else 0.0)
        model: list = ["4", 0]
        if lora:
            p["19"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": model, "lora_name": "p2pz_lora.safetensors", "strength_model": 0.3}}
            model = ["19", 0]
        if sega:
            p["c0"] = {"class_type": "SEGAConcept", "inputs": {
                "clip": ["4", 1], "text": "a green star", "scale": 6.0, "warmup_steps": 1}}
            p["20"] = {"class_type": "ApplySEGA", "inputs": {"model": model,
                                                             "concepts": ["c0", 0]}}
            model = ["20", 0]
        if sag:
            p["21"] = {"class_type": "SelfAttentionGuidance",
                       "inputs": {"model": model, "scale": 0.75, "blur_sigma": 1.0}}
            model = ["21", 0]
        p["3"]["inputs"]["model"] = model
        if controlnet:
            p["cn"] = {"class_type": "ControlNetLoader",
                       "inputs": {"control_net_name": controlnet_paths["diffusers"].name}}
            p["hint"] = {"class_type": "LoadImage", "inputs": {"image": "picture64.png"}}
            p["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
                "positive": p["3"]["inputs"]["positive"], "negative": ["7", 0],
                "control_net": ["cn", 0], "image": ["hint", 0], "strength": 1.0}}
            p["3"]["inputs"]["positive"], p["3"]["inputs"]["negative"] = ["apply", 0], ["apply", 1]
        if mask:
            p["hole"] = {"class_type": "LoadImage", "inputs": {"image": "picture64.png"}}
            p["m"] = {"class_type": "ImageToMask", "inputs": {"image": ["hole", 0],
                                                              "channel": "red"}}
            p["masked"] = {"class_type": "SetLatentNoiseMask",
                           "inputs": {"samples": ["5", 0], "mask": ["m", 0]}}
            p["3"]["inputs"]["latent_image"] = ["masked", 0]
        return p

    both = run_image(session, prompt())
    for name in ("p2pz", "guidance", "sega", "controlnet", "sag", "lora", "mask"):
        without = run_image(session, prompt(**{name: False}))
        diff = float(np.abs(both - without).max())
        print(f"without {name}: max abs diff {diff:.3f}")
        assert diff > 1e-3, name


def test_example_workflow_runs(models_dir, tmp_path):
    wf = Workflow.load("workflows/pix2pix_zero.json")
    for node_id, node in wf.prompt.items():
        if "steps" in node["inputs"]:
            wf.set(f"{node_id}.steps", 3)
    result = Session(tmp_path, models_dir=models_dir, device="cpu").run(wf)
    assert result.ok, result.run.error
    assert len(result.image_paths) == 2
    assert all(Image.open(p).size == (64, 64) for p in result.image_paths)
