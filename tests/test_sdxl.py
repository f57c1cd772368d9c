"""SDXL base and refiner through the graph equal diffusers' SDXL pipelines (tiny weights).

Also: loading both layouts offline, the family from the weights, the example workflow,
and SD 2.x v-prediction parity.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from engine.session import Session, Workflow
from nodes.diffusion.schedulers import SAMPLERS, SCHEDULES
from tests.graph_nodes import CAPTURED, registry_with_capture

PROMPT = "a red circle at the top left on a white background"
NEGATIVE = "blurry"
WIDTH, HEIGHT = 96, 64  # non-square: catches (height, width) order mix-ups
BASE = "steerflow-tiny-sdxl"
REFINER = "steerflow-tiny-sdxl-refiner"


@pytest.fixture(scope="module")
def sdxl_models(tmp_path_factory) -> Path:
    from nodes.diffusion.tiny_sdxl import ensure_tiny_sdxl

    root = tmp_path_factory.mktemp("sdxl_models")
    ensure_tiny_sdxl(root)
    return root


@pytest.fixture(scope="module")
def session(sdxl_models, tmp_path_factory):
    return Session(tmp_path_factory.mktemp("sdxl_session"), models_dir=sdxl_models,
                   device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def pipes(sdxl_models):
    ckpt = sdxl_models / "checkpoints"
    base = diffusers.StableDiffusionXLPipeline.from_pretrained(ckpt / BASE, local_files_only=True)
    refiner = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
        ckpt / REFINER, local_files_only=True)
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)
        pipe.base_config = dict(pipe.scheduler.config)
    return base, refiner


def _scheduler(pipe, sampler: str, schedule: str) -> None:
    class_name, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(
        pipe.base_config, **extra, **SCHEDULES[schedule])


def sdxl_encode(node_id_clip: str, text: str, **sizes) -> dict:
    inputs = {"clip": [node_id_clip, 1], "width": WIDTH, "height": HEIGHT, "crop_w": 0,
              "crop_h": 0, "target_width": WIDTH, "target_height": HEIGHT,
              "text_g": text, "text_l": text, **sizes}
    return {"class_type": "CLIPTextEncodeSDXL", "inputs": inputs}


def txt2img_prompt(ckpt: str, sampler: str, schedule: str, *, steps: int = 5, cfg: float = 5.0,
                   seed: int = 3, plain: bool = False) -> dict:
    encode = ((lambda t: {"class_type": "CLIPTextEncode", "inputs": {"text": t, "clip": ["4", 1]}})
              if plain else (lambda t: sdxl_encode("4", t)))
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": encode(PROMPT),
        "7": encode(NEGATIVE),
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": steps, "cfg": cfg,
            "sampler_name": sampler, "scheduler": schedule, "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["8", 0]}},
    }


def graph_image(session, prompt) -> np.ndarray:
    key = uuid.uuid4().hex
    prompt["10"]["inputs"]["key"] = key
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).cpu().numpy()


@pytest.mark.parametrize(("sampler", "schedule"), [("euler", "normal"), ("dpmpp_2m", "karras")])
def test_base_matches_sdxl_pipeline(session, pipes, sampler, schedule):
    base, _ = pipes
    ours = graph_image(session, txt2img_prompt(BASE, sampler, schedule))
    _scheduler(base, sampler, schedule)
    ref = base(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=5.0,
               height=HEIGHT, width=WIDTH, output_type="np",
               generator=torch.Generator("cpu").manual_seed(3)).images
    assert ours.shape == ref.shape == (1, HEIGHT, WIDTH, 3)
    assert np.abs(ours - ref).max() <= 1e-4


def test_single_file_equals_folder_and_plain_encode_matches(session, pipes):
    """The original-layout file gives the same image; plain CLIP Text Encode on SDXL takes
    the latent's size (diffusers' default original and target size)."""
    folder = graph_image(session, txt2img_prompt(BASE, "euler", "normal"))
    single = graph_image(session, txt2img_prompt(f"{BASE}.safetensors", "euler", "normal"))
    plain = graph_image(session, txt2img_prompt(BASE, "euler", "normal", plain=True))
    assert np.array_equal(folder, single)
    assert np.abs(plain - folder).max() <= 1e-5


def test_zero_out_negative_is_force_zeros_for_empty_prompt(session, pipes):
    base, _ = pipes
    prompt = txt2img_prompt(BASE, "euler", "normal")
    prompt["11"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["7", 0]}}
    prompt["3"]["inputs"]["negative"] = ["11", 0]
    ours = graph_image(session, prompt)
    _scheduler(base, "euler", "normal")
    ref = base(PROMPT, num_inference_steps=5, guidance_scale=5.0, height=HEIGHT, width=WIDTH,
               output_type="np", generator=torch.Generator("cpu").manual_seed(3)).images
    assert np.abs(ours - ref).max() <= 1e-4


def refiner_prompt(base_ckpt: str, refiner_ckpt: str, *, steps: int = 10, switch: int = 6,
                   cfg: float = 5.0, seed: int = 3) -> dict:
    def refine(text: str, ascore: float) -> dict:
        return {"class_type": "CLIPTextEncodeSDXLRefiner", "inputs": {
            "ascore": ascore, "width": WIDTH, "height": HEIGHT, "text": text, "clip": ["2", 1]}}

    def sampler(model, pos, neg, latent, start, end, add_noise, leftover):
        return {"class_type": "KSamplerAdvanced", "inputs": {
            "model": model, "add_noise": add_noise, "noise_seed": seed, "steps": steps,
            "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "positive": pos,
            "negative": neg, "latent_image": latent, "start_at_step": start,
            "end_at_step": end, "return_with_leftover_noise": leftover}}

    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": base_ckpt}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": refiner_ckpt}},
        "3": sdxl_encode("1", PROMPT), "4": sdxl_encode("1", NEGATIVE),
        "5": refine(PROMPT, 6.0), "6": refine(NEGATIVE, 2.5),
        "7": {"class_type": "EmptyLatentImage",
              "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}},
        "8": sampler(["1", 0], ["3", 0], ["4", 0], ["7", 0], 0, switch, "enable", "enable"),
        "9": sampler(["2", 0], ["5", 0], ["6", 0], ["8", 0], switch, 10000, "disable",
                     "disable"),
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["2", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["11", 0]}},
    }


def test_base_to_refiner_matches_pipelines(session, pipes):
    """KSamplerAdvanced 0..6 of 10 with leftover noise, then the refiner 6..10, equals
    the base pipeline with denoising_end=0.6 and the img2img refiner with
    denoising_start=0.6 (diffusers' ensemble of expert denoisers)."""
    base, refiner = pipes
    ours = graph_image(session, refiner_prompt(f"{BASE}.safetensors",
                                               f"{REFINER}.safetensors"))
    _scheduler(base, "euler", "normal")
    _scheduler(refiner, "euler", "normal")
    latents = base(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=10,
                   guidance_scale=5.0, height=HEIGHT, width=WIDTH, denoising_end=0.6,
                   output_type="latent", generator=torch.Generator("cpu").manual_seed(3)).images
    ref = refiner(PROMPT, negative_prompt=NEGATIVE, image=latents, num_inference_steps=10,
                  guidance_scale=5.0, denoising_start=0.6, output_type="np",
                  generator=torch.Generator("cpu").manual_seed(3)).images
    assert ours.shape == ref.shape == (1, HEIGHT, WIDTH, 3)
    # measured 5e-7 (the VP-space hand-over); tighter than 1e-4 because the tiny refiner
    # reacts weakly to its aesthetic score (see the test below)
    assert np.abs(ours - ref).max() <= 1e-5


def test_mismatched_conditioning_is_a_clear_error(session):
    """The base model's prompt on the refiner (a common wiring slip) says what to do."""
    prompt = refiner_prompt(BASE, REFINER)
    prompt["9"]["inputs"]["positive"] = ["3", 0]
    result = session.run(prompt)
    assert result.run.status == "error"
    assert "refiner" in result.run.error["exception_message"]
    prompt = refiner_prompt(BASE, REFINER)
    prompt["3"]["inputs"]["clip"] = ["2", 1]  # CLIPTextEncodeSDXL on the refiner's CLIP
    result = session.run(prompt)
    assert "CLIPTextEncodeSDXLRefiner" in result.run.error["exception_message"]


def test_example_workflow_runs_on_tiny_stand_ins(sdxl_models, tmp_path):
    """workflows/sdxl_refiner.json as shipped, with tiny weights under the real names."""
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    ckpt = sdxl_models / "checkpoints"
    shutil.copy(ckpt / f"{BASE}.safetensors", models / "checkpoints" / "sd_xl_base_1.0.safetensors")
    shutil.copy(ckpt / f"{REFINER}.safetensors",
                models / "checkpoints" / "sd_xl_refiner_1.0.safetensors")
    session = Session(tmp_path / "base", models_dir=models, device="cpu")
    wf = Workflow.load("workflows/sdxl_refiner.json")
    for node, value in (("7.width", 64), ("7.height", 64), ("8.steps", 5), ("9.steps", 5),
                        ("8.end_at_step", 4), ("9.start_at_step", 4)):
        wf.set(node, value)
    result = session.run(wf)
    assert result.ok, result.run.error
    assert [p.suffix for p in result.image_paths] == [".png"]


def test_example_workflow_without_weights_names_the_missing_models(tmp_path):
    from engine.validation import PromptValidationError

    session = Session(tmp_path, models_dir=tmp_path / "models", device="cpu")
    with pytest.raises(PromptValidationError) as info:
        session.validate(Workflow.load("workflows/sdxl_refiner.json"))
    issues = [i for i in info.value.issues if i.severity == "error"]
    assert {(i.kind, i.input_name) for i in issues} == {("not_in_choices", "ckpt_name")}
    assert any("sd_xl_base_1.0.safetensors" in i.message for i in issues)
    # ... and the folder it looked in
    assert all(i.message.endswith("(looked in models/checkpoints/)") for i in issues)
    assert all(i.details["folders"] == ["models/checkpoints/"] for i in issues)


# --- loading ------------------------------------------------------------------------------------

def test_sdxl_layouts_load_with_shipped_configs():
    """Full SDXL base and refiner structures (meta device) through the no-metadata path:
    the family comes from the weights, the configs from nodes/assets/configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from nodes.diffusion.loading import family_configs, load_original_state_dict
    from nodes.diffusion.original_layout import unet_to_original, vae_to_original
    from nodes.diffusion.sdxl_loading import BASE_BIG_G, BASE_CLIP_L, open_clip_to_original

    cfg = family_configs("sdxl")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        vae = AutoencoderKL.from_config(cfg["vae"])
        clip_l = CLIPTextModel(CLIPTextConfig.from_dict(cfg["text_encoder"]))
        big_g = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(cfg["text_encoder_2"]))
        unet_sd = unet_to_original(unet.state_dict(), cfg["unet"])
        clip_sd = {BASE_CLIP_L + "text_model." + k.removeprefix("text_model."): v
                   for k, v in clip_l.state_dict().items()}
        g_sd = open_clip_to_original(big_g.state_dict(), BASE_BIG_G)
        state = {**unet_sd, **vae_to_original(vae.state_dict(), cfg["vae"]), **clip_sd, **g_sd,
                 # present in the published file, unused
                 BASE_CLIP_L + "text_model.embeddings.position_ids": torch.empty(1, 77),
                 BASE_BIG_G + "logit_scale": torch.empty(())}
    # sd_xl_base_1.0.safetensors has 2515 tensors: UNet 1680, VAE 248, CLIP-L 197, bigG 390
    assert (len(unet_sd), len(clip_sd), len(g_sd), len(state)) == (1680, 196, 389, 2515)
    assert "model.diffusion_model.label_emb.0.2.weight" in state
    loaded = load_original_state_dict(state)
    assert loaded.family == "sdxl"
    assert loaded.unet.config.cross_attention_dim == 2048
    assert len(loaded.text_encoder_2.text_model.encoder.layers) == 32
    assert loaded.tokenizer_2.pad_token == "!" and loaded.tokenizer.pad_token == "<|endoftext|>"
    assert loaded.scheduler_config["_class_name"] == "EulerDiscreteScheduler"

    cfg = family_configs("sdxl_refiner")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        big_g = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(cfg["text_encoder_2"]))
        state = {**unet_to_original(unet.state_dict(), cfg["unet"]),
                 **vae_to_original(vae.state_dict(), cfg["vae"]),
                 **open_clip_to_original(big_g.state_dict(), "conditioner.embedders.0.model.")}
    loaded = load_original_state_dict(state)
    assert loaded.family == "sdxl_refiner" and loaded.text_encoder is None
    assert loaded.unet.config.projection_class_embeddings_input_dim == 2560


def test_tiny_sdxl_file_without_metadata_names_the_cause(sdxl_models, tmp_path):
    """Without config metadata the shipped SDXL base architecture is assumed; a file of other
    sizes fails saying so."""
    from safetensors.torch import load_file, save_file

    from nodes.diffusion.loading import CheckpointKeyError, load_components

    bare = tmp_path / "bare-xl.safetensors"
    save_file(load_file(str(sdxl_models / "checkpoints" / f"{BASE}.safetensors")), str(bare))
    with pytest.raises(CheckpointKeyError, match=r"without steerflow\.config metadata must "
                                                 r"have the standard SDXL base architecture"):
        load_components(bare)


def test_detect_sdxl_family():
    from nodes.diffusion.loading import detect_family

    unet = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
    base = {**unet, "conditioner.embedders.0.transformer.text_model.x": (1,),
            "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280)}
    refiner = {**unet, "conditioner.embedders.0.model.token_embedding.weight": (49408, 1280)}
    assert detect_family(base) == "sdxl"
    assert detect_family(refiner) == "sdxl_refiner"
    with pytest.raises(ValueError, match="text encoders"):
        detect_family({**unet, "conditioner.embedders.3.x": (1,)})


# --- SD 2.x v-prediction ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd2_models(tmp_path_factory) -> Path:
    """A tiny SD 2.x-style model: OpenCLIP-style GELU text encoder, "!" padding and a
    v-prediction scheduler (as SD 2.1 768)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from nodes.diffusion.loading import FAMILY_CONFIG_DIRS
    from nodes.diffusion.tiny import SCHEDULER_CONFIG, build_tiny_pipeline
    from nodes.diffusion.tokenizer import load_clip_tokenizer

    root = tmp_path_factory.mktemp("sd2_models")
    sd1 = build_tiny_pipeline(seed=4)
    config = {**sd1.text_encoder.config.to_dict(), "hidden_act": "gelu"}
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(config)).eval()
    StableDiffusionPipeline(
        vae=sd1.vae, text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(FAMILY_CONFIG_DIRS["sd2"] / "tokenizer"), unet=sd1.unet,
        scheduler=DDIMScheduler.from_config({**SCHEDULER_CONFIG,
                                             "prediction_type": "v_prediction"}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(root / "checkpoints" / "tiny-sd2-v", safe_serialization=True)
    return root


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_sd2_v_prediction_matches_pipeline(sd2_models, tmp_path, sampler):
    from nodes.diffusion.loading import load_components

    session = Session(tmp_path, models_dir=sd2_models, device="cpu",
                      registry=registry_with_capture())
    folder = sd2_models / "checkpoints" / "tiny-sd2-v"
    loaded = load_components(folder)
    assert loaded.family == "sd2" and loaded.scheduler_config["prediction_type"] == "v_prediction"
    prompt = txt2img_prompt("tiny-sd2-v", sampler, "normal", plain=True, cfg=7.5)
    prompt["4"]["inputs"] = {"ckpt_name": "tiny-sd2-v"}
    prompt["6"]["inputs"]["clip"] = prompt["7"]["inputs"]["clip"] = ["4", 1]
    ours = graph_image(session, prompt)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.base_config = dict(pipe.scheduler.config)
    _scheduler(pipe, sampler, "normal")
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=7.5,
               height=HEIGHT, width=WIDTH, output_type="np",
               generator=torch.Generator("cpu").manual_seed(3)).images
    assert np.abs(ours - ref).max() <= 1e-4


def test_size_and_aesthetic_conditioning_reach_the_unet(session):
    """Guards the parity tests against conditioning that is silently ignored."""
    plain = graph_image(session, txt2img_prompt(BASE, "euler", "normal"))
    cropped = txt2img_prompt(BASE, "euler", "normal")
    cropped["6"]["inputs"]["crop_w"] = 256
    assert np.abs(graph_image(session, cropped) - plain).max() > 1e-3
    refined = graph_image(session, refiner_prompt(BASE, REFINER))
    other = refiner_prompt(BASE, REFINER)
    other["5"]["inputs"]["ascore"] = 9.0
    # 8e-5 on the tiny refiner: far above the 5e-7 of its parity test
    assert np.abs(graph_image(session, other) - refined).max() > 2e-5


def test_widget_order_and_defaults_are_comfyuis():
    reg = registry_with_capture()
    widgets = {t: [s.name for s in reg.get(t).INPUT_SPECS.values() if s.is_widget]
               for t in ("CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner")}
    assert widgets == {
        "CLIPTextEncodeSDXL": ["width", "height", "crop_w", "crop_h", "target_width",
                               "target_height", "text_g", "text_l"],
        "CLIPTextEncodeSDXLRefiner": ["ascore", "width", "height", "text"]}
    specs = reg.get("CLIPTextEncodeSDXLRefiner").INPUT_SPECS
    assert (specs["ascore"].default, specs["ascore"].max, specs["width"].default) == (
        6.0, 1000.0, 1024)


@pytest.mark.parametrize("technique", ["SelfAttentionGuidance", "PerturbedAttentionGuidance",
                                       "ConditioningCombine"])
def test_extensions_with_their_own_passes_run_on_sdxl(session, technique):
    """SAG and PAG run extra UNet passes, Conditioning Combine extra batch entries: each
    pass gets its rows' pooled embeddings and size conditioning."""
    plain = graph_image(session, txt2img_prompt(BASE, "euler", "normal", steps=3))
    prompt = txt2img_prompt(BASE, "euler", "normal", steps=3)
    if technique == "ConditioningCombine":
        prompt["12"] = sdxl_encode("4", "a blue square")
        prompt["11"] = {"class_type": technique, "inputs": {
            "conditioning_1": ["6", 0], "conditioning_2": ["12", 0]}}
        prompt["3"]["inputs"]["positive"] = ["11", 0]
    else:
        prompt["11"] = {"class_type": technique, "inputs": {"model": ["4", 0]}}
        prompt["3"]["inputs"]["model"] = ["11", 0]
    image = graph_image(session, prompt)
    assert np.isfinite(image).all() and np.abs(image - plain).max() > 1e-4


def test_shipped_configs_are_the_real_sdxl_ones():
    """The key fields of stabilityai's SDXL base 1.0 and refiner 1.0 configs (compared with
    the published config.json files and ComfyUI's/sgm's model definitions)."""
    from nodes.diffusion.loading import family_configs

    base, refiner = family_configs("sdxl"), family_configs("sdxl_refiner")
    unet = base["unet"]
    assert unet["cross_attention_dim"] == 2048
    assert unet["transformer_layers_per_block"] == [1, 2, 10]
    assert unet["block_out_channels"] == [320, 640, 1280]
    assert unet["attention_head_dim"] == [5, 10, 20]  # 64 channels per head
    assert unet["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D",
                                        "CrossAttnDownBlock2D"]
    assert unet["up_block_types"] == ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    # pooled bigG (1280) + 6 size numbers x 256
    assert (unet["addition_embed_type"], unet["addition_time_embed_dim"],
            unet["projection_class_embeddings_input_dim"]) == ("text_time", 256, 2816)
    assert unet["use_linear_projection"] is True and unet["sample_size"] == 128
    assert not unet["upcast_attention"]

    r = refiner["unet"]
    assert (r["cross_attention_dim"], r["transformer_layers_per_block"]) == (1280, 4)
    assert r["block_out_channels"] == [384, 768, 1536, 1536]
    assert r["attention_head_dim"] == [6, 12, 24, 24]
    assert r["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D",
                                     "CrossAttnDownBlock2D", "DownBlock2D"]
    # pooled bigG (1280) + 5 numbers (sizes, crop, aesthetic score) x 256
    assert r["projection_class_embeddings_input_dim"] == 2560
    assert refiner["text_encoder"] is None

    for vae in (base["vae"], refiner["vae"]):
        assert vae["scaling_factor"] == 0.13025 and vae["force_upcast"] is True
        assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["sample_size"] == 1024
    clip_l = base["text_encoder"]
    assert (clip_l["hidden_size"], clip_l["num_hidden_layers"], clip_l["num_attention_heads"],
            clip_l["intermediate_size"], clip_l["hidden_act"]) == (768, 12, 12, 3072, "quick_gelu")
    for big_g in (base["text_encoder_2"], refiner["text_encoder_2"]):
        assert big_g["architectures"] == ["CLIPTextModelWithProjection"]
        assert (big_g["hidden_size"], big_g["num_hidden_layers"], big_g["num_attention_heads"],
                big_g["intermediate_size"], big_g["hidden_act"],
                big_g["projection_dim"]) == (1280, 32, 20, 5120, "gelu", 1280)
    for scheduler in (base["scheduler"], refiner["scheduler"]):
        assert scheduler["_class_name"] == "EulerDiscreteScheduler"
        assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"],
                scheduler["timestep_spacing"], scheduler["steps_offset"]) == (
            0.00085, 0.012, "scaled_linear", "leading", 1)


def test_clip_set_last_layer_on_sdxl_is_comfyuis(sdxl_models):
    """ComfyUI reads SDXL's encoders at layer_idx -2 without the final layer norm; CLIP Set
    Last Layer sets that index on both: -1 is the last layer's raw output, -2 the default,
    and past an encoder's depth its final (normed) output. The pooled output never moves."""
    from dataclasses import replace

    from nodes.conditioning import CLIPSetLastLayer
    from nodes.diffusion.handles import TextEncoder
    from nodes.diffusion.loading import load_components
    from nodes.diffusion.sdxl import encode_sdxl

    loaded = load_components(sdxl_models / "checkpoints" / BASE)
    clip = TextEncoder(loaded.text_encoder, loaded.tokenizer, loaded.family,
                       text_encoder_2=loaded.text_encoder_2, tokenizer_2=loaded.tokenizer_2)

    def hidden(index_l: int | None, index_g: int | None = 0) -> torch.Tensor:
        """Both encoders' layer outputs side by side (None: the final, normed output)."""
        parts = []
        for tokenizer, encoder, index in ((clip.tokenizer, clip.text_encoder, index_l),
                                          (clip.tokenizer_2, clip.text_encoder_2,
                                           index_l if index_g == 0 else index_g)):
            ids = tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True,
                            return_tensors="pt").input_ids
            with torch.no_grad():
                out = encoder(ids, output_hidden_states=True)
            parts.append(out.last_hidden_state if index is None else out.hidden_states[index])
        return torch.cat(parts, dim=-1)

    def set_layer(layer: int) -> TextEncoder:
        return CLIPSetLastLayer(clip=clip, stop_at_clip_layer=layer).execute(None)[0]

    default, pooled = encode_sdxl(clip, PROMPT)
    assert torch.equal(default, hidden(-2))  # diffusers' SDXL default, and ComfyUI's
    last, last_pooled = encode_sdxl(set_layer(-1), PROMPT)
    assert torch.equal(last, hidden(-1)) and not torch.equal(last, default)
    assert torch.equal(last_pooled, pooled)
    assert torch.equal(encode_sdxl(set_layer(-2), PROMPT)[0], default)
    # the tiny CLIP-L has 2 layers, the tiny bigG 3: -3 is past CLIP-L only
    assert (loaded.text_encoder.config.num_hidden_layers,
            loaded.text_encoder_2.config.num_hidden_layers) == (2, 3)
    assert torch.equal(encode_sdxl(set_layer(-3), PROMPT)[0], hidden(None, -3))
    past = replace(clip, stop_at_clip_layer=-4)
    assert torch.equal(encode_sdxl(past, PROMPT)[0], hidden(None))



def test_sdxl_textual_inversion_file_matches_diffusers(session, sdxl_models):
    """An SDXL embedding file holds one entry per text encoder (``clip_l``, ``clip_g``):
    each encoder takes its own, as diffusers' load_textual_inversion given each entry and
    ComfyUI do (before, bigG was given clip_l and refused the width). The pooled output
    is bigG's at the end-of-text token, as ComfyUI's; transformers, for configs with the
    legacy ``eos_token_id`` 2 (SDXL's), pools at the highest token id, which is the
    embedding's added token in diffusers: so the reference gets the pooled output at the
    end-of-text token, the rest from the pipeline."""
    from safetensors.torch import save_file

    base_dir = sdxl_models / "checkpoints" / BASE
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(base_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(5)
    vectors = {"clip_l": torch.randn(2, pipe.text_encoder.config.hidden_size, generator=g),
               "clip_g": torch.randn(2, pipe.text_encoder_2.config.hidden_size, generator=g)}
    folder = sdxl_models / "embeddings"
    folder.mkdir(exist_ok=True)
    save_file(vectors, folder / "xl_emb.safetensors")
    for entry, encoder, tokenizer in (("clip_l", pipe.text_encoder, pipe.tokenizer),
                                      ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2)):
        pipe.load_textual_inversion(vectors[entry], token="<xl>", text_encoder=encoder,
                                    tokenizer=tokenizer)
    text = "a photo of {} on a white background"
    prompt = txt2img_prompt(BASE, "euler", "normal")
    prompt["6"] = sdxl_encode("4", text.format("embedding:xl_emb"))
    ours = graph_image(session, prompt)

    embeds, negative, _, negative_pooled = pipe.encode_prompt(
        text.format("<xl>"), device="cpu", negative_prompt=NEGATIVE)
    tokenizer, encoder = pipe.tokenizer_2, pipe.text_encoder_2
    ids = tokenizer(pipe.maybe_convert_prompt(text.format("<xl>"), tokenizer),
                    padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = encoder(ids).last_hidden_state
        eos = (ids == tokenizer.eos_token_id).int().argmax(-1)
        pooled = encoder.text_projection(hidden[torch.arange(len(ids)), eos])
    pipe.base_config = dict(pipe.scheduler.config)
    _scheduler(pipe, "euler", "normal")
    ref = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative,
               pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled,
               num_inference_steps=5, guidance_scale=5.0, height=HEIGHT, width=WIDTH,
               output_type="np", generator=torch.Generator("cpu").manual_seed(3)).images
    assert np.abs(ours - ref).max() <= 1e-4
    plain = graph_image(session, txt2img_prompt(BASE, "euler", "normal"))
    assert np.abs(ours - plain).max() > 1e-3  # the embedding acted


def test_a_refiner_whose_pooled_width_is_not_its_context_width_takes_five_ids():
    """A refiner-like UNet loaded alone (UNETLoader) reads as the base when bigG projects
    to another width than it is wide; its prompt's pooled output then tells which."""
    from diffusers import UNet2DConditionModel

    from nodes.diffusion.component_loading import unet_family
    from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel
    from nodes.diffusion.sdxl import added_conditioning
    from nodes.diffusion.tiny_sdxl import REFINER_UNET_CONFIG, TIME_EMBED_DIM

    pooled_width = 24  # bigG's projection; its hidden width (the context) is another
    config = {**REFINER_UNET_CONFIG,
              "projection_class_embeddings_input_dim": pooled_width + 5 * TIME_EMBED_DIM}
    unet = UNet2DConditionModel(**config)
    assert unet_family(unet.config) == "sdxl"  # what the config alone suggests
    context = int(unet.config.cross_attention_dim)
    entry = CondEntry(torch.zeros(1, 77, context), {
        "pooled_output": torch.zeros(1, pooled_width), "aesthetic_score": 6.0,
        "width": 64, "height": 64})
    cond = Conditioning((entry,))
    added = added_conditioning(DiffusionModel(unet, {}, "sdxl"), cond, cond, (8, 8),
                               torch.device("cpu"), torch.float32, downscale=8)
    assert added.rows[0].time_ids.shape[-1] == 5  # the refiner's ids, ascore last
    assert float(added.rows[0].time_ids[0, -1]) == 6.0
