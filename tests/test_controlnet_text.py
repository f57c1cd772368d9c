"""CLIP Text Encode (Controlnet): the ControlNet reads its own text, the UNet the prompt's;
equal to a hand loop on diffusers' ControlNet and UNet."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.session import Session
from nodes.diffusion.handles import CondEntry, TextEncoder
from nodes.diffusion.tiny import TINY_NAME
from nodes.diffusion.token_weights import CONTROLNET_POOLED, CONTROLNET_TEXT
from tests.graph_nodes import CAPTURED, registry_with_capture

PROMPT = "a red circle"
NEGATIVE = "blurry"
CN_TEXT = "a blue square on a green background"
LONG_TEXT = ", ".join(["a blue square on a green background"] * 12)  # past 77 tokens
STEPS = 4
CFG = 6.0
SEED = 5
SCALE = 0.9
TOL = 1e-4


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("cntext")
    (home / "input").mkdir()
    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))).save(
        home / "input" / "control.png")
    return home


@pytest.fixture(scope="module")
def session(models_dir, controlnet_paths, home):
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def parts(tiny_model_paths):
    from nodes.diffusion.loading import load_components

    return load_components(tiny_model_paths["diffusers"])


def text(parts, prompt: str) -> torch.Tensor:
    from nodes.conditioning import encode_text

    return encode_text(TextEncoder(parts.text_encoder, parts.tokenizer), prompt)


def graph(*, cn_text: str | None = CN_TEXT, before: bool = False, on_negative: bool = False,
          controlnet: bool = True) -> dict:
    prompt: dict = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_NAME}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode",
                "inputs": {"text": NEGATIVE, "clip": ["ckpt", 1]}},
        "lat": {"class_type": "EmptyLatentImage",
                "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    pos, neg = ["pos", 0], ["neg", 0]

    def cn_text_on(cond: list, node: str) -> list:
        prompt[node] = {"class_type": "CLIPTextEncodeControlnet", "inputs": {
            "clip": ["ckpt", 1], "conditioning": cond, "text": cn_text}}
        return [node, 0]

    if cn_text is not None and before:
        pos = cn_text_on(pos, "cntext")
    if controlnet:
        prompt["cn"] = {"class_type": "ControlNetLoader",
                        "inputs": {"control_net_name": "steerflow-tiny-controlnet"}}
        prompt["cnimg"] = {"class_type": "LoadImage", "inputs": {"image": "control.png"}}
        prompt["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": pos, "negative": neg, "control_net": ["cn", 0],
            "image": ["cnimg", 0], "strength": SCALE}}
        pos, neg = ["apply", 0], ["apply", 1]
    if cn_text is not None and not before:
        pos = cn_text_on(pos, "cntext")
    if cn_text is not None and on_negative:
        neg = cn_text_on(neg, "cntext_neg")
    prompt["k"] = {"class_type": "KSampler", "inputs": {
        "model": ["ckpt", 0], "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
        "scheduler": "normal", "positive": pos, "negative": neg, "latent_image": ["lat", 0],
        "denoise": 1.0}}
    prompt["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["k", 0], "key": "x"}}
    return prompt


def samples(session, prompt: dict) -> torch.Tensor:
    key = uuid.uuid4().hex
    prompt["cap"]["inputs"]["key"] = key
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).samples


def hand_loop(parts, home: Path, controlnet_paths, cn_negative: torch.Tensor,
              cn_positive: torch.Tensor) -> torch.Tensor:
    """Euler with CFG on diffusers' UNet (the prompts' texts) plus diffusers' ControlNet
    residuals computed from ``cn_negative`` / ``cn_positive``, row by row."""
    from diffusers import ControlNetModel

    from nodes.diffusion.schedulers import make_scheduler

    net = ControlNetModel.from_pretrained(controlnet_paths["diffusers"]).eval()
    arr = np.asarray(Image.open(home / "input" / "control.png").convert("RGB"), np.float32)
    hint = torch.from_numpy(arr / 255.0).permute(2, 0, 1)[None]
    scheduler = make_scheduler("euler", "normal", dict(parts.scheduler_config))
    scheduler.set_timesteps(STEPS)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED))
    x = x * scheduler.init_noise_sigma
    rows = ((text(parts, NEGATIVE), cn_negative), (text(parts, PROMPT), cn_positive))
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        eps = []
        with torch.no_grad():
            for unet_text, cn_text in rows:
                down, mid = net(inp, t, encoder_hidden_states=cn_text, controlnet_cond=hint,
                                conditioning_scale=SCALE, return_dict=False)
                eps.append(parts.unet(inp, t, encoder_hidden_states=unet_text,
                                      down_block_additional_residuals=down,
                                      mid_block_additional_residual=mid).sample)
        x = scheduler.step(eps[0] + CFG * (eps[1] - eps[0]), t, x).prev_sample
    return x


def test_the_text_is_stored_on_every_entry(session, parts):
    prompt = graph(controlnet=False)
    prompt["pos2"] = {"class_type": "CLIPTextEncode",
                      "inputs": {"text": "a tree", "clip": ["ckpt", 1]}}
    prompt["both"] = {"class_type": "ConditioningCombine",
                      "inputs": {"conditioning_1": ["pos", 0], "conditioning_2": ["pos2", 0]}}
    prompt["cntext"]["inputs"]["conditioning"] = ["both", 0]
    prompt["cap"]["inputs"]["value"] = ["cntext", 0]
    key = uuid.uuid4().hex
    prompt["cap"]["inputs"]["key"] = key
    assert session.run(prompt).ok
    entries = CAPTURED.pop(key).entries
    assert len(entries) == 2
    expected = text(parts, CN_TEXT)
    for entry, own in zip(entries, (PROMPT, "a tree"), strict=True):
        torch.testing.assert_close(entry.embeds, text(parts, own), rtol=0, atol=1e-6)
        torch.testing.assert_close(entry.options[CONTROLNET_TEXT], expected, rtol=0, atol=1e-6)
        assert CONTROLNET_POOLED in entry.options  # ComfyUI's key (None on SD 1.x here)


@pytest.mark.parametrize("before", [False, True])
def test_the_controlnet_reads_its_own_text(session, parts, home, controlnet_paths, before):
    ours = samples(session, graph(before=before))
    expected = hand_loop(parts, home, controlnet_paths, text(parts, NEGATIVE),
                         text(parts, CN_TEXT))
    torch.testing.assert_close(ours, expected, rtol=0, atol=TOL)
    plain = samples(session, graph(cn_text=None))
    assert (ours - plain).abs().max() > 1e-3, "the ControlNet's text changes the image"


def test_a_long_controlnet_text_on_both_sides(session, parts, home, controlnet_paths):
    """The ControlNet reads 77 tokens on the negative row and 154 on the positive (two
    ControlNet passes) while the UNet reads the prompts' 77."""
    prompt = graph(on_negative=True)
    prompt["cntext"]["inputs"]["text"] = LONG_TEXT
    ours = samples(session, prompt)
    long = text(parts, LONG_TEXT)
    assert long.shape[1] == 154
    expected = hand_loop(parts, home, controlnet_paths, text(parts, CN_TEXT), long)
    torch.testing.assert_close(ours, expected, rtol=0, atol=TOL)


def test_without_a_controlnet_nothing_changes(session):
    torch.testing.assert_close(samples(session, graph(controlnet=False)),
                               samples(session, graph(cn_text=None, controlnet=False)),
                               rtol=0, atol=0)


def test_a_text_of_another_width_is_refused():
    from nodes.diffusion.token_weights import controlnet_contexts

    class Run:
        class attention:
            roles = ("uncond", "cond")
        entries = {"cond": CondEntry(torch.zeros(1, 77, 32),
                                     {CONTROLNET_TEXT: torch.zeros(1, 77, 768)})}

    class Call:
        encoder_hidden_states = torch.zeros(2, 77, 32)

    with pytest.raises(ValueError, match="reads 32-wide text"):
        controlnet_contexts(Run, Call, 0, 2)


def test_inputs_are_comfyuis():
    from nodes.conditioning_ops import CLIPTextEncodeControlnet

    specs = CLIPTextEncodeControlnet.INPUT_SPECS
    assert list(specs) == ["clip", "conditioning", "text"]
    assert specs["text"].default == ""
