"""Load a text encoder on its own (ComfyUI's Load CLIP and DualCLIPLoader).

Three CLIPs condition the SD families: OpenAI CLIP ViT-L/14 ("clip_l": SD 1.x, SDXL's
first encoder), OpenCLIP ViT-H/14 ("clip_h": SD 2.x) and OpenCLIP ViT-bigG/14 ("clip_g":
SDXL's second encoder, the refiner's only one). Files come in three key layouts, and
each is accepted:

- transformers' (``text_model.encoder.layers.N...``, with or without ``text_model.``;
  the files ComfyUI ships as ``clip_l.safetensors`` / ``clip_g.safetensors``, and a
  diffusers ``text_encoder`` folder);
- the original SD 1.x one (``cond_stage_model.transformer.text_model...``, also under
  SDXL's ``conditioner.embedders.0.transformer.``);
- OpenCLIP's (``transformer.resblocks.N...``, bare or under ``cond_stage_model.model.``
  or ``conditioner.embedders.N.model.``).

Which CLIP a file holds is read off its width (768 / 1024 / 1280), as ComfyUI does; a
folder's ``config.json`` says it for any size. A single file of another width needs
the ``steerflow.text_encoder`` metadata (its transformers config plus ``"kind"``), which
:func:`save_text_encoder` writes. Configs otherwise come from the shipped SD configs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from nodes.diffusion.loading import (
    FAMILY_CONFIG_DIRS,
    CheckpointKeyError,
    _check_folder_weights,
    _empty,
    _load_strict,
    read_checkpoint_file,
)
from nodes.diffusion.memory import place_model
from nodes.diffusion.tokenizer import load_clip_tokenizer

StateDict = dict[str, torch.Tensor]

#: metadata key of a single file's transformers config and kind
METADATA_KEY = "steerflow.text_encoder"
#: kind -> (family config folder, its subfolder) whose config and tokenizer it uses
KINDS = {"clip_l": ("sd1", "text_encoder"), "clip_h": ("sd2", "text_encoder"),
         "clip_g": ("sdxl", "text_encoder_2")}
KIND_NAMES = {"clip_l": "CLIP ViT-L (SD 1.x, SDXL)", "clip_h": "OpenCLIP ViT-H (SD 2.x)",
              "clip_g": "OpenCLIP ViT-bigG (SDXL)"}
_WIDTHS = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}
#: diffusers' SD 2.x text encoder drops OpenCLIP-H's last layer (SD 2 reads the
#: penultimate one), so its config has 23 of the file's 24
_CLIP_H_LAYERS = 23
_OPEN_AI_PREFIXES = ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.")
_RESBLOCKS = "transformer.resblocks."


@dataclass
class LoadedTextEncoder:
    """One CLIP text encoder, which CLIP it is, and the tokenizer that goes with it."""

    model: CLIPTextModel | CLIPTextModelWithProjection
    kind: str  # "clip_l", "clip_h" or "clip_g"
    tokenizer: CLIPTokenizer


def load_text_encoder(path: Path, *, allow_pickle: bool = False,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                      budget: int | None = None) -> LoadedTextEncoder:
    """The CLIP text encoder in a single file or a transformers/diffusers folder."""
    path = Path(path)
    if path.is_dir():
        model, kind = _load_folder(path, allow_pickle=allow_pickle, dtype=dtype)
    else:
        state_dict, metadata = read_checkpoint_file(path, allow_pickle=allow_pickle,
                                                    dtype=dtype)
        model, kind = text_encoder_from_state_dict(state_dict, metadata, name=path.name)
    place_model(model.eval(), device, dtype, budget=budget)
    return LoadedTextEncoder(model, kind, tokenizer_for(kind))


def tokenizer_for(kind: str, family: str | None = None) -> CLIPTokenizer:
    """The shipped tokenizer for ``kind`` (SD 2 and bigG pad with "!")."""
    family_name, sub = KINDS[kind]
    if family is not None and family.startswith("sdxl"):
        family_name = family
    tokenizer_sub = "tokenizer_2" if sub == "text_encoder_2" else "tokenizer"
    return load_clip_tokenizer(FAMILY_CONFIG_DIRS[family_name] / tokenizer_sub)


def _load_folder(path: Path, *, allow_pickle: bool, dtype: torch.dtype
                 ) -> tuple[CLIPTextModel | CLIPTextModelWithProjection, str]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path.name} is a folder but not a text encoder (no config.json)")
    _check_folder_weights(path, allow_pickle=allow_pickle)
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("model_type") not in (None, "clip_text_model"):
        raise ValueError(f"{path.name}: model_type {config.get('model_type')!r} is not a CLIP "
                         f"text encoder (clip_text_model)")
    projected = any("WithProjection" in a for a in config.get("architectures") or ())
    kind = _kind_from_config(config, projected)
    cls = CLIPTextModelWithProjection if kind == "clip_g" else CLIPTextModel
    model = cls.from_pretrained(path, local_files_only=True, dtype=dtype,
                                use_safetensors=True if not allow_pickle else None)
    return model, kind


def _kind_from_config(config: Mapping[str, Any], projected: bool) -> str:
    if config.get("hidden_act") == "quick_gelu":
        return "clip_l"  # OpenAI's CLIP; OpenCLIP uses plain GELU
    return "clip_g" if projected else "clip_h"


def text_encoder_from_state_dict(state_dict: StateDict,
                                 metadata: Mapping[str, str] | None = None, *,
                                 name: str = "file"
                                 ) -> tuple[CLIPTextModel | CLIPTextModelWithProjection, str]:
    """Build the CLIP text encoder in ``state_dict`` (any of the three layouts)."""
    open_clip = _open_clip_prefix(state_dict)
    weights = None if open_clip is not None else _transformers_weights(state_dict)
    if open_clip is None and weights is None:
        raise ValueError(
            f"{name} is not a CLIP text encoder: it has neither transformers' "
            f"(text_model.encoder.layers.0...) nor OpenCLIP's ({_RESBLOCKS}0...) weights")
    stored = _metadata(metadata)
    if stored is not None:
        kind, config = stored
    else:
        kind, config = _standard_config(state_dict, open_clip, weights, name)
    cls = CLIPTextModelWithProjection if kind == "clip_g" else CLIPTextModel
    model = _empty(lambda: cls(CLIPTextConfig.from_dict(config)))
    if open_clip is not None:
        weights = convert_open_clip_checkpoint(model, state_dict, prefix=open_clip)
        weights = {k: v for k, v in weights.items()
                   if not _beyond(k, int(config["num_hidden_layers"]))}
    assert weights is not None
    weights.pop("text_model.embeddings.position_ids", None)
    weights.pop("embeddings.position_ids", None)
    if cls is CLIPTextModel:
        weights.pop("text_projection.weight", None)  # SD 1.x / 2.x never use it
        # transformers >= 5.6 flattened CLIPTextModel (no ``text_model.`` level)
        flat = not any(k.startswith("text_model.") for k in model.state_dict())
        if flat:
            weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    elif "text_projection.weight" not in weights:
        raise CheckpointKeyError(f"{name}: an OpenCLIP bigG text encoder without its "
                                 f"text_projection (SDXL's pooled output needs it)")
    try:
        return _load_strict("text encoder", model, weights), kind
    except CheckpointKeyError as exc:
        raise CheckpointKeyError(f"{name}: {exc}") from exc


def _beyond(key: str, layers: int) -> bool:
    match = re.search(r"encoder\.layers\.(\d+)\.", key)
    return match is not None and int(match.group(1)) >= layers


def _open_clip_prefix(state_dict: Mapping[str, Any]) -> str | None:
    for key in state_dict:
        at = key.find(_RESBLOCKS + "0.")
        if at >= 0 and f"{key[:at]}token_embedding.weight" in state_dict:
            return key[:at]
    return None


def _transformers_weights(state_dict: StateDict) -> StateDict | None:
    """``state_dict``'s CLIP weights with transformers' ``text_model.`` keys, or None."""
    for prefix in ("", *_OPEN_AI_PREFIXES):
        for level in ("text_model.", ""):
            if f"{prefix}{level}embeddings.token_embedding.weight" in state_dict:
                out = {}
                for key, value in state_dict.items():
                    if not key.startswith(prefix):
                        continue
                    rest = key[len(prefix):]
                    if rest == "text_projection.weight":
                        out[rest] = value
                    elif rest.startswith(level) and rest[len(level):].startswith(
                            ("embeddings.", "encoder.", "final_layer_norm.")):
                        out["text_model." + rest[len(level):]] = value
                return out
    return None


def _metadata(metadata: Mapping[str, str] | None) -> tuple[str, dict[str, Any]] | None:
    if not metadata or METADATA_KEY not in metadata:
        return None
    stored = json.loads(metadata[METADATA_KEY])
    kind = stored.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"{METADATA_KEY} metadata has no valid kind ({kind!r})")
    return kind, stored


def _standard_config(state_dict: StateDict, open_clip: str | None, weights: StateDict | None,
                     name: str) -> tuple[str, dict[str, Any]]:
    """(kind, config) of a file without metadata: one of the three standard CLIPs."""
    if open_clip is not None:
        embedding = state_dict[f"{open_clip}token_embedding.weight"]
        layers = _count(state_dict, re.escape(open_clip + _RESBLOCKS) + r"(\d+)\.")
    else:
        assert weights is not None
        embedding = weights["text_model.embeddings.token_embedding.weight"]
        layers = _count(weights, r"text_model\.encoder\.layers\.(\d+)\.")
    width = int(embedding.shape[1])
    kind = _WIDTHS.get(width)
    if kind is None:
        raise ValueError(
            f"{name}: a {width}-wide text encoder is none of the standard CLIPs (768: CLIP-L, "
            f"1024: OpenCLIP-H, 1280: OpenCLIP-bigG); load other sizes from a folder with "
            f"its config.json")
    family, sub = KINDS[kind]
    config_file = FAMILY_CONFIG_DIRS[family] / sub / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["num_hidden_layers"] = min(layers, _CLIP_H_LAYERS) if kind == "clip_h" else layers
    config["vocab_size"] = int(embedding.shape[0])
    return kind, config


def _count(state_dict: Mapping[str, Any], pattern: str) -> int:
    found = {int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def save_text_encoder(path: Path, model: CLIPTextModel | CLIPTextModelWithProjection,
                      kind: str) -> None:
    """Write ``model`` as one ``.safetensors`` file in transformers' layout, with its
    config and kind in the metadata (what ComfyUI's CLIPSave writes, loadable here at
    any size)."""
    if kind not in KINDS:
        raise ValueError(f"unknown text encoder kind {kind!r}: one of {sorted(KINDS)}")
    tensors = {("text_model." + k if not k.startswith(("text_model.", "text_projection"))
                else k): v.detach().contiguous().clone()
               for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    config = json.loads(model.config.to_json_string(use_diff=False))
    metadata = {"format": "pt", METADATA_KEY: json.dumps({**config, "kind": kind})}
    save_file(tensors, str(path), metadata=metadata)
