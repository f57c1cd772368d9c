"""Load SD 1.x / 2.x ControlNets from a diffusers folder or one checkpoint file, offline.

A single file may be in the original ControlNet layout (``control_model.*`` keys, or
the same keys without the prefix as most published files have) or in diffusers'
layout. Its config comes from Steerflow's ``steerflow.config`` metadata when
present, else from the shipped SD 1.5 / SD 2.1 UNet config picked by the
cross-attention width, the way ``ControlNetModel.from_unet`` derives it. Pickle
files are refused unless the caller opts in (see ``read_checkpoint_file``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from safetensors.torch import save_file

from nodes.diffusion.loading import (
    _check_folder_weights,
    _empty,
    _load_strict,
    _own_aligned_memory,
    family_configs,
    read_checkpoint_file,
)
from nodes.diffusion.original_layout import CONFIG_METADATA_KEY, _apply_map, unet_key_map

CONTROL_PREFIX = "control_model."
StateDict = dict[str, torch.Tensor]


def load_controlnet(path: Path, *, allow_pickle: bool = False,
                    device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> ControlNetModel:
    """A ControlNet in eval mode from a diffusers folder or a single checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ControlNet not found: {path}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is a folder but not a diffusers ControlNet (no config.json)")
        _check_folder_weights(path, allow_pickle=allow_pickle)
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if config.get("_class_name", "ControlNetModel") != "ControlNetModel":
            raise ValueError(f"{path.name} is a {config['_class_name']}, not a ControlNetModel")
        net = ControlNetModel.from_pretrained(
            path, local_files_only=True, torch_dtype=dtype,
            use_safetensors=True if not allow_pickle else None)
    else:
        state_dict, metadata = read_checkpoint_file(path, allow_pickle=allow_pickle)
        net = controlnet_from_state_dict(state_dict, metadata, name=path.name)
    net.to(device)
    if any(p.dtype != dtype for p in net.parameters()):
        net.to(dtype)
    _own_aligned_memory(net)
    return net.eval()


def controlnet_from_state_dict(state_dict: StateDict, metadata: Mapping[str, str] | None = None,
                               *, name: str = "checkpoint") -> ControlNetModel:
    """Build a ControlNet from a single file's tensors (original or diffusers layout)."""
    if any(k.startswith(("add_embedding.", "label_emb.")) for k in _strip_prefix(state_dict)):
        raise ValueError(f"{name}: SDXL ControlNets are not supported (only SD 1.x and SD 2.x)")
    config = _config_from_metadata(metadata)
    unet_config = None
    if config is None:
        unet_config = family_configs(_detect_family(state_dict, name))["unet"]
    converted = convert_controlnet_checkpoint(
        state_dict, config or {"layers_per_block": unet_config["layers_per_block"]})
    # The converter fills absent keys with None; drop them so the check names them.
    converted = {k: v for k, v in converted.items() if v is not None}
    if "controlnet_cond_embedding.conv_in.weight" not in converted:
        raise ValueError(f"{name} is not a ControlNet: it has no hint encoder "
                         "(input_hint_block.* / controlnet_cond_embedding.*) weights")
    if config is not None:
        model = _empty(lambda: ControlNetModel.from_config(config))
    else:
        model = _empty(lambda: _controlnet_for_unet(unet_config, converted))
    return _load_strict("controlnet", model, converted)


def _strip_prefix(state_dict: Mapping[str, Any]) -> list[str]:
    return [k.removeprefix(CONTROL_PREFIX) for k in state_dict]


def _detect_family(state_dict: Mapping[str, torch.Tensor], name: str) -> str:
    """SD 1.x ControlNets cross-attend to 768-wide CLIP-L states, SD 2.x to 1024-wide."""
    widths = {int(v.shape[-1]) for k, v in state_dict.items() if k.endswith("attn2.to_k.weight")}
    if widths == {768}:
        return "sd1"
    if widths == {1024}:
        return "sd2"
    raise ValueError(
        f"{name}: cannot tell which model this ControlNet is for (cross-attention width "
        f"{sorted(widths) or 'none'}); only SD 1.x (768) and SD 2.x (1024) are supported. "
        f"A file saved by Steerflow carries its config in the {CONFIG_METADATA_KEY!r} metadata.")


def _controlnet_for_unet(unet_config: Mapping[str, Any], weights: StateDict) -> ControlNetModel:
    """The ControlNet ``from_unet`` makes for this UNet, with the hint encoder the weights have."""
    conv_in = weights["controlnet_cond_embedding.conv_in.weight"]
    hint = [int(conv_in.shape[0])]
    index = 1
    while f"controlnet_cond_embedding.blocks.{index}.weight" in weights:
        hint.append(int(weights[f"controlnet_cond_embedding.blocks.{index}.weight"].shape[0]))
        index += 2
    unet = UNet2DConditionModel.from_config(
        {**unet_config, "in_channels": int(weights["conv_in.weight"].shape[1])})
    return ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=tuple(hint),
        conditioning_channels=int(conv_in.shape[1]), load_weights_from_unet=False)


def _config_from_metadata(metadata: Mapping[str, str] | None) -> dict[str, Any] | None:
    if not metadata or CONFIG_METADATA_KEY not in metadata:
        return None
    configs = json.loads(metadata[CONFIG_METADATA_KEY])
    if "controlnet" not in configs:
        raise ValueError(f"{CONFIG_METADATA_KEY} metadata has no 'controlnet' config "
                         "(is this a checkpoint rather than a ControlNet?)")
    return dict(configs["controlnet"])


# --- writing the original layout --------------------------------------------------------------

def controlnet_key_map(config: Mapping[str, Any], keys: set[str]) -> dict[str, tuple[str, Any]]:
    """Diffusers ControlNet prefixes -> original-layout prefixes (inverse of diffusers' reader).

    The encoder half is named as in the UNet (``input_blocks``, ``middle_block``);
    the ControlNet's own parts are ``input_hint_block``, ``zero_convs`` and
    ``middle_block_out``.
    """
    plain: Mapping[str, str] = {}
    mapping = dict(unet_key_map(config, keys))
    n_hint = len(config["conditioning_embedding_out_channels"])
    mapping["controlnet_cond_embedding.conv_in."] = ("input_hint_block.0.", plain)
    for i in range(2 * (n_hint - 1)):
        mapping[f"controlnet_cond_embedding.blocks.{i}."] = (f"input_hint_block.{2 * i + 2}.",
                                                              plain)
    mapping["controlnet_cond_embedding.conv_out."] = (f"input_hint_block.{4 * n_hint - 2}.", plain)
    n_down = sum(1 for k in keys
                 if k.startswith("controlnet_down_blocks.") and k.endswith(".weight"))
    for i in range(n_down):
        mapping[f"controlnet_down_blocks.{i}."] = (f"zero_convs.{i}.0.", plain)
    mapping["controlnet_mid_block."] = ("middle_block_out.0.", plain)
    return mapping


def controlnet_to_original(state_dict: Mapping[str, torch.Tensor],
                           config: Mapping[str, Any]) -> StateDict:
    """Diffusers ControlNetModel weights -> ``control_model.*`` (the original layout)."""
    return _apply_map(state_dict, controlnet_key_map(config, set(state_dict)), CONTROL_PREFIX)


def save_original_controlnet(path: Path, net: ControlNetModel) -> None:
    """Write one ``.safetensors`` file in the original layout, its config in the metadata."""
    config = json.loads(net.to_json_string())
    tensors = controlnet_to_original(net.state_dict(), config)
    # safetensors refuses shared or non-contiguous storage.
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    metadata = {"format": "pt",
                CONFIG_METADATA_KEY: json.dumps({"controlnet": config}, sort_keys=True)}
    save_file(tensors, str(path), metadata=metadata)
