"""Depth2Image: a depth estimator loader, depth estimation, and the depth-model conditioning."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Conditioning, Latent, Tensor, Vae
from nodes.models import file_fingerprint

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.depth2img import DepthEstimator

FOLDER = "depth"
#: transformers ``model_type``s of estimators that predict relative inverse depth
ESTIMATOR_TYPES = ("dpt", "depth_anything")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def list_depth_estimators(env: Environment) -> list[str]:
    """Folders under models/depth holding a transformers model (config.json) or a
    diffusers depth-to-image pipeline (model_index.json, its depth_estimator/ is used)."""
    return env.list_files("models", FOLDER, dirs_with=("config.json", "model_index.json"),
                          dirs_only=True)


def estimator_folders(path: Path) -> tuple[Path, Path]:
    """The model and image-processor folders of an estimator: a transformers folder, or a
    diffusers depth-to-image pipeline folder (its depth_estimator/, feature_extractor/)."""
    if (path / "model_index.json").is_file() and not (path / "config.json").is_file():
        return path / "depth_estimator", path / "feature_extractor"
    return path, path


def estimator_problem(path: Path) -> str | None:
    """Why the folder ``path`` cannot be loaded as a depth estimator, or None (file checks
    only: nothing heavy is imported, so validation can run it)."""
    model_dir, processor_dir = estimator_folders(path)
    name = path.name
    if not (model_dir / "config.json").is_file():
        if model_dir != path:
            return f"{name} is a diffusers pipeline without a depth_estimator/ folder"
        return f"{name} is not a depth estimator folder (no config.json)"
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"cannot read {name}'s config.json: {exc}"
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in ESTIMATOR_TYPES:
        return (f"{name} is not a supported depth estimator (model_type {model_type!r}); use a "
                "DPT (e.g. Intel/dpt-hybrid-midas, dpt-large) or a Depth Anything folder")
    if config.get("depth_estimation_type") == "metric":
        return (f"{name} predicts metric depth (far = large); Depth2Image needs relative "
                "inverse depth (near = large): use a relative Depth Anything")
    if not any(model_dir.glob("*.safetensors")):
        if any(p.suffix.lower() in PICKLE_SUFFIXES for p in model_dir.iterdir()):
            return (f"{name} has only pickle-based weights, which can run arbitrary code when "
                    "loaded; depth estimators load from .safetensors only: convert them")
        return f"{name} has no .safetensors weights"
    if not (processor_dir / "preprocessor_config.json").is_file():
        return (f"{name} has no preprocessor_config.json (its image processor's settings); "
                "copy it from the model's release next to config.json")
    return None


class DepthEstimatorLoader(Node):
    """Load a monocular depth estimator from models/depth: a transformers DPT folder
    (Intel/dpt-large, Intel/dpt-hybrid-midas — what stable-diffusion-2-depth ships) or a
    relative Depth Anything (v1 or v2) folder, with config.json, .safetensors weights and
    preprocessor_config.json; a stable-diffusion-2-depth diffusers folder copied there
    works too (its depth_estimator/ and feature_extractor/). Local files only: nothing
    is downloaded, and pickle weights (.bin) are refused — convert them to safetensors.
    """

    TYPE = "DepthEstimatorLoader"
    DISPLAY_NAME = "Load Depth Estimator"
    CATEGORY = "loaders"
    OUTPUTS = (Output("DEPTH_ESTIMATOR"),)

    estimator_name: str = Input(..., choices=list_depth_estimators,
                                description="A DPT or Depth Anything folder in models/depth")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return file_fingerprint(env, inputs.get("estimator_name"), "models", FOLDER)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        name = inputs.get("estimator_name")
        if not isinstance(name, str):
            return []
        try:
            path = env.resolve("models", FOLDER, name)
        except (KeyError, ValueError):
            return []  # reported by the choices check
        problem = estimator_problem(path) if path.is_dir() else None
        return [("estimator_name", problem)] if problem else []

    def execute(self, ctx: ExecutionContext) -> tuple[DepthEstimator]:
        from nodes.diffusion.depth2img import load_depth_estimator
        from nodes.diffusion.memory import device_budget

        path = ctx.env.resolve("models", FOLDER, self.estimator_name)
        if not path.is_dir():
            raise FileNotFoundError(
                f"depth estimator {self.estimator_name!r} not found in models/{FOLDER}")
        problem = estimator_problem(path)
        if problem:
            raise ValueError(problem)
        model_dir, processor_dir = estimator_folders(path)
        return (load_depth_estimator(model_dir, processor_dir, device=ctx.device,
                                     name=self.estimator_name, budget=device_budget(ctx)),)


class EstimateDepth(Node):
    """Estimate a depth map from an image with a depth estimator (DPT, Depth Anything).

    Output convention (ComfyUI's depth preprocessors'): a grey IMAGE at the input's
    size, near = bright, stretched to 0..1 per image (relative depth has no unit),
    and the same map as a MASK. Feed the IMAGE to Depth2Image Conditioning's
    ``depth`` or to a depth ControlNet / T2I-Adapter; edit it first to change the
    layout. The estimator sees the image as 8-bit RGB, resized by its own image
    processor (e.g. 384x384 for DPT). Cost: one estimator pass per image.
    """

    TYPE = "EstimateDepth"
    DISPLAY_NAME = "Estimate Depth"
    CATEGORY = "image/preprocessors"
    OUTPUTS = (Output("IMAGE", "depth"), Output("MASK", "depth_mask"))

    image: Tensor = Input(type="IMAGE")
    depth_estimator: Any = Input(type="DEPTH_ESTIMATOR")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor, torch.Tensor]:
        from nodes.diffusion.depth2img import depth_picture

        estimator = _estimator(self.depth_estimator)
        depth = depth_picture(estimator.predict(self.image), tuple(self.image.shape[1:3]))
        depth = depth.to(self.image.device)
        return depth[..., None].expand(*depth.shape, 3).contiguous(), depth


class Depth2ImageConditioning(Node):
    """Depth2Image (Stable Diffusion 2 depth, diffusers' StableDiffusionDepth2ImgPipeline):
    a depth model (a 5-channel UNet: latents + depth) keeps the image's 3D layout — what
    is near and far — while the prompt changes what is there.

    Wiring: load a depth checkpoint (e.g. stable-diffusion-2-depth, folder or single
    file) with Load Checkpoint; give this node the prompts, the VAE and the image; take
    its positive, negative and latent to the sampler. The latent is the image's VAE
    encoding: the sampler's ``denoise`` is the pipeline's ``strength`` (its default is
    0.8; lower keeps more of the image's colours and details, 1.0 keeps only the depth,
    and an Empty Latent Image of the same size then gives depth-guided text-to-image).

    The depth comes from ``depth`` when given (the pipeline's ``depth_map``: a grey
    IMAGE, near = bright, any range — it is stretched to -1..1 per image — e.g. Estimate
    Depth's output, edited if you like), else from ``depth_estimator`` run on the image
    exactly as the pipeline does (Load Depth Estimator: DPT or Depth Anything); one of the
    two is needed. Either is resized to the latent grid. A depth map that went through
    Estimate Depth was resized to the image size first, so it can differ from the direct
    estimator path by a resampling's worth. A second Depth2Image Conditioning on the same
    conditioning replaces the first.

    Tested in one run with SEGA, SAG, a LoRA and a ControlNet (the other techniques
    attach the same way). Cost: one estimator pass (if used) and a 5th input channel; a
    step costs what plain sampling costs. The default model has no depth variant (the
    shapes world has no depth), so this node needs a depth checkpoint of your own.
    """

    TYPE = "Depth2ImageConditioning"
    DISPLAY_NAME = "Depth2Image Conditioning"
    SEARCH_ALIASES = ("depth2img", "depth to image")
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"),
               Output("LATENT", "latent"))

    positive: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    vae: Vae = Input(type="VAE")
    pixels: Tensor = Input(type="IMAGE", description="The image to transform")
    depth: Tensor | None = Input(type="IMAGE", optional=True,
                                 description="Depth map, near = bright (wins over the estimator)")
    depth_estimator: Any = Input(type="DEPTH_ESTIMATOR", optional=True,
                                 description="Estimates the depth from the image when no depth "
                                             "map is given")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning, Conditioning, Latent]:
        from nodes.diffusion.depth2img import DepthConcat, depth_from_image
        from nodes.latent import encode
        from nodes.limits import check_image

        check_image(self.pixels, "image", (3, 4))
        if self.depth is not None:
            depth = depth_from_image(self.depth)
        elif self.depth_estimator is not None:
            depth = _estimator(self.depth_estimator).predict(self.pixels)
        else:
            raise ValueError("Depth2Image Conditioning needs a depth map: link a depth IMAGE "
                             "(e.g. from Estimate Depth) to 'depth', or a Load Depth Estimator "
                             "to 'depth_estimator'")
        batch = self.pixels.shape[0]
        if depth.shape[0] not in (1, batch):
            raise ValueError(f"the depth map has a batch of {depth.shape[0]} but the image has "
                             f"{batch}; use one depth map or one per image")
        latent = self.vae.latent(encode(self.vae, self.pixels))
        ext = DepthConcat(depth.to(latent.samples.device))
        # One object on both sides: the sampler concatenates it once per pass.
        return _with_depth(self.positive, ext), _with_depth(self.negative, ext), latent


def _estimator(value: Any) -> DepthEstimator:
    from nodes.diffusion.depth2img import DepthEstimator

    if not isinstance(value, DepthEstimator):
        raise ValueError(f"expected a DEPTH_ESTIMATOR from Load Depth Estimator, got "
                         f"{type(value).__name__}")
    return value


def _with_depth(cond: Conditioning, extension: Any) -> Conditioning:
    """``cond`` with ``extension`` replacing any depth concat it already carries."""
    from nodes.diffusion.depth2img import DepthConcat

    entries = []
    for entry in cond.entries:
        kept = tuple(e for e in entry.options.get("extensions", ())
                     if not isinstance(e, DepthConcat))
        entries.append(replace(entry, options={**entry.options,
                                               "extensions": (*kept, extension)}))
    return Conditioning(tuple(entries))


NODE_CLASSES = (DepthEstimatorLoader, EstimateDepth, Depth2ImageConditioning)
