"""PhotoMaker (Load PhotoMaker, PhotoMaker Encode): the ID encoder against its math written
out, the conditioning against PhotoMaker's pipeline written out on the tiny SDXL, sampling
with it, loading, and the structured errors."""

from __future__ import annotations

import copy
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from engine.session import Session
from engine.validation import PromptValidationError
from nodes.diffusion.handles import Conditioning, TextEncoder
from nodes.diffusion.photomaker import PhotoMaker, load_photomaker, photomaker_encode
from nodes.diffusion.tiny import TINY_NAME
from nodes.diffusion.tiny_photomaker import (
    TINY_PHOTOMAKER_NAME,
    build_tiny_photomaker,
    save_tiny_photomaker,
)
from nodes.diffusion.tiny_sdxl import TINY_REFINER_NAME, TINY_SDXL_NAME, build_tiny_sdxl_pipeline
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

PM_FILE = f"{TINY_PHOTOMAKER_NAME}.safetensors"
HEADS = 2  # the tiny encoder's: 128 wide, heads of 64
PROMPT = "a photograph of a man photomaker smiling in a garden"
TOL = 1e-5


# --- the math, written out ----------------------------------------------------------------------

def _ln(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * sd[name + ".weight"] + sd[name + ".bias"]


def _linear(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    out = x @ sd[name + ".weight"].T
    return out + sd[name + ".bias"] if name + ".bias" in sd else out


def reference_id_embeds(sd: dict, pixels: torch.Tensor, heads: int = HEADS) -> torch.Tensor:
    """CLIP ViT image tower (quick-GELU, pre-norm) + both projections, in plain ops."""
    v = "vision_model."
    kernel = sd[v + "embeddings.patch_embedding.weight"]  # [W, 3, p, p]
    width, channels, p = kernel.shape[0], kernel.shape[1], kernel.shape[-1]
    n, _, size, _ = pixels.shape
    g = size // p
    patches = pixels.reshape(n, channels, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
    x = patches.reshape(n, g * g, channels * p * p) @ kernel.reshape(width, -1).T
    cls = sd[v + "embeddings.class_embedding"].expand(n, 1, width)
    x = torch.cat([cls, x], dim=1) + sd[v + "embeddings.position_embedding.weight"]
    x = _ln(x, sd, v + "pre_layrnorm")
    layers = len({k.split(".")[3] for k in sd if k.startswith(v + "encoder.layers.")})
    d = width // heads
    for i in range(layers):
        pre = f"{v}encoder.layers.{i}."
        h = _ln(x, sd, pre + "layer_norm1")
        q, k, val = (_linear(h, sd, pre + f"self_attn.{t}_proj").reshape(n, -1, heads, d)
                     .transpose(1, 2) for t in ("q", "k", "v"))
        w = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1)
        o = (w @ val).transpose(1, 2).reshape(n, -1, width)
        x = x + _linear(o, sd, pre + "self_attn.out_proj")
        h = _linear(_ln(x, sd, pre + "layer_norm2"), sd, pre + "mlp.fc1")
        h = h * torch.sigmoid(1.702 * h)
        x = x + _linear(h, sd, pre + "mlp.fc2")
    pooled = _ln(x[:, 0], sd, v + "post_layernorm")
    return torch.cat([pooled @ sd["visual_projection.weight"].T,
                      pooled @ sd["visual_projection_2.weight"].T], dim=-1)


def reference_fuse(sd: dict, tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    def mlp(name: str, x: torch.Tensor, residual: bool) -> torch.Tensor:
        h = _linear(_ln(x, sd, f"fuse_module.{name}.layernorm"), sd, f"fuse_module.{name}.fc1")
        h = 0.5 * h * (1 + torch.erf(h / 2 ** 0.5))
        h = _linear(h, sd, f"fuse_module.{name}.fc2")
        return h + x if residual else h

    h = mlp("mlp1", torch.cat([tokens, ids], dim=-1), False) + tokens
    return _ln(mlp("mlp2", h, True), sd, "fuse_module.layer_norm")


def comfy_preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """ComfyUI's clip_preprocess, written out."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    x = image[..., :3].movedim(-1, 1)
    if x.shape[2:] != (size, size):
        scale = size / min(x.shape[2], x.shape[3])
        x = F.interpolate(x, size=(round(scale * x.shape[2]), round(scale * x.shape[3])),
                          mode="bicubic", antialias=True)
        top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    return (torch.clip(255.0 * x, 0, 255).round() / 255.0 - mean) / std


def pipeline_reference(pipe, sd: dict, images: torch.Tensor, prompt: str
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """PhotoMaker's ``encode_prompt_with_trigger_word`` + ``id_encoder`` on the tiny SDXL:
    the trigger added as a token, removed, the class token repeated per image, fused."""
    count = images.shape[0]
    hidden, mask, pooled = [], None, None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder),
                               (pipe.tokenizer_2, pipe.text_encoder_2)):
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_tokens(["photomaker"], special_tokens=True)
        trigger = tokenizer.convert_tokens_to_ids("photomaker")
        clean: list[int] = []
        class_index = []
        for token in tokenizer.encode(prompt):
            if token == trigger:
                class_index.append(len(clean) - 1)
            else:
                clean.append(token)
        (c,) = class_index
        clean = clean[:c] + [clean[c]] * count + clean[c + 1:]
        clean += [tokenizer.pad_token_id] * (77 - len(clean))
        mask = torch.tensor([c <= i < c + count for i in range(77)])
        with torch.no_grad():
            out = encoder(torch.tensor([clean]), output_hidden_states=True)
        pooled = out[0]
        hidden.append(out.hidden_states[-2])
    z = torch.cat(hidden, dim=-1)
    with torch.no_grad():
        ids = reference_id_embeds(sd, comfy_preprocess(images, 32))
        z[0, mask] = reference_fuse(sd, z[0, mask], ids)
    return z, pooled


# --- fixtures -----------------------------------------------------------------------------------

def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(coarse, np.ones((4, 4, 1), dtype=np.uint8)))


def as_image(*pictures: Image.Image) -> torch.Tensor:
    return torch.cat([torch.from_numpy(np.asarray(p, dtype=np.float32) / 255.0)[None]
                      for p in pictures])


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_sdxl_pipeline()


@pytest.fixture(scope="module")
def clip(pipe) -> TextEncoder:
    return TextEncoder(pipe.text_encoder, pipe.tokenizer, "sdxl",
                       text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2)


@pytest.fixture(scope="module")
def tiny_pm() -> PhotoMaker:
    return PhotoMaker(build_tiny_photomaker(), "tiny")


@pytest.fixture(scope="module")
def sd() -> dict:
    return {k: v.detach() for k, v in build_tiny_photomaker().state_dict().items()}


@pytest.fixture(scope="module")
def root(tmp_path_factory, models_dir) -> Path:
    from nodes.diffusion.tiny_sdxl import ensure_tiny_sdxl

    root = tmp_path_factory.mktemp("photomaker_models")
    ensure_tiny_sdxl(root)
    shutil.copytree(models_dir / "checkpoints" / TINY_NAME, root / "checkpoints" / TINY_NAME)
    save_tiny_photomaker(root / "photomaker")
    save_tiny_photomaker(root / "photomaker", fmt="plain")
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("photomaker_home")
    (home / "input").mkdir()
    picture(48, 40, 1).save(home / "input" / "face.png")
    picture(48, 40, 2).save(home / "input" / "face2.png")
    picture(8, 160, 3).save(home / "input" / "strip.png")
    return home


@pytest.fixture(scope="module")
def session(root, home):
    return Session(home, models_dir=root, device="cpu", registry=registry_with_capture())


def graph(*, text: str = PROMPT, ckpt: str = TINY_SDXL_NAME, pm: str = PM_FILE,
          images: tuple[str, ...] = ("face.png",), sample: bool = False) -> dict:
    prompt: dict = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pm": {"class_type": "PhotoMakerLoader", "inputs": {"photomaker_model_name": pm}},
        "img0": {"class_type": "LoadImage", "inputs": {"image": images[0]}},
    }
    image = ["img0", 0]
    for k, name in enumerate(images[1:], 1):
        prompt[f"img{k}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        prompt[f"batch{k}"] = {"class_type": "ImageBatch",
                               "inputs": {"image1": image, "image2": [f"img{k}", 0]}}
        image = [f"batch{k}", 0]
    prompt["enc"] = {"class_type": "PhotoMakerEncode", "inputs": {
        "photomaker": ["pm", 0], "image": image, "clip": ["ckpt", 1], "text": text}}
    value = ["enc", 0]
    if sample:
        prompt["neg"] = {"class_type": "CLIPTextEncode",
                         "inputs": {"text": "blurry", "clip": ["ckpt", 1]}}
        prompt["lat"] = {"class_type": "EmptyLatentImage",
                         "inputs": {"width": 64, "height": 64, "batch_size": 1}}
        prompt["k"] = {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": 3, "steps": 3, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["enc", 0], "negative": ["neg", 0],
            "latent_image": ["lat", 0], "denoise": 1.0}}
        value = ["k", 0]
    prompt["cap"] = {"class_type": "TestCapture", "inputs": {"value": value, "key": "x"}}
    return prompt


def captured(session, prompt: dict):
    key = uuid.uuid4().hex
    prompt["cap"]["inputs"]["key"] = key
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key)


# --- the math -----------------------------------------------------------------------------------

def test_id_encoder_equals_the_written_out_math(tiny_pm, sd):
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = tiny_pm.model.id_embeds(pixels)
    assert ours.shape == (3, 80)
    torch.testing.assert_close(ours, reference_id_embeds(sd, pixels), rtol=0, atol=TOL)


def test_fusion_equals_the_written_out_math(tiny_pm, sd):
    gen = torch.Generator().manual_seed(1)
    prompt, ids = torch.randn(1, 154, 80, generator=gen), torch.randn(2, 80, generator=gen)
    with torch.no_grad():
        out = tiny_pm.model.fuse(prompt, ids, [76, 78])
    want = prompt.clone()
    want[0, [76, 78]] = reference_fuse(sd, prompt[0, [76, 78]], ids)
    torch.testing.assert_close(out, want, rtol=0, atol=TOL)
    assert torch.equal(out[0, :76], prompt[0, :76])  # other tokens untouched


@pytest.mark.parametrize("size", [(48, 40), (32, 32), (20, 70)])
def test_preprocessing_is_comfyuis(size):
    from nodes.diffusion.photomaker import preprocess

    image = as_image(picture(*size, 5)).clone()
    image[0, 0, 0] = torch.tensor([1.2, -0.1, 0.5])  # out of range: clipped, as ComfyUI
    torch.testing.assert_close(preprocess(image, 32), comfy_preprocess(image, 32),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize(("prompt", "faces"), [
    (PROMPT, 1),
    (PROMPT, 2),
    ("woman photomaker wearing a red hat", 3),
])
def test_conditioning_equals_photomakers_pipeline(pipe, clip, tiny_pm, sd, prompt, faces):
    images = as_image(*[picture(48, 40, k) for k in range(faces)])
    cond = photomaker_encode(tiny_pm, images, clip, prompt)
    (entry,) = cond.entries
    want, pooled = pipeline_reference(pipe, sd, images, prompt)
    torch.testing.assert_close(entry.embeds, want, rtol=0, atol=TOL)
    torch.testing.assert_close(entry.options["pooled_output"], pooled, rtol=0, atol=TOL)


def test_single_token_words_put_the_class_where_comfyui_does(clip, tiny_pm):
    # ComfyUI fuses token position (word number of the trigger) - 1: "man" here
    from nodes.diffusion.photomaker import encode_prompt

    _, _, positions = encode_prompt(clip, "a photo of a man photomaker", 1)
    assert positions == [5]
    _, _, positions = encode_prompt(clip, "a photo of a man photomaker", 3)
    assert positions == [5, 6, 7]


def test_a_long_prompt_fuses_across_windows(clip, tiny_pm):
    from nodes.diffusion.photomaker import encode_prompt

    text = " ".join(["red"] * 74) + " man photomaker in a garden"
    embeds, _, positions = encode_prompt(clip, text, 3)
    assert embeds.shape == (1, 154, 80)
    assert positions == [75, 78, 79]  # token 74 ends window 0; copies 2-3 open window 1
    cond = photomaker_encode(tiny_pm, as_image(*[picture(48, 40, k) for k in range(3)]),
                             clip, text)
    changed = (cond.entries[0].embeds - embeds).abs().amax(-1)[0]
    assert changed.nonzero().flatten().tolist() == positions


# --- the graph ----------------------------------------------------------------------------------

def test_graph_gives_the_pipelines_conditioning(session, home, pipe, sd):
    cond = captured(session, graph(images=("face.png", "face2.png")))
    assert isinstance(cond, Conditioning)
    images = torch.cat([as_image(Image.open(home / "input" / n).convert("RGB"))
                        for n in ("face.png", "face2.png")])
    want, pooled = pipeline_reference(pipe, sd, images, PROMPT)
    torch.testing.assert_close(cond.entries[0].embeds, want, rtol=0, atol=TOL)
    torch.testing.assert_close(cond.entries[0].options["pooled_output"], pooled, rtol=0,
                               atol=TOL)


def test_sampling_with_photomaker(session):
    latent = captured(session, graph(sample=True))
    other = captured(session, graph(sample=True, images=("face2.png",)))
    assert latent.samples.shape == (1, 4, 8, 8)
    assert bool(latent.samples.isfinite().all())
    assert not torch.allclose(latent.samples, other.samples)  # the face matters


def test_every_file_layout_loads_the_same(root, session):
    plain = captured(session, graph(pm=f"{TINY_PHOTOMAKER_NAME}-plain.safetensors"))
    flat = captured(session, graph())
    assert torch.equal(plain.entries[0].embeds, flat.entries[0].embeds)


def test_pickle_refused_unless_allowed(root, home, session):
    pickled = save_tiny_photomaker(root / "photomaker", fmt="pickle")
    try:
        with pytest.raises(PromptValidationError, match=r"photomaker\.bin is a pickle"):
            session.run(graph(pm=pickled.name))
        with pytest.raises(ValueError, match="pickle"):
            load_photomaker(pickled)
        opted = Session(home, models_dir=root, device="cpu", allow_pickle=True,
                        registry=registry_with_capture())
        cond = captured(opted, graph(pm=pickled.name))
        torch.testing.assert_close(cond.entries[0].embeds,
                                   captured(session, graph()).entries[0].embeds,
                                   rtol=0, atol=0)
    finally:
        pickled.unlink()


# --- errors -------------------------------------------------------------------------------------

def test_no_trigger_word_is_a_validation_error(session):
    with pytest.raises(PromptValidationError, match="no trigger word 'photomaker'"):
        session.run(graph(text="a photograph of a man, smiling"))
    # as ComfyUI, "photomaker," is not the trigger; the message says so
    with pytest.raises(PromptValidationError, match="'photomaker,' is not it"):
        session.run(graph(text="a man photomaker, smiling"))


def test_nothing_before_the_trigger(session):
    assert "nothing before 'photomaker'" in run_error(session, graph(text="photomaker man"))


def test_sd1_and_refiner_clips_are_refused(session):
    assert "PhotoMaker is for SDXL" in run_error(session, graph(ckpt=TINY_NAME))
    assert "refiner" in run_error(session, graph(ckpt=TINY_REFINER_NAME))


def test_bad_images_are_refused(session, tiny_pm, clip):
    assert "crop the photos" in run_error(session, graph(images=("strip.png",)))
    for bad, message in ((torch.rand(1, 8, 8, 2), "IMAGE"), (torch.rand(2, 8), "IMAGE"),
                         (torch.rand(0, 8, 8, 3), "empty"),
                         (torch.rand(33, 8, 8, 3), "at most 32"),
                         (torch.full((1, 8, 8, 3), float("nan")), "NaN")):
        with pytest.raises(ValueError, match=message):
            photomaker_encode(tiny_pm, bad, clip, PROMPT)


@pytest.mark.parametrize(("tensors", "message"), [
    ({"id_encoder.qformer_perceiver.token_norm.weight": torch.zeros(4),
      "id_encoder.fuse_module.layer_norm.weight": torch.zeros(4)}, "PhotoMaker V2"),
    ({"w": torch.zeros(1)}, "is not a PhotoMaker model"),
    ({"lora_weights.unet.a.lora.down.weight": torch.zeros(1)}, "only LoRA weights"),
])
def test_other_files_are_refused_with_what_they_are(root, session, tensors, message):
    path = root / "photomaker" / "other.safetensors"
    save_file(tensors, str(path))
    try:
        assert message in run_error(session, graph(pm="other.safetensors"))
    finally:
        path.unlink()


def test_a_photomaker_of_another_width_is_refused(clip):
    from transformers import CLIPVisionConfig

    from nodes.diffusion.photomaker import PhotoMakerIDEncoder
    from nodes.diffusion.tiny_photomaker import TINY_PHOTOMAKER_VISION

    model = PhotoMakerIDEncoder(CLIPVisionConfig(**TINY_PHOTOMAKER_VISION), 16).eval()
    with pytest.raises(ValueError, match="fuses 48-wide prompt tokens"):
        photomaker_encode(PhotoMaker(model), as_image(picture(32, 32, 0)), clip, PROMPT)
