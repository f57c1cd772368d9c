"""MultiDiffusion nodes: panoramas (windows averaged each step) and their seamless decode.

Region prompts — MultiDiffusion's other use — are the conditioning nodes Conditioning
Set Area / Set Area (Percentage) / Set Mask combined with Conditioning Combine
(:mod:`nodes.conditioning`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import DiffusionModel, Latent, Vae

if TYPE_CHECKING:
    import torch


#: the smallest window (latent pixels) besides 0: SD's UNet downsamples a window 8x
MIN_WINDOW = 8


class MultiDiffusionPanorama(Node):
    """MultiDiffusion (Bar-Tal et al. 2023): images wider (or taller) than the model was
    trained for, without the seams of generating tiles one by one. Each step the latent is
    split into overlapping windows of the model's native size, every window is denoised
    like a normal image, and the overlaps are averaged, so neighbouring windows agree.
    With ``view_weights`` "uniform" it matches diffusers' ``StableDiffusionPanoramaPipeline``
    (its window 64 latent pixels, stride 8).

    Wire: Load Checkpoint's MODEL → here → the sampler; make the latent as wide as you
    like (Empty Latent Image, e.g. 256x64 on steerflow-shapes with the VAE linked). Sizes
    are in latent pixels (image pixels / the VAE's downscale: 4 on the default model, 8 on
    SD). ``window_size`` 0 takes the model's native size (16 on steerflow-shapes, 64 on SD
    1.5): smaller windows draw things too small, larger ones leave what the model learnt.
    ``stride`` is the step between windows (at most the window): smaller strides overlap
    more and cost more (windows = (width − window) / stride + 1: 7 for 256 px at 8 on the
    default model). ``view_weights`` "gaussian" (the default) weighs each window less
    towards its edges (Mixture of Diffusers): textures and shapes change smoothly where a
    window starts or ends; "uniform" is the pipeline's plain average, which leaves faint
    steps and half-drawn "ghost" shapes at window edges on textured backgrounds.
    ``circular_padding`` wraps windows around the right edge so the left and right edges
    meet (a 360° panorama; decode with VAE Decode (Circular)). ``view_batch_size``
    windows go through the UNet together (faster on a GPU, same result).

    Cost: one UNet pass per window per step. Works with SEGA, LoRA (hook LoRAs and Load
    LoRA (Bypass) too), IP-Adapter (without attention masks), ControlNet and T2I-Adapter
    (a control image at the panorama's size is cropped per window), SAG, latent noise
    masks, inpainting models and mask regions (Conditioning Set Mask); not with
    Attend-and-Excite, FABRIC, Pix2Pix-Zero or LEDITS++ (they edit the whole latent with
    their own passes) nor area regions (Conditioning Set Area). On the default model, 64x256
    panoramas of held-out captions show no seam on flat backgrounds (0 of 42 with
    gaussian weights, 1 of 42 uniform; tiles made one by one: 8 of 42); on noisy or striped
    backgrounds uniform weights leave faint texture steps at window edges (README).
    """

    TYPE = "MultiDiffusionPanorama"
    DISPLAY_NAME = "MultiDiffusion Panorama"
    SEARCH_ALIASES = ("panorama", "tiled diffusion", "wide image")
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    window_size: int = Input(0, min=0, max=1024,
                             description="Window side in latent pixels (0: the model's "
                                         f"native size; else at least {MIN_WINDOW})")
    stride: int = Input(8, min=1, max=1024,
                        description="Step between windows in latent pixels (at most the "
                                    "window size)")
    circular_padding: bool = Input(False, description="Wrap windows around the right edge "
                                                      "(360° panoramas)")
    view_batch_size: int = Input(1, min=1, max=64,
                                 description="Windows per UNet pass (speed only)")
    view_weights: str = Input("gaussian", choices=("gaussian", "uniform"),
                              description="How windows are averaged: gaussian (Mixture of "
                                          "Diffusers: fewer seams) or uniform (MultiDiffusion, "
                                          "the diffusers pipeline)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        window, stride = inputs.get("window_size"), inputs.get("stride")
        if isinstance(window, int) and 0 < window < MIN_WINDOW:
            # a 1-pixel window ran ~1,000 UNet calls on 1x1 latents a step and drew nothing
            return [("window_size", f"windows of {window} latent pixels are too small for "
                                    f"a UNet to draw in: use 0 (the model's native size) "
                                    f"or at least {MIN_WINDOW}")]
        if isinstance(window, int) and isinstance(stride, int) and 0 < window < stride:
            return [("stride", f"a stride of {stride} over windows of {window} leaves gaps "
                               "between them: use a stride at most the window size")]
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.multidiffusion import MultiDiffusionPanorama as Panorama

        if 0 < self.window_size < MIN_WINDOW:  # a linked value (a constant is validated)
            raise ValueError(f"windows of {self.window_size} latent pixels are too small for a "
                             f"UNet to draw in: use 0 (the model's native size) or at least "
                             f"{MIN_WINDOW}")
        native = int(getattr(self.model.unet.config, "sample_size", 0) or 0)
        window = self.window_size or native
        if self.stride > window:
            raise ValueError(f"a stride of {self.stride} over this model's windows of "
                             f"{window} latent pixels leaves gaps: use a stride at most "
                             f"{window}")
        return (self.model.with_extension(Panorama(
            self.window_size, self.stride, self.circular_padding, self.view_batch_size,
            self.view_weights)),)


class VAEDecodeCircular(Node):
    """Decode a 360° panorama (MultiDiffusion Panorama with circular_padding) so its left
    and right edges meet without a seam: ``padding`` latent columns from each side are
    wrapped around the other before decoding and cut off after, as diffusers' panorama
    pipeline decodes (8 there). Any other latent decodes as with VAE Decode, except at
    its left and right edges. Cost: a decode ``2 × padding`` latent pixels wider.
    """

    TYPE = "VAEDecodeCircular"
    DISPLAY_NAME = "VAE Decode (Circular)"
    CATEGORY = "latent"
    OUTPUTS = (Output("IMAGE"),)

    samples: Latent = Input(type="LATENT")
    vae: Vae = Input(type="VAE")
    padding: int = Input(8, min=0, max=256,
                         description="Latent columns wrapped around each side (0: plain "
                                     "decode)")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        from nodes.diffusion.multidiffusion import decode_circular

        return (decode_circular(self.vae.scaled_for(self.samples.scaling_factor),
                                self.samples.samples, self.padding),)


NODE_CLASSES = (MultiDiffusionPanorama, VAEDecodeCircular)
