"""LoRA files: read diffusers/PEFT and kohya layouts, fit them to a model, patch for a call.

A LoRA adds ``ΔW = strength · (alpha / rank) · up @ down`` to some weights.
Nothing here changes a cached model for good: a MODEL or CLIP handle carries a
tuple of :class:`LoraPatch`; :func:`patched` adds the updates to the weights for
the duration of one sampling or encoding call and then copies the original
tensors back (a saved copy, not a subtraction, so switching a LoRA off gives the
base model's output bit for bit).

Key layouts understood (``<m>`` is a module path in diffusers/transformers naming):

* PEFT (diffusers >= 0.24): ``unet.<m>.lora_A.weight`` / ``lora_B.weight``,
  ``text_encoder.<m>...``; alphas from the ``lora_adapter_metadata`` entry
  (``lora_alpha``, ``alpha_pattern``, ``use_rslora``), else alpha = rank;
* older diffusers: ``<m>.lora.down.weight`` / ``.lora.up.weight``,
  ``<m>.lora_linear_layer.down/up.weight``, attention processors
  ``<attn>.processor.to_q_lora.down.weight``; keys without a component prefix
  belong to the UNet;
* kohya / A1111: ``lora_unet_<m with _>.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha`` and ``lora_te_<m with _>...``; SDXL's ``lora_te1_`` (CLIP-L), ``lora_te2_``
  (OpenCLIP bigG) and ``lora_unet_`` with the original (SGM) block names
  (``input_blocks_4_1_...``), which map through :func:`~nodes.diffusion.original_layout.
  unet_key_map`; diffusers' ``text_encoder_2.`` prefix is bigG;
* ComfyUI's full-weight differences ``<m>.diff`` / ``<m>.diff_b`` (``ΔW`` and ``Δb``
  themselves, e.g. Train Custom Diffusion's files), in any of the prefixings above;
* LyCORIS: LoHa (``<m>.hada_w1_a`` ...), LoKr (``<m>.lokr_w1`` ...), LoCon's Tucker
  core (``<m>.lora_mid.weight``), OFT and BOFT (``<m>.oft_blocks``, ``.rescale``; kohya's
  OFT files' ``oft_unet_`` prefix too) and GLoRA (``<m>.a1.weight`` ...), in any of the
  prefixings above (:mod:`nodes.diffusion.lycoris`);
* DoRA: a LoRA layer with its magnitude, PEFT's ``<m>.lora_magnitude_vector`` or
  kohya's ``<m>.dora_scale`` (:class:`DoraWeight`).

A leading ``text_model.`` (transformers < 5) is accepted for the text encoder.

Fit policy (strict, documented): every LoRA layer of a component being loaded
must find its module and match its shape; otherwise :class:`LoraMismatchError`
lists the counts and the first few failing keys. A partly matching LoRA is almost
always one made for another base model, and applying the matching part silently
gives wrong images. Keys for a component that is deliberately not loaded
(``LoraLoaderModelOnly`` skips the text encoder) are ignored.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

LORA_SUFFIXES = (".safetensors", ".sft", ".pt", ".ckpt", ".bin", ".pth")
PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors metadata entry
_SHOWN = 5  # failing keys listed in an error

StateDict = dict[str, "torch.Tensor"]


class LoraMismatchError(ValueError):
    """A LoRA whose layers do not fit the model it is applied to."""


@dataclass(frozen=True, eq=False)
class LoraWeight:
    """The low-rank update of one weight: ``ΔW = scale · up @ down`` (scale = alpha / rank)."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """``ΔW`` in float32, reshaped to the weight (1x1 or kxk convolutions alike)."""
        return _low_rank(self.down, self.up, self.scale, shape, device)


def _low_rank(down: torch.Tensor, up: torch.Tensor, scale: float, shape: torch.Size,
              device: torch.device) -> torch.Tensor:
    import torch

    up = up.to(device=device, dtype=torch.float32).flatten(1)
    down = down.to(device=device, dtype=torch.float32).flatten(1)
    return (up @ down).reshape(shape) * scale


@dataclass(frozen=True, eq=False)
class DoraWeight:
    """A DoRA layer (Liu et al. 2024, weight-decomposed LoRA): the LoRA update gives the
    direction and ``magnitude`` the length of each output row (or, in kohya files made
    with ``wd_on_out`` off, of each input channel's column, kernel included)::

        W' = magnitude · (W + s·ΔW) / ‖W + s·ΔW‖

    with ``s`` the strength and ``ΔW = scale · up @ down``, as PEFT computes it with
    ``set_adapters`` weights (so diffusers' pipelines match). Strength 0 leaves ``W``
    (the LoRA switched off); ComfyUI instead blends ``W + s·(W'₁ − W)``, which agrees at
    strength 1 only. The norm reads the weight as earlier patches left it."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float
    magnitude: torch.Tensor
    per_output: bool = True

    def combine(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        import torch

        m = self.magnitude.to(device=weight.device, dtype=torch.float32)
        direction = weight + strength * _low_rank(self.down, self.up, self.scale, weight.shape,
                                                  weight.device)
        if self.per_output:
            norm = direction.flatten(1).norm(dim=1)
            return direction * (m.flatten() / norm).reshape(-1, *(1,) * (weight.dim() - 1))
        norm = direction.transpose(0, 1).flatten(1).norm(dim=1)  # per input channel
        return direction * (m.flatten() / norm).reshape(1, -1, *(1,) * (weight.dim() - 2))


@dataclass(frozen=True, eq=False)
class LoraPatch:
    """One LoRA file fitted to one module tree, at ``strength``: parameter name → update."""

    name: str
    strength: float
    weights: tuple[tuple[str, LoraWeight], ...]


# --- reading files ----------------------------------------------------------------------

def read_lora_file(path: Path, *, allow_pickle: bool = False) -> tuple[StateDict, dict[str, Any]]:
    """The tensors and the (diffusers) adapter metadata of a LoRA file."""
    import torch

    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ValueError(f"LoRA {path.name} is a pickle file; convert it to .safetensors "
                             "or opt in to loading pickles (--allow-pickle)")
        from nodes.diffusion.loading import torch_load_weights_only

        data = torch_load_weights_only(path)
        data = data.get("state_dict", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise ValueError(f"LoRA {path.name} does not hold a state dict")
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}, {}
    from safetensors import safe_open

    tensors: StateDict = {}
    from nodes.diffusion.safetensors_io import checked

    with checked(path), safe_open(str(path), framework="pt", device="cpu") as fh:
        raw_meta = (fh.metadata() or {}).get(METADATA_KEY)
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensors[key] = fh.get_tensor(key)
    return tensors, json.loads(raw_meta) if raw_meta else {}


# --- key layouts -------------------------------------------------------------------------

@dataclass
class _Layer:
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None  # a full ΔW (ComfyUI's ``.diff``)
    diff_b: torch.Tensor | None = None  # a bias Δb (``.diff_b``)
    mid: torch.Tensor | None = None  # LoCon's Tucker core (``.lora_mid.weight``)
    magnitude: torch.Tensor | None = None  # DoRA's (``.lora_magnitude_vector``, ``.dora_scale``)
    kohya_dora: bool = False  # the magnitude is kohya's ``dora_scale`` (its axis by its shape)
    lycoris: dict[str, torch.Tensor] = field(default_factory=dict)  # LoHa / LoKr tensors


_ROLES = (  # suffix pattern → role; the module path is what precedes it
    (re.compile(r"^(.+)\.lora_A\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora_B\.weight$"), "up"),
    (re.compile(r"^(.+_lora)\.down\.weight$"), "down"),
    (re.compile(r"^(.+_lora)\.up\.weight$"), "up"),
    (re.compile(r"^(.+?)(?:\.lora|\.lora_linear_layer)\.down\.weight$"), "down"),
    (re.compile(r"^(.+?)(?:\.lora|\.lora_linear_layer)\.up\.weight$"), "up"),
    (re.compile(r"^(.+)\.lora_down\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora_up\.weight$"), "up"),
    (re.compile(r"^(.+)\.lora_mid\.weight$"), "mid"),
    (re.compile(r"^(.+)\.lora_magnitude_vector(?:\.weight)?$"), "magnitude"),
    (re.compile(r"^(.+)\.dora_scale$"), "dora_scale"),
    (re.compile(r"^(.+)\.((?:hada|lokr)_(?:w1_a|w1_b|w2_a|w2_b|w1|w2|t1|t2)|oft_blocks|rescale|"
                r"(?:a1|a2|b1|b2|bm)\.weight)$"), "lycoris"),
    (re.compile(r"^(.+)\.alpha$"), "alpha"),
    (re.compile(r"^(.+)\.diff$"), "diff"),
    (re.compile(r"^(.+)\.diff_b$"), "diff_b"),
    # LyCORIS's train_norm: a norm layer's weight and bias changes, as ComfyUI reads them
    (re.compile(r"^(.+)\.w_norm$"), "diff"),
    (re.compile(r"^(.+)\.b_norm$"), "diff_b"),
)
# Attention-processor LoRAs name q/k/v/out by their processor slot.
_PROCESSOR_SLOT = re.compile(r"(?:\.processor)?\.(to_q|to_k|to_v|to_out)_lora$")
_UNET_SLOTS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_TEXT_SLOTS = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                   "lora_te2_": "text_encoder_2", "oft_unet_": "unet",  # (kohya's OFT files)
                   "lycoris_": "unet"}  # (SimpleTuner's LyCORIS files)
# ComfyUI's generic text-encoder naming: text_encoders.<clip_l|clip_g>.transformer.<module>
_COMFY_TEXT = {"text_encoders.clip_l.": "text_encoder", "text_encoders.clip_g.": "text_encoder_2"}


def _split_component(key: str) -> tuple[str, str, bool]:
    """``(component, rest, is_kohya)`` of a key; unprefixed diffusers keys are the UNet's."""
    for prefix, component in _KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            return component, key[len(prefix):], True
    for prefix, component in _COMFY_TEXT.items():
        if key.startswith(prefix):
            return component, key[len(prefix):].removeprefix("transformer."), False
    head, _, rest = key.partition(".")
    if head in ("unet", "text_encoder", "text_encoder_2", "transformer", "prior"):
        return head, rest, False
    return "unet", key, False


_COMFY_KEY = re.compile(r"^diffusion_model\.(.+?)\.(lora_up\.weight|lora_down\.weight|alpha|"
                        r"diff|diff_b|lora_mid\.weight|dora_scale|"
                        r"(?:hada|lokr)_(?:w1_a|w1_b|w2_a|w2_b|w1|w2|t1|t2)|oft_blocks|rescale|"
                        r"(?:a1|a2|b1|b2|bm)\.weight)$")


def kohya_keys(state: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's own trained-LoRA keys (``diffusion_model.<original-layout module>.…``)
    renamed to kohya's ``lora_unet_<module with _>.…``, which our reader maps through
    the original (LDM) layout; other keys unchanged."""
    out = {}
    for k, v in state.items():
        m = _COMFY_KEY.match(k)
        out["lora_unet_" + m.group(1).replace(".", "_") + "." + m.group(2) if m else k] = v
    return out


def split_layers(state: StateDict) -> tuple[dict[str, dict[str, _Layer]], list[str]]:
    """Group keys into ``{component: {module key: layer}}``; also the keys not understood."""
    layers: dict[str, dict[str, _Layer]] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        component, rest, kohya = _split_component(key)
        for pattern, role in _ROLES:
            m = pattern.match(rest)
            if m is None:
                continue
            module = m.group(1)
            slot = _PROCESSOR_SLOT.search(module)
            if slot is not None and not kohya:
                slots = _TEXT_SLOTS if component.startswith("text_encoder") else _UNET_SLOTS
                module = module[:slot.start()] + "." + slots[slot.group(1)]
            if kohya:
                module = "kohya:" + module
            layer = layers.setdefault(component, {}).setdefault(module, _Layer())
            if role == "alpha":
                if tensor.numel() != 1:
                    raise LoraMismatchError(f"{key} holds {tensor.numel()} values; an alpha "
                                            "is one number")
                layer.alpha = float(tensor.float().item())
            elif role == "lycoris":
                layer.lycoris[m.group(2)] = tensor
            elif role == "dora_scale":
                layer.magnitude, layer.kohya_dora = tensor, True
            else:
                setattr(layer, role, tensor)
            break
        else:
            unknown.append(key)
    return layers, unknown


# --- fitting to a model ------------------------------------------------------------------

def _module_index(root: torch.nn.Module) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """Modules by dotted name, and kohya's underscore names → dotted names."""
    modules = dict(root.named_modules())
    kohya = {}
    for name in modules:
        if not name:
            continue
        flat = name.replace(".", "_")
        kohya[flat] = name
        kohya.setdefault("text_model_" + flat, name)  # transformers < 5 naming
    for original, name in _original_unet_names(root).items():
        kohya.setdefault(original.replace(".", "_"), name)  # kohya's SDXL UNet names
    return modules, kohya


def _original_unet_names(root: torch.nn.Module) -> dict[str, str]:
    """A UNet's modules by their original-layout (LDM/SGM) names, which kohya's SDXL
    LoRAs use (``input_blocks.4.1.proj_in``); empty for anything else."""
    config = getattr(root, "config", None)
    if config is None or "down_block_types" not in config or "layers_per_block" not in config:
        return {}
    from nodes.diffusion.original_layout import LayoutError, _rename_suffix, unet_key_map

    names = [n for n, _ in root.named_parameters()]
    try:
        prefix_map = unet_key_map(dict(config), set(names))
    except LayoutError:  # per-block layers_per_block: no original layout to name
        return {}
    out: dict[str, str] = {}
    for name in {n.rsplit(".", 1)[0] for n in names}:
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut]) + "."
            if prefix in prefix_map:
                new_prefix, table = prefix_map[prefix]
                out[(new_prefix + _rename_suffix(name[len(prefix):] + ".", table)).rstrip(".")
                    ] = name
                break
    return out


def _resolve(key: str, modules: dict[str, torch.nn.Module], kohya: dict[str, str]) -> str | None:
    if key.startswith("kohya:"):
        return kohya.get(key[len("kohya:"):])
    if key in modules:
        return key
    if key.startswith("text_model.") and key[len("text_model."):] in modules:
        return key[len("text_model."):]
    return None


def _alpha_for(module: str, layer: _Layer, rank: int, meta: dict[str, Any]) -> float:
    if layer.alpha is not None:
        return layer.alpha
    for pattern, alpha in (meta.get("alpha_pattern") or {}).items():
        # PEFT's rule: a pattern matches a whole trailing run of dotted names.
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(alpha)
    return float(meta.get("lora_alpha") or rank)


def component_metadata(metadata: dict[str, Any], component: str) -> dict[str, Any]:
    """The adapter config diffusers stored for one component (``unet.lora_alpha``...)."""
    prefix = component + "."
    return {k[len(prefix):]: v for k, v in metadata.items() if k.startswith(prefix)}


def fit_lora(root: torch.nn.Module, layers: dict[str, _Layer], *, name: str, component: str,
             metadata: dict[str, Any] | None = None) -> tuple[tuple[str, LoraWeight], ...]:
    """Match one component's LoRA layers to ``root``'s weights; raise on any misfit."""
    import torch

    meta = metadata or {}
    modules, kohya = _module_index(root)
    fitted: list[tuple[str, LoraWeight]] = []
    missing: list[str] = []
    incomplete: list[str] = []
    mismatched: list[str] = []
    unfit: list[str] = []  # LyCORIS layers, each with its reason
    for key, layer in layers.items():
        shown = key.removeprefix("kohya:")
        if layer.diff is not None or layer.diff_b is not None:
            problem = _fit_diff(key, layer, modules, kohya, fitted)
            if problem:
                (missing if problem == "missing" else mismatched).append(
                    shown if problem == "missing" else f"{shown} ({problem})")
            if layer.down is None and layer.up is None and not layer.lycoris \
                    and layer.mid is None:
                continue  # a bias (.diff_b) may come with a LoRA or LyCORIS weight update
        target = _resolve(key, modules, kohya)
        weight = getattr(modules[target], "weight", None) if target is not None else None
        if layer.magnitude is not None and (layer.lycoris or layer.mid is not None):
            unfit.append(f"{shown} (a DoRA magnitude on a LyCORIS layer)")
            continue
        if layer.lycoris or layer.mid is not None:  # LoHa, LoKr, LoCon with a Tucker core
            if not isinstance(weight, torch.Tensor) or weight.dim() not in (2, 4):
                missing.append(shown)
                continue
            update = _fit_lycoris_layer(layer, weight)
            if isinstance(update, str):
                unfit.append(f"{shown} ({update})")
            else:
                fitted.append((f"{target}.weight", update))
            continue
        if layer.down is None or layer.up is None:
            incomplete.append(shown)
            continue
        if not isinstance(weight, torch.Tensor) or weight.dim() not in (2, 4):
            missing.append(shown)
            continue
        down, up = layer.down, layer.up
        rank = int(down.shape[0])
        out_features, in_numel = weight.shape[0], weight[0].numel()
        if (up.shape[0] != out_features or up[0].numel() != rank
                or down[0].numel() != in_numel):
            mismatched.append(f"{shown} (LoRA {tuple(up.shape[:2])}x{tuple(down.shape)} vs "
                              f"weight {tuple(weight.shape)})")
            continue
        alpha = _alpha_for(target, layer, rank, meta)
        scale = alpha / math.sqrt(rank) if meta.get("use_rslora") else alpha / rank
        if layer.magnitude is None:
            fitted.append((f"{target}.weight", LoraWeight(down, up, scale)))
            continue
        magnitude = layer.magnitude
        # PEFT keeps a length per output row; kohya's dora_scale says its axis by its shape
        # ([out, 1(, 1, 1)]: per row; [1, in(, 1, 1)]: per input channel, wd_on_out off)
        per_output = not layer.kohya_dora or magnitude.shape[0] == out_features
        if magnitude.numel() != (out_features if per_output else int(weight.shape[1])):
            mismatched.append(f"{shown} (DoRA magnitude {tuple(magnitude.shape)} vs weight "
                              f"{tuple(weight.shape)})")
            continue
        fitted.append((f"{target}.weight", DoraWeight(down, up, scale, magnitude, per_output)))
    problems = []
    total = len(layers)
    if missing:
        problems.append(f"{len(missing)} of {total} layers target no {component} module "
                        f"(e.g. {', '.join(missing[:_SHOWN])})")
    if mismatched:
        # (a layer's weight and bias differences, or its LoRA and .diff_b, count once)
        wrong = len({entry.split(" (")[0] for entry in mismatched})
        problems.append(f"{wrong} of {total} layers have the wrong shape "
                        f"(e.g. {'; '.join(mismatched[:_SHOWN])})")
    if incomplete:
        problems.append(f"{len(incomplete)} layers lack their down or up matrix "
                        f"(e.g. {', '.join(incomplete[:_SHOWN])})")
    if unfit:
        problems.append(f"{len(unfit)} of {total} LyCORIS layers do not fit "
                        f"(e.g. {'; '.join(unfit[:_SHOWN])})")
    if problems:
        raise LoraMismatchError(f"LoRA {name!r} does not fit this {component}: "
                                + "; ".join(problems) + " — is it made for another base model?")
    return tuple(fitted)


def _fit_lycoris_layer(layer: _Layer, weight: torch.Tensor) -> Any:
    """A LoHa / LoKr / LoCon-Tucker / OFT / BOFT / GLoRA layer's update for ``weight``, or
    what misfits."""
    from nodes.diffusion import lycoris

    kinds = lycoris.kind_of(layer.lycoris) + [kind for kind, present in (
        ("LoRA", layer.mid is None and (layer.down is not None or layer.up is not None)),
        ("LoCon (Tucker)", layer.mid is not None)) if present]
    if len(kinds) > 1:  # one would be dropped: say so rather than apply half the file
        return f"layers of two kinds on one module ({' and '.join(kinds)})"
    if layer.mid is not None:
        if layer.down is None or layer.up is None:
            return "LoCon layer without its down or up matrix"
        return lycoris.fit_tucker_locon(layer.down, layer.mid, layer.up, layer.alpha, weight)
    return lycoris.fit_lycoris(layer.lycoris, layer.alpha, weight)


def _fit_diff(key: str, layer: _Layer, modules: dict[str, torch.nn.Module],
              kohya: dict[str, str], fitted: list[tuple[str, Any]]) -> str | None:
    """Fit a ``.diff``/``.diff_b`` layer as dense updates (TIME's ``DenseDelta``); None when
    it fits, else ``"missing"`` or what mismatches."""
    from nodes.diffusion.model_editing import DenseDelta  # imports this module

    target = _resolve(key, modules, kohya)
    module = modules[target] if target is not None else None
    found = []
    for part, delta in (("weight", layer.diff), ("bias", layer.diff_b)):
        if delta is None:
            continue
        param = getattr(module, part, None)
        if param is None:
            return "missing"
        if tuple(param.shape) != tuple(delta.shape):
            return f"{part} difference {tuple(delta.shape)} vs {tuple(param.shape)}"
        found.append((f"{target}.{part}", DenseDelta(delta.float())))
    fitted.extend(found)
    return None


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file's layers by component, ready to fit."""

    name: str
    layers: dict[str, dict[str, _Layer]]
    metadata: dict[str, Any]

    def patch(self, root: torch.nn.Module, component: str, strength: float) -> LoraPatch | None:
        """The fitted patch for one component, or None if the file has no layers for it."""
        layers = self.layers.get(component)
        if not layers:
            return None
        weights = fit_lora(root, layers, name=self.name, component=component,
                           metadata=component_metadata(self.metadata, component))
        return LoraPatch(self.name, float(strength), weights)


def load_lora(path: Path, *, allow_pickle: bool = False) -> LoraFile:
    """Read a LoRA file and check that it holds LoRA layers for SD's UNet / text encoder."""
    state, metadata = read_lora_file(path, allow_pickle=allow_pickle)
    return lora_from_state(state, metadata, path.name)


def lora_from_state(state: StateDict, metadata: dict[str, Any], name: str) -> LoraFile:
    """A LoRA state dict (any key layout we read) as a :class:`LoraFile`, checked: every
    key a LoRA weight, every component one a Stable Diffusion model has."""
    import torch

    # a damaged file (or a diverged training) would turn every image it touches to NaN
    # (torch has no isfinite for float8_e4m3fn: a one-byte float is checked widened)
    damaged = [k for k, v in state.items()
               if isinstance(v, torch.Tensor) and v.is_floating_point()
               and not bool(torch.isfinite(v.float() if v.element_size() == 1 else v).all())]
    if damaged:
        raise LoraMismatchError(f"{name}: {len(damaged)} of {len(state)} tensors hold NaN or "
                                f"infinite values (e.g. {', '.join(damaged[:_SHOWN])}): the "
                                "file is damaged, or its training diverged")
    empty = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.numel() == 0]
    if empty:  # a rank of 0: no update, and no shape to check it by
        raise LoraMismatchError(f"{name}: {len(empty)} tensors are empty (e.g. "
                                f"{', '.join(empty[:_SHOWN])}): the file is damaged")
    try:
        layers, unknown = split_layers(kohya_keys(state))
    except LoraMismatchError as exc:
        raise LoraMismatchError(f"{name}: {exc}") from None
    if unknown:
        raise LoraMismatchError(f"{name}: {len(unknown)} of {len(state)} keys are not "
                                f"LoRA weights (e.g. {', '.join(unknown[:_SHOWN])})")
    other = sorted(set(layers) - set(COMPONENTS))
    if other:
        raise LoraMismatchError(f"{name} has layers for {', '.join(other)}, which a "
                                "Stable Diffusion model does not have")
    if not layers:
        raise LoraMismatchError(f"{name} holds no LoRA weights")
    return LoraFile(name, layers, metadata)


# --- applying for a call -----------------------------------------------------------------

@contextmanager
def patched(root: torch.nn.Module, patches: Iterable[LoraPatch]) -> Iterator[None]:
    """Add the patches' updates to ``root``'s weights inside the block, restore them after.

    Updates are summed in float32 and cast once to the weight's dtype. The touched
    tensors are copied before and copied back after, so the original is exact.
    Runs are serialised by the executor, so a shared cached model is safe to patch.
    """
    import torch

    deltas: dict[str, list[tuple[float, LoraWeight]]] = {}
    owners: dict[str, list[str]] = {}  # the patches' names, for an error
    for patch in patches:
        if patch.strength == 0:
            continue
        for param_name, update in patch.weights:
            deltas.setdefault(param_name, []).append((patch.strength, update))
            owners.setdefault(param_name, []).append(str(getattr(patch, "name", "")))
    if not deltas:
        yield
        return
    params = dict(root.named_parameters())
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for param_name, updates in deltas.items():
                param = params[param_name]
                saved[param_name] = param.detach().clone()
                merged = param.detach().to(torch.float32)
                for strength, update in updates:
                    merged = apply_update(merged, strength, update, param.shape)
                merged = merged.to(param.dtype)
                if not bool(torch.isfinite(merged).all()):  # finite factors, overflowing
                    names = ", ".join(repr(n) for n in dict.fromkeys(owners[param_name]))
                    raise LoraMismatchError(
                        f"LoRA {names} makes {param_name} infinite or NaN (its values are too "
                        f"large for {str(param.dtype).removeprefix('torch.')}): the file is "
                        "damaged, or use a smaller strength")
                param.copy_(merged)
        yield
    finally:
        with torch.no_grad():
            for param_name, original in saved.items():
                params[param_name].copy_(original)


def apply_update(weight: torch.Tensor, strength: float, update: Any,
                 shape: torch.Size) -> torch.Tensor:
    """``weight`` (float32) after one patch update: ``weight + strength · ΔW``, or for an
    update with ``combine`` (a model merge, which reads the weight so far) its result."""
    combine = getattr(update, "combine", None)
    if combine is not None:
        return combine(weight, strength)
    return weight + strength * update.delta(shape, weight.device)


F = TypeVar("F", bound=Callable[..., Any])


def lora_patched(fn: F) -> F:
    """Decorate ``fn(model: DiffusionModel, ...)`` to run with the model's patches applied."""

    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
        with patched(model.unet, getattr(model, "patches", ())):
            return fn(model, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
