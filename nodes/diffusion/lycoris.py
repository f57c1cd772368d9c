"""LyCORIS layers in LoRA files: LoHa, LoKr and LoCon's Tucker (``lora_mid``) convolutions.

Files made with kohya's sd-scripts or LyCORIS (Civitai's "LyCORIS" / "LoHa" / "LoKr")
name them ``lora_unet_<module>.hada_w1_a`` ..., ``.lokr_w1`` ..., ``.lora_mid.weight``.
Each becomes an update with ``delta(shape, device)``, as a plain LoRA layer does, so
Load LoRA, its bypass mode and hook LoRAs apply them alike. The math is LyCORIS' (and
ComfyUI's ``weight_adapter``; PEFT's ``LoHaModel`` / ``LoKrModel`` where they agree):

- **LoHa** (Hadamard product): ``ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · alpha / rank``; with
  ``hada_t1``/``hada_t2`` (a Tucker core per factor) each factor is
  ``einsum("i j k l, j r, i p -> p r k l", t, w_b, w_a)``.
- **LoKr** (Kronecker product): ``ΔW = w1 ⊗ w2 · scale``, each factor given whole or as
  ``a @ b`` (``lokr_t2``: a Tucker core for ``w2``); ``scale = alpha / rank`` where a
  factor is decomposed (the rank of the last decomposed one), else 1, as LyCORIS and
  ComfyUI (PEFT scales a whole pair by ``alpha / r`` too).
- **LoCon Tucker**: ``down`` (1x1) → ``mid`` (kxk) → ``up`` (1x1), one kxk update:
  ``ΔW[o, i] = Σ up[o, a] · mid[a, b] · down[b, i] · alpha / rank``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: the LyCORIS tensors a layer may hold (key suffixes)
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_KEYS = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
TUCKER = "i j k l, j r, i p -> p r k l"


def _f32(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    import torch

    return t.to(device=device, dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class LoHaWeight:
    """One LoHa layer: ``ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · scale``."""

    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    t1: torch.Tensor | None
    t2: torch.Tensor | None
    scale: float

    def delta(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        m1 = _factor(self.w1_a, self.w1_b, self.t1, device)
        m2 = _factor(self.w2_a, self.w2_b, self.t2, device)
        return (m1 * m2).reshape(shape) * self.scale


@dataclass(frozen=True, eq=False)
class LoKrWeight:
    """One LoKr layer: ``ΔW = w1 ⊗ w2 · scale``."""

    w1: torch.Tensor | None
    w1_a: torch.Tensor | None
    w1_b: torch.Tensor | None
    w2: torch.Tensor | None
    w2_a: torch.Tensor | None
    w2_b: torch.Tensor | None
    t2: torch.Tensor | None
    scale: float

    def delta(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        import torch

        w1 = _f32(self.w1, device) if self.w1 is not None \
            else _factor(self.w1_a, self.w1_b, None, device)
        w2 = _f32(self.w2, device) if self.w2 is not None \
            else _factor(self.w2_a, self.w2_b, self.t2, device)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        # kron reshapes its operands as views: a Tucker factor comes out non-contiguous
        return torch.kron(w1.contiguous(), w2.contiguous()).reshape(shape) * self.scale


@dataclass(frozen=True, eq=False)
class LoConTuckerWeight:
    """A LoCon convolution with a Tucker core: ``down`` 1x1, ``mid`` kxk, ``up`` 1x1."""

    down: torch.Tensor
    mid: torch.Tensor
    up: torch.Tensor
    scale: float

    def delta(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        import torch

        up = _f32(self.up, device).flatten(1)  # [out, a]
        down = _f32(self.down, device).flatten(1)  # [b, in]
        kernel = torch.einsum("oa,abkl,bi->oikl", up, _f32(self.mid, device), down)
        return kernel.reshape(shape) * self.scale


def _factor(a: Any, b: Any, core: Any, device: torch.device) -> torch.Tensor:
    import torch

    if core is not None:
        return torch.einsum(TUCKER, _f32(core, device), _f32(b, device), _f32(a, device))
    return _f32(a, device).flatten(1) @ _f32(b, device).flatten(1)


def _factor_shape(a: Any, b: Any, core: Any) -> tuple[int, ...] | None:
    """The shape ``_factor`` gives (rows first), or None where the parts do not chain."""
    if a is None or b is None:
        return None
    if core is not None:
        if core.dim() != 4 or a.dim() != 2 or b.dim() != 2 or a.shape[0] != core.shape[0] \
                or b.shape[0] != core.shape[1]:
            return None
        return (int(a.shape[1]), int(b.shape[1]), int(core.shape[2]), int(core.shape[3]))
    if a.dim() < 2 or b.dim() < 2 or a[0].numel() != b.shape[0]:
        return None
    return (int(a.shape[0]), int(b[0].numel()))


def fit_lycoris(tensors: dict[str, torch.Tensor], alpha: float | None,
                weight: torch.Tensor) -> Any:
    """The update of one LyCORIS layer for ``weight``, or a string saying what misfits."""
    if any(k.startswith("hada_") for k in tensors):
        return _fit_loha(tensors, alpha, weight)
    return _fit_lokr(tensors, alpha, weight)


def _fits(shapes: tuple[tuple[int, ...] | None, ...], weight: torch.Tensor,
          rows: int) -> str | None:
    if any(s is None for s in shapes):
        return "its factors do not chain"
    numel = math.prod(math.prod(s) for s in shapes if s is not None)
    if rows != weight.shape[0] or numel != weight.numel():
        return f"its update is {rows} rows, {numel} values; the weight {tuple(weight.shape)}"
    return None


def _fit_loha(t: dict[str, torch.Tensor], alpha: float | None, weight: torch.Tensor) -> Any:
    missing = [k for k in LOHA_KEYS[:4] if k not in t]
    if missing:
        return f"LoHa layer without {', '.join(missing)}"
    if ("hada_t1" in t) != ("hada_t2" in t):
        return "LoHa layer with one Tucker core (hada_t1 and hada_t2 come together)"
    s1 = _factor_shape(t["hada_w1_a"], t["hada_w1_b"], t.get("hada_t1"))
    s2 = _factor_shape(t["hada_w2_a"], t["hada_w2_b"], t.get("hada_t2"))
    if s1 is None or s2 is None or math.prod(s1) != math.prod(s2) or s1[0] != s2[0]:
        return "its two Hadamard factors differ in shape"
    problem = _fits((s1,), weight, s1[0])
    if problem:
        return problem
    rank = int(t["hada_w1_b"].shape[0])
    return LoHaWeight(t["hada_w1_a"], t["hada_w1_b"], t["hada_w2_a"], t["hada_w2_b"],
                      t.get("hada_t1"), t.get("hada_t2"),
                      alpha / rank if alpha is not None else 1.0)


def _fit_lokr(t: dict[str, torch.Tensor], alpha: float | None, weight: torch.Tensor) -> Any:
    rank = None
    if "lokr_w1" in t:
        s1: tuple[int, ...] | None = tuple(int(n) for n in t["lokr_w1"].shape)
    else:
        s1 = _factor_shape(t.get("lokr_w1_a"), t.get("lokr_w1_b"), None)
        rank = int(t["lokr_w1_b"].shape[0]) if "lokr_w1_b" in t else None
    if "lokr_w2" in t:
        s2: tuple[int, ...] | None = tuple(int(n) for n in t["lokr_w2"].shape)
    else:
        s2 = _factor_shape(t.get("lokr_w2_a"), t.get("lokr_w2_b"), t.get("lokr_t2"))
        rank = int(t["lokr_w2_b"].shape[0]) if "lokr_w2_b" in t else rank
    if s1 is None or len(s1) != 2:
        return "LoKr layer without a 2-D w1 (lokr_w1, or lokr_w1_a and lokr_w1_b)"
    problem = _fits((s1, s2), weight, s1[0] * (s2[0] if s2 else 0))
    if problem:
        return problem
    scale = alpha / rank if alpha is not None and rank is not None else 1.0
    return LoKrWeight(t.get("lokr_w1"), t.get("lokr_w1_a"), t.get("lokr_w1_b"), t.get("lokr_w2"),
                      t.get("lokr_w2_a"), t.get("lokr_w2_b"), t.get("lokr_t2"), scale)


def fit_tucker_locon(down: torch.Tensor, mid: torch.Tensor, up: torch.Tensor,
                     alpha: float | None, weight: torch.Tensor) -> Any:
    """A LoCon layer with ``lora_mid``: the update, or a string saying what misfits."""
    rank_out, rank_in = (int(mid.shape[0]), int(mid.shape[1])) if mid.dim() == 4 else (0, 0)
    if (weight.dim() != 4 or mid.dim() != 4 or up.shape[0] != weight.shape[0]
            or up[0].numel() != rank_out or down.shape[0] != rank_in
            or down[0].numel() != weight.shape[1]
            or tuple(mid.shape[2:]) != tuple(weight.shape[2:])):
        return (f"LoCon (Tucker) up {tuple(up.shape)}, mid {tuple(mid.shape)}, down "
                f"{tuple(down.shape)} vs weight {tuple(weight.shape)}")
    return LoConTuckerWeight(down, mid, up, alpha / rank_in if alpha is not None else 1.0)
