"""Latents on disk: ComfyUI's Save Latent and Load Latent, in its ``.latent`` format.

A ``.latent`` file is safetensors (never a pickle): ``latent_tensor`` ``[B, C, h, w]``
and an empty ``latent_format_version_0`` marker; files without the marker are ComfyUI's
first format, whose samples were stored scaled by SD's 0.18215 and are read back
divided by it, as ComfyUI does. The prompt and workflow go into the file's metadata.
Only the samples travel: a noise mask or an inpainting model's extra input does not.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, NodeResult, Output
from engine.paths import PathError
from engine.workflow import prompt_to_document
from nodes.diffusion.handles import Latent
from nodes.image import file_sha256, glob_escape
from nodes.limits import name_problem

if TYPE_CHECKING:
    from pathlib import Path

SUFFIX = ".latent"
VERSION_KEY = "latent_format_version_0"
#: ComfyUI's first format stored SD 1.x's scaled samples
LEGACY_SCALE = 0.18215
#: a latent file bigger than this is refused before it is read (4 GiB of float32)
MAX_BYTES = 1 << 32


def list_latents(env: Environment) -> list[str]:
    return env.list_files("input", suffixes=(SUFFIX,))


class SaveLatent(Node):
    """Save latents to output/ as ``<prefix>_00001_.latent`` (ComfyUI's format), to load
    again with Load Latent (copy it to input/) and go on sampling or decoding later."""

    TYPE = "SaveLatent"
    DISPLAY_NAME = "Save Latent"
    CATEGORY = "_for_testing"
    OUTPUT_NODE = True
    OUTPUTS = ()

    samples: Latent = Input(type="LATENT")
    filename_prefix: str = Input("latents/Steerflow",
                                 description="May contain a subfolder: 'latents/cat'")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        prefix = str(inputs.get("filename_prefix", "")).strip()
        if problem := name_problem(prefix, len("_00000_.latent") + 8):
            return [("filename_prefix", problem)]
        subfolder = prefix.replace("\\", "/").rpartition("/")[0]
        try:
            env.folder("output", subfolder) if subfolder else None
        except ValueError as exc:
            return [("filename_prefix", str(exc))]
        return []

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        import torch
        from safetensors.torch import save_file

        samples = self.samples.samples
        if samples.dim() != 4 or 0 in samples.shape:
            raise ValueError(f"Save Latent: samples must be [B, C, h, w], got "
                             f"{tuple(samples.shape)}")
        prefix = self.filename_prefix.strip() or "latents/Steerflow"
        subfolder, _, stem = prefix.replace("\\", "/").rpartition("/")
        folder = ctx.env.folder("output", subfolder, create=True) if subfolder \
            else ctx.env.folder("output", create=True)
        metadata = {"prompt": json.dumps(ctx.prompt),
                    "workflow": json.dumps(prompt_to_document(ctx.prompt))}
        tensors = {"latent_tensor": samples.detach().float().cpu().contiguous(),
                   VERSION_KEY: torch.tensor([])}
        tmp = folder / f".{stem}.{secrets.token_hex(4)}.tmp"
        save_file(tensors, str(tmp), metadata=metadata)
        try:
            path = _claim(folder, stem, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        entry = {"filename": path.name, "subfolder": subfolder, "type": "output"}
        return NodeResult((), {"latents": [entry]})


def _claim(folder: Path, stem: str, written: Path) -> Path:
    """Give the finished file the next free ``<stem>_NNNNN_.latent`` name: a hard link
    is atomic and never replaces a file that exists (another save, a user's file)."""
    import re

    counter = re.compile(r"_(\d{5,})_\.latent$")
    number = 1 + max((int(m.group(1)) for p in folder.glob(f"{glob_escape(stem)}_*_.latent")
                      if (m := counter.search(p.name))), default=0)
    while True:
        path = folder / f"{stem}_{number:05d}_{SUFFIX}"
        try:
            os.link(written, path)
            return path
        except FileExistsError:
            number += 1


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
