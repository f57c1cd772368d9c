"""Hook groups and keyframes (HOOKS, HOOK_KEYFRAMES): the values ComfyUI's hook nodes
pass around (``comfy/hooks.py``). No torch here: the node modules import this at start;
the sampling side is :mod:`nodes.diffusion.hooks`."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

INTERPOLATIONS = ("linear", "ease_in", "ease_out", "ease_in_out")


@dataclass(frozen=True)
class HookKeyframe:
    """From ``start_percent`` of the schedule on, the hook's strength is multiplied by
    ``strength``; it holds for at least ``guarantee_steps`` steps once reached."""

    strength: float
    start_percent: float = 0.0
    guarantee_steps: int = 1


def add_keyframe(keyframes: tuple[HookKeyframe, ...], keyframe: HookKeyframe
                 ) -> tuple[HookKeyframe, ...]:
    """Keyframes sorted by start, ties in the order they were added (ComfyUI's)."""
    return tuple(sorted((*keyframes, keyframe), key=lambda k: k.start_percent))


def interpolated(start: float, end: float, count: int, method: str) -> list[float]:
    """``count`` values from ``start`` to ``end`` along ``method`` (ComfyUI's
    ``InterpolationMethod.get_weights``)."""
    if method not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}")
    index = [k / (count - 1) if count > 1 else 0.0 for k in range(count)]
    shape = {"linear": lambda x: x, "ease_in": lambda x: x * x,
             "ease_out": lambda x: 1 - (1 - x) ** 2,
             "ease_in_out": lambda x: (1 - math.cos(x * math.pi)) / 2}[method]
    return [start + (end - start) * shape(x) for x in index]


@dataclass(frozen=True, eq=False)
class WeightHook:
    """One hook: a LoRA file (``lora``: a ``LoraFile``) or a checkpoint's weights as a
    difference (``model``: a DiffusionModel, ``clip``: its TextEncoder). ``ref`` is the
    hook's identity, kept by copies with other keyframes (ComfyUI's ``hook_ref``)."""

    name: str
    strength_model: float = 1.0
    strength_clip: float = 1.0
    lora: Any = None
    model: Any = None
    clip: Any = None
    keyframes: tuple[HookKeyframe, ...] = ()
    ref: object = field(default_factory=object)


@dataclass(frozen=True)
class HookGroup:
    """HOOKS: hooks in the order they were added, one per identity."""

    hooks: tuple[WeightHook, ...] = ()

    def combined(self, other: HookGroup | None) -> HookGroup:
        if other is None:
            return self
        known = {h.ref for h in self.hooks}
        return HookGroup((*self.hooks, *(h for h in other.hooks if h.ref not in known)))

    def with_keyframes(self, keyframes: tuple[HookKeyframe, ...]) -> HookGroup:
        return HookGroup(tuple(replace(h, keyframes=keyframes) for h in self.hooks))


def combine_groups(groups: Sequence[HookGroup | None]) -> HookGroup | None:
    """ComfyUI's ``combine_all_hooks``: None when none is given."""
    out: HookGroup | None = None
    for group in groups:
        if group is not None:
            out = group if out is None else out.combined(group)
    return out


def clip_schedule(group: HookGroup) -> list[tuple[tuple[float, float], dict[object, float]]]:
    """The stretches of the schedule where the hooks' keyframes hold still, with each
    hook's multiplier there (ComfyUI's ``get_hooks_for_clip_schedule``): Set CLIP Hooks'
    ``schedule_clip`` encodes a prompt once per stretch."""
    spans: dict[object, list[tuple[tuple[float, float], HookKeyframe | None]]] = {}
    for hook in group.hooks:
        frames = hook.keyframes
        if not frames:
            spans[hook.ref] = [((0.0, 1.0), None)]
            continue
        out, previous = [], frames[0]
        for frame in frames:
            if frame.start_percent > previous.start_percent and not math.isclose(
                    frame.strength, previous.strength):
                out.append(((previous.start_percent, frame.start_percent), previous))
                previous = frame
            elif frame.start_percent == previous.start_percent:
                previous = frame
        if not math.isclose(previous.start_percent, 1.0):
            out.append(((previous.start_percent, 1.0), previous))
        spans[hook.ref] = out
    bounds = sorted({0.0, *(x for ranges in spans.values() for span, _ in ranges for x in span)})
    stretches = []
    for low, high in itertools.pairwise(bounds):
        mults: dict[object, float] = {}
        for ref, ranges in spans.items():
            frame = next((kf for (a, b), kf in ranges if a < high and b > low), None)
            mults[ref] = 1.0 if frame is None else frame.strength
        stretches.append(((low, high), mults))
    return stretches


# --- keyframes over a run ---------------------------------------------------------------------

def percent_timestep(percent: float, num_train_timesteps: int) -> float:
    """The timestep at a fraction of the schedule (ComfyUI's ``percent_to_sigma`` on the
    timestep axis: 0 is before every step, 1 after the last)."""
    if percent <= 0:
        return math.inf
    if percent >= 1:
        return -math.inf
    return (1 - percent) * (num_train_timesteps - 1)


class KeyframeCursor:
    """Steps through one hook's keyframes as the sampler goes (ComfyUI's
    ``HookKeyframeGroup.prepare_current_keyframe``)."""

    def __init__(self, keyframes: tuple[HookKeyframe, ...], num_train_timesteps: int,
                 first_timestep: float):
        self.keyframes = keyframes
        self.starts = [percent_timestep(k.start_percent, num_train_timesteps) for k in keyframes]
        self.first = first_timestep
        self.index, self.used = 0, 0

    def _guarantee(self, i: int) -> int:
        # a keyframe that began before this run's first step guarantees nothing
        return 0 if self.starts[i] > self.first else self.keyframes[i].guarantee_steps

    def advance(self, timestep: float) -> None:
        if not self.keyframes:
            return
        if self.used >= self._guarantee(self.index):
            for i in range(self.index + 1, len(self.keyframes)):
                if self.starts[i] < timestep:
                    break
                self.index, self.used = i, 0
                if self._guarantee(i) > 0:
                    break
        self.used += 1

    @property
    def strength(self) -> float:
        return self.keyframes[self.index].strength if self.keyframes else 1.0
