"""Style models (Load Style Model, Apply Style Model): the T2I style adapter's math, its
conditioning, and sampling with it equal to a hand loop on diffusers' UNet."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.session import Session
from engine.validation import PromptValidationError
from nodes.diffusion.clip_vision import ClipVision
from nodes.diffusion.handles import CondEntry, Conditioning, TextEncoder
from nodes.diffusion.style_adapter import StyleAdapter, StyleModel, apply_style
from nodes.diffusion.tiny import TINY_NAME
from nodes.diffusion.tiny_clip import TINY_CLIP_VISION_NAME, build_tiny_clip, ensure_tiny_clip
from nodes.diffusion.tiny_style_adapter import (
    TINY_STYLE_NAME,
    build_tiny_style_adapter,
    save_tiny_style_adapter,
)
from nodes.diffusion.token_weights import KEY_WEIGHTS
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

PROMPT = "a red circle"
NEGATIVE = "blurry"
STEPS = 4
CFG = 6.0
SEED = 3
TOL = 1e-4
STYLE_FILE = f"{TINY_STYLE_NAME}.safetensors"
CLIP_FILE = f"{TINY_CLIP_VISION_NAME}.safetensors"


# --- the adapter's math, written out -------------------------------------------------------

def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + bias


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int = 8
                      ) -> torch.Tensor:
    """TencentARC's StyleAdapter.forward in plain tensor ops, from its state dict."""
    style = sd["style_embedding"]
    n, width = style.shape[1], style.shape[2]
    h = torch.cat([x, style.expand(x.shape[0], -1, -1)], dim=1)
    h = _layer_norm(h, sd["ln_pre.weight"], sd["ln_pre.bias"])
    layers = len({k.split(".")[1] for k in sd if k.startswith("transformer_layes.")})
    d = width // heads
    for i in range(layers):
        p = f"transformer_layes.{i}."
        a = _layer_norm(h, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        qkv = a @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
        q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2)
                   for t in qkv.chunk(3, dim=-1))
        w = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
        o = (w @ v).transpose(1, 2).reshape(a.shape)
        h = h + o @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        m = _layer_norm(h, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        m = m @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        m = m * torch.sigmoid(1.702 * m)
        h = h + m @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    out = _layer_norm(h[:, -n:], sd["ln_post.weight"], sd["ln_post.bias"])
    return out @ sd["proj"]


def test_forward_equals_the_written_out_math():
    model = build_tiny_style_adapter()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    x = torch.randn(3, 17, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(x)
    assert ours.shape == (3, 8, 32)
    torch.testing.assert_close(ours, reference_forward(sd, x), rtol=0, atol=1e-5)


# --- fixtures ---------------------------------------------------------------------------------

def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8)))


@pytest.fixture(scope="module")
def home(tmp_path_factory, models_dir) -> Path:
    ensure_tiny_clip(models_dir)
    save_tiny_style_adapter(models_dir / "style_models")
    home = tmp_path_factory.mktemp("style")
    (home / "input").mkdir()
    picture(48, 40, 3).save(home / "input" / "style.png")
    picture(48, 40, 4).save(home / "input" / "style2.png")
    picture(64, 64, 5).save(home / "input" / "control.png")
    return home


@pytest.fixture(scope="module")
def session(models_dir, home):
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def parts(tiny_model_paths):
    from nodes.diffusion.loading import load_components

    return load_components(tiny_model_paths["diffusers"])


def load_picture(home: Path, name: str) -> torch.Tensor:
    arr = np.asarray(Image.open(home / "input" / name).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr / 255.0)[None]


def style_tokens(home: Path, names: tuple[str, ...] = ("style.png",)) -> torch.Tensor:
    """What the tiny style adapter makes of the pictures: ``[1, 8 x images, 32]``."""
    clip = ClipVision(build_tiny_clip(vision_only=True))
    images = torch.cat([load_picture(home, n) for n in names])
    with torch.no_grad():
        hidden = clip.encode(images, "center").last_hidden_state
        return build_tiny_style_adapter()(hidden).reshape(1, -1, 32)


def text(parts, prompt: str) -> torch.Tensor:
    from nodes.conditioning import encode_text

    return encode_text(TextEncoder(parts.text_encoder, parts.tokenizer), prompt)


def graph(*, strength: float = 1.0, strength_type: str = "multiply", style: bool = True,
          images: tuple[str, ...] = ("style.png",), style_model: str = STYLE_FILE,
          ckpt: str = TINY_NAME, lora: str | None = None, controlnet: bool = False) -> dict:
    prompt: dict = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "lat": {"class_type": "EmptyLatentImage",
                "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    model, clip = ["ckpt", 0], ["ckpt", 1]
    if lora:
        prompt["lora"] = {"class_type": "LoraLoader", "inputs": {
            "model": model, "clip": clip, "lora_name": lora, "strength_model": 1.0,
            "strength_clip": 1.0}}
        model, clip = ["lora", 0], ["lora", 1]
    prompt["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": clip}}
    prompt["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": clip}}
    pos, neg = ["pos", 0], ["neg", 0]
    if style:
        prompt["img0"] = {"class_type": "LoadImage", "inputs": {"image": images[0]}}
        image = ["img0", 0]
        for k, name in enumerate(images[1:], 1):
            prompt[f"img{k}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
            prompt[f"batch{k}"] = {"class_type": "ImageBatch",
                                   "inputs": {"image1": image, "image2": [f"img{k}", 0]}}
            image = [f"batch{k}", 0]
        prompt["clipv"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP_FILE}}
        prompt["enc"] = {"class_type": "CLIPVisionEncode", "inputs": {
            "clip_vision": ["clipv", 0], "image": image, "crop": "center"}}
        prompt["sm"] = {"class_type": "StyleModelLoader",
                        "inputs": {"style_model_name": style_model}}
        prompt["apply"] = {"class_type": "StyleModelApply", "inputs": {
            "conditioning": pos, "style_model": ["sm", 0], "clip_vision_output": ["enc", 0],
            "strength": strength, "strength_type": strength_type}}
        pos = ["apply", 0]
    if controlnet:
        prompt["cn"] = {"class_type": "ControlNetLoader",
                        "inputs": {"control_net_name": "steerflow-tiny-controlnet"}}
        prompt["cnimg"] = {"class_type": "LoadImage", "inputs": {"image": "control.png"}}
        prompt["cnapply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": pos, "negative": neg, "control_net": ["cn", 0],
            "image": ["cnimg", 0], "strength": 0.8}}
        pos, neg = ["cnapply", 0], ["cnapply", 1]
    prompt["k"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
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


def hand_loop(parts, negative: torch.Tensor, positive: torch.Tensor, *, unet=None,
              residuals=None) -> torch.Tensor:
    """Euler with CFG on diffusers' UNet, the negative and positive rows in separate
    calls (their token counts differ); ``residuals(inp, t, embeds)`` adds a ControlNet's."""
    from nodes.diffusion.schedulers import make_scheduler

    unet = parts.unet if unet is None else unet
    scheduler = make_scheduler("euler", "normal", dict(parts.scheduler_config))
    scheduler.set_timesteps(STEPS)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED))
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        eps = []
        with torch.no_grad():
            for embeds in (negative, positive):
                extra = residuals(inp, t, embeds) if residuals else {}
                eps.append(unet(inp, t, encoder_hidden_states=embeds, **extra).sample)
        x = scheduler.step(eps[0] + CFG * (eps[1] - eps[0]), t, x).prev_sample
    return x


# --- the conditioning ------------------------------------------------------------------------

def test_apply_appends_the_tokens_scaled(session, home, parts):
    prompt = graph(strength=0.5, images=("style.png", "style2.png"))
    prompt["cap"]["inputs"]["value"] = ["apply", 0]
    key = uuid.uuid4().hex
    prompt["cap"]["inputs"]["key"] = key
    assert session.run(prompt).ok
    (entry,) = CAPTURED.pop(key).entries
    tokens = style_tokens(home, ("style.png", "style2.png"))
    assert tokens.shape == (1, 16, 32)
    # 77 + 16 tokens, zero-padded to 154 (the padding's key weight is 0)
    assert entry.embeds.shape == (1, 154, 32)
    torch.testing.assert_close(entry.embeds[:, :77], text(parts, PROMPT), rtol=0, atol=1e-6)
    torch.testing.assert_close(entry.embeds[:, 77:93], 0.5 * tokens, rtol=0, atol=1e-5)
    assert not entry.embeds[:, 93:].any()
    assert entry.options[KEY_WEIGHTS].tolist() == [1.0] * 93 + [0.0] * 61


def test_a_second_style_replaces_the_padding():
    text_states = torch.randn(1, 77, 32)
    a, b = torch.randn(1, 8, 32), torch.randn(1, 8, 32)
    once = apply_style(Conditioning((CondEntry(text_states),)), a, 1.0, "attn_bias")
    twice = apply_style(once, b, 0.5, "attn_bias")
    (entry,) = twice.entries
    assert torch.equal(entry.embeds[:, :93], torch.cat([text_states, a, b], dim=1))
    assert entry.options[KEY_WEIGHTS].tolist() == [1.0] * 85 + [0.5] * 8 + [0.0] * 61
    assert len(entry.options["extensions"]) == 1


# --- sampling --------------------------------------------------------------------------------

@pytest.mark.parametrize(("strength", "images"), [(1.0, ("style.png",)),
                                                  (0.6, ("style.png", "style2.png"))])
def test_sampling_equals_a_hand_loop_on_the_concatenated_prompt(session, home, parts,
                                                                strength, images):
    ours = samples(session, graph(strength=strength, images=images))
    positive = torch.cat([text(parts, PROMPT), strength * style_tokens(home, images)], dim=1)
    expected = hand_loop(parts, text(parts, NEGATIVE), positive)
    torch.testing.assert_close(ours, expected, rtol=0, atol=TOL)
    plain = samples(session, graph(style=False))
    assert (ours - plain).abs().max() > 1e-2, "the style tokens change the image"


class _BiasedAttn:
    """diffusers' attention with ``bias`` added to the scores of the keys ``[start, end)``
    (an explicit reference for attn_bias)."""

    def __init__(self, start: int, end: int, bias: float):
        self.start, self.end, self.bias = start, end, bias

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = (attn.head_to_batch_dim(f(x)) for f, x in (
            (attn.to_q, hidden_states), (attn.to_k, context), (attn.to_v, context)))
        scores = q @ k.transpose(1, 2) * attn.scale
        if encoder_hidden_states is not None:
            scores[..., self.start:self.end] += self.bias
        out = attn.batch_to_head_dim(torch.softmax(scores, dim=-1) @ v)
        return attn.to_out[1](attn.to_out[0](out))


def test_attn_bias_weighs_the_style_tokens_keys(session, home, parts):
    multiply = samples(session, graph(strength=1.0, strength_type="multiply"))
    at_one = samples(session, graph(strength=1.0, strength_type="attn_bias"))
    torch.testing.assert_close(at_one, multiply, rtol=0, atol=TOL)
    half = samples(session, graph(strength=0.5, strength_type="attn_bias"))
    assert (half - multiply).abs().max() > 1e-3
    assert (half - samples(session, graph(strength=0.5))).abs().max() > 1e-3
    # the reference: log(0.5) added to the style keys' scores in every cross-attention
    unet = parts.unet
    saved = dict(unet.attn_processors)
    unet.set_attn_processor(_BiasedAttn(77, 85, float(np.log(0.5))))
    try:
        positive = torch.cat([text(parts, PROMPT), style_tokens(home)], dim=1)
        expected = hand_loop(parts, text(parts, NEGATIVE), positive, unet=unet)
    finally:
        unet.set_attn_processor(saved)
    torch.testing.assert_close(half, expected, rtol=0, atol=TOL)
    # strength 0 masks the style tokens out: the prompt alone
    off = samples(session, graph(strength=0.0, strength_type="attn_bias"))
    torch.testing.assert_close(off, samples(session, graph(style=False)), rtol=0, atol=TOL)


# --- with ControlNet and LoRA ----------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_file(models_dir, parts) -> tuple[str, dict[str, torch.Tensor]]:
    """A random rank-4 LoRA (kohya keys) on the tiny UNet's attention, and its tensors."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, module in parts.unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_v")):
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(
                4, module.in_features, generator=generator) * 0.3
            tensors[f"{key}.lora_up.weight"] = torch.randn(
                module.out_features, 4, generator=generator) * 0.3
            tensors[f"{key}.alpha"] = torch.tensor(4.0)
    folder = models_dir / "loras"
    folder.mkdir(exist_ok=True)
    save_file(tensors, str(folder / "tiny-style-lora.safetensors"))
    return "tiny-style-lora.safetensors", tensors


def test_style_controlnet_and_lora_in_one_run(session, home, parts, lora_file,
                                              controlnet_paths):
    import copy

    from diffusers import ControlNetModel

    name, tensors = lora_file
    ours = samples(session, graph(strength=0.8, lora=name, controlnet=True))
    unet = copy.deepcopy(parts.unet)
    with torch.no_grad():
        for name_, module in unet.named_modules():
            key = "lora_unet_" + name_.replace(".", "_")
            if f"{key}.lora_up.weight" not in tensors:
                continue
            up, down = tensors[f"{key}.lora_up.weight"], tensors[f"{key}.lora_down.weight"]
            module.weight += (float(tensors[f"{key}.alpha"]) / 4) * up @ down
    net = ControlNetModel.from_pretrained(controlnet_paths["diffusers"]).eval()
    hint = load_picture(home, "control.png").permute(0, 3, 1, 2)

    def residuals(inp, t, embeds):
        down, mid = net(inp, t, encoder_hidden_states=embeds, controlnet_cond=hint,
                        conditioning_scale=0.8, return_dict=False)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    positive = torch.cat([text(parts, PROMPT), 0.8 * style_tokens(home)], dim=1)
    expected = hand_loop(parts, text(parts, NEGATIVE), positive, unet=unet,
                         residuals=residuals)
    torch.testing.assert_close(ours, expected, rtol=0, atol=TOL)
    without_style = samples(session, graph(style=False, lora=name, controlnet=True))
    assert (ours - without_style).abs().max() > 1e-2


# --- loading ---------------------------------------------------------------------------------

def test_loads_the_safetensors_file_with_its_sizes(models_dir, home):
    from nodes.diffusion.style_adapter import load_style_model

    loaded = load_style_model(models_dir / "style_models" / STYLE_FILE)
    model = loaded.model
    assert (model.width, model.context_dim, model.tokens, len(model.transformer_layes)) == (
        64, 32, 8, 3)
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), build_tiny_style_adapter()(x), rtol=0, atol=1e-5)


def test_pickle_refused_unless_allowed(session, models_dir, home):
    pickled = save_tiny_style_adapter(models_dir / "style_models", pickle=True)
    try:
        prompt = graph(style_model=pickled.name)
        with pytest.raises(PromptValidationError, match=r"steerflow-tiny-style\.pth is a pickle"):
            session.run(prompt)
        opted = Session(home, models_dir=models_dir, device="cpu", allow_pickle=True,
                        registry=registry_with_capture())
        torch.testing.assert_close(samples(opted, graph(style_model=pickled.name)),
                                   samples(session, graph()), rtol=0, atol=1e-6)
    finally:
        pickled.unlink()


@pytest.mark.parametrize(("tensors", "message"), [
    ({"redux_up.weight": torch.zeros(4, 2), "redux_up.bias": torch.zeros(4),
      "redux_down.weight": torch.zeros(2, 4), "redux_down.bias": torch.zeros(2)},
     "is a FLUX Redux style model"),
    ({"w": torch.zeros(1)}, "is not a style model: no style_embedding"),
    ({"conv_in.weight": torch.zeros(4, 3, 3, 3), "body.0.block1.weight": torch.zeros(1)},
     "T2I-Adapter control model: put it in models/controlnet"),
    ({"style_embedding": torch.zeros(1, 8, 64), "proj": torch.zeros(64, 32)},
     "layers is 0"),
])
def test_other_files_are_refused_with_what_they_are(session, models_dir, tensors, message):
    path = models_dir / "style_models" / "other.safetensors"
    save_file(tensors, str(path))
    try:
        assert message in run_error(session, graph(style_model="other.safetensors"))
    finally:
        path.unlink()


# --- bad input -------------------------------------------------------------------------------

def test_an_sdxl_conditioning_is_refused():
    style = StyleModel(StyleAdapter(width=64, context_dim=768, layers=1), "sd14-style")
    cond = Conditioning((CondEntry(torch.zeros(1, 77, 2048)),))
    tokens = style.get_cond(ClipVision(build_tiny_clip(vision_only=True)).encode(
        torch.rand(1, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"768-wide tokens .* 2048 wide"):
        apply_style(cond, tokens, 1.0, "multiply")


def test_a_clip_vision_of_another_width_is_refused():
    from nodes.diffusion.clip_vision import ClipVisionOutput

    style = StyleModel(StyleAdapter(width=1024, context_dim=32, layers=1), "sd14-style")
    hidden = torch.zeros(1, 17, 64)
    output = ClipVisionOutput(torch.zeros(1, 16), hidden, hidden)
    with pytest.raises(ValueError, match="CLIP ViT-L/14, 1024 wide"):
        style.get_cond(output)


def test_a_style_model_from_elsewhere_is_refused(session):
    from nodes.style_model import StyleModelApply

    node = StyleModelApply(conditioning=Conditioning((CondEntry(torch.zeros(1, 77, 32)),)),
                           style_model=object(), clip_vision_output=None, strength=1.0,
                           strength_type="multiply")
    with pytest.raises(ValueError, match="must come from Load Style Model"):
        node.execute(None)


def test_widgets_and_bounds_are_comfyuis():
    from nodes.style_model import StyleModelApply

    specs = StyleModelApply.INPUT_SPECS
    assert list(specs) == ["conditioning", "style_model", "clip_vision_output", "strength",
                           "strength_type"]
    assert (specs["strength"].default, specs["strength"].min, specs["strength"].max) == (
        1.0, 0.0, 10.0)
    assert specs["strength_type"].default == "multiply"
