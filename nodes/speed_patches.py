"""Model-call speed nodes under ComfyUI's ids: EasyCache, LazyCache (step caching),
TorchCompileModel and ModelComputeDtype.

Each returns a new MODEL handle (a sampler extension attached, or a cast copy of the
UNet); the cached model is never changed.
"""

from __future__ import annotations

from typing import Any

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import DiffusionModel

_COMPUTE_DTYPES = ("default", "fp32", "fp16", "bf16")
_BACKENDS = ("inductor", "cudagraphs")


def _threshold() -> Any:
    return Input(0.2, min=0.0, max=3.0, step=0.01,
                 description="The threshold for reusing cached steps (0: never)")


def _start() -> Any:
    return Input(0.15, min=0.0, max=1.0, step=0.01,
                 description="The relative sampling step to begin use of the cache")


def _end() -> Any:
    return Input(0.95, min=0.0, max=1.0, step=0.01,
                 description="The relative sampling step to end use of the cache")


class EasyCache(Node):
    """EasyCache (Zhou et al. 2025): skips UNet passes while the model's behaviour is
    predictable, training-free. After each step that really ran it remembers the UNet's
    output minus its input; on later steps it adds up how far the input has moved,
    weighted by how strongly the output followed the input on the last two computed
    steps. While that sum stays under ``reuse_threshold`` the step reuses the
    remembered difference instead of running the UNet; once it passes, the UNet runs and
    the sum starts again. Only between ``start_percent`` and ``end_percent`` of the
    schedule (the first steps lay out the image, the last ones its fine detail).

    Typical values: reuse_threshold 0.2 (ComfyUI's default) saves roughly a third to a
    half of the steps on 20+ step runs with little change; 0.1 is safer, 0.3-0.5 faster
    and softer; 0 never skips (the same image as without the node). It pays off with
    many steps: on 4-8 step runs there is little to skip. The log says how many steps
    were skipped (``verbose`` also logs every decision and the measured change rates).

    Works with CFG, ControlNet (which still runs on a skipped step), SAG and other
    model patches; the cache lives for one run only. A UNet called several times per
    step (MultiDiffusion's windows) turns it off for that run (a warning says so).
    """

    TYPE = "EasyCache"
    CATEGORY = "advanced/debug"  # ComfyUI's
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL", description="The model to add EasyCache to")
    reuse_threshold: float = _threshold()
    start_percent: float = _start()
    end_percent: float = _end()
    verbose: bool = Input(False, description="Whether to log verbose information")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.step_cache import EasyCache as Extension

        return (self.model.with_extension(Extension(
            self.reuse_threshold, self.start_percent, self.end_percent, self.verbose)),)


class LazyCache(EasyCache):
    """LazyCache: EasyCache's rule applied to the whole sampling step. It measures the
    noisy latent and the final guided prediction (after CFG and every guidance patch),
    and a skipped step runs no UNet pass at all: also none of the extra passes SAG, PAG
    or a ControlNet would make, which EasyCache still runs. ComfyUI calls it "a homebrew
    version of EasyCache": usually a little worse than EasyCache at the same threshold,
    better in some cases, and compatible with everything.

    Typical values as for EasyCache: reuse_threshold 0.2, 0 never skips; unlike
    EasyCache it already measures before ``start_percent``, so it may skip from the
    second step of the window on. Needs a sampler with a noise schedule (every built-in
    one).
    """

    TYPE = "LazyCache"
    model: DiffusionModel = Input(type="MODEL", description="The model to add LazyCache to")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.step_cache import LazyCache as Extension

        return (self.model.with_extension(Extension(
            self.reuse_threshold, self.start_percent, self.end_percent, self.verbose)),)


class TorchCompileModel(Node):
    """Runs this MODEL's UNet through ``torch.compile``: faster steps after a one-time
    compile (seconds to minutes, on the first run and again for each new latent size),
    worth it for many runs at one size. The cached model is unchanged; only samplers fed
    from this node use the compiled UNet, and they reuse its compilation.

    ``backend``: inductor (generates fused kernels; needs a C++ compiler on the CPU,
    Triton on a GPU) or cudagraphs (replays recorded CUDA graphs; on other devices it
    runs as plain graphs). Compiling never breaks a run: should it fail (no compiler,
    a hook torch cannot trace), the UNet runs uncompiled with a warning in the log, for
    this and later runs of this model. Results equal the uncompiled UNet's up to float
    rounding.
    """

    TYPE = "TorchCompileModel"
    CATEGORY = "_for_testing"  # ComfyUI's
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    backend: str = Input("inductor", choices=_BACKENDS,
                         description="torch.compile backend")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.speed import TorchCompile

        return (self.model.with_extension(TorchCompile(self.backend)),)


class ModelComputeDtype(Node):
    """Runs this MODEL's UNet in another precision: fp16 or bf16 halve its memory and
    speed it up on GPUs with half-precision units; fp32 is the most exact (and lifts a
    half-precision model whose images come out black or noisy). ``default`` keeps the
    model as it is.

    The node makes a copy of the UNet in that dtype (the cached model is unchanged), so
    while both are in use the memory of both is needed; the sampler then works in that
    dtype throughout, as if the model had been loaded with that ``weight_dtype`` (which
    saves the copy: prefer the loader's ``weight_dtype`` when you can). bf16 keeps fp32's
    range (no overflow) with fewer digits; fp16 has more digits but overflows on some
    models (SDXL's UNet mostly works, its VAE does not: the VAE is not affected here).
    On a CPU both run, usually slower than fp32; a device that lacks an operation in the
    chosen dtype stops the run with an error that says so (choose bf16 or fp32 there).
    """

    TYPE = "ModelComputeDtype"
    CATEGORY = "advanced/debug/model"  # ComfyUI's
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    dtype: str = Input("default", choices=_COMPUTE_DTYPES,
                       description="The UNet's compute dtype")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        if self.dtype == "default":
            return (self.model,)
        from dataclasses import replace

        from nodes.diffusion.memory import is_sequentially_offloaded
        from nodes.diffusion.precision import dtype_from_name
        from nodes.diffusion.speed import ComputeDtypeCheck, cast_copy, weights_bytes
        from nodes.limits import check_fits

        target = dtype_from_name(self.dtype)
        unet = self.model.unet
        if unet.dtype == target:
            return (self.model,)
        if is_sequentially_offloaded(unet):
            raise ValueError(
                f"dtype {self.dtype}: this model runs with sequential offload (it does not "
                "fit on the device whole), so a cast copy would not fit either; load it "
                f"with the loader's weight_dtype {self.dtype} instead")
        check_fits(weights_bytes(unet, target), unet.device,
                   f"a {self.dtype} copy of the UNet (dtype {self.dtype})",
                   f"load the model with weight_dtype {self.dtype} instead")
        copy = replace(self.model, unet=cast_copy(unet, target))
        return (copy.with_extension(ComputeDtypeCheck(self.dtype)),)


NODE_CLASSES = (EasyCache, LazyCache, TorchCompileModel, ModelComputeDtype)
