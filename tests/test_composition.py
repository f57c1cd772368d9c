"""Every steering technique in ONE sampler run on the default model, each still acting.

The graph is ``workflows/combined.json`` (SEGA + ControlNet + LoRA + an inpainting
mask) with Self-Attention Guidance and Perturbed-Attention Guidance on the model and
Attend-and-Excite encoding the positive prompt. Taking any one technique out must
change the result: none of them is silently overridden by the others.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import torch

from engine.session import Session, Workflow
from tests.graph_nodes import CAPTURED, registry_with_capture

STEPS = 6


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(tmp_path_factory.mktemp("composition"), device="cpu",
                   registry=registry_with_capture())


def all_techniques() -> dict:
    prompt = Workflow.load("workflows/combined.json").set("3.steps", STEPS).prompt
    prompt["50"] = {"class_type": "SelfAttentionGuidance",
                    "inputs": {"model": ["20", 0], "scale": 0.75, "blur_sigma": 1.0}}
    prompt["51"] = {"class_type": "PerturbedAttentionGuidance",
                    "inputs": {"model": ["50", 0], "scale": 3.0, "layers": "mid"}}
    prompt["3"]["inputs"]["model"] = ["51", 0]
    prompt["52"] = {"class_type": "AttendAndExcite", "inputs": {
        "clip": ["30", 1], "text": prompt["6"]["inputs"]["text"], "words": "circle",
        "max_iter_to_alter": 3, "thresholds": "0:0.05, 1:0.5, 2:0.8", "scale_factor": 200.0}}
    prompt["13"]["inputs"]["positive"] = ["52", 0]
    return prompt


def _bypass(node: str, to: list) -> Callable[[dict], None]:
    def edit(prompt: dict) -> None:
        for other in prompt.values():
            for name, value in other["inputs"].items():
                if value == [node, 0]:
                    other["inputs"][name] = list(to)
    return edit


def _drop_lora(prompt: dict) -> None:
    _bypass("30", ["4", 0])(prompt)
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if value == ["30", 1]:
                node["inputs"][name] = ["4", 1]


def _drop_controlnet(prompt: dict) -> None:
    prompt["3"]["inputs"]["positive"] = ["52", 0]
    prompt["3"]["inputs"]["negative"] = ["7", 0]


DROPS: dict[str, Callable[[dict], None]] = {
    "sega": _bypass("20", ["30", 0]),
    "sag": _bypass("50", ["20", 0]),
    "pag": _bypass("51", ["50", 0]),
    "attend_excite": _bypass("52", ["6", 0]),
    "controlnet": _drop_controlnet,
    "lora": _drop_lora,
    "mask": lambda p: p["3"]["inputs"].update(latent_image=["41", 0]),
}


def run(session: Session, prompt: dict) -> torch.Tensor:
    key = uuid.uuid4().hex
    prompt = {**prompt, "cap": {"class_type": "TestCapture",
                                "inputs": {"value": ["3", 0], "key": key}}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).samples


@pytest.mark.slow
def test_each_technique_still_acts_in_one_run(session):
    everything = run(session, all_techniques())
    assert torch.isfinite(everything).all()
    for name, drop in DROPS.items():
        prompt = all_techniques()
        drop(prompt)
        without = run(session, prompt)
        assert (everything - without).abs().max() > 1e-3, f"{name} did not act"
