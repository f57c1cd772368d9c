"""Conditioning Concat, Conditioning Average and Conditioning Set Timestep Range:
ComfyUI's core nodes (same node ids, inputs, defaults and bounds) that merge two prompts'
text states into one conditioning, or limit a prompt to part of the schedule.

Both read only the first entry of ``conditioning_from`` (its token states and, for
Average, its pooled output; a warning if it has more, as ComfyUI) and apply it to every
entry of ``conditioning_to``. Every other option stays ``conditioning_to``'s: SDXL's
size conditioning, a region's area or mask, its strength, attached techniques
(ControlNet, SEGA, GLIGEN...); ``conditioning_from``'s are dropped, as in ComfyUI.
Inputs are never changed: each node returns new entries and new tensors.

Conditioning Set Timestep Range marks each entry with its range; the sampler's combined
conditioning (:mod:`nodes.diffusion.combine`) counts an entry only on the steps in it.
CLIP Text Encode (Controlnet) stores a second text on each entry, for ControlNets only
(ComfyUI's ``cross_attn_controlnet``; see :mod:`nodes.diffusion.token_weights`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from engine import ExecutionContext, Input, Node, Output
from nodes.conditioning import ConditioningSetStrength
from nodes.diffusion.embeddings import EmbeddingLibrary, prompt_problems
from nodes.diffusion.handles import CondEntry, Conditioning, TextEncoder

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def _source(node: str, conditioning_to: Conditioning, conditioning_from: Conditioning
            ) -> CondEntry:
    """``conditioning_from``'s first entry, once both conditionings are checked non-empty."""
    for name, cond in (("conditioning_to", conditioning_to),
                       ("conditioning_from", conditioning_from)):
        if not cond.entries:
            raise ValueError(f"{node}: {name} is empty: link a prompt's conditioning")
    if len(conditioning_from.entries) > 1:
        logger.warning("%s: conditioning_from has %d entries; only the first is applied to "
                       "conditioning_to (as in ComfyUI)", node, len(conditioning_from.entries))
    return conditioning_from.entries[0]


def _states(node: str, name: str, embeds: Any) -> torch.Tensor:
    if getattr(embeds, "dim", lambda: 0)() != 3 or embeds.shape[1] == 0:
        shape = tuple(getattr(embeds, "shape", ()))
        raise ValueError(f"{node}: {name}'s text states must be [batch, tokens, width] with "
                         f"at least one token, got {shape}")
    return embeds


def _fit_from(node: str, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``source`` states on ``target``'s device and dtype, its batch matched (a batch of
    one repeats); widths must agree (one model's text encoder)."""
    if source.shape[2] != target.shape[2]:
        raise ValueError(
            f"{node}: conditioning_to's text states are {target.shape[2]} wide and "
            f"conditioning_from's {source.shape[2]}: both prompts must be encoded by the same "
            "model's CLIP (SD 1.x 768, SD 2.x 1024, SDXL 2048)")
    if source.shape[0] != target.shape[0]:
        if source.shape[0] != 1:
            raise ValueError(f"{node}: conditioning_to has a batch of {target.shape[0]} and "
                             f"conditioning_from of {source.shape[0]}: they must match (or "
                             "conditioning_from be a single prompt)")
        source = source.expand(target.shape[0], -1, -1)
    return source.to(device=target.device, dtype=target.dtype)


class ConditioningConcat(Node):
    """Append a second prompt's tokens to a prompt: ``conditioning_from``'s token states
    are placed after each ``conditioning_to`` entry's (77 + 77 = 154 tokens), so the
    UNet attends to both prompts at once without either being re-encoded: unlike
    writing one long prompt, neither part's words influence the other's encoding.
    Typical use: a style or quality prompt added to a subject prompt. The pooled
    output (SDXL) and all other options stay ``conditioning_to``'s."""

    TYPE = "ConditioningConcat"
    DISPLAY_NAME = "Conditioning (Concat)"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning_to: Conditioning = Input(type="CONDITIONING")
    conditioning_from: Conditioning = Input(type="CONDITIONING")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        import torch

        source = _source(self.TYPE, self.conditioning_to, self.conditioning_from)
        states = _states(self.TYPE, "conditioning_from", source.embeds)
        entries = []
        for entry in self.conditioning_to.entries:
            target = _states(self.TYPE, "conditioning_to", entry.embeds)
            joined = torch.cat((target, _fit_from(self.TYPE, states, target)), dim=1)
            entries.append(CondEntry(joined, dict(entry.options)))
        return (Conditioning(tuple(entries)),)


class ConditioningAverage(Node):
    """Blend two prompts: each ``conditioning_to`` entry's token states become
    ``strength x to + (1 - strength) x from`` (1: only ``conditioning_to``, 0: only
    ``conditioning_from``'s text, 0.5: halfway), token by token. ``conditioning_from`` is
    cut to ``conditioning_to``'s length or padded with zero states (as ComfyUI), so
    give both prompts the same number of 75-token windows for a clean blend. SDXL's
    pooled outputs blend the same way (``conditioning_from``'s is used when
    ``conditioning_to`` has none); all other options stay ``conditioning_to``'s."""

    TYPE = "ConditioningAverage"
    DISPLAY_NAME = "Conditioning (Average)"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning_to: Conditioning = Input(type="CONDITIONING")
    conditioning_from: Conditioning = Input(type="CONDITIONING")
    conditioning_to_strength: float = Input(
        1.0, min=0.0, max=1.0, step=0.01,
        description="Weight of conditioning_to (1: unchanged, 0: conditioning_from)")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        import torch

        weight = float(self.conditioning_to_strength)  # 0..1: checked by Input's bounds
        source = _source(self.TYPE, self.conditioning_to, self.conditioning_from)
        states = _states(self.TYPE, "conditioning_from", source.embeds)
        pooled_from = source.options.get("pooled_output")
        entries = []
        for entry in self.conditioning_to.entries:
            target = _states(self.TYPE, "conditioning_to", entry.embeds)
            other = _fit_from(self.TYPE, states, target)[:, :target.shape[1]]
            missing = target.shape[1] - other.shape[1]
            if missing > 0:  # zero states for conditioning_from's missing tokens
                other = torch.cat((other, other.new_zeros(other.shape[0], missing,
                                                          other.shape[2])), dim=1)
            options = dict(entry.options)
            if pooled_from is not None:
                options["pooled_output"] = self._pooled(options.get("pooled_output"),
                                                        pooled_from, weight)
            entries.append(CondEntry(target * weight + other * (1.0 - weight), options))
        return (Conditioning(tuple(entries)),)

    def _pooled(self, pooled_to: Any, pooled_from: torch.Tensor, weight: float
                ) -> torch.Tensor:
        if pooled_to is None:
            return pooled_from
        if pooled_to.shape[-1] != pooled_from.shape[-1]:
            raise ValueError(f"{self.TYPE}: the pooled outputs are {pooled_to.shape[-1]} and "
                             f"{pooled_from.shape[-1]} wide: both prompts must be encoded by "
                             "the same model's CLIP")
        pooled_from = pooled_from.to(device=pooled_to.device, dtype=pooled_to.dtype)
        return pooled_to * weight + pooled_from * (1.0 - weight)


class ConditioningSetTimestepRange(Node):
    """Use this conditioning only on part of the schedule: from ``start`` to ``end``, as
    fractions of the noise levels (0 = the first, noisiest step; 1 = the end).

    Prompt switching: encode two prompts, give one 0.0-0.4 and the other 0.4-1.0 and
    join them with Conditioning (Combine): the first lays out the picture (the early,
    noisy steps decide composition), the second fills in its details. Ranges are read on
    the noise level, as ComfyUI's: they hold for any step count, and KSamplerAdvanced's
    start_at_step / end_at_step sub-runs read the whole schedule's. Every step needs some
    prompt on each side: ranges that leave a gap are an error before sampling starts.
    """

    TYPE = "ConditioningSetTimestepRange"
    DISPLAY_NAME = "Conditioning Set Timestep Range"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning: Conditioning = Input(type="CONDITIONING")
    start: float = Input(0.0, min=0.0, max=1.0, step=0.001,
                         description="Fraction of the schedule where the prompt starts to act")
    end: float = Input(1.0, min=0.0, max=1.0, step=0.001,
                       description="Fraction of the schedule where it stops")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Any) -> list[tuple[str | None, str]]:
        start, end = inputs.get("start"), inputs.get("end")
        if isinstance(start, int | float) and isinstance(end, int | float) and start > end:
            return [("end", f"end ({end}) is before start ({start}): the prompt would never "
                     "act")]
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        from nodes.diffusion.combine import TIMESTEP_RANGE

        if not self.conditioning.entries:
            raise ValueError(f"{self.TYPE}: the conditioning is empty: link a prompt's "
                             "conditioning")
        span = (float(self.start), float(self.end))
        return (Conditioning(tuple(CondEntry(e.embeds, {**e.options, TIMESTEP_RANGE: span})
                                   for e in self.conditioning.entries)),)


class ConditioningSetAreaStrength(ConditioningSetStrength):
    """ComfyUI's name for Conditioning Set Strength: the weight of these entries where
    they overlap other prompts (areas, masks, Conditioning Combine)."""

    TYPE = "ConditioningSetAreaStrength"
    DISPLAY_NAME = "Conditioning Set Area Strength"


class CLIPTextEncodeControlnet(Node):
    """Give the ControlNets their own prompt: ``text`` is encoded (weights and
    ``embedding:name`` as in Encode Prompt) and stored on every entry of
    ``conditioning``; a ControlNet applied to these entries (before or after this node)
    then reads this text in its cross-attention instead of the prompt the UNet reads,
    which stays ``conditioning``'s. Entries without it (the negative, unless it goes
    through this node too) keep their own text. Useful where the prompt says more than
    the control image shows, or to steer a ControlNet that follows text (tile, shuffle).
    Cost: one text-encoder pass; a ControlNet whose rows read texts of different lengths
    runs once per length.
    """

    TYPE = "CLIPTextEncodeControlnet"
    DISPLAY_NAME = "CLIP Text Encode (Controlnet)"
    CATEGORY = "_for_testing/conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    clip: TextEncoder = Input(type="CLIP")
    conditioning: Conditioning = Input(type="CONDITIONING")
    text: str = Input("", multiline=True, dynamic_prompts=True,
                      description="The ControlNets' prompt")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Any) -> list[tuple[str | None, str]]:
        text = inputs.get("text")
        if not isinstance(text, str):
            return []
        return [("text", message, severity)
                for severity, message in prompt_problems(env, text)]

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        from nodes.conditioning import encode_text_pooled
        from nodes.diffusion.token_weights import CONTROLNET_POOLED, CONTROLNET_TEXT

        if not self.conditioning.entries:
            raise ValueError(f"{self.TYPE}: the conditioning is empty: link a prompt's "
                             "conditioning")
        encoder = self.clip.text_encoder
        dim = int(encoder.get_input_embeddings().weight.shape[1])
        embeds, pooled = encode_text_pooled(self.clip, self.text, EmbeddingLibrary(ctx.env, dim))
        for entry in self.conditioning.entries:
            if entry.embeds.shape[-1] != embeds.shape[-1]:
                raise ValueError(
                    f"{self.TYPE}: the text is {embeds.shape[-1]} wide but the conditioning "
                    f"is {entry.embeds.shape[-1]}: use the CLIP of the conditioning's model")
        extra = {CONTROLNET_TEXT: embeds, CONTROLNET_POOLED: pooled}
        return (Conditioning(tuple(CondEntry(e.embeds, {**e.options, **extra})
                                   for e in self.conditioning.entries)),)


NODE_CLASSES = (ConditioningConcat, ConditioningAverage, ConditioningSetTimestepRange,
                ConditioningSetAreaStrength, CLIPTextEncodeControlnet)
