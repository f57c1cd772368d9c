"""Upscale models: ComfyUI's Load Upscale Model and Upscale Image (using Model), with its
names, inputs and semantics; the models load through spandrel
(:mod:`nodes.diffusion.upscale_model`)."""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.conditioning import MAX_RESOLUTION
from nodes.diffusion.handles import Tensor
from nodes.models import ModelFileNode

#: what spandrel reads (``.ckpt``/``.bin`` pickles too, like the checkpoint loader)
UPSCALE_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")


def list_upscale_models(env: Environment) -> list[str]:
    return env.list_files("models", "upscale_models", suffixes=UPSCALE_SUFFIXES)


class UpscaleModelLoader(ModelFileNode):
    """Load a super-resolution model (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, Compact/SRVGG,
    SPAN, OmniSR, ... — what spandrel detects) from models/upscale_models, for Upscale
    Image (using Model). The architecture and scale are read from the weights.

    ``.safetensors`` files load as they are; ``.pth``/``.pt`` files are pickles (how most
    upscale models are shared) and load only when pickles are allowed (--allow-pickle),
    then with ``torch.load(weights_only=True)``. LaMa and RestoreFormer models need
    torchvision, which Steerflow's CPU torch lacks: they fail with a message saying so.
    Shipped example: ``steerflow-x2-bilinear.safetensors``, a tiny ESRGAN whose weights
    make it a bilinear x2 (see workflows/upscale_model.json).
    """

    TYPE = "UpscaleModelLoader"
    DISPLAY_NAME = "Load Upscale Model"
    CATEGORY = "loaders"
    OUTPUTS = (Output("UPSCALE_MODEL"),)
    MODEL_FOLDER = "upscale_models"
    FILE_INPUT = "model_name"

    model_name: str = Input(..., choices=list_upscale_models,
                            description="A file in models/upscale_models")

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        from nodes.diffusion.memory import device_budget
        from nodes.diffusion.upscale_model import load_upscale_model

        path = self.model_file(ctx, "upscale model")
        return (load_upscale_model(path, allow_pickle=ctx.env.allow_pickle,
                                   device=ctx.device, budget=device_budget(ctx)),)


class ImageUpscaleWithModel(Node):
    """Upscale images with an upscale model (Load Upscale Model): each side × the model's
    scale (2 or 4 for most), in 512-pixel tiles overlapping by 32 and blended at their
    seams, as ComfyUI; on out-of-memory the tile is halved (down to 128). Progress is
    reported per tile and an interrupt stops between tiles. The result is clamped to
    0..1. Time grows with the pixels (a full-size 4x ESRGAN wants a GPU). Follow with
    Upscale Image (By) at 0.5 for a 2x result from a 4x model.
    """

    TYPE = "ImageUpscaleWithModel"
    DISPLAY_NAME = "Upscale Image (using Model)"
    CATEGORY = "image/upscaling"
    OUTPUTS = (Output("IMAGE"),)

    upscale_model: Any = Input(type="UPSCALE_MODEL")
    image: Tensor = Input(type="IMAGE")

    def execute(self, ctx: ExecutionContext) -> tuple[Tensor]:
        from nodes.diffusion import upscale_model as heavy

        model = self.upscale_model
        if not hasattr(model, "scale") or not hasattr(model, "model"):
            raise ValueError("upscale_model must come from Load Upscale Model")
        from nodes.limits import FLOAT32, check_fits, check_image

        check_image(self.image, "image")
        batch, channels = self.image.shape[0], self.image.shape[-1]
        height, width = (int(s) * int(model.scale) for s in self.image.shape[1:3])
        if height > MAX_RESOLUTION or width > MAX_RESOLUTION:
            raise ValueError(f"the upscaled image would be {width}x{height} px, past the "
                             f"maximum {MAX_RESOLUTION}: downscale the image first")
        check_fits(batch * height * width * channels * FLOAT32, self.image.device,
                   f"{batch} upscaled image(s) of {width}x{height} px",
                   "upscale fewer images at once, or smaller ones")
        return (heavy.upscale_image(model, self.image, ctx.progress, heavy.DEFAULT_TILE,
                                    heavy.DEFAULT_OVERLAP),)


NODE_CLASSES = (UpscaleModelLoader, ImageUpscaleWithModel)
