"""Load Hypernetwork: ComfyUI's HypernetworkLoader (its id, inputs and semantics)."""

from __future__ import annotations

from engine import Environment, ExecutionContext, Input, Output
from nodes.diffusion.handles import DiffusionModel
from nodes.models import ModelFileNode

HYPERNETWORK_SUFFIXES = (".safetensors", ".sft", ".pt", ".pth", ".ckpt", ".bin")


def list_hypernetworks(env: Environment) -> list[str]:
    return env.list_files("models", "hypernetworks", suffixes=HYPERNETWORK_SUFFIXES)


class HypernetworkLoader(ModelFileNode):
    """Apply a hypernetwork (NovelAI / AUTOMATIC1111 style, SD 1.x era) to the model: small
    MLPs that reshape what every attention layer of a matching width reads as keys and
    values (the text context in cross-attention, the image features in self-attention):
    k_in = c + strength · MLP_k(c), the same for v.

    ``strength`` 1 is the file as trained; 0 leaves the model unchanged; 0.3 to 0.7 tones a
    strong style down; negative values push away from it. Chain loaders to stack
    hypernetworks. Files from models/hypernetworks: ``.safetensors`` (the same keys
    flattened: ``768.0.linear.0.weight``, options in the metadata), or the usual ``.pt``
    pickles only when pickles are allowed (--allow-pickle). Cost: one small MLP pair per
    attention call, and the hooked layers use the classic attention math instead of SDPA.
    """

    TYPE = "HypernetworkLoader"
    DISPLAY_NAME = "Load Hypernetwork"
    CATEGORY = "loaders"
    OUTPUTS = (Output("MODEL"),)
    MODEL_FOLDER = "hypernetworks"
    FILE_INPUT = "hypernetwork_name"

    model: DiffusionModel = Input(type="MODEL")
    hypernetwork_name: str = Input(..., choices=list_hypernetworks,
                                   description="A file in models/hypernetworks")
    strength: float = Input(1.0, min=-10.0, max=10.0, step=0.01,
                            description="Scale of the MLPs' change (0: off)")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.hypernetwork import (
            HypernetworkExtension,
            check_fits,
            load_hypernetwork,
        )

        path = self.model_file(ctx, "hypernetwork")
        hypernetwork = load_hypernetwork(path, allow_pickle=ctx.env.allow_pickle)
        check_fits(hypernetwork, self.model.unet)
        if self.strength == 0:
            return (self.model,)  # k + 0·MLP(k) = k: skip the hooks (and their slower math)
        return (self.model.with_extension(HypernetworkExtension(hypernetwork, self.strength)),)


NODE_CLASSES = (HypernetworkLoader,)
