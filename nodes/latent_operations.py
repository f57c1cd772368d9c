"""ComfyUI's latent operations: LatentOperationTonemapReinhard and LatentOperationSharpen
make a LATENT_OPERATION; LatentApplyOperation applies one to a LATENT, and
LatentApplyOperationCFG to the guidance of every sampling step. The math is in
:mod:`nodes.diffusion.latent_operations`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import DiffusionModel, Latent
from nodes.limits import check_latent

CATEGORY = "latent/advanced/operations"


class LatentOperationTonemapReinhard(Node):
    """A Reinhard tonemap for latents: each latent pixel keeps its colour direction while
    its strength is compressed toward a ceiling (mean + 5 std of the strengths, times
    ``multiplier``), which tames the blown-out, over-saturated look of high cfg. Apply it
    to the guidance with LatentApplyOperationCFG (its usual use: at cfg 7-15, multiplier
    about 0.5-1; lower compresses harder), or to a LATENT with LatentApplyOperation."""

    TYPE = "LatentOperationTonemapReinhard"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("LATENT_OPERATION"),)

    multiplier: float = Input(1.0, min=0.0, max=100.0, step=0.01,
                              description="Scales the ceiling; lower compresses more")

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        from nodes.diffusion.latent_operations import TonemapReinhard

        return (TonemapReinhard(self.multiplier),)


class LatentOperationSharpen(Node):
    """Sharpen latents: unsharp masking of each latent pixel's colour direction with a
    Gaussian of ``2·sharpen_radius + 1`` taps (``sigma`` in units of the radius) at
    strength ``alpha`` (0: none; 0.1, the default, is gentle). Apply it to the guidance
    with LatentApplyOperationCFG for crisper detail, or to a LATENT with
    LatentApplyOperation before decoding."""

    TYPE = "LatentOperationSharpen"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("LATENT_OPERATION"),)

    sharpen_radius: int = Input(9, min=1, max=31, step=1)
    sigma: float = Input(1.0, min=0.1, max=10.0, step=0.1)
    alpha: float = Input(0.1, min=0.0, max=5.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        from nodes.diffusion.latent_operations import Sharpen

        return (Sharpen(self.sharpen_radius, self.sigma, self.alpha),)


class LatentApplyOperation(Node):
    """Apply a latent operation (tonemap, sharpen) to a LATENT's samples."""

    TYPE = "LatentApplyOperation"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    operation: Any = Input(type="LATENT_OPERATION")

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        check_latent(self.samples.samples, "samples")
        if not callable(self.operation):
            raise ValueError("operation must come from a latent operation node")
        out = self.operation(self.samples.samples)
        return (replace(self.samples, samples=out, extension_results=()),)


class LatentApplyOperationCFG(Node):
    """Apply a latent operation to the guidance at every sampling step: on the denoised
    estimates, the conditional one becomes ``op(cond − uncond) + uncond`` (without CFG,
    ``op(cond)``), so the operation shapes what CFG amplifies. With the Reinhard tonemap
    it allows higher cfg without burning; combines with every other guidance technique
    (they add their terms after it)."""

    TYPE = "LatentApplyOperationCFG"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    operation: Any = Input(type="LATENT_OPERATION")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.latent_operations import OperationCFG

        return (self.model.with_extension(OperationCFG(self.operation)),)


NODE_CLASSES = (LatentOperationTonemapReinhard, LatentOperationSharpen, LatentApplyOperation,
                LatentApplyOperationCFG)
