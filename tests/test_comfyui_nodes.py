"""A prompt as ComfyUI exports it (API format, its core node types and input names) runs."""

from __future__ import annotations

import pytest

from engine.session import Session

COMFY_PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-shapes"}},
    "10": {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": "steerflow-shapes-night.safetensors",
        "strength_model": 0.7, "strength_clip": 0.7}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["10", 1]}},
    "16": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue sky", "clip": ["10", 1]}},
    "17": {"class_type": "ConditioningCombine",
           "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["16", 0]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["10", 1]}},
    "11": {"class_type": "ControlNetLoader",
           "inputs": {"control_net_name": "steerflow-shapes-controlnet"}},
    "12": {"class_type": "LoadImage", "inputs": {"image": "controlnet_control.png",
                                                 "upload": "image"}},
    "13": {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["17", 0], "negative": ["7", 0], "control_net": ["11", 0],
        "image": ["12", 0], "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}},
    "20": {"class_type": "LoadImage", "inputs": {"image": "steerflow_example_hole.png"}},
    "21": {"class_type": "VAEEncodeForInpaint", "inputs": {
        "pixels": ["20", 0], "vae": ["4", 2], "mask": ["20", 1], "grow_mask_by": 6}},
    "3": {"class_type": "KSampler", "inputs": {
        "model": ["10", 0], "seed": 156680208700286, "steps": 3, "cfg": 8.0,
        "sampler_name": "dpmpp_2m_sde_gpu", "scheduler": "karras", "positive": ["13", 0],
        "negative": ["13", 1], "latent_image": ["21", 0], "denoise": 1.0}},
    "30": {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["4", 2]}},
    "31": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["30", 0],
                                                         "mask": ["20", 1]}},
    "32": {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["10", 0], "add_noise": "enable", "noise_seed": 5, "steps": 4, "cfg": 6.0,
        "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0],
        "negative": ["7", 0], "latent_image": ["31", 0], "start_at_step": 1,
        "end_at_step": 10000, "return_with_leftover_noise": "disable"}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI",
                                                "images": ["8", 0]}},
    "33": {"class_type": "VAEDecode", "inputs": {"samples": ["32", 0], "vae": ["4", 2]}},
    "34": {"class_type": "PreviewImage", "inputs": {"images": ["33", 0]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                       "batch_size": 2}},
    "35": {"class_type": "KSampler", "inputs": {
        "model": ["4", 0], "seed": 1, "steps": 2, "cfg": 7.0, "sampler_name": "uni_pc",
        "scheduler": "simple", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0], "denoise": 1.0}},
    "36": {"class_type": "VAEDecode", "inputs": {"samples": ["35", 0], "vae": ["4", 2]}},
    "37": {"class_type": "PreviewImage", "inputs": {"images": ["36", 0]}},
}


@pytest.fixture
def session(tmp_path):
    return Session(tmp_path, device="cpu")  # the built-in set-up provides every file


def test_comfyui_core_node_prompt_runs(session):
    types = {node["class_type"] for node in COMFY_PROMPT.values()}
    assert len(types) == 16
    result = session.run(COMFY_PROMPT)
    assert result.ok, result.run.error
    kinds = sorted(item["type"] for ui in result.run.outputs.values() for item in ui["images"])
    assert kinds == ["output", "temp", "temp", "temp"]  # the last sampler made a batch of 2


def test_unknown_comfyui_sampler_is_a_validation_error(session):
    from engine import PromptValidationError

    prompt = {k: v for k, v in COMFY_PROMPT.items()}
    inputs = {**prompt["3"]["inputs"], "sampler_name": "dpm_adaptive"}  # not one of ours
    prompt["3"] = {**prompt["3"], "inputs": inputs}
    with pytest.raises(PromptValidationError) as info:
        session.validate(prompt)
    assert [i.kind for i in info.value.issues if i.severity == "error"] == ["not_in_choices"]
