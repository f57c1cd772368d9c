"""Save Latent / Load Latent: ComfyUI's .latent format (safetensors) round-trips; the old
format is rescaled; bad files are refused with a clear message."""

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
    # a second save takes the next number; no temporary file is left behind
    again = save_prompt()
    again["ks"]["inputs"]["seed"] = 4
    assert session.run(again).ok
    CAPTURED.pop("saved")
    assert sorted(p.name for p in path.parent.iterdir()) == ["test_00001_.latent",
                                                             "test_00002_.latent"]
    shutil.copy(path, session.env.folder("input", create=True) / "mine.latent")
    assert session.run(load_prompt("mine.latent", "loaded")).ok
    assert torch.equal(CAPTURED.pop("loaded").samples, saved)


def test_the_first_format_is_read_unscaled(session):
    samples = torch.randn(1, 4, 4, 6)
    save_file({"latent_tensor": samples * 0.18215},
              str(session.env.folder("input", create=True) / "old.latent"))
    assert session.run(load_prompt("old.latent", "old")).ok
    assert torch.allclose(CAPTURED.pop("old").samples, samples, atol=1e-6)


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
