"""Guidance patches under ComfyUI's ids: FreSca, Temporal Score Rescaling and Normalized
Attention Guidance. Each returns a new MODEL handle with a sampler extension attached;
the cached model is never changed."""

from __future__ import annotations

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import DiffusionModel


class FreSca(Node):
    """Frequency-scaled guidance (FreSca): the guidance direction (cond − uncond) is split
    into low and high spatial frequencies, each scaled on its own. ``scale_high`` above 1
    (1.1 to 1.5) sharpens textures and edges without the burn of a higher cfg; ``scale_low``
    moves overall layout and colour (keep it at 1 to start). ``freq_cutoff`` is the
    half-width, in latent frequencies, of the low band: a latent smaller than twice it
    (under 320 px at the default 20 on SD) is all low band, so lower it for small images.
    Needs cfg > 1. ComfyUI's node."""

    TYPE = "FreSca"
    CATEGORY = "_for_testing"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    scale_low: float = Input(1.0, min=0.0, max=10.0, step=0.01,
                             description="scaling factor for low-frequency components")
    scale_high: float = Input(1.25, min=0.0, max=10.0, step=0.01,
                              description="scaling factor for high-frequency components")
    freq_cutoff: int = Input(20, min=1, max=100, step=1,
                             description="frequency indices around the centre counted as low")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.cfg_filters import FreSca as Extension

        return (self.model.with_extension(
            Extension(self.scale_low, self.scale_high, self.freq_cutoff)),)


class TemporalScoreRescaling(Node):
    """Temporal Score Rescaling (TSR): the final noise estimate is rescaled by a factor
    that goes from 1 at high noise to ``tsr_k`` at low noise. ``tsr_k`` below 1 (0.9 to 0.98)
    gives more detail, above 1 smoother images; 1 turns it off. ``tsr_sigma`` sets how
    early it takes over (larger: earlier). Works with or without CFG, on any prediction
    type, after every other guidance term. ComfyUI's node."""

    TYPE = "TemporalScoreRescaling"
    DISPLAY_NAME = "TSR - Temporal Score Rescaling"
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL", "patched_model"),)

    model: DiffusionModel = Input(type="MODEL")
    tsr_k: float = Input(0.95, min=0.01, max=100.0, step=0.001,
                         description="rescaling strength: lower is more detailed, 1 is off")
    tsr_sigma: float = Input(1.0, min=0.01, max=100.0, step=0.001,
                             description="how early rescaling takes effect (larger: earlier)")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.cfg_filters import TemporalScoreRescaling as Extension

        return (self.model.with_extension(Extension(self.tsr_k, self.tsr_sigma)),)


class NAGuidance(Node):
    """Normalized Attention Guidance: the negative prompt steers inside every
    self-attention layer (the conditional output pushed away from the negative's,
    renormalised), so negative prompts work at cfg 1 and on few-step models, and add to
    CFG above it. ``nag_scale`` is the push (3 to 7), ``nag_tau`` caps how far the norm may
    grow (1.5 to 2.5; higher is stronger but can break images), ``nag_alpha`` blends the
    result with the plain output (0.25 to 0.5). At cfg 1 it costs a second UNet entry per
    step. ComfyUI's node (its attention output patch, on every transformer block)."""

    TYPE = "NAGuidance"
    DISPLAY_NAME = "Normalized Attention Guidance"
    SEARCH_ALIASES = ("NAG",)
    CATEGORY = "advanced/guidance"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    nag_scale: float = Input(5.0, min=0.0, max=50.0, step=0.1,
                             description="higher pushes further from the negative prompt")
    nag_alpha: float = Input(0.5, min=0.0, max=1.0, step=0.01,
                             description="blend of the normalised attention: 1 replaces, 0 is off")
    nag_tau: float = Input(1.5, min=1.0, max=10.0, step=0.01,
                           description="the most the attention output's norm may grow")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.nag import NormalizedAttentionGuidance

        return (self.model.with_extension(
            NormalizedAttentionGuidance(self.nag_scale, self.nag_alpha, self.nag_tau)),)


NODE_CLASSES = (FreSca, TemporalScoreRescaling, NAGuidance)
