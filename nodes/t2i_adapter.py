"""T2I-Adapter node: steer sampling with an adapter and a control image (diffusers' settings)."""

from __future__ import annotations

from typing import Any

from engine import ExecutionContext, Input, Node, Output
from nodes.controlnet import _with_extension
from nodes.diffusion.handles import Conditioning, Tensor


class T2IAdapterApply(Node):
    """T2I-Adapter (Mou et al. 2023): a small network that turns a control image (edges,
    depth, a sketch, shape masks) into features added inside the UNet's down blocks, so
    the image follows the control's layout. Reproduces diffusers'
    StableDiffusionAdapterPipeline.

    Wiring: load the adapter with Load ControlNet Model (adapters live in
    models/controlnet, as in ComfyUI; full and light adapters, diffusers folders or
    single files), give it the control image at the generation size (another size is
    resized with Lanczos, as the pipeline does) and put this node between the prompts
    and the sampler. Chain several to combine adapters: their features add up, weighted
    by their scales (diffusers' MultiAdapter); ControlNets, SEGA, SAG, LoRA and masks
    work in the same run.

    ``adapter_conditioning_scale`` multiplies the features: 1.0 is the pipeline's
    default, 0.5-1.0 follows the control more loosely, 0 turns it off.
    ``adapter_conditioning_factor`` is the fraction of the steps it acts on, from the
    first (diffusers' SDXL rule ``i < int(steps * factor)``): the early steps fix the
    layout, so 0.5-0.8 keeps the layout and leaves the details to the prompt. Cost: one
    adapter pass per run, no extra UNet pass, so a step costs what plain sampling costs.
    The default model ships no adapter yet (training/train_t2i_adapter.py trains one).
    """

    TYPE = "T2IAdapterApply"
    DISPLAY_NAME = "Apply T2I-Adapter"
    SEARCH_ALIASES = ("T2I", "t2i adapter")
    CATEGORY = "conditioning/controlnet"
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    positive: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    adapter: Any = Input(type="CONTROL_NET",
                         description="A T2I-Adapter from Load ControlNet Model")
    image: Tensor = Input(type="IMAGE", description="The control image, 0..1")
    adapter_conditioning_scale: float = Input(1.0, min=0.0, max=10.0, step=0.01,
                                              description="Scale of the adapter's features")
    adapter_conditioning_factor: float = Input(
        1.0, min=0.0, max=1.0, step=0.01,
        description="Fraction of the steps (from the first) the adapter acts on")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning, Conditioning]:
        from nodes.diffusion.t2i_adapter import Adapter, T2IAdapterFeatures

        if not isinstance(self.adapter, Adapter):
            name = getattr(self.adapter, "name", "") or "the model"
            raise ValueError(f"{name} is a ControlNet, not a T2I-Adapter: apply it with "
                             "Apply ControlNet, or load an adapter here")
        if self.adapter_conditioning_scale == 0.0 or self.adapter_conditioning_factor == 0.0:
            return self.positive, self.negative
        ext = T2IAdapterFeatures(self.adapter, self.image, self.adapter_conditioning_scale,
                                 self.adapter_conditioning_factor)
        # One object on both sides: the sampler runs it once, over the whole CFG batch.
        return _with_extension(self.positive, ext), _with_extension(self.negative, ext)


NODE_CLASSES = (T2IAdapterApply,)
