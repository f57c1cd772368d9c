"""FreeU, FreeU_V2 and RescaleCFG: parity with diffusers, the UNet restored after every
run (also a failed one), FreeU v2's formula against a hand-written reference, and the
three combined with each other and with PAG / SAG."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch

from engine.validation import PromptValidationError
from nodes.diffusion.freeu import FreeU, freeu_blocks
from nodes.diffusion.rescale_cfg import RescaleCFG, rescale_guided
from tests import test_pag
from tests.graph_nodes import CAPTURED
from tests.hook_count import added_hooks
from tests.test_pag import pag_pipe, pag_prompt  # noqa: F401 - pag_pipe is a fixture
from tests.test_txt2img import (  # noqa: F401 - reference_pipe is a fixture
    NEGATIVE,
    PROMPT,
    graph_image,
    reference_pipe,
    txt2img_prompt,
)

FREEU = {"b1": 1.5, "b2": 1.6, "s1": 0.9, "s2": 0.2}  # the FreeU authors' SD 1.x values


def patched_prompt(patches: list[tuple[str, dict]], *, sampler="ddim", width=64, height=64,
                   cfg=7.5, seed=7, steps=6) -> dict:
    """txt2img on the tiny model with ``patches`` (node type, inputs) chained on the MODEL."""
    prompt = txt2img_prompt("steerflow-tiny", sampler, seed=seed, steps=steps, cfg=cfg)
    prompt["5"]["inputs"].update(width=width, height=height)
    model = ["4", 0]
    for n, (node_type, inputs) in enumerate(patches):
        prompt[f"p{n}"] = {"class_type": node_type, "inputs": {"model": model, **inputs}}
        model = [f"p{n}", 0]
    prompt["3"]["inputs"]["model"] = model
    return prompt


def pipeline_image(pipe, *, sampler="ddim", width=64, height=64, cfg=7.5, seed=7, steps=6,
                   **kwargs) -> np.ndarray:
    import diffusers

    from nodes.diffusion.schedulers import SAMPLERS, SCHEDULES

    class_name, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(
        pipe.base_scheduler_config, **extra, **SCHEDULES["normal"])
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,
                guidance_scale=cfg, height=height, width=width, output_type="np",
                generator=torch.Generator("cpu").manual_seed(seed), **kwargs).images


def no_hooks(unet) -> bool:
    return added_hooks(unet) == 0


# ----------------------------------------------------------------------------- FreeU v1

@pytest.mark.parametrize(("sampler", "width", "height"), [
    ("ddim", 64, 64), ("euler", 64, 40), ("dpmpp_2m", 48, 64)])
def test_freeu_matches_diffusers_enable_freeu(session, reference_pipe,  # noqa: F811
                                              sampler, width, height):
    ours = graph_image(session, patched_prompt([("FreeU", FREEU)], sampler=sampler,
                                               width=width, height=height))
    reference_pipe.unet.enable_freeu(**FREEU)
    try:
        ref = pipeline_image(reference_pipe, sampler=sampler, width=width, height=height)
    finally:
        reference_pipe.unet.disable_freeu()
    plain = pipeline_image(reference_pipe, sampler=sampler, width=width, height=height)
    assert ours.shape == ref.shape == (1, height, width, 3)
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(ours - plain).max() > 1e-2  # FreeU does change the image
    # the UNet is plain again: the same graph without FreeU gives the plain image
    after = graph_image(session, patched_prompt([], sampler=sampler, width=width,
                                                height=height))
    assert np.abs(after - plain).max() <= 1e-4


def test_freeu_with_a_zero_factor_still_acts(session):
    """diffusers turns FreeU off when any factor is 0 (a truth test); ComfyUI allows 0
    and so do we: s2 = 0 removes the skip's lowest frequencies."""
    plain = graph_image(session, patched_prompt([]))
    zero = graph_image(session, patched_prompt([("FreeU", {**FREEU, "s2": 0.0})]))
    low = graph_image(session, patched_prompt([("FreeU", {**FREEU, "s2": 0.01})]))
    assert np.abs(zero - plain).max() > 1e-2
    assert np.abs(zero - low).max() < np.abs(zero - plain).max()


# ------------------------------------------------------------------ direct sampler runs

@pytest.fixture(scope="module")
def parts(session):
    """MODEL, positive and negative CONDITIONING and a 64x40 LATENT of the tiny model."""
    key = uuid.uuid4().hex
    prompt = patched_prompt([], width=64, height=40)
    for node in ("4", "6", "7", "5"):
        prompt[f"c{node}"] = {"class_type": "TestCapture",
                              "inputs": {"value": [node, 0], "key": key + node}}
    for node in ("10", "9", "8", "3"):
        del prompt[node]
    assert session.run(prompt).ok
    return [CAPTURED.pop(key + n) for n in "4675"]


def sample_with(parts, *extensions, cfg=7.5):
    from nodes.diffusion.sampling import SamplingParams, sample
    from nodes.diffusion.schedulers import make_scheduler

    model, pos, neg, latent = parts
    for ext in extensions:
        model = model.with_extension(ext)
    scheduler = make_scheduler("ddim", "normal", model.scheduler_config)
    return sample(model, scheduler, pos, neg, latent, SamplingParams(seed=1, steps=3, cfg=cfg))


def test_hooks_exist_during_the_run_only_also_when_it_fails(parts):
    from nodes.diffusion.extensions import SamplerExtension

    unet = parts[0].unet
    plain = sample_with(parts)
    seen: list[int] = []

    class Spy(SamplerExtension):
        def unet_inputs(self, run, step, call):
            seen.append(added_hooks(unet))

    class FailsInStep(SamplerExtension):
        def guidance(self, run, step, preds, guidance):
            raise RuntimeError("boom in a step")

    class FailsInSetup(SamplerExtension):
        priority = 500  # after FreeU's setup

        def setup(self, run):
            raise ValueError("boom in setup")

    v1, v2 = FreeU(**FREEU), FreeU(**FREEU, adaptive=True)
    sample_with(parts, v1, v2, Spy())
    # per FreeU: a hook on each of the two up blocks and on each of their ResNets
    resnets = sum(len(block.resnets) for _, block in freeu_blocks(unet))
    assert seen == [2 * (2 + resnets)] * 3
    assert no_hooks(unet)
    with pytest.raises(RuntimeError, match="boom in a step"):
        sample_with(parts, v1, v2, FailsInStep())
    assert no_hooks(unet)
    with pytest.raises(ValueError, match="boom in setup"):
        sample_with(parts, v1, v2, FailsInSetup())
    assert no_hooks(unet)
    assert torch.equal(sample_with(parts), plain)


def test_freeu_v2_at_one_is_the_plain_model(parts):
    plain = sample_with(parts)
    assert torch.equal(sample_with(parts, FreeU(1.0, 1.0, 1.0, 1.0, adaptive=True)), plain)
    assert torch.equal(sample_with(parts, FreeU(1.0, 1.0, 1.0, 1.0)), plain)
    assert not torch.equal(sample_with(parts, FreeU(1.3, 1.4, 1.0, 1.0, adaptive=True)), plain)


def _reference_fourier(x: torch.Tensor, scale: float) -> torch.Tensor:
    """FreeU's filter written out: the centre 2x2 of the shifted spectrum × scale."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1))
    h, w = x.shape[-2:]
    mask = torch.ones(h, w)
    mask[h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1] = scale
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))).real.to(x.dtype)


def _reference_v2(h: torch.Tensor, b: float) -> torch.Tensor:
    """ComfyUI's FreeU_V2 backbone scaling, written out per image."""
    out = h.clone()
    half = h.shape[1] // 2
    for i in range(h.shape[0]):
        mean = h[i].mean(0)
        m = (mean - mean.min()) / (mean.max() - mean.min())
        out[i, :half] = h[i, :half] * (1 + (b - 1) * m)
    return out


@pytest.mark.parametrize("stage", [0, 1])
def test_freeu_v2_matches_a_hand_written_reference_on_an_up_block(parts, stage):
    """One up block on the inputs a real UNet pass gives it: with FreeU_V2's hooks vs the
    block's loop written out with the v2 formula (ResNet, attention, upsampler)."""
    unet = parts[0].unet
    block = dict(freeu_blocks(unet))[stage]
    captured = {}
    handle = block.register_forward_pre_hook(
        lambda m, a, kw: captured.update(kw), with_kwargs=True)
    try:
        with torch.no_grad():
            latents = parts[3].samples
            unet(torch.randn(2, latents.shape[1], 5, 8, generator=torch.Generator().manual_seed(0)),
                 torch.tensor(500), encoder_hidden_states=parts[1].embeds.repeat(2, 1, 1))
    finally:
        handle.remove()
    b, s = (1.3, 0.9) if stage == 0 else (1.4, 0.2)
    ext = FreeU(1.3, 1.4, 0.9, 0.2, adaptive=True)
    handles: list = []
    try:
        ext.install(unet, handles)
        with torch.no_grad():
            ours = block(**captured)
    finally:
        for h in handles:
            h.remove()
    assert no_hooks(unet)
    with torch.no_grad():
        h = captured["hidden_states"]
        skips = captured["res_hidden_states_tuple"]
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attn in zip(block.resnets, attentions, strict=True):
            skip, skips = skips[-1], skips[:-1]
            h = torch.cat([_reference_v2(h, b), _reference_fourier(skip, s)], dim=1)
            h = resnet(h, captured["temb"])
            if attn is not None:
                h = attn(h, encoder_hidden_states=captured["encoder_hidden_states"],
                         return_dict=False)[0]
        for upsampler in block.upsamplers or ():
            h = upsampler(h, captured.get("upsample_size"))
        plain = block(**captured)
    assert (ours - h).abs().max() <= 1e-5
    assert (ours - plain).abs().max() > 1e-3


# --------------------------------------------------------------------------- RescaleCFG

def test_rescale_formula_is_diffusers():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
        rescale_noise_cfg,
    )

    g = torch.Generator().manual_seed(0)
    cfg, cond = torch.randn(2, 4, 5, 8, generator=g) * 3, torch.randn(2, 4, 5, 8, generator=g)
    assert torch.allclose(rescale_guided(cfg, cond, 0.7), rescale_noise_cfg(cfg, cond, 0.7))


@pytest.mark.parametrize(("sampler", "width", "height", "multiplier"), [
    ("ddim", 64, 64, 0.7), ("euler", 64, 40, 0.7), ("ddim", 48, 64, 1.0)])
def test_rescale_cfg_matches_guidance_rescale(session, reference_pipe,  # noqa: F811
                                              sampler, width, height, multiplier):
    ours = graph_image(session, patched_prompt([("RescaleCFG", {"multiplier": multiplier})],
                                               sampler=sampler, width=width, height=height,
                                               cfg=12.0))
    ref = pipeline_image(reference_pipe, sampler=sampler, width=width, height=height,
                         cfg=12.0, guidance_rescale=multiplier)
    plain = pipeline_image(reference_pipe, sampler=sampler, width=width, height=height,
                           cfg=12.0)
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(ours - plain).max() > 1e-3


def test_rescale_cfg_with_combined_conditioning(session):
    """Conditioning Combine of the prompt with itself fuses to the prompt: the rescale
    sees the fused prediction, so the image is RescaleCFG's alone."""
    alone = graph_image(session, patched_prompt([("RescaleCFG", {"multiplier": 0.7})]))
    prompt = patched_prompt([("RescaleCFG", {"multiplier": 0.7})])
    prompt["9"] = {"class_type": "ConditioningCombine",
                   "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["6", 0]}}
    prompt["3"]["inputs"]["positive"] = ["9", 0]
    assert np.abs(graph_image(session, prompt) - alone).max() <= 1e-4


def test_rescale_cfg_after_pag_matches_the_pag_pipeline(session, pag_pipe):  # noqa: F811
    """diffusers' PAG pipeline rescales after adding PAG's term; so do we (priority)."""
    from diffusers import DDIMScheduler

    prompt = pag_prompt(pag={"scale": 3.0, "layers": "mid", "adaptive_scale": 0.0})
    prompt["30"] = {"class_type": "RescaleCFG",
                    "inputs": {"model": ["4", 0], "multiplier": 0.7}}
    prompt["20"]["inputs"]["model"] = ["30", 0]  # RescaleCFG first on the chain
    result = session.run(prompt)
    assert result.ok, result.run.error
    ours = CAPTURED.pop(prompt["10"]["inputs"]["key"]).numpy()
    pag_pipe.scheduler = DDIMScheduler.from_config(pag_pipe.base_config)
    pag_pipe.set_pag_applied_layers(["mid"])
    ref = pag_pipe(test_pag.PROMPT, negative_prompt=test_pag.NEGATIVE,
                   num_inference_steps=test_pag.STEPS,
                   guidance_scale=7.5, height=64, width=64, output_type="np",
                   generator=torch.Generator("cpu").manual_seed(3), pag_scale=3.0,
                   guidance_rescale=0.7).images
    assert np.abs(ours - ref).max() <= 1e-4


def test_rescale_cfg_needs_cfg(parts):
    """Without CFG there is nothing to rescale (diffusers too): the plain image."""
    plain = sample_with(parts, cfg=1.0)
    assert torch.equal(sample_with(parts, RescaleCFG(0.7), cfg=1.0), plain)


# ---------------------------------------------------------------------- all of them

def test_the_three_combine_with_each_other_and_with_sag_and_pag(session):
    freeu = ("FreeU", FREEU)
    freeu2 = ("FreeU_V2", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2})
    rescale = ("RescaleCFG", {"multiplier": 0.7})
    sag = ("SelfAttentionGuidance", {"scale": 0.75, "blur_sigma": 1.0})
    pag = ("PerturbedAttentionGuidance", {"scale": 3.0, "layers": "mid",
                                          "adaptive_scale": 0.0})
    images = {}
    for name, chain in {"plain": [], "freeu": [freeu], "freeu2": [freeu2],
                        "rescale": [rescale], "sag": [sag], "pag": [pag],
                        "three": [freeu, freeu2, rescale],
                        "all": [freeu, sag, freeu2, pag, rescale]}.items():
        images[name] = graph_image(session, patched_prompt(chain, cfg=9.0, width=64,
                                                           height=40))
        assert np.isfinite(images[name]).all(), name
    for combined in ("three", "all"):
        for alone in ("plain", "freeu", "freeu2", "rescale", "sag", "pag"):
            assert np.abs(images[combined] - images[alone]).max() > 1e-3, (combined, alone)
    assert np.abs(images["freeu"] - images["freeu2"]).max() > 1e-3


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize(("node_type", "name", "bad"), [
    ("FreeU", "b1", -0.1), ("FreeU", "s2", 10.5), ("FreeU_V2", "b2", 11.0),
    ("FreeU_V2", "s1", -1.0), ("RescaleCFG", "multiplier", 1.5),
    ("RescaleCFG", "multiplier", -0.1)])
def test_out_of_range_inputs_are_refused(session, node_type, name, bad):
    defaults = {"FreeU": FREEU, "FreeU_V2": FREEU, "RescaleCFG": {"multiplier": 0.7}}
    prompt = patched_prompt([(node_type, {**defaults[node_type], name: bad})])
    with pytest.raises(PromptValidationError) as info:
        session.validate(prompt)
    errors = [i for i in info.value.issues if i.severity == "error"]
    assert [(i.node_id, i.input_name, i.kind) for i in errors] == [
        ("p0", name, "out_of_range")]


def test_defaults_and_bounds_are_comfyuis(session):
    schema = session.registry.schema(session.env)
    for node_type, defaults in (("FreeU", (1.1, 1.2, 0.9, 0.2)),
                                ("FreeU_V2", (1.3, 1.4, 0.9, 0.2))):
        inputs = schema[node_type]["input"]["required"]
        assert list(inputs) == ["model", "b1", "b2", "s1", "s2"]
        for name, default in zip(("b1", "b2", "s1", "s2"), defaults, strict=True):
            assert inputs[name][1] | {"tooltip": ""} == {
                "default": default, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": ""}
        assert schema[node_type]["category"] == "model_patches/unet"
    inputs = schema["RescaleCFG"]["input"]["required"]
    assert list(inputs) == ["model", "multiplier"]
    assert inputs["multiplier"][1]["default"] == 0.7
    assert (inputs["multiplier"][1]["min"], inputs["multiplier"][1]["max"]) == (0.0, 1.0)
    assert schema["RescaleCFG"]["category"] == "advanced/model"


# ------------------------------------------------------------------ attention multipliers


def test_attention_multipliers_scale_exactly_their_projections(parts):
    from nodes.diffusion.lora import patched
    from nodes.model_patches import UNetCrossAttentionMultiply, UNetSelfAttentionMultiply

    model = parts[0]
    base = {k: v.clone() for k, v in model.unet.state_dict().items()}
    (self_attn,) = UNetSelfAttentionMultiply(model=model, q=1.2, k=0.9, v=1.0,
                                             out=1.1).execute(None)
    (cross,) = UNetCrossAttentionMultiply(model=self_attn, q=1.0, k=1.3, v=0.8,
                                          out=1.0).execute(None)
    expected = {"attn1.to_q.": 1.2, "attn1.to_k.": 0.9, "attn1.to_out.0.": 1.1,
                "attn2.to_k.": 1.3, "attn2.to_v.": 0.8}
    with patched(cross.unet, cross.patches):
        after = cross.unet.state_dict()
        for name, weight in base.items():
            factor = next((f for part, f in expected.items()
                           if name.endswith((f"{part}weight", f"{part}bias"))), 1.0)
            assert torch.allclose(after[name], weight * factor, atol=1e-6), name
    assert all(torch.equal(model.unet.state_dict()[k], v) for k, v in base.items())


def test_clip_attention_multiply_and_the_identity(session, parts):
    from nodes.diffusion.lora import patched
    from nodes.model_patches import CLIPAttentionMultiply

    clip_prompt = patched_prompt([])
    key = uuid.uuid4().hex
    clip_prompt["c"] = {"class_type": "TestCapture", "inputs": {"value": ["4", 1], "key": key}}
    assert session.run(clip_prompt).ok
    clip = CAPTURED.pop(key)
    (scaled,) = CLIPAttentionMultiply(clip=clip, q=1.0, k=1.0, v=1.5, out=1.0).execute(None)
    with patched(scaled.text_encoder, scaled.patches):
        layer = scaled.text_encoder.get_submodule("encoder.layers.0.self_attn")
        v_scaled, q_after = layer.v_proj.weight.clone(), layer.q_proj.weight.clone()
    layer = clip.text_encoder.get_submodule("encoder.layers.0.self_attn")
    assert torch.allclose(v_scaled, layer.v_proj.weight * 1.5, atol=1e-6)
    assert torch.equal(q_after, layer.q_proj.weight)
    plain = graph_image(session, patched_prompt([]))
    ones = {"q": 1.0, "k": 1.0, "v": 1.0, "out": 1.0}
    same = graph_image(session, patched_prompt([("UNetSelfAttentionMultiply", ones)]))
    assert np.abs(same - plain).max() <= 1e-6
    moved = graph_image(session, patched_prompt(
        [("UNetCrossAttentionMultiply", {**ones, "k": 1.3})]))
    assert np.abs(moved - plain).max() > 1e-3


# ---------------------------------------------------------------------------- Perp-Neg


def test_perp_neg_is_the_papers_step_written_out(session, tiny_model_paths):
    """Our sampler with Perp-Neg against a hand loop: DDIM over the UNet's three
    predictions (negative, positive, empty) and the Perp-Neg formula."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    prompt = patched_prompt([("PerpNeg", {"empty_conditioning": ["e", 0], "neg_scale": 1.5})],
                            steps=4, cfg=6.0)
    prompt["e"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}}
    keys = {name: uuid.uuid4().hex for name in ("pos", "neg", "empty", "out")}
    for name, node in (("pos", "6"), ("neg", "7"), ("empty", "e"), ("out", "3")):
        prompt[f"c_{name}"] = {"class_type": "TestCapture",
                               "inputs": {"value": [node, 0], "key": keys[name]}}
    del prompt["10"]
    # the same through PerpNegGuider and SamplerCustomAdvanced
    prompt.update({
        "g": {"class_type": "PerpNegGuider", "inputs": {
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "empty_conditioning": ["e", 0], "cfg": 6.0, "neg_scale": 1.5}},
        "n": {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}},
        "s": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        "b": {"class_type": "BasicScheduler", "inputs": {
            "model": ["4", 0], "scheduler": "normal", "steps": 4, "denoise": 1.0}},
        "sca": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["n", 0], "guider": ["g", 0], "sampler": ["s", 0], "sigmas": ["b", 0],
            "latent_image": ["5", 0]}},
        "c_guider": {"class_type": "TestCapture",
                     "inputs": {"value": ["sca", 0], "key": keys["out"] + "g"}}})
    result = session.run(prompt)
    assert result.ok, result.run.error
    pos, neg, empty = (CAPTURED.pop(keys[k]).embeds for k in ("pos", "neg", "empty"))
    ours = CAPTURED.pop(keys["out"]).samples
    assert torch.allclose(CAPTURED.pop(keys["out"] + "g").samples, ours, atol=1e-6)

    folder = tiny_model_paths["diffusers"]
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    scheduler.set_timesteps(4)
    latents = torch.randn(ours.shape, generator=torch.Generator("cpu").manual_seed(7))
    latents = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps_neg, eps_pos, eps_empty = unet(torch.cat([latents] * 3), t,
                                               torch.cat([neg, pos, empty])).sample.chunk(3)
            p, n = eps_pos - eps_empty, eps_neg - eps_empty
            perp = n - (n * p).sum() / (p * p).sum() * p
            eps = eps_empty + 6.0 * (p - 1.5 * perp)
            latents = scheduler.step(eps, t, latents).prev_sample
    print(f"Perp-Neg vs the hand loop: {(ours - latents).abs().max():.2e}")
    assert (ours - latents).abs().max() <= 1e-4


def test_perp_neg_formula_edges_and_it_needs_cfg(session):
    from nodes.diffusion.perp_neg import perp_neg

    # with neg_scale 0 the negative is ignored: cfg toward the positive from the empty one
    c, u, e = torch.randn(3, 2, 4, 3, 3).unbind(0)
    assert torch.allclose(perp_neg(c, u, e, 5.0, 0.0), e + 5.0 * (c - e))
    # a negative parallel to the positive is removed entirely
    assert torch.allclose(perp_neg(c, e + 2 * (c - e), e, 5.0, 1.0), e + 5.0 * (c - e),
                          atol=1e-5)
    prompt = patched_prompt([("PerpNeg", {"empty_conditioning": ["7", 0], "neg_scale": 1.0})],
                            cfg=1.0)
    result = session.run(prompt)
    assert result.run.status == "error"
    assert "classifier-free guidance" in result.run.error["exception_message"]


# ------------------------------------------------------------ APG and CFG-Zero* (diffusers)


def hand_loop(session, tiny_model_paths, patch: tuple[str, dict], combine) -> tuple:
    """Our sampler with ``patch`` and a DDIM hand loop whose step prediction is
    ``combine(step, cond, uncond)``: (ours, reference) latents."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    prompt = patched_prompt([patch], steps=4, cfg=9.0)
    keys = {name: uuid.uuid4().hex for name in ("pos", "neg", "out")}
    for name, node in (("pos", "6"), ("neg", "7"), ("out", "3")):
        prompt[f"c_{name}"] = {"class_type": "TestCapture",
                               "inputs": {"value": [node, 0], "key": keys[name]}}
    del prompt["10"]
    result = session.run(prompt)
    assert result.ok, result.run.error
    pos, neg = (CAPTURED.pop(keys[k]).embeds for k in ("pos", "neg"))
    ours = CAPTURED.pop(keys["out"]).samples
    folder = tiny_model_paths["diffusers"]
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    scheduler.set_timesteps(4)
    latents = torch.randn(ours.shape, generator=torch.Generator("cpu").manual_seed(7))
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            uncond, cond = unet(torch.cat([latents] * 2), t, torch.cat([neg, pos])).sample.chunk(2)
            latents = scheduler.step(combine(i, cond, uncond), t, latents).prev_sample
    return ours, latents


def test_apg_is_diffusers_normalized_guidance(session, tiny_model_paths):
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

    buffer = MomentumBuffer(-0.5)
    ours, ref = hand_loop(
        session, tiny_model_paths,
        ("APG", {"eta": 0.2, "norm_threshold": 3.0, "momentum": -0.5}),
        lambda i, c, u: normalized_guidance(c, u, 9.0, buffer, 0.2, 3.0))
    print(f"APG vs diffusers: {(ours - ref).abs().max():.2e}")
    assert (ours - ref).abs().max() <= 1e-4
    plain, _ = hand_loop(session, tiny_model_paths, ("APG", {"eta": 1.0, "norm_threshold": 0.0,
                                                             "momentum": 0.0}),
                         lambda i, c, u: u + 9.0 * (c - u))
    assert (plain - _).abs().max() <= 1e-4  # eta 1, no cap, no momentum: plain CFG
    assert (plain - ours).abs().max() > 1e-3


def test_cfg_zero_star_is_diffusers(session, tiny_model_paths):
    from diffusers.guiders.classifier_free_zero_star_guidance import cfg_zero_star_scale

    def zero_star(i, c, u):
        alpha = cfg_zero_star_scale(c.flatten(1), u.flatten(1)).view(-1, 1, 1, 1)
        return u * alpha + 9.0 * (c - u * alpha)

    ours, ref = hand_loop(session, tiny_model_paths, ("CFGZeroStar", {}), zero_star)
    print(f"CFG-Zero* vs diffusers: {(ours - ref).abs().max():.2e}")
    assert (ours - ref).abs().max() <= 1e-4


def test_tcfg_is_diffusers(session, tiny_model_paths):
    from diffusers.guiders.tangential_classifier_free_guidance import normalized_guidance

    ours, ref = hand_loop(session, tiny_model_paths, ("TCFG", {}),
                          lambda i, c, u: normalized_guidance(c, u, 9.0))
    print(f"TCFG vs diffusers: {(ours - ref).abs().max():.2e}")
    assert (ours - ref).abs().max() <= 1e-4


def test_epsilon_scaling_divides_the_final_prediction(parts):
    """One Euler step to σ = 0 lands on x − σ₀·ε: with Epsilon Scaling on x − σ₀·ε/s."""
    from nodes.diffusion.rescale_cfg import EpsilonScaling
    from nodes.diffusion.sampling import SamplingParams, sample
    from nodes.diffusion.schedulers import make_scheduler

    model, pos, neg, latent = parts

    def one_step(*extensions):
        m = model
        for ext in extensions:
            m = m.with_extension(ext)
        scheduler = make_scheduler("euler", "normal", m.scheduler_config)
        out = sample(m, scheduler, pos, neg, latent, SamplingParams(seed=1, steps=1, cfg=5.0))
        return out, float(scheduler.init_noise_sigma)

    plain, start_sigma = one_step()
    scaled, _ = one_step(EpsilonScaling(1.25))
    noise = torch.randn(latent.samples.shape, generator=torch.Generator().manual_seed(1))
    x = noise * start_sigma
    assert torch.allclose(scaled - x, (plain - x) / 1.25, atol=1e-4)
    # with RescaleCFG first and other guidance, it still acts last; v-prediction refused
    both = sample_with(parts, RescaleCFG(0.5), EpsilonScaling(1.01))
    assert torch.isfinite(both).all()
    from dataclasses import replace

    vmodel = replace(model, scheduler_config={**model.scheduler_config,
                                              "prediction_type": "v_prediction"})
    with pytest.raises(ValueError, match="Epsilon Scaling"):
        sample_with([vmodel, pos, neg, latent], EpsilonScaling(1.01))
