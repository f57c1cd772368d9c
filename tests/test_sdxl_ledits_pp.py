"""LEDITS++ on SDXL equals ``LEditsPPPipelineStableDiffusionXL`` (tiny random weights,
non-square), each edit concept with its own pooled text embedding.

Unlike the SD 1.x pipeline (see tests/test_ledits_pp.py) the SDXL ``invert`` does not
swap its prompts, so the graph is wired as a user would. What the reference is given:
``num_zero_noise_steps=0`` (the SDXL ``invert`` zeroes the last 3 noise maps by default,
the SD 1.x one none; our LEDITS++ Inversion follows SD 1.x), ``negative_prompt=""``
(``None`` would zero the empty prompt's embeddings: ``ConditioningZeroOut`` in a graph),
and the UNet's SDPA where its ``invert`` installs the classic ``AttnProcessor`` (same
math, other rounding, which the tiny random VAE magnifies). Its size conditioning reads
(latent width, latent height) x 8 as (height, width); the graph's encoders get the same.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.pipelines.ledits_pp import pipeline_leditspp_stable_diffusion_xl as ledits_xl
from PIL import Image

from engine.session import Session
from tests.graph_nodes import CAPTURED, registry_with_capture
from tests.test_sdxl import BASE, HEIGHT, WIDTH
from tests.test_sdxl_techniques import picture

SOURCE = "a red circle at the top left on a white background"
CONCEPTS = [
    {"text": "a blue square", "direction": "add", "scale": 6.0, "warmup_steps": 1,
     "cooldown_steps": 10000, "threshold": 0.8, "weight": 1.0},
    {"text": "red", "direction": "remove", "scale": 4.0, "warmup_steps": 0,
     "cooldown_steps": 5, "threshold": 0.7, "weight": 1.0},
]
N_INV, SKIP, SOURCE_SCALE, SEED = 6, 0.25, 3.5, 5
TOL = 1e-4
MASKS = {"noise": (False, False)}


@pytest.fixture(scope="module")
def sdxl_models(tmp_path_factory) -> Path:
    from nodes.diffusion.tiny_sdxl import ensure_tiny_sdxl

    root = tmp_path_factory.mktemp("sdxl_models")
    ensure_tiny_sdxl(root)
    return root


@pytest.fixture(scope="module")
def session(sdxl_models, tmp_path_factory) -> Session:
    home = tmp_path_factory.mktemp("sdxl_ledits_home")
    (home / "input").mkdir()
    Image.fromarray(picture()).save(home / "input" / "picture.png")
    return Session(home, models_dir=sdxl_models, device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def pipe(sdxl_models):
    base = diffusers.StableDiffusionXLPipeline.from_pretrained(
        sdxl_models / "checkpoints" / BASE, local_files_only=True)
    pipe = diffusers.LEditsPPPipelineStableDiffusionXL(
        **{k: v for k, v in base.components.items()
           if k not in ("image_encoder", "feature_extractor")})
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _DDIM(DDIMScheduler):
    """DDIM whose add_noise takes the float timestep tensor the pipeline's invert passes."""

    def add_noise(self, original_samples, noise, timesteps):  # type: ignore[override]
        return super().add_noise(original_samples, noise, timesteps.long())


def _encode(text: str) -> dict:
    # The pipeline's size conditioning is (latent width, latent height) x 8 read as
    # (height, width): swapped for a non-square image. Give ours the same numbers.
    return {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "clip": ["1", 1], "text_g": text, "text_l": text, "width": HEIGHT, "height": WIDTH,
        "crop_w": 0, "crop_h": 0, "target_width": HEIGHT, "target_height": WIDTH}}


def ledits_prompt(sampler: str, mask: str) -> dict:
    cross, intersect = MASKS[mask]
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BASE}},
        "2": _encode(""),
        "3": _encode(SOURCE),
        "4": {"class_type": "LoadImage", "inputs": {"image": "picture.png"}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "LEditsPPInvert", "inputs": {
            "model": ["1", 0], "latent": ["5", 0], "negative": ["2", 0],
            "source_prompt": ["3", 0], "num_inversion_steps": N_INV, "skip": SKIP,
            "source_guidance_scale": SOURCE_SCALE, "seed": SEED, "sampler_name": sampler,
            "scheduler": "ddim_uniform"}},
        "7": {"class_type": "ApplyLEditsPP", "inputs": {
            "model": ["1", 0], "inversion": ["6", 1], "concepts": [f"c{len(CONCEPTS) - 1}", 0],
            "use_cross_attn_mask": cross, "use_intersect_mask": intersect}},
        "8": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["7", 0], "add_noise": "disable", "noise_seed": 0, "steps": ["6", 2],
            "cfg": 1.0, "sampler_name": sampler, "scheduler": "ddim_uniform",
            "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["6", 0],
            "start_at_step": ["6", 3], "end_at_step": 10000,
            "return_with_leftover_noise": "disable"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["9", 0],
                                                       "key": uuid.uuid4().hex}},
    }
    for i, concept in enumerate(CONCEPTS):
        inputs = {**concept, "clip": ["1", 1]}
        if i:
            inputs["previous"] = [f"c{i - 1}", 0]
        prompt[f"c{i}"] = {"class_type": "SEGAConcept", "inputs": inputs}
    return prompt


def run_reference(pipe, session: Session, sampler: str, mask: str) -> np.ndarray:
    config = pipe.scheduler.config
    pipe.scheduler = (_DDIM.from_config(config) if sampler == "ddim" else
                      DPMSolverMultistepScheduler.from_config(
                          config, algorithm_type="sde-dpmsolver++", solver_order=2))
    image = Image.open(session.env.resolve("input", "picture.png"))
    cross, intersect = MASKS[mask]
    processor = ledits_xl.AttnProcessor
    ledits_xl.AttnProcessor = AttnProcessor2_0  # see the module docstring
    try:
        pipe.invert(image=image, source_prompt=SOURCE, source_guidance_scale=SOURCE_SCALE,
                    negative_prompt="", num_inversion_steps=N_INV, skip=SKIP,
                    num_zero_noise_steps=0, generator=torch.Generator("cpu").manual_seed(SEED))
    finally:
        ledits_xl.AttnProcessor = processor
    return pipe(
        negative_prompt="",
        editing_prompt=[c["text"] for c in CONCEPTS],
        reverse_editing_direction=[c["direction"] == "remove" for c in CONCEPTS],
        edit_guidance_scale=[c["scale"] for c in CONCEPTS],
        edit_warmup_steps=[c["warmup_steps"] for c in CONCEPTS],
        edit_cooldown_steps=[c["cooldown_steps"] for c in CONCEPTS],
        edit_threshold=[c["threshold"] for c in CONCEPTS],
        use_cross_attn_mask=cross, use_intersect_mask=intersect, output_type="np").images


# The attention masks are not compared: the tiny SDXL UNet has no cross-attention at 1/4
# of the latent, where the pipeline looks for it (it raises), as with the tiny SD 1.x model.
@pytest.mark.parametrize(("sampler", "mask"), [("dpmpp_2m_sde", "noise"), ("ddim", "noise")])
def test_matches_the_sdxl_pipeline(session, pipe, sampler, mask):
    prompt = ledits_prompt(sampler, mask)
    result = session.run(prompt)
    assert result.ok, result.run.error
    ours = CAPTURED.pop(prompt["10"]["inputs"]["key"]).numpy()
    ref = run_reference(pipe, session, sampler, mask)
    assert ours.shape == ref.shape == (1, HEIGHT, WIDTH, 3)
    assert np.abs(ours - ref).max() <= TOL


def test_sega_concepts_carry_their_own_pooled_output(session):
    """SEGA Concept on SDXL keeps bigG's pooled output; the sampler gives the concept's batch
    row that one (not the positive prompt's), for SEGA and LEDITS++ alike."""
    from nodes.diffusion.sdxl import AddedConditioning, _Row
    from nodes.diffusion.sega import concept_conditions

    key = uuid.uuid4().hex
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BASE}},
              "c0": {"class_type": "SEGAConcept", "inputs": {**CONCEPTS[0], "clip": ["1", 1]}},
              "10": {"class_type": "TestCapture", "inputs": {"value": ["c0", 0], "key": key}}}
    assert session.run(prompt).ok
    [concept] = CAPTURED.pop(key)
    assert concept.pooled is not None and tuple(concept.pooled.shape) == (1, 48)
    [entry] = concept_conditions([concept])
    assert entry.options["pooled_output"] is concept.pooled

    row = _Row(torch.zeros(1, 77, 80), torch.zeros(1, 77, 80), torch.ones(1, 48),
               torch.zeros(1, 6))
    added = AddedConditioning([row], {"cond": 0, "uncond": 0})
    added.bind("extra:0", entry.embeds, concept.pooled)
    kwargs = added.kwargs(torch.cat([row.embeds, entry.embeds]), ["cond", "extra:0"])
    assert torch.equal(kwargs["text_embeds"][1:], concept.pooled)
    assert torch.equal(kwargs["text_embeds"][:1], row.text_embeds)
    with pytest.raises(ValueError, match="pooled output is 12 wide"):
        added.bind("extra:1", entry.embeds, torch.zeros(1, 12))
