"""Empty Latent Image without its ``vae`` assumes SD's 8x VAE; decoding with another VAE
warns (a ``node_warning`` event, printed by the CLI) and names the fix."""

from __future__ import annotations

import json

from engine.session import Session
from steerflow.cli import main


def graph(link_vae: bool) -> dict:
    latent = {"width": 64, "height": 64, "batch_size": 1}
    if link_vae:
        latent["vae"] = ["ckpt", 2]
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-shapes"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": latent},
        "decode": {"class_type": "VAEDecode",
                   "inputs": {"samples": ["latent", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }


def captured_run(session: Session, prompt: dict, key: str):
    """The decoded image (through a TestCapture node) and the run's warnings."""
    from tests.graph_nodes import CAPTURED

    prompt["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["decode", 0],
                                                             "key": key}}
    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    return CAPTURED.pop(key), [d for name, d in result.events if name == "node_warning"]


def test_decoding_an_8x_latent_with_a_4x_vae_warns_and_names_the_fix(tmp_path):
    session = Session(tmp_path, device="cpu")
    result = session.run(graph(link_vae=False), keep_events=True)
    assert result.ok, result.run.error
    warnings = [d for name, d in result.events if name == "node_warning"]
    assert len(warnings) == 1 and warnings[0]["node"] == "decode"
    message = warnings[0]["message"]
    assert "4x" in message and "32x32 instead of 64x64" in message
    assert "vae input" in message
    # linked as the fix says: no warning
    fixed = session.run(graph(link_vae=True), keep_events=True)
    assert fixed.ok and not [d for name, d in fixed.events if name == "node_warning"]


def test_the_cli_prints_run_time_warnings(tmp_path, capsys):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(graph(link_vae=False)))
    assert main(["run", str(path), "--base-dir", str(tmp_path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: node decode:" in err and "Empty Latent Image" in err


def test_a_sampler_remakes_an_empty_8x_latent_for_the_models_4x_vae(tmp_path):
    """ComfyUI graphs never link a VAE into Empty Latent Image: on the built-in 4x model a
    64x64 request made a 32x32 picture. The sampler remakes the (all-zero) latent for the
    checkpoint's VAE; the picture is 64x64, and nothing warns."""
    import torch

    from tests.graph_nodes import CAPTURED, registry_with_capture

    session = Session(tmp_path, device="cpu", registry=registry_with_capture())
    prompt = graph(link_vae=False)
    prompt["pos"] = {"class_type": "CLIPTextEncode",
                     "inputs": {"clip": ["ckpt", 1], "text": "a red circle"}}
    prompt["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["ckpt", 0], "seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
        "scheduler": "normal", "positive": ["pos", 0], "negative": ["pos", 0],
        "latent_image": ["latent", 0], "denoise": 1.0}}
    prompt["decode"]["inputs"]["samples"] = ["ks", 0]
    image, warnings = captured_run(session, prompt, "refit")
    assert tuple(image.shape) == (1, 64, 64, 3) and not warnings
    # the same as linking the VAE in the first place
    prompt["latent"]["inputs"]["vae"] = ["ckpt", 2]
    prompt["cap"]["inputs"]["key"] = "linked"
    assert session.run(prompt).ok
    linked = CAPTURED.pop("linked")
    session.run({**prompt, "latent": graph(False)["latent"],
                 "cap": {"class_type": "TestCapture",
                         "inputs": {"value": ["decode", 0], "key": "again"}}})
    assert torch.equal(CAPTURED.pop("again"), linked)


def test_ddim_invert_remakes_an_empty_latent_made_without_its_vae(tmp_path):
    """As the sampler does: inverting an Empty Latent Image sized for an 8x VAE on the
    built-in model (4x) failed with a raw torch.stack size error."""
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-shapes"}},
        "text": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "invert": {"class_type": "DDIMInvert",
                   "inputs": {"model": ["ckpt", 0], "positive": ["text", 0],
                              "latent": ["latent", 0], "steps": 2, "cfg": 1.0}},
        "pick": {"class_type": "LatentFromTrajectory",
                 "inputs": {"trajectory": ["invert", 1], "start_at_step": 0}},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["pick", 0]}},
    }
    result = Session(tmp_path, device="cpu").run(prompt)
    assert result.ok, result.run.error


def test_hires_fix_and_areas_on_the_4x_model_use_its_downscale_without_a_vae_link(tmp_path):
    """ComfyUI's hires fix (Upscale Latent with no vae, as every ComfyUI graph has it) on
    the built-in 4x model: the sampled latent knows its VAE, so 128x96 is 128x96 (it was
    a 64x48 picture); an unlinked Conditioning Set Area is divided the same way."""
    from tests.graph_nodes import registry_with_capture

    session = Session(tmp_path, device="cpu", registry=registry_with_capture())
    prompt = graph(link_vae=False)
    prompt["pos"] = {"class_type": "CLIPTextEncode",
                     "inputs": {"clip": ["ckpt", 1], "text": "a red circle"}}
    sampler = {"model": ["ckpt", 0], "seed": 3, "steps": 2, "cfg": 5.0,
               "sampler_name": "euler", "scheduler": "normal", "positive": ["pos", 0],
               "negative": ["pos", 0], "latent_image": ["latent", 0], "denoise": 1.0}
    prompt["ks"] = {"class_type": "KSampler", "inputs": sampler}
    prompt["up"] = {"class_type": "LatentUpscale", "inputs": {
        "samples": ["ks", 0], "upscale_method": "nearest-exact", "width": 128, "height": 96,
        "crop": "disabled"}}
    prompt["area"] = {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["pos", 0], "width": 64, "height": 48, "x": 64, "y": 48,
        "strength": 1.0}}
    prompt["both"] = {"class_type": "ConditioningCombine", "inputs": {
        "conditioning_1": ["pos", 0], "conditioning_2": ["area", 0]}}
    prompt["ks2"] = {"class_type": "KSampler", "inputs": {
        **sampler, "latent_image": ["up", 0], "denoise": 0.5, "positive": ["both", 0]}}
    prompt["decode"]["inputs"]["samples"] = ["ks2", 0]
    image, warnings = captured_run(session, prompt, "hires")
    assert tuple(image.shape) == (1, 96, 128, 3) and not warnings


def test_an_unlinked_area_is_divided_by_the_runs_downscale():
    from nodes.diffusion.combine import resolve_area

    area = ("pixels", 48, 64, 48, 64)  # Conditioning Set Area without its vae
    assert resolve_area(area, (24, 32), downscale=4) == (12, 24, 16, 32)
    assert resolve_area(area, (12, 16)) == (6, 12, 8, 16)  # SD's 8, as ComfyUI
