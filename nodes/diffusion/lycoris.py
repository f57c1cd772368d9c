"""LyCORIS layers in LoRA files: LoHa, LoKr, LoCon's Tucker (``lora_mid``) convolutions,
OFT, BOFT and GLoRA.

Files made with kohya's sd-scripts or LyCORIS (Civitai's "LyCORIS" / "LoHa" / "LoKr")
name them ``lora_unet_<module>.hada_w1_a`` ..., ``.lokr_w1`` ..., ``.lora_mid.weight``,
``.oft_blocks``, ``.a1.weight``. Each becomes an update with ``delta(shape, device)`` (or
``combine``), as a plain LoRA layer does, so
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
- **OFT** (Qiu et al. 2023, orthogonal fine-tuning; ``oft_blocks`` ``[n, b, b]``, LyCORIS'
  "diag-oft" and kohya's ``oft_unet_`` files): each block's skew part ``Q = B − Bᵀ``, its
  norm clipped to the constraint ``alpha · out`` (no clip when alpha is 0), gives the
  Cayley rotation ``R = (I + Q)(I − Q)⁻¹``; the output rows, in blocks of ``b``, turn by
  it: ``W'ₖ = Rₖᵀ Wₖ``, then ``rescale`` (if any) scales each row. At strength ``s`` each
  rotation is ``s·R + (1 − s)·I``, as LyCORIS and kohya apply it.
- **BOFT** (Liu et al. 2024, butterfly OFT; ``oft_blocks`` ``[m, n, b, b]``): ``m`` such
  rotations, stage ``i`` pairing rows ``2ⁱ·b/2`` apart (a butterfly), each stage's
  rotation taken towards ``I`` by the strength; then ``rescale``.
- **GLoRA** (Chavan et al. 2023; ``a1``, ``a2``, ``b1``, ``b2`` and an optional Tucker
  ``bm``): ``ΔW = (W·a1·a2 + b1·b2) · alpha / rank``, the rank ``a2``'s rows.

OFT, BOFT and GLoRA read the weight they change, so they are updates with
``combine(weight, strength)`` (as DoRA): after other patches they act on the weight those
left. ComfyUI differs at strength ≠ 1 (it applies an OFT's strength twice) and clips
OFT's norm to ``alpha`` rather than ``alpha · out``; we follow the trainers that wrote the
files (LyCORIS, kohya's sd-scripts), which agree with each other.
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
OFT_KEYS = ("oft_blocks", "rescale")
GLORA_KEYS = ("a1.weight", "a2.weight", "b1.weight", "b2.weight", "bm.weight")
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
        return _tucker_kernel(self.up, self.mid, self.down, device).reshape(shape) * self.scale


def _tucker_kernel(up: Any, mid: Any, down: Any, device: torch.device) -> torch.Tensor:
    import torch

    return torch.einsum("oa,abkl,bi->oikl", _f32(up, device).flatten(1), _f32(mid, device),
                        _f32(down, device).flatten(1))


def _rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """A per-row factor (``[out]``, ``[out, 1, …]``) shaped to broadcast over a weight."""
    return t.reshape(-1, *(1,) * (dim - 1))


def cayley(blocks: torch.Tensor, constraint: float) -> torch.Tensor:
    """Orthogonal ``R = (I + Q)(I − Q)⁻¹`` per block of ``blocks`` (``[..., b, b]``), with
    ``Q = B − Bᵀ`` scaled down to norm ``constraint`` (over all blocks) when above it."""
    import torch

    q = blocks - blocks.transpose(-1, -2)
    if constraint > 0:
        norm = torch.linalg.vector_norm(q) + 1e-8
        if norm > constraint:
            q = q * (constraint / norm)
    eye = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype)
    return (eye + q) @ torch.linalg.inv(eye - q)


@dataclass(frozen=True, eq=False)
class OFTWeight:
    """An OFT or BOFT layer: the weight's output rows turned by orthogonal blocks."""

    blocks: torch.Tensor  # [n, b, b] (OFT) or [m, n, b, b] (BOFT)
    rescale: torch.Tensor | None
    constraint: float  # the Cayley's norm bound, alpha · out (0: none)

    def combine(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        import torch

        r = cayley(_f32(self.blocks, weight.device), self.constraint)
        if strength != 1:
            eye = torch.eye(r.shape[-1], device=r.device, dtype=r.dtype)
            r = strength * r + (1 - strength) * eye
        if r.dim() == 3:  # OFT: W'ₖ = Rₖᵀ Wₖ
            turned = torch.einsum("knm,kn...->km...", r, weight.unflatten(0, r.shape[:2]))
            out = turned.flatten(0, 1)
        else:
            out = _butterfly(r, weight)
        if self.rescale is not None:
            out = out * _rows(_f32(self.rescale, weight.device), weight.dim())
        return out


def _butterfly(r: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BOFT's ``m`` stages: stage ``i`` gathers rows ``k = 2ⁱ·b/2`` apart into blocks of
    ``b``, turns each block by ``Rᵢ`` (``W ↦ R W``) and puts the rows back."""
    import torch

    stages, _, b, _ = r.shape
    x = weight
    for i in range(stages):
        k = 2 ** i * (b // 2)
        # rows (c, 2, k) read as (c, k, 2): each block of b holds rows k apart
        x = x.unflatten(0, (-1, 2, k)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, b))
        x = torch.einsum("nij,nj...->ni...", r[i], x)
        x = x.flatten(0, 1).unflatten(0, (-1, k, 2)).transpose(1, 2).flatten(0, 2)
    return x


@dataclass(frozen=True, eq=False)
class GLoRAWeight:
    """A GLoRA layer: ``ΔW = (W·a1·a2 + b1·b2) · scale``, ``b1·b2`` through ``bm`` if given."""

    a1: torch.Tensor
    a2: torch.Tensor
    b1: torch.Tensor
    b2: torch.Tensor
    bm: torch.Tensor | None
    scale: float

    def combine(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        import torch

        device = weight.device
        a = _f32(self.a1, device).flatten(1) @ _f32(self.a2, device).flatten(1)  # [in, in]
        along_input = torch.einsum("oi...,ij->oj...", weight, a)
        if self.bm is not None:
            b = _tucker_kernel(self.b1, self.bm, self.b2, device)
        else:
            b = _f32(self.b1, device).flatten(1) @ _f32(self.b2, device).flatten(1)
        return weight + (strength * self.scale) * (along_input + b.reshape(weight.shape))


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
    if any(k in OFT_KEYS for k in tensors):
        return _fit_oft(tensors, alpha, weight)
    if any(k in GLORA_KEYS for k in tensors):
        return _fit_glora(tensors, alpha, weight)
    return _fit_lokr(tensors, alpha, weight)


def kind_of(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The LyCORIS kinds whose tensors a layer holds (one, unless the file is damaged)."""
    blocks = tensors.get("oft_blocks")
    return [kind for kind, present in (
        ("LoHa", any(k.startswith("hada_") for k in tensors)),
        ("LoKr", any(k.startswith("lokr_") for k in tensors)),
        ("BOFT" if blocks is not None and blocks.dim() == 4 else "OFT",
         any(k in OFT_KEYS for k in tensors)),
        ("GLoRA", any(k in GLORA_KEYS for k in tensors))) if present]


def _fit_oft(t: dict[str, torch.Tensor], alpha: float | None, weight: torch.Tensor) -> Any:
    blocks, rescale = t.get("oft_blocks"), t.get("rescale")
    out = int(weight.shape[0])
    if blocks is None:
        return "OFT layer with a rescale but no oft_blocks"
    if blocks.dim() not in (3, 4) or blocks.shape[-1] != blocks.shape[-2]:
        return f"oft_blocks {tuple(blocks.shape)} are not square blocks ([n, b, b] or [m, n, b, b])"
    n, b = int(blocks.shape[-3]), int(blocks.shape[-1])
    if n * b != out:
        return f"oft_blocks {tuple(blocks.shape)} turn {n * b} rows; the weight has {out}"
    if blocks.dim() == 4:
        reach = 2 ** (int(blocks.shape[0]) - 1) * b  # the rows the last stage pairs
        if b % 2 or out % reach:
            return (f"BOFT blocks {tuple(blocks.shape)} do not pair the weight's {out} rows "
                    f"(block size even, rows a multiple of {reach})")
    if rescale is not None and rescale.numel() != out:
        return f"rescale of {rescale.numel()} values; the weight has {out} rows"
    return OFTWeight(blocks, rescale, (alpha or 0.0) * out)


def _fit_glora(t: dict[str, torch.Tensor], alpha: float | None, weight: torch.Tensor) -> Any:
    missing = [k for k in GLORA_KEYS[:4] if k not in t]
    if missing:
        return f"GLoRA layer without {', '.join(missing)}"
    a1, a2, b1, b2, bm = (t.get(k) for k in GLORA_KEYS)
    rank = int(a2.shape[0])
    fan_in = int(weight.shape[1])
    a_fits = (a1.shape[0] == fan_in and a1[0].numel() == rank and a2[0].numel() == fan_in)
    if bm is not None:
        b_fits = (weight.dim() == 4 and bm.dim() == 4 and b1.shape[0] == weight.shape[0]
                  and b1[0].numel() == bm.shape[0] and b2.shape[0] == bm.shape[1]
                  and b2[0].numel() == fan_in and tuple(bm.shape[2:]) == tuple(weight.shape[2:]))
    else:
        b_fits = (b1.shape[0] == weight.shape[0] and b1[0].numel() == b2.shape[0]
                  and b2[0].numel() == weight[0].numel())
    if not (a_fits and b_fits):
        shapes = ", ".join(f"{k.removesuffix('.weight')} {tuple(v.shape)}"
                           for k, v in zip(GLORA_KEYS, (a1, a2, b1, b2, bm), strict=True)
                           if v is not None)
        return f"GLoRA {shapes} vs weight {tuple(weight.shape)}"
    return GLoRAWeight(a1, a2, b1, b2, bm, alpha / rank if alpha else 1.0)


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
