"""Installing the built-in models: a newer shipped file replaces the installed copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.test_ip2p_training import toy  # noqa: F401  (the toy shipped model)


def _shipped_again(path: Path) -> None:
    """Re-write a shipped file with one tensor changed, as a retrained model would be."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    key = sorted(tensors)[-1]
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(path), metadata=metadata)


def test_a_newer_shipped_model_is_installed_again(toy, tmp_path, monkeypatch):  # noqa: F811
    from nodes.diffusion import builtin_models
    from nodes.diffusion.builtin_models import (
        SHAPES_NAME,
        STAMP_FILE,
        installed_stamp,
        is_installed,
        shipped_stamp,
    )
    from nodes.diffusion.shapes_model import ensure_shapes_model

    weights = tmp_path / "weights"
    shutil.copytree(toy["weights"], weights)
    monkeypatch.setattr(builtin_models, "WEIGHTS_DIR", weights)
    models = tmp_path / "models"
    folder = ensure_shapes_model(models)
    first = shipped_stamp(SHAPES_NAME)
    assert installed_stamp(folder) == first
    assert is_installed(models, "checkpoints", SHAPES_NAME, first)
    single = models / "checkpoints" / f"{SHAPES_NAME}.safetensors"
    before = single.read_bytes()
    assert ensure_shapes_model(models) == folder and single.read_bytes() == before  # kept

    _shipped_again(weights / f"{SHAPES_NAME}.safetensors")
    second = shipped_stamp(SHAPES_NAME)
    assert second != first
    assert not is_installed(models, "checkpoints", SHAPES_NAME, second)
    ensure_shapes_model(models)
    assert installed_stamp(folder) == second and single.read_bytes() != before
    assert not list(models.glob(f".{SHAPES_NAME}-*"))  # nothing left behind

    # a copy without a stamp file (from before the stamps, or the user's own model under
    # that name) is never replaced
    (folder / STAMP_FILE).unlink()
    marker = folder / "unet" / "marker.txt"
    marker.write_text("the user's copy")
    _shipped_again(weights / f"{SHAPES_NAME}.safetensors")
    assert is_installed(models, "checkpoints", SHAPES_NAME, shipped_stamp(SHAPES_NAME))
    ensure_shapes_model(models)
    assert marker.read_text() == "the user's copy" and installed_stamp(folder) is None


def test_the_shapes_clip_is_copied_again_when_the_shipped_one_changes(tmp_path, monkeypatch):
    from nodes.diffusion import builtin_models
    from nodes.diffusion.builtin_models import SHAPES_CLIP_NAME, clip_is_current
    from nodes.diffusion.shapes_model import install_shapes_clip

    weights = tmp_path / "weights"
    weights.mkdir()
    shipped = weights / f"{SHAPES_CLIP_NAME}.safetensors"
    save_file({"a": torch.zeros(4)}, str(shipped))
    monkeypatch.setattr(builtin_models, "WEIGHTS_DIR", weights)
    models = tmp_path / "models"
    assert not clip_is_current(models)
    target = install_shapes_clip(models)
    assert target.read_bytes() == shipped.read_bytes() and clip_is_current(models)
    # a copy of an earlier shipped CLIP is replaced; a file of the user's own is kept
    monkeypatch.setattr(builtin_models, "EARLIER_SHIPPED_CLIPS",
                        frozenset({builtin_models.fingerprint(shipped)}))
    save_file({"a": torch.ones(5)}, str(shipped))
    assert not clip_is_current(models)
    install_shapes_clip(models)
    assert target.read_bytes() == shipped.read_bytes() and clip_is_current(models)
    save_file({"b": torch.ones(3)}, str(target))
    own = target.read_bytes()
    assert clip_is_current(models)
    install_shapes_clip(models)
    assert target.read_bytes() == own


def test_concurrent_clip_installs_do_not_collide(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from nodes.diffusion import builtin_models
    from nodes.diffusion.builtin_models import SHAPES_CLIP_NAME
    from nodes.diffusion.shapes_model import install_shapes_clip

    weights = tmp_path / "weights"
    weights.mkdir()
    shipped = weights / f"{SHAPES_CLIP_NAME}.safetensors"
    save_file({"a": torch.arange(1 << 20, dtype=torch.float32)}, str(shipped))
    monkeypatch.setattr(builtin_models, "WEIGHTS_DIR", weights)
    for k in range(5):
        models = tmp_path / f"models{k}"
        with ThreadPoolExecutor(8) as pool:
            targets = list(pool.map(install_shapes_clip, [models] * 8))
        assert {t.read_bytes() == shipped.read_bytes() for t in targets} == {True}
        assert [p.name for p in (models / "clip_vision").iterdir()] == [shipped.name]
