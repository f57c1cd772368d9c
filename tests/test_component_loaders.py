"""Load CLIP and DualCLIPLoader: a text encoder from models/text_encoders in each layout,
with Load Diffusion Model and Load VAE, samples as the whole checkpoint does (SD 1.x and
SDXL, tiny weights); full-size files are told apart by their shapes (meta tensors).
Also ComfyUI's older whole-model loaders, DiffusersLoader and CheckpointLoader (yaml)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.session import Session
from engine.validation import PromptValidationError
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

TINY = "steerflow-tiny"
XL = "steerflow-tiny-sdxl"
XL_REFINER = "steerflow-tiny-sdxl-refiner"


@pytest.fixture(scope="module")
def models(tiny_model_paths, tmp_path_factory) -> Path:
    from nodes.diffusion.original_layout import text_encoder_to_original
    from nodes.diffusion.sdxl_loading import open_clip_to_original
    from nodes.diffusion.text_encoder_loading import METADATA_KEY, save_text_encoder
    from nodes.diffusion.tiny_sdxl import ensure_tiny_sdxl

    root = tmp_path_factory.mktemp("clip_models")
    ensure_tiny_sdxl(root)
    tiny = tiny_model_paths["diffusers"]
    shutil.copytree(tiny, root / "checkpoints" / TINY)
    encoders, clip = root / "text_encoders", root / "clip"
    encoders.mkdir()
    clip.mkdir()
    for name, folder in (("sd1", tiny), ("xl", root / "checkpoints" / XL)):
        (root / "diffusion_models").mkdir(exist_ok=True)
        (root / "vae").mkdir(exist_ok=True)
        shutil.copytree(folder / "unet", root / "diffusion_models" / f"{name}-unet")
        shutil.copytree(folder / "vae", root / "vae" / f"{name}-vae")
    shutil.copytree(root / "checkpoints" / XL_REFINER / "unet",
                    root / "diffusion_models" / "refiner-unet")
    # SDXL's VAE as sdxl_vae.safetensors ships: the original layout, no config, no metadata
    from diffusers import AutoencoderKL

    from nodes.diffusion.original_layout import vae_to_original

    xl_vae = AutoencoderKL.from_pretrained(root / "checkpoints" / XL / "vae",
                                           local_files_only=True)
    save_file({k: v.contiguous() for k, v in
               vae_to_original(xl_vae.state_dict(), dict(xl_vae.config)).items()},
              root / "vae" / "xl-vae-bare.safetensors")
    xl = root / "checkpoints" / XL
    shutil.copytree(tiny / "text_encoder", encoders / "sd1-te")  # a diffusers folder
    shutil.copytree(xl / "text_encoder", encoders / "xl-clip-l")
    shutil.copytree(xl / "text_encoder_2", clip / "xl-clip-g")  # the legacy folder

    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    clip_l = CLIPTextModel.from_pretrained(tiny / "text_encoder", local_files_only=True)
    save_text_encoder(encoders / "sd1-clip-l.safetensors", clip_l, "clip_l")
    meta = {METADATA_KEY: load_meta(encoders / "sd1-clip-l.safetensors")}
    save_file({k: v.contiguous() for k, v in
               text_encoder_to_original(clip_l.state_dict()).items()},
              encoders / "sd1-original.safetensors", metadata=meta)
    big_g = CLIPTextModelWithProjection.from_pretrained(xl / "text_encoder_2",
                                                        local_files_only=True)
    save_text_encoder(encoders / "xl-clip-g.safetensors", big_g, "clip_g")
    g_meta = {METADATA_KEY: load_meta(encoders / "xl-clip-g.safetensors")}
    save_file({k: v.contiguous() for k, v in open_clip_to_original(
        big_g.state_dict(), "conditioner.embedders.1.model.").items()},
        encoders / "xl-open-clip.safetensors", metadata=g_meta)
    save_file({k: v.contiguous() for k, v in clip_l.state_dict().items()},
              encoders / "tiny-no-metadata.safetensors")
    save_file({"weight": torch.zeros(3)}, encoders / "not-a-clip.safetensors")
    torch.save({"x": torch.zeros(1)}, encoders / "pickled.pt")
    shutil.copytree(tiny, root / "diffusers" / "tiny-folder")
    configs = root / "configs"
    configs.mkdir()
    (configs / "v2-inference-v.yaml").write_text(
        "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n"
        "    parameterization: \"v\"\n    linear_start: 0.00085\n")
    (configs / "v1-inference.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    (configs / "broken.yaml").write_text("model: [unclosed\n")
    from nodes import LDM_CONFIGS

    shutil.copyfile(LDM_CONFIGS / "v1-inference_clip_skip_2.yaml",
                    configs / "v1-inference_clip_skip_2.yaml")
    return root


def load_meta(path: Path) -> str:
    from safetensors import safe_open

    from nodes.diffusion.text_encoder_loading import METADATA_KEY

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()[METADATA_KEY]


@pytest.fixture(scope="module")
def session(models, tmp_path_factory) -> Session:
    return Session(tmp_path_factory.mktemp("clip_home"), models_dir=models, device="cpu",
                   registry=registry_with_capture())


def txt2img(ckpt: str, *, model=None, clip=None, vae=None, sampler="ddim", size=(64, 64)
            ) -> dict:
    width, height = size
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle",
                                                           "clip": clip or ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry",
                                                           "clip": clip or ["ckpt", 1]}},
        "lat": {"class_type": "EmptyLatentImage",
                "inputs": {"width": width, "height": height, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {
            "model": model or ["ckpt", 0], "seed": 4, "steps": 3, "cfg": 6.0,
            "sampler_name": sampler, "scheduler": "normal", "positive": ["pos", 0],
            "negative": ["neg", 0], "latent_image": ["lat", 0], "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0],
                                                      "vae": vae or ["ckpt", 2]}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["dec", 0],
                                                        "key": uuid.uuid4().hex}},
    }


def run(session, prompt) -> np.ndarray:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["cap"]["inputs"]["key"]).numpy()


def separate(prompt: dict, unet: str, vae: str, clip: dict) -> dict:
    """``prompt`` with its checkpoint replaced by three component loaders."""
    del prompt["ckpt"]
    prompt["unet"] = {"class_type": "UNETLoader",
                      "inputs": {"unet_name": unet, "weight_dtype": "default"}}
    prompt["vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": vae}}
    prompt["clip"] = clip
    prompt["k"]["inputs"]["model"] = ["unet", 0]
    prompt["dec"]["inputs"]["vae"] = ["vae", 0]
    for node in ("pos", "neg"):
        prompt[node]["inputs"]["clip"] = ["clip", 0]
    return prompt


def test_a_bare_sdxl_vae_file_decodes_and_encodes_as_the_checkpoints_vae(session):
    """The SDXL drill: a VAE file that states no scaling factor (sdxl_vae.safetensors) was
    read with SD 1.x's 0.18215 instead of SDXL's 0.13025: 29/255 off in txt2img, 0.56 in
    img2img. As in ComfyUI, the latents' or the model's scaling is used then."""
    bare = {"class_type": "VAELoader", "inputs": {"vae_name": "xl-vae-bare.safetensors"}}
    own = run(session, txt2img(XL, size=(72, 40)))
    prompt = txt2img(XL, vae=["bare", 0], size=(72, 40))
    prompt["bare"] = bare
    assert np.abs(run(session, prompt) - own).max() <= 1e-4

    def img2img(vae: list) -> dict:
        p = txt2img(XL, vae=vae, size=(72, 40))
        p["bare"] = bare
        p["img"] = {"class_type": "EmptyImage", "inputs": {
            "width": 72, "height": 40, "batch_size": 1, "color": 0x3366CC}}
        p["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": vae}}
        p["k"]["inputs"].update(latent_image=["enc", 0], denoise=0.4)
        return p

    assert np.abs(run(session, img2img(["bare", 0])) - run(session, img2img(["ckpt", 2]))
                  ).max() <= 1e-4


@pytest.mark.parametrize("name", ["sd1-te", "sd1-clip-l.safetensors",
                                  "sd1-original.safetensors"])
def test_clip_loader_samples_as_the_checkpoint(session, name):
    """Each layout of SD 1.x's CLIP-L, with the UNet and VAE loaded apart, gives the
    checkpoint's image (DDIM: a lone UNet gets SD 1.5's scheduler config)."""
    ref = run(session, txt2img(TINY))
    clip = {"class_type": "CLIPLoader", "inputs": {"clip_name": name,
                                                   "type": "stable_diffusion",
                                                   "device": "default"}}
    ours = run(session, separate(txt2img(TINY), "sd1-unet", "sd1-vae", clip))
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize(("first", "second"), [
    ("xl-clip-l", "xl-clip-g"),
    ("xl-clip-g.safetensors", "xl-clip-l"),  # either order
    ("xl-clip-l", "xl-open-clip.safetensors"),
])
def test_dual_clip_loader_samples_as_the_sdxl_checkpoint(session, first, second):
    ref = run(session, txt2img(XL, sampler="euler", size=(96, 64)))
    clip = {"class_type": "DualCLIPLoader", "inputs": {
        "clip_name1": first, "clip_name2": second, "type": "sdxl", "device": "cpu"}}
    prompt = separate(txt2img(XL, sampler="euler", size=(96, 64)), "xl-unet", "xl-vae", clip)
    assert np.abs(run(session, prompt) - ref).max() <= 1e-5


def test_lone_sdxl_unets_know_their_family(models):
    from nodes.diffusion.component_loading import load_unet

    for name, family in (("xl-unet", "sdxl"), ("refiner-unet", "sdxl_refiner")):
        _, scheduler, found = load_unet(models / "diffusion_models" / name)
        assert found == family
        assert scheduler["_class_name"] == "EulerDiscreteScheduler"


def test_big_g_alone_is_the_refiners_clip(session):
    key = uuid.uuid4().hex
    result = session.run({
        "c": {"class_type": "CLIPLoader", "inputs": {
            "clip_name": "xl-clip-g.safetensors", "type": "stable_diffusion",
            "device": "default"}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["c", 0], "key": key}}})
    assert result.ok, result.run.error
    clip = CAPTURED.pop(key)
    assert clip.family == "sdxl_refiner" and clip.text_encoder is None
    assert clip.tokenizer_2.pad_token == "!"


def test_errors_are_clear(session):
    clip = {"class_type": "CLIPLoader", "inputs": {"clip_name": "sd1-te", "type": "sd3",
                                                   "device": "default"}}
    prompt = separate(txt2img(TINY), "sd1-unet", "sd1-vae", clip)
    with pytest.raises(PromptValidationError, match="Steerflow does not run"):
        session.validate(prompt)
    clip["inputs"]["type"] = "stable_diffusion"
    for name, words in (("tiny-no-metadata.safetensors", "none of the standard CLIPs"),
                        ("not-a-clip.safetensors", "is not a CLIP text encoder")):
        clip["inputs"]["clip_name"] = name
        assert words in run_error(session, prompt)
    clip["inputs"]["clip_name"] = "pickled.pt"
    with pytest.raises(PromptValidationError, match="pickle"):
        session.validate(prompt)
    clip["inputs"]["clip_name"] = "../checkpoints/steerflow-tiny.safetensors"
    with pytest.raises(PromptValidationError, match="clip_name"):
        session.validate(prompt)
    dual = {"class_type": "DualCLIPLoader", "inputs": {
        "clip_name1": "xl-clip-l", "clip_name2": "sd1-te", "type": "sdxl", "device": "cpu"}}
    prompt = separate(txt2img(XL), "xl-unet", "xl-vae", dual)
    assert "one of each" in run_error(session, prompt)


def test_full_size_files_are_told_apart_by_their_shapes():
    """ComfyUI's clip_l / clip_g (transformers layout), SD 1.x's and SD 2.x's checkpoint
    text encoders (original and OpenCLIP layouts): the kind and config from the shapes."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from nodes.diffusion.loading import family_configs
    from nodes.diffusion.sdxl_loading import open_clip_to_original
    from nodes.diffusion.text_encoder_loading import text_encoder_from_state_dict

    with torch.device("meta"):
        clip_l = CLIPTextModel(CLIPTextConfig.from_dict(family_configs("sd1")["text_encoder"]))
        h_config = {**family_configs("sd2")["text_encoder"], "num_hidden_layers": 24}
        clip_h = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(h_config))
        big_g = CLIPTextModelWithProjection(
            CLIPTextConfig.from_dict(family_configs("sdxl")["text_encoder_2"]))
        comfy_l = {"text_model." + k: v for k, v in clip_l.state_dict().items()}
        original_l = {"cond_stage_model.transformer.text_model." + k: v
                      for k, v in clip_l.state_dict().items()}
        open_h = open_clip_to_original(clip_h.state_dict(), "cond_stage_model.model.")
        comfy_g = dict(big_g.state_dict())
    for state, kind, layers in ((comfy_l, "clip_l", 12), (original_l, "clip_l", 12),
                                (open_h, "clip_h", 23), (comfy_g, "clip_g", 32)):
        model, found = text_encoder_from_state_dict(state)
        assert found == kind
        assert model.config.num_hidden_layers == layers
        assert model.config.hidden_act == ("quick_gelu" if kind == "clip_l" else "gelu")


def test_diffusers_loader_is_the_checkpoint_folder(session):
    ref = run(session, txt2img(TINY))
    prompt = txt2img(TINY)
    prompt["ckpt"] = {"class_type": "DiffusersLoader", "inputs": {"model_path": "tiny-folder"}}
    assert np.abs(run(session, prompt) - ref).max() == 0


def test_checkpoint_loader_reads_the_yamls_prediction_type(session):
    ref = run(session, txt2img(TINY))
    prompt = txt2img(TINY)
    prompt["ckpt"] = {"class_type": "CheckpointLoader",
                      "inputs": {"config_name": "v1-inference.yaml", "ckpt_name": TINY}}
    assert np.abs(run(session, prompt) - ref).max() == 0
    key = uuid.uuid4().hex
    result = session.run({
        "c": {"class_type": "CheckpointLoader",
              "inputs": {"config_name": "v2-inference-v.yaml", "ckpt_name": TINY}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["c", 0], "key": key}}})
    assert result.ok, result.run.error
    assert CAPTURED.pop(key).scheduler_config["prediction_type"] == "v_prediction"
    prompt = txt2img(TINY)
    prompt["ckpt"] = {"class_type": "CheckpointLoader",
                      "inputs": {"config_name": "broken.yaml", "ckpt_name": TINY}}
    assert "not valid YAML" in run_error(session, prompt)
    prompt["ckpt"]["inputs"]["config_name"] = "../checkpoints/x.yaml"
    with pytest.raises(PromptValidationError, match="config_name"):
        session.validate(prompt)


def test_checkpoint_loader_reads_clip_skip(session):
    """ComfyUI's v1-inference_clip_skip_2.yaml: the same image as CLIP Set Last Layer -2."""
    prompt = txt2img(TINY)
    prompt["skip"] = {"class_type": "CLIPSetLastLayer",
                      "inputs": {"clip": ["ckpt", 1], "stop_at_clip_layer": -2}}
    for node in ("pos", "neg"):
        prompt[node]["inputs"]["clip"] = ["skip", 0]
    ref = run(session, prompt)
    assert np.abs(ref - run(session, txt2img(TINY))).max() > 1e-4  # the layer matters
    prompt = txt2img(TINY)
    prompt["ckpt"] = {"class_type": "CheckpointLoader", "inputs": {
        "config_name": "v1-inference_clip_skip_2.yaml", "ckpt_name": TINY}}
    assert np.abs(run(session, prompt) - ref).max() == 0


def test_setup_seeds_comfyuis_config_names(tmp_path):
    from engine import Environment
    from nodes import LDM_CONFIGS, seed_ldm_configs
    from nodes.models import yaml_settings

    env = Environment.create(tmp_path, device="cpu")
    (env.folder("models", "configs", create=True) / "v1-inference.yaml").write_text("mine")
    seed_ldm_configs(env)
    folder = env.folder("models", "configs")
    names = {p.name for p in folder.iterdir()}
    assert {"v1-inference.yaml", "v2-inference-v.yaml", "v1-inference_clip_skip_2.yaml",
            "v2-inference.yaml", "anything-v3.yaml"} <= names
    assert (folder / "v1-inference.yaml").read_text() == "mine"  # a user's file is kept
    assert yaml_settings(LDM_CONFIGS / "v2-inference-v.yaml") == ("v_prediction", None)
    assert yaml_settings(LDM_CONFIGS / "v1-inference.yaml") == ("epsilon", None)
    assert yaml_settings(LDM_CONFIGS / "anything-v3.yaml") == ("epsilon", -2)


# --- ModelSave / VAESave / CLIPSave: saved, moved to models/, loaded back ------------------------

def _save_and_move(session, models, prompt: dict, key: str, folder: str) -> list[str]:
    result = session.run(prompt)
    assert result.ok, result.run.error
    names = []
    for entry in result.run.outputs["save"][key]:
        src = session.env.folder("output") / entry["subfolder"] / entry["filename"]
        shutil.copyfile(src, models / folder / entry["filename"])
        names.append(entry["filename"])
    return names


def test_component_saves_load_back(session, models):
    """A merged UNet (model + model: every weight doubled), the VAE and SDXL's two text
    encoders, each saved and loaded back with its loader: the same weights."""
    from nodes.diffusion.component_loading import load_unet, load_vae
    from nodes.diffusion.text_encoder_loading import load_text_encoder

    merge = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
             "add": {"class_type": "ModelMergeAdd",
                     "inputs": {"model1": ["ckpt", 0], "model2": ["ckpt", 0]}},
             "save": {"class_type": "ModelSave", "inputs": {
                 "model": ["add", 0], "filename_prefix": "diffusion_models/merged"}}}
    (unet_name,) = _save_and_move(session, models, merge, "models", "diffusion_models")
    unet, _, family = load_unet(models / "diffusion_models" / unet_name)
    base, _, _ = load_unet(models / "diffusion_models" / "sd1-unet")
    assert family == "sd1"
    for (name, a), b in zip(base.state_dict().items(), unet.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(b, 2 * a, msg=name)

    vae = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
           "save": {"class_type": "VAESave", "inputs": {"vae": ["ckpt", 2],
                                                         "filename_prefix": "vae/tiny"}}}
    (vae_name,) = _save_and_move(session, models, vae, "vaes", "vae")
    ref = load_vae(models / "vae" / "sd1-vae")
    for a, b in zip(ref.state_dict().values(), load_vae(models / "vae" / vae_name)
                    .state_dict().values(), strict=True):
        assert torch.equal(a, b)

    clip = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": XL}},
            "save": {"class_type": "CLIPSave", "inputs": {"clip": ["ckpt", 1],
                                                           "filename_prefix": "clip/xl"}}}
    names = _save_and_move(session, models, clip, "clips", "text_encoders")
    assert [n.rsplit("_", 2)[-1] for n in names] == ["l.safetensors", "g.safetensors"]
    for name, folder in zip(names, ("xl-clip-l", "xl-clip-g.safetensors"), strict=True):
        saved = load_text_encoder(models / "text_encoders" / name)
        ref = load_text_encoder(models / "text_encoders" / folder)
        assert saved.kind == ref.kind
        for a, b in zip(ref.model.state_dict().values(), saved.model.state_dict().values(),
                        strict=True):
            assert torch.equal(a, b)


def _without(single: Path, prefix: str, out: Path) -> None:
    """The single-file checkpoint ``single`` without its ``prefix`` weights, as ``out``."""
    from safetensors import safe_open

    with safe_open(str(single), "pt") as fh:
        metadata = fh.metadata()
    save_file({k: v for k, v in load_file(single).items() if not k.startswith(prefix)},
              str(out), metadata=metadata)


def test_a_checkpoint_without_a_vae_loads_its_model_and_clip(session, models,
                                                             tiny_model_paths):
    """As in ComfyUI, a checkpoint file without VAE weights still gives MODEL and CLIP;
    its VAE output fails where it is used, saying what to load instead."""
    _without(tiny_model_paths["single_file"], "first_stage_model.",
             models / "checkpoints" / "no-vae.safetensors")
    ref = run(session, txt2img(TINY))
    prompt = txt2img("no-vae.safetensors")
    prompt["vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": "sd1-vae"}}
    prompt["dec"]["inputs"]["vae"] = ["vae", 0]
    assert np.abs(run(session, prompt) - ref).max() <= 1e-5
    result = session.run(txt2img("no-vae.safetensors"))
    assert not result.ok
    assert result.run.error["node_id"] == "dec"
    assert "holds no VAE" in result.run.error["exception_message"]
    assert "Load VAE" in result.run.error["exception_message"]


def test_a_checkpoint_without_a_text_encoder_loads_its_model_and_vae(session, models,
                                                                     tiny_model_paths):
    """As in ComfyUI (CLIP None), a checkpoint file without text encoder weights still
    gives MODEL and VAE; its CLIP output passes through Load LoRA and CLIP Set Last Layer,
    and fails where a prompt is encoded with it, saying what to load instead."""
    _without(tiny_model_paths["single_file"], "cond_stage_model.",
             models / "checkpoints" / "no-clip.safetensors")
    ref = run(session, txt2img(TINY))
    prompt = txt2img("no-clip.safetensors", clip=["clip", 0])
    prompt["clip"] = {"class_type": "CLIPLoader", "inputs": {
        "clip_name": "sd1-te", "type": "stable_diffusion", "device": "default"}}
    assert np.abs(run(session, prompt) - ref).max() <= 1e-5

    for chain in ((), ("CLIPSetLastLayer",)):
        prompt = txt2img("no-clip.safetensors", clip=["last", 0] if chain else None)
        if chain:
            prompt["last"] = {"class_type": "CLIPSetLastLayer",
                              "inputs": {"clip": ["ckpt", 1], "stop_at_clip_layer": -2}}
        result = session.run(prompt)
        assert not result.ok
        assert result.run.error["node_id"] in ("pos", "neg")
        message = result.run.error["exception_message"]
        assert "holds no text encoder" in message and "Load CLIP" in message
        assert result.run.error["exception_type"] != "TypeError"


def test_save_checkpoint_leaves_out_the_parts_its_checkpoint_lacked(session, models,
                                                                   tiny_model_paths):
    """Save Checkpoint of a checkpoint without text encoder and VAE writes the file without
    them, as ComfyUI does (before it failed at the absent CLIP); Load Checkpoint reads that
    file back with both outputs absent, and with Load CLIP's and Load VAE's draws the same
    image as the full model."""
    _without(tiny_model_paths["single_file"], "cond_stage_model.",
             models / "checkpoints" / "no-clip-1.safetensors")
    _without(models / "checkpoints" / "no-clip-1.safetensors", "first_stage_model.",
             models / "checkpoints" / "no-parts.safetensors")
    save = {"ckpt": {"class_type": "CheckpointLoaderSimple",
                     "inputs": {"ckpt_name": "no-parts.safetensors"}},
            "save": {"class_type": "CheckpointSave", "inputs": {
                "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2],
                "filename_prefix": "checkpoints/resaved"}}}
    (name,) = _save_and_move(session, models, save, "checkpoints", "checkpoints")
    keys = load_file(models / "checkpoints" / name)
    assert not any(k.startswith(("cond_stage_model.", "first_stage_model.")) for k in keys)

    prompt = txt2img(name, clip=["clip", 0], vae=["vae", 0])
    prompt["clip"] = {"class_type": "CLIPLoader", "inputs": {
        "clip_name": "sd1-te", "type": "stable_diffusion", "device": "default"}}
    prompt["vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": "sd1-vae"}}
    assert np.abs(run(session, prompt) - run(session, txt2img(TINY))).max() <= 1e-5
    for node, part in (("pos", "text encoder"), ("dec", "VAE")):
        broken = txt2img(name, clip=None if node == "pos" else ["clip", 0])
        if node == "dec":
            broken["clip"] = prompt["clip"]
        result = session.run(broken)
        assert not result.ok and result.run.error["node_id"] in (node, "neg")
        assert f"holds no {part}" in result.run.error["exception_message"]


def test_lora_passes_a_missing_clip_on():
    """Load LoRA on a checkpoint's absent CLIP patches nothing there (ComfyUI's None)."""
    from nodes.diffusion.handles import is_absent, missing_text_encoder
    from nodes.lora import _patch_clip

    clip = missing_text_encoder("x.safetensors", "sd1")
    assert is_absent(clip.text_encoder)
    assert _patch_clip(clip, object(), 1.0) is clip  # the LoRA file is never looked at
    with pytest.raises(ValueError, match="holds no text encoder"):
        _ = clip.device


def _clip_with_positions(folder: Path, positions: int) -> None:
    """A tiny CLIPTextModel folder like the tiny model's, with ``positions`` positions."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from nodes.diffusion.tiny import TEXT_CONFIG, _seeded

    config = CLIPTextConfig(**{**TEXT_CONFIG, "max_position_embeddings": positions})
    _seeded(5, lambda: CLIPTextModel(config)).eval().save_pretrained(
        folder, safe_serialization=True)


def test_a_clip_with_fewer_than_77_positions_is_refused_at_load(session, models):
    """Prompts are cut into CLIP's 77-token windows: an encoder with 64 positions is refused
    by the loader (naming the file), not by transformers at the first prompt; long-CLIP's
    248 positions load and encode a prompt past 77 tokens as before."""
    for positions in (64, 248):
        _clip_with_positions(models / "text_encoders" / f"clip-pos{positions}", positions)
    clip = {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip-pos64",
                                                   "type": "stable_diffusion"}}
    prompt = separate(txt2img(TINY), "sd1-unet", "sd1-vae", clip)
    message = run_error(session, prompt)
    assert "clip-pos64" in message and "holds 64 token positions" in message
    assert "77-token windows" in message
    clip["inputs"]["clip_name"] = "clip-pos248"
    prompt = separate(txt2img(TINY), "sd1-unet", "sd1-vae", clip)
    prompt["pos"]["inputs"]["text"] = "a red circle " * 30  # two windows
    assert np.isfinite(run(session, prompt)).all()
    # a checkpoint folder whose text encoder holds 64 positions: its loader says the same
    folder = models / "checkpoints" / "tiny-pos64"
    shutil.copytree(models / "checkpoints" / TINY, folder)
    shutil.rmtree(folder / "text_encoder")
    _clip_with_positions(folder / "text_encoder", 64)
    message = run_error(session, txt2img("tiny-pos64"))
    assert "tiny-pos64" in message and "holds 64 token positions" in message


# --- Load VAE: a diffusers-layout file whose config SD's cannot hold --------------------------
def _odd_vae(folder: Path, name: str = "odd-vae.safetensors"):
    """A tiny VAE whose group norm (8 groups over widths 8 and 16) SD's 32 groups cannot
    hold, saved as one diffusers-layout file without metadata; and its config."""
    from diffusers import AutoencoderKL

    from nodes.diffusion.tiny import VAE_CONFIG

    torch.manual_seed(0)
    vae = AutoencoderKL(**{**VAE_CONFIG, "block_out_channels": (8, 16),
                           "down_block_types": ("DownEncoderBlock2D",) * 2,
                           "up_block_types": ("UpDecoderBlock2D",) * 2,
                           "norm_num_groups": 8, "scaling_factor": 0.39})
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, folder / name)
    return vae, dict(vae.config)


def test_a_vae_file_whose_config_the_weights_cannot_tell_is_refused_clearly(tmp_path):
    from nodes.diffusion.component_loading import load_vae

    _odd_vae(tmp_path)
    with pytest.raises(ValueError) as err:
        load_vae(tmp_path / "odd-vae.safetensors")
    message = str(err.value)
    assert "odd-vae.safetensors" in message and "[8, 16]" in message
    assert "diffusers folder" in message and "odd-vae.json" in message
    assert "checkpoint" in message and "num_groups" not in message  # not torch's words


@pytest.mark.parametrize("layout", ["stem.json", "diffusers folder"])
def test_a_vae_file_with_its_config_json_beside_it_loads_with_that_config(tmp_path, layout):
    """The config (group count, scaling factor) is taken from a config.json beside the
    file, never guessed: ``<stem>.json``, or ``config.json`` in a diffusers VAE folder."""
    import json

    from nodes.diffusion.component_loading import load_vae

    name = "odd-vae.safetensors" if layout == "stem.json" else \
        "diffusion_pytorch_model.safetensors"
    vae, config = _odd_vae(tmp_path, name)
    sidecar = "odd-vae.json" if layout == "stem.json" else "config.json"
    (tmp_path / sidecar).write_text(json.dumps(config))
    loaded = load_vae(tmp_path / name)
    assert loaded.config.norm_num_groups == 8 and loaded.config.scaling_factor == 0.39
    sample = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ours = loaded.decode(loaded.encode(sample).latent_dist.mean).sample
        theirs = vae.decode(vae.encode(sample).latent_dist.mean).sample
    torch.testing.assert_close(ours, theirs)


def test_a_wrong_config_beside_a_vae_file_is_refused_clearly(tmp_path):
    import json

    from nodes.diffusion.component_loading import load_vae

    _odd_vae(tmp_path)
    (tmp_path / "odd-vae.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match=r"odd-vae\.json .*not a diffusers AutoencoderKL"):
        load_vae(tmp_path / "odd-vae.safetensors")
    (tmp_path / "odd-vae.json").write_text(json.dumps(
        {"_class_name": "AutoencoderKL", "block_out_channels": [8, 16],
         "norm_num_groups": 32}))
    with pytest.raises(ValueError, match="does not fit together"):
        load_vae(tmp_path / "odd-vae.safetensors")
    (tmp_path / "odd-vae.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable VAE config"):
        load_vae(tmp_path / "odd-vae.safetensors")


def test_a_config_beside_a_vae_file_joins_the_loaders_fingerprint(tmp_path):
    """Editing only the config beside the file loads the VAE again (a new cache key)."""
    import json

    from engine import Environment
    from nodes.loaders import VAELoader

    env = Environment.create(tmp_path)
    folder = env.folder("models", "vae", create=True)
    _, config = _odd_vae(folder)
    inputs = {"vae_name": "odd-vae.safetensors"}
    bare = VAELoader.fingerprint(inputs, env)
    (folder / "odd-vae.json").write_text(json.dumps(config))
    with_config = VAELoader.fingerprint(inputs, env)
    assert bare is not None and with_config != bare
    (folder / "odd-vae.json").write_text(json.dumps({**config, "scaling_factor": 0.5}) + " ")
    assert VAELoader.fingerprint(inputs, env) != with_config


def test_odd_sidecar_configs_are_refused_naming_the_vae(tmp_path):
    """A config nested past JSON's depth, one with an unknown block type, or a scaling
    factor that is not a positive number: the loader's own words, never a raw error."""
    import json

    from nodes.diffusion.component_loading import load_vae

    _, config = _odd_vae(tmp_path, "tiny.fp16.safetensors")
    with pytest.raises(ValueError, match=r"tiny\.fp16\.json"):  # the name the loader reads
        load_vae(tmp_path / "tiny.fp16.safetensors")
    sidecar = tmp_path / "tiny.fp16.json"
    sidecar.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="not a readable VAE config"):
        load_vae(tmp_path / "tiny.fp16.safetensors")
    sidecar.write_text(json.dumps({**config, "down_block_types": ["NoSuchBlock2D"] * 2}))
    with pytest.raises(ValueError, match=r"tiny\.fp16\.safetensors cannot build a VAE"):
        load_vae(tmp_path / "tiny.fp16.safetensors")
    for factor in (float("nan"), 0, "x"):
        sidecar.write_text(json.dumps({**config, "scaling_factor": factor}))
        with pytest.raises(ValueError, match="scaling_factor"):
            load_vae(tmp_path / "tiny.fp16.safetensors")


def test_an_inpainting_input_from_a_bare_vae_is_rescaled_with_the_latents():
    """InpaintModelConditioning with a VAE stating no scaling: its masked-image latents
    (a 9-channel UNet's input) were left at the assumed 0.18215 while the latents were
    rescaled to the model's."""
    from types import SimpleNamespace

    import torch

    from nodes.diffusion.handles import InpaintCondition, Latent
    from nodes.diffusion.sampling import fit_empty_latent

    masked = torch.ones(1, 4, 5, 9)
    latent = Latent(torch.ones(1, 4, 5, 9), scaling_factor=0.18215, downscale=8,
                    scale_assumed=True, noise_mask=torch.ones(1, 1, 5, 9),
                    inpaint=InpaintCondition(torch.ones(1, 1, 5, 9), masked))
    model = SimpleNamespace(latent_scale=0.13025, unet=torch.nn.Linear(1, 1))
    fitted = fit_empty_latent(model, latent)
    ratio = 0.13025 / 0.18215
    assert torch.allclose(fitted.samples, torch.full_like(masked, ratio))
    assert torch.allclose(fitted.inpaint.masked_latents, torch.full_like(masked, ratio))
    assert fitted.scaling_factor == 0.13025 and not fitted.scale_assumed
