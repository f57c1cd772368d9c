"""ControlNet-Union (xinsir's ControlNet++ / ``controlnet-union-sdxl``): one SDXL ControlNet
for many control types, loaded as diffusers' ``ControlNetUnionModel``.

The union model adds to a plain ControlNet a learnt embedding per control type
(``task_embedding``), a small transformer (``transformer_layes``, xinsir's spelling) that
turns the hint's mean features into a per-channel offset (``spatial_ch_projs``), and an
embedding of the one-hot control-type vector added to the time embedding
(``control_add_embedding``). Which type an image is, is chosen per application
(ComfyUI's SetUnionControlNetType); the types and their indices are ComfyUI's
(``UNION_TYPES``). A model knows ``num_control_type`` of them: 6 for
``controlnet-union-sdxl-1.0``, 8 (adding tile and repaint) for its ProMax weights.

Single files: xinsir's releases are diffusers-layout state dicts (no config); the config is
derived here from the weights plus the SDXL UNet config, as for plain ControlNets
(:mod:`nodes.diffusion.controlnet_loading`). A ``control_model.*`` original-layout file
with the union keys loads too.

Calling it (:func:`union_call_kwargs`) follows ``StableDiffusionXLControlNetUnionPipeline``:
``controlnet_cond`` a list of images, ``control_type`` the one-hot rows and
``control_type_idx`` the types. ``auto`` (no type, ComfyUI's default) is ComfyUI's: the
control-type embedding of an all-zero vector, the hint added as a plain ControlNet adds it
(no type embedding, no transformer offset).

Light at import (the node pack reads ``UNION_CHOICES``): torch and diffusers load on use.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import ControlNetUnionModel

StateDict = dict[str, "torch.Tensor"]

#: ComfyUI's union control types (comfy/cldm/control_types.py) -> the model's type index
UNION_TYPES: dict[str, int] = {
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,
    "repaint": 7,
}
#: the SetUnionControlNetType choices, ComfyUI's order ("auto" first: no type)
UNION_CHOICES: tuple[str, ...] = ("auto", *UNION_TYPES)
#: the union-only weights (diffusers / xinsir names)
UNION_PREFIXES = ("task_embedding", "transformer_layes.", "spatial_ch_projs.",
                  "control_add_embedding.")
#: xinsir's and ComfyUI's fixed head count: attention heads do not show in the weights
DEFAULT_TRANS_HEADS = 8
MAX_CONTROL_TYPES = 64  # sanity bound on a file's task_embedding rows


def is_union_model(model: Any) -> bool:
    from diffusers import ControlNetUnionModel

    return isinstance(model, ControlNetUnionModel)


def type_names(count: int) -> list[str]:
    """The type names a model with ``count`` control types knows (its indices 0..count-1)."""
    return [name for name, index in UNION_TYPES.items() if index < count]


def check_type(model: Any, type_name: str, label: str) -> tuple[int, ...]:
    """The ``control_types`` for ``type_name`` on ``model`` (``()`` for auto); a type the
    model was not trained with is refused, naming the ones it knows."""
    if type_name == "auto":
        return ()
    if type_name not in UNION_TYPES:
        raise ValueError(f"type {type_name!r} is not a union ControlNet type; choose one of "
                         f"{list(UNION_CHOICES)}")
    index = UNION_TYPES[type_name]
    count = int(model.config.num_control_type)
    if index >= count:
        raise ValueError(
            f"type {type_name!r} (index {index}) is not one {label} was trained with: it knows "
            f"{count} types ({', '.join(type_names(count))}); pick one of those or 'auto' "
            "(tile and repaint need the ProMax weights)")
    return (index,)


# --- loading ----------------------------------------------------------------------------------

def is_union_checkpoint(state_dict: Mapping[str, Any]) -> bool:
    """A ControlNet-Union's weights (either layout): it has a task embedding."""
    return any(k.removeprefix("control_model.") == "task_embedding" for k in state_dict)


def union_weights(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """The union-only tensors under diffusers' names: without a ``control_model.`` prefix,
    ``attn.in_proj.weight`` (ComfyUI's module name) back to ``nn.MultiheadAttention``'s
    ``attn.in_proj_weight``."""
    out: StateDict = {}
    for key, value in state_dict.items():
        key = key.removeprefix("control_model.")
        if key.startswith(UNION_PREFIXES):
            out[key.replace(".attn.in_proj.", ".attn.in_proj_")] = value
    return out


def union_config_from_weights(weights: Mapping[str, torch.Tensor], time_embed_dim: int | None,
                              name: str) -> dict[str, Any]:
    """The ``ControlNetUnionModel`` settings its union weights were made with."""
    task = weights.get("task_embedding")
    if task is None or task.dim() != 2:
        raise ValueError(f"{name} is a ControlNet-Union without a 2-D task_embedding")
    count, width = (int(n) for n in task.shape)
    if not 1 <= count <= MAX_CONTROL_TYPES:
        raise ValueError(f"{name}: {count} control types is not a ControlNet-Union "
                         f"(1..{MAX_CONTROL_TYPES})")
    layers = 1 + max((int(k.split(".")[1]) for k in weights
                      if k.startswith("transformer_layes.")), default=-1)
    if layers < 1 or "spatial_ch_projs.weight" not in weights:
        raise ValueError(f"{name} is a ControlNet-Union without its condition transformer "
                         "(transformer_layes.* / spatial_ch_projs.*)")
    if "control_add_embedding.linear_1.weight" not in weights:
        raise ValueError(f"{name} is a ControlNet-Union without its control-type embedding "
                         "(control_add_embedding.*)")
    added = int(weights["control_add_embedding.linear_1.weight"].shape[1])
    if added % count or (time_embed_dim is not None and added != time_embed_dim * count):
        raise ValueError(f"{name}: its control-type embedding takes {added} inputs, not "
                         f"{count} types x the model's {time_embed_dim}-wide time ids")
    heads = DEFAULT_TRANS_HEADS if width % DEFAULT_TRANS_HEADS == 0 else 1
    return {"num_control_type": count, "num_trans_channel": width, "num_trans_head": heads,
            "num_trans_layer": layers,
            "num_proj_channel": int(weights["spatial_ch_projs.weight"].shape[0]),
            "addition_time_embed_dim": added // count}


def union_model_config(base: Mapping[str, Any], weights: Mapping[str, torch.Tensor],
                       name: str) -> dict[str, Any]:
    """A plain ControlNet's config (``base``) plus the union settings from ``weights``."""
    from diffusers import ControlNetUnionModel

    keep = set(inspect.signature(ControlNetUnionModel.__init__).parameters)
    config = {k: v for k, v in base.items() if k in keep}
    config.update(union_config_from_weights(weights, base.get("addition_time_embed_dim"), name))
    config["_class_name"] = "ControlNetUnionModel"
    return config


def build_union(config: Mapping[str, Any]) -> ControlNetUnionModel:
    from diffusers import ControlNetUnionModel

    return ControlNetUnionModel.from_config(dict(config))


def save_union_file(path: Any, net: ControlNetUnionModel, *, with_config: bool = True) -> None:
    """One ``.safetensors`` in xinsir's layout (diffusers names); Steerflow's config metadata
    unless ``with_config`` is off (then the loader derives it, as for a downloaded file)."""
    import json

    from safetensors.torch import save_file

    from nodes.diffusion.original_layout import CONFIG_METADATA_KEY

    tensors = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    metadata = {"format": "pt"}
    if with_config:
        metadata[CONFIG_METADATA_KEY] = json.dumps({"controlnet": json.loads(
            net.to_json_string())}, sort_keys=True)
    save_file(tensors, str(path), metadata=metadata)


# --- calling ----------------------------------------------------------------------------------

def union_call_kwargs(net: ControlNetUnionModel, types: Sequence[int],
                      images: Sequence[torch.Tensor], scale: float, rows: int
                      ) -> dict[str, Any]:
    """The union forward's control arguments for ``rows`` batch rows, as the union pipeline
    passes them: one image per type (one image for auto), ``control_type`` the one-hot
    vector per row, ``conditioning_scale`` one scale per image."""
    import torch

    count = int(net.config.num_control_type)
    if any(not 0 <= t < count for t in types):
        raise ValueError(f"control types {list(types)} out of range for a union ControlNet "
                         f"with {count} types")
    if len(images) != max(1, len(types)):
        raise ValueError(f"a union ControlNet with types {list(types)} needs "
                         f"{max(1, len(types))} control image(s), got {len(images)}")
    one_hot = torch.zeros(count)
    if types:
        one_hot[list(types)] = 1.0
    return {"controlnet_cond": list(images),
            "control_type": one_hot.to(net.device, net.dtype).reshape(1, -1).repeat(rows, 1),
            # auto: one image, its type index unused (the offset is zeroed)
            "control_type_idx": list(types) or [0],
            "conditioning_scale": [float(scale)] * len(images)}


@contextlib.contextmanager
def union_forward(net: Any, types: Sequence[int]) -> Iterator[None]:
    """Around one union forward: for ``auto`` (no types) ComfyUI's call, the hint without
    the transformer's per-type offset (``spatial_ch_projs`` gives zeros for the call); under
    sequential offload, the attention output projections on the compute device (the
    attention reads their weights directly, so their own offload hooks never fire). Does
    nothing for a plain ControlNet."""
    if not is_union_model(net):
        yield
        return
    import torch

    from nodes.diffusion.memory import compute_device, is_sequentially_offloaded

    with contextlib.ExitStack() as stack:
        if not types:
            handle = net.spatial_ch_projs.register_forward_hook(
                lambda module, args, output: torch.zeros_like(output))
            stack.callback(handle.remove)
        if is_sequentially_offloaded(net):
            device = compute_device(net)
            for layer in net.transformer_layes:
                for param in layer.attn.out_proj.parameters():
                    stack.callback(setattr, param, "data", param.data)
                    param.data = param.data.to(device)
        yield
