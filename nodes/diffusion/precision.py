"""Weight precision: ``--dtype fp16|bf16|fp32`` and the loaders' ``weight_dtype`` input.

The option is stored as a name in ``Environment.options["dtype"]`` (the engine and
the server never import torch); a loader's own ``weight_dtype`` overrides it for
one model. Without either, weights load in float32, as always.

The SD VAE overflows in float16 (its decoder's activations pass 65504): a VAE whose
config asks for ``force_upcast`` (diffusers' default) is kept in float32 when the
rest of the model is float16, and :func:`decode_with_upcast` re-runs a decode in
float32 when a half-precision one still comes back with NaNs or infinities.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Light on purpose (torch is imported inside the functions): node definitions and the
# command line read these names.
DTYPE_NAMES = ("fp32", "fp16", "bf16")
#: the loaders' choices: "default" follows --dtype (float32 when it is not given)
WEIGHT_DTYPE_CHOICES = ("default", *DTYPE_NAMES)
_TORCH_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def dtype_from_name(name: str | None, options: Mapping[str, object] | None = None
                    ) -> torch.dtype:
    """The torch dtype for a weight_dtype choice; "default"/None follow ``options["dtype"]``."""
    import torch

    if name in (None, "default"):
        name = str((options or {}).get("dtype") or "fp32")
    if name not in _TORCH_NAMES:
        raise ValueError(f"unknown dtype {name!r}: use one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, _TORCH_NAMES[name])


def vae_dtype(dtype: torch.dtype, vae_config: Mapping[str, Any] | None) -> torch.dtype:
    """The VAE's dtype for a model loaded in ``dtype``: float32 instead of float16 when
    the VAE's config asks for ``force_upcast`` (true unless it says otherwise)."""
    import torch

    if dtype == torch.float16 and bool((vae_config or {}).get("force_upcast", True)):
        return torch.float32
    return dtype


def checkpoint_dtypes(dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    """Per-key read dtypes for a single (original-layout) checkpoint loaded in ``dtype``:
    its VAE is read in float32 when ``dtype`` is float16, as :func:`vae_dtype` may keep
    it so."""
    import torch

    from nodes.diffusion.original_layout import VAE_PREFIX

    if dtype != torch.float16:
        return lambda key: dtype
    return lambda key: torch.float32 if key.startswith(VAE_PREFIX) else dtype


def decode_with_upcast(vae: torch.nn.Module, run: Callable[[torch.nn.Module], torch.Tensor]
                       ) -> torch.Tensor:
    """``run(vae)``; if a half-precision VAE returns NaN/inf, run it again in float32.

    The VAE is upcast in place for the retry and cast back after it, as diffusers'
    pipelines do with ``force_upcast``.
    """
    import torch

    out = run(vae)
    dtype = next(vae.parameters()).dtype
    if dtype not in (torch.float16, torch.bfloat16) or bool(torch.isfinite(out).all()):
        return out
    vae.to(torch.float32)
    try:
        return run(vae)
    finally:
        vae.to(dtype)
