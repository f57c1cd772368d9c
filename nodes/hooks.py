"""Hooks under ComfyUI's ids (``comfy_extras/nodes_hooks.py``): LoRAs and checkpoints that
act only for the conditionings they are attached to, scheduled by keyframes. The nodes
that attach them to conditionings are in :mod:`nodes.hook_conditioning`.

Create Hook LoRA / Model as LoRA make HOOKS; Set Hook Keyframes schedules them
(Create Hook Keyframe(s) make HOOK_KEYFRAMES); Cond Set Props (and its pair, combine and
default variants) attach them to conditionings, with a mask, a strength and a timestep
range; Set CLIP Hooks applies them to the text encoder (and, by default, to every
conditioning it encodes). A region prompt can thus draw with its own LoRA, or a LoRA can
fade in over the steps, in one sampler run (:mod:`nodes.diffusion.hooks`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import TextEncoder
from nodes.diffusion.hook_groups import (
    INTERPOLATIONS,
    HookGroup,
    HookKeyframe,
    WeightHook,
    add_keyframe,
    combine_groups,
    interpolated,
)
from nodes.lora import _LoraFileNode, _patch_clip, _read, list_loras
from nodes.models import CheckpointFileNode, list_checkpoints

Keyframes = tuple[HookKeyframe, ...]
Span = tuple[float, float]
MAX_KEYFRAMES = 1000
#: schedule_clip's encodings of one prompt (each a batch entry in sampling)
MAX_STRETCHES = 100
log = logging.getLogger(__name__)


def _strength(default: float = 1.0) -> Any:
    return Input(default, min=-20.0, max=20.0, step=0.01)


def percent_input(default: float) -> Any:
    return Input(default, min=0.0, max=1.0, step=0.001)


# --- create ------------------------------------------------------------------------------------

class CreateHookLoraModelOnly(_LoraFileNode):
    """A LoRA as a hook on the model only: it changes the model (``strength_model``) only
    for the conditionings it is attached to (Cond Set Props). Chain with ``prev_hooks``."""

    TYPE = "CreateHookLoraModelOnly"
    DISPLAY_NAME = "Create Hook LoRA (MO)"
    CATEGORY = "advanced/hooks/create"
    OUTPUTS = (Output("HOOKS"),)

    lora_name: str = Input(..., choices=list_loras, description="A file in models/loras")
    strength_model: float = _strength()
    prev_hooks: HookGroup | None = Input(None, type="HOOKS", optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[HookGroup]:
        previous = self.prev_hooks or HookGroup()
        clip = float(getattr(self, "strength_clip", 0.0))
        if self.strength_model == 0 and clip == 0:
            return (previous,)
        hook = WeightHook(self.lora_name, self.strength_model, clip,
                          lora=_read(ctx, self.lora_name))
        return (previous.combined(HookGroup((hook,))),)


class CreateHookLora(CreateHookLoraModelOnly):
    """A LoRA as a hook: it changes the model (``strength_model``) only for the
    conditionings it is attached to (Cond Set Props), and the text encoder
    (``strength_clip``) through Set CLIP Hooks. Chain several with ``prev_hooks``."""

    TYPE = "CreateHookLora"
    DISPLAY_NAME = "Create Hook LoRA"

    strength_clip: float = _strength()


class CreateHookModelAsLoraModelOnly(CheckpointFileNode):
    """Another checkpoint of the same base model as a hook on the model: where attached,
    the weights move toward that checkpoint's by ``strength_model`` (1: its weights)."""

    TYPE = "CreateHookModelAsLoraModelOnly"
    DISPLAY_NAME = "Create Hook Model as LoRA (MO)"
    CATEGORY = "advanced/hooks/create"
    OUTPUTS = (Output("HOOKS"),)

    ckpt_name: str = Input(..., choices=list_checkpoints,
                           description="A checkpoint of the same base model")
    strength_model: float = _strength()
    prev_hooks: HookGroup | None = Input(None, type="HOOKS", optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[HookGroup]:
        from nodes.models import load_checkpoint

        path = ctx.env.resolve("models", "checkpoints", self.ckpt_name)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {self.ckpt_name!r} not found in "
                                    "models/checkpoints")
        model, clip, _ = load_checkpoint(ctx, path)
        hook = WeightHook(self.ckpt_name, self.strength_model,
                          float(getattr(self, "strength_clip", 0.0)), model=model, clip=clip)
        return ((self.prev_hooks or HookGroup()).combined(HookGroup((hook,))),)


class CreateHookModelAsLora(CreateHookModelAsLoraModelOnly):
    """Another checkpoint of the same base model as a hook: where attached, the model's
    weights move toward that checkpoint's by ``strength_model`` (1: its weights), the text
    encoder's by ``strength_clip`` (through Set CLIP Hooks)."""

    TYPE = "CreateHookModelAsLora"
    DISPLAY_NAME = "Create Hook Model as LoRA"

    strength_clip: float = _strength()


# --- schedule ----------------------------------------------------------------------------------

class SetHookKeyframes(Node):
    """Schedule every hook of ``hooks`` by the keyframes (without any: unchanged)."""

    TYPE = "SetHookKeyframes"
    DISPLAY_NAME = "Set Hook Keyframes"
    CATEGORY = "advanced/hooks/scheduling"
    OUTPUTS = (Output("HOOKS"),)

    hooks: HookGroup = Input(type="HOOKS")
    hook_kf: Keyframes | None = Input(None, type="HOOK_KEYFRAMES", optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[HookGroup]:
        if self.hook_kf is None or self.hooks is None:
            if self.hooks is None:  # (Combine Hooks of nothing): no hook to schedule
                ctx.warn("Set Hook Keyframes got no hooks (its Combine Hooks has no "
                         "inputs): the keyframes schedule nothing")
            return (self.hooks,)
        return (self.hooks.with_keyframes(self.hook_kf),)


class CreateHookKeyframe(Node):
    """From ``start_percent`` of the schedule on (0: the first step, 1: after the last),
    the hooks' strength is multiplied by ``strength_mult``; before the first keyframe its
    own multiplier applies. Chain with ``prev_hook_kf``."""

    TYPE = "CreateHookKeyframe"
    DISPLAY_NAME = "Create Hook Keyframe"
    CATEGORY = "advanced/hooks/scheduling"
    OUTPUTS = (Output("HOOK_KEYFRAMES", "HOOK_KF"),)

    strength_mult: float = _strength()
    start_percent: float = percent_input(0.0)
    prev_hook_kf: Keyframes | None = Input(None, type="HOOK_KEYFRAMES", optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[Keyframes]:
        previous = _bounded(self.prev_hook_kf or (), 1)
        return (add_keyframe(previous, HookKeyframe(self.strength_mult, self.start_percent)),)


def _bounded(keyframes: Keyframes, more: int) -> Keyframes:
    if len(keyframes) + more > MAX_KEYFRAMES:
        raise ValueError(f"a hook schedule holds at most {MAX_KEYFRAMES} keyframes")
    return keyframes


def _add_series(previous: Keyframes, percents: list[float], strengths: list[float]
                ) -> Keyframes:
    out = _bounded(previous, len(strengths))
    for k, (percent, strength) in enumerate(zip(percents, strengths, strict=False)):
        # only the first of a series holds for a step (ComfyUI's guarantee_steps)
        out = add_keyframe(out, HookKeyframe(float(strength), float(percent),
                                             1 if k == 0 else 0))
    return out


class CreateHookKeyframesInterpolated(Node):
    """``keyframes_count`` keyframes evenly spaced from ``start_percent`` to
    ``end_percent``, their strengths running from ``strength_start`` to ``strength_end``
    along ``interpolation``: fade a hook in or out over the steps."""

    TYPE = "CreateHookKeyframesInterpolated"
    DISPLAY_NAME = "Create Hook Keyframes Interp."
    CATEGORY = "advanced/hooks/scheduling"
    OUTPUTS = (Output("HOOK_KEYFRAMES", "HOOK_KF"),)

    strength_start: float = Input(1.0, min=0.0, max=10.0, step=0.001)
    strength_end: float = Input(1.0, min=0.0, max=10.0, step=0.001)
    interpolation: str = Input("linear", choices=INTERPOLATIONS)
    start_percent: float = percent_input(0.0)
    end_percent: float = percent_input(1.0)
    keyframes_count: int = Input(5, min=2, max=100)
    print_keyframes: bool = Input(False)
    prev_hook_kf: Keyframes | None = Input(None, type="HOOK_KEYFRAMES", optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[Keyframes]:
        percents = interpolated(self.start_percent, self.end_percent, self.keyframes_count,
                                "linear")
        strengths = interpolated(self.strength_start, self.strength_end,
                                 self.keyframes_count, self.interpolation)
        out = _add_series(self.prev_hook_kf or (), percents, strengths)
        if self.print_keyframes:
            log.info("Hook keyframes: %s", ", ".join(
                f"{p:g}: {v:g}" for p, v in zip(percents, strengths, strict=True)))
        return (out,)


class CreateHookKeyframesFromFloats(Node):
    """One keyframe per value of ``floats_strength`` (a FLOATS list or one FLOAT), evenly
    spaced from ``start_percent`` to ``end_percent``."""

    TYPE = "CreateHookKeyframesFromFloats"
    DISPLAY_NAME = "Create Hook Keyframes From Floats"
    CATEGORY = "advanced/hooks/scheduling"
    OUTPUTS = (Output("HOOK_KEYFRAMES", "HOOK_KF"),)

    floats_strength: Any = Input(-1.0, type="FLOATS", force_input=True)
    start_percent: float = percent_input(0.0)
    end_percent: float = percent_input(1.0)
    print_keyframes: bool = Input(False)
    prev_hook_kf: Keyframes | None = Input(None, type="HOOK_KEYFRAMES", optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[Keyframes]:
        values = self.floats_strength
        if isinstance(values, int | float):
            values = [float(values)]
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError) as err:
            raise ValueError("floats_strength must be a FLOATS list or a FLOAT") from err
        if not values or len(values) > MAX_KEYFRAMES:
            raise ValueError(f"floats_strength needs 1 to {MAX_KEYFRAMES} values, got "
                             f"{len(values)}")
        percents = interpolated(self.start_percent, self.end_percent, len(values), "linear")
        out = _add_series(self.prev_hook_kf or (), percents, values)
        if self.print_keyframes:
            log.info("Hook keyframes: %s", ", ".join(
                f"{p:g}: {v:g}" for p, v in zip(percents, values, strict=True)))
        return (out,)


# --- combine -----------------------------------------------------------------------------------

def hooks_input() -> Any:
    return Input(None, type="HOOKS", optional=True)


class CombineHooks2(Node):
    """Join hook groups (each hook once); nothing linked gives nothing."""

    TYPE = "CombineHooks2"
    DISPLAY_NAME = "Combine Hooks [2]"
    CATEGORY = "advanced/hooks/combine"
    OUTPUTS = (Output("HOOKS"),)

    hooks_A: HookGroup | None = hooks_input()
    hooks_B: HookGroup | None = hooks_input()

    def execute(self, ctx: ExecutionContext) -> tuple[HookGroup | None]:
        names = sorted(n for n in type(self).INPUT_SPECS if n.startswith("hooks_"))
        return (combine_groups([getattr(self, n) for n in names]),)


class CombineHooks4(CombineHooks2):
    """Join up to four hook groups."""

    TYPE = "CombineHooks4"
    DISPLAY_NAME = "Combine Hooks [4]"

    hooks_C: HookGroup | None = hooks_input()
    hooks_D: HookGroup | None = hooks_input()


class CombineHooks8(CombineHooks4):
    """Join up to eight hook groups."""

    TYPE = "CombineHooks8"
    DISPLAY_NAME = "Combine Hooks [8]"

    hooks_E: HookGroup | None = hooks_input()
    hooks_F: HookGroup | None = hooks_input()
    hooks_G: HookGroup | None = hooks_input()
    hooks_H: HookGroup | None = hooks_input()


class SetClipHooks(Node):
    """Apply hooks to the text encoder: their LoRAs (``strength_clip``) change how prompts
    are encoded, and with ``apply_to_conds`` every conditioning this CLIP encodes carries
    the hooks to the sampler. ``schedule_clip`` encodes each prompt once per stretch of
    the hooks' keyframes (each a conditioning for its part of the steps)."""

    TYPE = "SetClipHooks"
    DISPLAY_NAME = "Set CLIP Hooks"
    CATEGORY = "advanced/hooks/clip"
    OUTPUTS = (Output("CLIP"),)

    clip: TextEncoder = Input(type="CLIP")
    apply_to_conds: bool = Input(True)
    schedule_clip: bool = Input(False)
    hooks: HookGroup | None = hooks_input()

    def execute(self, ctx: ExecutionContext) -> tuple[TextEncoder]:
        if self.hooks is None:
            return (self.clip,)
        from nodes.diffusion.hook_groups import clip_schedule

        clip = replace(self.clip, cond_hooks=self.hooks if self.apply_to_conds else None)
        if not self.schedule_clip:
            return (hooked_clip(clip, self.hooks, {}),)
        schedule = clip_schedule(self.hooks)
        if len(schedule) > MAX_STRETCHES:
            raise ValueError(f"schedule_clip would encode each prompt {len(schedule)} times "
                             f"(one per stretch of the keyframes), more than {MAX_STRETCHES}: "
                             "use fewer keyframes or turn schedule_clip off")
        stretches = tuple((span, hooked_clip(clip, self.hooks, mults))
                          for span, mults in schedule)
        return (replace(clip, clip_schedule=stretches),)


def hooked_clip(clip: TextEncoder, hooks: HookGroup, mults: dict[object, float]
                ) -> TextEncoder:
    """``clip`` with each hook's text-encoder change at ``strength_clip`` × its
    multiplier in ``mults`` (by hook identity; 1 when absent)."""
    from nodes.diffusion.hooks import model_difference
    from nodes.diffusion.lora import LoraPatch

    out = replace(clip, clip_schedule=())
    for hook in hooks.hooks:
        strength = hook.strength_clip * mults.get(hook.ref, 1.0)
        if strength == 0:
            continue
        if hook.lora is not None:
            out = _patch_clip(out, hook.lora, strength)
            continue
        for encoder, field in (("text_encoder", "patches"), ("text_encoder_2", "patches_2")):
            mine, theirs = getattr(clip, encoder), getattr(hook.clip, encoder, None)
            if mine is None:
                continue
            if theirs is None:
                raise ValueError(f"checkpoint {hook.name!r} has no {encoder} to hook")
            weights = tuple(model_difference(hook.name, theirs, mine))
            out = replace(out, **{field: (*getattr(out, field),
                                          LoraPatch(hook.name, strength, weights))})
    return out


NODE_CLASSES = (CreateHookLora, CreateHookLoraModelOnly, CreateHookModelAsLora,
                CreateHookModelAsLoraModelOnly, SetHookKeyframes, CreateHookKeyframe,
                CreateHookKeyframesInterpolated, CreateHookKeyframesFromFloats,
                CombineHooks2, CombineHooks4, CombineHooks8, SetClipHooks)
