"""Load SD 1.x / 2.x / SDXL ControlNets and T2I-Adapters from a diffusers folder or one checkpoint
file, offline (both live in ``models/controlnet``; :func:`load_control_model` tells them apart).

A single file may be in the original ControlNet layout (``control_model.*`` keys, or
the same keys without the prefix as most published files have) or in diffusers'
layout. Its config comes from Steerflow's ``steerflow.config`` metadata when
present, else from the shipped SD 1.5 / SD 2.1 / SDXL UNet config picked by the
cross-attention width, the way ``ControlNetModel.from_unet`` derives it (an SDXL
ControlNet's transformer depths come from its weights: there are smaller variants). Pickle
files are refused unless the caller opts in (see ``read_checkpoint_file``). A ControlNet-Union
(xinsir's ControlNet++: a ``task_embedding`` key) loads as ``ControlNetUnionModel``, its union
settings read from its weights (:mod:`nodes.diffusion.controlnet_union`).

A T2I-Adapter file may be in diffusers' layout (``adapter.*``) or TencentARC's original
one (``conv_in``/``body.*``, full and light adapters); diffusers has no converter for
it. Its config comes from the metadata, else from the weights' shapes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, ControlNetUnionModel, T2IAdapter, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from safetensors.torch import save_file

from nodes.diffusion.controlnet_union import (
    UNION_PREFIXES,
    build_union,
    is_union_checkpoint,
    union_model_config,
    union_weights,
)
from nodes.diffusion.loading import (
    _check_folder_weights,
    _empty,
    _load_strict,
    family_configs,
    read_checkpoint_file,
)
from nodes.diffusion.memory import place_model
from nodes.diffusion.original_layout import (
    CONFIG_METADATA_KEY,
    _apply_map,
    parse_config_metadata,
    unet_key_map,
)

CONTROL_PREFIX = "control_model."
StateDict = dict[str, torch.Tensor]


def load_control_model(path: Path, *, allow_pickle: bool = False,
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       budget: int | None = None
                       ) -> ControlNetModel | ControlNetUnionModel | T2IAdapter:
    """A ControlNet (plain or union) or a T2I-Adapter in eval mode, whichever ``path`` holds
    (a diffusers folder's config, a single file's metadata or keys tell them apart). One
    bigger than ``budget`` bytes stays on the CPU with sequential offload (:func:`place_model`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ControlNet or T2I-Adapter not found: {path}")
    model: ControlNetModel | ControlNetUnionModel | T2IAdapter
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is a folder but not a diffusers ControlNet or T2I-Adapter "
                             "(no config.json)")
        _check_folder_weights(path, allow_pickle=allow_pickle)
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        cls = {"ControlNetModel": ControlNetModel, "T2IAdapter": T2IAdapter,
               "ControlNetUnionModel": ControlNetUnionModel}.get(
            config.get("_class_name", "ControlNetModel"))
        if "num_control_type" in config:  # xinsir's folders name it ControlNetModel_Union
            cls = ControlNetUnionModel
        if cls is None:
            raise ValueError(f"{path.name} is a {config['_class_name']}, not a ControlNetModel, "
                             "ControlNetUnionModel or T2IAdapter")
        model = cls.from_pretrained(path, local_files_only=True, torch_dtype=dtype,
                                    use_safetensors=True if not allow_pickle else None)
    else:
        state_dict, metadata = read_checkpoint_file(path, allow_pickle=allow_pickle)
        if is_adapter_checkpoint(state_dict, metadata):
            model = adapter_from_state_dict(state_dict, metadata, name=path.name)
        else:
            model = controlnet_from_state_dict(state_dict, metadata, name=path.name)
    return place_model(model, device, dtype, budget=budget)


def load_controlnet(path: Path, *, allow_pickle: bool = False,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    budget: int | None = None) -> ControlNetModel | ControlNetUnionModel:
    """A ControlNet (plain or union) in eval mode from a diffusers folder or a single file."""
    net = load_control_model(path, allow_pickle=allow_pickle, device=device, dtype=dtype,
                             budget=budget)
    if isinstance(net, T2IAdapter):
        raise ValueError(f"{Path(path).name} is a T2I-Adapter, not a ControlNet")
    return net


def load_t2i_adapter(path: Path, *, allow_pickle: bool = False,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     budget: int | None = None) -> T2IAdapter:
    """A T2I-Adapter in eval mode from a diffusers folder or a single checkpoint file."""
    adapter = load_control_model(path, allow_pickle=allow_pickle, device=device, dtype=dtype,
                                 budget=budget)
    if not isinstance(adapter, T2IAdapter):
        raise ValueError(f"{Path(path).name} is a ControlNet, not a T2I-Adapter")
    return adapter


def controlnet_from_state_dict(state_dict: StateDict, metadata: Mapping[str, str] | None = None,
                               *, name: str = "checkpoint"
                               ) -> ControlNetModel | ControlNetUnionModel:
    """Build a ControlNet from a single file's tensors (original or diffusers layout); a
    ControlNet-Union (xinsir's layout: diffusers names) when it has a task embedding."""
    config = _config_from_metadata(metadata)
    unet_config = None
    if config is None:
        unet_config = family_configs(_detect_family(state_dict, name))["unet"]
    converted = convert_controlnet_checkpoint(
        state_dict, config or {"layers_per_block": unet_config["layers_per_block"]})
    # The converter fills absent keys with None; drop them so the check names them.
    converted = {k: v for k, v in converted.items() if v is not None}
    hint = _hint_encoder(state_dict)
    if hint:  # an original-layout file: name its hint encoder for any number of stages
        converted = {k: v for k, v in converted.items()
                     if not k.startswith("controlnet_cond_embedding.")}
        converted.update(hint)
    converted.update(_sdxl_added_embedding(state_dict))
    union = is_union_checkpoint(state_dict)
    if union:  # under diffusers' names whatever the layout
        converted = {k: v for k, v in converted.items() if not k.startswith(UNION_PREFIXES)}
        converted.update(union_weights(state_dict))
    if unet_config is not None and unet_config.get("addition_embed_type") == "text_time":
        unet_config = {**unet_config,
                       "transformer_layers_per_block": _transformer_depths(converted)}
    if "controlnet_cond_embedding.conv_in.weight" not in converted:
        raise ValueError(f"{name} is not a ControlNet: it has no hint encoder "
                         "(input_hint_block.* / controlnet_cond_embedding.*) weights")
    if union:  # the plain ControlNet's config, plus the union settings from the weights
        base = config or dict(_empty(lambda: _controlnet_for_unet(unet_config, converted)).config)
        union_config = base if "num_control_type" in base else union_model_config(
            base, converted, name)
        model = _empty(lambda: build_union(union_config))
        return _load_strict("ControlNet-Union", model, converted)
    if config is not None:
        model = _empty(lambda: ControlNetModel.from_config(config))
    else:
        model = _empty(lambda: _controlnet_for_unet(unet_config, converted))
    return _load_strict("controlnet", model, converted)


def _hint_encoder(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """``input_hint_block.*`` -> ``controlnet_cond_embedding.*`` for any number of stages.

    The original hint encoder is one Sequential of convolutions with SiLUs between them:
    ``conv_in`` first, ``conv_out`` last, the ``blocks`` in between. diffusers' reader puts
    ``conv_out`` at index 14, which holds only for SD's four stages (an 8x VAE); the hint
    encoders of models with a 2x or 4x VAE have fewer.
    """
    convs: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        key = key.removeprefix(CONTROL_PREFIX)
        if key.startswith("input_hint_block."):
            _, index, param = key.split(".", 2)
            convs.setdefault(int(index), {})[param] = value
    order = sorted(convs)
    names = ["conv_in", *(f"blocks.{i}" for i in range(len(order) - 2)), "conv_out"]
    return {f"controlnet_cond_embedding.{name}.{param}": value
            for name, index in zip(names, order, strict=False)
            for param, value in convs[index].items()}


def _strip_prefix(state_dict: Mapping[str, Any]) -> list[str]:
    return [k.removeprefix(CONTROL_PREFIX) for k in state_dict]


def _detect_family(state_dict: Mapping[str, torch.Tensor], name: str) -> str:
    """SD 1.x ControlNets cross-attend to 768-wide CLIP-L states, SD 2.x to 1024-wide."""
    if "lora_controlnet" in state_dict:  # ComfyUI's ControlLora marker (Stability's files)
        raise ValueError(
            f"{name} is a Control-LoRA (Stability AI's control-lora files: low-rank changes to "
            "the model's own weights), which Steerflow does not load; use a full ControlNet "
            "or a T2I-Adapter for the same control")
    widths = {int(v.shape[-1]) for k, v in state_dict.items() if k.endswith("attn2.to_k.weight")}
    if widths == {768}:
        return "sd1"
    if widths == {1024}:
        return "sd2"
    if widths == {2048}:
        return "sdxl"
    raise ValueError(
        f"{name}: cannot tell which model this ControlNet is for (cross-attention width "
        f"{sorted(widths) or 'none'}); SD 1.x (768), SD 2.x (1024) and SDXL (2048) are "
        "supported. "
        f"A file saved by Steerflow carries its config in the {CONFIG_METADATA_KEY!r} metadata.")


def _sdxl_added_embedding(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """SDXL's pooled/size embedding in the original layout (``label_emb.0.{0,2}``), which
    diffusers' ControlNet converter leaves out, under its diffusers names."""
    out: StateDict = {}
    for key, value in state_dict.items():
        key = key.removeprefix(CONTROL_PREFIX)
        for layer, linear in (("0", "linear_1"), ("2", "linear_2")):
            if key.startswith(f"label_emb.0.{layer}."):
                out[f"add_embedding.{linear}.{key.rsplit('.', 1)[1]}"] = value
    return out


def _transformer_depths(weights: Mapping[str, torch.Tensor]) -> list[int]:
    """Transformer blocks per down block (SDXL ControlNets come in several depths:
    the full model's 0/2/10, and smaller ones)."""
    depths: dict[int, int] = {}
    for key in weights:
        parts = key.split(".")
        if parts[0] == "down_blocks" and "transformer_blocks" in parts:
            block = int(parts[1])
            depth = int(parts[parts.index("transformer_blocks") + 1]) + 1
            depths[block] = max(depths.get(block, 0), depth)
    blocks = 1 + max((int(k.split(".")[1]) for k in weights if k.startswith("down_blocks.")),
                     default=0)
    # a block without attention keeps 1 (diffusers' default; it is unused there)
    return [depths.get(i, 1) for i in range(blocks)]


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
    configs = parse_config_metadata(metadata)
    if configs is None:
        return None
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


# --- T2I-Adapters -----------------------------------------------------------------------------

ADAPTER_CONFIG = "t2i_adapter"  # its config's key in the steerflow.config metadata
ADAPTER_PREFIX = "adapter."


def is_adapter_checkpoint(state_dict: Mapping[str, torch.Tensor],
                          metadata: Mapping[str, str] | None = None) -> bool:
    """A T2I-Adapter's weights (either layout), not a ControlNet's: no ControlNet has
    ``body.*`` (adapters) or ``backbone.*`` (style adapters) keys."""
    configs = parse_config_metadata(metadata)
    if configs is not None:
        return ADAPTER_CONFIG in configs
    return any(k.removeprefix(ADAPTER_PREFIX).startswith(("body.", "backbone."))
               for k in state_dict)


def adapter_from_state_dict(state_dict: StateDict, metadata: Mapping[str, str] | None = None,
                            *, name: str = "checkpoint") -> T2IAdapter:
    """Build a T2IAdapter from a single file's tensors (diffusers or original layout)."""
    config = (parse_config_metadata(metadata) or {}).get(ADAPTER_CONFIG)
    if any(k.startswith("backbone.") for k in state_dict):
        raise ValueError(f"{name} is a T2I style adapter (CLIP-image tokens); only full and "
                         "light T2I-Adapters are supported")
    if any(k.startswith(ADAPTER_PREFIX) for k in state_dict):
        weights = dict(state_dict)
    else:
        blocks = None if config is None else int(config["num_res_blocks"])
        weights = adapter_original_to_diffusers(state_dict, blocks, name)
    config = dict(config) if config is not None else adapter_config_from_weights(weights, name)
    model = _empty(lambda: T2IAdapter.from_config(config))
    return _load_strict("T2I-Adapter", model, weights)


def _index(key: str, position: int) -> int:
    return int(key.split(".")[position])


def adapter_original_to_diffusers(state_dict: Mapping[str, torch.Tensor],
                                  num_res_blocks: int | None, name: str) -> StateDict:
    """TencentARC's ``Adapter`` / ``Adapter_light`` keys -> diffusers' ``T2IAdapter`` keys.

    The full adapter's ``body`` is one flat list of ``num_res_blocks`` resnets per level
    (the first of a level holding its channel-changing ``in_conv``); the light one nests
    ``body.<level>.body.<j>``. Only the variant diffusers implements converts: 1x1
    second convolutions, identity skips, average-pool downsampling.
    """
    keys = set(state_dict)
    out: StateDict = {}
    if "conv_in.weight" in keys:  # full adapter
        odd = sorted(k for k in keys if ".skep." in k or ".down_opt." in k)
        if odd or any(v.shape[-1] != 1 for k, v in state_dict.items()
                      if k.endswith(("block2.weight", "in_conv.weight"))):
            raise ValueError(f"{name} is a T2I-Adapter variant diffusers cannot represent "
                             "(skip or downsampling convolutions, or 3x3 kernels in the "
                             f"resnets' second convolutions{', e.g. ' + odd[0] if odd else ''})")
        if num_res_blocks is None:
            firsts = sorted(_index(k, 1) for k in keys if k.endswith(".in_conv.weight"))
            num_res_blocks = firsts[0] if firsts else 2  # 2: every released full adapter
        for key, value in state_dict.items():
            if key.startswith("conv_in."):
                out[ADAPTER_PREFIX + key] = value
                continue
            if not key.startswith("body."):
                raise ValueError(f"{name}: unexpected T2I-Adapter key {key!r}")
            level, j = divmod(_index(key, 1), num_res_blocks)
            rest = key.split(".", 2)[2]
            if rest.startswith("in_conv."):
                if j:
                    raise ValueError(f"{name}: {key} is not the first resnet of its level; "
                                     f"the file does not have {num_res_blocks} per level")
                out[f"adapter.body.{level}.{rest}"] = value
            else:
                out[f"adapter.body.{level}.resnets.{j}.{rest}"] = value
        return out
    for key, value in state_dict.items():  # light adapter
        parts = key.split(".")
        if parts[0] != "body" or len(parts) < 4:
            raise ValueError(f"{name} is not a T2I-Adapter: unexpected key {key!r}")
        if parts[2] == "body":
            out[f"adapter.body.{parts[1]}.resnets.{'.'.join(parts[3:])}"] = value
        else:
            out[ADAPTER_PREFIX + key] = value
    return out


def _unshuffled_channels(width: int, name: str) -> tuple[int, int]:
    """(image channels, downscale factor) from the first convolution's input width
    ``channels * factor**2``; colour (3) or grey (1) images only, which makes it unique."""
    for channels in (3, 1):
        factor = round((width / channels) ** 0.5)
        if width % channels == 0 and channels * factor * factor == width:
            return channels, factor
    raise ValueError(f"{name}: cannot tell the T2I-Adapter's image channels and downscale "
                     f"factor from its first convolution ({width} input channels)")


def adapter_config_from_weights(weights: Mapping[str, torch.Tensor], name: str
                                ) -> dict[str, Any]:
    """The ``T2IAdapter`` config that diffusers-layout ``weights`` were saved from.

    A full adapter whose factor is 16 is taken for SDXL's (``full_adapter_xl``, as ComfyUI
    does): the two differ only in where they downsample, which the weights do not show.
    """
    levels = 1 + max(_index(k, 2) for k in weights if k.startswith("adapter.body."))

    def resnets(level: int) -> int:
        return len({_index(k, 4) for k in weights
                    if k.startswith(f"adapter.body.{level}.resnets.")})

    if "adapter.conv_in.weight" in weights:
        in_channels, factor = _unshuffled_channels(
            int(weights["adapter.conv_in.weight"].shape[1]), name)
        channels = [int(weights[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0])
                    for i in range(levels)]
        kind = "full_adapter_xl" if factor == 16 else "full_adapter"
    else:
        in_channels, factor = _unshuffled_channels(
            int(weights["adapter.body.0.in_conv.weight"].shape[1]), name)
        outs = [int(weights[f"adapter.body.{i}.out_conv.weight"].shape[0])
                for i in range(levels)]
        # diffusers' light adapter repeats its last width in one extra, downsampling level.
        channels, kind = outs[:-1], "light_adapter"
        if levels < 2 or outs[-1] != outs[-2]:
            raise ValueError(f"{name}: a light T2I-Adapter's last level must repeat the width "
                             f"of the one before (got {outs})")
    return {"in_channels": in_channels, "channels": channels, "num_res_blocks": resnets(0),
            "downscale_factor": factor, "adapter_type": kind}


def adapter_to_original(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]
                        ) -> StateDict:
    """Diffusers ``T2IAdapter`` weights -> TencentARC's layout (inverse of the reader)."""
    light = config["adapter_type"] == "light_adapter"
    blocks = int(config["num_res_blocks"])
    out: StateDict = {}
    for key, value in state_dict.items():
        rest = key.removeprefix(ADAPTER_PREFIX)
        parts = rest.split(".")
        if parts[0] == "body" and parts[2] == "resnets":
            level, j, tail = int(parts[1]), int(parts[3]), ".".join(parts[4:])
            rest = (f"body.{level}.body.{j}.{tail}" if light
                    else f"body.{level * blocks + j}.{tail}")
        elif parts[0] == "body" and not light:  # a level's in_conv: on its first resnet
            rest = f"body.{int(parts[1]) * blocks}.{'.'.join(parts[2:])}"
        out[rest] = value
    return out


def save_original_adapter(path: Path, adapter: T2IAdapter) -> None:
    """Write one ``.safetensors`` file in the original layout, its config in the metadata."""
    config = json.loads(adapter.to_json_string())
    tensors = adapter_to_original(adapter.state_dict(), config)
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    metadata = {"format": "pt",
                CONFIG_METADATA_KEY: json.dumps({ADAPTER_CONFIG: config}, sort_keys=True)}
    save_file(tensors, str(path), metadata=metadata)
