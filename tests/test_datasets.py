"""ComfyUI's dataset nodes (nodes_dataset.py) through real prompts: the folder loaders and
savers (confinement, limits, naming) and the list semantics from a loader through the
per-item and whole-list nodes (the nodes alone: tests/test_dataset_transforms.py)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine import ExecutionContext, Input, Node, NodeResult, PromptValidationError
from engine.session import Session
from nodes import dataset_folders
from nodes.dataset_folders import input_subfolders, repeats_of
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error


class ListCapture(Node):
    """Keeps the whole list it receives in ``CAPTURED[key]`` (an output node)."""

    TYPE = "TestListCapture"
    OUTPUT_NODE = True
    INPUT_IS_LIST = True
    value: Any = Input(type="*")
    key: str = Input("list")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        CAPTURED[self.key[0]] = list(self.value)
        return NodeResult((), {"captured": [self.key[0]]})


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    for role in ("input", "output", "temp", "models"):
        (home / role).mkdir()
    registry = registry_with_capture()
    registry.register(ListCapture)
    return Session(home, models_dir=home / "models", device="cpu", registry=registry)


def fresh(session) -> Session:
    """A new session on the same folders (its own cache: output nodes run again)."""
    return Session(session.env.folder("input").parent, models_dir=session.env.folder("models"),
                   device="cpu", registry=session.registry)


def put(session, rel: str, size=(16, 12), color=(255, 0, 0), caption: str | None = None,
        role: str = "input") -> None:
    path = session.env.folder(role) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def captured_lists(session, prompt: dict, *keys: str) -> list[list]:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return [CAPTURED.pop(k) for k in keys]


def capture(node: str, index: int, key: str) -> dict:
    return {"class_type": "TestListCapture", "inputs": {"value": [node, index], "key": key}}


def validation_messages(session, prompt) -> list[tuple[str | None, str]]:
    with pytest.raises(PromptValidationError) as info:
        session.run(prompt)
    return [(i.input_name, i.message) for i in info.value.issues if i.severity == "error"]


# --- loading ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kohya(session) -> str:
    """input/kohya: two images with captions, a 2_cats subfolder (repeated twice), a plain
    subfolder, a hidden file and a stray text file."""
    put(session, "kohya/b.png", (8, 6), (0, 0, 255), caption="  a blue thing \n")
    put(session, "kohya/a.png", (10, 4), (255, 0, 0))  # no caption
    put(session, "kohya/2_cats/cat.png", (5, 5), (0, 255, 0), caption="a cat")
    put(session, "kohya/extra/e.png", (3, 7), (255, 255, 255), caption="extra")
    put(session, "kohya/.hidden.png", (3, 3), (1, 2, 3))
    (session.env.folder("input") / "kohya" / "notes.txt").write_text("not a caption")
    return "kohya"


def test_image_text_folder_with_kohya_repeats_through_a_prompt(session, kohya):
    key = uuid.uuid4().hex
    prompt = {
        "load": {"class_type": "LoadImageTextDataSetFromFolder", "inputs": {"folder": kohya}},
        "pre": {"class_type": "AddTextPrefix", "inputs": {"texts": ["load", 1],
                                                          "prefix": "sks, "}},
        "ci": capture("load", 0, key + "i"),
        "ct": capture("pre", 0, key + "t"),
    }
    images, texts = captured_lists(session, prompt, key + "i", key + "t")
    # name order: 2_cats (x2), a.png, b.png, extra/ — each image [1, H, W, 3] at its own size
    assert [tuple(i.shape) for i in images] == [(1, 5, 5, 3), (1, 5, 5, 3), (1, 4, 10, 3),
                                               (1, 6, 8, 3), (1, 7, 3, 3)]
    assert [i[0, 0, 0].tolist() for i in images] == [[0, 1, 0], [0, 1, 0], [1, 0, 0],
                                                     [0, 0, 1], [1, 1, 1]]
    # AddTextPrefix ran once per caption, in order; captions are stripped, "" when missing
    assert texts == ["sks, a cat", "sks, a cat", "sks, ", "sks, a blue thing", "sks, extra"]


def test_image_folder_ignores_subfolders(session, kohya):
    key = uuid.uuid4().hex
    prompt = {"load": {"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": kohya}},
              "c": capture("load", 0, key)}
    (images,) = captured_lists(session, prompt, key)
    assert [tuple(i.shape[1:3]) for i in images] == [(4, 10), (6, 8)]


def test_kohya_repeat_names():
    assert [repeats_of(n) for n in ("10_cat", "3", "cat", "x_10", "1a_b", "0_none")] == [
        10, 3, 1, 1, 1, 0]


def test_folder_choices_are_every_subfolder_confined(session, kohya, tmp_path):
    (session.env.folder("input") / ".cache" / "x").mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, session.env.folder("input") / "escape")
    os.symlink(session.env.folder("input") / "kohya", session.env.folder("input") / "alias")
    folders = input_subfolders(session.env)
    assert {"kohya", "kohya/2_cats", "kohya/extra", "alias"} <= set(folders)
    assert folders == sorted(folders)
    assert not any(f.startswith(".") or f.startswith("escape") for f in folders)
    schema = session.registry.get("LoadImageDataSetFromFolder").schema(session.env)
    assert schema["input"]["required"]["folder"][0] == folders
    (session.env.folder("input") / "escape").unlink()
    (session.env.folder("input") / "alias").unlink()


def test_a_folder_out_of_the_choices_or_empty_is_refused(session, tmp_path):
    (session.env.folder("input") / "empty").mkdir(exist_ok=True)
    load = {"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": "empty"}}
    messages = validation_messages(session, {"l": load, "c": capture("l", 0, "x")})
    assert any(name == "folder" and "has no images" in msg for name, msg in messages)
    for bad in ("../", "/etc", "nope"):
        load = {"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": bad}}
        messages = validation_messages(session, {"l": load, "c": capture("l", 0, "x")})
        assert any(name == "folder" for name, _ in messages), bad


def test_a_symlink_out_of_input_inside_the_folder_is_refused(session, tmp_path):
    put(session, "leaky/ok.png")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(secret)
    os.symlink(secret, session.env.folder("input") / "leaky" / "z.png")
    load = {"class_type": "LoadImageTextDataSetFromFolder", "inputs": {"folder": "leaky"}}
    messages = validation_messages(session, {"l": load, "c": capture("l", 0, "x")})
    assert any(name == "folder" and "escapes" in msg for name, msg in messages)


def test_image_and_pixel_limits(session, monkeypatch):
    put(session, "pixels/a.png", (10, 4))
    put(session, "pixels/b.png", (8, 6))
    load = {"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": "pixels"}}
    monkeypatch.setattr(dataset_folders, "MAX_IMAGES", 1)
    messages = validation_messages(session, {"l": load, "c": capture("l", 0, "x")})
    assert any("the most that load at once is 1" in msg for _, msg in messages)
    monkeypatch.setattr(dataset_folders, "MAX_IMAGES", 256)
    monkeypatch.setattr(dataset_folders, "MAX_TOTAL_PIXELS", 50)  # 40 + 48 pixels
    message = run_error(session, {"l": load, "c": capture("l", 0, "x")})
    assert "88 pixels, over the 50" in message


def test_repeats_past_the_list_limit_are_refused(session, monkeypatch):
    put(session, "many/3_x/a.png")
    monkeypatch.setattr(dataset_folders, "MAX_LIST_ITEMS", 2)
    load = {"class_type": "LoadImageTextDataSetFromFolder", "inputs": {"folder": "many"}}
    messages = validation_messages(session, {"l": load, "c": capture("l", 0, "x")})
    assert any("more than 2 images" in msg and "'3_x': 3x1" in msg for _, msg in messages)


def test_edited_captions_rerun_the_loader(session):
    put(session, "edit/a.png", caption="one")
    key = uuid.uuid4().hex
    prompt = {"l": {"class_type": "LoadImageTextDataSetFromFolder", "inputs": {"folder": "edit"}},
              "c": capture("l", 1, key)}
    assert captured_lists(session, prompt, key) == [["one"]]
    (session.env.folder("input") / "edit" / "a.txt").write_text("two")
    assert captured_lists(session, prompt, key) == [["two"]]


# --- saving ----------------------------------------------------------------------------------

def save_prompt(texts: bool = True, **inputs) -> dict:
    base = {"images": ["l", 0], "folder_name": "ds", "filename_prefix": "image",
            "mode": "overwrite", **({"texts": ["l", 1]} if texts else {})}
    base.update(inputs)
    return {"l": {"class_type": "LoadImageTextDataSetFromFolder", "inputs": {"folder": "tosave"}},
            "s": {"class_type": "SaveImageTextDataSetToFolder", "inputs": base}}


@pytest.fixture(scope="module")
def tosave(session) -> None:
    put(session, "tosave/a.png", (4, 2), (255, 0, 0), caption="red")
    put(session, "tosave/b.png", (2, 3), (0, 0, 255), caption="blue")


def test_save_overwrite_names_and_replaces_saying_so(session, tosave):
    result = session.run(save_prompt(folder_name="ow"))
    assert result.ok, result.run.error
    folder = session.env.folder("output") / "ow"
    assert sorted(p.name for p in folder.iterdir()) == [
        "image_00000.png", "image_00000.txt", "image_00001.png", "image_00001.txt"]
    assert (folder / "image_00001.txt").read_text() == "blue"
    assert np.asarray(Image.open(folder / "image_00000.png")).tolist() == [[[255, 0, 0]] * 4] * 2
    ui = result.run.outputs["s"]
    assert [f["filename"] for f in ui["images"]] == ["image_00000.png", "image_00001.png"]
    assert ui["images"][0]["subfolder"] == "ow" and "replaced" not in ui["text"][0]
    (folder / "image_00000.txt").write_text("old")
    result = session.run(save_prompt(folder_name="ow"))  # cached: nothing written again
    assert (folder / "image_00000.txt").read_text() == "old"
    result = fresh(session).run(save_prompt(folder_name="ow"))
    assert result.ok and "replaced 4 existing files" in result.run.outputs["s"]["text"][0]
    assert (folder / "image_00000.txt").read_text() == "red"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_save_increment_never_replaces(session, tosave):
    for _ in range(2):
        assert fresh(session).run(save_prompt(folder_name="inc", mode="increment",
                                              filename_prefix="cap")).ok
    folder = session.env.folder("output") / "inc"
    (folder / "cap_00003_00000.png").write_bytes(b"a user's file")
    assert fresh(session).run(save_prompt(folder_name="inc", mode="increment",
                                          filename_prefix="cap", texts=False)).ok
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["cap_00001_00000.png", "cap_00001_00000.txt", "cap_00001_00001.png",
                     "cap_00001_00001.txt", "cap_00002_00000.png", "cap_00002_00000.txt",
                     "cap_00002_00001.png", "cap_00002_00001.txt", "cap_00003_00000.png",
                     "cap_00004_00000.png", "cap_00004_00001.png"]
    assert (folder / "cap_00003_00000.png").read_bytes() == b"a user's file"
    assert (folder / "cap_00002_00001.txt").read_text() == "blue"


def test_save_image_dataset_writes_images_only(session, tosave):
    prompt = save_prompt(texts=False, folder_name="sets/plain")
    prompt["s"]["class_type"] = "SaveImageDataSetToFolder"
    assert session.run(prompt).ok
    folder = session.env.folder("output") / "sets" / "plain"
    assert sorted(p.name for p in folder.iterdir()) == ["image_00000.png", "image_00001.png"]


def test_save_splits_batches_and_saves_one_file_per_image(session):
    key = "batch" + uuid.uuid4().hex[:6]
    put(session, f"{key}/a.png", (4, 4), (0, 255, 0))
    prompt = {"l": {"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": key}},
              "b": {"class_type": "RepeatImageBatch", "inputs": {"image": ["l", 0],
                                                                 "amount": 3}},
              "s": {"class_type": "SaveImageDataSetToFolder", "inputs": {
                  "images": ["b", 0], "folder_name": key, "filename_prefix": "x",
                  "mode": "overwrite"}}}
    assert session.run(prompt).ok
    assert len(list((session.env.folder("output") / key).iterdir())) == 3


@pytest.mark.parametrize(("inputs", "name", "needle"), [
    ({"folder_name": "../up"}, "folder_name", "escapes"),
    ({"folder_name": "/tmp/x"}, "folder_name", "absolute"),
    ({"folder_name": "  "}, "folder_name", "empty"),
    ({"folder_name": "."}, "folder_name", "output/ itself"),
    ({"filename_prefix": "a/b"}, "filename_prefix", "folder separator"),
    ({"filename_prefix": "x" * 300}, "filename_prefix", "shorten it"),
    ({"mode": "append"}, "mode", "append"),
])
def test_save_targets_are_checked_before_the_run(session, tosave, inputs, name, needle):
    messages = validation_messages(session, save_prompt(**inputs))
    assert any(n == name and needle in m for n, m in messages), messages


def test_save_refuses_a_symlink_out_of_output(session, tosave, tmp_path):
    os.symlink(tmp_path, session.env.folder("output") / "link")
    messages = validation_messages(session, save_prompt(folder_name="link/ds"))
    assert any(n == "folder_name" and "escapes" in m for n, m in messages)
    assert not list(tmp_path.iterdir())


def test_save_with_texts_of_another_count_is_an_error(session, tosave):
    prompt = save_prompt(texts=False, folder_name="mismatch")
    prompt["t"] = {"class_type": "PrimitiveString", "inputs": {"value": "only one"}}
    prompt["s"]["inputs"]["texts"] = ["t", 0]
    message = run_error(session, prompt)
    assert "2 images but 1 texts" in message
    assert not (session.env.folder("output") / "mismatch").exists()


def test_text_list_through_a_prompt(session, kohya):
    key = uuid.uuid4().hex
    prompt = {
        "l": {"class_type": "LoadImageTextDataSetFromFolder", "inputs": {"folder": kohya}},
        "u": {"class_type": "TextToUppercase", "inputs": {"texts": ["l", 1]}},
        "t": {"class_type": "TruncateText", "inputs": {"texts": ["u", 0], "max_length": 3}},
        "m": {"class_type": "MergeTextLists", "inputs": {"texts": ["t", 0]}},
        "c": capture("m", 0, key),
    }
    assert captured_lists(session, prompt, key) == [["A C", "A C", "", "A B", "EXT"]]


def put_halves(session, rel: str, size: tuple[int, int], left: bool) -> None:
    path = session.env.folder("input") / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size)
    w, h = size
    image.paste((255, 255, 255), (0, 0, w // 2, h) if left else (0, 0, w, h // 2))
    image.save(path)


def test_image_list_through_a_prompt_to_a_grid(session):
    put_halves(session, "halves/2_x/l.png", (16, 16), left=True)
    put_halves(session, "halves/l2.png", (32, 16), left=True)  # the same picture, wider
    put_halves(session, "halves/t.png", (16, 8), left=False)
    key = uuid.uuid4().hex
    prompt = {
        "l": {"class_type": "LoadImageTextDataSetFromFolder", "inputs": {"folder": "halves"}},
        "r": {"class_type": "ResizeImagesByShorterEdge", "inputs": {"images": ["l", 0],
                                                                    "shorter_edge": 8}},
        "d": {"class_type": "ImageDeduplication", "inputs": {"images": ["r", 0],
                                                             "similarity_threshold": 1.0}},
        "g": {"class_type": "ImageGrid", "inputs": {"images": ["d", 0], "columns": 2,
                                                    "cell_width": 32, "cell_height": 32,
                                                    "padding": 0}},
        "cd": capture("d", 0, key + "d"),
        "cg": {"class_type": "TestCapture", "inputs": {"value": ["g", 0], "key": key + "g"}},
    }
    result = session.run(prompt)
    assert result.ok, result.run.error
    kept = CAPTURED.pop(key + "d")
    # each image resized on its own (a list, not a batch: sizes differ); the repeat of l
    # and the wider copy l2 are dropped as duplicates of l
    assert [tuple(i.shape[1:3]) for i in kept] == [(8, 8), (8, 16)]
    assert kept[0][0, 0, 0].tolist() == [1, 1, 1] and kept[1][0, -1, 0].tolist() == [0, 0, 0]
    grid = CAPTURED.pop(key + "g")
    assert grid.shape == (1, 32, 64, 3)  # two columns, one row
    assert grid[0, 0, 0].tolist() == [1, 1, 1] and grid[0, 0, 31].tolist() == [0, 0, 0]
