"""Save one component (ComfyUI's ModelSave, VAESave, CLIPSave): a merged or LoRA-baked
UNet, a VAE, or text encoders as their own .safetensors files under output/, readable by
Load Diffusion Model, Load VAE and Load CLIP (move them to models/diffusion_models,
models/vae, models/text_encoders).

Each file is in the layout ComfyUI writes (the UNet with ``model.diffusion_model.``, the
VAE in the original layout without prefix, each text encoder in transformers' layout),
with its config in the metadata, so it loads back bit for bit at any size. Every LoRA or
merge patch on the handle is applied to the saved weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from engine import ExecutionContext, Input, NodeResult
from nodes.diffusion.handles import DiffusionModel, TextEncoder, Vae
from nodes.output_files import SavesNumberedFiles, api_prompt, save_numbered, split_prefix

SUFFIX = ".safetensors"
CATEGORY = "advanced/model_merging"


def _save(ctx: ExecutionContext, prefix: str, default: str,
          write: Callable[[Any], None], suffix: str = SUFFIX) -> dict[str, str]:
    folder, subfolder, stem = split_prefix(ctx.env, "output", prefix, default,
                                           prompt=ctx.prompt)
    path, _ = save_numbered(folder, stem, suffix, write)
    return {"filename": path.name, "subfolder": subfolder, "type": "output"}


def _metadata(ctx: ExecutionContext, configs: dict[str, Any]) -> dict[str, str]:
    from nodes.diffusion.original_layout import CONFIG_METADATA_KEY

    return {"format": "pt", CONFIG_METADATA_KEY: json.dumps(configs, sort_keys=True),
            "prompt": json.dumps(api_prompt(ctx))}


def _config(module: Any) -> dict[str, Any]:
    from nodes.diffusion.original_layout import _config_dict

    return _config_dict(module)


class ModelSave(SavesNumberedFiles):
    """Save a MODEL's UNet (with its LoRAs and merges applied) as
    ``output/<prefix>_00001_.safetensors``, for Load Diffusion Model. Any family."""

    TYPE = "ModelSave"
    SUFFIX = SUFFIX
    DISPLAY_NAME = "ModelSave"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    OUTPUTS = ()

    model: DiffusionModel = Input(type="MODEL")
    filename_prefix: str = Input("diffusion_models/Steerflow")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        from nodes.diffusion.lora import patched
        from nodes.diffusion.original_layout import unet_to_original
        from nodes.diffusion.safetensors_io import save_file

        unet = self.model.unet
        config = _config(unet)
        scheduler = json.loads(json.dumps(dict(self.model.scheduler_config), default=list))
        scheduler.pop("_use_default_values", None)
        with patched(unet, self.model.patches):
            tensors = {k: v.detach().contiguous().clone()
                       for k, v in unet_to_original(unet.state_dict(), config).items()}
        metadata = _metadata(ctx, {"unet": config, "scheduler": scheduler,
                                   "family": self.model.family})
        entry = _save(ctx, self.filename_prefix, "diffusion_models/Steerflow",
                      lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return NodeResult((), {"models": [entry]})


class VAESave(SavesNumberedFiles):
    """Save a VAE as ``output/<prefix>_00001_.safetensors``, for Load VAE."""

    TYPE = "VAESave"
    SUFFIX = SUFFIX
    DISPLAY_NAME = "VAESave"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    OUTPUTS = ()

    vae: Vae = Input(type="VAE")
    filename_prefix: str = Input("vae/Steerflow_vae")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        from nodes.diffusion.original_layout import VAE_PREFIX, vae_to_original
        from nodes.diffusion.safetensors_io import save_file

        vae = self.vae.vae
        config = _config(vae)
        tensors = {k.removeprefix(VAE_PREFIX): v.detach().contiguous().clone()
                   for k, v in vae_to_original(vae.state_dict(), config).items()}
        metadata = _metadata(ctx, {"vae": config})
        entry = _save(ctx, self.filename_prefix, "vae/Steerflow_vae",
                      lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return NodeResult((), {"vaes": [entry]})


class CLIPSave(SavesNumberedFiles):
    """Save a CLIP's text encoders (with their LoRAs applied), one file each:
    ``output/<prefix>_00001__clip_l.safetensors`` (and ``_clip_g`` / ``_clip_h``), for
    Load CLIP or DualCLIPLoader. Words added by textual inversion are not weights of
    the encoder: keep their embedding file."""

    TYPE = "CLIPSave"
    SUFFIX = SUFFIX
    DISPLAY_NAME = "CLIPSave"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    OUTPUTS = ()

    clip: TextEncoder = Input(type="CLIP")
    filename_prefix: str = Input("clip/Steerflow")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        from nodes.diffusion.lora import patched
        from nodes.diffusion.text_encoder_loading import save_text_encoder
        from nodes.diffusion.train_textual_inversion import base_tokenizer

        clip = self.clip
        for tokenizer in (clip.tokenizer, clip.tokenizer_2):
            if tokenizer is not None and base_tokenizer(tokenizer)[1]:
                raise ValueError("this CLIP knows words added by textual inversion, which an "
                                 "encoder file cannot hold: save Load Checkpoint's CLIP and "
                                 "keep the embedding file for the words")
        parts = []
        if clip.text_encoder is not None:
            kind = "clip_h" if clip.family == "sd2" else "clip_l"
            parts.append((kind, clip.text_encoder, clip.patches))
        if clip.text_encoder_2 is not None:
            parts.append(("clip_g", clip.text_encoder_2, clip.patches_2))
        entries = []
        for kind, encoder, patches in parts:
            with patched(encoder, patches):
                entries.append(_save(
                    ctx, self.filename_prefix, "clip/Steerflow",
                    lambda tmp, e=encoder, k=kind: save_text_encoder(tmp, e, k),
                    suffix=f"_{kind}{SUFFIX}"))
        return NodeResult((), {"clips": entries})


NODE_CLASSES = (ModelSave, VAESave, CLIPSave)
