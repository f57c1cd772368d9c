"""Hooks: weights that act only for the conditionings they are attached to (ComfyUI's
hooks, ``comfy/hooks.py``), scheduled over the steps by keyframes.

A :class:`WeightHook` is a LoRA file, or another checkpoint's weights taken as a difference
("model as LoRA"), at ``strength_model`` / ``strength_clip``. A :class:`HookGroup` (HOOKS)
holds several; conditioning entries carry one under the ``hooks`` option (Cond Set Props,
Set CLIP Hooks' ``apply_to_conds``). Keyframes (HOOK_KEYFRAMES) scale a hook's strength
from a point of the schedule on, as ComfyUI's ``HookKeyframeGroup`` steps through them.

In sampling, :class:`HookedWeights` puts a bypass wrapper on every UNet layer some hook
changes, for the run only (:mod:`nodes.diffusion.module_patches`): the layer computes
``base(x) + Σₕ sₕ[row] · Δₕ(x)`` with each batch row's strengths taken from the entry its
batch role stands for (``SamplingRun.entries``). So the conditional and unconditional
entries, combined prompts and regions each see their own weights in one batched UNet
pass, where ComfyUI re-patches the model and runs each hook group on its own. Rows of
an extension's own pass (SAG, PAG, FABRIC) whose roles name no entry see the base
weights. A LoRA layer adds ``scale · up(down(x))``; a dense difference (model as LoRA,
``.diff`` layers) adds the layer's own operation with the difference as its weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from nodes.diffusion.extensions import SamplerExtension, Step, UNetCall

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun

from nodes.diffusion.hook_groups import HookGroup, KeyframeCursor, WeightHook

# --- the bypass layers ------------------------------------------------------------------------

class HookBypass(torch.nn.Module):
    """A UNet layer plus each hook's change, scaled per batch row (see the module)."""

    def __init__(self, base: torch.nn.Module, owner: HookedWeights):
        super().__init__()
        self.base = base
        self.owner = owner
        #: (hook ref, kind, tensors): "lora" (down, up, scale), "weight" (ΔW), "bias" (Δb),
        #: or "combine" (part, update, the weight it reads): a change that is not
        #: proportional to the strength (DoRA, BOFT, OFT with its rescale), computed at each
        #: strength a row asks for
        self.changes: list[tuple[object, str, tuple[Any, ...]]] = []
        self._at_strength: dict[tuple[int, float], torch.Tensor] = {}

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base(x, *args, **kwargs)
        owner = self.owner
        rows = out.shape[0]
        for i, (ref, kind, tensors) in enumerate(self.changes):  # (weight and bias: two)
            if ref not in owner.active:  # known on the host: no device sync per layer
                continue
            if kind != "combine":
                out = out + self._delta(x, kind, tensors) * _per_row(owner.row_strengths[ref],
                                                                      rows, out)
                continue
            part = tensors[0]
            for value, rows_at in owner.rows_at[ref].items():
                delta = self._delta(x, part, (self._combined(i, tensors, value),))
                out = out + delta * _per_row(rows_at, rows, out)
        return out

    def _combined(self, index: int, tensors: tuple[Any, ...], strength: float) -> torch.Tensor:
        """The ``index``-th change at ``strength``: ``combine(W, s) − W`` (a few strengths
        a run: keyframes step through them; kept while the run lasts)."""
        key = (index, strength)
        if key not in self._at_strength:
            if len(self._at_strength) >= 16:
                self._at_strength.clear()
            _, update, target = tensors
            base = target.detach().float()
            self._at_strength[key] = (update.combine(base, strength) - base).to(target.dtype)
        return self._at_strength[key]

    def _delta(self, x: torch.Tensor, kind: str, tensors: tuple[Any, ...]) -> torch.Tensor:
        base = self.base
        if kind == "lora":
            down, up, scale = tensors
            if isinstance(base, torch.nn.Linear):
                return F.linear(F.linear(x, down.flatten(1)), up.flatten(1)) * scale
            hidden = F.conv2d(x, down.reshape(down.shape[0], *base.weight.shape[1:]),
                              None, base.stride, base.padding, base.dilation, base.groups)
            return F.conv2d(hidden, up.reshape(*up.shape[:2], 1, 1)) * scale
        (delta,) = tensors
        if kind == "bias":
            shape = [1] * x.dim()
            shape[1 if isinstance(base, torch.nn.Conv2d | torch.nn.GroupNorm) else -1] = -1
            return delta.view(shape)
        if isinstance(base, torch.nn.Linear):
            return F.linear(x, delta)
        if isinstance(base, torch.nn.Conv2d):
            return F.conv2d(x, delta, None, base.stride, base.padding, base.dilation, base.groups)
        if isinstance(base, torch.nn.LayerNorm):
            return F.layer_norm(x, base.normalized_shape, None, None, base.eps) * delta
        normed = F.group_norm(x, base.num_groups, None, None, base.eps)
        return normed * delta.view(1, -1, *([1] * (x.dim() - 2)))


def _per_row(weights: torch.Tensor, rows: int, out: torch.Tensor) -> torch.Tensor:
    """Per-row ``weights`` shaped to broadcast over ``out``."""
    if weights.numel() != rows and rows % weights.numel() == 0:
        # a layout hook (HyperTile, ToMe) stacked each image's tiles on the batch
        weights = weights.repeat_interleave(rows // weights.numel())
    return weights.view(-1, *([1] * (out.dim() - 1))).to(out.dtype)


BYPASSABLE = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.GroupNorm)


# --- the sampler extension --------------------------------------------------------------------

def hook_groups(entries: Sequence[Any]) -> list[HookGroup]:
    return [e.options["hooks"] for e in entries if e.options.get("hooks") is not None]


class HookedWeights(SamplerExtension):
    """Apply the conditionings' hooks to their own batch rows (see the module)."""

    priority = 5  # before anything that runs UNet passes of its own
    step_state_only = True  # pre_step moves the keyframe cursors
    label = "LoRA hooks (Create Hook LoRA, Load LoRA (Bypass), Set CLIP Hooks)"

    def __init__(self, hooks: Sequence[WeightHook], *, every_row: bool = False):
        unique: dict[object, WeightHook] = {}
        for hook in hooks:
            unique.setdefault(hook.ref, hook)
        self.hooks = tuple(unique.values())
        #: apply to every row of every pass (Load LoRA (Bypass)), not by conditioning
        self.every_row = every_row
        self.row_strengths: dict[object, torch.Tensor] = {}
        #: per hook, each nonzero strength of the current pass and the rows at it (1 or 0),
        #: for the hooks in ``combining`` (whose changes are computed per strength)
        self.rows_at: dict[object, dict[float, torch.Tensor]] = {}
        self.combining: set[object] = set()
        #: the hooks with a nonzero strength on some row of the current pass
        self.active: set[object] = set()

    def setup(self, run: SamplingRun) -> None:
        from nodes.diffusion.module_patches import ModulePatch, attach

        unet = run.model.unet
        modules = dict(unet.named_modules())
        wrappers: dict[str, HookBypass] = {}
        self.combining = set()
        for hook in self.hooks:
            for param_name, change in _unet_changes(hook, unet):
                path, _, part = param_name.rpartition(".")
                module = modules.get(path)
                if not isinstance(module, BYPASSABLE):
                    raise ValueError(f"hook {hook.name!r} changes {param_name}, a "
                                     f"{type(module).__name__} layer, which hooks cannot "
                                     "apply")
                wrapper = wrappers.setdefault(path, HookBypass(module, self))
                kind, tensors = _change_tensors(change, part, module)
                wrapper.changes.append((hook.ref, kind, tensors))
                if kind == "combine":
                    self.combining.add(hook.ref)
        patches = []
        for path, wrapper in wrappers.items():
            parent, _, name = path.rpartition(".")
            patches.append(ModulePatch(parent, name, wrapper))
        attach(unet, patches)
        total = int(run.scheduler.config.num_train_timesteps)
        first = float(run.timesteps[0]) if len(run.timesteps) else 0.0
        # cursors per (entry hook) object: copies of a hook may carry other keyframes
        run.state[self] = {id(h): KeyframeCursor(h.keyframes, total, first)
                           for group in _all_groups(run) for h in group.hooks}

    def pre_step(self, run: SamplingRun, step: Step, latents: torch.Tensor) -> torch.Tensor:
        for cursor in run.state[self].values():
            cursor.advance(float(step.timestep))
        return latents

    def unet_inputs(self, run: SamplingRun, step: Step, call: UNetCall) -> None:
        roles = run.attention.roles
        per_role = max(call.latent_input.shape[0] // max(len(roles), 1), 1)
        cursors = run.state[self]
        strengths: dict[object, list[float]] = {h.ref: [0.0] * len(roles) for h in self.hooks}
        if self.every_row:
            strengths = {h.ref: [h.strength_model] * len(roles) for h in self.hooks}
            roles = ()
        for k, role in enumerate(roles):
            entry = run.entries.get(role)
            group = entry.options.get("hooks") if entry is not None else None
            for hook in group.hooks if group is not None else ():
                cursor = cursors.get(id(hook))
                scale = cursor.strength if cursor is not None else 1.0
                strengths[hook.ref][k] += hook.strength_model * scale
        device = call.latent_input.device
        self.active = {ref for ref, values in strengths.items() if any(values)}
        self.row_strengths = {
            ref: torch.tensor(values, device=device).repeat_interleave(per_role)
            for ref, values in strengths.items() if ref in self.active}
        self.rows_at = {  # only for the changes computed per strength (few hooks have one)
            ref: {v: torch.tensor([float(x == v) for x in values], device=device)
                  .repeat_interleave(per_role) for v in dict.fromkeys(values) if v}
            for ref, values in strengths.items() if ref in self.active & self.combining}

    def teardown(self, run: SamplingRun) -> None:
        self.row_strengths, self.rows_at, self.active = {}, {}, set()
        run.state.pop(self, None)


def _all_groups(run: SamplingRun) -> list[HookGroup]:
    return hook_groups((*run.positive.entries, *run.negative.entries))


def _unet_changes(hook: WeightHook, unet: torch.nn.Module) -> list[tuple[str, Any]]:
    """(parameter name, update) of the hook's UNet changes, fitted to ``unet``."""
    if hook.lora is not None:
        patch = hook.lora.patch(unet, "unet", 1.0)
        return list(patch.weights) if patch is not None else []
    if hook.model is None:
        return []
    return model_difference(hook.name, hook.model.unet, unet)


def model_difference(name: str, other: torch.nn.Module, base: torch.nn.Module
                     ) -> list[tuple[str, Any]]:
    """Dense updates taking ``base``'s parameters to ``other``'s (model as LoRA); the two
    must share their architecture."""
    from nodes.diffusion.model_editing import DenseDelta

    theirs = dict(other.named_parameters())
    ours = dict(base.named_parameters())
    if theirs.keys() != ours.keys() or any(theirs[k].shape != ours[k].shape for k in ours):
        raise ValueError(f"checkpoint {name!r} has another architecture than the model it "
                         "hooks: use a checkpoint of the same base model")
    out = []
    with torch.no_grad():
        for key, param in ours.items():
            delta = theirs[key].detach().to(param.device, torch.float32) - param.detach().float()
            if bool(delta.any()):
                out.append((key, DenseDelta(delta)))
    return out


def _change_tensors(update: Any, part: str, module: torch.nn.Module
                    ) -> tuple[str, tuple[Any, ...]]:
    from nodes.diffusion.lora import LoraWeight

    weight = module.weight
    if isinstance(update, LoraWeight) and part == "weight" and not isinstance(
            module, torch.nn.LayerNorm | torch.nn.GroupNorm):
        return "lora", (update.down.to(weight.device, weight.dtype),
                        update.up.to(weight.device, weight.dtype), update.scale)
    target = module.bias if part == "bias" else weight
    kind = "bias" if part == "bias" else "weight"
    if hasattr(update, "combine"):  # reads the weight: its change at each row's strength
        return "combine", (kind, update, target)
    return kind, (update.delta(target.shape, weight.device).to(weight.dtype),)
