"""SD_4XUpscale_Conditioning: upscale an image 4x with the Stable Diffusion x4 upscaler."""

from __future__ import annotations

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Conditioning, Latent, Tensor

#: ComfyUI's MAX_RESOLUTION: the largest output side in pixels
MAX_OUTPUT_SIDE = 16384


class SD_4XUpscale_Conditioning(Node):  # ComfyUI's id
    """Stable Diffusion x4 upscaler (stabilityai/stable-diffusion-x4-upscaler; diffusers'
    StableDiffusionUpscalePipeline; ComfyUI's node of the same name and inputs).

    Wiring: load the upscaler with Load Checkpoint (x4-upscaler-ema.safetensors or its
    diffusers folder), encode a prompt describing the picture (and a negative) with its
    CLIP, give this node both and the low-resolution images; sample its positive,
    negative and latent with KSampler at denoise 1.0 (the pipeline: 75 steps, cfg 9,
    DDIM-like samplers; 20-50 steps is usually enough), then VAE Decode with the same
    checkpoint's VAE: the result is ``scale_ratio`` times the input size.

    ``scale_ratio`` sets the output size (``round(side · scale_ratio)``): the latent is a
    quarter of it and the image is resized (bilinear, centre crop) to the latent size, so
    4.0 upscales 4x and e.g. 2.0 shrinks the image to half first. ``noise_augmentation``
    (0..1) noises the low-res image to level ``round(350 · a)`` and tells the model so:
    a little (0.05-0.2) cleans up JPEG artefacts and noise and lets the model invent
    more detail; 0 keeps closest to the input. Memory grows with the output area: the
    UNet runs at the latent (input) size with attention, so upscale large images in
    tiles. Combines with LoRAs, SAG, SEGA and other techniques in the same run.
    """

    TYPE = "SD_4XUpscale_Conditioning"
    DISPLAY_NAME = "SD_4XUpscale_Conditioning"
    CATEGORY = "conditioning/upscale_diffusion"
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"),
               Output("LATENT", "latent"))

    images: Tensor = Input(type="IMAGE", description="The low-resolution images, 0..1")
    positive: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    scale_ratio: float = Input(4.0, min=0.0, max=10.0, step=0.01,
                               description="Output size / input size (4 = the model's 4x)")
    noise_augmentation: float = Input(
        0.0, min=0.0, max=1.0, step=0.001,
        description="Noise added to the low-res image (level round(350·a)); 0 keeps closest")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning, Conditioning, Latent]:
        import torch

        from nodes.diffusion.sd_upscale import X4Upscale, low_res_pixels, with_upscale
        from nodes.limits import FLOAT32, check_fits, check_image

        check_image(self.images, "images", (1, 3, 4))
        batch, height, width = (int(v) for v in self.images.shape[:3])
        out_w, out_h = round(width * self.scale_ratio), round(height * self.scale_ratio)
        if max(out_w, out_h) > MAX_OUTPUT_SIDE:
            raise ValueError(f"images of {width}x{height} px at scale_ratio {self.scale_ratio} "
                             f"make a {out_w}x{out_h} px output, over {MAX_OUTPUT_SIDE} px a "
                             "side: lower scale_ratio or upscale smaller images (or tiles)")
        # the decoded output is what grows: 3 channels at the output size, per image
        check_fits(batch * 3 * max(out_w, 1) * max(out_h, 1) * FLOAT32, self.images.device,
                   f"{batch} upscaled image(s) of {out_w}x{out_h} px",
                   "lower scale_ratio, or upscale fewer or smaller images (or tiles)")
        images = self.images if self.images.shape[-1] != 1 else self.images.expand(-1, -1, -1, 3)
        pixels, lat_h, lat_w = low_res_pixels(images, self.scale_ratio)
        ext = X4Upscale(pixels, self.noise_augmentation)
        latent = Latent(torch.zeros(batch, 4, lat_h, lat_w, device=self.images.device))
        # one object on both sides: the sampler concatenates it once per pass
        return with_upscale(self.positive, ext), with_upscale(self.negative, ext), latent


NODE_CLASSES = (SD_4XUpscale_Conditioning,)
