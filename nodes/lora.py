"""LoRA loader nodes: attach LoRA weight patches to MODEL and CLIP (never changing the cache)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import DiffusionModel, TextEncoder
from nodes.diffusion.lora import LORA_SUFFIXES, LoraFile, load_lora
from nodes.models import path_fingerprint, pickle_problem

log = logging.getLogger(__name__)


def list_loras(env: Environment) -> list[str]:
    return env.list_files("models", "loras", suffixes=LORA_SUFFIXES)


def _lora_fingerprint(inputs: dict[str, Any], env: Environment) -> Any:
    name = inputs.get("lora_name")
    if not isinstance(name, str):
        return None
    try:
        path = env.resolve("models", "loras", name)
    except ValueError:
        return None
    return path_fingerprint(path) if path.is_file() else None


def _read(ctx: ExecutionContext, name: str) -> LoraFile:
    path = ctx.env.resolve("models", "loras", name)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA {name!r} not found in models/loras")
    return load_lora(path, allow_pickle=ctx.env.allow_pickle)


def _patch_model(model: DiffusionModel, lora: LoraFile, strength: float) -> DiffusionModel:
    patch = lora.patch(model.unet, "unet", strength) if strength != 0 else None
    return replace(model, patches=(*model.patches, patch)) if patch is not None else model


class _LoraFileNode(Node):
    """Shared by the LoRA loaders: the file's identity is part of the cache signature,
    and a pickle file is refused before running unless the user opted in."""

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return _lora_fingerprint(inputs, env)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, "lora_name", "models", "loras")


class LoraLoader(_LoraFileNode):
    """Apply a LoRA to the model and the text encoder.

    Chain several loaders to stack LoRAs. The weights are patched only while the
    sampler or the prompt encoder runs; the cached checkpoint is never changed.
    A LoRA must fit the model entirely (every layer found, every shape right).
    """

    TYPE = "LoraLoader"
    DISPLAY_NAME = "Load LoRA"
    CATEGORY = "loaders"
    OUTPUTS = (Output("MODEL"), Output("CLIP"))

    model: DiffusionModel = Input(type="MODEL")
    clip: TextEncoder = Input(type="CLIP")
    lora_name: str = Input(..., choices=list_loras, description="A file in models/loras")
    strength_model: float = Input(1.0, min=-100.0, max=100.0, step=0.01,
                                  description="Scale of the LoRA's change to the UNet")
    strength_clip: float = Input(1.0, min=-100.0, max=100.0, step=0.01,
                                 description="Scale of the LoRA's change to the text encoder")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel, TextEncoder]:
        if self.strength_model == 0 and self.strength_clip == 0:
            return self.model, self.clip
        lora = _read(ctx, self.lora_name)
        model = _patch_model(self.model, lora, self.strength_model)
        clip = self.clip
        te_patch = (lora.patch(clip.text_encoder, "text_encoder", self.strength_clip)
                    if self.strength_clip != 0 else None)
        if te_patch is not None:
            clip = replace(clip, patches=(*clip.patches, te_patch))
        log.info("LoRA %s: %d UNet and %d text-encoder layers", self.lora_name,
                 len(lora.layers.get("unet", {})), len(lora.layers.get("text_encoder", {})))
        return model, clip


class LoraLoaderModelOnly(_LoraFileNode):
    """Apply a LoRA to the model only (its text-encoder layers, if any, are ignored)."""

    TYPE = "LoraLoaderModelOnly"
    DISPLAY_NAME = "Load LoRA (model only)"
    CATEGORY = "loaders"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    lora_name: str = Input(..., choices=list_loras, description="A file in models/loras")
    strength_model: float = Input(1.0, min=-100.0, max=100.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        if self.strength_model == 0:
            return (self.model,)
        return (_patch_model(self.model, _read(ctx, self.lora_name), self.strength_model),)


NODE_CLASSES = (LoraLoader, LoraLoaderModelOnly)
