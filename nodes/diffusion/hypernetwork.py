"""Hypernetworks (NovelAI / AUTOMATIC1111 format, as ComfyUI's HypernetworkLoader reads them).

A hypernetwork is a set of small MLP pairs keyed by a feature width ``dim``. In every
attention layer whose key/value input is ``dim`` wide — the text context (768 for SD
1.x) in cross-attention, the image tokens (320/640/1280) in self-attention — the pair
changes what the key and value projections read:

    k_in = c + strength · MLP_k(c)        v_in = c + strength · MLP_v(c)

with ``c`` that input; the query is untouched. Each MLP is Linear layers, each followed
by the file's activation, then a LayerNorm when ``is_layer_norm``. This follows ComfyUI's
``load_hypernetwork_patch`` (comfy_extras/nodes_hypernetwork.py), whose node id we carry.
Two differences from AUTOMATIC1111's ``HypernetworkModule``, where the format comes from:

* the last Linear is activated only with ``activate_output`` in both, except that ComfyUI
  counts the LayerNorms among the layers, so with ``is_layer_norm`` its last Linear is
  always activated; we do the same (a file trained in AUTOMATIC1111 with layer norm, a
  non-linear activation and no ``activate_output`` looks slightly different there).
* dropout: AUTOMATIC1111 drops only while training. ComfyUI inserts Dropout(p=0.3) modules
  and never switches them to eval mode, so with ``use_dropout`` its output is random on
  every call; we leave dropout out (deterministic, as at training's evaluation).

It acts through the sampler's one attention store (an ``on_kv_inputs`` hook on the
selected layers, :mod:`nodes.diffusion.attention`); the UNet is never patched.

Files: ``.pt`` pickles as AUTOMATIC1111 writes them — ``{768: [state_dict_k,
state_dict_v], 320: [...], "activation_func": "relu", "is_layer_norm": False, ...}`` —
read with ``torch.load(weights_only=True)`` when pickles are allowed; and
``.safetensors`` with the same keys flattened, ``"<dim>.<0 for k|1 for v>.<layer>"``
(e.g. ``768.0.linear.0.weight``), the options as metadata strings
(``activation_func``, ``is_layer_norm``, ``activate_output``, ``use_dropout``,
``last_layer_dropout``); :func:`save_hypernetwork` writes that.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodes.diffusion.attention import AttentionCall, AttentionHook, AttentionLayer
from nodes.diffusion.extensions import SamplerExtension
from nodes.diffusion.loading import (
    PICKLE_SUFFIXES,
    SAFE_SUFFIXES,
    UnsafeCheckpointError,
    torch_load_weights_only,
)

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.sampling import SamplingRun

#: activation_func → torch.nn class name (ComfyUI's and AUTOMATIC1111's: "swish" is
#: Hardswish there too)
ACTIVATIONS = {"linear": None, "relu": "ReLU", "leakyrelu": "LeakyReLU", "elu": "ELU",
               "swish": "Hardswish", "tanh": "Tanh", "sigmoid": "Sigmoid",
               "softsign": "Softsign", "mish": "Mish"}
OPTION_KEYS = ("activation_func", "is_layer_norm", "activate_output", "use_dropout",
               "last_layer_dropout")


@dataclass(frozen=True)
class Hypernetwork:
    """Loaded MLP pairs by feature width: ``mlps[dim] = (mlp_k, mlp_v)`` (float32, CPU)."""

    name: str
    mlps: Mapping[int, tuple[Any, Any]]
    activation_func: str = "linear"
    is_layer_norm: bool = False


def _natural_key(name: str) -> list[Any]:
    # "linear.10" after "linear.2": the layers' order in the Sequential they came from
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def build_mlp(weights: Mapping[str, torch.Tensor], dim: int, activation_func: str,
              is_layer_norm: bool, activate_output: bool) -> torch.nn.Sequential:
    """One MLP from its state dict (``linear.0.weight``, ``linear.0.bias``, ...)."""
    import torch

    names = sorted((k[:-len(".weight")] for k in weights if k.endswith(".weight")),
                   key=_natural_key)
    step = 2 if is_layer_norm else 1
    if not names or len(names) % step:
        raise ValueError(f"the {dim} MLP has {len(names)} weight tensors"
                         + (", expected Linear/LayerNorm pairs" if is_layer_norm else ""))
    layers: list[torch.nn.Module] = []
    width = dim
    linears = names[::step]
    for i, name in enumerate(linears):
        weight, bias = weights[f"{name}.weight"], weights.get(f"{name}.bias")
        if weight.ndim != 2 or weight.shape[1] != width or bias is None:
            raise ValueError(f"layer {name} of the {dim} MLP is not a Linear from {width} "
                             f"features (weight {tuple(weight.shape)})")
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight.float(), "bias": bias.float()})
        layers.append(linear)
        width = weight.shape[0]
        activation = ACTIVATIONS[activation_func]
        # ComfyUI: "last layer" counts LayerNorms too, so with them every Linear is activated
        if activation is not None and (i < len(linears) - 1 or activate_output or is_layer_norm):
            layers.append(getattr(torch.nn, activation)())
        if is_layer_norm:
            ln_name = names[i * 2 + 1]
            ln_weight, ln_bias = weights[f"{ln_name}.weight"], weights.get(f"{ln_name}.bias")
            if ln_weight.shape != (width,) or ln_bias is None:
                raise ValueError(f"layer {ln_name} of the {dim} MLP is not a LayerNorm of "
                                 f"{width} features")
            norm = torch.nn.LayerNorm(width)
            norm.load_state_dict({"weight": ln_weight.float(), "bias": ln_bias.float()})
            layers.append(norm)
    if width != dim:
        raise ValueError(f"the {dim} MLP ends with {width} features, not {dim}")
    mlp = torch.nn.Sequential(*layers).eval()
    mlp.requires_grad_(False)
    return mlp


def _read_file(path: Path, allow_pickle: bool) -> tuple[dict[int, Sequence[Mapping[str, Any]]],
                                                        dict[str, Any]]:
    """``({dim: (weights_k, weights_v)}, options)`` of a hypernetwork file."""

    suffix = path.suffix.lower()
    pairs: dict[int, Sequence[Mapping[str, Any]]] = {}
    if suffix in SAFE_SUFFIXES:
        from safetensors import safe_open
        from safetensors.torch import load_file

        from nodes.diffusion.safetensors_io import checked

        with checked(path), safe_open(str(path), framework="pt") as f:
            options: dict[str, Any] = dict(f.metadata() or {})
        flat: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        with checked(path):
            tensors = load_file(str(path), device="cpu")
        for key, tensor in tensors.items():
            dim, index, name = [*key.split(".", 2), "", ""][:3]
            if not (dim.isdigit() and index in ("0", "1") and name):
                raise ValueError(f"{path.name}: key {key!r} is not '<dim>.<0|1>.<layer>' "
                                 "(a hypernetwork's flattened layout)")
            flat.setdefault(int(dim), ({}, {}))[int(index)][name] = tensor
        pairs = dict(flat)
        return pairs, options
    if suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"unsupported hypernetwork file {path.name!r}: expected .safetensors "
                         "or (with allow-pickle) .pt")
    if not allow_pickle:
        raise UnsafeCheckpointError(
            f"{path.name} is a pickle file, which can run arbitrary code when loaded; convert "
            "it to .safetensors, or opt in to loading pickles (--allow-pickle: it is then "
            "read with torch.load(weights_only=True))")
    data = torch_load_weights_only(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path.name} is not a hypernetwork (no dict inside)")
    options = {k: data[k] for k in OPTION_KEYS if k in data}
    for key, value in data.items():
        try:
            dim = int(key)
        except (TypeError, ValueError):
            continue  # options, training state, names
        if not (isinstance(value, Sequence) and len(value) >= 2
                and all(isinstance(v, Mapping) for v in value[:2])):
            raise ValueError(f"{path.name}: entry {key!r} is not a pair of state dicts")
        pairs[dim] = value
    return pairs, options


def load_hypernetwork(path: Path, *, allow_pickle: bool = False) -> Hypernetwork:
    """Read a hypernetwork file into its MLP pairs (float32, CPU, eval mode)."""
    pairs, options = _read_file(path, allow_pickle)
    activation = str(options.get("activation_func", "linear") or "linear").lower()
    if activation not in ACTIVATIONS:
        raise ValueError(f"{path.name}: activation {activation!r} is not supported (supported: "
                         f"{', '.join(ACTIVATIONS)})")
    if not pairs:
        raise ValueError(f"{path.name} holds no MLP pair (keys like 768 or '768.0.linear.0."
                         "weight'): not a hypernetwork")
    layer_norm = _flag(options.get("is_layer_norm", False))
    activate_output = _flag(options.get("activate_output", False))
    mlps = {dim: tuple(build_mlp(weights, dim, activation, layer_norm, activate_output)
                       for weights in pair[:2])
            for dim, pair in sorted(pairs.items())}
    return Hypernetwork(path.name, mlps, activation, layer_norm)  # type: ignore[arg-type]


def save_hypernetwork(path: Path, mlps: Mapping[int, tuple[Mapping[str, torch.Tensor],
                                                           Mapping[str, torch.Tensor]]],
                      **options: Any) -> None:
    """Write MLP pairs (``{dim: (state_dict_k, state_dict_v)}``) as the flattened
    ``.safetensors`` layout; ``options`` (activation_func, is_layer_norm, ...) go to the
    metadata."""
    from nodes.diffusion.safetensors_io import save_file

    tensors = {f"{dim}.{index}.{name}": tensor.detach().contiguous()
               for dim, pair in mlps.items() for index, weights in enumerate(pair)
               for name, tensor in weights.items()}
    metadata = {k: (str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in options.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def kv_input_dims(unet: Any) -> dict[str, int]:
    """Processor name → width of the key/value input, for every attention layer."""
    from diffusers.models.attention_processor import Attention

    return {f"{name}.processor": int(module.to_k.in_features)
            for name, module in unet.named_modules() if isinstance(module, Attention)}


@dataclass(eq=False)  # hashed by identity, like the extension that owns it
class HypernetworkHook(AttentionHook):
    """Applies the owner's MLP pair to the key/value inputs of the selected layers."""

    layers: frozenset[str]
    owner: HypernetworkExtension

    def selects(self, layer: AttentionLayer) -> bool:
        return layer.name in self.layers

    def on_kv_inputs(self, call: AttentionCall, key_input: torch.Tensor,
                     value_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pair = call.run.state[self.owner].get(key_input.shape[-1])
        if pair is None:
            return key_input, value_input
        strength = self.owner.strength
        # in float32 whatever the UNet's dtype (AUTOMATIC1111 upcasts too)
        k = key_input + (pair[0](key_input.float()) * strength).to(key_input.dtype)
        v = value_input + (pair[1](value_input.float()) * strength).to(value_input.dtype)
        return k, v


class HypernetworkExtension(SamplerExtension):
    """A hypernetwork at ``strength`` on every attention layer its widths fit."""

    def __init__(self, hypernetwork: Hypernetwork, strength: float):
        self.hypernetwork = hypernetwork
        self.strength = float(strength)

    def setup(self, run: SamplingRun) -> None:
        device = run.model.unet.device
        mlps = {}
        for dim, pair in self.hypernetwork.mlps.items():
            # the loaded (cached) modules stay where they are; a run elsewhere gets copies
            mlps[dim] = tuple(m if _device_of(m) == device else copy.deepcopy(m).to(device)
                              for m in pair)
        run.state[self] = mlps

    def attention_hooks(self, run: SamplingRun) -> Sequence[AttentionHook]:
        dims = set(self.hypernetwork.mlps)
        layers = frozenset(name for name, dim in kv_input_dims(run.model.unet).items()
                           if dim in dims)
        return (HypernetworkHook(layers, self),) if layers else ()

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)


def _device_of(module: Any) -> Any:
    return next(module.parameters()).device


def check_fits(hypernetwork: Hypernetwork, unet: Any) -> None:
    """An error when none of the hypernetwork's widths occurs in ``unet``'s attention
    (e.g. an SD 1.x hypernetwork, 768, on an SD 2.x model, 1024)."""
    widths = set(kv_input_dims(unet).values())
    if not widths & set(hypernetwork.mlps):
        raise ValueError(
            f"hypernetwork {hypernetwork.name} has MLPs for widths "
            f"{sorted(hypernetwork.mlps)}, but this model's attention layers read "
            f"{sorted(widths)}: it was made for another model family")
