"""Latents on disk: ComfyUI's Save Latent and Load Latent, in its ``.latent`` format.

A ``.latent`` file is safetensors (never a pickle): ``latent_tensor`` ``[B, C, h, w]``
and an empty ``latent_format_version_0`` marker; files without the marker are ComfyUI's
first format, whose samples were stored scaled by SD's 0.18215 and are read back
divided by it, as ComfyUI does. The prompt and workflow go into the file's metadata.
Only the samples travel: a noise mask or an inpainting model's extra input does not.
"""

from __future__ import annotations

import json
from typing import Any

from engine import Environment, ExecutionContext, Input, Node, NodeResult, Output
from engine.paths import PathError
from engine.workflow import prompt_to_document
from nodes.diffusion.handles import Latent
from nodes.image import file_sha256
from nodes.output_files import SavesNumberedFiles, save_numbered, split_prefix

SUFFIX = ".latent"
VERSION_KEY = "latent_format_version_0"
#: ComfyUI's first format stored SD 1.x's scaled samples
LEGACY_SCALE = 0.18215
#: a latent file bigger than this is refused before it is read (4 GiB of float32)
MAX_BYTES = 1 << 32


def list_latents(env: Environment) -> list[str]:
    return env.list_files("input", suffixes=(SUFFIX,))


class SaveLatent(SavesNumberedFiles):
    """Save latents to output/ as ``<prefix>_00001_.latent`` (ComfyUI's format), to load
    again with Load Latent (copy it to input/) and go on sampling or decoding later."""

    TYPE = "SaveLatent"
    SUFFIX = SUFFIX
    DISPLAY_NAME = "Save Latent"
    CATEGORY = "_for_testing"
    OUTPUT_NODE = True
    OUTPUTS = ()

    samples: Latent = Input(type="LATENT")
    filename_prefix: str = Input("latents/Steerflow",
                                 description="May contain a subfolder: 'latents/cat'")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        import torch
        from safetensors.torch import save_file

        samples = self.samples.samples
        if samples.dim() != 4 or 0 in samples.shape:
            raise ValueError(f"Save Latent: samples must be [B, C, h, w], got "
                             f"{tuple(samples.shape)}")
        folder, subfolder, stem = split_prefix(ctx.env, "output", self.filename_prefix,
                                               "latents/Steerflow")
        metadata = {"prompt": json.dumps(ctx.prompt),
                    "workflow": json.dumps(prompt_to_document(ctx.prompt))}
        tensors = {"latent_tensor": samples.detach().float().cpu().contiguous(),
                   VERSION_KEY: torch.tensor([])}
        path, _ = save_numbered(folder, stem, SUFFIX,
                                lambda tmp: save_file(tensors, str(tmp),
                                                      metadata=metadata))
        entry = {"filename": path.name, "subfolder": subfolder, "type": "output"}
        return NodeResult((), {"latents": [entry]})


class LoadLatent(Node):
    """Load a ``.latent`` file from input/ (ComfyUI's Save Latent format, either
    version) as LATENT."""

    TYPE = "LoadLatent"
    DISPLAY_NAME = "Load Latent"
    CATEGORY = "_for_testing"
    OUTPUTS = (Output("LATENT"),)

    latent: str = Input(..., choices=list_latents, description="A .latent file in input/")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        try:
            path = env.resolve("input", str(inputs["latent"]))
        except (PathError, KeyError, ValueError):
            return None
        return file_sha256(path) if path.is_file() else None

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        from safetensors import SafetensorError, safe_open

        path = ctx.env.resolve("input", self.latent)
        if not path.is_file():
            raise FileNotFoundError(f"latent {self.latent!r} not found in the input folder")
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"{self.latent!r} is larger than {MAX_BYTES >> 30} GiB")
        try:
            with safe_open(str(path), "pt") as fh:
                keys = set(fh.keys())
                if "latent_tensor" not in keys:
                    raise ValueError(f"{self.latent!r} holds no 'latent_tensor': not a "
                                     "latent saved by Save Latent")
                samples = fh.get_tensor("latent_tensor").float()
        except SafetensorError as exc:
            raise ValueError(f"{self.latent!r} is not a safetensors latent file: {exc}"
                             ) from exc
        if samples.dim() != 4 or 0 in samples.shape:
            raise ValueError(f"{self.latent!r} holds a tensor of shape "
                             f"{tuple(samples.shape)}, not latents [B, C, h, w]")
        if not bool(samples.isfinite().all()):
            raise ValueError(f"{self.latent!r} holds NaN or infinite values")
        if VERSION_KEY not in keys:  # ComfyUI's first format: samples stored scaled
            samples = samples / LEGACY_SCALE
        return (Latent(samples.to(ctx.device)),)


NODE_CLASSES = (SaveLatent, LoadLatent)
