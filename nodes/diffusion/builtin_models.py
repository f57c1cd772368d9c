"""The built-in models' names and a cheap check that they are installed.

Light on purpose (no torch, no diffusers): every start of a worker runs the
node packs' set-up, and on an installed folder it must cost file checks and the
fingerprints of the shipped files (2 MiB hashed per file: ~10 ms in all); the modules
that build or install the models are imported when one is missing or outdated.
"""

from __future__ import annotations

import hashlib
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
#: an IP-Adapter for steerflow-shapes on that CLIP (training/train_ip_adapter.py): models/ipadapter
SHAPES_IP_ADAPTER_NAME = "steerflow-shapes-ip-adapter"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "assets" / "weights"
DIFFUSERS_MARKERS = {"checkpoints": "model_index.json", "controlnet": "config.json"}
#: what each built-in model is for (native size, what it draws): read by the server and the
#: canvas where a model is picked, so it is plain JSON (no weights are opened to answer)
MODEL_CARDS_FILE = Path(__file__).with_suffix(".json")


def shipped_weights(name: str) -> Path:
    """The shipped single file of ``name`` (it may be absent in a stripped install)."""
    return WEIGHTS_DIR / f"{name}.safetensors"


#: in an installed model's diffusers folder: the fingerprint of the shipped file(s) it was
#: built from, so a newer shipped file is installed again
STAMP_FILE = ".shipped"
_FINGERPRINT_SPAN = 1 << 20


def fingerprint(path: Path) -> str:
    """A cheap identity of a weights file: its size and a SHA-256 of its first and last
    MiB (retrained weights differ there; hashing every byte on each worker start would
    not be cheap)."""
    st = Path(path).stat()
    return _fingerprint(str(path), st.st_size, (st.st_ino, st.st_mtime_ns, st.st_ctime_ns))


@lru_cache(maxsize=64)
def _fingerprint(path_name: str, size: int, _version: tuple[int, int, int]) -> str:
    path = Path(path_name)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(_FINGERPRINT_SPAN))
        if size > _FINGERPRINT_SPAN:
            f.seek(max(size - _FINGERPRINT_SPAN, _FINGERPRINT_SPAN))
            digest.update(f.read())
    return f"{size}:{digest.hexdigest()[:32]}"


def shipped_stamp(*names: str) -> str | None:
    """The stamp of a model built from these shipped files (None if one is not shipped)."""
    paths = [shipped_weights(n) for n in names]
    if not all(p.is_file() for p in paths):
        return None
    return " ".join(fingerprint(p) for p in paths)


def installed_stamp(folder: Path) -> str | None:
    try:
        return (Path(folder) / STAMP_FILE).read_text().strip()
    except OSError:
        return None


#: built-in model → the shipped files it is built from (role, name, sources)
SHIPPED_MODELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("checkpoints", SHAPES_NAME, (SHAPES_NAME,)),
    ("controlnet", SHAPES_CONTROLNET_NAME, (SHAPES_CONTROLNET_NAME,)),
    ("controlnet", SHAPES_ADAPTER_NAME, (SHAPES_ADAPTER_NAME,)),
    ("checkpoints", SHAPES_IP2P_NAME, (SHAPES_NAME, SHAPES_IP2P_UNET)),
)


def is_installed(models_dir: Path, role: str, name: str, stamp: str | None = None) -> bool:
    """Both formats present: the diffusers folder (complete) and the single file; with
    ``stamp``, not built from other shipped files than those (a copy without a stamp file,
    from before the stamps or of the user's own, counts as installed: it is never
    replaced)."""
    target = Path(models_dir) / role
    return ((target / name / DIFFUSERS_MARKERS[role]).is_file()
            and (target / f"{name}.safetensors").is_file()
            and (stamp is None or installed_stamp(target / name) in (None, stamp)))


#: fingerprints of the shapes CLIPs shipped before: an installed copy of one is replaced
EARLIER_SHIPPED_CLIPS = frozenset({"7616106:e269cb79fccbe5d254fdf8171cc639bb"})
#: shipped files installed as plain copies (their loaders read one file):
#: (models subfolder, name)
SINGLE_FILES: tuple[tuple[str, str], ...] = (("clip_vision", SHAPES_CLIP_NAME),
                                             ("ipadapter", SHAPES_IP_ADAPTER_NAME))


def installed_single(models_dir: Path, folder: str, name: str) -> Path:
    """Where set-up installs the shipped single file ``name``."""
    return Path(models_dir) / folder / f"{name}.safetensors"


def single_is_current(models_dir: Path, folder: str, name: str) -> bool:
    """False when the shipped file ``name`` is missing from ``models/<folder>`` or an
    earlier shipped copy is there (a file of the user's own under that name is kept);
    True when none is shipped."""
    source = shipped_weights(name)
    if not source.is_file():
        return True
    target = installed_single(models_dir, folder, name)
    if not target.is_file():
        return False
    found = fingerprint(target)
    earlier = EARLIER_SHIPPED_CLIPS if name == SHAPES_CLIP_NAME else frozenset()
    return found == fingerprint(source) or found not in earlier


def installed_clip(models_dir: Path) -> Path:
    """Where set-up installs the shapes CLIP (one file: the CLIP vision loader reads it)."""
    return installed_single(models_dir, "clip_vision", SHAPES_CLIP_NAME)


def clip_is_current(models_dir: Path) -> bool:
    return single_is_current(models_dir, "clip_vision", SHAPES_CLIP_NAME)


def all_installed(models_dir: Path) -> bool:
    """Every built-in model the set-up would create is already there, built from the
    shipped files as they are now."""
    if not (is_installed(models_dir, "checkpoints", TINY_NAME)
            and is_installed(models_dir, "controlnet", TINY_CONTROLNET_NAME)
            and all(single_is_current(models_dir, *f) for f in SINGLE_FILES)):
        return False
    for role, name, sources in SHIPPED_MODELS:
        stamp = shipped_stamp(*sources)
        if stamp is not None and not is_installed(models_dir, role, name, stamp):
            return False
    return True


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
