"""Loaders refuse pickle files at validation, before anything runs, unless opted in."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.environment import Environment
from engine.registry import NodeRegistry
from engine.validation import Issue, PromptValidationError, validate_prompt
from nodes import controlnet, lora, models

PICKLES = (".ckpt", ".pt", ".pth", ".bin")


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    registry = NodeRegistry()
    for module in (models, lora, controlnet):
        registry.add_module(module)
    return registry


def node_issues(registry: NodeRegistry, env: Environment, node: dict) -> list[Issue]:
    """The ``node_error`` issues of a one-node prompt (validated as if it were an output)."""
    try:
        validate_prompt({"1": node}, registry, env, outputs=["1"])
    except PromptValidationError as exc:
        return [i for i in exc.issues if i.kind == "node_error"]
    return []


def make_env(tmp_path: Path, allow_pickle: bool = False) -> Environment:
    return Environment.create(tmp_path, device="cpu", allow_pickle=allow_pickle)


LOADERS = (
    ("CheckpointLoaderSimple", "ckpt_name", "checkpoints"),
    ("ControlNetLoader", "control_net_name", "controlnet"),
)


@pytest.mark.parametrize(("class_type", "input_name", "folder"), LOADERS)
@pytest.mark.parametrize("suffix", PICKLES)
def test_pickle_model_file_refused_at_validation(registry, tmp_path, class_type, input_name,
                                                 folder, suffix):
    env = make_env(tmp_path)
    name = f"model{suffix.upper() if suffix == '.ckpt' else suffix}"  # suffixes match any case
    env.folder("models", folder, create=True).joinpath(name).write_bytes(b"not read")
    node = {"class_type": class_type, "inputs": {input_name: name}}

    (issue,) = node_issues(registry, env, node)
    assert issue.input_name == input_name
    assert issue.message == (f"{name} is a pickle file; convert it to .safetensors or opt in "
                             "to loading pickles (--allow-pickle)")
    assert node_issues(registry, make_env(tmp_path, allow_pickle=True), node) == []


@pytest.mark.parametrize(("class_type", "input_name", "folder"), LOADERS)
def test_safetensors_and_folders_pass(registry, tmp_path, class_type, input_name, folder):
    env = make_env(tmp_path)
    root = env.folder("models", folder, create=True)
    (root / "model.safetensors").write_bytes(b"not read")
    marker = "model_index.json" if folder == "checkpoints" else "config.json"
    (root / "odd.bin").mkdir()  # a diffusers folder: its weights are checked on loading
    (root / "odd.bin" / marker).write_text("{}")
    for name in ("model.safetensors", "odd.bin"):
        node = {"class_type": class_type, "inputs": {input_name: name}}
        assert node_issues(registry, env, node) == [], name


def test_lora_pickle_refused_with_the_same_message(registry, tmp_path):
    env = make_env(tmp_path)
    env.folder("models", "checkpoints", create=True).joinpath("m.safetensors").write_bytes(b"")
    env.folder("models", "loras", create=True).joinpath("style.pt").write_bytes(b"not read")
    prompt = {"1": {"class_type": "CheckpointLoaderSimple",
                    "inputs": {"ckpt_name": "m.safetensors"}},
              "2": {"class_type": "LoraLoaderModelOnly",
                    "inputs": {"model": ["1", 0], "lora_name": "style.pt", "strength_model": 1.0}}}
    with pytest.raises(PromptValidationError) as caught:
        validate_prompt(prompt, registry, env, outputs=["2"])
    (issue,) = [i for i in caught.value.issues if i.kind == "node_error"]
    assert issue.input_name == "lora_name"
    assert issue.message == ("style.pt is a pickle file; convert it to .safetensors or opt in "
                             "to loading pickles (--allow-pickle)")


def test_pickle_suffixes_match_the_loaders():
    """Validation refuses exactly what the loaders refuse without the opt-in."""
    from nodes.diffusion import loading
    from nodes.diffusion import lora as lora_files

    assert set(models.PICKLE_SUFFIXES) == set(loading.PICKLE_SUFFIXES)
    assert set(models.PICKLE_SUFFIXES) == set(lora_files.PICKLE_SUFFIXES)
