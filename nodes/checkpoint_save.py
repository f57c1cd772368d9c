"""Checkpoint Save: ComfyUI's node that writes MODEL + CLIP + VAE as one single-file
checkpoint — what a merge (Model Merge Simple / Blocks / Add / Subtract) or a LoRA
baked in (Load LoRA) becomes, to load later with Load Checkpoint.

The file is safetensors in the original (LDM) layout that other tools read, with the
diffusers configs in its metadata (as the training nodes' checkpoints), so Load
Checkpoint reads it back bit for bit; every LoRA or merge patch on the handles is
applied to the saved weights. What is not a weight is not saved: techniques attached
to the MODEL for sampling (SAG, FreeU, ...) and textual-inversion words on the CLIP
(save those with Train Textual Inversion's embedding file) — the latter is refused.
A CLIP or VAE that its checkpoint did not hold (Load Checkpoint's absent outputs) is left
out of the file, as ComfyUI saves it; loading the file gives those outputs as absent again.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext

from engine import ExecutionContext, Input, NodeResult
from engine.workflow import prompt_to_document
from nodes.diffusion.handles import DiffusionModel, TextEncoder, Vae, is_absent
from nodes.output_files import SavesNumberedFiles, api_prompt, save_numbered, split_prefix

logger = logging.getLogger(__name__)
SUFFIX = ".safetensors"


class CheckpointSave(SavesNumberedFiles):
    """Save MODEL, CLIP and VAE as ``output/<prefix>_00001_.safetensors``, one
    single-file checkpoint with every LoRA and merge applied to its weights (move it to
    models/checkpoints/ to load it with Load Checkpoint). SD 1.x and 2.x models."""

    TYPE = "CheckpointSave"
    SUFFIX = SUFFIX
    DISPLAY_NAME = "Save Checkpoint"
    CATEGORY = "advanced/model_merging"
    OUTPUT_NODE = True
    OUTPUTS = ()

    model: DiffusionModel = Input(type="MODEL")
    clip: TextEncoder = Input(type="CLIP")
    vae: Vae = Input(type="VAE")
    filename_prefix: str = Input("checkpoints/Steerflow",
                                 description="May contain a subfolder: 'checkpoints/merge'")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        from nodes.diffusion.lora import patched
        from nodes.diffusion.safetensors_io import save_file
        from nodes.diffusion.train_dreambooth import checkpoint_file
        from nodes.diffusion.train_textual_inversion import base_tokenizer

        if self.model.family not in ("sd1", "sd2") or self.clip.family not in ("sd1", "sd2"):
            raise ValueError(f"Save Checkpoint writes SD 1.x and 2.x checkpoints; this model "
                             f"is {self.model.family}: save it as a diffusers folder instead")
        if self.clip.tokenizer is not None and base_tokenizer(self.clip.tokenizer)[1]:
            raise ValueError("this CLIP knows words added by textual inversion, which a "
                             "checkpoint file cannot hold: save Load Checkpoint's CLIP and "
                             "keep the embedding file for the words")
        if self.model.extensions:
            logger.warning("Save Checkpoint: the techniques attached to this MODEL for "
                           "sampling are not weights and are not saved")
        info = {"saved_by": "CheckpointSave",
                "workflow": json.dumps(prompt_to_document(ctx.prompt))}
        # A CLIP or VAE its checkpoint lacked is left out of the file, as ComfyUI does
        text_encoder = None if is_absent(self.clip.text_encoder) else self.clip.text_encoder
        vae = None if is_absent(self.vae.vae) else self.vae.vae
        with patched(self.model.unet, self.model.patches), \
                patched(text_encoder, self.clip.patches) if text_encoder is not None \
                else nullcontext():
            tensors, metadata = checkpoint_file(
                self.model.unet, vae, text_encoder, self.model.scheduler_config,
                self.model.family, info, latent_scale=self.model.latent_scale)
        metadata["prompt"] = json.dumps(api_prompt(ctx))
        folder, subfolder, stem = split_prefix(ctx.env, "output", self.filename_prefix,
                                               "checkpoints/Steerflow", prompt=ctx.prompt)
        path, _ = save_numbered(folder, stem, SUFFIX,
                                lambda tmp: save_file(tensors, str(tmp),
                                                      metadata=metadata))
        entry = {"filename": path.name, "subfolder": subfolder, "type": "output"}
        return NodeResult((), {"checkpoints": [entry]})


NODE_CLASSES = (CheckpointSave,)
