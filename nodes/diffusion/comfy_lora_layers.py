"""What ComfyUI's TrainLoraNode trains, as hooks on our UNet, and its LORA_MODEL.

ComfyUI's choice of layers: a LoRA on every linear and convolution layer (``up``
kaiming-uniform a=√5, ``down`` zero, alpha 1: the scale is 1 / rank), and a full
difference on every norm weight (``.diff``) and every bias (``.diff_b``), all zero at
first. The LoRA layers are Train LoRA's :class:`~nodes.diffusion.train_lora.LoraLayers`;
the differences are forward hooks of the same kind (:class:`DiffLayers`). The result is a
kohya-layout state dict, which our Load LoRA and ComfyUI both read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.train_lora import LoraLayers

KOHYA_PREFIX = "lora_unet_"


class LoraModel(dict):  # type: ignore[type-arg]
    """LORA_MODEL: a LoRA state dict as ComfyUI passes it (tensor by key), in the kohya
    layout both our Load LoRA and ComfyUI read (``lora_unet_<module>.lora_down.weight``,
    ``.lora_up.weight``, ``.alpha``, ``.diff``, ``.diff_b``), with ``metadata`` (strings)
    for the file Save LoRA writes."""

    metadata: dict[str, str]

    def __init__(self, tensors: dict[str, Any], metadata: dict[str, str] | None = None):
        super().__init__(tensors)
        self.metadata = dict(metadata or {})


# --- what is trained ----------------------------------------------------------------------

def lora_modules(unet: Any) -> list[str]:
    """The layers ComfyUI gives a LoRA: every linear and (plain) convolution layer."""
    import torch

    return [name for name, m in unet.named_modules() if isinstance(m, torch.nn.Linear) or (
        isinstance(m, torch.nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros")]


@dataclass
class DiffLayers:
    """Trainable full differences: norm weights (``weight``) and biases (``bias``) by
    module, added by forward hooks (as :class:`LoraLayers` adds its LoRA)."""

    weight: dict[str, torch.Tensor] = field(default_factory=dict)
    bias: dict[str, torch.Tensor] = field(default_factory=dict)

    def parameters(self) -> list[torch.Tensor]:
        return [*self.weight.values(), *self.bias.values()]

    @contextmanager
    def hooked(self, root: Any) -> Iterator[None]:
        import torch
        import torch.nn.functional as F

        modules = dict(root.named_modules())

        def hook_for(name: str) -> Any:
            dw, db = self.weight.get(name), self.bias.get(name)

            def hook(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
                x = args[0]
                if isinstance(module, torch.nn.GroupNorm | torch.nn.LayerNorm):
                    w = dw if dw is not None else torch.zeros_like(module.weight)
                    b = db if db is not None else None
                    if isinstance(module, torch.nn.GroupNorm):
                        delta = F.group_norm(x.float(), module.num_groups, w.float(),
                                             None if b is None else b.float(), module.eps)
                    else:
                        delta = F.layer_norm(x.float(), module.normalized_shape, w.float(),
                                             None if b is None else b.float(), module.eps)
                elif isinstance(module, torch.nn.Conv2d):
                    delta = db.view(1, -1, 1, 1)
                else:
                    delta = db
                return output + delta.to(output.dtype)

            return hook

        handles = []
        try:
            for name in dict.fromkeys([*self.weight, *self.bias]):
                handles.append(modules[name].register_forward_hook(hook_for(name)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def entries(self) -> list[tuple[str, Any]]:
        """``(parameter name, DenseDelta)`` for a model patch."""
        from nodes.diffusion.model_editing import DenseDelta

        return [*((f"{n}.weight", DenseDelta(t.detach().float())) for n, t in self.weight.items()),
                *((f"{n}.bias", DenseDelta(t.detach().float())) for n, t in self.bias.items())]


def create_layers(unet: Any, rank: int, dtype: torch.dtype, generator: torch.Generator,
                  existing: dict[str, Any] | None = None) -> tuple[LoraLayers, DiffLayers]:
    """LoRA on every linear/convolution layer, differences on norms and biases; each starts
    from ``existing`` (a fitted LoRA file: parameter name → update) where it has the layer."""
    import torch

    from nodes.diffusion.lora import LoraWeight
    from nodes.diffusion.train_lora import LoraLayers

    existing = dict(existing or {})
    layers, diffs = LoraLayers(rank, 1.0), DiffLayers()
    modules = dict(unet.named_modules())
    device = next(unet.parameters()).device
    for name in lora_modules(unet):
        weight = modules[name].weight
        ones = (1,) * (weight.dim() - 2)
        old = existing.pop(f"{name}.weight", None)
        if isinstance(old, LoraWeight):
            r = old.rank
            down = old.down.float().reshape(r, *weight.shape[1:])
            # one scale for all layers (1 / rank): a layer's own scale goes into its up
            up = old.up.float().reshape(weight.shape[0], r, *ones) * (old.scale * rank)
        elif old is not None:
            kind = "a full weight difference" if type(old).__name__ == "DenseDelta" \
                else f"a {type(old).__name__.removesuffix('Weight')} layer"
            raise ValueError(f"existing_lora has {kind} for {name}: only its LoRA layers "
                             "and norm/bias differences can be trained on")
        else:
            up = torch.empty(weight.shape[0], rank, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(up, a=math.sqrt(5), generator=generator)
            up = up.reshape(weight.shape[0], rank, *ones)
            down = torch.zeros(rank, *weight.shape[1:], dtype=torch.float32)
        layers.down[name] = down.to(device, dtype).requires_grad_(True)
        layers.up[name] = up.to(device, dtype).requires_grad_(True)
    for name, m in modules.items():
        norm = isinstance(m, torch.nn.GroupNorm | torch.nn.LayerNorm)
        if not (norm or name in layers.down):
            continue
        for part, target in (("weight", diffs.weight), ("bias", diffs.bias)):
            param = getattr(m, part, None)
            if param is None or (part == "weight" and not norm):
                continue
            old = existing.pop(f"{name}.{part}", None)
            value = (old.value.float().reshape(param.shape) if old is not None
                     else torch.zeros(param.shape))
            target[name] = value.to(device, dtype).requires_grad_(True)
    if existing:
        raise ValueError(f"existing_lora changes {len(existing)} weights this trainer does not "
                         f"train (e.g. {', '.join(list(existing)[:3])})")
    return layers, diffs


def lora_state(layers: LoraLayers, diffs: DiffLayers, dtype: torch.dtype) -> dict[str, Any]:
    """The trained layers as a kohya-layout state dict (``lora_unet_<module with _>``)."""
    import torch

    out: dict[str, Any] = {}

    def key(module: str) -> str:
        return KOHYA_PREFIX + module.replace(".", "_")

    for name, down in layers.down.items():
        out[f"{key(name)}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
        out[f"{key(name)}.lora_up.weight"] = layers.up[name].detach().to("cpu", dtype
                                                                          ).contiguous()
        # alpha / rank of this layer = the shared scale
        out[f"{key(name)}.alpha"] = torch.tensor(layers.scale * int(down.shape[0]))
    for name, value in diffs.weight.items():
        out[f"{key(name)}.diff"] = value.detach().to("cpu", dtype).contiguous()
    for name, value in diffs.bias.items():
        out[f"{key(name)}.diff_b"] = value.detach().to("cpu", dtype).contiguous()
    return out


# --- LORA_MODEL and files -----------------------------------------------------------------

def fit_state(unet: Any, state: dict[str, Any], name: str) -> tuple[tuple[str, Any], ...]:
    """A LoRA state dict fitted to the UNet (every layer must fit): the patch's updates."""
    from nodes.diffusion.lora import LoraMismatchError, lora_from_state

    patch = lora_from_state(state, {}, name).patch(unet, "unet", 1.0)
    if patch is None:
        raise LoraMismatchError(f"{name} holds no UNet LoRA weights")
    return patch.weights


def existing_steps(name: str) -> int:
    """The steps a file name such as ``x_10_steps_00001_.safetensors`` records (ComfyUI's
    rule); 0 when it records none."""
    head = Path(name).name.split("_steps_")[0] if "_steps_" in name else ""
    tail = head.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() and len(tail) < 10 else 0
