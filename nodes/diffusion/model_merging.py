"""Model merging as weight patches: ``W ← keep · W + add · W₂`` per weight, applied per run.

ComfyUI's merge nodes clone model1 and add model2's weights to it as patches
(``add_patches(patches, strength_patch=add, strength_model=keep)``): the merged
weight is model1's weight so far (with the patches before the merge) times ``keep``
plus ``add`` times model2's effective weight (with model2's own patches). Here the
same thing is a :class:`~nodes.diffusion.lora.LoraPatch` whose updates are
:class:`MergeWeight` on model1's handle; :func:`nodes.diffusion.lora.patched` applies
it with the LoRA and TIME patches, for one sampling or encoding call, and restores
the weights after. Neither base module is ever changed, and model2's weights are
read when the patch is applied (no copy is kept: a merge costs no memory at rest).

Architectures must match: the same parameter names with the same shapes (ComfyUI
skips what does not fit with a log line; a silent partial merge gives wrong images,
so here it is a :class:`ModelMergeError` naming the first key). One difference is
allowed, as ComfyUI's "make any model an inpainting model" recipe needs it
(inpainting model + (fine-tune − base)): a UNet ``conv_in`` that differs only in its
input channels (9-channel inpainting, 8-channel Instruct-Pix2Pix vs 4) is not merged,
with a log line: as in ComfyUI, model1's weight is only scaled by its share ``keep``
(unchanged for Add, the recipe's step).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodes.diffusion.lora import LoraPatch, apply_update

if TYPE_CHECKING:
    import torch

#: ModelMergeBlocks' groups in diffusers naming (ComfyUI matches the original names by
#: prefix: ``input`` = input_blocks (conv_in, down_blocks), ``middle`` = middle_block,
#: ``out`` = output_blocks and out.0/out.2 (conv_norm_out, conv_out)); any other weight
#: (time and SDXL's add embedding) takes the first group's ratio, as ComfyUI's default.
UNET_BLOCKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input", ("conv_in.", "down_blocks.")),
    ("middle", ("mid_block.",)),
    ("out", ("up_blocks.", "conv_norm_out.", "conv_out.")),
)
#: CLIP weights ComfyUI's CLIP merges leave alone.
CLIP_SKIPPED = (".position_ids", ".logit_scale")
#: the UNet weight whose input channels may differ (left unmerged)
CONV_IN = "conv_in.weight"

log = logging.getLogger(__name__)


class ModelMergeError(ValueError):
    """Two models that cannot be merged (different architectures)."""


@dataclass(frozen=True, eq=False)
class MergeWeight:
    """One merged weight: ``keep · W + strength · add · W₂``, W₂ being model2's parameter
    ``source_attr`` of ``source_module`` with model2's own updates for it applied.

    The module is held, not the tensor, so model2 moved between devices by the cache
    is read where it is now. ``value`` and ``scale`` are what
    :func:`~nodes.diffusion.train_common.patches_digest` hashes (training run keys).
    """

    source_module: Any
    source_attr: str
    source_updates: tuple[tuple[float, Any], ...]
    keep: float
    add: float

    def other(self, device: torch.device) -> torch.Tensor:
        """Model2's effective weight, float32 on ``device``."""
        import torch

        param = getattr(self.source_module, self.source_attr)
        weight = param.detach().to(device=device, dtype=torch.float32)
        for strength, update in self.source_updates:
            weight = apply_update(weight, strength, update, param.shape)
        return weight

    def combine(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """The merged weight (float32) from model1's weight so far."""
        add = strength * self.add
        if add == 0:
            return weight if self.keep == 1 else weight * self.keep
        # keep 0 (ratio 0) gives model2's weight exactly: 0·W + W₂ rounds to W₂
        return weight * self.keep + self.other(weight.device) * add

    @property
    def scale(self) -> tuple[float, float]:
        return (self.keep, self.add)

    @property
    def value(self) -> torch.Tensor:
        return self.other(getattr(self.source_module, self.source_attr).device)


def _updates_by_param(patches: Iterable[Any]) -> dict[str, list[tuple[float, Any]]]:
    """Each parameter's updates in the patches, in order (as ``patched`` applies them)."""
    found: dict[str, list[tuple[float, Any]]] = {}
    for patch in patches:
        if patch.strength == 0:
            continue
        for name, update in patch.weights:
            found.setdefault(name, []).append((patch.strength, update))
    return found


def check_same_architecture(root1: torch.nn.Module, root2: torch.nn.Module, what: str,
                            in_channels_may_differ: bool = False) -> set[str]:
    """Raise :class:`ModelMergeError` naming the first parameter that differs; return the
    names left unmerged (``conv_in`` of other input channels, when allowed)."""
    shapes1 = {n: tuple(p.shape) for n, p in root1.named_parameters()}
    shapes2 = {n: tuple(p.shape) for n, p in root2.named_parameters()}
    unmerged: set[str] = set()
    for name, shape in shapes1.items():
        other = shapes2.get(name)
        if (in_channels_may_differ and name == CONV_IN and other is not None
                and len(other) == len(shape) and other[0] == shape[0]
                and other[2:] == shape[2:]):
            if other != shape:
                log.warning("merge: conv_in has %d input channels in model1 and %d in model2 "
                            "(an inpainting or Instruct-Pix2Pix UNet): it is not merged",
                            shape[1], other[1])
                unmerged.add(name)
            continue
        if other is None:
            problem = f"{name!r} is in model1 but not in model2"
        elif other != shape:
            problem = f"{name!r} is {list(shape)} in model1 but {list(other)} in model2"
        else:
            continue
        raise ModelMergeError(f"cannot merge these {what}: {problem} — they are different "
                              "architectures; merge models of the same base (e.g. two SD 1.5 "
                              "fine-tunes)")
    extra = next((n for n in shapes2 if n not in shapes1), None)
    if extra is not None:
        raise ModelMergeError(f"cannot merge these {what}: {extra!r} is in model2 but not in "
                              "model1 — they are different architectures; merge models of "
                              "the same base")
    return unmerged


def merge_patch(root1: torch.nn.Module, root2: torch.nn.Module, patches2: Iterable[Any],
                factors: Callable[[str], tuple[float, float]], *, label: str, what: str,
                skip: tuple[str, ...] = (), in_channels_may_differ: bool = False
                ) -> LoraPatch | None:
    """The patch merging ``root2`` (with ``patches2``) into ``root1``.

    ``factors(name)`` gives ``(keep, add)`` per parameter; identity factors (1, 0) and
    names ending in ``skip`` get no update. None when nothing changes.
    """
    unmerged = check_same_architecture(root1, root2, what, in_channels_may_differ)
    own = _updates_by_param(patches2)
    modules = dict(root2.named_modules())
    weights = []
    for name, _ in root1.named_parameters():
        if name.endswith(skip):
            continue
        keep, add = factors(name)
        if name in unmerged:
            add = 0.0  # ComfyUI scales the weight, then skips the add that does not fit
        if keep == 1 and add == 0:
            continue
        module_name, _, attr = name.rpartition(".")
        weights.append((name, MergeWeight(modules[module_name], attr,
                                          tuple(own.get(name, ())), float(keep), float(add))))
    return LoraPatch(label, 1.0, tuple(weights)) if weights else None


def unet_block(name: str) -> str:
    """The ModelMergeBlocks group (``input``/``middle``/``out``) of a UNet parameter."""
    for group, prefixes in UNET_BLOCKS:
        if name.startswith(prefixes):
            return group
    return UNET_BLOCKS[0][0]
