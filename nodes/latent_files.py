"""Latents on disk: ComfyUI's Save Latent and Load Latent, in its ``.latent`` format.

A ``.latent`` file is safetensors (never a pickle): ``latent_tensor`` ``[B, C, h, w]``
and an empty ``latent_format_version_0`` marker. It holds the VAE's *raw* latents, as
ComfyUI's LATENT does; Steerflow's LATENT holds them times the VAE's scaling factor
(diffusers' convention), so saving divides by that factor and loading multiplies by it.
The factor comes from the nodes' optional ``vae`` input, else from the latent (VAE
Encode, Empty Latent Image with its vae, a sampler whose model came with its VAE), else
from the file (Steerflow records it), else SD 1.x's 0.18215. Files without the marker
are ComfyUI's first format, which stored SD 1.x's scaled samples (raw × 0.18215).
Files Steerflow wrote before it recorded the factor hold its own scaled samples and load
unchanged. The prompt and workflow go into the file's metadata. Only the samples
travel: a noise mask or an inpainting model's extra input does not.
"""

from __future__ import annotations

import json
from typing import Any

from engine import Environment, ExecutionContext, Input, Node, NodeResult, Output
from engine.paths import PathError
from engine.workflow import DOCUMENT_FORMAT
from nodes.diffusion.handles import Latent, Vae
from nodes.image import file_sha256
from nodes.output_files import SavesNumberedFiles, file_metadata, save_numbered, split_prefix

SUFFIX = ".latent"
VERSION_KEY = "latent_format_version_0"
#: ComfyUI's first format stored SD 1.x's scaled samples
LEGACY_SCALE = 0.18215
#: the factor assumed when neither a VAE, the latent nor the file says (SD 1.x / 2.x)
DEFAULT_SCALE = 0.18215
#: where Steerflow records the factor it divided by
SCALE_KEY = "steerflow_scaling_factor"
#: a latent file bigger than this is refused before it is read (4 GiB of float32)
MAX_BYTES = 1 << 32


def list_latents(env: Environment) -> list[str]:
    return env.list_files("input", suffixes=(SUFFIX,))


class SaveLatent(SavesNumberedFiles):
    """Save latents to output/ as ``<prefix>_00001_.latent`` (ComfyUI's format), to load
    again with Load Latent (copy it to input/) and go on sampling or decoding later, here
    or in ComfyUI.

    The file holds raw VAE latents, as ComfyUI's do. Latents from VAE Encode or from a
    sampler on a checkpoint know their VAE's scaling; for others (an SDXL UNet loaded
    alone, say) link the VAE into ``vae`` so ComfyUI reads the file right.
    """

    TYPE = "SaveLatent"
    SUFFIX = SUFFIX
    DISPLAY_NAME = "Save Latent"
    CATEGORY = "_for_testing"
    OUTPUT_NODE = True
    OUTPUTS = ()

    samples: Latent = Input(type="LATENT")
    filename_prefix: str = Input("latents/Steerflow",
                                 description="May contain a subfolder: 'latents/cat'")
    vae: Vae | None = Input(type="VAE", optional=True,
                            description="The VAE these latents belong to, when they do not "
                            "know it (see the node's help)")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        import torch

        from nodes.diffusion.safetensors_io import save_file

        samples = self.samples.samples
        if samples.dim() != 4 or 0 in samples.shape:
            raise ValueError(f"Save Latent: samples must be [B, C, h, w], got "
                             f"{tuple(samples.shape)}")
        if not bool(samples.isfinite().all()):  # Load Latent would refuse the file
            raise ValueError("Save Latent: the latents hold NaN or infinite values (the "
                             "sampler diverged: lower cfg or check the model)")
        folder, subfolder, stem = split_prefix(ctx.env, "output", self.filename_prefix,
                                               "latents/Steerflow", prompt=ctx.prompt)
        scale = latent_scale(ctx, "Save Latent", self.vae, self.samples.scaling_factor)
        # as the image savers: the prompt, ComfyUI's UI workflow and ours (the client's
        # extra_pnginfo kept)
        metadata = {str(k): json.dumps(v) for k, v in file_metadata(ctx).items()}
        metadata[SCALE_KEY] = repr(scale)
        raw = samples.detach().float().cpu() / scale
        tensors = {"latent_tensor": raw.contiguous(), VERSION_KEY: torch.tensor([])}
        path, _ = save_numbered(folder, stem, SUFFIX,
                                lambda tmp: save_file(tensors, str(tmp),
                                                      metadata=metadata))
        entry = {"filename": path.name, "subfolder": subfolder, "type": "output"}
        return NodeResult((), {"latents": [entry]})


class LoadLatent(Node):
    """Load a ``.latent`` file from input/ (ComfyUI's Save Latent format, either
    version, or Steerflow's) as LATENT.

    The file holds raw VAE latents; loading scales them by the VAE's factor. Files saved
    by Steerflow record it. For files from ComfyUI, link the VAE of the model that made
    them into ``vae`` unless it is SD 1.x / 2.x's (0.18215): SDXL's is 0.13025, the
    built-in model's its own.
    """

    TYPE = "LoadLatent"
    DISPLAY_NAME = "Load Latent"
    CATEGORY = "_for_testing"
    OUTPUTS = (Output("LATENT"),)

    latent: str = Input(..., choices=list_latents, description="A .latent file in input/")
    vae: Vae | None = Input(type="VAE", optional=True,
                            description="The VAE of the model that made the file (ComfyUI "
                            "files; see the node's help)")

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
                metadata = fh.metadata() or {}
        except SafetensorError as exc:
            raise ValueError(f"{self.latent!r} is not a safetensors latent file: {exc}"
                             ) from exc
        if samples.dim() != 4 or 0 in samples.shape:
            raise ValueError(f"{self.latent!r} holds a tensor of shape "
                             f"{tuple(samples.shape)}, not latents [B, C, h, w]")
        if not bool(samples.isfinite().all()):
            raise ValueError(f"{self.latent!r} holds NaN or infinite values")
        if VERSION_KEY in keys and SCALE_KEY not in metadata \
                and _steerflow_document(metadata):
            # written by Steerflow before it recorded the factor: its own scaled latents
            return (Latent(samples.to(ctx.device)),)
        recorded = _recorded_scale(metadata.get(SCALE_KEY))
        scale = latent_scale(ctx, "Load Latent", self.vae, recorded)
        if VERSION_KEY not in keys:  # ComfyUI's first format: raw × 0.18215
            samples = samples / LEGACY_SCALE
        return (Latent((samples * scale).to(ctx.device), scaling_factor=scale),)


def latent_scale(ctx: ExecutionContext, node: str, vae: Vae | None, known: float | None
                 ) -> float:
    """The VAE scaling factor between raw and Steerflow latents: ``vae``'s, else
    ``known``, else SD 1.x's with a warning."""
    if vae is not None:
        return vae.scaling_factor
    if known is not None:
        return known
    ctx.warn(f"{node}: these latents do not say which VAE they belong to; assuming SD "
             f"1.x's scaling factor {DEFAULT_SCALE}. Link the model's VAE into 'vae' if it "
             "is another (SDXL: 0.13025)")
    return DEFAULT_SCALE


def _recorded_scale(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and 1e-4 <= value <= 1e4 else None


def _steerflow_document(metadata: dict[str, str]) -> bool:
    try:
        workflow = json.loads(metadata.get("workflow") or "null")
    except ValueError:
        return False
    return isinstance(workflow, dict) and workflow.get("format") == DOCUMENT_FORMAT


NODE_CLASSES = (SaveLatent, LoadLatent)
