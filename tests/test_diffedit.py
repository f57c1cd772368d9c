"""DiffEdit through the graph equals diffusers' StableDiffusionDiffEditPipeline: the mask
(``generate_mask``), the inversion (``invert``) and the masked decoding (``__call__``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.stable_diffusion_diffedit.pipeline_stable_diffusion_diffedit import (  # noqa: E501
    StableDiffusionDiffEditPipeline,
)
from PIL import Image

from engine.session import Session, Workflow
from engine.validation import PromptValidationError
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

SOURCE = "a red circle at the top left on a white background"
TARGET = "a blue circle at the top left on a white background"
TOL = 1e-4
WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "diffedit.json"


def picture(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / 63
    arr = np.stack([x, y, 1 - x * y], axis=-1) / max(1.0, width / 64)
    arr[(x - 0.3) ** 2 + (y - 0.35) ** 2 < 0.04] = (0.9, 0.1, 0.1)
    return (arr.clip(0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("diffedit")
    (home / "input").mkdir()
    for width, height in ((64, 64), (96, 64)):
        Image.fromarray(picture(width, height)).save(home / "input" / f"pic{width}x{height}.png")
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def pipe(tiny_model_paths):
    from nodes.diffusion.loading import load_components

    c = load_components(tiny_model_paths["diffusers"])
    pipe = StableDiffusionDiffEditPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
        scheduler=diffusers.DDIMScheduler.from_config(c.scheduler_config),
        inverse_scheduler=diffusers.DDIMInverseScheduler.from_config(c.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffedit_prompt(*, ckpt="steerflow-tiny", size=(64, 64), steps=50, strength=0.8,
                    invert_cfg=7.5, cfg=7.5, ratio=3.0, seed=5, alignment="diffusers",
                    sampler="ddim", target=TARGET, mask_cfg=7.5, **mask_inputs) -> dict:
    """DiffEdit as the docs chain it: mask, inversion with the source prompt, decoding
    with the target prompt against the source. ``cap_*`` nodes capture the stages."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "src": {"class_type": "CLIPTextEncode", "inputs": {"text": SOURCE, "clip": ["1", 1]}},
        "tgt": {"class_type": "CLIPTextEncode", "inputs": {"text": target, "clip": ["1", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": f"pic{size[0]}x{size[1]}.png"}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["1", 2]}},
        "mask": {"class_type": "DiffEditMask", "inputs": {
            "model": ["1", 0], "vae": ["1", 2], "image": ["img", 0], "source": ["src", 0],
            "target": ["tgt", 0], "negative": ["neg", 0], "seed": seed, "cfg": mask_cfg,
            "mask_thresholding_ratio": ratio, **mask_inputs}},
        "inv": {"class_type": "DDIMInvert", "inputs": {
            "model": ["1", 0], "positive": ["src", 0], "negative": ["neg", 0],
            "latent": ["enc", 0], "steps": steps, "cfg": invert_cfg, "denoise": strength}},
        "lat": {"class_type": "DiffEditLatent", "inputs": {
            "trajectory": ["inv", 1], "mask": ["mask", 0], "alignment": alignment}},
        "ks": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["1", 0], "add_noise": "disable", "noise_seed": 0, "steps": ["lat", 1],
            "cfg": cfg, "sampler_name": sampler, "scheduler": "normal", "positive": ["tgt", 0],
            "negative": ["src", 0], "latent_image": ["lat", 0], "start_at_step": ["lat", 2],
            "end_at_step": 10000, "return_with_leftover_noise": "disable"}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["1", 2]}},
    }
    for node, output in (("img", 0), ("enc", 0), ("mask", 0), ("inv", 1), ("ks", 0),
                         ("dec", 0)):
        prompt[f"cap_{node}"] = {"class_type": "TestCapture",
                                 "inputs": {"value": [node, output], "key": uuid.uuid4().hex}}
    return prompt


def run(session, prompt) -> dict:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return {node[4:]: CAPTURED.pop(spec["inputs"]["key"]) for node, spec in prompt.items()
            if spec["class_type"] == "TestCapture"}



def latent_mask(mask: torch.Tensor, factor: int = 8) -> torch.Tensor:
    return mask[:, ::factor, ::factor]


# --- parity with diffusers ---------------------------------------------------------------


# The tiny random model's noise predictions differ almost uniformly, so the default ratio
# 3 masks 0-2% of the latent: ratio 2 (above the mean difference) masks about half.
@pytest.mark.parametrize(("ckpt", "size", "ratio"), [
    ("steerflow-tiny", (64, 64), 3.0),
    ("steerflow-tiny", (64, 64), 2.0),
    ("steerflow-tiny.safetensors", (64, 64), 2.0),
    ("steerflow-tiny", (96, 64), 2.0),  # non-square: 12x8 latents
])
def test_matches_diffedit_pipeline(session, pipe, ckpt, size, ratio):
    """Pipeline defaults (50 steps, inpaint_strength 0.8, guidance 7.5, empty negatives),
    the docs' chain: invert with the source prompt, decode with the target against it."""
    out = run(session, diffedit_prompt(ckpt=ckpt, size=size, ratio=ratio))
    pixels = out["img"].permute(0, 3, 1, 2)
    ref_mask = pipe.generate_mask(image=pixels, source_prompt=SOURCE, target_prompt=TARGET,
                                  mask_thresholding_ratio=ratio,
                                  generator=torch.Generator("cpu").manual_seed(5))
    ours = latent_mask(out["mask"]).numpy()
    assert ours.shape == ref_mask.shape == (1, size[1] // 8, size[0] // 8)
    assert out["mask"].shape == (1, size[1], size[0])
    assert np.array_equal(ours, ref_mask)
    assert ref_mask.mean() < 0.1 if ratio == 3.0 else 0.1 < ref_mask.mean() < 0.9
    # invert: the pipeline encodes with a posterior sample; given our latent it passes it on
    clean = out["enc"].samples
    ref_inv = pipe.invert(prompt=SOURCE, image=clean).latents
    inv = out["inv"].latents[1:].flip(0).transpose(0, 1)  # noisiest first, as the pipeline
    assert inv.shape == ref_inv.shape == (1, 40, 4, size[1] // 8, size[0] // 8)
    inv_diff = float((inv - ref_inv).abs().max())
    ref = pipe(prompt=TARGET, mask_image=torch.from_numpy(ref_mask), image_latents=ref_inv,
               negative_prompt=SOURCE, output_type="np").images
    diff = float(np.abs(out["dec"].numpy() - ref).max())
    print(f"{ckpt} {size}: mask equal ({ref_mask.mean():.0%}), inversion max abs diff "
          f"{inv_diff:.1e}, edit max abs pixel diff {diff:.1e}")
    assert inv_diff <= TOL and diff <= TOL
    # the mask acts: the same decoding from the inverted latent without it differs
    plain = diffedit_prompt(ckpt=ckpt, size=size, ratio=ratio)
    plain["lat"] = {"class_type": "LatentFromTrajectory",
                    "inputs": {"trajectory": ["inv", 1], "start_at_step": 10}}
    plain["ks"]["inputs"].update(steps=50, start_at_step=10)
    assert np.abs(run(session, plain)["dec"].numpy() - ref).max() > 1e-3


def test_mask_without_cfg(session, pipe):
    """cfg 1: no guidance, no negative. The pipeline cannot run it (its ``generate_mask``
    unpacks ``encode_prompt``'s (positive, negative) as (negative, positive): with CFG it
    guides away from each prompt, which scales the difference by (cfg - 1) / cfg and leaves
    the normalised mask as ours; without CFG the "positive" is None)."""
    with pytest.raises(TypeError):
        pipe.generate_mask(image=torch.rand(1, 3, 64, 64), source_prompt=SOURCE,
                           target_prompt=TARGET, guidance_scale=1.0, num_maps_per_mask=1)
    prompt = diffedit_prompt(mask_cfg=1.0, ratio=2.0, num_maps_per_mask=3,
                             mask_encode_strength=0.7, steps=4)
    del prompt["mask"]["inputs"]["negative"]
    mask = latent_mask(run(session, prompt)["mask"])
    assert 0.1 < float(mask.mean()) < 0.9 and set(mask.unique().tolist()) == {0.0, 1.0}


# --- the blend ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_kept_region_follows_the_trajectory(session, sampler):
    """Outside the mask the result is the trajectory's latent: with the diffusers alignment
    the one after the first inversion step, with noise_level the clean input itself."""
    for alignment, index in (("diffusers", 1), ("noise_level", 0)):
        out = run(session, diffedit_prompt(steps=10, ratio=2.0, alignment=alignment,
                                           sampler=sampler))
        keep = (1 - latent_mask(out["mask"]))[:, None]
        assert 0 < keep.mean() < 1
        kept = out["inv"].latents[index]
        diff = float(((out["ks"].samples - kept) * keep).abs().max())
        assert diff <= (0 if sampler == "ddim" else 1e-5), (alignment, diff)
        assert float(((out["ks"].samples - kept) * (1 - keep)).abs().max()) > 1e-3


def test_a_grown_mask_and_a_second_noise_mask_keep_the_trajectory(session):
    """DiffEdit Latent takes any MASK; Set Latent Noise Mask after it changes the mask but
    keeps the trajectory as what the unmasked region takes."""
    prompt = diffedit_prompt(steps=10, ratio=2.0, alignment="noise_level")
    prompt["grow"] = {"class_type": "GrowMask", "inputs": {"mask": ["mask", 0], "expand": 8,
                                                          "tapered_corners": False}}
    prompt["lat"]["inputs"]["mask"] = ["grow", 0]
    prompt["none"] = {"class_type": "LoadImage", "inputs": {"image": "pic64x64.png"}}
    prompt["set"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["lat", 0],
                                                                   "mask": ["none", 1]}}
    prompt["ks"]["inputs"]["latent_image"] = ["set", 0]
    out = run(session, prompt)
    assert torch.equal(out["ks"].samples, out["inv"].latents[0])  # nothing repainted


def test_two_stages_equal_one_run(session):
    """A window handed on with leftover noise keeps the mask and the trajectory: two
    Sample (Advanced) stages give the single run's latent."""
    one = run(session, diffedit_prompt(steps=10, ratio=2.0))["ks"].samples
    prompt = diffedit_prompt(steps=10, ratio=2.0)
    prompt["ks"]["inputs"].update(end_at_step=5, return_with_leftover_noise="enable")
    prompt["ks2"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **prompt["ks"]["inputs"], "latent_image": ["ks", 0], "start_at_step": 5,
        "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    prompt["cap_ks2"] = {"class_type": "TestCapture",
                         "inputs": {"value": ["ks2", 0], "key": uuid.uuid4().hex}}
    two = run(session, prompt)["ks2"].samples
    assert float((one - two).abs().max()) <= TOL


def test_each_image_of_a_batch_gets_its_own_mask(tiny_model_paths):
    from nodes.diffusion.diffedit import diffedit_mask
    from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel, Vae
    from nodes.diffusion.loading import load_components

    c = load_components(tiny_model_paths["diffusers"])
    model = DiffusionModel(c.unet, dict(c.scheduler_config))
    conds = [Conditioning((CondEntry(torch.randn(1, 77, 32, generator=torch.Generator()
                                                 .manual_seed(k))),)) for k in range(3)]
    bright = torch.from_numpy(picture(64, 64)).float()[None] / 255
    images = torch.cat([bright, bright * 0.2])  # thresholded each on its own mean
    result = diffedit_mask(model, Vae(c.vae), images, *conds, seed=0,
                           mask_thresholding_ratio=2.0, num_maps_per_mask=2)
    assert result.mask.shape == (2, 8, 8) and result.empty == ()
    assert all(0.1 < float(m.mean()) < 0.9 for m in result.mask)


# --- bad input ---------------------------------------------------------------------------


def test_identical_prompts_give_an_empty_mask_and_say_so(session):
    prompt = diffedit_prompt(steps=6, target=SOURCE, alignment="noise_level")
    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    out = {node[4:]: CAPTURED.pop(spec["inputs"]["key"]) for node, spec in prompt.items()
           if spec["class_type"] == "TestCapture"}
    assert not out["mask"].any()
    (text,) = next(data["output"]["text"] for event, data in result.events
                   if event == "executed" and data["node"] == "mask")
    assert "empty" in text and "identical" in text
    assert any(event == "node_warning" and data["node"] == "mask" and "empty" in
               data["message"] for event, data in result.events)
    assert torch.equal(out["ks"].samples, out["inv"].latents[0])  # the image, unchanged


def test_guidance_without_a_negative_is_a_clear_error(session):
    prompt = diffedit_prompt(steps=6)
    del prompt["mask"]["inputs"]["negative"]
    assert "cfg > 1 needs a negative conditioning" in run_error(session, prompt)


def test_a_mask_of_the_wrong_size_is_a_clear_error(session):
    prompt = diffedit_prompt(steps=6)
    prompt["other"] = {"class_type": "LoadImage", "inputs": {"image": "pic96x64.png"}}
    prompt["lat"]["inputs"]["mask"] = ["other", 1]  # an empty MASK of that image's size
    message = run_error(session, prompt)
    assert "the mask is 96x64 but the latent is 8x8" in message


@pytest.mark.parametrize(("change", "expected"), [
    ({"steps": 12}, "inverted over a 6-step schedule but the sampler runs 12 steps"),
    ({"add_noise": "enable"}, "add_noise disable, start_at_step 2"),
    ({"start_at_step": 1}, "covers start_at_step 2..6 of a 6-step schedule"),
    ({"sampler_name": "heun"}, "more than once per step"),
    ({"end_at_step": 4}, "cannot stop early without leftover noise"),
])
def test_sampler_settings_that_do_not_fit_the_trajectory(session, change, expected):
    prompt = diffedit_prompt(steps=6)
    prompt["ks"]["inputs"].update(change)
    assert expected in run_error(session, prompt)


def test_ksampler_is_told_to_use_the_advanced_sampler(session):
    prompt = diffedit_prompt(steps=6)
    prompt["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 0, "steps": 6, "cfg": 7.5, "sampler_name": "ddim",
        "scheduler": "normal", "positive": ["tgt", 0], "negative": ["src", 0],
        "latent_image": ["lat", 0], "denoise": 1.0}}
    assert "Sample (Advanced), add_noise disable" in run_error(session, prompt)


def test_bad_constants_are_validation_errors(session):
    def issues(prompt):
        with pytest.raises(PromptValidationError) as info:
            session.validate(prompt)
        return [(i.input_name, i.message) for i in info.value.issues if i.severity == "error"]

    (issue,) = issues(diffedit_prompt(steps=6, mask_encode_strength=0.01))
    assert issue[0] == "mask_encode_strength" and "no step of 50" in issue[1]
    assert [n for n, _ in issues(diffedit_prompt(ratio=0.0))] == ["mask_thresholding_ratio"]
    assert [n for n, _ in issues(diffedit_prompt(alignment="x"))] == ["alignment"]


def test_an_inpainting_unet_is_a_clear_error(tiny_model_paths):
    from dataclasses import replace

    from diffusers import UNet2DConditionModel

    from nodes.diffusion.diffedit import diffedit_mask
    from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel, Vae
    from nodes.diffusion.loading import load_components
    from nodes.diffusion.tiny import UNET_CONFIG

    c = load_components(tiny_model_paths["diffusers"])
    model = DiffusionModel(UNet2DConditionModel(**{**UNET_CONFIG, "in_channels": 9}),
                           dict(c.scheduler_config))
    cond = Conditioning((CondEntry(torch.zeros(1, 77, 32)),))
    with pytest.raises(ValueError, match="plain \\(not an inpainting\\) model"):
        diffedit_mask(model, Vae(c.vae), torch.rand(1, 64, 64, 3), cond,
                      replace(cond), cond, seed=0)


# --- with other techniques -----------------------------------------------------------------


def test_combines_with_sag_and_sega_in_one_run(session):
    """SAG (on the MODEL) and SEGA act inside DiffEdit's mask in the same sampler run:
    removing any one of the three changes the result; outside the mask it stays the input."""
    def result(diffedit=True, sag=True, sega=True):
        prompt = diffedit_prompt(steps=10, ratio=2.0, alignment="noise_level")
        model = ["1", 0]
        if sag:
            prompt["sag"] = {"class_type": "SelfAttentionGuidance",
                             "inputs": {"model": model, "scale": 0.75, "blur_sigma": 1.0}}
            model = ["sag", 0]
        if sega:
            prompt["c0"] = {"class_type": "SEGAConcept", "inputs": {
                "clip": ["1", 1], "text": "a green square", "scale": 6.0, "warmup_steps": 1}}
            prompt["sega"] = {"class_type": "ApplySEGA", "inputs": {"model": model,
                                                                   "concepts": ["c0", 0]}}
            model = ["sega", 0]
        prompt["ks"]["inputs"]["model"] = model
        if not diffedit:
            prompt["lat"] = {"class_type": "LatentFromTrajectory",
                             "inputs": {"trajectory": ["inv", 1], "start_at_step": 2}}
            prompt["ks"]["inputs"]["start_at_step"] = 2
            prompt["ks"]["inputs"]["steps"] = 10
        return run(session, prompt)

    every = result()
    keep = (1 - latent_mask(every["mask"]))[:, None]
    for variant in (result(sag=False), result(sega=False), result(diffedit=False)):
        assert float((every["ks"].samples - variant["ks"].samples).abs().max()) > 1e-3
    clean = every["inv"].latents[0]
    assert torch.equal(every["ks"].samples * keep, clean * keep)


# --- workflow --------------------------------------------------------------------------------


def test_workflow_runs(tmp_path):
    wf = Workflow.load(WORKFLOW)
    types = {n["class_type"] for n in wf.prompt.values()}
    assert {"DiffEditMask", "DDIMInvert", "DiffEditLatent", "KSamplerAdvanced"} <= types
    for node in wf.prompt.values():
        if node["class_type"] in ("KSampler", "DDIMInvert"):
            node["inputs"]["steps"] = 4
        if node["class_type"] == "DiffEditMask":
            node["inputs"]["num_maps_per_mask"] = 2
    session = Session(tmp_path, device="cpu")
    session.validate(wf)
    result = session.run(wf)
    assert result.ok, result.run.error
    assert result.image_paths
