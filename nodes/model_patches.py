"""Model-patch nodes under ComfyUI's ids: FreeU, FreeU_V2, RescaleCFG, CFGNorm, Mahiro, HyperTile,
ToMe, Deep Shrink and the attention multipliers (UNet self/cross-attention, CLIP attention).

Each returns a new MODEL (or CLIP) handle: a sampler extension attached (FreeU's hooks
exist only during a sampling run) or a weight patch applied per run like a LoRA; the
cached model is never changed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.deep_shrink import METHODS as DEEP_SHRINK_METHODS
from nodes.diffusion.handles import Conditioning, DiffusionModel, TextEncoder


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


class PerpNeg(Node):
    """Perp-Neg (Armandpour et al. 2023): the negative prompt removes only what it does
    not share with the positive one, so a negative close to the subject ("a dog" with
    "a cat") no longer weakens the subject itself. Link the empty prompt's conditioning
    (CLIP Text Encode of ""); ``neg_scale`` weighs the perpendicular negative (1: as
    strong as the positive). Costs a third UNet pass per step; needs cfg above 1."""

    TYPE = "PerpNeg"
    DISPLAY_NAME = "Perp-Neg (DEPRECATED by PerpNegGuider)"
    CATEGORY = "_for_testing"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    empty_conditioning: Conditioning = Input(type="CONDITIONING")
    neg_scale: float = Input(1.0, min=0.0, max=100.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.perp_neg import PerpNeg as Extension

        return (self.model.with_extension(Extension(self.empty_conditioning,
                                                    self.neg_scale)),)


class APG(Node):
    """Adaptive Projected Guidance (Sadat et al. 2024): high cfg without oversaturation.
    The guidance direction is split along the conditional prediction and its parallel
    part, which burns colours, is scaled by ``eta`` (0 drops it, 1 is plain CFG's);
    ``norm_threshold`` caps the direction's length and ``momentum`` (negative, e.g.
    -0.5) pushes against the previous steps' direction. Try cfg 10-15 with eta 0.
    diffusers' AdaptiveProjectedGuidance: computed on the noise prediction, where
    ComfyUI's node uses the denoised one, so the same values act differently."""

    TYPE = "APG"
    DISPLAY_NAME = "Adaptive Projected Guidance"
    CATEGORY = "sampling/custom_sampling"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    eta: float = Input(1.0, min=-10.0, max=10.0, step=0.01,
                       description="Weight of the guidance's part along the prediction")
    norm_threshold: float = Input(5.0, min=0.0, max=50.0, step=0.1,
                                  description="Cap on the guidance's length (0: none)")
    momentum: float = Input(0.0, min=-5.0, max=1.0, step=0.01,
                            description="Running average over the steps (negative: "
                            "push against the previous direction)")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.guiders import AdaptiveProjectedGuidance

        return (self.model.with_extension(AdaptiveProjectedGuidance(
            self.eta, self.norm_threshold, self.momentum)),)


class CFGZeroStar(Node):
    """CFG-Zero* (Fan et al. 2025): before guidance the unconditional prediction is scaled
    to best match the conditional one, which keeps early steps from overshooting: a
    drop-in for plain CFG at the same cfg. diffusers' ClassifierFreeZeroStarGuidance."""

    TYPE = "CFGZeroStar"
    DISPLAY_NAME = "CFG Zero Star"
    CATEGORY = "advanced/guidance"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.guiders import CFGZeroStar as Extension

        return (self.model.with_extension(Extension()),)


class TCFG(Node):
    """Tangential Damping CFG (Kwon et al. 2025): before guidance, the unconditional
    prediction is reduced to its component along the main direction it shares with the
    conditional one, which steers samples back toward the data manifold; use at the
    usual cfg. diffusers' TangentialClassifierFreeGuidance (on the noise prediction)."""

    TYPE = "TCFG"
    DISPLAY_NAME = "Tangential Damping CFG"
    CATEGORY = "advanced/guidance"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.guiders import TangentialCFG

        return (self.model.with_extension(TangentialCFG()),)


class CFGNorm(Node):
    """Cap the guided prediction's strength: at every step the denoised estimate CFG
    produces is scaled, pixel by pixel, so its channel vector is no longer than the
    conditional estimate's, then by ``strength``. It keeps high cfg from over-saturating
    while leaving where the guidance points unchanged; ``strength`` 1 is the plain cap
    (below 1 also darkens). Acts last, on the final guided prediction, so it combines
    with every other guidance technique. ComfyUI's node (on the denoised estimate, as
    here, whatever the model predicts)."""

    TYPE = "CFGNorm"
    CATEGORY = "advanced/guidance"
    OUTPUTS = (Output("MODEL", name="patched_model"),)

    model: DiffusionModel = Input(type="MODEL")
    strength: float = Input(1.0, min=0.0, max=100.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.latent_operations import CFGNorm as CFGNormExtension

        return (self.model.with_extension(CFGNormExtension(self.strength)),)


class Mahiro(Node):
    """Mahiro: a CFG variant that leans the guided result toward the conditional
    prediction (scaled by cfg) wherever the unconditional one points elsewhere, which
    keeps prompts' detail at high cfg with less burn. Use it at your usual cfg; acts on
    the final guided prediction (ComfyUI's formula, on the denoised estimate), so it
    combines with the other guidance techniques."""

    TYPE = "Mahiro"
    DISPLAY_NAME = "Mahiro CFG"
    CATEGORY = "_for_testing"
    OUTPUTS = (Output("MODEL", name="patched_model"),)

    model: DiffusionModel = Input(type="MODEL")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.latent_operations import Mahiro as MahiroExtension

        return (self.model.with_extension(MahiroExtension()),)


class HyperTile(Node):
    """HyperTile: faster sampling at high resolution by running the UNet's top-level
    self-attention in tiles (each tile attends within itself), with the tiling redrawn
    at every step so no seam stays. Worth it from about 768 px on SD 1.x (1536 on SDXL);
    at the model's own size it saves little. ``tile_size`` (pixels): the smallest tile
    side, 256 for SD 1.x (the default), about 512 for SDXL; smaller is faster but loses
    coherence. ``swap_size``: how many tile sizes to draw from per step (more: the seams
    move more). ``max_depth`` 0 tiles only the first level; 1-2 also deeper ones
    (``scale_depth`` doubles the tile per level). The same seed gives the same image;
    combines with every other technique (a layer another technique reads keeps its
    untiled attention)."""

    TYPE = "HyperTile"
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    tile_size: int = Input(256, min=1, max=2048)
    swap_size: int = Input(2, min=1, max=128)
    max_depth: int = Input(0, min=0, max=10)
    scale_depth: bool = Input(False)

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.hypertile import HyperTile as HyperTileExtension

        return (self.model.with_extension(HyperTileExtension(
            self.tile_size, self.swap_size, self.max_depth, self.scale_depth)),)


class TomePatchModel(Node):
    """Token Merging (ToMe for SD): faster sampling by merging the most similar image
    tokens before the UNet's top-level self-attention and copying the result back to
    them after. ``ratio`` is the share of tokens merged: 0.3 (the default) is barely
    visible, 0.5 clearly faster at high resolution with some loss of fine detail; 0 is
    off. The same seed gives the same image; combines with every other technique (with
    HyperTile on, the layer is tiled first and left unmerged)."""

    TYPE = "TomePatchModel"
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    ratio: float = Input(0.3, min=0.0, max=1.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.token_merging import TokenMerging

        if self.ratio == 0:
            return (self.model,)
        return (self.model.with_extension(TokenMerging(self.ratio)),)


def _multiplier(what: str) -> float:
    # ComfyUI's bounds for every attention multiplier
    return Input(1.0, min=0.0, max=10.0, step=0.01, description=what)


def attention_factors(parts: dict[str, float]) -> Any:
    """Merge factors that scale the weight and bias of the projections named in ``parts``
    (a parameter-name suffix such as ``attn1.to_q.`` → its multiplier); others unchanged."""

    def factors(name: str) -> tuple[float, float]:
        for part, value in parts.items():
            if f".{name}".endswith((f".{part}weight", f".{part}bias")):
                return (value, 0.0)
        return (1.0, 0.0)

    return factors


class UNetSelfAttentionMultiply(Node):
    """Scale the UNet's self-attention projections (query, key, value, output) by these
    factors: ComfyUI's attention experiment. A query/key above 1 sharpens which pixels
    attend to which (more contrast in composition), below 1 blurs it; value/output scale
    what is passed on. 1 everywhere is the model unchanged; stay within 0.8-1.2."""

    TYPE = "UNetSelfAttentionMultiply"
    DISPLAY_NAME = "UNet Self-Attention Multiply"
    CATEGORY = "_for_testing/attention_experiments"
    OUTPUTS = (Output("MODEL"),)

    ATTENTION: ClassVar[str] = "attn1"

    model: DiffusionModel = Input(type="MODEL")
    q: float = _multiplier("Query projection factor")
    k: float = _multiplier("Key projection factor")
    v: float = _multiplier("Value projection factor")
    out: float = _multiplier("Output projection factor")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.model_merging import merge_models

        a = self.ATTENTION
        factors = attention_factors({f"{a}.to_q.": self.q, f"{a}.to_k.": self.k,
                                     f"{a}.to_v.": self.v, f"{a}.to_out.0.": self.out})
        return (merge_models(self.model, self.model, factors, f"{self.TYPE} "
                             f"{self.q:g}/{self.k:g}/{self.v:g}/{self.out:g}"),)


class UNetCrossAttentionMultiply(UNetSelfAttentionMultiply):
    """Scale the UNet's cross-attention projections (query from the image, key and value
    from the prompt, output): a key above 1 makes the prompt's words compete harder for
    each pixel, a value above 1 strengthens what the prompt writes in. 1 everywhere is
    the model unchanged; stay within 0.8-1.2."""

    TYPE = "UNetCrossAttentionMultiply"
    DISPLAY_NAME = "UNet Cross-Attention Multiply"
    ATTENTION = "attn2"


class CLIPAttentionMultiply(Node):
    """Scale the text encoder's self-attention projections (every layer, both SDXL
    encoders): how strongly the prompt's words inform each other. 1 everywhere is the
    CLIP unchanged."""

    TYPE = "CLIPAttentionMultiply"
    DISPLAY_NAME = "CLIP Attention Multiply"
    CATEGORY = "_for_testing/attention_experiments"
    OUTPUTS = (Output("CLIP"),)

    clip: TextEncoder = Input(type="CLIP")
    q: float = _multiplier("Query projection factor")
    k: float = _multiplier("Key projection factor")
    v: float = _multiplier("Value projection factor")
    out: float = _multiplier("Output projection factor")

    def execute(self, ctx: ExecutionContext) -> tuple[TextEncoder]:
        from nodes.model_merging import merge_clips

        factors = attention_factors({"self_attn.q_proj.": self.q, "self_attn.k_proj.": self.k,
                                     "self_attn.v_proj.": self.v,
                                     "self_attn.out_proj.": self.out})
        return (merge_clips(self.clip, self.clip, factors, f"{self.TYPE} "
                            f"{self.q:g}/{self.k:g}/{self.v:g}/{self.out:g}"),)


class PatchModelAddDownscale(Node):
    """Kohya's Deep Shrink: draw larger than the model's native size without repeated
    subjects. While the noise level lies in ``[start_percent, end_percent]`` of the
    schedule (the early steps, where the layout is chosen) the UNet's hidden state is
    shrunk by ``downscale_factor`` after input block ``block_number`` and resized back
    to each skip connection on the way up; the later steps run at full size and add the
    detail.

    Use it at about the factor by which the image exceeds the native size (2 for 2x),
    a block early in the down path (SD 1.x: 3, after the first downsampler, of its 11
    input blocks; SDXL has 8) and an ``end_percent`` long enough for the layout to
    settle: ComfyUI's 0.35 suits SD 1.x; the built-in model decides its layout late and
    needs about 0.8 (block 1: one shape at 128x128 in 68% of held-out captions, 0%
    without). Ending later gives a more coherent but softer image, earlier a
    sharper one that may repeat again. ``downscale_after_skip`` (default) keeps that
    block's own skip connection at full size. At the native size it only softens: leave
    it off there. It combines with FreeU, LoRAs, ControlNets (their
    residuals are resized to the shrunk skips; ComfyUI drops them) and every guidance.
    """

    TYPE = "PatchModelAddDownscale"
    DISPLAY_NAME = "PatchModelAddDownscale (Kohya Deep Shrink)"
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    block_number: int = Input(3, min=1, max=32)
    downscale_factor: float = Input(2.0, min=0.1, max=9.0, step=0.001)
    start_percent: float = Input(0.0, min=0.0, max=1.0, step=0.001)
    end_percent: float = Input(0.35, min=0.0, max=1.0, step=0.001)
    downscale_after_skip: bool = Input(True)
    downscale_method: str = Input("bicubic", choices=DEEP_SHRINK_METHODS)
    upscale_method: str = Input("bicubic", choices=DEEP_SHRINK_METHODS)

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.deep_shrink import DeepShrink

        if self.start_percent > self.end_percent:
            raise ValueError(f"start_percent ({self.start_percent}) is after end_percent "
                             f"({self.end_percent})")
        return (self.model.with_extension(DeepShrink(
            self.block_number, self.downscale_factor, self.start_percent, self.end_percent,
            self.downscale_after_skip, self.downscale_method, self.upscale_method)),)


class EpsilonScaling(Node):
    """Epsilon scaling (Ning et al. 2024): divide the model's final noise prediction by
    ``scaling_factor`` each step, to offset exposure bias (a sampler's latents drift
    noisier than the schedule assumes, which shows as washed-out or noisy detail at few
    steps). 1.005 is the usual value (1.0 changes nothing); larger darkens and sharpens,
    too large burns. For ε-prediction models (SD 1.x, SDXL); applies after CFG and any
    other guidance."""

    TYPE = "Epsilon Scaling"  # ComfyUI's node id
    DISPLAY_NAME = "Epsilon Scaling"
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    scaling_factor: float = Input(1.005, min=0.5, max=1.5, step=0.001)

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.rescale_cfg import EpsilonScaling as Extension

        if self.scaling_factor == 1.0:
            return (self.model,)
        return (self.model.with_extension(Extension(self.scaling_factor)),)


NODE_CLASSES = (FreeU, FreeU_V2, RescaleCFG, EpsilonScaling, PerpNeg, APG, CFGZeroStar, TCFG,
                CFGNorm, Mahiro, HyperTile, TomePatchModel, PatchModelAddDownscale,
                UNetSelfAttentionMultiply, UNetCrossAttentionMultiply, CLIPAttentionMultiply)
