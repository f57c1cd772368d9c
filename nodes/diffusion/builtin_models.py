"""The built-in models' names and a cheap check that they are installed.

Light on purpose (no torch, no diffusers): every start of a worker runs the
node packs' set-up, and on an installed folder it must cost file checks only;
the modules that build or install the models are imported when one is missing.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

TINY_NAME = "steerflow-tiny"
TINY_CONTROLNET_NAME = "steerflow-tiny-controlnet"
SHAPES_NAME = "steerflow-shapes"
SHAPES_CONTROLNET_NAME = "steerflow-shapes-controlnet"
SHAPES_ADAPTER_NAME = "steerflow-shapes-adapter"
SHAPES_IP2P_NAME = "steerflow-shapes-ip2p"
#: shipped alone: installing pairs it with steerflow-shapes' VAE and text encoder
SHAPES_IP2P_UNET = f"{SHAPES_IP2P_NAME}-unet"
#: the shapes-world CLIP (training/train_clip.py): installed as one file in models/clip_vision
SHAPES_CLIP_NAME = "steerflow-shapes-clip"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "assets" / "weights"
DIFFUSERS_MARKERS = {"checkpoints": "model_index.json", "controlnet": "config.json"}
#: what each built-in model is for (native size, what it draws): read by the server and the
#: canvas where a model is picked, so it is plain JSON (no weights are opened to answer)
MODEL_CARDS_FILE = Path(__file__).with_suffix(".json")


def shipped_weights(name: str) -> Path:
    """The shipped single file of ``name`` (it may be absent in a stripped install)."""
    return WEIGHTS_DIR / f"{name}.safetensors"


def is_installed(models_dir: Path, role: str, name: str) -> bool:
    """Both formats present: the diffusers folder (complete) and the single file."""
    target = Path(models_dir) / role
    return ((target / name / DIFFUSERS_MARKERS[role]).is_file()
            and (target / f"{name}.safetensors").is_file())


def all_installed(models_dir: Path) -> bool:
    """Every built-in model the set-up would create is already there."""
    wanted = [("checkpoints", TINY_NAME), ("controlnet", TINY_CONTROLNET_NAME)]
    wanted += [(role, name) for role, name in (("checkpoints", SHAPES_NAME),
                                               ("controlnet", SHAPES_CONTROLNET_NAME),
                                               ("controlnet", SHAPES_ADAPTER_NAME))
               if shipped_weights(name).is_file()]
    if shipped_weights(SHAPES_IP2P_UNET).is_file():
        wanted.append(("checkpoints", SHAPES_IP2P_NAME))
    if (shipped_weights(SHAPES_CLIP_NAME).is_file()
            and not (Path(models_dir) / "clip_vision" / f"{SHAPES_CLIP_NAME}.safetensors"
                     ).is_file()):
        return False
    return all(is_installed(models_dir, role, name) for role, name in wanted)


@lru_cache(maxsize=1)
def model_cards() -> dict[str, dict[str, Any]]:
    """The built-in models' cards by name: ``native_size`` [w, h], ``summary`` (one line),
    ``draws``, ``prompt_example``, ``notes`` (an empty mapping when the file is missing)."""
    try:
        return json.loads(MODEL_CARDS_FILE.read_text("utf-8"))
    except (OSError, ValueError):
        return {}


def model_card(file_name: str) -> dict[str, Any] | None:
    """The card of a listed model file or folder (``steerflow-shapes``,
    ``steerflow-shapes.safetensors``), or None for a model that is not built in."""
    stem = file_name.rsplit("/", 1)[-1]
    for suffix in (".safetensors", ".ckpt"):
        stem = stem.removesuffix(suffix)
    return model_cards().get(stem)
