"""Load Style Model: ComfyUI's StyleModelLoader definition (id, input, output type), so
workflows that use it validate and the canvas's model browser lists models/style_models.
Applying a style model is not implemented yet: loading says so."""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.models import pickle_problem

STYLE_MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")


def list_style_models(env: Environment) -> list[str]:
    return env.list_files("models", "style_models", suffixes=STYLE_MODEL_SUFFIXES)


class StyleModelLoader(Node):
    """Load a style model (T2I-Adapter style, FLUX Redux) from models/style_models.

    Not supported yet: the node exists so workflows that use it validate and show in the
    canvas, but running it fails with a message saying so (ComfyUI's Apply Style Model
    has no counterpart here yet).
    """

    TYPE = "StyleModelLoader"
    DISPLAY_NAME = "Load Style Model"
    CATEGORY = "loaders"
    OUTPUTS = (Output("STYLE_MODEL"),)

    style_model_name: str = Input(..., choices=list_style_models,
                                  description="A file in models/style_models")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, "style_model_name", "models", "style_models")

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        raise NotImplementedError(
            f"style models (T2I style adapter / Redux) are not supported yet; "
            f"{self.style_model_name!r} cannot be used. Remove Load Style Model and Apply "
            "Style Model from the workflow")


NODE_CLASSES = (StyleModelLoader,)
