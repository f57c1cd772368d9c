"""Every example in workflows/ runs as shipped on a fresh base folder (set-up included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.session import Session, Workflow
from engine.validation import PromptValidationError

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def fresh_session(tmp_path_factory):
    # no models_dir: the built-in set-up creates the default model, ControlNet and
    # example inputs exactly as on a user's first run
    return Session(tmp_path_factory.mktemp("fresh"), device="cpu")


def test_there_are_examples():
    names = {p.stem for p in WORKFLOWS}
    assert {"txt2img", "sega", "controlnet", "lora", "img2img", "inpaint",
            "ddim_inversion", "prompt_weighting", "combined"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_runs(fresh_session, path):
    wf = Workflow.load(path)
    assert wf.document is not None and wf.document.get("extra", {}).get("description")
    if wf.document["extra"].get("requires_models"):
        # weights users supply (SDXL): refused before anything runs, naming the inputs;
        # tests/test_sdxl.py runs the example on tiny stand-ins under those names
        with pytest.raises(PromptValidationError, match="ckpt_name"):
            fresh_session.validate(wf)
        return
    for node_id, node in wf.prompt.items():
        for name in ("steps", "num_inversion_steps", "class_steps", "num_class_images"):
            # a linked count (a sampler taking an inversion's steps) follows its source
            if isinstance(node.get("inputs", {}).get(name), int):
                wf.set(f"{node_id}.{name}", 3)  # the same for sampler and inversion
    result = fresh_session.run(wf)
    assert result.ok, result.run.error
    assert result.image_paths and all(p.is_file() for p in result.image_paths)
