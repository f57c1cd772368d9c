"""A file named through a link is checked as one typed in: replaced on disk, the nodes that
read it run again (the engine drill: Load Image, Load LoRA and embeddings fed by a String
primitive stayed cached with the old file)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from PIL import Image

from engine import ExecutionContext, Input, Node, Output
from tests.graph_nodes import CAPTURED


class Names(Node):
    """Comma-separated names as a list (mapped over downstream)."""

    TYPE = "TestNames"
    OUTPUTS = (Output("STRING", is_list=True),)
    text: str = Input("STRING")

    def execute(self, ctx: ExecutionContext) -> tuple[list[str]]:
        return (self.text.split(","),)


@pytest.fixture(scope="module", autouse=True)
def _names(session):
    session.executor.registry.register(Names, replace=True)


def _ran(result) -> set[str]:
    return set(result.run.executed)


def _image_prompt(key: str, *, linked: bool = True, listed: bool = False) -> dict:
    if listed:
        source = {"class_type": "TestNames", "inputs": {"text": "b.png,linked.png"}}
    else:
        source = {"class_type": "PrimitiveString", "inputs": {"value": "linked.png"}}
    return {
        "1": source,
        "2": {"class_type": "LoadImage", "inputs": {"image": ["1", 0] if linked else "linked.png"}},
        "3": {"class_type": "TestCapture", "inputs": {"value": ["2", 0], "key": key}},
    }


def _write(path, value: int) -> None:
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_a_linked_image_name_reads_the_file_replaced_in_place(session):
    folder = session.env.folder("input", create=True)
    _write(folder / "linked.png", 10)
    key = uuid.uuid4().hex
    first = session.run(_image_prompt(key))
    assert first.ok, first.run.error
    assert CAPTURED.pop(key).mean() == pytest.approx(10 / 255, abs=1e-6)

    again = session.run(_image_prompt(key))  # nothing changed: all from the cache
    assert again.ok and _ran(again) == set()
    assert key not in CAPTURED

    _write(folder / "linked.png", 200)
    third = session.run(_image_prompt(key))
    assert third.ok, third.run.error
    assert _ran(third) == {"2", "3"}  # the primitive did not change; the file did
    assert CAPTURED.pop(key).mean() == pytest.approx(200 / 255, abs=1e-6)


def test_the_first_run_is_signed_as_the_next_one_is(session):
    """A source not yet cached makes the signature provisional: signed again before the
    node runs, so the run after it finds the node's result (no second run for nothing)."""
    _write(session.env.folder("input", create=True) / "linked.png", 30)
    key, token = uuid.uuid4().hex, uuid.uuid4().hex
    prompt = _image_prompt(key)
    # the name comes from nodes never run before: unknown when the prompt is signed
    prompt["0"] = {"class_type": "PrimitiveString", "inputs": {"value": token}}
    prompt["1"] = {"class_type": "StringReplace", "inputs": {
        "string": ["0", 0], "find": token, "replace": "linked.png"}}
    first = session.run(prompt)
    assert first.ok, first.run.error
    assert _ran(first) == {"0", "1", "2", "3"}
    assert CAPTURED.pop(key).mean() == pytest.approx(30 / 255, abs=1e-6)
    second = session.run(prompt)
    assert second.ok and _ran(second) == set()
    _write(session.env.folder("input") / "linked.png", 90)
    third = session.run(prompt)
    assert third.ok and _ran(third) == {"2", "3"}
    assert CAPTURED.pop(key).mean() == pytest.approx(90 / 255, abs=1e-6)


def test_a_list_of_linked_names_checks_each_file(session):
    folder = session.env.folder("input", create=True)
    _write(folder / "b.png", 50)
    _write(folder / "linked.png", 60)
    key = uuid.uuid4().hex
    first = session.run(_image_prompt(key, listed=True))
    assert first.ok, first.run.error
    CAPTURED.pop(key, None)
    _write(folder / "b.png", 70)
    second = session.run(_image_prompt(key, listed=True))
    assert second.ok, second.run.error
    assert "2" in _ran(second)


@pytest.mark.parametrize("type_id", ["CreateHookModelAsLora", "CreateHookModelAsLoraModelOnly"])
def test_a_hook_checkpoint_is_read_again_when_replaced_and_a_pickle_refused(tmp_path, type_id):
    """Create Hook Model as LoRA had no fingerprint: a checkpoint replaced in place kept the
    old weights' hook (the engine drill), and a pickle was not refused before running."""
    from engine import Environment
    from nodes import hooks

    cls = getattr(hooks, type_id)
    env = Environment.create(tmp_path, device="cpu")
    folder = env.folder("models", "checkpoints", create=True)
    (folder / "other.safetensors").write_bytes(b"a" * 10)
    before = cls.fingerprint({"ckpt_name": "other.safetensors"}, env)
    (folder / "other.safetensors").write_bytes(b"b" * 12)
    assert before is not None
    assert cls.fingerprint({"ckpt_name": "other.safetensors"}, env) != before
    (folder / "old.ckpt").write_bytes(b"\x80\x02}q\x00.")
    problems = cls.validate_inputs({"ckpt_name": "old.ckpt"}, env)
    assert problems and "pickle" in problems[0][1]
