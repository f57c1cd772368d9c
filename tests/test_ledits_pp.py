"""LEDITS++ through the graph (LEDITS++ Inversion → SEGA Concepts → Apply LEDITS++ →
KSamplerAdvanced) equals diffusers' ``LEditsPPPipelineStableDiffusion`` (``invert`` +
``__call__``), reconstructs without an edit, refuses bad input clearly, and runs with
ControlNet, LoRA and SAG in one sampler run.

Three ways in which the reference cannot be used as it is, and what the tests do:

- Its ``invert`` swaps the prompts: ``uncond_embedding, text_embeddings = encode_prompt(...)``
  unpacks ``(source prompt, empty prompt)``, so it guides *away* from the source prompt
  (ε(src) + s·(ε(∅) − ε(src))). Our node guides towards it; to compare, the graph wires
  the prompts the other way round (``pipeline_prompts``).
- With a DDIMScheduler its ``invert`` raises (``add_noise`` gets a float timestep tensor
  and DDIM indexes with it); the DDIM reference casts it (``_DDIM``).
- The tiny UNet has cross-attention only at the latent size, so the pipeline's
  cross-attention mask, fixed at 1/4 of the latent, finds no map and raises; ours reads the
  nearest resolution. The masks are compared on steerflow-shapes (maps at 1/4: exact
  pipeline behaviour), the noise mask on both models.

And the pipeline forces diffusers' classic ``AttnProcessor`` on every layer, where our UNet
keeps SDPA (same math, other rounding). On steerflow-shapes that stays at 2.5e-6; the tiny
model's random VAE multiplies latent rounding about 12x, to 1.2e-4, so there the reference
runs with SDPA too: then the images are equal, and 4.8e-5 apart with a source prompt (the
sampler batches [uncond, cond] where the pipeline makes two passes).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.pipelines.ledits_pp import pipeline_leditspp_stable_diffusion as ledits_module
from PIL import Image

from engine.session import Session, Workflow
from engine.validation import PromptValidationError
from nodes.diffusion.ledits_pp import LEditsPPGuidance, inversion_schedule
from tests.graph_nodes import CAPTURED, reference_pipeline, registry_with_capture, run_error

SOURCE = "a red circle at the top left on a white background"
CONCEPTS = [
    {"text": "a blue circle", "direction": "add", "scale": 6.0, "warmup_steps": 1,
     "cooldown_steps": 10000, "threshold": 0.8, "weight": 1.0},
    {"text": "red", "direction": "remove", "scale": 4.0, "warmup_steps": 0,
     "cooldown_steps": 5, "threshold": 0.7, "weight": 1.0},
]
N_INV, SKIP, SOURCE_SCALE, SEED = 8, 0.25, 3.5, 5
TOL = 1e-4
MASKS = {"intersect": (False, True), "cross": (True, False), "noise": (False, False)}


def picture(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / 63
    arr = np.stack([x, y, 1 - x * y], axis=-1)
    arr[(x - 0.3) ** 2 + (y - 0.35) ** 2 < 0.04] = (0.9, 0.1, 0.1)
    return (arr * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    # No models_dir: set-up installs steerflow-tiny, steerflow-shapes, its ControlNet and the
    # example LoRA, as for a user.
    home = tmp_path_factory.mktemp("ledits_home")
    (home / "input").mkdir()
    for w, h in ((64, 64), (96, 64)):
        Image.fromarray(picture(w, h)).save(home / "input" / f"picture_{w}x{h}.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(home / "input" / "small.png")
    return Session(home, device="cpu", registry=registry_with_capture())


_PIPES: dict[str, object] = {}


def reference(session: Session, ckpt: str):
    name = ckpt.removesuffix(".safetensors")
    if name not in _PIPES:
        folder = session.env.folder("models", "checkpoints", name)
        _PIPES[name] = reference_pipeline(ledits_module.LEditsPPPipelineStableDiffusion, folder)
    return _PIPES[name]


class _DDIM(DDIMScheduler):
    """DDIM whose add_noise takes the float timestep tensor the pipeline's invert passes."""

    def add_noise(self, original_samples, noise, timesteps):  # type: ignore[override]
        return super().add_noise(original_samples, noise, timesteps.long())


def ledits_prompt(ckpt: str = "steerflow-tiny", size: tuple[int, int] = (64, 64),
                  sampler: str = "dpmpp_2m_sde", mask: str = "intersect", source: bool = True,
                  pipeline_prompts: bool = True, concepts: list[dict] | None = None,
                  user_mask: str | None = None, edit_cfg: bool = False) -> dict:
    """The LEDITS++ graph; ``pipeline_prompts`` wires the source prompt as the pipeline's
    invert uses it (see the module docstring); ``edit_cfg`` samples the edit with the
    inversion's prompt and guidance (the pipeline samples it with the empty prompt)."""
    concepts = CONCEPTS if concepts is None else concepts
    cross, intersect = MASKS[mask]
    invert = {"model": ["1", 0], "latent": ["5", 0], "negative": ["2", 0],
              "num_inversion_steps": N_INV, "skip": SKIP,
              "source_guidance_scale": SOURCE_SCALE, "seed": SEED, "sampler_name": sampler,
              "scheduler": "ddim_uniform"}
    if source:
        invert["source_prompt"] = ["3", 0]
        if pipeline_prompts:
            invert["negative"], invert["source_prompt"] = ["3", 0], ["2", 0]
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": SOURCE, "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": f"picture_{size[0]}x{size[1]}.png"}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "LEditsPPInvert", "inputs": invert},
        "7": {"class_type": "ApplyLEditsPP", "inputs": {
            "model": ["1", 0], "inversion": ["6", 1], "concepts": [f"c{len(concepts) - 1}", 0],
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
    for i, concept in enumerate(concepts):
        inputs = {**concept, "clip": ["1", 1]}
        if i:
            inputs["previous"] = [f"c{i - 1}", 0]
        prompt[f"c{i}"] = {"class_type": "SEGAConcept", "inputs": inputs}
    if edit_cfg:
        prompt["8"]["inputs"].update(positive=["3", 0], cfg=["6", 4])
    if user_mask is not None:
        prompt["m"] = {"class_type": "LoadImageMask",
                       "inputs": {"image": user_mask, "channel": "red"}}
        prompt["7"]["inputs"]["user_mask"] = ["m", 0]
    return prompt


def run_graph(session: Session, prompt: dict, output: str = "10") -> np.ndarray:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt[output]["inputs"]["key"]).numpy()



def run_reference(session: Session, ckpt: str, size: tuple[int, int] = (64, 64),
                  sampler: str = "dpmpp_2m_sde", mask: str = "intersect", source: bool = True,
                  sdpa: bool = False, concepts: list[dict] | None = None) -> np.ndarray:
    concepts = CONCEPTS if concepts is None else concepts
    pipe = reference(session, ckpt)
    if sampler == "ddim":
        pipe.scheduler = _DDIM.from_config(pipe.base_config)
    else:
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.base_config, algorithm_type="sde-dpmsolver++", solver_order=2)
    image = Image.open(session.env.resolve("input", f"picture_{size[0]}x{size[1]}.png"))
    cross, intersect = MASKS[mask]
    processor = ledits_module.AttnProcessor
    if sdpa:  # the pipeline installs AttnProcessor() in invert; let it be the UNet's SDPA
        ledits_module.AttnProcessor = AttnProcessor2_0
    try:
        pipe.invert(image=image, source_prompt=SOURCE if source else "",
                    source_guidance_scale=SOURCE_SCALE, num_inversion_steps=N_INV, skip=SKIP,
                    generator=torch.Generator("cpu").manual_seed(SEED))
        return pipe(
            editing_prompt=[c["text"] for c in concepts],
            reverse_editing_direction=[c["direction"] == "remove" for c in concepts],
            edit_guidance_scale=[c["scale"] for c in concepts],
            edit_warmup_steps=[c["warmup_steps"] for c in concepts],
            edit_cooldown_steps=[c["cooldown_steps"] for c in concepts],
            edit_threshold=[c["threshold"] for c in concepts],
            use_cross_attn_mask=cross, use_intersect_mask=intersect, output_type="np").images
    finally:
        ledits_module.AttnProcessor = processor


@pytest.mark.parametrize(("ckpt", "size", "sampler", "mask", "source"), [
    ("steerflow-shapes", (64, 64), "dpmpp_2m_sde", "intersect", True),
    ("steerflow-shapes.safetensors", (64, 64), "dpmpp_2m_sde", "cross", True),
    ("steerflow-shapes", (96, 64), "ddim", "intersect", True),
    ("steerflow-shapes.safetensors", (96, 64), "dpmpp_2m_sde", "noise", False),
])
def test_matches_the_pipeline_with_its_masks(session, ckpt, size, sampler, mask, source):
    ours = run_graph(session, ledits_prompt(ckpt, size, sampler, mask, source))
    ref = run_reference(session, ckpt, size, sampler, mask, source)
    assert ours.shape == ref.shape == (1, size[1], size[0], 3)
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize(("ckpt", "size", "sampler"), [
    ("steerflow-tiny", (64, 64), "dpmpp_2m_sde"),
    ("steerflow-tiny.safetensors", (64, 64), "ddim"),
    ("steerflow-tiny", (96, 64), "ddim"),
    ("steerflow-tiny.safetensors", (96, 64), "dpmpp_2m_sde"),
])
def test_matches_the_pipeline_on_the_tiny_model(session, ckpt, size, sampler):
    ours = run_graph(session, ledits_prompt(ckpt, size, sampler, "noise", source=False))
    same_kernels = run_reference(session, ckpt, size, sampler, "noise", source=False, sdpa=True)
    assert np.abs(ours - same_kernels).max() <= TOL
    if sampler == "ddim":
        # the pipeline as it is: its classic attention's rounding, through the random VAE
        # (1.2e-4). With the SDE sampler the inversion divides by small σ differences, so
        # that rounding grows with the CPU's kernels (0.088 at 96x64 on one machine, under
        # 3e-4 on another): only the same-kernel parity above is the machine's own
        classic = run_reference(session, ckpt, size, sampler, "noise", False)
        assert np.abs(ours - classic).max() <= 3e-4


def test_tiny_model_with_a_source_prompt(session):
    ours = run_graph(session, ledits_prompt("steerflow-tiny", (96, 64), "ddim", "noise"))
    ref = run_reference(session, "steerflow-tiny", (96, 64), "ddim", "noise", sdpa=True)
    # one batched [uncond, cond] pass per step where the pipeline runs two (4.8e-5)
    assert np.abs(ours - ref).max() <= TOL


def test_cross_attention_mask_on_the_tiny_model(session):
    # The pipeline reads maps at 1/4 of the latent only, which the tiny UNet lacks.
    with pytest.raises(ValueError, match="non-empty"):
        run_reference(session, "steerflow-tiny", mask="intersect")
    masked = run_graph(session, ledits_prompt(mask="intersect"))
    noise_only = run_graph(session, ledits_prompt(mask="noise"))
    assert np.isfinite(masked).all() and np.abs(masked - noise_only).max() > 1e-3


def test_the_edit_acts_and_without_guidance_the_image_comes_back(session):
    # DDIM's noise maps land on the input exactly when the edit samples with the inversion's
    # prompt and guidance; DPM-Solver++'s last step has no noise and ends on the UNet's own
    # estimate (the pipeline's behaviour too).
    prompt = ledits_prompt("steerflow-shapes", sampler="ddim", pipeline_prompts=False,
                           edit_cfg=True)
    prompt["11"] = {"class_type": "TestCapture", "inputs": {"value": ["8", 0], "key": "e"}}
    prompt["12"] = {"class_type": "TestCapture", "inputs": {"value": ["5", 0], "key": "x0"}}
    edited = run_graph(session, prompt)
    x0 = CAPTURED.pop("x0").samples
    CAPTURED.pop("e")
    still = [{**c, "scale": 0.0} for c in CONCEPTS]
    prompt = ledits_prompt("steerflow-shapes", sampler="ddim", pipeline_prompts=False,
                           concepts=still, edit_cfg=True)
    prompt["11"] = {"class_type": "TestCapture", "inputs": {"value": ["8", 0], "key": "back"}}
    unedited = run_graph(session, prompt)
    back = CAPTURED.pop("back").samples
    # the inversion's noise maps lead back to the input latent, up to float rounding (the
    # edit's UNet batch is larger than the inversion's: other kernels; latents reach ±5)
    assert (back - x0).abs().max() <= 1e-3
    assert np.abs(edited - unedited).max() > 0.05


def edit_mask_prompt(**kwargs) -> dict:
    """The LEDITS++ graph with LEDITS++ Edit Mask and the paste-back onto the image; the
    mask is captured as ``"mask"`` and the pasted image as ``"pasted"``."""
    prompt = ledits_prompt("steerflow-shapes", pipeline_prompts=False, edit_cfg=True, **kwargs)
    prompt["em"] = {"class_type": "LEditsPPEditMask",
                   "inputs": {"samples": ["8", 0], "vae": ["1", 2]}}
    prompt["p"] = {"class_type": "ImageCompositeMasked", "inputs": {
        "destination": ["4", 0], "source": ["9", 0], "x": 0, "y": 0,
        "resize_source": False, "mask": ["em", 0]}}
    prompt["11"] = {"class_type": "TestCapture", "inputs": {"value": ["em", 0], "key": "mask"}}
    prompt["12"] = {"class_type": "TestCapture", "inputs": {"value": ["p", 0],
                                                            "key": "pasted"}}
    return prompt


def test_edit_mask_is_the_union_of_the_implicit_masks(session, monkeypatch):
    from nodes.diffusion import ledits_pp

    applied: list[torch.Tensor] = []
    quantile_mask = ledits_pp.quantile_mask

    def recording(values: torch.Tensor, threshold: float) -> torch.Tensor:
        applied.append(quantile_mask(values, threshold))
        return applied[-1]

    monkeypatch.setattr(ledits_pp, "quantile_mask", recording)
    edited = run_graph(session, edit_mask_prompt(mask="noise"))
    mask, pasted = CAPTURED.pop("mask"), CAPTURED.pop("pasted").numpy()
    # every step masked each active concept's strongest 20% / 30% of the 16x16 latent
    union = torch.stack(applied).any(dim=0)[0, 0].float()
    # 8 edit steps: concept 0 from step 1 (warm-up 1), concept 1 until step 5 (cool-down)
    assert len(applied) == 7 + 5
    assert mask.shape == (1, 64, 64)
    assert torch.equal(mask[0], union.repeat_interleave(4, 0).repeat_interleave(4, 1))
    assert 0.3 <= float(union.mean()) < 1.0
    # outside the mask the paste-back is the image itself, inside it the edit
    source = picture(64, 64).astype(np.float32) / 255
    inside = mask[0].numpy() > 0
    assert np.array_equal(pasted[0][~inside], source[~inside])
    assert np.array_equal(pasted[0][inside], edited[0][inside])


def test_edit_mask_of_an_edit_limited_to_nothing_is_empty(session):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(
        session.env.resolve("input", "nothing.png"))
    for mask in ("noise", "cross", "intersect"):
        run_graph(session, edit_mask_prompt(mask=mask, user_mask="nothing.png"))
        assert CAPTURED.pop("mask").abs().max() == 0, mask
        CAPTURED.pop("pasted")


def test_edit_mask_with_the_cross_attention_mask(session):
    run_graph(session, edit_mask_prompt(mask="intersect"))
    mask = CAPTURED.pop("mask")
    CAPTURED.pop("pasted")
    assert 0.0 < float(mask.mean()) < 1.0


def test_edit_mask_needs_a_latent_sampled_with_the_edit(session):
    prompt = edit_mask_prompt(mask="noise")
    prompt["em"]["inputs"]["samples"] = ["6", 0]  # the inversion's latent
    assert "Apply LEDITS++" in run_error(session, prompt)
    # a second sampler pass makes new samples: the first run's region does not go with them
    prompt = edit_mask_prompt(mask="noise")
    prompt["s"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 0, "steps": 4, "cfg": 1.0, "sampler_name": "euler",
        "scheduler": "normal", "positive": ["2", 0], "negative": ["2", 0],
        "latent_image": ["8", 0], "denoise": 0.5}}
    prompt["em"]["inputs"]["samples"] = ["s", 0]
    assert "did not come from such a run" in run_error(session, prompt)


def test_inversion_schedule_is_the_pipelines():
    assert inversion_schedule(30, 0.15) == (34, 4)  # int(30 * 1.15) = 34
    assert inversion_schedule(50, 0.0) == (50, 0)


# --- bad input -----------------------------------------------------------------------------

def test_no_concepts_is_an_error(session):
    with pytest.raises(ValueError, match="at least one edit concept"):
        LEditsPPGuidance([], inversion=None)  # type: ignore[arg-type]
    prompt = ledits_prompt()
    del prompt["7"]["inputs"]["concepts"]
    with pytest.raises(PromptValidationError) as err:
        session.run(prompt)
    assert "concepts" in str(err.value)


def test_user_mask_of_another_size_is_stretched_with_a_warning(session):
    """Neither the image's nor the latent's size: stretched, as other mask inputs, and
    said on Apply LEDITS++ (the all-black 20x20 mask then keeps the edit out)."""
    prompt = ledits_prompt(mask="noise", user_mask="small.png")
    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    stretched = CAPTURED.pop(prompt["10"]["inputs"]["key"]).numpy()
    warnings = [d for name, d in result.events if name == "node_warning"]
    assert [(w["node"], "stretched" in w["message"]) for w in warnings] == [("7", True)]
    still = run_graph(session, ledits_prompt(
        mask="noise", concepts=[{**c, "scale": 0.0} for c in CONCEPTS]))
    assert np.abs(stretched - still).max() <= 1e-5


def test_user_mask_limits_the_edit(session):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(
        session.env.resolve("input", "nothing.png"))
    nowhere = run_graph(session, ledits_prompt(mask="noise", user_mask="nothing.png"))
    still = run_graph(session, ledits_prompt(
        mask="noise", concepts=[{**c, "scale": 0.0} for c in CONCEPTS]))
    assert np.abs(nowhere - still).max() <= 1e-5


@pytest.mark.parametrize(("change", "expected"), [
    ({"steps": 20}, "steps 10, start_at_step 2"),
    ({"start_at_step": 0}, "start_at_step 2"),
    ({"sampler_name": "ddim"}, "sampler_name dpmpp_2m_sde"),
    ({"scheduler": "karras"}, "scheduler ddim_uniform"),
    ({"add_noise": "enable"}, "add_noise disable"),
])
def test_sampling_other_than_the_inversion_is_an_error(session, change, expected):
    prompt = ledits_prompt()
    prompt["8"]["inputs"].update(change)
    assert inversion_schedule(N_INV, SKIP) == (10, 2)
    message = run_error(session, prompt)
    assert "KSamplerAdvanced" in message and expected in message


def test_plain_ksampler_is_an_error_naming_the_settings(session):
    prompt = ledits_prompt()
    prompt["8"] = {"class_type": "KSampler", "inputs": {
        "model": ["7", 0], "seed": 0, "steps": N_INV, "cfg": 1.0,
        "sampler_name": "dpmpp_2m_sde", "scheduler": "ddim_uniform", "positive": ["2", 0],
        "negative": ["2", 0], "latent_image": ["6", 0]}}
    assert "KSamplerAdvanced" in run_error(session, prompt)


def test_another_latent_is_an_error(session):
    prompt = ledits_prompt()
    prompt["e"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 96, "height": 64}}
    prompt["8"]["inputs"]["latent_image"] = ["e", 0]
    assert "noise maps are (1, 4, 8, 8)" in run_error(session, prompt)


def test_inverting_with_the_edited_model_is_an_error(session):
    prompt = ledits_prompt()
    prompt["0"] = {"class_type": "ApplyLEditsPP", "inputs": {
        "model": ["1", 0], "inversion": ["x", 1], "concepts": ["c1", 0]}}
    prompt["x"] = {**prompt["6"], "inputs": {**prompt["6"]["inputs"]}}
    prompt["6"]["inputs"]["model"] = ["0", 0]
    assert "without Apply LEDITS++" in run_error(session, prompt)


def test_inversion_validation(session):
    prompt = ledits_prompt(sampler="ddim")
    prompt["6"]["inputs"]["scheduler"] = "karras"
    with pytest.raises(PromptValidationError, match="karras"):
        session.run(prompt)
    prompt = ledits_prompt()
    prompt["6"]["inputs"]["sampler_name"] = "euler"
    with pytest.raises(PromptValidationError, match="sampler_name"):
        session.run(prompt)


# --- with other techniques in one run ------------------------------------------------------

def combined_prompt(drop: str | None = None) -> dict:
    """LEDITS++ on steerflow-shapes with its ControlNet, the night LoRA and SAG."""
    prompt = ledits_prompt("steerflow-shapes", pipeline_prompts=False)
    prompt["11"] = {"class_type": "TestCapture", "inputs": {"value": ["8", 0],
                                                            "key": uuid.uuid4().hex}}
    model, clip = ["1", 0], ["1", 1]
    if drop != "lora":
        prompt["l"] = {"class_type": "LoraLoader", "inputs": {
            "model": model, "clip": clip, "lora_name": "steerflow-shapes-night.safetensors",
            "strength_model": 0.8, "strength_clip": 0.8}}
        model, clip = ["l", 0], ["l", 1]
    for node in ("2", "3", *(k for k in prompt if k.startswith("c"))):
        prompt[node]["inputs"]["clip"] = clip
    prompt["6"]["inputs"]["model"] = model
    edit_model = model
    if drop != "ledits":
        prompt["7"]["inputs"]["model"] = model
        edit_model = ["7", 0]
    if drop != "sag":
        prompt["s"] = {"class_type": "SelfAttentionGuidance",
                       "inputs": {"model": edit_model, "scale": 0.75, "blur_sigma": 1.0}}
        edit_model = ["s", 0]
    prompt["8"]["inputs"]["model"] = edit_model
    if drop != "controlnet":
        prompt["h"] = {"class_type": "LoadImage", "inputs": {"image": "controlnet_control.png"}}
        prompt["n"] = {"class_type": "ControlNetLoader",
                       "inputs": {"control_net_name": "steerflow-shapes-controlnet"}}
        prompt["a"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["2", 0], "negative": ["2", 0], "control_net": ["n", 0],
            "image": ["h", 0], "strength": 1.0}}
        prompt["8"]["inputs"]["positive"], prompt["8"]["inputs"]["negative"] = ["a", 0], ["a", 1]
    return prompt


def test_combines_with_controlnet_lora_and_sag(session):
    def latent(drop: str | None = None) -> torch.Tensor:
        prompt = combined_prompt(drop)
        run_graph(session, prompt)
        return CAPTURED.pop(prompt["11"]["inputs"]["key"]).samples

    everything = latent()
    assert torch.isfinite(everything).all()
    for drop in ("ledits", "controlnet", "lora", "sag"):
        assert (everything - latent(drop)).abs().max() > 1e-3, drop


def test_example_workflow_runs(session):
    wf = Workflow.load(Path("workflows/ledits_pp.json"))
    wf.set("LEDITS++ Inversion.num_inversion_steps", 6)
    result = session.run(wf)
    assert result.ok, result.run.error
    saved = [p for p in result.image_paths if p.parent.name == "output"]
    assert len(saved) == 1 and len(result.image_paths) == 2  # the edit and its mask


@pytest.mark.parametrize(("patch", "node"), [
    ({"class_type": "SelfAttentionGuidance", "inputs": {"scale": 0.5, "blur_sigma": 2.0}},
     {"class_type": "LEditsPPInvert", "inputs": {"num_inversion_steps": 2}}),
    ({"class_type": "SelfAttentionGuidance", "inputs": {"scale": 0.5, "blur_sigma": 2.0}},
     {"class_type": "DDIMInvert", "inputs": {"steps": 2}}),
])
def test_an_inversion_after_a_sampler_patch_says_so(session, patch, node):
    """An inversion steps with its own stepper: a patch that reads the sampler's schedule
    failed inside it with an AttributeError (the fuzz drill); it is said in words."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "2": {**patch, "inputs": {**patch["inputs"], "model": ["1", 0]}},
        "3": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
    }
    inputs = {**node["inputs"], "model": ["2", 0], "latent": ["3", 0]}
    if node["class_type"] == "LEditsPPInvert":
        inputs["negative"] = ["4", 0]
    else:
        inputs.update(positive=["4", 0], negative=["4", 0])
    prompt["5"] = {"class_type": node["class_type"], "inputs": inputs}
    prompt["6"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}}
    message = run_error(session, prompt)
    assert "Inversion cannot run with" in message and "on its model" in message
