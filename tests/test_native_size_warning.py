"""The sampler warns once when an empty latent is far larger than the model's native size
(the canvas drill: 512x512 on the 64x64 default model took 80 s and drew specks)."""

from __future__ import annotations

import pytest

from nodes.diffusion.builtin_models import TINY_NAME


def graph(width: int, height: int, denoise: float = 1.0, panorama: bool = False) -> dict:
    """The tiny model (sample_size 8 at an 8x VAE: 64x64 pixels), one Euler step."""
    model = ["pano", 0] if panorama else ["ckpt", 0]
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_NAME}},
        "pos": {"class_type": "CLIPTextEncode",
                "inputs": {"clip": ["ckpt", 1], "text": "a red circle"}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": width, "height": height, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["pos", 0],
            "latent_image": ["latent", 0], "denoise": denoise}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["ks", 0], "key": "x"}},
    }
    if panorama:
        prompt["pano"] = {"class_type": "MultiDiffusionPanorama",
                          "inputs": {"model": ["ckpt", 0], "stride": 8}}
    return prompt


def warnings(session, prompt: dict) -> list[dict]:
    from tests.graph_nodes import CAPTURED

    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    CAPTURED.clear()
    return [d for name, d in result.events if name == "node_warning"]


def test_a_latent_far_above_the_native_size_warns_once(session):
    [warning] = warnings(session, graph(256, 256))
    assert warning["node"] == "ks"
    assert warning["message"] == (
        "this model was trained at 64x64; 256x256 is 4x that per side: expect repeated, "
        "broken or missing subjects (Empty Latent Image's size sets it)")
    [warning] = warnings(session, graph(64, 320))
    assert "64x320 is 5x that on one side" in warning["message"]


def with_area(prompt: dict) -> dict:
    """ComfyUI's area composition: a second prompt on a box of the wide canvas."""
    prompt["side"] = {"class_type": "CLIPTextEncode",
                      "inputs": {"clip": ["ckpt", 1], "text": "a blue square"}}
    prompt["area"] = {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["side", 0], "width": 64, "height": 64, "x": 128, "y": 0,
        "strength": 1.0}}
    prompt["both"] = {"class_type": "ConditioningCombine",
                      "inputs": {"conditioning_1": ["pos", 0], "conditioning_2": ["area", 0]}}
    prompt["ks"]["inputs"].update(positive=["both", 0], cfg=2.0)  # regions need CFG
    return prompt


@pytest.mark.parametrize("case", ["native", "twice", "img2img", "panorama", "area"])
def test_no_warning_where_the_size_is_fine_or_set_otherwise(session, case):
    """Up to twice the native size (a hires fix's second pass), an img2img (the image
    sets the composition), MultiDiffusion (windows of the native size) and region prompts
    (ComfyUI's area composition) draw well."""
    prompt = {"native": graph(64, 64), "twice": graph(128, 128),
              "img2img": graph(256, 256, denoise=0.5),
              "panorama": graph(256, 64, panorama=True),
              "area": with_area(graph(256, 64))}[case]
    assert warnings(session, prompt) == []


def test_a_model_that_states_no_size_is_not_judged():
    from types import SimpleNamespace

    import torch

    from nodes.diffusion.handles import Latent
    from nodes.diffusion.sampling import SamplingParams, native_size_warning

    unet = SimpleNamespace(config=SimpleNamespace(in_channels=4))
    model = SimpleNamespace(unet=unet)
    latent = Latent(torch.zeros(1, 4, 64, 64), downscale=8)
    assert native_size_warning(model, latent, SamplingParams(0, 1, 1.0), []) is None
    unet.config.sample_size = 8
    assert "trained at 64x64; 512x512 is 8x" in native_size_warning(
        model, latent, SamplingParams(0, 1, 1.0), [])
    unet.config.sample_size = (8, 16)  # (height, width), as diffusers may give it
    assert "trained at 128x64; 512x512 is 8x that on one side" in native_size_warning(
        model, latent, SamplingParams(0, 1, 1.0), [])
    # a control image sets the layout (ControlNet, T2I-Adapter, GLIGEN's boxes)
    from nodes.diffusion.controlnet import ControlNetResiduals
    from nodes.diffusion.gligen import GLIGENGrounding
    from nodes.diffusion.t2i_adapter import T2IAdapterFeatures

    for control in (ControlNetResiduals, T2IAdapterFeatures, GLIGENGrounding):
        assert native_size_warning(model, latent, SamplingParams(0, 1, 1.0),
                                   [control.__new__(control)]) is None
    wider = Latent(torch.zeros(1, 4, 64, 131), downscale=8)  # 2.05x: not shown as "2x"
    unet.config.sample_size = 64
    assert "is 2.05x that on one side" in native_size_warning(
        model, wider, SamplingParams(0, 1, 1.0), [])
