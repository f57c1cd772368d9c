"""The CLIP BPE tokenizer shipped with Steerflow (derived by scripts/derive_clip_tokenizer.py)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

_ASSETS = Path(__file__).resolve().parent.parent / "assets"


def clip_tokenizer_dir() -> Path:
    """Folder holding ``vocab.json``, ``merges.txt`` and the SD 1.x tokenizer config."""
    return _ASSETS / "clip_tokenizer"


def load_clip_tokenizer(config_dir: Path | None = None) -> CLIPTokenizer:
    """Load the shipped CLIP tokenizer, offline.

    ``config_dir`` may hold a ``tokenizer_config.json`` whose special-token settings
    override the SD 1.x defaults (SD 2.x pads with "!"); the vocabulary and merges
    always come from :func:`clip_tokenizer_dir`, so they are stored only once.
    """
    overrides: dict[str, object] = {}
    if config_dir is not None:
        cfg = json.loads((Path(config_dir) / "tokenizer_config.json").read_text(encoding="utf-8"))
        keys = ("bos_token", "eos_token", "unk_token", "pad_token", "model_max_length")
        overrides = {k: cfg[k] for k in keys if k in cfg}
    return CLIPTokenizer.from_pretrained(
        str(clip_tokenizer_dir()), local_files_only=True, **overrides
    )


def folder_tokenizer(folder: Path, defaults: Path | None = None) -> CLIPTokenizer:
    """A model folder's own CLIP tokenizer, else the shipped one with ``defaults``' settings.

    A folder's tokenizer is ``vocab.json`` + ``merges.txt`` or, as transformers 5 saves
    it, ``tokenizer.json`` alone (JSON either way: nothing is unpickled). Its settings
    win over the family's: an SD 2.x-like folder may pad with "<|endoftext|>" where the
    family default pads with "!".
    """
    folder = Path(folder)
    own = ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) or (
        folder / "tokenizer.json").is_file()
    if own:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    return load_clip_tokenizer(defaults)
