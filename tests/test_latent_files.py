"""Save Latent / Load Latent: ComfyUI's .latent format (safetensors, raw VAE latents)
round-trips; files move between ComfyUI's raw latents and Steerflow's scaled ones by the
VAE's factor; the old formats are read as they were written; bad files are refused with a
clear message."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.session import Session
from engine.validation import PromptValidationError
from tests.graph_nodes import CAPTURED, registry_with_capture


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("latent-files")
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


def save_prompt(prefix: str = "latents/test") -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red square",
                                                           "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": 48, "height": 32, "batch_size": 2}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["pos", 0],
            "latent_image": ["latent", 0], "denoise": 1.0}},
        "save": {"class_type": "SaveLatent",
                 "inputs": {"samples": ["ks", 0], "filename_prefix": prefix}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["ks", 0], "key": "saved"}},
    }


def load_prompt(name: str, key: str) -> dict:
    return {"load": {"class_type": "LoadLatent", "inputs": {"latent": name}},
            "cap": {"class_type": "TestCapture", "inputs": {"value": ["load", 0], "key": key}}}


def test_saved_latents_load_back_exactly(session):
    result = session.run(save_prompt())
    assert result.ok, result.run.error
    saved = CAPTURED.pop("saved").samples
    entry = result.run.outputs["save"]["latents"][0]
    assert entry == {"filename": "test_00001_.latent", "subfolder": "latents",
                     "type": "output"}
    path = session.env.folder("output") / "latents" / "test_00001_.latent"
    with safe_open(str(path), "pt") as fh:
        assert set(fh.keys()) == {"latent_tensor", "latent_format_version_0"}
        assert json.loads(fh.metadata()["prompt"])["save"]["class_type"] == "SaveLatent"
        # ComfyUI's raw latents: ours divided by the checkpoint VAE's factor
        assert float(fh.metadata()["steerflow_scaling_factor"]) == 0.18215
        assert torch.allclose(fh.get_tensor("latent_tensor"), saved.cpu() / 0.18215,
                              atol=1e-6)
    # a second save takes the next number; no temporary file is left behind
    again = save_prompt()
    again["ks"]["inputs"]["seed"] = 4
    assert session.run(again).ok
    CAPTURED.pop("saved")
    assert sorted(p.name for p in path.parent.iterdir()) == ["test_00001_.latent",
                                                             "test_00002_.latent"]
    shutil.copy(path, session.env.folder("input", create=True) / "mine.latent")
    assert session.run(load_prompt("mine.latent", "loaded")).ok
    loaded = CAPTURED.pop("loaded")
    assert torch.allclose(loaded.samples, saved, atol=1e-6)
    assert loaded.scaling_factor == 0.18215


def write_input(session, name: str, samples: torch.Tensor, *, marker: bool = True,
                metadata: dict[str, str] | None = None) -> None:
    tensors = {"latent_tensor": samples}
    if marker:
        tensors["latent_format_version_0"] = torch.tensor([])
    save_file(tensors, str(session.env.folder("input", create=True) / name),
              metadata=metadata)


def with_vae(prompt: dict, vae_name: str) -> dict:
    prompt["vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}}
    prompt["load"]["inputs"]["vae"] = ["vae", 0]
    return prompt


@pytest.fixture(scope="module")
def odd_vae(session, models_dir):
    """The tiny VAE with another scaling factor (as SDXL's or the built-in model's)."""
    from nodes.diffusion.tiny import TINY_NAME

    folder = models_dir / "vae" / "odd-vae"
    if not folder.exists():
        shutil.copytree(models_dir / "checkpoints" / TINY_NAME / "vae", folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.5}))
    return "odd-vae"


def test_comfyui_files_hold_raw_latents(session, odd_vae):
    raw = torch.randn(1, 4, 4, 6)
    write_input(session, "comfy.latent", raw)
    result = session.run(load_prompt("comfy.latent", "sd"))
    assert result.ok  # no VAE said: SD 1.x's factor, with a warning
    assert torch.allclose(CAPTURED.pop("sd").samples, raw * 0.18215, atol=1e-6)
    assert session.run(with_vae(load_prompt("comfy.latent", "odd"), odd_vae)).ok
    odd = CAPTURED.pop("odd")
    assert torch.allclose(odd.samples, raw * 0.5, atol=1e-6) and odd.scaling_factor == 0.5


def test_saving_uses_the_vae_the_latents_came_from(session, odd_vae):
    """VAE Encode's latents know their VAE: the file holds them divided by its factor."""
    prompt = {
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": odd_vae}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24,
                                                       "batch_size": 1, "color": 0x3366CC}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0],
                                                      "vae": ["vae", 0]}},
        "save": {"class_type": "SaveLatent",
                 "inputs": {"samples": ["enc", 0], "filename_prefix": "latents/odd"}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["enc", 0], "key": "enc"}},
    }
    assert session.run(prompt).ok
    encoded = CAPTURED.pop("enc").samples.cpu()
    entry = session.env.folder("output") / "latents" / "odd_00001_.latent"
    with safe_open(str(entry), "pt") as fh:
        assert torch.allclose(fh.get_tensor("latent_tensor"), encoded / 0.5, atol=1e-6)


def test_the_first_format_stored_sd_scaled_latents(session, odd_vae):
    """ComfyUI's first format held raw x 0.18215: SD 1.x's scaled latents as they are,
    another VAE's rescaled."""
    stored = torch.randn(1, 4, 4, 6)
    write_input(session, "old.latent", stored, marker=False)
    assert session.run(load_prompt("old.latent", "old")).ok
    assert torch.allclose(CAPTURED.pop("old").samples, stored, atol=1e-6)
    assert session.run(with_vae(load_prompt("old.latent", "old_odd"), odd_vae)).ok
    assert torch.allclose(CAPTURED.pop("old_odd").samples, stored / 0.18215 * 0.5, atol=1e-5)


def test_files_steerflow_wrote_before_recording_the_factor_load_unchanged(session):
    ours = torch.randn(1, 4, 4, 6)
    document = {"format": "steerflow.workflow", "version": 1, "prompt": {}}
    write_input(session, "ours-old.latent", ours,
                metadata={"prompt": "{}", "workflow": json.dumps(document)})
    assert session.run(load_prompt("ours-old.latent", "ours")).ok
    assert torch.equal(CAPTURED.pop("ours").samples, ours)


@pytest.mark.parametrize(("content", "message"), [
    (b"not a safetensors file at all", "not a safetensors latent file"),
    ({"something_else": torch.zeros(1, 4, 2, 2)}, "no 'latent_tensor'"),
    ({"latent_tensor": torch.zeros(4, 2, 2)}, "not latents"),
    ({"latent_tensor": torch.full((1, 4, 2, 2), float("nan"))}, "NaN"),
])
def test_bad_files_are_refused(session, content, message):
    name = f"bad-{uuid.uuid4().hex[:6]}.latent"
    path = session.env.folder("input", create=True) / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        save_file(content, str(path))
    result = session.run(load_prompt(name, "bad"))
    assert result.run.status == "error"
    assert message in result.run.error["exception_message"]


def test_names_outside_the_folders_are_refused(session):
    with pytest.raises(PromptValidationError):
        session.validate(load_prompt("../escape.latent", "x"))
    with pytest.raises(PromptValidationError):
        session.validate(save_prompt("../../outside/x"))


def test_saves_work_without_hard_links_and_never_replace_a_file(tmp_path, monkeypatch):
    from nodes import output_files

    (tmp_path / "x_00001_.bin").write_text("a user's file")

    def no_links(src, dst):
        raise PermissionError("no hard links on this file system")

    monkeypatch.setattr(output_files.os, "link", no_links)
    path, after = output_files.save_numbered(tmp_path, "x", ".bin",
                                             lambda tmp: tmp.write_text("new"), number=1)
    assert path.name == "x_00002_.bin" and after == 3 and path.read_text() == "new"
    assert (tmp_path / "x_00001_.bin").read_text() == "a user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_00001_.bin", "x_00002_.bin"]


def test_latents_that_decode_to_nan_are_an_error_not_a_black_picture(session):
    """A finite but absurd latent (1e30) made VAE Decode return NaN, which the clamp
    turned into a black image reported as a success."""
    name = f"huge-{uuid.uuid4().hex[:6]}.latent"
    path = session.env.folder("input", create=True) / name
    save_file({"latent_tensor": torch.full((1, 4, 4, 6), 1e30)}, str(path))
    prompt = {"ckpt": {"class_type": "CheckpointLoaderSimple",
                       "inputs": {"ckpt_name": "steerflow-tiny"}},
              "load": {"class_type": "LoadLatent", "inputs": {"latent": name}},
              "dec": {"class_type": "VAEDecode",
                      "inputs": {"samples": ["load", 0], "vae": ["ckpt", 2]}},
              "cap": {"class_type": "TestCapture", "inputs": {"value": ["dec", 0]}}}
    result = session.run(prompt)
    assert result.run.status == "error"
    assert "decoded NaN or infinite pixels" in result.run.error["exception_message"]
    assert result.run.error["node_id"] == "dec"
