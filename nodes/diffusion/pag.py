"""Perturbed-Attention Guidance (PAG, Ahn et al. 2024) as a sampler extension.

PAG adds a perturbed copy of the conditional batch entry in which chosen
self-attention layers use *identity attention* (every token attends only to itself,
so the layer returns its value projection), and guides away from that degraded
prediction:

    ε = ε_uncond + w (ε_cond − ε_uncond) + s (ε_cond − ε_perturbed)

or, without CFG, ε = ε_cond + s (ε_cond − ε_perturbed). With an adaptive scale s_a
the PAG scale at timestep t is max(0, s − s_a (1000 − t)). Layer selection, batch
layout and math follow diffusers' ``StableDiffusionPAGPipeline`` (``PAGMixin``,
``PAGCFGIdentitySelfAttnProcessor2_0``), so results match it. The identity
attention is an :class:`~nodes.diffusion.attention.AttentionHook` on the sampler's
one attention store; the UNet is never patched.

Importing this module does not import torch (node schemas and validation stay light).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodes.diffusion.attention import AttentionCall, AttentionHook, AttentionLayer
from nodes.diffusion.extensions import Predictions, SamplerExtension, Step

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.sampling import SamplingRun

#: diffusers' adaptive PAG scale counts down from this timestep (hard-coded there too)
ADAPTIVE_FROM_TIMESTEP = 1000


def parse_layer_ids(text: str) -> list[str]:
    """``"mid, up_blocks.1"`` → ``["mid", "up_blocks.1"]``: the pipeline's
    ``pag_applied_layers``. Commas inside ``{}``, ``()`` or ``[]`` belong to the regex."""
    ids: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            ids.append(text[start:i])
            start = i + 1
    ids.append(text[start:])
    return [part.strip() for part in ids if part.strip()]


def check_layer_ids(text: str) -> str | None:
    """A message when ``text`` is not a list of valid layer regexes, else None."""
    ids = parse_layer_ids(text)
    if not ids:
        return "name at least one self-attention layer, e.g. 'mid'"
    for layer_id in ids:
        try:
            re.compile(layer_id)
        except re.error as exc:
            return f"layer id {layer_id!r} is not a valid regular expression: {exc}"
    return None


def self_attention_layers(unet: Any) -> list[str]:
    """Module names of ``unet``'s self-attention layers (the pipeline's ``is_self_attn``)."""
    from diffusers.models.attention_processor import Attention

    return [name for name, module in unet.named_modules()
            if isinstance(module, Attention) and not module.is_cross_attention]


def _fake_integral_match(layer_id: str, name: str) -> bool:
    # diffusers: "blocks.1" must not be taken for "blocks.10" when both end in a number
    layer_id, name = layer_id.split(".")[-1], name.split(".")[-1]
    return layer_id.isnumeric() and name.isnumeric() and layer_id == name


def select_layers(names: Sequence[str], layer_ids: Sequence[str]) -> tuple[str, ...]:
    """The self-attention layers ``layer_ids`` select, as ``PAGMixin._set_pag_attn_processor``
    does: ``re.search(layer_id, name)``. An id that selects nothing is an error listing
    the layers there are."""
    chosen: list[str] = []
    for layer_id in layer_ids:
        found = [name for name in names
                 if re.search(layer_id, name) is not None
                 and not _fake_integral_match(layer_id, name)]
        if not found:
            raise ValueError(
                f"PAG layer {layer_id!r} matches none of this model's self-attention layers; "
                "ids are regular expressions searched in their names (diffusers' "
                "pag_applied_layers, e.g. 'mid', 'down_blocks.1', 'up_blocks.1.attentions.0'). "
                "The layers: " + ", ".join(names))
        chosen.extend(name for name in found if name not in chosen)
    return tuple(chosen)


@dataclass(eq=False)  # hashed by identity, like the extension that owns it
class IdentitySelfAttention(AttentionHook):
    """On the chosen self-attention layers, the perturbed entries' attention output is
    the value itself: softmax(QKᵀ) replaced by the identity matrix."""

    layers: frozenset[str]  # processor names (``unet.attn_processors`` keys)
    owner: SamplerExtension  # whose extra batch entries are the perturbed ones

    def selects(self, layer: AttentionLayer) -> bool:
        return not layer.cross and layer.name in self.layers

    def on_output(self, call: AttentionCall, attended: torch.Tensor, value: torch.Tensor
                  ) -> torch.Tensor:
        # Only in the passes that carry our entries (an extension's own pass may not).
        roles = [r for r in call.run.roles_of(self.owner) if r in call.roles]
        if not roles:
            return attended
        out = attended.clone()
        for role in roles:
            rows = call.rows(role)
            out[rows] = value[rows]
        return out


class PerturbedAttentionGuidance(SamplerExtension):
    """PAG: one perturbed copy of the conditional entry per step, guided away from."""

    priority = 150  # after Conditioning Combine (10), which forms the cond it reads
    without_cfg = True  # the pipeline's no-CFG batch [cond, perturbed]

    def __init__(self, layers: Sequence[str], scale: float = 3.0, adaptive_scale: float = 0.0):
        if not layers:
            raise ValueError("PAG needs at least one self-attention layer")
        self.layers = tuple(layers)  # module names, e.g. "mid_block.attentions.0...attn1"
        self.scale = scale
        self.adaptive_scale = adaptive_scale
        self._hook = IdentitySelfAttention(
            frozenset(f"{name}.processor" for name in self.layers), self)

    def setup(self, run: SamplingRun) -> None:
        missing = self._hook.layers - set(run.model.unet.attn_processors)
        if missing:  # the hook would silently select nothing
            raise ValueError("PAG layers not in this model: " + ", ".join(sorted(missing)))

    def extra_conditions(self, run: SamplingRun) -> Sequence[torch.Tensor]:
        # The perturbed entries see the positive prompt: one per combined positive entry,
        # averaged with the same weights as Conditioning Combine averages the cond.
        return [entry.embeds for entry in run.positive.entries]

    def extra_entries(self, run: SamplingRun) -> list[Any]:
        """The perturbed rows stand for the positive's entries (their hooks act there)."""
        return list(run.positive.entries)

    def attention_hooks(self, run: SamplingRun) -> Sequence[AttentionHook]:
        return (self._hook,)

    def scale_at(self, timestep: torch.Tensor) -> torch.Tensor | float:
        """The PAG scale at ``timestep`` (``PAGMixin._get_pag_scale``)."""
        if self.adaptive_scale > 0 and self.scale > 0:
            signal_scale = self.scale - self.adaptive_scale * (ADAPTIVE_FROM_TIMESTEP - timestep)
            return 0 if signal_scale < 0 else signal_scale
        return self.scale

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        from nodes.diffusion.combine import fused_as_cond

        # with area regions, cropped the way the cond is (each crop perturbed in its pass)
        perturbed = fused_as_cond(run, step, self, preds.of(self), preds.cond)
        return guidance + self.scale_at(step.timestep) * (preds.cond - perturbed)
