"""IP-Adapter through the graph equals diffusers' ``load_ip_adapter`` on the pipeline."""

from __future__ import annotations

import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.session import Session
from nodes.diffusion.tiny import TINY_NAME
from nodes.diffusion.tiny_clip import TINY_CLIP_VISION_NAME, build_tiny_clip, ensure_tiny_clip
from tests.graph_nodes import CAPTURED, reference_pipeline, registry_with_capture, run_error

PROMPT = "a red circle"
NEGATIVE = "blurry"
STEPS = 5
TOL = 1e-4
CLIP_FILE = f"{TINY_CLIP_VISION_NAME}.safetensors"


def _seeded(seed: int):
    return torch.Generator().manual_seed(seed)


def plain_state(cross_dim: int, hidden_sizes: list[int], embed_dim: int, seed: int = 0
                ) -> dict[str, dict[str, torch.Tensor]]:
    """An IP-Adapter (4 tokens from the projected image embedding) in the original layout."""
    g = _seeded(seed)
    image_proj = {"proj.weight": torch.randn(cross_dim * 4, embed_dim, generator=g) * 0.3,
                  "proj.bias": torch.randn(cross_dim * 4, generator=g) * 0.1,
                  "norm.weight": 1 + 0.1 * torch.randn(cross_dim, generator=g),
                  "norm.bias": 0.1 * torch.randn(cross_dim, generator=g)}
    return {"image_proj": image_proj, "ip_adapter": _kv(cross_dim, hidden_sizes, g)}


def plus_state(cross_dim: int, hidden_sizes: list[int], width: int, seed: int = 1,
               queries: int = 4, depth: int = 4) -> dict[str, dict[str, torch.Tensor]]:
    """IP-Adapter Plus (a resampler over the penultimate hidden states), original layout."""
    g = _seeded(seed)
    hidden, inner = 64, 64  # one head of 64, as the converter infers heads = to_q / 64

    def r(*shape: int, s: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * s

    image_proj = {"latents": r(1, queries, hidden, s=1.0),
                  "proj_in.weight": r(hidden, width), "proj_in.bias": r(hidden),
                  "proj_out.weight": r(cross_dim, hidden), "proj_out.bias": r(cross_dim),
                  "norm_out.weight": 1 + r(cross_dim, s=0.1), "norm_out.bias": r(cross_dim)}
    for i in range(depth):
        for norm in ("norm1", "norm2"):
            image_proj[f"layers.{i}.0.{norm}.weight"] = 1 + r(hidden, s=0.1)
            image_proj[f"layers.{i}.0.{norm}.bias"] = r(hidden, s=0.1)
        image_proj[f"layers.{i}.0.to_q.weight"] = r(inner, hidden)
        image_proj[f"layers.{i}.0.to_kv.weight"] = r(2 * inner, hidden)
        image_proj[f"layers.{i}.0.to_out.weight"] = r(hidden, inner)
        image_proj[f"layers.{i}.1.0.weight"] = 1 + r(hidden, s=0.1)
        image_proj[f"layers.{i}.1.0.bias"] = r(hidden, s=0.1)
        image_proj[f"layers.{i}.1.1.weight"] = r(hidden * 4, hidden)
        image_proj[f"layers.{i}.1.3.weight"] = r(hidden, hidden * 4)
    return {"image_proj": image_proj, "ip_adapter": _kv(cross_dim, hidden_sizes, g)}


def full_face_state(cross_dim: int, hidden_sizes: list[int], width: int, seed: int = 2
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """IP-Adapter Full Face: every hidden-state token through an MLP (original layout)."""
    g = _seeded(seed)
    image_proj = {"proj.0.weight": torch.randn(width, width, generator=g) * 0.2,
                  "proj.0.bias": torch.randn(width, generator=g) * 0.1,
                  "proj.2.weight": torch.randn(cross_dim, width, generator=g) * 0.2,
                  "proj.2.bias": torch.randn(cross_dim, generator=g) * 0.1,
                  "proj.3.weight": 1 + 0.1 * torch.randn(cross_dim, generator=g),
                  "proj.3.bias": 0.1 * torch.randn(cross_dim, generator=g)}
    return {"image_proj": image_proj, "ip_adapter": _kv(cross_dim, hidden_sizes, g)}


def _kv(cross_dim: int, hidden_sizes: list[int], g: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for k, hidden in enumerate(hidden_sizes):
        out[f"{2 * k + 1}.to_k_ip.weight"] = torch.randn(hidden, cross_dim, generator=g) * 0.3
        out[f"{2 * k + 1}.to_v_ip.weight"] = torch.randn(hidden, cross_dim, generator=g) * 0.3
    return out


def save_state(state: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    flat = {f"{part}.{k}": v.contiguous() for part, d in state.items() for k, v in d.items()}
    save_file(flat, str(path))


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8)))


@pytest.fixture(scope="module")
def unet_layout(tiny_model_paths):
    from nodes.diffusion.ip_adapter import cross_attention_layers
    from nodes.diffusion.loading import load_components

    unet = load_components(tiny_model_paths["diffusers"]).unet
    return int(unet.config.cross_attention_dim), [h for _, h in cross_attention_layers(unet)]


@pytest.fixture(scope="module")
def states(unet_layout) -> dict[str, dict]:
    cross, hidden = unet_layout
    return {"plain": plain_state(cross, hidden, 16), "plus": plus_state(cross, hidden, 64),
            "full_face": full_face_state(cross, hidden, 64)}


@pytest.fixture(scope="module")
def home(tmp_path_factory, models_dir, states) -> Path:
    ensure_tiny_clip(models_dir)
    folder = models_dir / "ipadapter"
    folder.mkdir(exist_ok=True)
    for kind, state in states.items():
        save_state(state, folder / f"tiny-ip-adapter-{kind}.safetensors")
    home = tmp_path_factory.mktemp("ipa")
    (home / "input").mkdir()
    picture(48, 40, 3).save(home / "input" / "ref.png")
    picture(48, 40, 5).save(home / "input" / "ref2.png")
    return home


@pytest.fixture(scope="module")
def session(models_dir, home):
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


def graph(kind: str = "plain", *, ckpt: str = TINY_NAME, weight: float = 0.8, seed: int = 3,
          width: int = 64, height: int = 64, start: float = 0.0, end: float = 1.0,
          images: tuple[str, ...] = ("ref.png",), sega: bool = False, controlnet: bool = False,
          ipa: bool = True) -> dict:
    prompt: dict = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode",
                "inputs": {"text": NEGATIVE, "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage",
                  "inputs": {"width": width, "height": height, "vae": ["ckpt", 2]}},
    }
    model, pos, neg = ["ckpt", 0], ["pos", 0], ["neg", 0]
    if ipa:
        prompt["img0"] = {"class_type": "LoadImage", "inputs": {"image": images[0]}}
        image = ["img0", 0]
        for k, name in enumerate(images[1:], 1):
            prompt[f"img{k}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
            prompt[f"batch{k}"] = {"class_type": "ImageBatch",
                                   "inputs": {"image1": image, "image2": [f"img{k}", 0]}}
            image = [f"batch{k}", 0]
        prompt["clipv"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP_FILE}}
        prompt["ipa"] = {"class_type": "IPAdapterModelLoader",
                         "inputs": {"ipadapter_file": f"tiny-ip-adapter-{kind}.safetensors"}}
        prompt["apply"] = {"class_type": "ApplyIPAdapter", "inputs": {
            "model": model, "ipadapter": ["ipa", 0], "clip_vision": ["clipv", 0],
            "image": image, "weight": weight, "start_percent": start, "end_percent": end}}
        model = ["apply", 0]
    if sega:
        prompt["concept"] = {"class_type": "SEGAConcept", "inputs": {
            "clip": ["ckpt", 1], "text": "a blue square", "scale": 5.0, "warmup_steps": 1}}
        prompt["sega"] = {"class_type": "ApplySEGA",
                          "inputs": {"model": model, "concepts": ["concept", 0]}}
        model = ["sega", 0]
    if controlnet:
        prompt["cn"] = {"class_type": "ControlNetLoader",
                        "inputs": {"control_net_name": "steerflow-tiny-controlnet"}}
        prompt["cnimg"] = {"class_type": "LoadImage", "inputs": {"image": "ref2.png"}}
        prompt["cnapply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": pos, "negative": neg, "control_net": ["cn", 0],
            "image": ["cnimg", 0], "strength": 0.8}}
        pos, neg = ["cnapply", 0], ["cnapply", 1]
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": STEPS, "cfg": 6.0, "sampler_name": "ddim",
        "scheduler": "normal", "positive": pos, "negative": neg,
        "latent_image": ["empty", 0], "denoise": 1.0}}
    prompt["decode"] = {"class_type": "VAEDecode",
                        "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    prompt["capture"] = {"class_type": "TestCapture", "inputs": {"value": ["decode", 0]}}
    return prompt


def error_of(session, prompt) -> str:
    """The message of a prompt that must fail, at validation or when it runs."""
    from engine.validation import PromptValidationError

    try:
        return run_error(session, prompt)
    except PromptValidationError as exc:
        return "; ".join(i.message for i in exc.issues)


def image_of(session, prompt) -> np.ndarray:
    key = uuid.uuid4().hex
    prompt["capture"]["inputs"]["key"] = key
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).cpu().numpy()


def reference(tiny_model_paths, state, kind: str, names: tuple[str, ...], home: Path, *,
              weight: float, seed: int, width: int, height: int) -> np.ndarray:
    """diffusers' pipeline with ``load_ip_adapter``; the image embeddings computed as its
    ``encode_image`` does, from the CLIP preprocessing Steerflow applies."""
    from nodes.diffusion.clip_vision import ClipVision

    pipe = reference_pipeline(diffusers.StableDiffusionPipeline, tiny_model_paths["diffusers"])
    pipe.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.set_ip_adapter_scale(weight)
    clip = ClipVision(build_tiny_clip(vision_only=True))
    images = torch.cat([torch.from_numpy(np.asarray(Image.open(home / "input" / n).convert(
        "RGB"), dtype=np.float32) / 255)[None] for n in names])
    pixels = clip.preprocess(images)
    with torch.no_grad():
        if kind in ("plus", "full_face"):
            hs = clip.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
            zero = clip.model(pixel_values=torch.zeros_like(pixels),
                              output_hidden_states=True).hidden_states[-2]
            pos, neg = hs[None], zero[None]
        else:
            pos = clip.model(pixel_values=pixels).image_embeds[None]
            neg = torch.zeros_like(pos)
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=6.0,
                width=width, height=height, ip_adapter_image_embeds=[torch.cat([neg, pos])],
                output_type="np", generator=torch.Generator("cpu").manual_seed(seed)).images


@pytest.mark.parametrize(("kind", "ckpt", "size", "images", "weight"), [
    ("plain", TINY_NAME, (64, 64), ("ref.png",), 0.8),
    ("plain", f"{TINY_NAME}.safetensors", (80, 48), ("ref.png", "ref2.png"), 1.5),
    ("plus", TINY_NAME, (48, 80), ("ref.png",), 0.6),
    ("plus", f"{TINY_NAME}.safetensors", (64, 64), ("ref2.png", "ref.png"), 1.0),
    ("full_face", TINY_NAME, (64, 48), ("ref.png",), 0.9),
])
def test_matches_diffusers(session, tiny_model_paths, states, home, kind, ckpt, size, images,
                           weight):
    width, height = size
    ours = image_of(session, graph(kind, ckpt=ckpt, weight=weight, width=width, height=height,
                                   images=images))
    ref = reference(tiny_model_paths, states[kind], kind, images, home, weight=weight, seed=3,
                    width=width, height=height)
    diff = np.abs(ours - ref).max()
    print(f"IP-Adapter {kind} {ckpt} {width}x{height} x{len(images)}: {diff:.2e}")
    assert ours.shape == ref.shape
    assert diff <= TOL
    plain = image_of(session, graph(ipa=False, ckpt=ckpt, width=width, height=height))
    assert np.abs(ours - plain).max() > 1e-2  # it does act


def test_weight_zero_and_an_empty_window_leave_the_model_alone(session):
    plain = image_of(session, graph(ipa=False))
    assert np.abs(image_of(session, graph(weight=0.0)) - plain).max() <= 1e-6
    later = image_of(session, graph(start=0.6))
    assert np.abs(later - plain).max() > 1e-3
    assert np.abs(later - image_of(session, graph())).max() > 1e-3


def test_combines_with_sega_and_a_controlnet(session, controlnet_paths):
    both = image_of(session, graph(sega=True, controlnet=True))
    for alone in (graph(sega=True, controlnet=True, ipa=False), graph()):
        assert np.abs(both - image_of(session, alone)).max() > 1e-3


def test_bad_input_is_a_structured_error(session, models_dir, unet_layout, tmp_path):
    cross, hidden = unet_layout
    folder = models_dir / "ipadapter"
    # made for another UNet: a cross-attention width that does not fit
    save_state(plain_state(cross * 2, hidden, 16), folder / "wrong-width.safetensors")
    bad = graph()
    bad["ipa"]["inputs"]["ipadapter_file"] = "wrong-width.safetensors"
    err = error_of(session, bad)
    assert "another model family" in err
    # not an IP-Adapter at all
    save_file({"x": torch.zeros(2)}, str(folder / "not-ipa.safetensors"))
    bad["ipa"]["inputs"]["ipadapter_file"] = "not-ipa.safetensors"
    assert "not an IP-Adapter" in error_of(session, bad)
    # a pickle without --allow-pickle is a validation error
    (folder / "old.bin").write_bytes(b"x")
    bad["ipa"]["inputs"]["ipadapter_file"] = "old.bin"
    assert "pickle" in error_of(session, bad)
    # a reference image with NaNs
    nan = graph()
    nan["nan"] = {"class_type": "ImageBlend", "inputs": {
        "image1": ["img0", 0], "image2": ["img0", 0], "blend_factor": 0.5,
        "blend_mode": "normal"}}
    nan["apply"]["inputs"]["image"] = ["nan", 0]
    import nodes.image_ops as image_ops
    real = image_ops.ImageBlend.execute

    def poisoned(self, ctx):
        (out,) = real(self, ctx)
        return (out * float("nan"),)

    image_ops.ImageBlend.execute = poisoned
    try:
        assert "NaN" in error_of(session, nan)
    finally:
        image_ops.ImageBlend.execute = real
    # the window the wrong way round
    assert "end_percent" in error_of(session, graph(start=0.7, end=0.2))


def test_sdxl_matches_diffusers(tmp_path_factory):
    """The same on a tiny SDXL base (its cross-attention layers, dual encoders)."""
    from nodes.diffusion.ip_adapter import cross_attention_layers
    from nodes.diffusion.tiny_sdxl import ensure_tiny_sdxl
    from tests.test_sdxl import BASE, HEIGHT, NEGATIVE, PROMPT, WIDTH, txt2img_prompt

    root = tmp_path_factory.mktemp("ipa_sdxl")
    ensure_tiny_sdxl(root)
    ensure_tiny_clip(root)
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(root / "checkpoints" / BASE,
                                                               local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet
    state = plain_state(int(unet.config.cross_attention_dim),
                        [h for _, h in cross_attention_layers(unet)], 16, seed=4)
    (root / "ipadapter").mkdir()
    save_state(state, root / "ipadapter" / "tiny-sdxl-ipa.safetensors")
    home = tmp_path_factory.mktemp("ipa_sdxl_home")
    (home / "input").mkdir()
    picture(48, 40, 7).save(home / "input" / "ref.png")
    session = Session(home, models_dir=root, device="cpu", registry=registry_with_capture())
    prompt = txt2img_prompt(BASE, "euler", "normal")
    prompt.update({
        "ref": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}},
        "clipv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP_FILE}},
        "ipa": {"class_type": "IPAdapterModelLoader",
                "inputs": {"ipadapter_file": "tiny-sdxl-ipa.safetensors"}},
        "apply": {"class_type": "ApplyIPAdapter", "inputs": {
            "model": ["4", 0], "ipadapter": ["ipa", 0], "clip_vision": ["clipv", 0],
            "image": ["ref", 0], "weight": 0.7}}})
    prompt["3"]["inputs"]["model"] = ["apply", 0]
    key = uuid.uuid4().hex
    prompt["10"]["inputs"]["key"] = key
    result = session.run(prompt)
    assert result.ok, result.run.error
    ours = CAPTURED.pop(key).cpu().numpy()

    from nodes.diffusion.clip_vision import ClipVision

    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.set_ip_adapter_scale(0.7)
    clip = ClipVision(build_tiny_clip(vision_only=True))
    image = torch.from_numpy(np.asarray(Image.open(home / "input" / "ref.png").convert("RGB"),
                                        dtype=np.float32) / 255)[None]
    with torch.no_grad():
        pos = clip.model(pixel_values=clip.preprocess(image)).image_embeds[None]
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=5.0,
               height=HEIGHT, width=WIDTH, output_type="np",
               ip_adapter_image_embeds=[torch.cat([torch.zeros_like(pos), pos])],
               generator=torch.Generator("cpu").manual_seed(3)).images
    diff = np.abs(ours - ref).max()
    print(f"IP-Adapter SDXL {WIDTH}x{HEIGHT}: {diff:.2e}")
    assert diff <= TOL


def test_ipadapter_plus_pack_node(session):
    """ComfyUI_IPAdapter_plus's IPAdapter Advanced: the same result as Apply IP-Adapter at
    its defaults; its widgets as that pack saves them; what is not run is refused."""
    from engine.comfy_workflow import RegistrySchemas, convert_ui_workflow

    ours = graph(weight=0.8)
    plus = graph(weight=0.8)
    plus["apply"] = {"class_type": "IPAdapterAdvanced", "inputs": {
        "model": ["ckpt", 0], "ipadapter": ["ipa", 0], "clip_vision": ["clipv", 0],
        "image": ["img0", 0], "weight": 0.8, "weight_type": "linear",
        "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
        "embeds_scaling": "V only"}}
    assert np.abs(image_of(session, plus) - image_of(session, ours)).max() == 0
    negative = {**plus, "negimg": {"class_type": "LoadImage", "inputs": {"image": "ref2.png"}}}
    negative["apply"] = {**plus["apply"], "inputs": {**plus["apply"]["inputs"],
                                                     "image_negative": ["negimg", 0]}}
    assert np.abs(image_of(session, negative) - image_of(session, ours)).max() > 1e-3
    for name, value in (("weight_type", "style transfer"), ("embeds_scaling", "K+V"),
                        ("combine_embeds", "subtract")):
        bad = {**plus, "apply": {**plus["apply"], "inputs": {**plus["apply"]["inputs"],
                                                             name: value}}}
        assert "not supported here" in error_of(session, bad)
    # the pack's UI widgets, by position
    schemas = RegistrySchemas(session.registry)
    ui = {"nodes": [{"id": 1, "type": "IPAdapterAdvanced", "pos": [0, 0], "inputs": [],
                     "widgets_values": [0.7, "linear", "average", 0.1, 0.9, "V only"]}],
          "links": []}
    assert convert_ui_workflow(ui, schemas).prompt["1"]["inputs"] == {
        "weight": 0.7, "weight_type": "linear", "combine_embeds": "average", "start_at": 0.1,
        "end_at": 0.9, "embeds_scaling": "V only"}
    no_clip = {**plus, "apply": {**plus["apply"], "inputs": {
        k: v for k, v in plus["apply"]["inputs"].items() if k != "clip_vision"}}}
    assert "Load CLIP Vision" in error_of(session, no_clip)


def test_masks_match_diffusers_ip_adapter_masks(session, tiny_model_paths, states, home):
    """An attention mask per reference image (diffusers' ``ip_adapter_masks``): each image
    steers its own region. Two images, the left and the right of an 80x48 picture."""
    from engine import ExecutionContext, Input, Node, Output

    width, height = 80, 48
    masks = torch.zeros(2, height, width)
    masks[0, :, :40] = 1.0
    masks[1, :, 40:] = 1.0

    class GivenMasks(Node):
        TYPE = "TestIPAMasks"
        OUTPUTS = (Output("MASK"),)
        n: int = Input(2)

        def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
            return (masks[:self.n],)

    if session.registry.get(GivenMasks.TYPE) is None:
        session.registry.register(GivenMasks)
    prompt = graph("plain", weight=1.2, width=width, height=height,
                   images=("ref.png", "ref2.png"))
    prompt["masks"] = {"class_type": "TestIPAMasks", "inputs": {"n": 2}}
    prompt["apply"]["inputs"]["attn_mask"] = ["masks", 0]
    ours = image_of(session, prompt)

    from nodes.diffusion.clip_vision import ClipVision

    pipe = reference_pipeline(diffusers.StableDiffusionPipeline, tiny_model_paths["diffusers"])
    pipe.load_ip_adapter(states["plain"], subfolder="", weight_name="", image_encoder_folder=None)
    pipe.set_ip_adapter_scale(1.2)
    clip = ClipVision(build_tiny_clip(vision_only=True))
    images = torch.cat([torch.from_numpy(np.asarray(Image.open(home / "input" / n).convert(
        "RGB"), dtype=np.float32) / 255)[None] for n in ("ref.png", "ref2.png")])
    with torch.no_grad():
        pos = clip.model(pixel_values=clip.preprocess(images)).image_embeds[None]
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=6.0,
               width=width, height=height, output_type="np",
               ip_adapter_image_embeds=[torch.cat([torch.zeros_like(pos), pos])],
               cross_attention_kwargs={"ip_adapter_masks": [masks[None]]},
               generator=torch.Generator("cpu").manual_seed(3)).images
    diff = np.abs(ours - ref).max()
    print(f"IP-Adapter with masks {width}x{height}: {diff:.2e}")
    assert diff <= TOL
    unmasked = image_of(session, graph("plain", weight=1.2, width=width, height=height,
                                       images=("ref.png", "ref2.png")))
    assert np.abs(ours - unmasked).max() > 1e-3
    # two masks for one image: refused
    bad = {**prompt, "masks": {"class_type": "TestIPAMasks", "inputs": {"n": 2}}}
    bad["apply"] = {**prompt["apply"], "inputs": {**prompt["apply"]["inputs"],
                                                  "image": ["img0", 0]}}
    assert "2 masks for 1 reference images" in error_of(session, bad)


def test_a_mask_of_another_aspect_is_stretched_with_a_warning():
    from nodes.diffusion.ip_adapter import fit_masks

    said: list[str] = []
    same = fit_masks(torch.ones(1, 48, 80), 2, (6, 10), said.append)
    assert same.shape == (2, 48, 80) and not said
    other = fit_masks(torch.ones(1, 64, 64), 1, (6, 10), said.append)
    assert other.shape == (1, 48, 80)
    assert len(said) == 1 and "stretched" in said[0] and "64x64" in said[0]


def _with_area_region(prompt: dict, mask_left: float | None, mask_right: float) -> dict:
    """``prompt`` (128x64) plus a prompt for the left half (Conditioning Set Area: its own
    cropped UNet pass), and an attn_mask of ``mask_left`` / ``mask_right`` on each half."""
    prompt["area_text"] = {"class_type": "CLIPTextEncode",
                           "inputs": {"text": "a blue square", "clip": ["ckpt", 1]}}
    prompt["area"] = {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["area_text", 0], "width": 64, "height": 64, "x": 0, "y": 0,
        "strength": 1.0}}
    prompt["both"] = {"class_type": "ConditioningCombine", "inputs": {
        "conditioning_1": ["pos", 0], "conditioning_2": ["area", 0]}}
    prompt["sample"]["inputs"]["positive"] = ["both", 0]
    if mask_left is not None:
        prompt["m_right"] = {"class_type": "SolidMask",
                             "inputs": {"value": mask_right, "width": 128, "height": 64}}
        prompt["m_left"] = {"class_type": "SolidMask",
                            "inputs": {"value": mask_left, "width": 64, "height": 64}}
        prompt["m"] = {"class_type": "MaskComposite", "inputs": {
            "destination": ["m_right", 0], "source": ["m_left", 0], "x": 0, "y": 0,
            "operation": "add" if mask_left else "multiply"}}
        prompt["apply"]["inputs"]["attn_mask"] = ["m", 0]
    return prompt


def test_an_attn_mask_is_cut_to_each_region_crop(session, monkeypatch):
    """A region prompt with its own area is predicted on a crop of the latent: the IP-Adapter's
    mask is cut to that crop (it was squeezed into it, and an all-ones mask lost tokens to
    diffusers' aspect guess at the crop's grids)."""
    import nodes.diffusion.ip_adapter as ipa

    ones = image_of(session, _with_area_region(graph(width=128, height=64), 1.0, 1.0))
    unmasked = image_of(session, _with_area_region(graph(width=128, height=64), None, 1.0))
    assert np.abs(ones - unmasked).max() <= 1e-6
    seen: dict[tuple, float] = {}
    original = ipa.mask_weights

    def spy(mask, grid, tokens):
        weights = original(mask, grid, tokens)
        seen[grid, tokens] = float(weights.mean())
        return weights

    monkeypatch.setattr(ipa, "mask_weights", spy)
    image_of(session, _with_area_region(graph(width=128, height=64, seed=5), 0.0, 1.0))
    # the whole image's layers: half the tokens; the left crop's (8x8, 4x4, ...): none
    assert seen[(8, 16), 128] == pytest.approx(0.5, abs=0.05)
    assert seen[(8, 8), 64] == 0.0 and seen[(4, 4), 16] == 0.0
