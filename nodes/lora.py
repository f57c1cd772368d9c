"""LoRA loader nodes: attach LoRA weight patches to MODEL and CLIP (never changing the cache)."""

from __future__ import annotations

import logging
from dataclasses import replace

from engine import Environment, ExecutionContext, Input, Output
from nodes.diffusion.handles import DiffusionModel, TextEncoder
from nodes.diffusion.lora import LORA_SUFFIXES, LoraFile, load_lora
from nodes.models import ModelFileNode, model_file

log = logging.getLogger(__name__)


def list_loras(env: Environment) -> list[str]:
    return env.list_files("models", "loras", suffixes=LORA_SUFFIXES)


def _read(ctx: ExecutionContext, name: str) -> LoraFile:
    path = model_file(ctx, "loras", name, "LoRA")
    return load_lora(path, allow_pickle=ctx.env.allow_pickle)


def _patch_model(model: DiffusionModel, lora: LoraFile, strength: float) -> DiffusionModel:
    patch = lora.patch(model.unet, "unet", strength) if strength != 0 else None
    return replace(model, patches=(*model.patches, patch)) if patch is not None else model


class _LoraFileNode(ModelFileNode):
    """Shared by the LoRA loaders: the LoRA file named by ``lora_name``."""

    MODEL_FOLDER = "loras"
    FILE_INPUT = "lora_name"


class LoraLoader(_LoraFileNode):
    """Apply a LoRA to the model and the text encoder.

    Chain several loaders to stack LoRAs. The weights are patched only while the
    sampler or the prompt encoder runs; the cached checkpoint is never changed.
    A LoRA must fit the model entirely (every layer found, every shape right).
    LoRA, LoCon, LyCORIS (LoHa, LoKr) and DoRA files load; a DoRA at a strength other
    than 1 follows diffusers (the magnitude rescales the weight with the LoRA at that
    strength), which differs from ComfyUI's blend between the base and the full DoRA.
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
        clip = self.clip if self.strength_clip == 0 else _patch_clip(self.clip, lora,
                                                                     self.strength_clip)
        log.info("LoRA %s: %d UNet and %d + %d text-encoder layers", self.lora_name,
                 len(lora.layers.get("unet", {})), len(lora.layers.get("text_encoder", {})),
                 len(lora.layers.get("text_encoder_2", {})))
        return model, clip


def _patch_clip(clip: TextEncoder, lora: LoraFile, strength: float) -> TextEncoder:
    """Patch CLIP-L (``patches``) and SDXL's bigG (``patches_2``) with their layers."""
    from nodes.diffusion.handles import is_absent
    from nodes.diffusion.lora import LoraMismatchError

    if is_absent(clip.text_encoder):
        return clip  # a checkpoint's missing CLIP passes on, as ComfyUI's None does
    out = clip
    for component, field in (("text_encoder", "patches"), ("text_encoder_2", "patches_2")):
        encoder = getattr(clip, component)
        if not lora.layers.get(component):
            continue
        if encoder is None:
            which = "CLIP-L" if component == "text_encoder" else "OpenCLIP bigG (SDXL)"
            raise LoraMismatchError(
                f"LoRA {lora.name!r} has {which} text-encoder layers ({component}) but this "
                f"{clip.family!r} "
                "CLIP has no such encoder: use a LoRA made for this model, or "
                "LoraLoaderModelOnly")
        patch = lora.patch(encoder, component, strength)
        if patch is not None:
            out = replace(out, **{field: (*getattr(out, field), patch)})
    return out


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


def _bypass_model(model: DiffusionModel, lora: LoraFile, strength: float,
                  name: str) -> DiffusionModel:
    """``model`` with the LoRA computed beside each layer (one hook on every row)."""
    from nodes.diffusion.hook_groups import WeightHook
    from nodes.diffusion.hooks import HookedWeights

    hook = WeightHook(name, strength, 0.0, lora=lora)
    lora.patch(model.unet, "unet", 1.0)  # a misfit is an error here, not in the sampler
    return model.with_extension(HookedWeights([hook], every_row=True))


class LoraLoaderBypass(LoraLoader):
    """Load LoRA in bypass mode: the UNet's weights are never changed; each layer adds
    the LoRA's ``up(down(x))`` to its output for the sampling run (the text encoder is
    patched as Load LoRA does). The same images as Load LoRA up to rounding; use it when
    weights must stay untouched, e.g. while another node trains or reads them. ComfyUI's
    node (for debugging there)."""

    TYPE = "LoraLoaderBypass"
    DISPLAY_NAME = "Load LoRA (Bypass) (For debugging)"

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel, TextEncoder]:
        if self.strength_model == 0 and self.strength_clip == 0:
            return self.model, self.clip
        lora = _read(ctx, self.lora_name)
        model = self.model if self.strength_model == 0 else _bypass_model(
            self.model, lora, self.strength_model, self.lora_name)
        clip = self.clip if self.strength_clip == 0 else _patch_clip(self.clip, lora,
                                                                     self.strength_clip)
        return model, clip


class LoraLoaderBypassModelOnly(LoraLoaderModelOnly):
    """Load LoRA (Bypass) for the model only."""

    TYPE = "LoraLoaderBypassModelOnly"
    DISPLAY_NAME = "Load LoRA (Bypass, Model Only) (for debugging)"

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        if self.strength_model == 0:
            return (self.model,)
        return (_bypass_model(self.model, _read(ctx, self.lora_name), self.strength_model,
                              self.lora_name),)


NODE_CLASSES = (LoraLoader, LoraLoaderModelOnly, LoraLoaderBypass, LoraLoaderBypassModelOnly)
