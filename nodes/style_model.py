"""Style models: ComfyUI's Load Style Model (StyleModelLoader) and Apply Style Model
(StyleModelApply) for the T2I-Adapter style model of SD 1.x (TencentARC
``t2iadapter_style_sd14v1``): a reference image's CLIP features become 8 extra prompt
tokens. FLUX Redux files are recognised and refused (Steerflow runs no FLUX)."""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Conditioning
from nodes.models import path_fingerprint, pickle_problem

STYLE_MODEL_SUFFIXES = (".safetensors", ".sft", ".pt", ".pth", ".ckpt", ".bin")
FOLDER = "style_models"


def list_style_models(env: Environment) -> list[str]:
    return env.list_files("models", FOLDER, suffixes=STYLE_MODEL_SUFFIXES)


class StyleModelLoader(Node):
    """Load a style model from models/style_models: the T2I-Adapter style model for SD 1.x
    (``t2iadapter_style_sd14v1``; its original ``.pth`` loads only with --allow-pickle,
    so prefer a ``.safetensors`` copy). Use it with Apply Style Model and a CLIP ViT-L/14
    vision model (Load CLIP Vision). FLUX Redux models are refused with a message.
    """

    TYPE = "StyleModelLoader"
    DISPLAY_NAME = "Load Style Model"
    CATEGORY = "loaders"
    OUTPUTS = (Output("STYLE_MODEL"),)

    style_model_name: str = Input(..., choices=list_style_models,
                                  description="A file in models/style_models")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        name = inputs.get("style_model_name")
        if not isinstance(name, str):
            return None
        try:
            path = env.resolve("models", FOLDER, name)
        except (KeyError, ValueError):
            return None
        return path_fingerprint(path) if path.is_file() else None

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, "style_model_name", "models", FOLDER)

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        from nodes.diffusion.style_adapter import load_style_model
        from nodes.models import model_file

        path = model_file(ctx, FOLDER, self.style_model_name, "style model")
        return (load_style_model(path, allow_pickle=ctx.env.allow_pickle, device=ctx.device,
                                 name=self.style_model_name),)


class StyleModelApply(Node):
    """Add a reference image's style to a prompt: the style model turns the image's CLIP
    features (CLIP Vision Encode with CLIP ViT-L/14) into 8 tokens appended to every
    entry of the conditioning (77 + 8 tokens per image; a batch of images adds 8 each).

    Wire it on the positive prompt only. ``strength_type`` "multiply" scales the style
    tokens by ``strength`` (1: as trained; 0 leaves zero tokens that still take some
    attention); "attn_bias" keeps the tokens and weighs their attention instead (a
    ``log(strength)`` bias on their keys, in every cross-attention of the UNet: 0 turns
    them off exactly, above 1 they dominate the prompt). Strong styles often need
    strengths below 1 or a short prompt. Cost: one small transformer pass per image; the
    sampler then attends to the extra tokens (its cross-attention runs in the explicit
    attention processor). For SD 1.x models only (768-wide prompts).
    """

    TYPE = "StyleModelApply"
    DISPLAY_NAME = "Apply Style Model"
    CATEGORY = "conditioning/style_model"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning: Conditioning = Input(type="CONDITIONING")
    style_model: Any = Input(type="STYLE_MODEL")
    clip_vision_output: Any = Input(type="CLIP_VISION_OUTPUT",
                                    description="CLIP Vision Encode of the style image")
    strength: float = Input(1.0, min=0.0, max=10.0, step=0.001,
                            description="How strongly the style tokens act")
    strength_type: str = Input("multiply", choices=("multiply", "attn_bias"),
                               description="multiply: scale the tokens; attn_bias: weigh "
                                           "their attention by strength")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        from nodes.diffusion.style_adapter import StyleModel, apply_style

        if not isinstance(self.style_model, StyleModel):
            raise ValueError("style_model must come from Load Style Model")
        if not self.conditioning.entries:
            raise ValueError("conditioning is empty: link a prompt's conditioning")
        tokens = self.style_model.get_cond(self.clip_vision_output)
        return (apply_style(self.conditioning, tokens, float(self.strength),
                            self.strength_type),)


NODE_CLASSES = (StyleModelLoader, StyleModelApply)
