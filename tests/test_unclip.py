"""unCLIP through the graph equals diffusers' StableUnCLIPImg2ImgPipeline.

A tiny random Stable unCLIP pipeline (the tiny model's text encoder, VAE and tokenizer, a
tiny UNet with a projection class embedding, the tiny CLIP image tower, a random image
normaliser and the released checkpoints' DDPM noising schedule) is saved as a diffusers
folder; graphs load it with unCLIPCheckpointLoader, encode an image with its CLIP vision
tower and condition with unCLIPConditioning. The reference is the pipeline given the same
image embeddings, ``noise_level = round(999 · noise_augmentation)``, our initial noise as
``latents`` and ``generator=torch.Generator().manual_seed(seed)``.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from engine.session import Session
from nodes.diffusion.schedulers import SAMPLERS
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

UNCLIP = "tiny-unclip"
PROMPT = "a red circle at the top left"
NEGATIVE = "blurry"
STEPS = 4
CFG = 6.0
TOL = 1e-4
#: the tiny CLIP's projection width: the UNet's class embedding takes twice as many
PROJECTION_DIM = 16


def build_unclip_pipeline() -> diffusers.StableUnCLIPImg2ImgPipeline:
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPImageProcessor

    from nodes.diffusion.tiny import SCHEDULER_CONFIG, UNET_CONFIG, _seeded, build_tiny_pipeline
    from nodes.diffusion.tiny_clip import build_tiny_clip

    base = build_tiny_pipeline()
    unet = _seeded(11, lambda: UNet2DConditionModel(
        **UNET_CONFIG, class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * PROJECTION_DIM)).eval()
    normalizer = _seeded(12, lambda: StableUnCLIPImageNormalizer(embedding_dim=PROJECTION_DIM))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(13)
        normalizer.mean.copy_(torch.randn(1, PROJECTION_DIM) * 0.2)
        normalizer.std.copy_(torch.rand(1, PROJECTION_DIM) + 0.5)
    pipe = diffusers.StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32},
                                             crop_size={"height": 32, "width": 32}),
        image_encoder=build_tiny_clip(vision_only=True), image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, unet=unet,
        scheduler=DDIMScheduler.from_config(SCHEDULER_CONFIG), vae=base.vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8)))


@pytest.fixture(scope="module")
def unclip_models(models_dir, tmp_path_factory) -> Path:
    """A models folder of its own (the shared one stays as other modules expect it): the
    tiny unCLIP folder, and the ordinary tiny model in both formats."""
    root = tmp_path_factory.mktemp("unclip_models")
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    shutil.copytree(models_dir / "checkpoints" / "steerflow-tiny", checkpoints / "steerflow-tiny")
    shutil.copy(models_dir / "checkpoints" / "steerflow-tiny.safetensors", checkpoints)
    build_unclip_pipeline().save_pretrained(checkpoints / UNCLIP, safe_serialization=True)
    return root


@pytest.fixture(scope="module")
def pipe(unclip_models) -> diffusers.StableUnCLIPImg2ImgPipeline:
    reference = diffusers.StableUnCLIPImg2ImgPipeline.from_pretrained(
        unclip_models / "checkpoints" / UNCLIP, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    return reference


@pytest.fixture(scope="module")
def session(unclip_models, tmp_path_factory) -> Session:
    home = tmp_path_factory.mktemp("unclip_home")
    (home / "input").mkdir()
    picture(40, 56, 0).save(home / "input" / "source.png")
    picture(48, 48, 1).save(home / "input" / "second.png")
    registry = registry_with_capture()
    return Session(home, models_dir=unclip_models, device="cpu", registry=registry)


def graph(*, ckpt: str = UNCLIP, model_loader: str | None = None, sampler: str = "ddim",
          width: int = 64, height: int = 64, seed: int = 5,
          unclips: tuple[tuple[str, float, float], ...] = (("source.png", 1.0, 0.0),),
          crop: str = "center", patch: dict[str, Any] | None = None) -> dict[str, Any]:
    """unCLIP txt2img: ``unclips`` is (image, strength, noise_augmentation) per chained
    unCLIPConditioning on the positive prompt; ``model_loader`` loads MODEL and CLIP from
    another checkpoint; ``patch`` is a model node (class_type, inputs) put before KSampler."""
    prompt: dict[str, Any] = {
        "load": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": ckpt}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["m", 1]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["m", 1]}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": width, "height": height, "batch_size": 1}},
    }
    if model_loader is None:
        prompt["m"] = prompt["load"]
        prompt["neg"]["inputs"]["clip"] = prompt["pos"]["inputs"]["clip"] = ["load", 1]
    else:
        prompt["m"] = {"class_type": "CheckpointLoaderSimple",
                       "inputs": {"ckpt_name": model_loader}}
    positive: list = ["pos", 0]
    for k, (image, strength, aug) in enumerate(unclips):
        prompt[f"img{k}"] = {"class_type": "LoadImage", "inputs": {"image": image}}
        prompt[f"enc{k}"] = {"class_type": "CLIPVisionEncode", "inputs": {
            "clip_vision": ["load", 3], "image": [f"img{k}", 0], "crop": crop}}
        prompt[f"cap_enc{k}"] = {"class_type": "TestCapture",
                                 "inputs": {"value": [f"enc{k}", 0],
                                            "key": f"enc{k}-{uuid.uuid4().hex}"}}
        prompt[f"un{k}"] = {"class_type": "unCLIPConditioning", "inputs": {
            "conditioning": positive, "clip_vision_output": [f"enc{k}", 0],
            "strength": strength, "noise_augmentation": aug}}
        positive = [f"un{k}", 0]
    model: list = ["m" if model_loader else "load", 0]
    if patch is not None:
        class_type, inputs = patch
        prompt["patch"] = {"class_type": class_type, "inputs": {"model": model, **inputs}}
        model = ["patch", 0]
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": STEPS, "cfg": CFG, "sampler_name": sampler,
        "scheduler": "normal", "positive": positive, "negative": ["neg", 0],
        "latent_image": ["latent", 0], "denoise": 1.0}}
    prompt["decode"] = {"class_type": "VAEDecode",
                        "inputs": {"samples": ["sample", 0], "vae": ["load", 2]}}
    prompt["capture"] = {"class_type": "TestCapture",
                         "inputs": {"value": ["decode", 0], "key": uuid.uuid4().hex}}
    return prompt


def encoded(prompt: dict[str, Any], k: int = 0) -> torch.Tensor:
    """The image embeddings CLIP Vision Encode ``k`` of ``prompt`` gave (after its run)."""
    return CAPTURED.pop(prompt[f"cap_enc{k}"]["inputs"]["key"]).image_embeds


def run_image(session: Session, prompt: dict[str, Any]) -> np.ndarray:
    key = uuid.uuid4().hex  # a fresh key so the capture node runs again
    prompt["capture"]["inputs"]["key"] = key
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).cpu().numpy()


def reference(pipe, embeds: torch.Tensor, *, sampler: str, width: int, height: int, seed: int,
              noise_augmentation: float) -> np.ndarray:
    class_name, extra = SAMPLERS[sampler]
    scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **extra)
    run = diffusers.StableUnCLIPImg2ImgPipeline(**{**pipe.components, "scheduler": scheduler})
    run.set_progress_bar_config(disable=True)
    # Our sampler's initial noise; the pipeline takes ``latents`` as they are (no
    # init_noise_sigma when given), so they come scaled.
    noise = torch.randn((1, 4, height // 8, width // 8),
                        generator=torch.Generator("cpu").manual_seed(seed))
    scheduler.set_timesteps(STEPS)
    with torch.no_grad():
        out = run(prompt=PROMPT, negative_prompt=NEGATIVE, image_embeds=embeds,
                  noise_level=round(999 * noise_augmentation), num_inference_steps=STEPS,
                  guidance_scale=CFG, height=height, width=width,
                  latents=noise * scheduler.init_noise_sigma,
                  generator=torch.Generator().manual_seed(seed), output_type="np")
    return out.images


# --- parity ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("sampler", "width", "height", "aug", "crop"), [
    ("ddim", 64, 64, 0.0, "center"),
    ("euler", 64, 48, 0.3, "none"),
    ("ddim", 48, 64, 0.3, "center"),
])
def test_matches_stable_unclip_img2img_pipeline(session, pipe, sampler, width, height, aug,
                                                crop):
    prompt = graph(sampler=sampler, width=width, height=height, seed=5,
                   unclips=(("source.png", 1.0, aug),), crop=crop)
    ours = run_image(session, prompt)
    embeds = encoded(prompt)
    assert embeds.shape == (1, PROJECTION_DIM)
    theirs = reference(pipe, embeds, sampler=sampler, width=width, height=height, seed=5,
                       noise_augmentation=aug)
    assert ours.shape == theirs.shape == (1, height, width, 3)
    assert np.abs(ours - theirs).max() <= TOL


def test_noise_augmentation_changes_the_image(session):
    plain = run_image(session, graph(unclips=(("source.png", 1.0, 0.0),)))
    noised = run_image(session, graph(unclips=(("source.png", 1.0, 0.5),)))
    assert np.abs(plain - noised).max() > 1e-3


# --- class labels ----------------------------------------------------------------------------

def class_labels_of(pipe, conds, seed: int) -> torch.Tensor:
    """The hand computation: each conditioning's pipeline vector (noise drawn in order from
    one generator) times its strength, summed."""
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(1, 2 * PROJECTION_DIM)
    with torch.no_grad():
        for embeds, strength, aug in conds:
            vector = pipe.noise_image_embeddings(embeds, round(999 * aug), generator=generator)
            total = total + strength * vector
    return total


def test_class_labels_function_sums_conditionings(pipe, unclip_models):
    from nodes.diffusion.unclip import UnclipCondition, load_unclip_parts, unclip_class_labels

    parts = load_unclip_parts(unclip_models / "checkpoints" / UNCLIP)
    a, b = torch.randn(1, PROJECTION_DIM), torch.randn(1, PROJECTION_DIM)
    conds = [(a, 0.7, 0.2), (b, -0.4, 0.6)]
    ours = unclip_class_labels(parts, [UnclipCondition(*c) for c in conds],
                               torch.Generator().manual_seed(9), 2 * PROJECTION_DIM)
    torch.testing.assert_close(ours, class_labels_of(pipe, conds, 9), rtol=0, atol=1e-6)
    one = unclip_class_labels(parts, [UnclipCondition(a, 1.0, 0.2)],
                              torch.Generator().manual_seed(9), 2 * PROJECTION_DIM)
    with torch.no_grad():
        exact = pipe.noise_image_embeddings(a, round(999 * 0.2),
                                            generator=torch.Generator().manual_seed(9))
    assert torch.equal(one, exact)  # strength 1: exactly the pipeline's vector
    none = unclip_class_labels(parts, [], torch.Generator().manual_seed(9), 2 * PROJECTION_DIM)
    assert torch.equal(none, torch.zeros(1, 2 * PROJECTION_DIM))


class ClassLabelRecorder:
    """Records what the UNet's class embedding receives (the class_labels of every pass)."""

    def __init__(self, unet):
        self.seen: list[torch.Tensor] = []
        self.handle = unet.class_embedding.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.seen.append(args[0].detach().clone())

    def close(self) -> None:
        self.handle.remove()


def loaded_unet(session: Session):
    """The UNet the graphs' unCLIPCheckpointLoader gives (the session caches it)."""
    key = uuid.uuid4().hex
    prompt = {"load": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": UNCLIP}},
              "cap": {"class_type": "TestCapture", "inputs": {"value": ["load", 0], "key": key}}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).unet


def test_chained_conditionings_sum_and_negative_gets_zeros(session, pipe):
    recorder = ClassLabelRecorder(loaded_unet(session))
    try:
        conds = (("source.png", 0.6, 0.1), ("second.png", 0.8, 0.4))
        prompt = graph(unclips=conds, seed=8)
        run_image(session, prompt)
    finally:
        recorder.close()
    embeds = [encoded(prompt, k) for k in range(2)]
    expected = class_labels_of(pipe, [(e, s, a) for e, (_, s, a) in zip(embeds, conds,
                                                                            strict=True)], 8)
    assert len(recorder.seen) == STEPS
    for labels in recorder.seen:  # [uncond, cond]
        assert torch.equal(labels[0], torch.zeros(2 * PROJECTION_DIM))
        torch.testing.assert_close(labels[1:], expected, rtol=0, atol=1e-6)


def test_strength_zero_is_zeros_for_every_row(session):
    recorder = ClassLabelRecorder(loaded_unet(session))
    try:
        zero = run_image(session, graph(unclips=(("source.png", 0.0, 0.3),)))
        without = run_image(session, graph(unclips=()))
    finally:
        recorder.close()
    assert recorder.seen and all(not labels.any() for labels in recorder.seen)
    assert np.array_equal(zero, without)


def test_zero_class_labels_match_a_plain_loop(session, pipe):
    """An unCLIP model sampled without unCLIP conditioning: zeros for both halves, as
    a hand-written DDIM loop over the pipeline's modules."""
    ours = run_image(session, graph(unclips=(), seed=3))
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(3))
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
        embeds = torch.cat([neg, pos])
        labels = torch.zeros(2, 2 * PROJECTION_DIM)
        for t in scheduler.timesteps:
            out = pipe.unet(torch.cat([latents] * 2), t, encoder_hidden_states=embeds,
                            class_labels=labels).sample
            uncond, cond = out.chunk(2)
            latents = scheduler.step(uncond + CFG * (cond - uncond), t, latents).prev_sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    theirs = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - theirs).max() <= TOL
    # the same UNet from Load Checkpoint (which gives it a parts-less unCLIP extension)
    alone = run_image(session, graph(model_loader=UNCLIP, unclips=(), seed=3))
    assert np.abs(alone - theirs).max() <= TOL


# --- with other techniques -----------------------------------------------------------------

@pytest.mark.parametrize(("class_type", "inputs", "rows"), [
    ("SelfAttentionGuidance", {"scale": 0.8, "blur_sigma": 2.0}, {2, 1}),
    ("PerturbedAttentionGuidance", {"scale": 3.0, "layers": "mid", "adaptive_scale": 0.0},
     {3}),
])
def test_attention_guidance_passes_get_class_labels(session, class_type, inputs, rows):
    recorder = ClassLabelRecorder(loaded_unet(session))
    try:
        image = run_image(session, graph(unclips=(("source.png", 1.0, 0.2),), seed=11,
                                         patch=(class_type, inputs)))
    finally:
        recorder.close()
    plain = run_image(session, graph(unclips=(("source.png", 1.0, 0.2),), seed=11))
    assert np.isfinite(image).all()
    assert np.abs(image - plain).max() > 1e-4  # the technique did act
    seen = recorder.seen
    assert {labels.shape[0] for labels in seen} == rows
    if class_type == "PerturbedAttentionGuidance":  # [uncond, cond, perturbed cond]
        for labels in seen:
            assert not labels[0].any() and labels[1].any()
            assert torch.equal(labels[1], labels[2])
    else:  # SAG's own pass re-runs the unconditional half: zeros
        assert all(not labels.any() for labels in seen if labels.shape[0] == 1)


# --- loading and errors -----------------------------------------------------------------------

def test_unclip_conditioning_on_an_ordinary_model_fails_clearly(session):
    message = run_error(session, graph(model_loader="steerflow-tiny"))
    assert "not an unCLIP model" in message


def test_single_file_is_refused(session):
    message = run_error(session, graph(ckpt="steerflow-tiny.safetensors"))
    assert "single-file" in message and "not supported yet" in message
    assert "diffusers" in message


def test_folder_that_is_not_unclip_is_refused(session):
    message = run_error(session, graph(ckpt="steerflow-tiny"))
    assert "not an unCLIP" in message


def test_single_file_raises_value_error(unclip_models):
    from nodes.diffusion.unclip import check_unclip_folder

    with pytest.raises(ValueError, match="not supported yet"):
        check_unclip_folder(unclip_models / "checkpoints" / "steerflow-tiny.safetensors")


def test_checkpoint_loader_simple_still_loads_the_unclip_folder(session):
    prompt = {"load": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": UNCLIP}},
              "cap": {"class_type": "TestCapture",
                      "inputs": {"value": ["load", 0], "key": "simple_model"}}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    model = CAPTURED.pop("simple_model")
    assert model.unet.config.class_embed_type == "projection"
    from nodes.diffusion.unclip import UnclipExtension

    (ext,) = model.extensions  # zeros as class labels: it samples without an image
    assert isinstance(ext, UnclipExtension) and ext.parts is None



def test_unclip_model_from_load_checkpoint_says_which_loader(session):
    message = run_error(session, graph(model_loader=UNCLIP))
    assert "unCLIPCheckpointLoader" in message and "Load Checkpoint" in message


@pytest.mark.parametrize(("strength", "aug", "sampler"), [
    (10.0, 1.0, "euler_ancestral"), (-10.0, 0.0, "res_multistep"), (0.5, 0.999, "lms")])
def test_extreme_settings_stay_finite(session, strength, aug, sampler):
    image = run_image(session, graph(sampler=sampler, width=48, height=40,
                                     unclips=(("source.png", strength, aug),
                                              ("second.png", 1.0, aug))))
    assert np.isfinite(image).all() and image.shape == (1, 40, 48, 3)


# --- SDXL Revision ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def revision_session(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from nodes.diffusion.tiny_sdxl import BIG_G_WIDTH, ensure_tiny_sdxl

    root = tmp_path_factory.mktemp("revision_models")
    ensure_tiny_sdxl(root)
    torch.manual_seed(0)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
        image_size=32, patch_size=8, projection_dim=BIG_G_WIDTH))
    vision.save_pretrained(root / "clip_vision" / "tiny-clip-g")
    home = tmp_path_factory.mktemp("revision_home")
    (home / "input").mkdir()
    picture(40, 56, 0).save(home / "input" / "source.png")
    return Session(home, models_dir=root, device="cpu", registry=registry_with_capture())


def _revision_graph(strength: float, aug: float) -> dict[str, Any]:
    from tests.test_sdxl import BASE, sdxl_encode

    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BASE}},
        "6": sdxl_encode("4", "a red circle"), "7": sdxl_encode("4", "blurry"),
        "cv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "tiny-clip-g"}},
        "img": {"class_type": "LoadImage", "inputs": {"image": "source.png"}},
        "enc": {"class_type": "CLIPVisionEncode", "inputs": {
            "clip_vision": ["cv", 0], "image": ["img", 0], "crop": "center"}},
        "un": {"class_type": "unCLIPConditioning", "inputs": {
            "conditioning": ["6", 0], "clip_vision_output": ["enc", 0],
            "strength": strength, "noise_augmentation": aug}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48,
                                                          "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": 4, "steps": 3, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["un", 0], "negative": ["7", 0],
            "latent_image": ["5", 0], "denoise": 1.0}},
    }


def test_sdxl_revision_puts_the_image_embedding_in_the_pooled_output(revision_session):
    """On SDXL, unCLIP conditioning is Revision: the positive's pooled output becomes
    strength · the (noised) image embedding; the same run with that pooled output set by
    hand on a plain conditioning gives the same latents."""
    from nodes.diffusion.handles import Conditioning
    from nodes.diffusion.sampling import SamplingParams, sample
    from nodes.diffusion.schedulers import make_scheduler
    from nodes.diffusion.unclip import (
        OPTION,
        REVISION_NOISING,
        UnclipParts,
        unclip_class_labels,
    )

    for strength, aug in ((1.0, 0.0), (0.7, 0.4)):
        graph = _revision_graph(strength, aug)
        keys = {n: uuid.uuid4().hex for n in ("3", "4", "un", "7", "5")}
        for node, key in keys.items():
            graph[f"cap{node}"] = {"class_type": "TestCapture",
                                   "inputs": {"value": [node, 0], "key": key}}
        result = revision_session.run(graph)
        assert result.ok, result.run.error
        ours, model, positive, negative, latent = (CAPTURED.pop(keys[n])
                                                   for n in ("3", "4", "un", "7", "5"))
        entry = positive.entries[0]
        (cond,) = entry.options[OPTION]
        width = int(entry.options["pooled_output"].shape[-1])
        parts = UnclipParts(torch.zeros(1, width), torch.ones(1, width), REVISION_NOISING)
        pooled = unclip_class_labels(parts, [cond], torch.Generator().manual_seed(4),
                                     2 * width)[:, :width]
        options = {k: v for k, v in entry.options.items() if k not in (OPTION, "extensions")}
        by_hand = Conditioning((replace(entry, options={**options, "pooled_output": pooled}),))
        scheduler = make_scheduler("euler", "normal", model.scheduler_config)
        reference = sample(model, scheduler, by_hand, negative, latent,
                           SamplingParams(seed=4, steps=3, cfg=5.0))
        assert torch.allclose(ours.samples, reference, atol=1e-5)
        plain = sample(model, make_scheduler("euler", "normal", model.scheduler_config),
                       Conditioning((replace(entry, options=options),)), negative, latent,
                       SamplingParams(seed=4, steps=3, cfg=5.0))
        assert (ours.samples - plain).abs().max() > 1e-3  # the image acts
