"""Save Checkpoint: a model with a LoRA (and a merge) baked in is written as one
single-file checkpoint that Load Checkpoint reads back to the same image."""

from __future__ import annotations

import shutil
import uuid

import numpy as np
import pytest

from engine.validation import PromptValidationError
from tests.graph_nodes import run_error
from tests.test_lora import lora_prompt, loras, run_image, session  # noqa: F401


def with_save(prompt: dict, prefix: str) -> dict:
    prompt["30"] = {"class_type": "CheckpointSave", "inputs": {
        "model": prompt["3"]["inputs"]["model"], "clip": prompt["6"]["inputs"]["clip"],
        "vae": ["4", 2], "filename_prefix": prefix}}
    return prompt


def test_a_lora_and_a_merge_baked_in_load_back_to_the_same_image(session, models_dir):  # noqa: F811
    prompt = with_save(lora_prompt(("a_kohya.safetensors", 0.8, 0.7)), "checkpoints/baked")
    # merge with the plain model too (ModelMergeSimple: 70% the LoRA'd one)
    prompt["25"] = {"class_type": "ModelMergeSimple", "inputs": {
        "model1": ["20", 0], "model2": ["4", 0], "ratio": 0.7}}
    prompt["3"]["inputs"]["model"] = ["25", 0]
    prompt["30"]["inputs"]["model"] = ["25", 0]
    result = session.run(prompt)
    assert result.ok, result.run.error
    in_graph = run_image(session, {**prompt, "10": {**prompt["10"], "inputs": {
        **prompt["10"]["inputs"], "key": uuid.uuid4().hex}}})
    (entry,) = result.run.outputs["30"]["checkpoints"]
    assert entry["subfolder"] == "checkpoints" and entry["filename"].endswith("_.safetensors")
    saved = session.env.folder("output") / "checkpoints" / entry["filename"]
    name = f"baked-{uuid.uuid4().hex[:6]}.safetensors"
    target = models_dir / "checkpoints" / name
    shutil.copy(saved, target)
    try:
        plain = lora_prompt()
        plain["4"]["inputs"]["ckpt_name"] = name
        loaded = run_image(session, plain)
    finally:
        target.unlink()
    print(f"in graph vs saved and loaded: {np.abs(in_graph - loaded).max():.2e}")
    assert np.abs(in_graph - loaded).max() <= 1e-4
    base = run_image(session, lora_prompt())
    assert np.abs(base - loaded).max() > 1e-3  # the LoRA is in the file


def test_textual_inversion_words_and_bad_prefixes_are_refused(session):  # noqa: F811
    prompt = with_save(lora_prompt(), "../outside/x")
    with pytest.raises(PromptValidationError):
        session.validate(prompt)
    prompt = with_save(lora_prompt(), "checkpoints/ti")
    prompt["40"] = {"class_type": "TrainTextualInversion", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2], "images": ["41", 0],
        "captions": "a <tok>", "placeholder_token": "<tok>", "initializer_token": "square",
        "num_vectors": 1, "learning_rate": 1e-3, "steps": 1, "batch_size": 1, "seed": 0,
        "resolution": 32, "gradient_checkpointing": False, "save_name": ""}}
    prompt["41"] = {"class_type": "EmptyImage", "inputs": {
        "width": 32, "height": 32, "batch_size": 1, "color": 0xFF0000}}
    prompt["30"]["inputs"]["clip"] = ["40", 0]
    assert "textual inversion" in run_error(session, prompt)
