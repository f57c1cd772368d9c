"""Load one component on its own: a VAE (``models/vae``), a UNet (``models/diffusion_models``)
and a "diff" ControlNet (weights stored as the difference to the model it was trained on).

The conversions are :mod:`nodes.diffusion.loading`'s: the same pickle policy, the same
original-layout (CompVis/LDM) converters, the same strict key check. A file's config
comes from Steerflow's ``steerflow.config`` metadata when present (a ``vae`` or ``unet``
entry), else (a VAE) from a diffusers ``config.json`` beside it, else from the shipped SD
configs with the sizes read off the weights.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)

from nodes.diffusion.handles import UNSTATED_SCALE
from nodes.diffusion.loading import (
    CheckpointKeyError,
    _check_folder_weights,
    _empty,
    _load_strict,
    detect_family,
    family_configs,
    read_checkpoint_file,
    sd_scheduler_config,
)
from nodes.diffusion.memory import place_model
from nodes.diffusion.original_layout import UNET_PREFIX, VAE_PREFIX, parse_config_metadata

StateDict = dict[str, torch.Tensor]

#: ComfyUI's UNETLoader weight_dtype choices → the dtype weights are rounded through.
WEIGHT_DTYPES: dict[str, torch.dtype | None] = {
    "default": None,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def _metadata_config(metadata: Mapping[str, str] | None, key: str) -> dict[str, Any] | None:
    configs = parse_config_metadata(metadata)
    return dict(configs[key]) if configs is not None and configs.get(key) else None


def _finish(model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype,
            budget: int | None = None) -> torch.nn.Module:
    # Over the device's budget: kept on the CPU, run with sequential offload.
    return place_model(model, device, dtype, budget=budget)


def _indices(keys: Any, pattern: str) -> list[int]:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return sorted(found)


# --- VAE ------------------------------------------------------------------------------------

def load_vae(path: Path, *, allow_pickle: bool = False, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, budget: int | None = None) -> AutoencoderKL:
    """An ``AutoencoderKL`` from a diffusers VAE folder (``config.json``) or a single file in
    diffusers' or the original layout (a whole checkpoint's ``first_stage_model.*`` too)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path.name} is a folder but not a diffusers VAE (no config.json)")
        _check_folder_weights(path, allow_pickle=allow_pickle)
        vae = AutoencoderKL.from_pretrained(path, local_files_only=True, torch_dtype=dtype,
                                            use_safetensors=True if not allow_pickle else None)
    else:
        state_dict, metadata = read_checkpoint_file(path, allow_pickle=allow_pickle)
        vae = vae_from_state_dict(state_dict, metadata, name=path.name,
                                  config=_vae_config_beside(path))
    return _finish(vae, device, dtype, budget)


#: the largest config.json read beside a VAE file (diffusers' are about 1 KB)
MAX_CONFIG_BYTES = 1 << 20


def vae_config_paths(path: Path) -> list[Path]:
    """Where a diffusers config for the single VAE file ``path`` may sit, first first:
    ``<file stem>.json``, or ``config.json`` beside a ``diffusion_pytorch_model.*``."""
    candidates = [path.with_suffix(".json")]
    if path.name.split(".")[0] == "diffusion_pytorch_model":
        candidates.append(path.with_name("config.json"))
    return candidates


def _vae_config_beside(path: Path) -> dict[str, Any] | None:
    """A diffusers VAE config saved beside a single file (:func:`vae_config_paths`)."""
    found = next((c for c in vae_config_paths(path) if c.is_file()), None)
    if found is None:
        return None
    try:
        if found.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError("larger than a config")
        config = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"{found.name} (beside {path.name}) is not a readable VAE "
                         f"config: {exc}") from None
    if not isinstance(config, dict) or config.get("_class_name", "AutoencoderKL") \
            != "AutoencoderKL" or not isinstance(config.get("block_out_channels"), list):
        raise ValueError(f"{found.name} (beside {path.name}) is not a diffusers "
                         "AutoencoderKL config.json (no _class_name AutoencoderKL and "
                         "block_out_channels list); remove it or replace it with the VAE's "
                         "own config.json")
    return config


def vae_from_state_dict(state_dict: StateDict, metadata: Mapping[str, str] | None = None,
                        *, name: str = "file", config: dict[str, Any] | None = None
                        ) -> AutoencoderKL:
    """Build the VAE in ``state_dict`` (either layout). Its config: the file's metadata,
    else ``config`` (a ``config.json`` found beside it), else SD's with the sizes read
    off the weights, which fails clearly where SD's group norm cannot fit them."""
    original = _original_vae_prefix(state_dict)
    diffusers_layout = "encoder.down_blocks.0.resnets.0.conv1.weight" in state_dict
    if original is None and not diffusers_layout:
        raise ValueError(
            f"{name} is not a whole VAE in a known layout: it lacks the first encoder block's "
            "weights (encoder.down.0.block.0.conv1.weight, or encoder.down_blocks.0.resnets."
            "0.conv1.weight in diffusers' layout)")
    config = _metadata_config(metadata, "vae") or config
    unstated = config is None
    if unstated:
        config = _vae_config_from_weights(state_dict, original)
        _check_sd_group_norm(config, name)
    else:
        _check_group_norm(config, name)
    if original is not None:
        weights = convert_ldm_vae_checkpoint(state_dict, config)
    else:
        weights = {k: v for k, v in state_dict.items()
                   if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}
    try:
        model = _empty(lambda: AutoencoderKL.from_config(config))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a config.json's own
        raise ValueError(f"the config given for the VAE {name} cannot build a VAE: "
                         f"{exc}") from None
    try:
        model = _load_strict("vae", model, weights)
    except CheckpointKeyError as exc:
        raise ValueError(f"{name} does not look like a Stable Diffusion VAE: {exc}") from exc
    if unstated:  # SD's factor assumed: the latents' or the model's wins (handles.Vae)
        setattr(model, UNSTATED_SCALE, True)
    return model


def _check_sd_group_norm(config: Mapping[str, Any], name: str) -> None:
    """Refuse weights SD's VAE config cannot hold: their group norms' groups (and latent
    scaling factor) are not stored in the weights, so guessing them would fail in torch,
    or worse, run with the wrong ones."""
    groups = int(config["norm_num_groups"])
    widths = list(config["block_out_channels"])
    if all(w % groups == 0 for w in widths):
        return
    sidecar = vae_config_paths(Path(name))[0].name
    raise ValueError(
        f"cannot tell the config of the VAE {name} from its weights: its channel widths "
        f"{widths} are not all multiples of SD's {groups} group-norm groups, so it is not "
        "an SD VAE, and its group count and latent scaling factor are not in the file. "
        "Put the VAE in models/vae as a diffusers folder (its config.json beside "
        f"diffusion_pytorch_model.safetensors), or its config.json beside the file as "
        f"{sidecar}, or use the VAE of the checkpoint it came with")


def _check_group_norm(config: Mapping[str, Any], name: str) -> None:
    factor = config.get("scaling_factor", 0.18215)
    if isinstance(factor, bool) or not isinstance(factor, int | float) \
            or not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"the config given for the VAE {name} has scaling_factor "
                         f"{factor!r}: it must be a positive number")
    groups = config.get("norm_num_groups", 32)
    widths = config.get("block_out_channels")
    if not isinstance(groups, int) or groups < 1 or not isinstance(widths, list | tuple) \
            or not all(isinstance(w, int) and w > 0 and w % groups == 0 for w in widths):
        raise ValueError(f"the config given for the VAE {name} does not fit together: "
                         f"block_out_channels {widths!r} must be positive multiples of "
                         f"norm_num_groups {groups!r}")


def _original_vae_prefix(state_dict: Mapping[str, Any]) -> str | None:
    for prefix in (VAE_PREFIX, "vae.", ""):
        if f"{prefix}encoder.down.0.block.0.conv1.weight" in state_dict:
            return prefix
    return None


def _vae_config_from_weights(sd: Mapping[str, torch.Tensor], original: str | None
                             ) -> dict[str, Any]:
    """SD's VAE config with the levels, widths, depth and channels of these weights."""
    config = family_configs("sd1")["vae"]
    if original is not None:
        p = original
        levels = _indices(sd, rf"{re.escape(p)}encoder\.down\.(\d+)\.")
        width = [int(sd[f"{p}encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels]
        depth = len(_indices(sd, rf"{re.escape(p)}encoder\.down\.0\.block\.(\d+)\."))
        conv_in, dec_in, conv_out = (f"{p}encoder.conv_in.weight", f"{p}decoder.conv_in.weight",
                                     f"{p}decoder.conv_out.weight")
    else:
        levels = _indices(sd, r"encoder\.down_blocks\.(\d+)\.")
        width = [int(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0])
                 for i in levels]
        depth = len(_indices(sd, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."))
        conv_in, dec_in, conv_out = ("encoder.conv_in.weight", "decoder.conv_in.weight",
                                     "decoder.conv_out.weight")
    for key in (conv_in, dec_in, conv_out):
        if key not in sd:
            raise ValueError(f"not a complete VAE: {key} is missing")
    config.update(
        block_out_channels=width, layers_per_block=depth,
        down_block_types=["DownEncoderBlock2D"] * len(width),
        up_block_types=["UpDecoderBlock2D"] * len(width),
        in_channels=int(sd[conv_in].shape[1]), out_channels=int(sd[conv_out].shape[0]),
        latent_channels=int(sd[dec_in].shape[1]))
    return config


# --- UNet -------------------------------------------------------------------------------------

def load_unet(path: Path, *, allow_pickle: bool = False, weight_dtype: str = "default",
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              budget: int | None = None) -> tuple[UNet2DConditionModel, dict[str, Any], str]:
    """A UNet, its scheduler config and family from a diffusers UNet folder or a single file
    (original layout with or without ``model.diffusion_model.``, or diffusers' layout).

    ``weight_dtype`` fp8 rounds the weights through that format and computes in ``dtype``:
    what ComfyUI computes with fp8 storage (it upcasts each layer's weights), without its
    memory saving.
    """
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"unknown weight_dtype {weight_dtype!r}: use one of "
                         f"{sorted(WEIGHT_DTYPES)}")
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path.name} is a folder but not a diffusers UNet (no config.json)")
        _check_folder_weights(path, allow_pickle=allow_pickle)
        unet = UNet2DConditionModel.from_pretrained(
            path, local_files_only=True, torch_dtype=dtype,
            use_safetensors=True if not allow_pickle else None)
        family = unet_family(unet.config)
        configs = family_configs(family)
    else:
        state_dict, metadata = read_checkpoint_file(path, allow_pickle=allow_pickle)
        unet, family = unet_from_state_dict(state_dict, metadata, name=path.name)
        configs = family_configs(family)
        configs["scheduler"] = _metadata_config(metadata, "scheduler") or configs["scheduler"]
    fp8 = WEIGHT_DTYPES[weight_dtype]
    if fp8 is not None:
        with torch.no_grad():
            for param in unet.parameters():
                param.data = param.data.to(fp8).to(param.dtype)
    scheduler = dict(configs["scheduler"])
    if not family.startswith("sdxl"):  # as Load Checkpoint: the SD pipelines' corrections
        scheduler = sd_scheduler_config(scheduler)
    return _finish(unet, device, dtype, budget), scheduler, family


def unet_from_state_dict(state_dict: StateDict, metadata: Mapping[str, str] | None = None,
                         *, name: str = "file") -> tuple[UNet2DConditionModel, str]:
    """Build the UNet in ``state_dict``; its family ("sd1"/"sd2") from metadata or shapes."""
    if "conv_in.weight" in state_dict and "input_blocks.0.0.weight" not in state_dict:
        weights = {k: v for k, v in state_dict.items() if not k.startswith("controlnet")}
        config = _metadata_config(metadata, "unet")
        if config is None:
            widths = {int(v.shape[-1]) for k, v in weights.items()
                      if k.endswith("attn2.to_k.weight")}
            family = _family_by_width(widths, "add_embedding.linear_1.weight" in weights)
            if family is None:
                raise ValueError(f"{name}: not an SD 1.x / 2.x / SDXL UNet (cross-attention "
                                 f"widths {sorted(widths) or 'none'})")
            config = family_configs(family)["unet"]
            config["in_channels"] = int(weights["conv_in.weight"].shape[1])
    else:
        if not any(k.startswith(UNET_PREFIX) for k in state_dict):
            # ComfyUI saves diffusion models without the checkpoint's prefix.
            state_dict = {UNET_PREFIX + k: v for k, v in state_dict.items()}
        if UNET_PREFIX + "input_blocks.0.0.weight" not in state_dict:
            raise ValueError(f"{name} is not a diffusion model (UNet): no input_blocks.* or "
                             "conv_in / down_blocks.* weights")
        config = _metadata_config(metadata, "unet")
        if config is None:
            config = family_configs(_original_unet_family(state_dict))["unet"]
            config["in_channels"] = int(state_dict[UNET_PREFIX + "input_blocks.0.0.weight"]
                                        .shape[1])
        weights = convert_ldm_unet_checkpoint(state_dict, config)
    try:
        unet = _load_strict("unet", _empty(lambda: UNet2DConditionModel.from_config(config)),
                            weights)
    except CheckpointKeyError as exc:
        raise ValueError(f"{name} is not an SD 1.x / 2.x / SDXL UNet Steerflow can load: "
                         f"{exc}") from exc
    return unet, unet_family(unet.config)


def unet_family(config: Mapping[str, Any]) -> str:
    """"sd1", "sd2", "sdxl" or "sdxl_refiner" from a UNet's config. SDXL's UNets take a
    pooled text embedding and size ids ("text_time"); the refiner's pooled embedding is
    its whole context (bigG alone) and it has five ids (no target size, an aesthetic
    score) where the base has six."""
    if config.get("addition_embed_type") == "text_time":
        pooled = (int(config.get("projection_class_embeddings_input_dim") or 0)
                  - 5 * int(config.get("addition_time_embed_dim") or 0))
        return "sdxl_refiner" if pooled == config.get("cross_attention_dim") else "sdxl"
    return "sd2" if config.get("cross_attention_dim") == 1024 else "sd1"


def _family_by_width(widths: set[int], sdxl: bool) -> str | None:
    if sdxl:
        return {frozenset({2048}): "sdxl", frozenset({1280}): "sdxl_refiner"}.get(
            frozenset(widths))
    return {frozenset({768}): "sd1", frozenset({1024}): "sd2"}.get(frozenset(widths))


def _original_unet_family(state_dict: StateDict) -> str:
    """The family of an original-layout UNet (a lone SDXL UNet has no text encoders to
    tell it by, but its ``label_emb`` and context width do)."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    if UNET_PREFIX + "label_emb.0.0.weight" in shapes:
        widths = {shape[-1] for key, shape in shapes.items()
                  if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight")}
        family = _family_by_width(widths, sdxl=True)
        if family is not None:
            return family
    return detect_family(shapes)


# --- diff ControlNets ---------------------------------------------------------------------------

DIFFERENCE_KEY = "difference"  # the marker key of a "diff" ControlNet file (ComfyUI's test)
CONTROL_PREFIX = "control_model."


def load_diff_controlnet(path: Path, unet: UNet2DConditionModel, *, allow_pickle: bool = False,
                         device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                         budget: int | None = None) -> ControlNetModel:
    """A ControlNet from a single file; when it is a difference (a ``difference`` key, as
    ComfyUI tests), each ``control_model.X`` adds the model's ``diffusion_model.X`` first.
    Other files (folders too) load as a plain ControlNet."""
    from nodes.diffusion.controlnet_loading import controlnet_from_state_dict, load_controlnet
    from nodes.diffusion.original_layout import unet_to_original

    path = Path(path)
    if path.is_dir():
        return load_controlnet(path, allow_pickle=allow_pickle, device=device, dtype=dtype,
                               budget=budget)
    state_dict, metadata = read_checkpoint_file(path, allow_pickle=allow_pickle)
    if DIFFERENCE_KEY in state_dict:
        state_dict = dict(state_dict)
        del state_dict[DIFFERENCE_KEY]
        base = unet_to_original(unet.state_dict(), dict(unet.config))
        added = 0
        for key, value in list(state_dict.items()):
            base_key = UNET_PREFIX + key.removeprefix(CONTROL_PREFIX)
            ref = base.get(base_key)
            if ref is not None and ref.shape == value.shape:
                state_dict[key] = value + ref.to(device=value.device, dtype=value.dtype)
                added += 1
        if added == 0:
            raise ValueError(f"{path.name} is a diff ControlNet, but none of its weights match "
                             "the linked model's UNet: link the model it was made for")
    net = controlnet_from_state_dict(state_dict, metadata, name=path.name)
    return _finish(net, device, dtype, budget)
