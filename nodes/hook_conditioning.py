"""Attaching hooks to conditionings, under ComfyUI's ids (``nodes_hooks.py``'s Cond Set
Props family): hooks, a mask with its strength and a timestep range on a conditioning
or a positive / negative pair, combined with others, or as a default conditioning that
speaks where masked ones leave the image uncovered."""

from __future__ import annotations

from typing import Any

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Conditioning
from nodes.diffusion.hook_groups import HookGroup
from nodes.hooks import hooks_input, percent_input

Span = tuple[float, float]


def set_props(conditioning: Conditioning, strength: float, set_cond_area: str,
              mask: Any, hooks: HookGroup | None, timesteps: Span | None,
              default: bool = False) -> Conditioning:
    """ComfyUI's ``set_conds_props``: hooks added to each entry's own, a mask (weighted by
    ``strength``; without a mask ``strength`` changes nothing, as in ComfyUI) and a
    timestep range."""
    from nodes.diffusion.combine import DEFAULT, TIMESTEP_RANGE
    from nodes.diffusion.handles import CondEntry

    entries = []
    for entry in conditioning.entries:
        options = dict(entry.options)
        if hooks is not None:
            own = options.get("hooks")
            options["hooks"] = hooks if own is None else own.combined(hooks)
        if mask is not None:
            if mask.dim() == 2:
                mask = mask[None]
            if mask.dim() != 3:
                raise ValueError(f"mask must be a MASK [B, H, W], got {tuple(mask.shape)}")
            options.update(mask=mask, set_area_to_bounds=set_cond_area != "default",
                           mask_strength=strength)
        if timesteps is not None:
            options[TIMESTEP_RANGE] = (float(timesteps[0]), float(timesteps[1]))
        if default:
            options[DEFAULT] = True
        entries.append(CondEntry(entry.embeds, options))
    return Conditioning(tuple(entries))


def _combine(a: Conditioning, b: Conditioning) -> Conditioning:
    return Conditioning((*a.entries, *b.entries))


def _strength_input() -> Any:
    return Input(1.0, min=0.0, max=10.0, step=0.01)


def _area_input() -> Any:
    return Input("default", choices=("default", "mask bounds"))


def _mask_input() -> Any:
    return Input(None, type="MASK", optional=True)


def _timesteps_input() -> Any:
    return Input(None, type="TIMESTEPS_RANGE", optional=True)


def _props(node: Any, conditioning: Conditioning) -> Conditioning:
    return set_props(conditioning, node.strength, node.set_cond_area, node.mask, node.hooks,
                     node.timesteps)


class _Props(Node):
    """Cond Set Props' inputs after the conditionings (a base: its fields come last)."""

    strength: float = _strength_input()
    set_cond_area: str = _area_input()
    mask: Any = _mask_input()
    hooks: HookGroup | None = hooks_input()
    timesteps: Span | None = _timesteps_input()


class _New(Node):
    cond_NEW: Conditioning = Input(type="CONDITIONING")


class _BaseAndNew(Node):
    cond: Conditioning = Input(type="CONDITIONING")
    cond_NEW: Conditioning = Input(type="CONDITIONING")


class _PairNew(Node):
    positive_NEW: Conditioning = Input(type="CONDITIONING")
    negative_NEW: Conditioning = Input(type="CONDITIONING")


class _PairBaseAndNew(Node):
    positive: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    positive_NEW: Conditioning = Input(type="CONDITIONING")
    negative_NEW: Conditioning = Input(type="CONDITIONING")


# The conditionings' base is listed last, so its fields come first (ComfyUI's order).
class ConditioningSetProperties(_Props, _New):
    """Attach hooks, a mask (weighted by ``strength``; "mask bounds" composes the prompt
    inside the mask's box) and a timestep range to a conditioning."""

    TYPE = "ConditioningSetProperties"
    DISPLAY_NAME = "Cond Set Props"
    CATEGORY = "advanced/hooks/cond single"
    OUTPUTS = (Output("CONDITIONING"),)

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        return (_props(self, self.cond_NEW),)


class ConditioningSetPropertiesAndCombine(_Props, _BaseAndNew):
    """Cond Set Props on ``cond_NEW``, then combined with ``cond`` (a region with its
    own LoRA beside the whole-image prompt)."""

    TYPE = "ConditioningSetPropertiesAndCombine"
    DISPLAY_NAME = "Cond Set Props Combine"
    CATEGORY = "advanced/hooks/cond single"
    OUTPUTS = (Output("CONDITIONING"),)

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        return (_combine(self.cond, _props(self, self.cond_NEW)),)


class PairConditioningSetProperties(_Props, _PairNew):
    """Cond Set Props on a positive / negative pair."""

    TYPE = "PairConditioningSetProperties"
    DISPLAY_NAME = "Cond Pair Set Props"
    CATEGORY = "advanced/hooks/cond pair"
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning, Conditioning]:
        return _props(self, self.positive_NEW), _props(self, self.negative_NEW)


class PairConditioningSetPropertiesAndCombine(_Props, _PairBaseAndNew):
    """Cond Set Props Combine on a positive / negative pair."""

    TYPE = "PairConditioningSetPropertiesAndCombine"
    DISPLAY_NAME = "Cond Pair Set Props Combine"
    CATEGORY = "advanced/hooks/cond pair"
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning, Conditioning]:
        return (_combine(self.positive, _props(self, self.positive_NEW)),
                _combine(self.negative, _props(self, self.negative_NEW)))


class PairConditioningCombine(Node):
    """Combine two positive / negative pairs."""

    TYPE = "PairConditioningCombine"
    DISPLAY_NAME = "Cond Pair Combine"
    CATEGORY = "advanced/hooks/cond pair"
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    positive_A: Conditioning = Input(type="CONDITIONING")
    negative_A: Conditioning = Input(type="CONDITIONING")
    positive_B: Conditioning = Input(type="CONDITIONING")
    negative_B: Conditioning = Input(type="CONDITIONING")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning, Conditioning]:
        return (_combine(self.positive_A, self.positive_B),
                _combine(self.negative_A, self.negative_B))


class ConditioningSetDefaultCombine(Node):
    """Add a default conditioning: it speaks wherever the other (masked) ones leave the
    image uncovered (1 − their summed weight), with its own hooks."""

    TYPE = "ConditioningSetDefaultCombine"
    DISPLAY_NAME = "Cond Set Default Combine"
    CATEGORY = "advanced/hooks/cond single"
    OUTPUTS = (Output("CONDITIONING"),)

    cond: Conditioning = Input(type="CONDITIONING")
    cond_DEFAULT: Conditioning = Input(type="CONDITIONING")
    hooks: HookGroup | None = hooks_input()

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        default = set_props(self.cond_DEFAULT, 1.0, "default", None, self.hooks, None,
                            default=True)
        return (_combine(self.cond, default),)


class PairConditioningSetDefaultCombine(Node):
    """Cond Set Default Combine on a positive / negative pair."""

    TYPE = "PairConditioningSetDefaultCombine"
    DISPLAY_NAME = "Cond Pair Set Default Combine"
    CATEGORY = "advanced/hooks/cond pair"
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    positive: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    positive_DEFAULT: Conditioning = Input(type="CONDITIONING")
    negative_DEFAULT: Conditioning = Input(type="CONDITIONING")
    hooks: HookGroup | None = hooks_input()

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning, Conditioning]:
        return tuple(_combine(base, set_props(new, 1.0, "default", None, self.hooks, None,
                                              default=True))
                     for base, new in ((self.positive, self.positive_DEFAULT),
                                       (self.negative, self.negative_DEFAULT)))  # type: ignore[return-value]


class ConditioningTimestepsRange(Node):
    """A timestep range for Cond Set Props, and the ranges before and after it."""

    TYPE = "ConditioningTimestepsRange"
    DISPLAY_NAME = "Timesteps Range"
    CATEGORY = "advanced/hooks"
    OUTPUTS = (Output("TIMESTEPS_RANGE", "TIMESTEPS_RANGE"),
               Output("TIMESTEPS_RANGE", "BEFORE_RANGE"),
               Output("TIMESTEPS_RANGE", "AFTER_RANGE"))

    start_percent: float = percent_input(0.0)
    end_percent: float = percent_input(1.0)

    def execute(self, ctx: ExecutionContext) -> tuple[Span, Span, Span]:
        start, end = self.start_percent, self.end_percent
        return (start, end), (0.0, start), (end, 1.0)


NODE_CLASSES = (ConditioningSetProperties, ConditioningSetPropertiesAndCombine,
                PairConditioningSetProperties, PairConditioningSetPropertiesAndCombine,
                ConditioningSetDefaultCombine, PairConditioningSetDefaultCombine,
                PairConditioningCombine, ConditioningTimestepsRange)
