"""Model-patch nodes under ComfyUI's ids: FreeU, FreeU_V2 and RescaleCFG.

Each returns a new MODEL handle with a sampler extension attached; the cached UNet is
never changed (FreeU's hooks exist only during a sampling run).
"""

from __future__ import annotations

from typing import ClassVar

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import DiffusionModel


def _bound(default: float, what: str) -> float:
    # ComfyUI's bounds for all four FreeU factors
    return Input(default, min=0.0, max=10.0, step=0.01, description=what)


class FreeU(Node):
    """FreeU (Si et al. 2023): sharper, more saturated detail at no cost, without
    training. In the UNet's two lowest-resolution up blocks it boosts the backbone
    (the first half of its channels × ``b1`` in the lowest block, × ``b2`` in the next)
    and damps the low frequencies of the skip connections (× ``s1`` / ``s2``), which
    carry the fine but noisy high-frequency detail less strongly then. Matches
    diffusers' ``pipe.enable_freeu(s1, s2, b1, b2)``.

    Typical values (the FreeU authors'): SD 1.x b1 1.5, b2 1.6, s1 0.9, s2 0.2; SD 2.x
    b1 1.4, b2 1.6, s1 0.9, s2 0.2; SDXL b1 1.3, b2 1.4, s1 0.9, s2 0.2. The defaults
    are ComfyUI's gentler 1.1 / 1.2 / 0.9 / 0.2. b1 = b2 = s1 = s2 = 1 leaves the model
    as it is; larger ``b`` oversaturates, smaller ``s`` loses texture. Costs a 2-D FFT
    per skip connection in two blocks (negligible).

    Departure from ComfyUI: the blocks are chosen as diffusers does (b1/s1 in the
    lowest-resolution up block, b2/s2 in the next). ComfyUI (like the FreeU authors'
    code) chooses by the backbone's channel count: b1/s1 where it has
    ``model_channels`` × 4 channels (on SD 1.x the first two up blocks and the first
    ResNet of the third), b2/s2 where × 2 (the rest of the third, the first ResNet of
    the fourth). Images differ from ComfyUI's at the same values.
    """

    TYPE = "FreeU"
    CATEGORY = "model_patches/unet"  # ComfyUI's
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    b1: float = _bound(1.1, "Backbone factor of the lowest-resolution up block")
    b2: float = _bound(1.2, "Backbone factor of the second up block")
    s1: float = _bound(0.9, "Skip low-frequency factor of the lowest-resolution up block")
    s2: float = _bound(0.2, "Skip low-frequency factor of the second up block")

    ADAPTIVE: ClassVar[bool] = False

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.freeu import FreeU as FreeUExtension

        if self.b1 == self.b2 == self.s1 == self.s2 == 1:
            return (self.model,)
        return (self.model.with_extension(
            FreeUExtension(self.b1, self.b2, self.s1, self.s2, adaptive=self.ADAPTIVE)),)


class FreeU_V2(FreeU):  # ComfyUI's node id
    """FreeU, version 2 (ComfyUI's FreeU_V2, from the FreeU authors' updated code): like
    FreeU, but the backbone boost follows the features: each pixel's first half of
    channels is scaled by ``1 + (b − 1) · m``, ``m`` the backbone's channel mean
    normalised to 0..1 per image, so strong regions get the full ``b`` and weak ones
    almost none (fewer artefacts than v1 at the same ``b``). The skip connections'
    low frequencies are damped by ``s1`` / ``s2`` as in v1.

    Typical values (the FreeU authors'): SD 1.x b1 1.5, b2 1.6, s1 0.9, s2 0.2; SD 2.x
    b1 1.4, b2 1.6, s1 0.9, s2 0.2; SDXL b1 1.3, b2 1.4, s1 0.9, s2 0.2 (the defaults,
    ComfyUI's). b = s = 1 leaves the model as it is. The blocks are chosen as in
    FreeU (diffusers' placement; ComfyUI's chooses by channel count).
    """

    TYPE = "FreeU_V2"
    b1: float = _bound(1.3, "Backbone factor (at the strongest features) of the "
                       "lowest-resolution up block")
    b2: float = _bound(1.4, "Backbone factor (at the strongest features) of the "
                       "second up block")
    s1: float = _bound(0.9, "Skip low-frequency factor of the lowest-resolution up block")
    s2: float = _bound(0.2, "Skip low-frequency factor of the second up block")

    ADAPTIVE: ClassVar[bool] = True


class RescaleCFG(Node):
    """Rescale CFG (Lin et al. 2023, section 3.4): tames the over-exposed, burnt look of
    high CFG scales. After classifier-free guidance the guided noise prediction is
    rescaled to the standard deviation of the conditional one and mixed back:
    ``multiplier`` · rescaled + (1 − ``multiplier``) · guided. Matches diffusers'
    ``guidance_rescale`` (``StableDiffusionPipeline(..., guidance_rescale=...)``).

    Typical values: 0.7 (the default, the paper's), 0.5 to 0.8; 0 turns it off. Most
    useful with v-prediction / zero-terminal-SNR models and with cfg above ~7; it needs
    cfg above 1 (without CFG there is nothing to rescale). Combines with SAG, PAG,
    SEGA and combined prompts: it rescales after their guidance terms are added.

    Departure from ComfyUI: ComfyUI rescales the prediction converted to v (x0/v
    space); this node rescales the noise prediction (the paper's and diffusers'
    formula). Images differ slightly.
    """

    TYPE = "RescaleCFG"
    CATEGORY = "advanced/model"  # ComfyUI's
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    multiplier: float = Input(0.7, min=0.0, max=1.0, step=0.01,
                              description="Rescale factor φ (guidance_rescale); 0: off")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.rescale_cfg import RescaleCFG as RescaleExtension

        if self.multiplier == 0:
            return (self.model,)  # the pipeline skips the rescale at 0
        return (self.model.with_extension(RescaleExtension(self.multiplier)),)


NODE_CLASSES = (FreeU, FreeU_V2, RescaleCFG)
