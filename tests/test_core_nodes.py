"""ComfyUI's core nodes the real workflows use: names, widget order, defaults and
semantics of the resize/composite nodes, and the component loaders (VAE, UNet,
diff ControlNet) against the checkpoint's own components."""

from __future__ import annotations

import json
import math
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.session import Session
from engine.validation import PromptValidationError
from nodes.diffusion.handles import Latent
from nodes.diffusion.original_layout import CONFIG_METADATA_KEY, unet_to_original, vae_to_original
from nodes.diffusion.resize import bislerp, common_upscale, lanczos
from nodes.upscale import (
    EmptyImage,
    ImageScale,
    ImageScaleBy,
    ImageScaleToTotalPixels,
    LatentComposite,
    LatentUpscale,
    LatentUpscaleBy,
)
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

TINY = "steerflow-tiny"
NET = "steerflow-tiny-controlnet"

# ComfyUI's widget order (``widgets_values`` is positional in UI-format files).
COMFY_WIDGETS = {
    # comfy_extras/nodes_easycache.py, nodes_torch_compile.py, nodes_model_advanced.py
    "EasyCache": ["reuse_threshold", "start_percent", "end_percent", "verbose"],
    "LazyCache": ["reuse_threshold", "start_percent", "end_percent", "verbose"],
    "TorchCompileModel": ["backend"],
    "ModelComputeDtype": ["dtype"],
    # resize_type's options' widgets follow it (only the chosen option's are drawn)
    "ResizeImageMaskNode": ["resize_type", "resize_type.width", "resize_type.height",
                            "resize_type.crop", "resize_type.multiplier",
                            "resize_type.longer_size", "resize_type.shorter_size",
                            "resize_type.megapixels", "resize_type.multiple", "scale_method"],
    # comfy_extras/nodes_images.py; format's options' widgets follow it
    "SaveImageAdvanced": ["filename_prefix", "format", "format.bit_depth",
                          "format.input_color_space", "format.crf", "format.save_mode",
                          "format.save_mode.fps", "format.save_mode.loop_count"],
    "ImageColorSpace": ["source", "destination"],
    # comfy_extras/nodes_gits.py, nodes_advanced_samplers.py, nodes_custom_sampler.py
    "GITSScheduler": ["coeff", "steps", "denoise"],
    "SamplerLCMUpscale": ["scale_ratio", "scale_steps", "upscale_method"],
    "SamplerDPMAdaptative": ["order", "rtol", "atol", "h_init", "pcoeff", "icoeff", "dcoeff",
                             "accept_safety", "eta", "s_noise"],
    # style models (nodes.py) and comfy_extras/nodes_cond.py
    "StyleModelLoader": ["style_model_name"],
    "StyleModelApply": ["strength", "strength_type"],
    # comfy_extras/nodes_photomaker.py
    "PhotoMakerLoader": ["photomaker_model_name"],
    "PhotoMakerEncode": ["text"],
    "CLIPTextEncodeControlnet": ["text"],
    # comfy_extras/nodes_model_advanced.py (continuous-σ model samplings)
    "ModelSamplingContinuousEDM": ["sampling", "sigma_max", "sigma_min"],
    "ModelSamplingContinuousV": ["sampling", "sigma_max", "sigma_min"],
    # dataset nodes (comfy_extras/nodes_dataset.py)
    "LoadImageDataSetFromFolder": ["folder"],
    "LoadImageTextDataSetFromFolder": ["folder"],
    "SaveImageDataSetToFolder": ["folder_name", "filename_prefix", "mode"],
    "SaveImageTextDataSetToFolder": ["folder_name", "filename_prefix", "mode"],
    "ResizeImagesByShorterEdge": ["shorter_edge"],
    "ResizeImagesByLongerEdge": ["longer_edge"],
    "CenterCropImages": ["width", "height"],
    "RandomCropImages": ["width", "height", "seed"],
    "NormalizeImages": ["mean", "std"],
    "AdjustBrightness": ["factor"],
    "AdjustContrast": ["factor"],
    "ShuffleDataset": ["seed"],
    "ShuffleImageTextDataset": ["seed"],
    "ImageDeduplication": ["similarity_threshold"],
    "SD_4XUpscale_Conditioning": ["scale_ratio", "noise_augmentation"],
    "ImageGrid": ["columns", "cell_width", "cell_height", "padding"],
    "MergeImageLists": [],
    "MergeTextLists": ["texts"],
    "TextToLowercase": ["texts"],
    "TextToUppercase": ["texts"],
    "TruncateText": ["texts", "max_length"],
    "AddTextPrefix": ["texts", "prefix"],
    "AddTextSuffix": ["texts", "suffix"],
    "ReplaceText": ["texts", "find", "replace"],
    "StripWhitespace": ["texts"],
    "VAELoader": ["vae_name"],
    "CLIPSetLastLayer": ["stop_at_clip_layer"],
    "LatentUpscale": ["upscale_method", "width", "height", "crop"],
    "LatentUpscaleBy": ["upscale_method", "scale_by"],
    "ImageScale": ["upscale_method", "width", "height", "crop"],
    "ImageScaleBy": ["upscale_method", "scale_by"],
    "ImageScaleToTotalPixels": ["upscale_method", "megapixels", "resolution_steps"],
    "LatentComposite": ["x", "y", "feather"],
    "EmptyImage": ["width", "height", "batch_size", "color"],
    "UNETLoader": ["unet_name", "weight_dtype"],
    "CLIPLoader": ["clip_name", "type", "device"],
    "DualCLIPLoader": ["clip_name1", "clip_name2", "type", "device"],
    "CheckpointLoader": ["config_name", "ckpt_name"],
    "DiffusersLoader": ["model_path"],
    "LatentConcat": ["dim"],
    "LatentCut": ["dim", "index", "amount"],
    "CFGNorm": ["strength"],
    "ModelSave": ["filename_prefix"],
    "VAESave": ["filename_prefix"],
    "CLIPSave": ["filename_prefix"],
    "Mahiro": [],
    "HyperTile": ["tile_size", "swap_size", "max_depth", "scale_depth"],
    "TomePatchModel": ["ratio"],
    "RebatchLatents": ["batch_size"],
    "ResolutionSelector": ["aspect_ratio", "megapixels", "multiple", "minimum"],
    "ComfySwitchNode": ["switch"],
    "IPAdapterModelLoader": ["ipadapter_file"],
    "IPAdapterAdvanced": ["weight", "weight_type", "combine_embeds", "start_at", "end_at",
                          "embeds_scaling"],
    "RebatchImages": ["batch_size"],
    "LatentOperationSharpen": ["sharpen_radius", "sigma", "alpha"],
    "LatentOperationTonemapReinhard": ["multiplier"],
    "ImageOnlyCheckpointLoader": ["ckpt_name"],
    "DiffControlNetLoader": ["control_net_name"],
    "NAGuidance": ["nag_scale", "nag_alpha", "nag_tau"],
    "LoraLoaderBypass": ["lora_name", "strength_model", "strength_clip"],
    "LoraLoaderBypassModelOnly": ["lora_name", "strength_model"],
    "LoraSave": ["filename_prefix", "rank", "lora_type", "bias_diff"],
    "FreSca": ["scale_low", "scale_high", "freq_cutoff"],
    "TemporalScoreRescaling": ["tsr_k", "tsr_sigma"],
    "ManualSigmas": ["sigmas"],
    "FlipSigmas": [],
    "CreateHookLora": ["lora_name", "strength_model", "strength_clip"],
    "CreateHookLoraModelOnly": ["lora_name", "strength_model"],
    "CreateHookModelAsLora": ["ckpt_name", "strength_model", "strength_clip"],
    "CreateHookModelAsLoraModelOnly": ["ckpt_name", "strength_model"],
    "SetHookKeyframes": [],
    "CreateHookKeyframe": ["strength_mult", "start_percent"],
    "CreateHookKeyframesInterpolated": ["strength_start", "strength_end", "interpolation",
                                        "start_percent", "end_percent", "keyframes_count",
                                        "print_keyframes"],
    "CreateHookKeyframesFromFloats": ["start_percent", "end_percent", "print_keyframes"],
    "CombineHooks2": [],
    "ConditioningSetProperties": ["strength", "set_cond_area"],
    "ConditioningSetPropertiesAndCombine": ["strength", "set_cond_area"],
    "PairConditioningSetProperties": ["strength", "set_cond_area"],
    "PairConditioningSetPropertiesAndCombine": ["strength", "set_cond_area"],
    "ConditioningSetDefaultCombine": [],
    "PairConditioningSetDefaultCombine": [],
    "PairConditioningCombine": [],
    "SetClipHooks": ["apply_to_conds", "schedule_clip"],
    "ConditioningTimestepsRange": ["start_percent", "end_percent"],
    "SetUnionControlNetType": ["type"],
    "TrainLoraNode": ["batch_size", "grad_accumulation_steps", "steps", "learning_rate", "rank",
                      "optimizer", "loss_function", "seed", "training_dtype", "lora_dtype",
                      "quantized_backward", "algorithm", "gradient_checkpointing",
                      "checkpoint_depth", "offloading", "existing_lora", "bucket_mode",
                      "bypass_mode"],
    "LoraModelLoader": ["strength_model", "bypass"],
    "SaveLoRA": ["prefix", "steps"],
    "LossGraphNode": ["filename_prefix"],
    "MakeTrainingDataset": ["texts"],
    "ResolutionBucket": [],
    "SaveTrainingDataset": ["folder_name", "shard_size"],
    "LoadTrainingDataset": ["folder_name"],
    "ImageCropV2": ["crop_region"],
    "PrimitiveBoundingBox": ["x", "y", "width", "height"],
    "ImageCropToMask": ["width", "height", "pad_factor", "grow_mask", "background"],
    "GetLatentSize": [],
    "ColorToRGBInt": ["color"],
    "LatentCutToBatch": ["dim", "slice_size"],
    "ImageCompare": ["compare_view"],
    "CreateList": [],
    "WebcamCapture": ["image", "width", "height", "capture_on_queue"],
    "SplitImageToTileList": ["tile_width", "tile_height", "overlap"],
    "ImageMergeTileList": ["final_width", "final_height", "overlap"],
}


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(models_dir, tiny_model_paths, controlnet_paths, tmp_path_factory) -> Path:
    """A models folder of our own: the tiny model and ControlNet, plus VAE and UNet files in
    every layout the loaders read."""
    root = tmp_path_factory.mktemp("core_models")
    shutil.copytree(models_dir / "checkpoints", root / "checkpoints")
    shutil.copytree(models_dir / "controlnet", root / "controlnet")
    tiny = tiny_model_paths["diffusers"]
    vae_dir, unet_dir = root / "vae", root / "diffusion_models"
    vae_dir.mkdir()
    unet_dir.mkdir()
    (root / "unet").mkdir()

    shutil.copytree(tiny / "vae", vae_dir / "tiny-vae")  # diffusers folder
    vae_file = next((tiny / "vae").glob("*.safetensors"))
    shutil.copyfile(vae_file, vae_dir / "tiny-diffusers-layout.safetensors")  # no config
    vae_sd = load_file(vae_file)
    vae_cfg = json.loads((tiny / "vae" / "config.json").read_text())
    ldm = {k: v.contiguous() for k, v in vae_to_original(vae_sd, vae_cfg).items()}
    save_file(ldm, vae_dir / "tiny-ldm.safetensors")  # first_stage_model.*, no config
    save_file({k.removeprefix("first_stage_model."): v for k, v in ldm.items()},
              vae_dir / "tiny-ldm-bare.safetensors")
    shutil.copyfile(tiny_model_paths["single_file"], vae_dir / "whole-checkpoint.safetensors")
    save_file({"weight": torch.zeros(3, 3)}, vae_dir / "not-a-vae.safetensors")
    torch.save({"x": torch.zeros(1)}, vae_dir / "pickled.pt")

    shutil.copytree(tiny / "unet", unet_dir / "tiny-unet")  # diffusers folder
    unet_file = next((tiny / "unet").glob("*.safetensors"))
    unet_sd = load_file(unet_file)
    unet_cfg = json.loads((tiny / "unet" / "config.json").read_text())
    meta = {CONFIG_METADATA_KEY: json.dumps({"unet": unet_cfg})}
    ldm = unet_to_original(unet_sd, unet_cfg)
    # ComfyUI saves diffusion models without the checkpoint's prefix; in the legacy unet/.
    save_file({k.removeprefix("model.diffusion_model."): v.contiguous() for k, v in ldm.items()},
              root / "unet" / "tiny-comfy.safetensors", metadata=meta)
    save_file(unet_sd, unet_dir / "tiny-diffusers-layout.safetensors", metadata=meta)
    save_file({k: v.contiguous() for k, v in ldm.items()},
              unet_dir / "tiny-no-config.safetensors")

    # A diff ControlNet: the tiny ControlNet minus the tiny UNet where their weights meet.
    net_file = controlnet_paths["single_file"]
    from safetensors import safe_open
    with safe_open(str(net_file), framework="pt") as f:
        net_meta = f.metadata()
    net = load_file(net_file)
    base = unet_to_original(unet_sd, unet_cfg)
    subtracted = 0
    for key, value in net.items():
        ref = base.get("model.diffusion_model." + key.removeprefix("control_model."))
        if ref is not None and ref.shape == value.shape:
            net[key] = value - ref
            subtracted += 1
    assert subtracted > 10
    net["difference"] = torch.zeros(1)
    save_file(net, root / "controlnet" / "tiny-diff.safetensors", metadata=net_meta)
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("core_home")
    (home / "input").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        home / "input" / "control.png")
    return home


@pytest.fixture(scope="module")
def session(models, home) -> Session:
    return Session(home, models_dir=models, device="cpu", registry=registry_with_capture())


def txt2img(*, model=None, vae=None, control=None, steps=3, seed=4, sampler="euler") -> dict:
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle",
                                                           "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "lat": {"class_type": "EmptyLatentImage",
                "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {
            "model": model or ["ckpt", 0], "seed": seed, "steps": steps, "cfg": 7.5,
            "sampler_name": sampler, "scheduler": "normal", "positive": ["pos", 0],
            "negative": ["neg", 0], "latent_image": ["lat", 0], "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0],
                                                      "vae": vae or ["ckpt", 2]}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["dec", 0],
                                                        "key": uuid.uuid4().hex}},
    }
    if control is not None:
        prompt["img"] = {"class_type": "LoadImage", "inputs": {"image": "control.png"}}
        prompt["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": control,
            "image": ["img", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        prompt["k"]["inputs"]["positive"] = ["apply", 0]
        prompt["k"]["inputs"]["negative"] = ["apply", 1]
    return prompt


def run(session, prompt) -> np.ndarray:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["cap"]["inputs"]["key"]).numpy()


def with_node(prompt: dict, node_id: str, class_type: str, **inputs) -> dict:
    prompt[node_id] = {"class_type": class_type, "inputs": inputs}
    return prompt


# --- schemas ----------------------------------------------------------------------------------

@pytest.mark.parametrize("type_id", sorted(COMFY_WIDGETS))
def test_widget_order_is_comfyuis(type_id):
    cls = registry_with_capture().get(type_id)
    assert cls is not None
    widgets = [s.name for s in cls.INPUT_SPECS.values() if s.is_widget]
    assert widgets == COMFY_WIDGETS[type_id]


def test_defaults_and_bounds_are_comfyuis():
    specs = LatentUpscale.INPUT_SPECS
    assert (specs["width"].default, specs["width"].min, specs["width"].max) == (512, 0, 16384)
    assert list(specs["upscale_method"].choices) == [
        "nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
    assert list(ImageScale.INPUT_SPECS["upscale_method"].choices) == [
        "nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert LatentUpscaleBy.INPUT_SPECS["scale_by"].default == 1.5
    assert (ImageScaleBy.INPUT_SPECS["scale_by"].min, ImageScaleBy.INPUT_SPECS["scale_by"].max
            ) == (0.01, 8.0)
    assert ImageScaleToTotalPixels.INPUT_SPECS["megapixels"].max == 16.0
    assert EmptyImage.INPUT_SPECS["color"].max == 0xFFFFFF
    schema = registry_with_capture().get("ImageOnlyCheckpointLoader").schema()
    assert schema["output"] == ["MODEL", "CLIP_VISION", "VAE"]


# --- resize math ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic"])
def test_torch_methods_are_torchs_interpolate(method):
    x = torch.randn(2, 4, 6, 10)
    assert torch.equal(common_upscale(x, 15, 9, method),
                       F.interpolate(x, size=(9, 15), mode=method))


def test_center_crop_cuts_to_the_new_aspect_first():
    x = torch.arange(4 * 8, dtype=torch.float32).reshape(1, 1, 4, 8)
    # 8x4 → square: round((8 - 8 * 0.5) / 2) = 2 columns off each side, then 4x4 as is.
    assert torch.equal(common_upscale(x, 4, 4, "nearest-exact", "center"), x[..., 2:6])
    tall = common_upscale(x.transpose(-1, -2), 4, 4, "nearest-exact", "center")
    assert torch.equal(tall, x.transpose(-1, -2)[..., 2:6, :])


def test_bislerp_blends_directions_spherically_and_lengths_linearly():
    # Two pixels with orthogonal unit vectors, widened to 4: bilinear's source positions
    # (half-pixel centres, clamped) are 0, 0.25, 0.75, 1.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    out = bislerp(x, 4, 1)[0, :, 0].T
    angle = torch.tensor([0.0, 0.25, 0.75, 1.0]) * math.pi / 2
    expected = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    assert torch.allclose(out, expected, atol=1e-6)
    # Lengths are interpolated linearly (bilinear would shrink the middle vectors).
    x = torch.tensor([[2.0, 0.0], [0.0, 4.0]]).reshape(1, 2, 1, 2)
    norms = bislerp(x, 4, 1)[0, :, 0].norm(dim=0)
    assert torch.allclose(norms, torch.tensor([2.0, 2.5, 3.5, 4.0]), atol=1e-5)
    # Height works the same way.
    assert torch.allclose(bislerp(x.transpose(-1, -2), 1, 4)[0, :, :, 0].norm(dim=0), norms,
                          atol=1e-5)


def test_lanczos_is_pils_on_the_8_bit_image():
    image = torch.rand(1, 3, 10, 14)
    arr = (image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    ref = np.asarray(Image.fromarray(arr).resize((21, 7), Image.Resampling.LANCZOS)) / 255.0
    out = lanczos(image, 21, 7)[0].permute(1, 2, 0).numpy()
    assert np.abs(out - ref).max() < 1e-6


# --- latent and image nodes -------------------------------------------------------------------

def test_latent_upscale_sizes_as_comfyui():
    lat = Latent(torch.randn(1, 4, 8, 12))  # a 96x64 image at SD's 8x
    out = LatentUpscale(samples=lat, upscale_method="bilinear", width=192, height=0,
                        crop="disabled").execute(None)[0]
    assert out.samples.shape == (1, 4, 16, 24)  # 0 keeps the aspect ratio
    same = LatentUpscale(samples=lat, upscale_method="bilinear", width=0, height=0,
                         crop="disabled").execute(None)[0]
    assert same is lat
    small = LatentUpscale(samples=lat, upscale_method="nearest-exact", width=16, height=16,
                          crop="disabled").execute(None)[0]
    assert small.samples.shape == (1, 4, 8, 8)  # raised to 64 px, as ComfyUI
    by = LatentUpscaleBy(samples=lat, upscale_method="bislerp", scale_by=1.5).execute(None)[0]
    assert by.samples.shape == (1, 4, 12, 18)


def test_latent_upscale_uses_the_linked_vaes_downscale(session):
    prompt = txt2img()
    prompt["up"] = {"class_type": "LatentUpscale", "inputs": {
        "samples": ["lat", 0], "upscale_method": "nearest-exact", "width": 128, "height": 96,
        "crop": "center", "vae": ["ckpt", 2]}}
    prompt["cap"]["inputs"]["value"] = ["up", 0]
    result = session.run(prompt)
    assert result.ok, result.run.error
    assert CAPTURED.pop(prompt["cap"]["inputs"]["key"]).samples.shape == (1, 4, 12, 16)


def test_noise_mask_follows_the_resize():
    mask = torch.zeros(1, 32, 48)  # at the image size (4x the latent)
    mask[:, :, :24] = 1.0  # the left half
    lat = Latent(torch.randn(1, 4, 8, 12), noise_mask=mask)
    out = LatentUpscaleBy(samples=lat, upscale_method="nearest-exact", scale_by=2.0
                          ).execute(None)[0]
    assert out.noise_mask.shape == (1, 1, 16, 24)
    assert (out.noise_mask[..., :11] == 1).all() and (out.noise_mask[..., 13:] == 0).all()
    cropped = LatentUpscale(samples=lat, upscale_method="bilinear", width=64, height=64,
                            crop="center").execute(None)[0]
    # The square centre cut keeps columns 2..10 of 12: the mask's edge stays in the middle.
    assert cropped.noise_mask.shape == (1, 1, 8, 8)
    assert (cropped.noise_mask[..., :3] == 1).all() and (cropped.noise_mask[..., 5:] == 0).all()


def test_inpainting_inputs_follow_the_resize():
    from nodes.diffusion.handles import InpaintCondition

    mask = torch.zeros(1, 1, 8, 12)
    mask[..., :6] = 1
    lat = Latent(torch.randn(1, 4, 8, 12),
                 inpaint=InpaintCondition(mask, torch.randn(1, 4, 8, 12)))
    out = LatentUpscaleBy(samples=lat, upscale_method="bilinear", scale_by=2.0).execute(None)[0]
    assert out.inpaint.mask.shape == (1, 1, 16, 24)
    assert set(out.inpaint.mask.unique().tolist()) == {0.0, 1.0}  # stays binary
    assert torch.equal(out.inpaint.masked_latents,
                       F.interpolate(lat.inpaint.masked_latents, size=(16, 24), mode="bilinear"))


def test_image_scale_nodes():
    image = torch.rand(2, 32, 64, 3)
    out = ImageScale(image=image, upscale_method="bicubic", width=0, height=48,
                     crop="disabled").execute(None)[0]
    ref = F.interpolate(image.movedim(-1, 1), size=(48, 96), mode="bicubic").movedim(1, -1)
    assert torch.equal(out, ref)
    out = ImageScaleBy(image=image, upscale_method="area", scale_by=0.5).execute(None)[0]
    assert torch.equal(out, F.interpolate(image.movedim(-1, 1), size=(16, 32), mode="area"
                                          ).movedim(1, -1))
    # int(0.01 * 1024²) = 10485 pixels: scale sqrt(10485 / 2048), sides rounded.
    out = ImageScaleToTotalPixels(image=image, upscale_method="nearest-exact", megapixels=0.01,
                                  resolution_steps=1).execute(None)[0]
    assert out.shape == (2, 72, 145, 3)
    out = ImageScaleToTotalPixels(image=image, upscale_method="lanczos", megapixels=0.01,
                                  resolution_steps=16).execute(None)[0]
    assert out.shape == (2, 80, 144, 3)  # 72.4 / 16 rounds to 5 steps, 144.8 / 16 to 9


def test_latent_composite_pastes_and_feathers_as_comfyui():
    to, src = torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 4, 4)
    out = LatentComposite(samples_to=Latent(to), samples_from=Latent(src), x=16, y=40,
                          feather=0).execute(None)[0].samples
    expected = to.clone()
    expected[..., 5:8, 2:6] = 1  # 16 px, 40 px // 8; the bottom row past the edge dropped
    assert torch.equal(out, expected)
    out = LatentComposite(samples_to=Latent(to), samples_from=Latent(src), x=16, y=16,
                          feather=16).execute(None)[0].samples[0, 0]
    # Feather 2 latent pixels, all four edges inside: ramps 1/2 then 2/2 from each side.
    ramp = torch.tensor([0.5, 1.0, 1.0, 0.5])
    assert torch.allclose(out[2:6, 2:6], ramp[:, None] * ramp[None, :])
    assert out[:2].abs().sum() == 0 and out[6:].abs().sum() == 0
    edge = LatentComposite(samples_to=Latent(to), samples_from=Latent(src), x=0, y=0,
                           feather=16).execute(None)[0].samples[0, 0]
    # On samples_to's border the edge stays hard (only the inner edges ramp).
    assert torch.allclose(edge[0, :4], torch.tensor([1.0, 1.0, 1.0, 0.5]))


def test_latent_composite_outside_the_destination_pastes_nothing_and_says_so():
    """As ComfyUI: a paste past samples_to's edge (a workflow made for a larger canvas)
    leaves it as it was, and the run goes on, with a node warning."""
    warned: list[str] = []
    ctx = type("Ctx", (), {"warn": lambda self, m: warned.append(m)})()
    to = torch.randn(1, 4, 8, 8)
    out = LatentComposite(samples_to=Latent(to), samples_from=Latent(torch.ones(1, 4, 4, 4)),
                          x=656, y=32, feather=0).execute(ctx)[0].samples
    assert torch.equal(out, to) and out is not to
    assert len(warned) == 1 and "656, 32 px lies outside samples_to (64x64 px)" in warned[0]


def test_empty_image_colour():
    out = EmptyImage(width=5, height=3, batch_size=2, color=0xFF8000).execute(None)[0]
    assert out.shape == (2, 3, 5, 3)
    assert torch.allclose(out[1, 2, 4], torch.tensor([1.0, 128 / 255, 0.0]))


# --- structured errors ------------------------------------------------------------------------

def test_bad_sizes_are_refused(session):
    cases = [
        ("ImageScale", {"upscale_method": "bilinear", "width": 20000, "height": 0,
                        "crop": "disabled"}, "width"),
        ("ImageScaleBy", {"upscale_method": "bilinear", "scale_by": 0.0}, "scale_by"),
        ("ImageScaleBy", {"upscale_method": "spline", "scale_by": 1.0}, "upscale_method"),
        ("EmptyImage", {"width": 0, "height": 8, "batch_size": 1, "color": 0}, "width"),
        ("EmptyImage", {"width": 16384, "height": 16384, "batch_size": 4096, "color": 0},
         "smaller batch"),
        ("EmptyImage", {"width": 8, "height": 8, "batch_size": 1, "color": 0x1000000}, "color"),
    ]
    for type_id, inputs, name in cases:
        if type_id != "EmptyImage":
            inputs = {"image": ["img", 0], **inputs}
        prompt = {"img": {"class_type": "EmptyImage",
                          "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                  "n": {"class_type": type_id, "inputs": inputs},
                  "cap": {"class_type": "TestCapture", "inputs": {"value": ["n", 0]}}}
        with pytest.raises(PromptValidationError, match=name):
            session.validate(prompt)


def test_results_past_the_bound_and_empty_results_fail_clearly(session):
    def scaled(scale):
        return {"img": {"class_type": "EmptyImage",
                        "inputs": {"width": 4096, "height": 4, "batch_size": 1, "color": 0}},
                "n": {"class_type": "ImageScaleBy",
                      "inputs": {"image": ["img", 0], "upscale_method": "nearest-exact",
                                 "scale_by": scale}},
                "cap": {"class_type": "TestCapture", "inputs": {"value": ["n", 0]}}}
    assert "past the maximum 16384" in run_error(session, scaled(8.0))
    assert "leaves no pixels" in run_error(session, scaled(0.1))
    big = Latent(torch.zeros(1, 4, 600, 8))
    with pytest.raises(ValueError, match="past 4096 latent pixels"):
        LatentUpscaleBy(samples=big, upscale_method="nearest-exact", scale_by=8.0
                        ).execute(None)
    prompt = txt2img()
    with_node(prompt, "c", "LatentComposite", samples_to=["lat", 0], samples_from=["lat", 0],
              x=512, y=0, feather=0)
    prompt["cap"]["inputs"]["value"] = ["c", 0]
    # a paste past samples_to's edge runs, as in ComfyUI, and says it pasted nothing
    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    warnings = [d["message"] for name, d in result.events if name == "node_warning"]
    assert any("outside samples_to" in w and "nothing was pasted" in w for w in warnings)


# --- VAELoader --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-vae", "tiny-diffusers-layout.safetensors",
                                  "tiny-ldm.safetensors", "tiny-ldm-bare.safetensors",
                                  "whole-checkpoint.safetensors"])
def test_vae_loader_decodes_as_the_checkpoints_vae(session, name):
    ref = run(session, txt2img())
    prompt = with_node(txt2img(), "vae", "VAELoader", vae_name=name)
    prompt["dec"]["inputs"]["vae"] = ["vae", 0]
    assert np.abs(run(session, prompt) - ref).max() <= 1e-6


def test_vae_loader_refuses_what_is_not_a_safe_vae(session):
    prompt = with_node(txt2img(), "vae", "VAELoader", vae_name="not-a-vae.safetensors")
    prompt["dec"]["inputs"]["vae"] = ["vae", 0]
    assert "is not a whole VAE" in run_error(session, prompt)
    for bad, words in (("../checkpoints/steerflow-tiny.safetensors", "vae_name"),
                       ("pickled.pt", "pickle")):
        prompt["vae"]["inputs"]["vae_name"] = bad
        with pytest.raises(PromptValidationError, match=words):
            session.validate(prompt)


# --- UNETLoader / ImageOnlyCheckpointLoader / DiffControlNetLoader ---------------------------

@pytest.mark.parametrize("name", ["tiny-unet", "tiny-comfy.safetensors",
                                  "tiny-diffusers-layout.safetensors"])
def test_unet_loader_samples_as_the_checkpoints_unet(session, name):
    # DDIM: a lone UNet carries no scheduler config, so it gets SD 1.5's published one, which
    # leaves timestep_spacing to each scheduler's default; the tiny model's pins "leading",
    # DDIM's default, so the two sample the same timesteps.
    ref = run(session, txt2img(sampler="ddim"))
    prompt = with_node(txt2img(model=["unet", 0], sampler="ddim"), "unet", "UNETLoader",
                       unet_name=name, weight_dtype="default")
    assert np.abs(run(session, prompt) - ref).max() <= 1e-5


def test_unet_loader_fp8_rounds_the_weights(session):
    from nodes.diffusion.component_loading import load_unet

    path = session.env.resolve("models", "diffusion_models", "tiny-unet")
    plain, _, _ = load_unet(path)
    fp8, _, _ = load_unet(path, weight_dtype="fp8_e4m3fn")
    for a, b in zip(plain.parameters(), fp8.parameters(), strict=True):
        assert torch.equal(b, a.to(torch.float8_e4m3fn).float())
    prompt = with_node(txt2img(model=["unet", 0]), "unet", "UNETLoader", unet_name="tiny-unet",
                       weight_dtype="fp8_e5m2")
    out = run(session, prompt)
    assert np.isfinite(out).all() and np.abs(out - run(session, txt2img())).max() > 0


def test_a_checkpoint_of_no_known_family_says_what_loads(session, models):
    """The files drill: a .safetensors of unknown sizes got a bare "cannot tell the model
    family" (read early, from its header), where a .ckpt got the whole advice."""
    weird = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
             torch.zeros(8, 333)}
    save_file(weird, models / "checkpoints" / "weird.safetensors")
    prompt = txt2img()
    prompt["ckpt"]["inputs"]["ckpt_name"] = "weird.safetensors"
    error = run_error(session, prompt)
    assert "cannot tell the model family" in error and "single files load as SD 1.x" in error


def test_unet_loader_errors(session):
    prompt = with_node(txt2img(model=["unet", 0]), "unet", "UNETLoader",
                       unet_name="tiny-no-config.safetensors", weight_dtype="default")
    assert "cannot tell the model family" in run_error(session, prompt)
    prompt["unet"]["inputs"]["unet_name"] = "../checkpoints/steerflow-tiny.safetensors"
    with pytest.raises(PromptValidationError, match="unet_name"):
        session.validate(prompt)


def test_image_only_checkpoint_loader_is_listed_and_explains_itself(session):
    prompt = {"l": {"class_type": "ImageOnlyCheckpointLoader",
                    "inputs": {"ckpt_name": "steerflow-tiny.safetensors"}},
              "cap": {"class_type": "TestCapture", "inputs": {"value": ["l", 2]}}}
    assert "Stable Video Diffusion" in run_error(session, prompt)


def test_diff_controlnet_adds_the_models_weights(session):
    plain = with_node(txt2img(control=["cn", 0]), "cn", "ControlNetLoader",
                      control_net_name=f"{NET}.safetensors")
    ref = run(session, plain)
    diff = with_node(txt2img(control=["cn", 0]), "cn", "DiffControlNetLoader",
                     model=["ckpt", 0], control_net_name="tiny-diff.safetensors")
    assert np.abs(run(session, diff) - ref).max() <= 1e-5
    assert np.abs(ref - run(session, txt2img())).max() > 1e-3  # the ControlNet acts
    # A plain ControlNet through the diff loader loads as it is.
    diff["cn"]["inputs"]["control_net_name"] = f"{NET}.safetensors"
    assert np.abs(run(session, diff) - ref).max() == 0


# --- a UI-format graph chaining several ---------------------------------------------------------

def ui_node(type_id: str, widgets: list, **links) -> dict:
    """An API node from UI-style positional ``widgets_values`` (the seed's
    control_after_generate value follows it, as in ComfyUI's files)."""
    cls = registry_with_capture().get(type_id)
    values, inputs = iter(widgets), dict(links)
    for spec in cls.INPUT_SPECS.values():
        if spec.is_widget and spec.name not in links:
            try:
                inputs[spec.name] = next(values)
            except StopIteration:
                break
            if spec.control_after_generate:
                next(values)
    return {"class_type": type_id, "inputs": inputs}


def test_ui_style_hires_graph_runs(session):
    key = uuid.uuid4().hex
    prompt = {
        "1": ui_node("CheckpointLoaderSimple", [TINY]),
        "2": ui_node("CLIPSetLastLayer", [-2], clip=["1", 1]),
        "3": ui_node("CLIPTextEncode", ["a red circle"], clip=["2", 0]),
        "4": ui_node("CLIPTextEncode", ["blurry"], clip=["2", 0]),
        "5": ui_node("EmptyLatentImage", [64, 64, 1]),
        "6": ui_node("KSampler", [1, "fixed", 3, 7.5, "euler", "normal", 1.0], model=["1", 0],
                     positive=["3", 0], negative=["4", 0], latent_image=["5", 0]),
        "7": ui_node("LatentUpscaleBy", ["bislerp", 1.5], samples=["6", 0]),
        "8": ui_node("KSampler", [2, "randomize", 3, 7.5, "euler", "normal", 0.5],
                     model=["1", 0], positive=["3", 0], negative=["4", 0],
                     latent_image=["7", 0]),
        "9": ui_node("LatentComposite", [32, 32, 16], samples_to=["8", 0],
                     samples_from=["6", 0]),
        "10": ui_node("LatentUpscale", ["nearest-exact", 128, 0, "disabled"],
                      samples=["9", 0]),
        "11": ui_node("VAELoader", ["tiny-vae"]),
        "12": ui_node("VAEDecode", [], samples=["10", 0], vae=["11", 0]),
        "13": ui_node("ImageScale", ["lanczos", 0, 48, "center"], image=["12", 0]),
        # The two-widget form of older files: resolution_steps takes its default.
        "14": ui_node("ImageScaleToTotalPixels", ["area", 0.01], image=["13", 0]),
        "15": ui_node("ImageScaleBy", ["bicubic", 0.5], image=["14", 0]),
        "16": {"class_type": "TestCapture", "inputs": {"value": ["15", 0], "key": key}},
    }
    assert "resolution_steps" not in prompt["14"]["inputs"]
    result = session.run(prompt)
    assert result.ok, result.run.error
    image = CAPTURED.pop(key)
    # 128 px wide latent → 128x128 image → 48x48 → sqrt(10485 / 2304)·48 = 102 → 51.
    assert image.shape == (1, 51, 51, 3)
    # Bicubic overshoots a little past 0..1, as in ComfyUI (saving clips).
    assert torch.isfinite(image).all() and image.min() > -0.1 and image.max() < 1.1
