"""ComfyUI's custom sampling nodes (SamplerCustom, SamplerCustomAdvanced, KSamplerSelect,
BasicScheduler, SDTurboScheduler, SplitSigmas, RandomNoise, guiders) on the tiny model:
they equal KSampler / KSamplerAdvanced, and SD-Turbo's one step equals diffusers'."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch

from engine.validation import PromptValidationError
from tests.graph_nodes import CAPTURED

PROMPT = "a red circle at the top left on a white background"


def base(width: int = 48, height: int = 32) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage",
                  "inputs": {"width": width, "height": height, "batch_size": 1}},
        # an input latent for denoise < 1: a short text-to-image run
        "init": ksampler("empty", "euler", "normal", steps=2, seed=9),
    }


def ksampler(latent: str, sampler: str, scheduler: str, *, steps: int = 8, cfg: float = 5.0,
             seed: int = 3, denoise: float = 1.0) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": ["ckpt", 0], "seed": seed, "steps": steps, "cfg": cfg,
        "sampler_name": sampler, "scheduler": scheduler, "positive": ["pos", 0],
        "negative": ["neg", 0], "latent_image": [latent, 0], "denoise": denoise}}


def select(sampler: str) -> dict:
    return {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}


def basic_scheduler(scheduler: str = "normal", steps: int = 8, denoise: float = 1.0) -> dict:
    return {"class_type": "BasicScheduler", "inputs": {
        "model": ["ckpt", 0], "scheduler": scheduler, "steps": steps, "denoise": denoise}}


def custom(sigmas: list, latent: list, *, add_noise: bool = True, cfg: float = 5.0,
           seed: int = 3, sampler: str = "select") -> dict:
    return {"class_type": "SamplerCustom", "inputs": {
        "model": ["ckpt", 0], "add_noise": add_noise, "noise_seed": seed, "cfg": cfg,
        "positive": ["pos", 0], "negative": ["neg", 0], "sampler": [sampler, 0],
        "sigmas": sigmas, "latent_image": latent}}


def captured(session, graph: dict, *links: list) -> list:
    """Run ``graph`` and return what each of ``links`` carried (fresh capture keys, so a
    cached graph still captures)."""
    keys = []
    for n, link in enumerate(links):
        key = uuid.uuid4().hex
        graph[f"capture{n}"] = {"class_type": "TestCapture", "inputs": {"value": link, "key": key}}
        keys.append(key)
    result = session.run(graph)
    assert result.ok, result.run.error
    return [CAPTURED.pop(key) for key in keys]


def max_diff(a, b) -> float:
    return float((a.samples - b.samples).abs().max())


@pytest.mark.parametrize(("sampler", "scheduler", "denoise"), [
    ("euler", "normal", 1.0), ("euler", "normal", 0.6), ("dpmpp_2m", "karras", 1.0),
    ("dpmpp_2m", "karras", 0.6),
])
def test_sampler_custom_equals_ksampler(session, sampler, scheduler, denoise):
    latent = "empty" if denoise == 1.0 else "init"
    graph = {**base(), "ks": ksampler(latent, sampler, scheduler, denoise=denoise),
             "select": select(sampler), "sched": basic_scheduler(scheduler, denoise=denoise),
             "custom": custom(["sched", 0], [latent, 0])}
    ours, reference, init = captured(session, graph, ["custom", 0], ["ks", 0], [latent, 0])
    assert max_diff(ours, reference) <= 1e-6
    assert max_diff(ours, init) > 1e-2  # it did sample


def test_split_sigmas_two_stages_equal_one_run(session):
    graph = {**base(), "select": select("euler"), "sched": basic_scheduler(),
             "split": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sched", 0], "step": 3}},
             "whole": custom(["sched", 0], ["empty", 0]),
             "high": custom(["split", 0], ["empty", 0]),
             "low": custom(["split", 1], ["high", 0], add_noise=False),
             # the high half is KSamplerAdvanced's steps 0..3 (leftover noise or not)
             "adv": {"class_type": "KSamplerAdvanced", "inputs": {
                 "model": ["ckpt", 0], "add_noise": "enable", "noise_seed": 3, "steps": 8,
                 "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                 "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
                 "start_at_step": 0, "end_at_step": 3, "return_with_leftover_noise": "enable"}}}
    graph["adv_x0"] = {**graph["adv"], "inputs": {**graph["adv"]["inputs"],
                                                  "return_with_leftover_noise": "disable"}}
    whole, low, high, high_x0, adv, adv_x0, whole_x0 = captured(
        session, graph, ["whole", 0], ["low", 0], ["high", 0], ["high", 1], ["adv", 0],
        ["adv_x0", 0], ["whole", 1])
    assert max_diff(whole, low) <= 1e-5
    assert max_diff(high, adv) <= 1e-6
    assert max_diff(high_x0, adv_x0) <= 1e-6
    assert max_diff(high, high_x0) > 1e-2  # leftover noise vs its clean estimate
    assert max_diff(whole, whole_x0) <= 1e-5  # euler's last step lands on its estimate


def test_sampler_custom_advanced_equals_sampler_custom(session):
    graph = {**base(), "select": select("euler_ancestral"), "sched": basic_scheduler(steps=5),
             "custom": custom(["sched", 0], ["empty", 0], seed=11),
             "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 11}},
             "guider": {"class_type": "CFGGuider", "inputs": {
                 "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                 "cfg": 5.0}},
             "adv": {"class_type": "SamplerCustomAdvanced", "inputs": {
                 "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["select", 0],
                 "sigmas": ["sched", 0], "latent_image": ["empty", 0]}},
             # BasicGuider: the positive alone, as cfg 1
             "basic": {"class_type": "BasicGuider", "inputs": {
                 "model": ["ckpt", 0], "conditioning": ["pos", 0]}},
             "adv_basic": {"class_type": "SamplerCustomAdvanced", "inputs": {
                 "noise": ["noise", 0], "guider": ["basic", 0], "sampler": ["select", 0],
                 "sigmas": ["sched", 0], "latent_image": ["empty", 0]}},
             "custom_cfg1": custom(["sched", 0], ["empty", 0], seed=11, cfg=1.0)}
    ours, reference, basic, cfg1 = captured(session, graph, ["adv", 0], ["custom", 0],
                                            ["adv_basic", 0], ["custom_cfg1", 0])
    assert max_diff(ours, reference) <= 1e-6
    assert max_diff(basic, cfg1) <= 1e-6
    assert max_diff(basic, ours) > 1e-3


def test_dual_cfg_guider(session):
    """DualCFGGuider against CFG: cond2 = negative is CFG at cfg_conds (nested: at
    cfg_conds·cfg_cond2_negative), cond2 = cond1 is CFG at cfg_cond2_negative; a real
    middle prompt gives a third image."""

    def dual(cond2: str, style: str = "regular") -> dict:
        return {"class_type": "DualCFGGuider", "inputs": {
            "model": ["ckpt", 0], "cond1": ["pos", 0], "cond2": [cond2, 0],
            "negative": ["neg", 0], "cfg_conds": 3.0, "cfg_cond2_negative": 2.0,
            "style": style}}

    def cfg(value: float) -> dict:
        return {"class_type": "CFGGuider", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
            "cfg": value}}

    def run(guider: str) -> dict:
        return {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": [guider, 0], "sampler": ["select", 0],
            "sigmas": ["sched", 0], "latent_image": ["empty", 0]}}

    graph = {**base(), "select": select("euler"), "sched": basic_scheduler(steps=4),
             "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 2}},
             "mid": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue square",
                                                                 "clip": ["ckpt", 1]}},
             "d_neg": dual("neg"), "d_pos": dual("pos"), "d_nested": dual("neg", "nested"),
             "d_mid": dual("mid"), "c3": cfg(3.0), "c2": cfg(2.0), "c6": cfg(6.0)}
    for name in ("d_neg", "d_pos", "d_nested", "d_mid", "c3", "c2", "c6"):
        graph[f"run_{name}"] = run(name)
    d_neg, d_pos, d_nested, d_mid, c3, c2, c6 = captured(session, graph, *(
        [f"run_{n}", 0] for n in ("d_neg", "d_pos", "d_nested", "d_mid", "c3", "c2", "c6")))
    assert max_diff(d_neg, c3) <= 1e-4
    assert max_diff(d_pos, c2) <= 1e-4
    assert max_diff(d_nested, c6) <= 1e-4
    assert min(max_diff(d_mid, c) for c in (c2, c3, c6)) > 1e-3


def test_disable_noise_continues_a_noisy_latent(session):
    graph = {**base(), "select": select("euler"), "sched": basic_scheduler(),
             "split": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sched", 0], "step": 4}},
             "high": custom(["split", 0], ["empty", 0]),
             "low": custom(["split", 1], ["high", 0], add_noise=False),
             "noise": {"class_type": "DisableNoise", "inputs": {}},
             "guider": {"class_type": "CFGGuider", "inputs": {
                 "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                 "cfg": 5.0}},
             "adv": {"class_type": "SamplerCustomAdvanced", "inputs": {
                 "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["select", 0],
                 "sigmas": ["split", 1], "latent_image": ["high", 0]}}}
    low, adv = captured(session, graph, ["low", 0], ["adv", 0])
    assert max_diff(low, adv) <= 1e-6


def test_split_sigmas_denoise_and_empty_windows(session):
    graph = {**base(), "select": select("euler"), "sched": basic_scheduler(),
             "split": {"class_type": "SplitSigmasDenoise",
                       "inputs": {"sigmas": ["sched", 0], "denoise": 0.25}},
             "end": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sched", 0], "step": 8}},
             "none": basic_scheduler(denoise=0.0),
             "unchanged": custom(["end", 1], ["init", 0]),
             "unchanged2": custom(["none", 0], ["init", 0])}
    high, low, init, same, same2 = captured(session, graph, ["split", 0], ["split", 1],
                                            ["init", 0], ["unchanged", 0], ["unchanged2", 0])
    assert (high.start, high.stop, low.start, low.stop) == (0, 6, 6, 8)
    assert len(high.sigmas()) == 7 and len(low.sigmas()) == 3
    assert torch.equal(high.sigmas()[-1], low.sigmas()[0])
    assert torch.equal(same.samples, init.samples) and torch.equal(same2.samples, init.samples)


# --- SD-Turbo ---------------------------------------------------------------------------------


def turbo_graph(sampler: str, steps: int, *, denoise: float = 1.0, seed: int = 4,
                latent: str = "empty") -> dict:
    graph = {**base(64, 64), "select": select(sampler),
             "turbo": {"class_type": "SDTurboScheduler",
                       "inputs": {"model": ["ckpt", 0], "steps": steps, "denoise": denoise}},
             "custom": custom(["turbo", 0], [latent, 0], cfg=1.0, seed=seed),
             "decode": {"class_type": "VAEDecode",
                        "inputs": {"samples": ["custom", 0], "vae": ["ckpt", 2]}}}
    return graph


def test_sd_turbo_one_step_equals_diffusers(session, tiny_model_paths):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    (image,) = captured(session, turbo_graph("euler_ancestral", 1), ["decode", 0])
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_paths["diffusers"], local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                 timestep_spacing="trailing")
    ref = pipe(PROMPT, num_inference_steps=1, guidance_scale=1.0, height=64, width=64,
               output_type="np", generator=torch.Generator("cpu").manual_seed(4)).images
    assert pipe.scheduler.timesteps.tolist() == [999]
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert np.abs(image.cpu().numpy() - ref).max() <= 1e-4


def test_sd_turbo_timesteps(session):
    from nodes.diffusion.sampling import prepare_timesteps

    graph = turbo_graph("euler_ancestral", 4)
    graph["half"] = {**graph["turbo"], "inputs": {**graph["turbo"]["inputs"], "denoise": 0.5}}
    four, half, latent = captured(session, graph, ["turbo", 0], ["half", 0], ["custom", 0])
    assert four.timesteps == (999, 899, 799, 699)
    assert half.timesteps == (499, 399, 299, 199)
    # the sampler runs exactly these, and their noise levels are the model's, then 0
    scheduler = four.make_scheduler("euler_ancestral")
    params = four.params(seed=0, cfg=1.0, add_noise=True)
    timesteps, first = prepare_timesteps(scheduler, params.steps, params.denoise, "cpu",
                                         params.start_step, params.end_step, params.timesteps)
    assert timesteps.tolist() == [999, 899, 799, 699] and first == 0
    alphas = scheduler.alphas_cumprod[[999, 899, 799, 699]]
    expected = torch.cat([((1 - alphas) / alphas) ** 0.5, torch.zeros(1)])
    assert torch.allclose(four.sigmas(), expected.float(), rtol=1e-5)
    assert torch.isfinite(latent.samples).all()


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "ddpm"])
def test_sd_turbo_runs_with_custom_timestep_samplers(session, sampler):
    graph = turbo_graph(sampler, 3, denoise=0.7, latent="init")
    out, init = captured(session, graph, ["custom", 0], ["init", 0])
    assert torch.isfinite(out.samples).all() and max_diff(out, init) > 1e-3


# --- errors and schema ------------------------------------------------------------------------


def test_bad_inputs_are_refused(session):
    def refused(graph: dict, where: str) -> None:
        graph["out"] = {"class_type": "TestCapture", "inputs": {"value": ["custom", 0]}}
        with pytest.raises(PromptValidationError) as raised:
            session.validate(graph)
        found = [f"{i.class_type}.{i.input_name}" for i in raised.value.issues]
        assert found == [where], raised.value

    refused({**base(), "select": select("euler"), "sched": basic_scheduler(steps=0),
             "custom": custom(["sched", 0], ["empty", 0])}, "BasicScheduler.steps")
    refused(turbo_graph("euler", 11), "SDTurboScheduler.steps")
    refused({**base(), "select": select("euler"), "sched": basic_scheduler(),
             "custom": custom(["sched", 0], ["empty", 0], cfg=101.0)}, "SamplerCustom.cfg")
    refused({**base(), "select": select("euler_a"), "sched": basic_scheduler(),
             "custom": custom(["sched", 0], ["empty", 0])}, "KSamplerSelect.sampler_name")
    graph = {**base(), "select": select("euler"), "sched": basic_scheduler(),
             "custom": custom(["pos", 0], ["empty", 0])}  # a CONDITIONING as SIGMAS
    refused(graph, "SamplerCustom.sigmas")


def test_sampler_without_custom_timesteps_is_a_clear_error(session):
    graph = turbo_graph("ddim", 2)
    graph["out"] = {"class_type": "TestCapture", "inputs": {"value": ["custom", 0]}}
    result = session.run(graph)
    assert result.run.status == "error"
    message = result.run.error["exception_message"]
    assert "'ddim' cannot run SDTurboScheduler's timesteps" in message
    assert "euler_ancestral" in message


def test_comfyui_schema():
    from nodes.custom_sampling import NODE_CLASSES

    by_type = {cls.TYPE: cls for cls in NODE_CLASSES}
    sampler = by_type["SamplerCustom"]
    assert list(sampler.INPUT_SPECS) == ["model", "add_noise", "noise_seed", "cfg", "positive",
                                         "negative", "sampler", "sigmas", "latent_image"]
    assert [(o.type, o.name) for o in sampler.OUTPUTS] == [("LATENT", "output"),
                                                           ("LATENT", "denoised_output")]
    assert sampler.INPUT_SPECS["add_noise"].default is True
    assert [o.type for o in by_type["SamplerCustomAdvanced"].OUTPUTS] == ["LATENT", "LATENT"]
    assert list(by_type["SamplerCustomAdvanced"].INPUT_SPECS) == [
        "noise", "guider", "sampler", "sigmas", "latent_image"]
    turbo = by_type["SDTurboScheduler"].INPUT_SPECS["steps"]
    assert (turbo.default, turbo.min, turbo.max) == (1, 1, 10)
    assert [o.name for o in by_type["SplitSigmas"].OUTPUTS] == ["high_sigmas", "low_sigmas"]
    for name, out in (("KSamplerSelect", "SAMPLER"), ("BasicScheduler", "SIGMAS"),
                      ("RandomNoise", "NOISE"), ("DisableNoise", "NOISE"),
                      ("BasicGuider", "GUIDER"), ("CFGGuider", "GUIDER")):
        assert [o.type for o in by_type[name].OUTPUTS] == [out]
