"""Instruct-Pix2Pix node: edit an image by a written instruction with an 8-channel model."""

from __future__ import annotations

from engine import ExecutionContext, Input, Node, Output
from nodes.controlnet import _with_extension
from nodes.diffusion.handles import Conditioning, Latent, Tensor, Vae

IMAGE_CFG_MAX = 20.0


class InstructPixToPixConditioning(Node):
    """Instruct-Pix2Pix (Brooks et al. 2023): edit an image by an instruction such as
    "make the circle blue" or "make the background black". Reproduces diffusers'
    StableDiffusionInstructPix2PixPipeline; ComfyUI's node of the same name and inputs.

    Wiring: load an Instruct-Pix2Pix checkpoint (its UNet takes 8 input channels; on the
    default model: steerflow-shapes-ip2p), encode the instruction as the positive prompt
    and an empty negative, give this node both, the checkpoint's VAE and the image to
    edit, and sample its positive, negative and latent at denoise 1.0. The latent is an
    empty latent of the image's size (sides cropped to the VAE's multiple); the image
    reaches the UNet through the conditionings every step.

    Two guidance scales: the sampler's ``cfg`` is the text scale (how strongly the
    instruction acts, 5-10), ``image_cfg`` the image scale (how closely the result
    follows the input image). The default 1.0 is ComfyUI's node (it has no such input):
    plain two-way CFG with the image in both conditionings, so ComfyUI workflows give
    ComfyUI's result. For the pipeline's three-way guidance set it above 1: 1.5 is
    diffusers' default, 1.2-2 the useful range; higher keeps more of the image and
    edits less (cost: 3 UNet rows per step instead of 2). ComfyUI's own three-way recipe
    also works: this node's outputs as cond1 and cond2 of Dual CFG Guider and the plain
    negative as its negative (that negative sees a zero image, as in ComfyUI), with
    image_cfg left at 1. Without CFG (cfg ≤ 1) the instruction is applied once, unguided.

    On the default model (steerflow-shapes-ip2p, 64x64) it knows the shapes world's four
    edits: "make the circle blue", "turn the red square into a star", "move it to the
    left" (one cell of the 3x3 grid), "make the background black"; name the shape by
    colour and kind when there are two. 20 Euler steps, cfg 7.5, image_cfg 1.5.

    Combines with SEGA, ControlNets, T2I-Adapters, LoRAs and a noise mask (sample a
    VAE-encoded latent with Set Latent Noise Mask, denoise 1.0, to edit inside a mask
    only) in the same run.
    """

    TYPE = "InstructPixToPixConditioning"
    DISPLAY_NAME = "InstructPixToPix Conditioning"
    SEARCH_ALIASES = ("IP2P", "instruct pix2pix", "instruction edit")
    CATEGORY = "conditioning/instructpix2pix"
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"),
               Output("LATENT", "latent"))

    positive: Conditioning = Input(type="CONDITIONING",
                                   description="The instruction, e.g. 'make the circle blue'")
    negative: Conditioning = Input(type="CONDITIONING", description="Usually empty")
    vae: Vae = Input(type="VAE")
    pixels: Tensor = Input(type="IMAGE", description="The image to edit, 0..1")
    image_cfg: float = Input(
        1.0, min=0.0, max=IMAGE_CFG_MAX, step=0.05,
        description="Image guidance scale s_I: 1.0 is ComfyUI's two-way CFG; 1.5 (the "
                    "pipeline's default) keeps more of the input; higher edits less")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning, Conditioning, Latent]:
        import torch

        from nodes.diffusion.instruct_pix2pix import InstructPix2Pix, image_latents

        latents = image_latents(self.vae, self.pixels)
        if latents.shape[1] != self.vae.latent_channels:
            raise ValueError(f"the VAE gave {latents.shape[1]} latent channels, expected "
                             f"{self.vae.latent_channels}")
        ext = InstructPix2Pix(latents, self.image_cfg)
        # An empty latent (UNet space) of the image's size; the sampler adds the noise.
        empty = Latent(torch.zeros_like(latents))
        # One object on both sides: the sampler runs it once, over the whole CFG batch.
        return _with_extension(self.positive, ext), _with_extension(self.negative, ext), empty


NODE_CLASSES = (InstructPixToPixConditioning,)
