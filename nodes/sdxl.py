"""SDXL prompt nodes with ComfyUI's names, inputs and widget order.

``CLIPTextEncodeSDXL`` encodes ``text_g`` with OpenCLIP bigG and ``text_l`` with CLIP-L
and adds the size conditioning; ``CLIPTextEncodeSDXLRefiner`` encodes with the
refiner's bigG and adds the aesthetic score. Plain CLIP Text Encode works on SDXL too:
its sizes default to the latent's size x 8 and the refiner's aesthetic score to 6
(positive) or 2.5 (negative), as in ComfyUI and diffusers' SDXL pipelines.
"""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.conditioning import MAX_RESOLUTION
from nodes.diffusion.embeddings import EmbeddingLibrary, prompt_problems
from nodes.diffusion.handles import CondEntry, Conditioning, TextEncoder


def _embeddings_for(env: Environment) -> Any:
    return lambda dim: EmbeddingLibrary(env, dim)


def _require_sdxl(clip: TextEncoder, node: str) -> None:
    if clip.text_encoder_2 is None:
        raise ValueError(f"{node} needs an SDXL checkpoint's CLIP; this one is "
                         f"{clip.family!r}: use CLIP Text Encode")


def _text_problems(inputs: dict[str, Any], env: Environment, *names: str
                   ) -> list[tuple[str | None, str, str]]:
    return [(name, message, severity) for name in names if isinstance(inputs.get(name), str)
            for severity, message in prompt_problems(env, inputs[name])]


class CLIPTextEncodeSDXL(Node):
    """Encode an SDXL prompt: ``text_g`` for OpenCLIP bigG, ``text_l`` for CLIP-L (often
    the same text), with SDXL's size conditioning: ``width``/``height`` the original image
    size the model should imitate, ``crop_w``/``crop_h`` the top-left crop offset,
    ``target_width``/``target_height`` the output size (diffusers' ``original_size``,
    ``crops_coords_top_left`` and ``target_size``). Set them to the image size for
    diffusers' defaults; 4x the image size is ComfyUI's common "sharper" setting."""

    TYPE = "CLIPTextEncodeSDXL"
    DISPLAY_NAME = "CLIP Text Encode (SDXL)"
    CATEGORY = "advanced/conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    clip: TextEncoder = Input(type="CLIP")
    width: int = Input(1024, min=0, max=MAX_RESOLUTION)
    height: int = Input(1024, min=0, max=MAX_RESOLUTION)
    crop_w: int = Input(0, min=0, max=MAX_RESOLUTION)
    crop_h: int = Input(0, min=0, max=MAX_RESOLUTION)
    target_width: int = Input(1024, min=0, max=MAX_RESOLUTION)
    target_height: int = Input(1024, min=0, max=MAX_RESOLUTION)
    text_g: str = Input("", multiline=True, dynamic_prompts=True,
                        description="The prompt for OpenCLIP bigG")
    text_l: str = Input("", multiline=True, dynamic_prompts=True,
                        description="The prompt for CLIP-L")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str, str]]:
        return _text_problems(inputs, env, "text_g", "text_l")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        from nodes.conditioning import encode_hooked
        from nodes.diffusion.sdxl import sdxl_conditioning

        _require_sdxl(self.clip, self.TYPE)
        if self.clip.text_encoder is None:
            raise ValueError("CLIPTextEncodeSDXL needs the SDXL base model's CLIP; the "
                             "refiner's has only bigG: use CLIPTextEncodeSDXLRefiner")
        return (encode_hooked(self.clip, lambda clip: sdxl_conditioning(
            clip, self.text_g, self.text_l, _embeddings_for(ctx.env),
            width=self.width, height=self.height, crop_w=self.crop_w, crop_h=self.crop_h,
            target_width=self.target_width, target_height=self.target_height)),)


class CLIPTextEncodeSDXLRefiner(Node):
    """Encode a prompt for the SDXL refiner (its OpenCLIP bigG), with the aesthetic score
    it was trained on (``ascore``: 6 for a positive prompt, 2.5 for a negative one, as
    diffusers) and the original image size (``width``/``height``)."""

    TYPE = "CLIPTextEncodeSDXLRefiner"
    DISPLAY_NAME = "CLIP Text Encode (SDXL Refiner)"
    CATEGORY = "advanced/conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    ascore: float = Input(6.0, min=0.0, max=1000.0, step=0.01)
    width: int = Input(1024, min=0, max=MAX_RESOLUTION)
    height: int = Input(1024, min=0, max=MAX_RESOLUTION)
    text: str = Input("", multiline=True, dynamic_prompts=True)
    clip: TextEncoder = Input(type="CLIP")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str, str]]:
        return _text_problems(inputs, env, "text")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        from nodes.conditioning import encode_hooked
        from nodes.diffusion.sdxl import sdxl_conditioning

        _require_sdxl(self.clip, self.TYPE)
        # ComfyUI allows the base model's CLIP here too (its bigG); so do we.
        return (encode_hooked(self.clip, lambda clip: sdxl_conditioning(
            clip, self.text, None, _embeddings_for(ctx.env), aesthetic_score=self.ascore,
            width=self.width, height=self.height)),)


class ConditioningZeroOut(Node):
    """Zero a conditioning's embeddings and pooled output (ComfyUI's node): diffusers'
    SDXL pipelines use zeros as the negative prompt when none is given
    (``force_zeros_for_empty_prompt``), which this reproduces."""

    TYPE = "ConditioningZeroOut"
    DISPLAY_NAME = "Conditioning Zero Out"
    CATEGORY = "advanced/conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning: Conditioning = Input(type="CONDITIONING")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        import torch

        entries = []
        for entry in self.conditioning.entries:
            options = dict(entry.options)
            if options.get("pooled_output") is not None:
                options["pooled_output"] = torch.zeros_like(options["pooled_output"])
            entries.append(CondEntry(torch.zeros_like(entry.embeds), options))
        return (Conditioning(tuple(entries)),)


NODE_CLASSES = (CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner, ConditioningZeroOut)
