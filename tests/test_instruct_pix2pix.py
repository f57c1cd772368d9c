"""Instruct-Pix2Pix through the graph equals diffusers' StableDiffusionInstructPix2PixPipeline."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from engine import ExecutionContext, Input, Node, Output
from engine.session import Session, Workflow
from engine.validation import PromptValidationError
from nodes.diffusion.builtin_models import SHAPES_IP2P_UNET, shipped_weights
from nodes.diffusion.masking import mask_to_latent
from nodes.diffusion.schedulers import SAMPLERS
from nodes.diffusion.tiny_adapter import TINY_ADAPTER_NAME, save_tiny_adapter
from nodes.diffusion.tiny_ip2p import TINY_IP2P_NAME, save_tiny_ip2p_model
from tests.graph_nodes import CAPTURED, reference_pipeline, registry_with_capture, run_error

PROMPT = "make the circle blue"
NEGATIVE = "blurry"
STEPS = 6
TOL = 1e-4
PIXELS: dict[str, torch.Tensor] = {}


class GivenPixels(Node):
    """An IMAGE handed over by the test (``PIXELS[key]``)."""

    TYPE = "TestIP2PPixels"
    OUTPUTS = (Output("IMAGE"),)
    key: str = Input("a")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        return (PIXELS[self.key],)


def picture(size: tuple[int, int], seed: int) -> Image.Image:
    """A blocky random RGB picture (structure at several scales)."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8)))


@pytest.fixture(scope="module")
def ip2p_paths(models_dir) -> dict[str, Path]:
    save_tiny_adapter(models_dir / "controlnet")
    return save_tiny_ip2p_model(models_dir / "checkpoints")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / "input").mkdir()
    picture((64, 64), 0).save(home / "input" / "edit_a.png")
    picture((64, 64), 1).save(home / "input" / "edit_b.png")
    picture((80, 48), 2).save(home / "input" / "edit_wide.png")
    picture((80, 48), 4).save(home / "input" / "edit_wide_b.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255
    Image.fromarray(mask).save(home / "input" / "mask.png")
    return home


@pytest.fixture(scope="module")
def session(models_dir, controlnet_paths, ip2p_paths, home):
    registry = registry_with_capture()
    registry.register(GivenPixels)
    return Session(home, models_dir=models_dir, device="cpu", registry=registry)


@pytest.fixture(scope="module")
def pipe(ip2p_paths):
    return reference_pipeline(diffusers.StableDiffusionInstructPix2PixPipeline,
                              ip2p_paths["diffusers"])


def graph(*, ckpt=TINY_IP2P_NAME, image="edit_a.png", image_cfg=1.5, sampler="ddim",
          cfg=7.5, seed=7, ip2p=True, sega=False, controlnet=False, adapter=False,
          lora=False, mask=False) -> dict:
    """An instruction edit on the tiny 8-channel model, optionally with other techniques."""
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
    }
    model, clip = ["ckpt", 0], ["ckpt", 1]
    if lora:
        prompt["lora"] = {"class_type": "LoraLoader", "inputs": {
            "model": model, "clip": clip, "lora_name": "ip2p_lora.safetensors",
            "strength_model": 1.0, "strength_clip": 1.0}}
        model, clip = ["lora", 0], ["lora", 1]
    prompt["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": clip}}
    prompt["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": clip}}
    pos, neg = ["pos", 0], ["neg", 0]
    latent: list = ["empty", 0]
    prompt["empty"] = {"class_type": "EmptyLatentImage",
                       "inputs": {"width": 64, "height": 64, "vae": ["ckpt", 2]}}
    if ip2p:
        prompt["ip2p"] = {"class_type": "InstructPixToPixConditioning", "inputs": {
            "positive": pos, "negative": neg, "vae": ["ckpt", 2], "pixels": ["img", 0],
            "image_cfg": image_cfg}}
        pos, neg, latent = ["ip2p", 0], ["ip2p", 1], ["ip2p", 2]
    if controlnet:
        prompt["cn"] = {"class_type": "ControlNetLoader",
                        "inputs": {"control_net_name": "steerflow-tiny-controlnet"}}
        prompt["cnimg"] = {"class_type": "LoadImage", "inputs": {"image": "edit_b.png"}}
        prompt["cnapply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": pos, "negative": neg, "control_net": ["cn", 0],
            "image": ["cnimg", 0], "strength": 0.8}}
        pos, neg = ["cnapply", 0], ["cnapply", 1]
    if adapter:
        prompt["ad"] = {"class_type": "ControlNetLoader",
                        "inputs": {"control_net_name": TINY_ADAPTER_NAME}}
        prompt["adapply"] = {"class_type": "T2IAdapterApply", "inputs": {
            "positive": pos, "negative": neg, "adapter": ["ad", 0], "image": ["img", 0],
            "adapter_conditioning_scale": 0.8}}
        pos, neg = ["adapply", 0], ["adapply", 1]
    if sega:
        prompt["concept"] = {"class_type": "SEGAConcept", "inputs": {
            "clip": clip, "text": "a blue square", "scale": 6.0, "warmup_steps": 1}}
        prompt["sega"] = {"class_type": "ApplySEGA",
                          "inputs": {"model": model, "concepts": ["concept", 0]}}
        model = ["sega", 0]
    if mask:
        prompt["mask"] = {"class_type": "LoadImageMask",
                          "inputs": {"image": "mask.png", "channel": "red"}}
        prompt["enc"] = {"class_type": "VAEEncode",
                         "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}}
        prompt["masked"] = {"class_type": "SetLatentNoiseMask",
                            "inputs": {"samples": ["enc", 0], "mask": ["mask", 0]}}
        latent = ["masked", 0]
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": STEPS, "cfg": cfg, "sampler_name": sampler,
        "scheduler": "normal", "positive": pos, "negative": neg, "latent_image": latent,
        "denoise": 1.0}}
    prompt["decode"] = {"class_type": "VAEDecode",
                        "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    prompt["capture"] = {"class_type": "TestCapture", "inputs": {"value": ["decode", 0]}}
    return prompt


def capture(session, prompt, node: str = "decode", slot: int = 0) -> object:
    key = uuid.uuid4().hex  # a fresh key so the capture node runs again
    prompt["capture"]["inputs"].update(key=key, value=[node, slot])
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key)


def image_of(session, prompt) -> np.ndarray:
    return capture(session, prompt).cpu().numpy()



def reference(pipe, home, *, image="edit_a.png", image_cfg=1.5, sampler="ddim", cfg=7.5,
              seed=7, **kwargs) -> np.ndarray:
    class_name, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.base_config, **extra)
    out = pipe(PROMPT, image=Image.open(home / "input" / image), negative_prompt=NEGATIVE,
               num_inference_steps=STEPS, guidance_scale=cfg, image_guidance_scale=image_cfg,
               output_type="np", generator=torch.Generator("cpu").manual_seed(seed), **kwargs)
    return out.images


# --- parity with the pipeline ----------------------------------------------------------------

# pndm: the folder's own scheduler (the pipeline's default); ddim; dpmpp_2m and pndm are
# multistep; euler and euler_ancestral scale the model input (σ space).
@pytest.mark.parametrize(("single", "sampler", "image", "image_cfg", "cfg"), [
    (False, "pndm", "edit_a.png", 1.5, 7.5),
    (True, "ddim", "edit_a.png", 1.5, 7.5),
    (False, "dpmpp_2m", "edit_wide.png", 2.5, 5.0),
    (True, "euler", "edit_wide.png", 1.2, 7.5),
    (False, "euler_ancestral", "edit_a.png", 1.5, 4.0),
    (True, "dpmpp_2m", "edit_wide.png", 1.0, 7.5),  # ComfyUI's two-way CFG
    (False, "ddim", "edit_wide.png", 1.5, 1.0),  # no guidance
])
def test_matches_pipeline(session, pipe, home, single, sampler, image, image_cfg, cfg):
    ckpt = f"{TINY_IP2P_NAME}.safetensors" if single else TINY_IP2P_NAME
    ours = image_of(session, graph(ckpt=ckpt, image=image, image_cfg=image_cfg,
                                   sampler=sampler, cfg=cfg))
    ref = reference(pipe, home, image=image, image_cfg=image_cfg, sampler=sampler, cfg=cfg)
    width, height = Image.open(home / "input" / image).size
    assert ours.shape == ref.shape == (1, height, width, 3)
    diff = np.abs(ours - ref).max()
    print(f"parity {ckpt} {sampler} {width}x{height} image_cfg {image_cfg} cfg {cfg}: {diff:.2e}")
    assert diff <= TOL
    other = image_of(session, graph(ckpt=ckpt, image=image.replace(".png", "_b.png").replace(
        "edit_a_b", "edit_b"), image_cfg=image_cfg, sampler=sampler, cfg=cfg))
    assert np.abs(ours - other).max() > 1e-2  # the input image steers the result


def test_batch_of_two_images_matches_pipeline(session, pipe, home):
    images = [Image.open(home / "input" / name) for name in ("edit_a.png", "edit_b.png")]
    PIXELS["two"] = torch.from_numpy(np.stack([np.asarray(i) for i in images])).float() / 255
    prompt = graph()
    prompt["img"] = {"class_type": "TestIP2PPixels", "inputs": {"key": "two"}}
    ours = image_of(session, prompt)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.base_config)
    ref = pipe([PROMPT] * 2, image=images, negative_prompt=[NEGATIVE] * 2,
               num_inference_steps=STEPS, guidance_scale=7.5, image_guidance_scale=1.5,
               output_type="np", generator=torch.Generator("cpu").manual_seed(7)).images
    assert ours.shape == ref.shape == (2, 64, 64, 3)
    diff = np.abs(ours - ref).max()
    print(f"parity batch of 2: {diff:.2e}")
    assert diff <= TOL


def test_image_cfg_changes_the_result(session):
    results = [image_of(session, graph(image_cfg=s)) for s in (0.5, 1.0, 1.5, 3.0)]
    for a, b in itertools.pairwise(results):
        assert np.abs(a - b).max() > 1e-3


def test_latent_is_empty_at_the_image_size(session):
    prompt = graph(image="edit_wide.png")
    latent = capture(session, prompt, node="ip2p", slot=2)
    assert latent.samples.shape == (1, 4, 6, 10) and not latent.samples.any()


def test_odd_sizes_are_centre_cropped_like_comfyui(session, home):
    picture((64, 64), 3).crop((0, 0, 61, 59)).save(home / "input" / "edit_odd.png")
    PIXELS["crop"] = torch.from_numpy(
        np.asarray(Image.open(home / "input" / "edit_odd.png"))[1:57, 2:58].copy()
    ).float()[None] / 255
    odd = image_of(session, graph(image="edit_odd.png"))
    prompt = graph()
    prompt["img"] = {"class_type": "TestIP2PPixels", "inputs": {"key": "crop"}}
    # the empty latent is 56x56 too; the crop keeps the centre (offsets 1 and 2 here)
    assert odd.shape == (1, 56, 56, 3)
    assert np.array_equal(odd, image_of(session, prompt))


# --- with other techniques -------------------------------------------------------------------

@pytest.fixture(scope="module")
def ip2p_lora(models_dir) -> str:
    from tests.test_lora import random_lora, save_peft

    (models_dir / "loras").mkdir(exist_ok=True)
    save_peft(models_dir / "loras" / "ip2p_lora.safetensors", random_lora(5, up_scale=1.0))
    return "ip2p_lora.safetensors"


def test_sega_controlnet_adapter_lora_and_mask_each_act_in_one_run(session, ip2p_lora, home):
    every = {"sega": True, "controlnet": True, "adapter": True, "lora": True, "mask": True}

    def run(**kwargs) -> torch.Tensor:
        return capture(session, graph(**{**every, **kwargs}), node="sample").samples

    out = run()
    assert torch.isfinite(out).all()
    # the noise mask: outside it the latent is the encoded input image, exactly
    encoded = capture(session, graph(**every), node="enc").samples
    mask = torch.from_numpy(np.asarray(Image.open(home / "input" / "mask.png")) / 255.0)
    keep = (mask_to_latent(mask[None].float(), tuple(out.shape[-2:])) == 0).expand_as(out)
    assert keep.any() and (~keep).any()
    assert torch.equal(out[keep], encoded[keep])
    # the instruction edit: another input image or image scale changes the repainted part
    for change in ({"image": "edit_b.png"}, {"image_cfg": 3.0}):
        assert (out - run(**change)).abs().max() > 1e-3, change
    for technique in every:
        assert (out - run(**{technique: False})).abs().max() > 1e-3, technique


# --- bad input -------------------------------------------------------------------------------

def test_four_channel_model_is_refused(session):
    message = run_error(session, graph(ckpt="steerflow-tiny"))
    assert "InstructPixToPixConditioning needs an Instruct-Pix2Pix model" in message
    assert "takes 4 input channels" in message


@pytest.mark.parametrize("ckpt", [TINY_IP2P_NAME, f"{TINY_IP2P_NAME}.safetensors"])
def test_ip2p_model_without_the_node_says_which_node(session, ckpt):
    message = run_error(session, graph(ckpt=ckpt, ip2p=False))
    assert "Instruct-Pix2Pix model" in message and "InstructPixToPixConditioning" in message


def test_image_batch_must_match_the_latent(session):
    PIXELS["batch2"] = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    prompt = graph()
    prompt["img"] = {"class_type": "TestIP2PPixels", "inputs": {"key": "batch2"}}
    prompt["empty"]["inputs"]["batch_size"] = 3
    prompt["sample"]["inputs"]["latent_image"] = ["empty", 0]
    message = run_error(session, prompt)
    assert "the input image has a batch of 2 but the latent has 3" in message


def test_image_size_must_match_the_latent(session):
    prompt = graph(image="edit_wide.png")
    prompt["sample"]["inputs"]["latent_image"] = ["empty", 0]  # 64x64, the image is 80x48
    message = run_error(session, prompt)
    assert "the input image is (6, 10) in latent space but the latent is (8, 8)" in message


def test_image_too_small_for_the_vae(session):
    PIXELS["tiny"] = torch.rand(1, 6, 20, 3)
    prompt = graph()
    prompt["img"] = {"class_type": "TestIP2PPixels", "inputs": {"key": "tiny"}}
    message = run_error(session, prompt)
    assert "the VAE needs at least 8x8 pixels" in message


def test_pixels_must_be_an_image(session):
    PIXELS["flat"] = torch.rand(64, 64, 3)
    prompt = graph()
    prompt["img"] = {"class_type": "TestIP2PPixels", "inputs": {"key": "flat"}}
    assert "pixels must be an IMAGE [B, H, W, C]" in run_error(session, prompt)


@pytest.mark.parametrize("value", [-0.5, 25.0])
def test_image_cfg_out_of_bounds_is_a_validation_error(session, value):
    with pytest.raises(PromptValidationError) as info:
        session.validate(graph(image_cfg=value))
    errors = [i for i in info.value.issues if i.severity == "error"]
    assert [(i.node_id, i.input_name, i.kind) for i in errors] == [
        ("ip2p", "image_cfg", "out_of_range")]


# --- the example workflow ----------------------------------------------------------------------

@pytest.mark.skipif(not shipped_weights(SHAPES_IP2P_UNET).is_file(),
                    reason="steerflow-shapes-ip2p is not shipped yet")
def test_example_workflow_runs(tmp_path):
    fresh = Session(tmp_path, device="cpu")
    wf = Workflow.load(Path(__file__).resolve().parents[1] / "workflows"
                       / "instruct_pix2pix.json").set("3.steps", 4)
    result = fresh.run(wf)
    assert result.ok, result.run.error
    assert result.image_paths and all(p.is_file() for p in result.image_paths)


def test_comfyui_dual_cfg_recipe_is_the_pipelines_three_way_guidance(session, pipe, home):
    """ComfyUI's CosXL-edit graph: InstructPixToPixConditioning's outputs as Dual CFG
    Guider's cond1 / cond2 and the plain negative (which sees a zero image, as in
    ComfyUI) as its negative = the pipeline at s_T = cfg_conds, s_I = cfg_cond2_negative."""
    prompt = graph(image_cfg=1.0, sampler="ddim")
    sample = prompt.pop("sample")["inputs"]
    prompt.update({
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": sample["seed"]}},
        "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {
            "model": sample["model"], "scheduler": "normal", "steps": STEPS, "denoise": 1.0}},
        "guider": {"class_type": "DualCFGGuider", "inputs": {
            "model": sample["model"], "cond1": ["ip2p", 0], "cond2": ["ip2p", 1],
            "negative": ["neg", 0], "cfg_conds": 7.5, "cfg_cond2_negative": 1.5}},
        "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["select", 0],
            "sigmas": ["sigmas", 0], "latent_image": ["ip2p", 2]}},
    })
    ours = image_of(session, prompt)
    ref = reference(pipe, home, image_cfg=1.5, sampler="ddim", cfg=7.5)
    diff = np.abs(ours - ref).max()
    print(f"Dual CFG recipe vs pipeline: {diff:.2e}")
    assert diff <= TOL
    # the default (1.0) is ComfyUI's two-way CFG: the negative carries the image too
    two_way = image_of(session, graph(image_cfg=1.0))
    assert np.abs(two_way - ref).max() > 1e-3


def test_a_model_on_eight_channel_latents_matches_the_pipeline(home, tmp_path_factory):
    """Its UNet takes 16 channels: the latents and the image's, as diffusers checks (it
    was refused for not having 8)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from nodes.diffusion.tiny import SCHEDULER_CONFIG, UNET_CONFIG, VAE_CONFIG, build_tiny_pipeline

    base = build_tiny_pipeline(3)
    torch.manual_seed(11)
    vae = AutoencoderKL(**{**VAE_CONFIG, "latent_channels": 8}).eval()
    unet = UNet2DConditionModel(**{**UNET_CONFIG, "in_channels": 16,
                                   "out_channels": 8}).eval()
    with torch.no_grad():
        unet.conv_in.weight[:, 8:] *= 4.0
    pipe = diffusers.StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_config(SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    root = tmp_path_factory.mktemp("ip2p8_models")
    pipe.save_pretrained(root / "checkpoints" / "ip2p-8ch", safe_serialization=True)
    session = Session(home, models_dir=root, device="cpu", registry=registry_with_capture())
    ours = image_of(session, graph(ckpt="ip2p-8ch", image="edit_wide.png", sampler="ddim"))
    pipe.base_config = dict(pipe.scheduler.config)
    ref = reference(pipe, home, image="edit_wide.png", sampler="ddim")
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOL
