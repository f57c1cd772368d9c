"""Load Image Batch (a folder and/or a list of annotated names → IMAGE, MASK, captions) and
the annotated image names Load Image shares with it ("x.png [output]", ...)."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from engine import PromptValidationError
from engine.session import Session
from nodes import image_batch
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    for role in ("input", "output", "temp"):
        (home / role).mkdir()
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


def put(session, role: str, rel: str, size=(16, 12), color=(255, 0, 0), alpha: int | None = None
        ) -> str:
    path = session.env.folder(role) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if alpha is None:
        Image.new("RGB", size, color).save(path)
    else:
        Image.new("RGBA", size, (*color, alpha)).save(path)
    return rel


def batch_prompt(**inputs) -> tuple[dict, str]:
    key = uuid.uuid4().hex
    base = {"folder": "", "images": "", "size": "resize", "caption_template": "{caption}"}
    prompt = {
        "b": {"class_type": "LoadImageBatch", "inputs": {**base, **inputs}},
        "ci": {"class_type": "TestCapture", "inputs": {"value": ["b", 0], "key": key + "i"}},
        "cm": {"class_type": "TestCapture", "inputs": {"value": ["b", 1], "key": key + "m"}},
        "cc": {"class_type": "TestCapture", "inputs": {"value": ["b", 2], "key": key + "c"}},
    }
    return prompt, key


def run_batch(session, **inputs) -> tuple[torch.Tensor, torch.Tensor, str]:
    prompt, key = batch_prompt(**inputs)
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key + "i"), CAPTURED.pop(key + "m"), CAPTURED.pop(key + "c")


def validation_messages(session, prompt) -> list[tuple[str, str | None, str]]:
    with pytest.raises(PromptValidationError) as info:
        session.run(prompt)
    return [(i.kind, i.input_name, i.message) for i in info.value.issues if i.severity == "error"]


# --- loading ----------------------------------------------------------------------------------

def test_folder_then_lines_with_captions_and_alpha_masks(session):
    put(session, "input", "set1/b.png", color=(0, 0, 255))
    put(session, "input", "set1/a.png", color=(255, 0, 0), alpha=0)  # fully transparent
    (session.env.folder("input") / "set1" / "a.txt").write_text("a red\nthing\n")
    (session.env.folder("input") / "set1" / "notes.txt").write_text("not an image")
    put(session, "output", "runs/c.png", color=(0, 255, 0))
    put(session, "temp", "d.png", color=(255, 255, 255))
    images, masks, captions = run_batch(
        session, folder="set1", images="runs/c.png [output]\n\n  d.png [temp]  \n",
        caption_template="{name}: {caption}")
    assert images.shape == (4, 12, 16, 3) and masks.shape == (4, 12, 16)
    # the folder's images sorted by name, then the lines in order
    assert images[:, 0, 0].tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 1, 1]]
    assert masks[:, 0, 0].tolist() == [1, 0, 0, 0]  # mask = 1 - alpha, as Load Image
    assert captions.split("\n") == ["a: a red thing", "b:", "c:", "d:"]


@pytest.mark.parametrize("mode", ["resize", "center_crop"])
def test_other_sizes_are_fitted_to_the_first(session, mode):
    put(session, "input", f"fit_{mode}/1.png", size=(16, 12))
    wide = session.env.folder("input") / f"fit_{mode}" / "2.png"
    arr = np.zeros((12, 48, 3), np.uint8)
    arr[:, 16:32] = (0, 0, 255)  # blue middle third, red sides
    arr[:, :16] = arr[:, 32:] = (255, 0, 0)
    Image.fromarray(arr).save(wide)
    images, masks, _ = run_batch(session, folder=f"fit_{mode}", size=mode)
    assert images.shape == (2, 12, 16, 3) and masks.shape == (2, 12, 16)
    second = images[1]
    if mode == "center_crop":  # scaled to cover 16x12 (already 12 high), the middle kept
        assert second[:, 2:-2].mean(dim=(0, 1)).tolist() == pytest.approx([0, 0, 1], abs=0.02)
    else:  # squeezed: the three thirds all still there
        assert second[:, 0, 0] == pytest.approx(1, abs=0.02)
        assert second[:, 8, 2] == pytest.approx(1, abs=0.02)


def test_refuse_names_both_sizes(session):
    put(session, "input", "mixed/1.png", size=(16, 12))
    put(session, "input", "mixed/2.png", size=(20, 12))
    prompt, _ = batch_prompt(folder="mixed", size="refuse")
    message = run_error(session, prompt)
    assert "16x12" in message and "20x12" in message and "refuse" in message


def test_edited_files_rerun_the_node(session):
    name = put(session, "input", "edit_me.png", color=(255, 0, 0))
    assert run_batch(session, images=name)[0][0, 0, 0].tolist() == [1, 0, 0]
    put(session, "input", "edit_me.png", color=(0, 255, 0))
    assert run_batch(session, images=name)[0][0, 0, 0].tolist() == [0, 1, 0]
    (session.env.folder("input") / "edit_me.txt").write_text("now captioned")
    assert run_batch(session, images=name)[2] == "now captioned"


# --- errors -----------------------------------------------------------------------------------

def test_no_images_is_a_validation_error(session):
    (session.env.folder("input") / "empty").mkdir()
    for inputs in ({}, {"folder": "empty"}, {"images": "\n  \n"}):
        prompt, _ = batch_prompt(**inputs)
        (issue,) = validation_messages(session, prompt)
        assert issue[:2] == ("node_error", "images") and "no images" in issue[2]


def test_missing_files_and_folders_are_validation_errors(session):
    put(session, "input", "there.png")
    prompt, _ = batch_prompt(images="there.png\nnope.png [output]")
    (issue,) = validation_messages(session, prompt)
    assert issue[1] == "images" and "line 2" in issue[2] and "output folder" in issue[2]
    prompt, _ = batch_prompt(folder="no_such_folder")
    (issue,) = validation_messages(session, prompt)
    assert issue[1] == "folder" and "no_such_folder" in issue[2]


@pytest.mark.parametrize("line", ["../secret.png", "/etc/passwd", "../../x.png [output]",
                                  "sub/../../x.png [temp]", "escape.png"])
def test_traversal_is_refused(session, tmp_path_factory, line):
    outside = tmp_path_factory.mktemp("outside")
    Image.new("RGB", (4, 4)).save(outside / "secret.png")
    link = session.env.folder("input") / "escape.png"
    if not link.exists():
        os.symlink(outside / "secret.png", link)
    prompt, _ = batch_prompt(images=line)
    (issue,) = validation_messages(session, prompt)
    assert issue[1] == "images" and "line 1" in issue[2]
    assert "escapes" in issue[2] or "absolute" in issue[2]


def test_symlinks_out_of_a_folder_and_folder_escapes_are_refused(session, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside2")
    Image.new("RGB", (4, 4)).save(outside / "secret.png")
    put(session, "input", "linked/ok.png")
    os.symlink(outside / "secret.png", session.env.folder("input") / "linked" / "z.png")
    for folder in ("linked", "../", "/tmp"):
        prompt, _ = batch_prompt(folder=folder)
        (issue,) = validation_messages(session, prompt)
        assert issue[1] == "folder" and ("escapes" in issue[2] or "absolute" in issue[2])


def test_unreadable_file_is_a_clear_error(session):
    (session.env.folder("input") / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    prompt, _ = batch_prompt(images="broken.png")
    assert "'broken.png' is not a readable image" in run_error(session, prompt)

    from tests.test_utility_nodes import _png_header

    (session.env.folder("input") / "bomb.png").write_bytes(_png_header(20000, 20000))
    prompt, _ = batch_prompt(images="bomb.png")
    assert "'bomb.png' is not a readable image: it has 400000000 pixels" in run_error(
        session, prompt)


def test_bounds_on_count_and_pixels(session, monkeypatch):
    folder = session.env.folder("input") / "many"
    folder.mkdir()
    for k in range(image_batch.MAX_IMAGES + 1):
        Image.new("RGB", (1, 1)).save(folder / f"{k:03d}.png")
    prompt, _ = batch_prompt(folder="many")
    (issue,) = validation_messages(session, prompt)
    assert "257 images" in issue[2] and "256" in issue[2]
    put(session, "input", "big/1.png", size=(16, 12))
    put(session, "input", "big/2.png", size=(16, 12))
    monkeypatch.setattr(image_batch, "MAX_TOTAL_PIXELS", 300)
    prompt, _ = batch_prompt(folder="big")
    assert "384 pixels" in run_error(session, prompt)


# --- Load Image's annotated names -------------------------------------------------------------

def load_image(session, name: str) -> torch.Tensor:
    key = uuid.uuid4().hex
    result = session.run({
        "l": {"class_type": "LoadImage", "inputs": {"image": name}},
        "c": {"class_type": "TestCapture", "inputs": {"value": ["l", 0], "key": key}}})
    assert result.ok, result.run.error
    return CAPTURED.pop(key)


def test_load_image_takes_annotated_names(session):
    put(session, "output", "made/out.png", color=(0, 255, 0))
    put(session, "temp", "prev.png", color=(0, 0, 255))
    put(session, "input", "in.png", color=(255, 0, 0))
    assert load_image(session, "made/out.png [output]")[0, 0, 0].tolist() == [0, 1, 0]
    assert load_image(session, "prev.png [temp]")[0, 0, 0].tolist() == [0, 0, 1]
    assert load_image(session, "in.png [input]")[0, 0, 0].tolist() == [1, 0, 0]
    # edits re-run it: the fingerprint follows the annotated file
    put(session, "output", "made/out.png", color=(255, 255, 0))
    assert load_image(session, "made/out.png [output]")[0, 0, 0].tolist() == [1, 1, 0]


@pytest.mark.parametrize("name", [
    "out_only.png",               # a plain name is still one of the input folder's files
    "missing.png [output]",       # annotated, but no such file
    "../input/in.png [output]",   # annotated escape
    "made [output]",              # a folder, not a file
])
def test_load_image_refuses_what_is_not_there(session, name):
    put(session, "output", "out_only.png")
    put(session, "output", "made/x.png")
    put(session, "input", "in.png")
    prompt = {"l": {"class_type": "LoadImage", "inputs": {"image": name}},
              "c": {"class_type": "TestCapture", "inputs": {"value": ["l", 0]}}}
    (issue,) = validation_messages(session, prompt)
    assert issue[:2] == ("not_in_choices", "image")


def test_load_image_choices_stay_the_input_folder(session):
    put(session, "output", "never_listed.png")
    choices = session.registry.get("LoadImage").schema(session.env)["input"]["required"]["image"][0]
    assert choices and all("[" not in c for c in choices) and "never_listed.png" not in choices


# --- into FABRIC ------------------------------------------------------------------------------

def test_batch_into_fabric_equals_load_image_and_image_batch(session):
    """LoadImageBatch → FABRICFeedback → KSampler on the tiny model gives exactly what the
    same images through Load Image + Batch Images give."""
    if session.registry.get("FABRICFeedback") is None:
        pytest.skip("nodes/fabric.py is not registered")
    rng = np.random.default_rng(0)
    names = []
    for k in range(2):
        small = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
        rel = f"fab/liked{k}.png"
        path = session.env.folder("output") / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(small).resize((64, 64), Image.BILINEAR).save(path)
        names.append(f"{rel} [output]")

    def prompt(liked: dict) -> tuple[dict, str]:
        key = uuid.uuid4().hex
        p = {
            "4": {"class_type": "CheckpointLoaderSimple",
                  "inputs": {"ckpt_name": "steerflow-tiny"}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a circle",
                                                             "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                               "batch_size": 1}},
            "20": {"class_type": "FABRICFeedback", "inputs": {
                "model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2], "liked": ["L", 0],
                "max_weight": 2.0, "feedback_start_ratio": 0.0}},
            "3": {"class_type": "KSampler", "inputs": {
                "model": ["20", 0], "seed": 5, "steps": 3, "cfg": 5.0, "sampler_name": "ddim",
                "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
                "latent_image": ["5", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "c": {"class_type": "TestCapture", "inputs": {"value": ["8", 0], "key": key}},
            **liked,
        }
        return p, key

    def run(p: tuple[dict, str]) -> torch.Tensor:
        result = session.run(p[0])
        assert result.ok, result.run.error
        return CAPTURED.pop(p[1])

    batch = run(prompt({"L": {"class_type": "LoadImageBatch",
                              "inputs": {"images": "\n".join(names)}}}))
    singles = run(prompt({
        "a": {"class_type": "LoadImage", "inputs": {"image": names[0]}},
        "b": {"class_type": "LoadImage", "inputs": {"image": names[1]}},
        "L": {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["b", 0]}}}))
    assert batch.shape == (1, 64, 64, 3)
    assert torch.equal(batch, singles)
    plain = prompt({"L": {"class_type": "LoadImageBatch", "inputs": {"images": names[0]}}})
    assert (run(plain) - batch).abs().max() > 1e-3  # the second liked image counts
