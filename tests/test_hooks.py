"""Hooks (ComfyUI's nodes_hooks): a LoRA or checkpoint acting only for the conditionings it
is attached to, scheduled by keyframes, on the text encoder through Set CLIP Hooks, and
default conditionings filling what masked ones leave."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine import PromptValidationError
from engine.session import Session
from nodes.diffusion.hook_groups import (
    HookGroup,
    HookKeyframe,
    KeyframeCursor,
    WeightHook,
    add_keyframe,
    clip_schedule,
    interpolated,
)
from tests.graph_nodes import CAPTURED, reference_pipeline, registry_with_capture
from tests.test_lora import random_lora, save_peft

PROMPT, NEGATIVE = "a red circle at the top left", "blurry"
STEPS, CFG, SEED = 6, 7.5, 3


@pytest.fixture(scope="module")
def hook_models(models_dir: Path) -> Path:
    """A LoRA file and a checkpoint with other weights, beside the tiny model."""
    (models_dir / "loras").mkdir(exist_ok=True)
    save_peft(models_dir / "loras" / "hook_a.safetensors", random_lora(11))
    source = models_dir / "checkpoints" / "steerflow-tiny.safetensors"
    state = load_file(source)
    with safe_open(source, "pt") as f:
        metadata = f.metadata()
    g = torch.Generator().manual_seed(5)
    other = {k: (v + 0.05 * torch.randn(v.shape, generator=g) * v.std()
                 if v.is_floating_point() and v.dim() > 1 and "diffusion_model" in k else v)
             for k, v in state.items()}
    save_file(other, models_dir / "checkpoints" / "hook-other.safetensors", metadata=metadata)
    return models_dir


@pytest.fixture(scope="module")
def session(hook_models, tmp_path_factory):
    return Session(tmp_path_factory.mktemp("home"), models_dir=hook_models, device="cpu",
                   registry=registry_with_capture())


def base(model=("ck", 0), clip=("ck", 1), positive=("pos", 0), negative=("neg", 0),
         sampler="ddim", extra: dict | None = None) -> dict:
    return {
        "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": list(clip)}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE,
                                                          "clip": list(clip)}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                             "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {
            "model": list(model), "seed": SEED, "steps": STEPS, "cfg": CFG,
            "sampler_name": sampler, "scheduler": "normal", "positive": list(positive),
            "negative": list(negative), "latent_image": ["lat", 0], "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["ck", 2]}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["dec", 0],
                                                        "key": uuid.uuid4().hex}},
        **(extra or {}),
    }


def run(session, prompt) -> np.ndarray:
    result = session.run(prompt)
    assert result.ok, (result.run.error or {}).get("exception_message")
    return CAPTURED.pop(prompt["cap"]["inputs"]["key"]).numpy()


HOOK = {"hook": {"class_type": "CreateHookLora", "inputs": {
    "lora_name": "hook_a.safetensors", "strength_model": 0.8, "strength_clip": 0.6}}}


def pair_props(hooks=("hook", 0), **more) -> dict:
    return {"props": {"class_type": "PairConditioningSetProperties", "inputs": {
        "positive_NEW": ["pos", 0], "negative_NEW": ["neg", 0], "strength": 1.0,
        "set_cond_area": "default", "hooks": list(hooks), **more}}}


def lora_model(strength=0.8) -> dict:
    return {"lm": {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["ck", 0], "lora_name": "hook_a.safetensors", "strength_model": strength}}}


def test_a_hook_on_both_prompts_is_the_lora_on_the_model(session):
    hooked = run(session, base(positive=("props", 0), negative=("props", 1),
                               extra={**HOOK, **pair_props()}))
    merged = run(session, base(model=("lm", 0), extra=lora_model()))
    assert np.abs(hooked - merged).max() <= 1e-4
    assert np.abs(hooked - run(session, base())).max() > 1e-3


def test_a_hook_on_the_positive_acts_on_its_rows_only(session, tiny_model_paths, models_dir):
    hooked = run(session, base(positive=("props", 0), extra={**HOOK, "props": {
        "class_type": "ConditioningSetProperties", "inputs": {
            "cond_NEW": ["pos", 0], "strength": 1.0, "set_cond_area": "default",
            "hooks": ["hook", 0]}}}))
    # the method by hand on diffusers: the conditional pass with the LoRA, the
    # unconditional without
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline

    pipe = reference_pipeline(StableDiffusionPipeline, tiny_model_paths["diffusers"])
    pos, neg = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    pipe.load_lora_weights(models_dir / "loras", weight_name="hook_a.safetensors",
                           adapter_name="a")
    pipe.set_adapters(["a"], adapter_weights=[0.8])
    scheduler = pipe.scheduler
    scheduler.set_timesteps(STEPS)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(SEED))
    with torch.no_grad():
        for t in scheduler.timesteps:
            pipe.disable_lora()
            uncond = pipe.unet(x, t, encoder_hidden_states=neg).sample
            pipe.enable_lora()
            cond = pipe.unet(x, t, encoder_hidden_states=pos).sample
            x = scheduler.step(uncond + CFG * (cond - uncond), t, x).prev_sample
        image = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
    want = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(hooked - want).max() <= 1e-4


def test_keyframes_switch_the_hook_off_halfway(session):
    keyframes = {
        "kf0": {"class_type": "CreateHookKeyframe", "inputs": {"strength_mult": 1.0,
                                                               "start_percent": 0.0}},
        "kf1": {"class_type": "CreateHookKeyframe", "inputs": {
            "strength_mult": 0.0, "start_percent": 0.5, "prev_hook_kf": ["kf0", 0]}},
        "sched": {"class_type": "SetHookKeyframes", "inputs": {"hooks": ["hook", 0],
                                                               "hook_kf": ["kf1", 0]}},
    }
    hooked = run(session, base(positive=("props", 0), negative=("props", 1),
                               extra={**HOOK, **keyframes, **pair_props(("sched", 0))}))
    # the same as the LoRA'd model for the steps before the halfway timestep, then the base
    from nodes.diffusion.schedulers import make_scheduler

    scheduler = make_scheduler("ddim", "normal", _config(session))
    scheduler.set_timesteps(STEPS)
    switch = next(i for i, t in enumerate(scheduler.timesteps.tolist()) if t <= 0.5 * 999)
    assert 0 < switch < STEPS
    two_stage = base(model=("lm", 0), extra={**lora_model(), "k": {
        "class_type": "KSamplerAdvanced", "inputs": {
            "model": ["lm", 0], "add_noise": "enable", "noise_seed": SEED, "steps": STEPS,
            "cfg": CFG, "sampler_name": "ddim", "scheduler": "normal", "positive": ["pos", 0],
            "negative": ["neg", 0], "latent_image": ["lat", 0], "start_at_step": 0,
            "end_at_step": switch, "return_with_leftover_noise": "enable"}},
        "k2": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["ck", 0], "add_noise": "disable", "noise_seed": SEED, "steps": STEPS,
            "cfg": CFG, "sampler_name": "ddim", "scheduler": "normal", "positive": ["pos", 0],
            "negative": ["neg", 0], "latent_image": ["k", 0], "start_at_step": switch,
            "end_at_step": 10000, "return_with_leftover_noise": "disable"}}})
    two_stage["dec"]["inputs"]["samples"] = ["k2", 0]
    assert np.abs(hooked - run(session, two_stage)).max() <= 1e-4


def _config(session) -> dict:
    from nodes.diffusion.loading import load_components

    return dict(load_components(session.env.resolve("models", "checkpoints", "steerflow-tiny"))
                .scheduler_config)


def test_set_clip_hooks_is_the_lora_on_model_and_clip(session):
    extra = {**HOOK, "hc": {"class_type": "SetClipHooks", "inputs": {
        "clip": ["ck", 1], "apply_to_conds": True, "schedule_clip": False,
        "hooks": ["hook", 0]}}}
    hooked = run(session, base(clip=("hc", 0), extra=extra))
    loader = {"ll": {"class_type": "LoraLoader", "inputs": {
        "model": ["ck", 0], "clip": ["ck", 1], "lora_name": "hook_a.safetensors",
        "strength_model": 0.8, "strength_clip": 0.6}}}
    assert np.abs(hooked - run(session, base(model=("ll", 0), clip=("ll", 1),
                                             extra=loader))).max() <= 1e-4


def _mask_nodes() -> dict:
    return {
        "m0": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}},
        "m1": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}},
        "mask": {"class_type": "MaskComposite", "inputs": {
            "destination": ["m0", 0], "source": ["m1", 0], "x": 0, "y": 0,
            "operation": "add"}},
        "inv": {"class_type": "InvertMask", "inputs": {"mask": ["mask", 0]}},
        "other": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue square",
                                                            "clip": ["ck", 1]}},
    }


def test_a_default_prompt_fills_what_the_masked_one_leaves(session):
    masked = {"class_type": "ConditioningSetPropertiesAndCombine", "inputs": {
        "cond": ["neg", 0], "cond_NEW": ["pos", 0], "strength": 1.0,
        "set_cond_area": "default", "mask": ["mask", 0], "hooks": ["hook", 0]}}
    extra = {**HOOK, **_mask_nodes(), "masked": {**masked, "inputs": {
        **masked["inputs"], "cond": ["pos", 0]}}}
    # positive: the prompt on the left half with the hook, "a blue square" by default
    extra["masked"]["inputs"]["cond"] = ["m_only", 0]
    extra["m_only"] = {"class_type": "ConditioningSetProperties", "inputs": {
        "cond_NEW": ["pos", 0], "strength": 1.0, "set_cond_area": "default",
        "mask": ["mask", 0], "hooks": ["hook", 0]}}
    extra["dflt"] = {"class_type": "ConditioningSetDefaultCombine", "inputs": {
        "cond": ["m_only", 0], "cond_DEFAULT": ["other", 0]}}
    with_default = run(session, base(positive=("dflt", 0), extra=extra))
    # the same with the default written as the inverted mask
    extra["inv_c"] = {"class_type": "ConditioningSetMask", "inputs": {
        "conditioning": ["other", 0], "mask": ["inv", 0], "strength": 1.0,
        "set_cond_area": "default"}}
    extra["both"] = {"class_type": "ConditioningCombine", "inputs": {
        "conditioning_1": ["m_only", 0], "conditioning_2": ["inv_c", 0]}}
    explicit = run(session, base(positive=("both", 0), extra=extra))
    assert np.abs(with_default - explicit).max() <= 1e-5
    # and where the masked prompt covers everything the default weighs nothing
    extra["full"] = {"class_type": "ConditioningSetProperties", "inputs": {
        "cond_NEW": ["pos", 0], "strength": 1.0, "set_cond_area": "default",
        "hooks": ["hook", 0]}}
    extra["dflt2"] = {"class_type": "ConditioningSetDefaultCombine", "inputs": {
        "cond": ["full", 0], "cond_DEFAULT": ["other", 0]}}
    assert np.abs(run(session, base(positive=("dflt2", 0), extra=extra))
                  - run(session, base(positive=("full", 0), extra=extra))).max() <= 1e-5


def test_a_checkpoint_as_hook_is_that_checkpoint(session):
    extra = {"hm": {"class_type": "CreateHookModelAsLoraModelOnly", "inputs": {
        "ckpt_name": "hook-other.safetensors", "strength_model": 1.0}},
        **pair_props(("hm", 0))}
    hooked = run(session, base(positive=("props", 0), negative=("props", 1), extra=extra))
    other = base(model=("ck2", 0), extra={"ck2": {"class_type": "CheckpointLoaderSimple",
                                                  "inputs": {"ckpt_name":
                                                             "hook-other.safetensors"}}})
    assert np.abs(hooked - run(session, other)).max() <= 1e-4


def test_hooks_combine_with_sega_and_a_second_prompt(session):
    extra = {**HOOK, **pair_props(), "c0": {"class_type": "SEGAConcept", "inputs": {
        "clip": ["ck", 1], "text": "a green star", "scale": 5.0, "warmup_steps": 1,
        "threshold": 0.8}},
        "sega": {"class_type": "ApplySEGA", "inputs": {"model": ["ck", 0],
                                                       "concepts": ["c0", 0]}},
        "two": {"class_type": "ConditioningCombine", "inputs": {
            "conditioning_1": ["props", 0], "conditioning_2": ["pos", 0]}}}
    image = run(session, base(model=("sega", 0), positive=("two", 0), negative=("props", 1),
                              extra=extra))
    assert np.isfinite(image).all()


# --- keyframes and schedules ----------------------------------------------------------------

def test_interpolations_are_comfyuis():
    assert interpolated(0, 1, 5, "linear") == [0, 0.25, 0.5, 0.75, 1]
    assert interpolated(1, 3, 3, "ease_in") == [1, 1.5, 3]
    assert interpolated(1, 3, 3, "ease_out") == [1, 2.5, 3]
    assert interpolated(0, 2, 3, "ease_in_out") == pytest.approx([0, 1, 2])


def test_keyframe_cursor_follows_the_timesteps():
    frames = add_keyframe(add_keyframe((), HookKeyframe(1.0, 0.0)), HookKeyframe(0.25, 0.5))
    cursor = KeyframeCursor(frames, 1000, 900.0)
    seen = []
    for t in (900, 700, 500, 400, 100):
        cursor.advance(t)
        seen.append(cursor.strength)
    assert seen == [1.0, 1.0, 1.0, 0.25, 0.25]


def test_clip_schedule_splits_at_keyframes():
    hook = WeightHook("x", keyframes=(HookKeyframe(1.0, 0.0), HookKeyframe(0.5, 0.4)))
    stretches = clip_schedule(HookGroup((hook,)))
    assert [s for s, _ in stretches] == [(0.0, 0.4), (0.4, 1.0)]
    assert [m[hook.ref] for _, m in stretches] == [1.0, 0.5]


def test_schedule_clip_encodes_once_per_stretch(session):
    extra = {**HOOK,
             "kf0": {"class_type": "CreateHookKeyframe", "inputs": {"strength_mult": 1.0,
                                                                    "start_percent": 0.0}},
             "kf1": {"class_type": "CreateHookKeyframe", "inputs": {
                 "strength_mult": 0.0, "start_percent": 0.5, "prev_hook_kf": ["kf0", 0]}},
             "sched": {"class_type": "SetHookKeyframes", "inputs": {"hooks": ["hook", 0],
                                                                    "hook_kf": ["kf1", 0]}},
             "hc": {"class_type": "SetClipHooks", "inputs": {
                 "clip": ["ck", 1], "apply_to_conds": False, "schedule_clip": True,
                 "hooks": ["sched", 0]}}}
    prompt = base(clip=("hc", 0), extra=extra)
    key = uuid.uuid4().hex
    prompt["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["pos", 0], "key": key}}
    del prompt["dec"]
    result = session.run({k: v for k, v in prompt.items() if k not in ("k",)})
    assert result.ok, result.run.error
    entries = CAPTURED.pop(key).entries
    assert [e.options["timestep_range"] for e in entries] == [(0.0, 0.5), (0.5, 1.0)]
    assert not torch.equal(entries[0].embeds, entries[1].embeds)  # the LoRA, then not


def test_combine_hooks_and_bad_inputs(session):
    prompt = {"a": {"class_type": "CombineHooks8", "inputs": {}},
              "cap": {"class_type": "TestCapture", "inputs": {"value": ["a", 0], "key": "h0"}}}
    assert session.run(prompt).ok and CAPTURED.pop("h0") is None
    bad = {"f": {"class_type": "CreateHookKeyframesFromFloats", "inputs": {
        "floats_strength": ["s", 0], "start_percent": 0.0, "end_percent": 1.0,
        "print_keyframes": False}},
        "s": {"class_type": "PrimitiveString", "inputs": {"value": "x"}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["f", 0], "key": "h1"}}}
    with pytest.raises(PromptValidationError, match="FLOATS"):
        session.run(bad)


def test_a_hook_lora_that_does_not_fit_is_a_clear_error(session, models_dir):
    bad = random_lora(12)
    down, up = bad["unet"]["down_blocks.0.attentions.0.proj_in"]
    bad["unet"]["down_blocks.0.attentions.0.proj_in"] = (down[:, :3], up)
    save_peft(models_dir / "loras" / "hook_bad.safetensors", bad)
    prompt = base(positive=("props", 0), negative=("props", 1), extra={
        "hook": {"class_type": "CreateHookLora", "inputs": {
            "lora_name": "hook_bad.safetensors", "strength_model": 1.0,
            "strength_clip": 1.0}}, **pair_props()})
    result = session.run(prompt)
    assert not result.ok and "does not fit" in str(result.run.error)


@pytest.mark.parametrize("model_only", [True, False])
def test_lora_loader_bypass_is_load_lora(session, model_only):
    if model_only:
        extra = {"lb": {"class_type": "LoraLoaderBypassModelOnly", "inputs": {
            "model": ["ck", 0], "lora_name": "hook_a.safetensors", "strength_model": 0.8}}}
        bypass = run(session, base(model=("lb", 0), extra=extra))
        merged = run(session, base(model=("lm", 0), extra=lora_model()))
    else:
        inputs = {"model": ["ck", 0], "clip": ["ck", 1], "lora_name": "hook_a.safetensors",
                  "strength_model": 0.8, "strength_clip": 0.6}
        bypass = run(session, base(model=("lb", 0), clip=("lb", 1), extra={
            "lb": {"class_type": "LoraLoaderBypass", "inputs": inputs}}))
        merged = run(session, base(model=("ll", 0), clip=("ll", 1), extra={
            "ll": {"class_type": "LoraLoader", "inputs": inputs}}))
    assert np.abs(bypass - merged).max() <= 1e-4


def test_bypass_with_hypertile_stacks_tiles_on_the_batch(session):
    extra = {"lb": {"class_type": "LoraLoaderBypassModelOnly", "inputs": {
        "model": ["ck", 0], "lora_name": "hook_a.safetensors", "strength_model": 0.8}},
        "ht": {"class_type": "HyperTile", "inputs": {"model": ["lb", 0], "tile_size": 32,
                                                      "swap_size": 2, "max_depth": 0,
                                                      "scale_depth": False}}}
    assert np.isfinite(run(session, base(model=("ht", 0), extra=extra))).all()


# --- LoRA extraction (LoraSave) ---------------------------------------------------------------

def _extract_prompt(prefix: str, lora_type: str, rank: int = 8) -> dict:
    return {
        "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "ck2": {"class_type": "CheckpointLoaderSimple",
                "inputs": {"ckpt_name": "hook-other.safetensors"}},
        "sub": {"class_type": "ModelMergeSubtract", "inputs": {"model1": ["ck2", 0],
                                                               "model2": ["ck", 0],
                                                               "multiplier": 1.0}},
        "csub": {"class_type": "CLIPMergeSubtract", "inputs": {"clip1": ["ck2", 1],
                                                               "clip2": ["ck", 1],
                                                               "multiplier": 1.0}},
        "save": {"class_type": "LoraSave", "inputs": {
            "filename_prefix": prefix, "rank": rank, "lora_type": lora_type,
            "bias_diff": True, "model_diff": ["sub", 0], "text_encoder_diff": ["csub", 0]}},
    }


@pytest.mark.parametrize("lora_type", ["full_diff", "standard"])
def test_an_extracted_lora_takes_the_base_to_the_fine_tune(session, lora_type):
    prefix = f"loras/extracted_{lora_type}_{uuid.uuid4().hex[:6]}"
    result = session.run(_extract_prompt(prefix, lora_type, rank=64))
    assert result.ok, result.run.error
    (name,) = [t for out in result.run.outputs.values() for t in out.get("text", [])]
    with_lora = run(session, base(model=("ll", 0), clip=("ll", 1), extra={"ll": {
        "class_type": "LoraLoader", "inputs": {
            "model": ["ck", 0], "clip": ["ck", 1], "lora_name": name, "strength_model": 1.0,
            "strength_clip": 1.0}}}))
    other = run(session, base(model=("ck2", 0), extra={"ck2": {
        "class_type": "CheckpointLoaderSimple", "inputs": {
            "ckpt_name": "hook-other.safetensors"}}}))
    plain = run(session, base())
    error = np.abs(with_lora - other).max()
    if lora_type == "full_diff":  # the difference kept whole: the fine-tune itself
        assert error <= 1e-4
    else:  # rank 64 of the tiny model's layers, clamped as ComfyUI: close to it
        assert np.abs(with_lora - other).mean() < 0.25 * np.abs(plain - other).mean()


def test_lora_save_needs_a_difference(session):
    prompt = _extract_prompt("loras/nothing", "standard")
    del prompt["save"]["inputs"]["model_diff"], prompt["save"]["inputs"]["text_encoder_diff"]
    result = session.run(prompt)
    assert not result.ok and "nothing to extract" in str(result.run.error)


def test_pag_perturbed_rows_carry_the_positive_hooks(session):
    """PAG's perturbed entries stand for the positive prompt, so its hooks act there too:
    a hook on both prompts with PAG equals Load LoRA with PAG."""
    pag = {"class_type": "PerturbedAttentionGuidance", "inputs": {"scale": 3.0}}
    hooked = base(model=("pag", 0), positive=("props", 0), negative=("props", 1),
                  extra={**HOOK, **pair_props(), "pag": {**pag, "inputs": {
                      **pag["inputs"], "model": ["ck", 0]}}})
    merged = base(model=("pag", 0), extra={**lora_model(), "pag": {**pag, "inputs": {
        **pag["inputs"], "model": ["lm", 0]}}})
    assert np.abs(run(session, hooked) - run(session, merged)).max() <= 1e-4


def test_sag_pass_carries_the_guided_prompts_hooks(session):
    """SAG's degraded pass stands for the unconditional prompt: with a hook on both
    prompts, SAG equals SAG on the LoRA'd model."""
    sag = {"class_type": "SelfAttentionGuidance", "inputs": {"scale": 0.8, "blur_sigma": 2.0}}
    hooked = base(model=("sag", 0), positive=("props", 0), negative=("props", 1),
                  extra={**HOOK, **pair_props(), "sag": {**sag, "inputs": {
                      **sag["inputs"], "model": ["ck", 0]}}})
    merged = base(model=("sag", 0), extra={**lora_model(), "sag": {**sag, "inputs": {
        **sag["inputs"], "model": ["lm", 0]}}})
    assert np.abs(run(session, hooked) - run(session, merged)).max() <= 1e-4


def test_a_hook_with_a_weight_and_a_bias_change_on_one_layer(session, models_dir):
    """A layer with two changes (``.diff`` and ``.diff_b``, as a LoRA saved from a model
    difference holds for the time embedding) failed with a TypeError (the fuzz drill)."""
    from nodes.diffusion.tiny import build_tiny_pipeline

    g = torch.Generator().manual_seed(4)
    layer = "time_embedding.linear_1"
    weight = dict(build_tiny_pipeline().unet.named_parameters())[f"{layer}.weight"]
    save_file({f"{layer}.diff": torch.randn(weight.shape, generator=g) * 0.05,
               f"{layer}.diff_b": torch.randn(weight.shape[0], generator=g) * 0.05},
              str(models_dir / "loras" / "hook_diff_b.safetensors"))
    hook = {"hook": {"class_type": "CreateHookLora", "inputs": {
        "lora_name": "hook_diff_b.safetensors", "strength_model": 1.0, "strength_clip": 1.0}}}
    hooked = run(session, base(positive=("props", 0), negative=("props", 1),
                               extra={**hook, **pair_props()}))
    loaded = run(session, base(model=("lm", 0), extra={"lm": {
        "class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["ck", 0], "lora_name": "hook_diff_b.safetensors",
            "strength_model": 1.0}}}))
    assert np.abs(hooked - loaded).max() <= 1e-4


def test_keyframes_on_no_hooks_schedule_nothing_and_say_so(session):
    """Combine Hooks with no input gives no hooks: Set Hook Keyframes on it failed with an
    AttributeError (ComfyUI's too); it passes the nothing on, with a warning."""
    extra = {"none": {"class_type": "CombineHooks2", "inputs": {}},
             "kf": {"class_type": "CreateHookKeyframe", "inputs": {"strength_mult": 0.5,
                                                                  "start_percent": 0.0}},
             "sched": {"class_type": "SetHookKeyframes", "inputs": {"hooks": ["none", 0],
                                                                   "hook_kf": ["kf", 0]}},
             **pair_props(hooks=("sched", 0))}
    prompt = base(positive=("props", 0), negative=("props", 1), extra=extra)
    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    CAPTURED.pop(prompt["cap"]["inputs"]["key"], None)
    warnings = [d["message"] for n, d in result.events if n == "node_warning"]
    assert any("schedule nothing" in w for w in warnings), warnings
