"""Diffusers -> original (CompVis/LDM) checkpoint key layout for SD 1.x-style models.

The renaming tables are derived from the component configs (number of blocks,
layers per block) rather than SD's sizes, so small test models convert too. The
single file written here also stores the diffusers configs as JSON metadata, so
non-standard sizes can be rebuilt exactly when loading.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
CONFIG_METADATA_KEY = "steerflow.config"

StateDict = dict[str, torch.Tensor]
Tensors = Mapping[str, torch.Tensor]
# diffusers prefix -> (original prefix, suffix renames within that block)
KeyMap = dict[str, tuple[str, Mapping[str, str]]]

# Suffix renames inside one block, diffusers name -> original name.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


class LayoutError(ValueError):
    """A state dict does not fit the layout its config describes."""


def _layers_per_block(config: Mapping[str, Any]) -> int:
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        # diffusers' own single-file reader assumes one value for every block.
        raise LayoutError(f"per-block layers_per_block {lpb!r} is not supported")
    return lpb


def _rename_suffix(suffix: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if suffix.startswith(old + "."):
            return new + suffix[len(old) :]
    return suffix


def _apply_map(
    state_dict: Tensors,
    prefix_map: KeyMap,
    out_prefix: str,
) -> StateDict:
    """Rename every key through the longest matching prefix in ``prefix_map``."""
    out: StateDict = {}
    unmapped: list[str] = []
    for key, tensor in state_dict.items():
        name = original_name(key, prefix_map)
        if name is None:
            unmapped.append(key)
        else:
            out[out_prefix + name] = tensor
    if unmapped:
        raise LayoutError(f"{len(unmapped)} keys have no original-layout name, e.g. {unmapped[:5]}")
    return out


def original_name(key: str, prefix_map: KeyMap) -> str | None:
    """``key``'s original-layout name through the longest matching prefix of
    ``prefix_map`` (without the model's prefix), or None."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut]) + "."
        if prefix in prefix_map:
            new_prefix, table = prefix_map[prefix]
            return new_prefix + _rename_suffix(key[len(prefix) :], table)
    return None


def unet_key_map(config: Mapping[str, Any], keys: set[str]) -> KeyMap:
    """Diffusers UNet prefixes -> (LDM prefix, suffix table) for this config.

    ``keys`` (the diffusers state-dict keys) tells whether an up block has
    attentions, which shifts its upsampler's index in the original layout.
    """
    lpb = _layers_per_block(config)
    levels = len(config["down_block_types"])
    plain: Mapping[str, str] = {}
    m: KeyMap = {
        "time_embedding.linear_1.": ("time_embed.0.", plain),
        "time_embedding.linear_2.": ("time_embed.2.", plain),
        "conv_in.": ("input_blocks.0.0.", plain),
        "conv_norm_out.": ("out.0.", plain),
        "conv_out.": ("out.2.", plain),
        "mid_block.resnets.0.": ("middle_block.0.", _UNET_RESNET),
        "mid_block.attentions.0.": ("middle_block.1.", plain),
        "mid_block.resnets.1.": ("middle_block.2.", _UNET_RESNET),
        # SDXL's pooled-text and size embedding
        "add_embedding.linear_1.": ("label_emb.0.0.", plain),
        "add_embedding.linear_2.": ("label_emb.0.2.", plain),
        # class labels: a table (num_class_embeds, the x4 upscaler's noise level:
        # label_emb.weight) or an MLP (timestep / projection: label_emb.0.0, label_emb.0.2)
        "class_embedding.": ("label_emb.", {"linear_1": "0.0", "linear_2": "0.2"}),
    }
    idx = 1
    for b in range(levels):
        for j in range(lpb):
            m[f"down_blocks.{b}.resnets.{j}."] = (f"input_blocks.{idx}.0.", _UNET_RESNET)
            m[f"down_blocks.{b}.attentions.{j}."] = (f"input_blocks.{idx}.1.", plain)
            idx += 1
        if b < levels - 1:
            m[f"down_blocks.{b}.downsamplers.0.conv."] = (f"input_blocks.{idx}.0.op.", plain)
            idx += 1
    idx = 0
    for b in range(levels):
        has_attention = any(k.startswith(f"up_blocks.{b}.attentions.") for k in keys)
        for j in range(lpb + 1):
            m[f"up_blocks.{b}.resnets.{j}."] = (f"output_blocks.{idx}.0.", _UNET_RESNET)
            m[f"up_blocks.{b}.attentions.{j}."] = (f"output_blocks.{idx}.1.", plain)
            idx += 1
        if b < levels - 1:
            slot = f"output_blocks.{idx - 1}.{2 if has_attention else 1}.conv."
            m[f"up_blocks.{b}.upsamplers.0.conv."] = (slot, plain)
    return m


def vae_key_map(config: Mapping[str, Any]) -> KeyMap:
    """Diffusers VAE prefixes -> (LDM prefix, suffix table) for this config."""
    lpb = _layers_per_block(config)
    levels = len(config["down_block_types"])
    plain: Mapping[str, str] = {}
    m: KeyMap = {
        "quant_conv.": ("quant_conv.", plain),
        "post_quant_conv.": ("post_quant_conv.", plain),
    }
    for part in ("encoder", "decoder"):
        m[f"{part}.conv_in."] = (f"{part}.conv_in.", plain)
        m[f"{part}.conv_out."] = (f"{part}.conv_out.", plain)
        m[f"{part}.conv_norm_out."] = (f"{part}.norm_out.", plain)
        m[f"{part}.mid_block.resnets.0."] = (f"{part}.mid.block_1.", _VAE_RESNET)
        m[f"{part}.mid_block.resnets.1."] = (f"{part}.mid.block_2.", _VAE_RESNET)
        m[f"{part}.mid_block.attentions.0."] = (f"{part}.mid.attn_1.", _VAE_ATTENTION)
    for b in range(levels):
        enc, dec = f"encoder.down_blocks.{b}.", f"decoder.up_blocks.{b}."
        for j in range(lpb):
            m[f"{enc}resnets.{j}."] = (f"encoder.down.{b}.block.{j}.", _VAE_RESNET)
        m[f"{enc}downsamplers.0.conv."] = (f"encoder.down.{b}.downsample.conv.", plain)
        # The original decoder numbers its levels from the lowest resolution up.
        level = levels - 1 - b
        for j in range(lpb + 1):
            m[f"{dec}resnets.{j}."] = (f"decoder.up.{level}.block.{j}.", _VAE_RESNET)
        m[f"{dec}upsamplers.0.conv."] = (f"decoder.up.{level}.upsample.conv.", plain)
    return m


def unet_to_original(state_dict: Tensors, config: Mapping[str, Any]) -> StateDict:
    """Diffusers UNet2DConditionModel weights -> ``model.diffusion_model.*``."""
    if config.get("time_cond_proj_dim"):
        raise LayoutError("this UNet takes a guidance-scale embedding (LCM's "
                          "time_cond_proj_dim), which the original single-file layout has no "
                          "place for: keep it as a diffusers folder")
    return _apply_map(state_dict, unet_key_map(config, set(state_dict)), UNET_PREFIX)


def vae_to_original(state_dict: Tensors, config: Mapping[str, Any]) -> StateDict:
    """Diffusers AutoencoderKL weights -> ``first_stage_model.*``."""
    out = _apply_map(state_dict, vae_key_map(config), VAE_PREFIX)
    # The original VAE attention uses 1x1 convolutions where diffusers uses linears.
    for key, tensor in out.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and tensor.ndim == 2:
            out[key] = tensor[:, :, None, None]
    return out


def text_encoder_to_original(state_dict: Tensors) -> StateDict:
    """transformers CLIPTextModel weights -> ``cond_stage_model.transformer.text_model.*``."""
    # transformers >= 5.6 dropped the ``text_model.`` level; older saves still have it.
    return {CLIP_PREFIX + k.removeprefix("text_model."): v for k, v in state_dict.items()}


def _config_dict(module: torch.nn.Module) -> dict[str, Any]:
    config = module.config  # type: ignore[union-attr]
    if hasattr(config, "to_json_string"):  # transformers config
        return json.loads(config.to_json_string(use_diff=False))
    return json.loads(module.to_json_string())  # type: ignore[operator]


def save_original_checkpoint(
    path: Path,
    *,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    text_encoder: torch.nn.Module,
    scheduler_config: Mapping[str, Any],
    family: str = "sd1",
) -> None:
    """Write one ``.safetensors`` file in the original layout with configs in its metadata."""
    unet_cfg, vae_cfg = _config_dict(unet), _config_dict(vae)
    tensors: StateDict = {}
    tensors.update(unet_to_original(unet.state_dict(), unet_cfg))
    tensors.update(vae_to_original(vae.state_dict(), vae_cfg))
    tensors.update(text_encoder_to_original(text_encoder.state_dict()))
    configs = {
        "family": family,
        "unet": unet_cfg,
        "vae": vae_cfg,
        "text_encoder": _config_dict(text_encoder),
        "scheduler": json.loads(json.dumps(dict(scheduler_config), default=list)),
    }
    # diffusers-internal bookkeeping, not part of the published config format.
    configs["scheduler"].pop("_use_default_values", None)
    # safetensors refuses shared or non-contiguous storage.
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(configs, sort_keys=True)}
    save_file(tensors, str(path), metadata=metadata)


def read_config_metadata(metadata: Mapping[str, str] | None,
                         shapes: Mapping[str, Sequence[int]] | None = None
                         ) -> dict[str, Any] | None:
    """The component configs stored by :func:`save_original_checkpoint`, if present.

    With the file's tensor ``shapes``, their widths are bounded by the widest tensor
    dimension and their layer counts by :data:`MAX_CONFIG_LAYERS`: a model is built
    from them before any weight is checked, so a mangled config could ask for terabytes.
    """
    configs = parse_config_metadata(metadata)
    if configs is None:
        return None
    missing = {"unet", "vae", "text_encoder", "scheduler"} - set(configs)
    if missing:
        raise LayoutError(f"{CONFIG_METADATA_KEY} metadata lacks {sorted(missing)}")
    if shapes is not None:
        _check_config_sizes(configs, max((max(s, default=0) for s in shapes.values()),
                                         default=0))
    return configs


def parse_config_metadata(metadata: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The ``{component: config}`` object a file's :data:`CONFIG_METADATA_KEY` holds (None
    without one); malformed metadata is a :class:`LayoutError` that says so."""
    if not metadata or CONFIG_METADATA_KEY not in metadata:
        return None
    try:
        configs = json.loads(metadata[CONFIG_METADATA_KEY])
    except ValueError as exc:
        raise LayoutError(f"the {CONFIG_METADATA_KEY} metadata is not valid JSON ({exc})"
                          ) from None
    if not isinstance(configs, dict):
        raise LayoutError(f"the {CONFIG_METADATA_KEY} metadata is not a JSON object")
    for name, config in configs.items():
        if name == "latent_scale":  # a file saved without a VAE: its MODEL's scale
            if isinstance(config, bool) or not isinstance(config, int | float) \
                    or not 0 < config < 1e3:
                raise LayoutError(f"{CONFIG_METADATA_KEY} metadata: latent_scale "
                                  f"{config!r} is not a positive number")
        elif name not in ("family", "label") and config is not None \
                and not isinstance(config, dict):
            raise LayoutError(f"{CONFIG_METADATA_KEY} metadata: {name!r} is not an object")
    return configs


#: the most layers (per block, or a text encoder's) a config in a file's metadata may ask for
MAX_CONFIG_LAYERS = 256
_WIDTH_KEYS = ("block_out_channels", "cross_attention_dim", "hidden_size", "intermediate_size",
               "projection_dim", "attention_head_dim", "num_attention_heads")
_LAYER_KEYS = ("layers_per_block", "transformer_layers_per_block", "num_hidden_layers")


def _check_config_sizes(configs: Mapping[str, Any], widest: int) -> None:
    def numbers(value: Any) -> list[Any]:
        return [x for v in value for x in numbers(v)] if isinstance(value, list | tuple) \
            else [value]

    for name, config in configs.items():
        if not isinstance(config, dict):
            continue
        for key, limit in [(k, widest) for k in _WIDTH_KEYS] + \
                          [(k, MAX_CONFIG_LAYERS) for k in _LAYER_KEYS]:
            for value in numbers(config.get(key)):
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int) or \
                        not 0 < value <= limit:
                    raise LayoutError(
                        f"{CONFIG_METADATA_KEY} metadata: {name}.{key} = {value!r} does not "
                        f"fit the file's weights (at most {limit})")
