"""Built-in node packs. Each module is one family of nodes and exposes NODE_CLASSES.

Importing the packs, building their schemas and validating a prompt import none of
torch, diffusers or transformers (seconds at server start; tests/test_import_light.py):
node modules import them, and the heavy ``nodes.diffusion`` modules, inside ``execute``
and the helpers it calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from engine import Environment
from nodes import (
    animated_output,
    attend_excite,
    batch_grow,
    bounding_boxes,
    checkpoint_save,
    clip_guidance,
    clip_vision,
    color_space,
    comfy_display_names,
    comfy_training,
    component_save,
    conditioning,
    conditioning_ops,
    controlnet,
    custom_diffusion,
    custom_sampling,
    dataset_folders,
    dataset_images,
    dataset_text,
    depth2img,
    diffedit,
    dreambooth,
    fabric,
    flow_control,
    gligen,
    guidance_patches,
    hook_conditioning,
    hooks,
    hypernetwork,
    image,
    image_batch,
    image_compose,
    image_formats,
    image_ops,
    image_tiles,
    inpaint,
    instruct_pix2pix,
    inversion,
    ip_adapter,
    latent,
    latent_files,
    latent_operations,
    latent_ops,
    ledits_pp,
    loaders,
    lora,
    lora_extract,
    mask_ops,
    masks,
    math_expression,
    model_editing,
    model_merging,
    model_patches,
    model_sampling,
    models,
    multidiffusion,
    pag,
    photomaker,
    pix2pix_zero,
    preprocessors,
    primitives,
    rebatch,
    resize_image_mask,
    sag,
    sampler_extras,
    sampler_nodes,
    sampling,
    sampling_advanced,
    sd_upscale,
    sdxl,
    sega,
    sigma_lists,
    speed_patches,
    strings,
    style_model,
    t2i_adapter,
    training,
    training_dataset,
    unclip,
    upscale,
    upscale_model,
    utility_nodes,
)

NODE_CLASSES = (
    *animated_output.NODE_CLASSES,
    *models.NODE_CLASSES,
    *loaders.NODE_CLASSES,
    *clip_vision.NODE_CLASSES,
    *lora.NODE_CLASSES,
    *lora_extract.NODE_CLASSES,
    *hooks.NODE_CLASSES,
    *hook_conditioning.NODE_CLASSES,
    *hypernetwork.NODE_CLASSES,
    *conditioning.NODE_CLASSES,
    *sdxl.NODE_CLASSES,
    *latent.NODE_CLASSES,
    *sampling.NODE_CLASSES,
    *sampling_advanced.NODE_CLASSES,
    *custom_sampling.NODE_CLASSES,
    *inpaint.NODE_CLASSES,
    *depth2img.NODE_CLASSES,
    *instruct_pix2pix.NODE_CLASSES,
    *inversion.NODE_CLASSES,
    *diffedit.NODE_CLASSES,
    *sampler_nodes.NODE_CLASSES,
    *sampler_extras.NODE_CLASSES,
    *sega.NODE_CLASSES,
    *sigma_lists.NODE_CLASSES,
    *ledits_pp.NODE_CLASSES,
    *attend_excite.NODE_CLASSES,
    *pix2pix_zero.NODE_CLASSES,
    *sag.NODE_CLASSES,
    *model_editing.NODE_CLASSES,
    *model_merging.NODE_CLASSES,
    *checkpoint_save.NODE_CLASSES,
    *component_save.NODE_CLASSES,
    *fabric.NODE_CLASSES,
    *multidiffusion.NODE_CLASSES,
    *pag.NODE_CLASSES,
    *clip_guidance.NODE_CLASSES,
    *controlnet.NODE_CLASSES,
    *t2i_adapter.NODE_CLASSES,
    *ip_adapter.NODE_CLASSES,
    *gligen.NODE_CLASSES,
    *style_model.NODE_CLASSES,
    *image.NODE_CLASSES,
    *upscale.NODE_CLASSES,
    *upscale_model.NODE_CLASSES,
    *image_batch.NODE_CLASSES,
    *dataset_folders.NODE_CLASSES,
    *dataset_images.NODE_CLASSES,
    *dataset_text.NODE_CLASSES,
    *batch_grow.NODE_CLASSES,
    *masks.NODE_CLASSES,
    *mask_ops.NODE_CLASSES,
    *image_ops.NODE_CLASSES,
    *image_compose.NODE_CLASSES,
    *latent_ops.NODE_CLASSES,
    *latent_files.NODE_CLASSES,
    *latent_operations.NODE_CLASSES,
    *conditioning_ops.NODE_CLASSES,
    *model_sampling.NODE_CLASSES,
    *model_patches.NODE_CLASSES,
    *guidance_patches.NODE_CLASSES,
    *preprocessors.NODE_CLASSES,
    *primitives.NODE_CLASSES,
    *rebatch.NODE_CLASSES,
    *resize_image_mask.NODE_CLASSES,
    *color_space.NODE_CLASSES,
    *image_formats.NODE_CLASSES,
    *strings.NODE_CLASSES,
    *training.NODE_CLASSES,
    *comfy_training.NODE_CLASSES,
    *training_dataset.NODE_CLASSES,
    *unclip.NODE_CLASSES,
    *custom_diffusion.NODE_CLASSES,
    *dreambooth.NODE_CLASSES,
    *flow_control.NODE_CLASSES,
    *bounding_boxes.NODE_CLASSES,
    *image_tiles.NODE_CLASSES,
    *math_expression.NODE_CLASSES,
    *utility_nodes.NODE_CLASSES,
    *sd_upscale.NODE_CLASSES,
    *speed_patches.NODE_CLASSES,
    *photomaker.NODE_CLASSES,
)
# ComfyUI's names of the nodes we show under ours: the palette finds them by both
comfy_display_names.set_comfy_display_names(NODE_CLASSES)


MODEL_FOLDERS = ("checkpoints", "vae", "loras", "controlnet", "embeddings", "depth",
                 "gligen", "clip_vision", "diffusion_models", "unet", "upscale_models",
                 "hypernetworks", "style_models", "text_encoders", "clip", "diffusers", "configs",
                 "ipadapter", "photomaker")


def setup(env: Environment) -> None:
    """Create the models/ tree and the built-in models (offline, on first run): the trained
    default ``steerflow-shapes`` with its ControlNet, and the random ``steerflow-tiny``.

    On a folder where they are installed this is a few file checks: every worker
    start runs it, and the server's model lists wait for it."""
    from nodes.diffusion.builtin_models import all_installed

    models = env.folder("models", create=True)
    for name in MODEL_FOLDERS:
        (models / name).mkdir(exist_ok=True)
    if not all_installed(models):
        from nodes.diffusion.shapes_model import ensure_shapes_model
        from nodes.diffusion.tiny import ensure_default_model
        from nodes.diffusion.tiny_controlnet import ensure_default_controlnet

        ensure_default_model(models)
        ensure_default_controlnet(models)
        ensure_shapes_model(models)
    seed_example_inputs(env)
    seed_ldm_configs(env)


EXAMPLE_ASSETS = Path(__file__).resolve().parents[1] / "workflows" / "assets"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: the input ComfyUI ships (its Image to Image templates load ``example.png``): ours
COMFY_EXAMPLE_INPUTS = {"example.png": "steerflow_example.png"}


def seed_example_inputs(env: Environment) -> None:
    """Copy what the example workflows read — images into input/, and
    ``assets/<folder>/`` files (e.g. loras/) into models/<folder>/ — unless a file of
    that name exists, so every workflow in workflows/ runs as shipped (and ComfyUI's
    templates find the ``example.png`` ComfyUI ships)."""
    if not EXAMPLE_ASSETS.is_dir():
        return
    for src in EXAMPLE_ASSETS.iterdir():
        if src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES:
            _copy_new(src, env.folder("input", create=True))
        elif src.is_dir() and src.name in MODEL_FOLDERS:
            for item in src.iterdir():
                if item.is_file():
                    _copy_new(item, env.folder("models", src.name, create=True))
    for name, ours in COMFY_EXAMPLE_INPUTS.items():
        if (EXAMPLE_ASSETS / ours).is_file():
            _copy_new(EXAMPLE_ASSETS / ours, env.folder("input", create=True), name)


LDM_CONFIGS = Path(__file__).resolve().parent / "assets" / "ldm_configs"


def seed_ldm_configs(env: Environment) -> None:
    """Stand-ins for the yaml configs ComfyUI ships in models/configs (what ComfyUI
    workflows' Load Checkpoint With Config names), unless a file of that name exists."""
    for src in LDM_CONFIGS.glob("*.yaml"):
        _copy_new(src, env.folder("models", "configs", create=True))


def _copy_new(src: Path, folder: Path, name: str | None = None) -> None:
    """Copy ``src`` into ``folder`` (as ``name``, else its own) unless the name is taken;
    through a temporary file and
    a rename, so a full disk never leaves a truncated file under the real name, and a
    folder that cannot take it (read-only, full) is a warning: the shipped examples'
    files must not keep a worker from starting."""
    target = folder / (name or src.name)
    if target.exists():
        return
    tmp = folder / f".{target.name}.{os.getpid()}.tmp"
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        logging.getLogger(__name__).warning(
            "cannot copy the example file %s into %s: %s", src.name, folder, exc)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def __getattr__(name: str) -> Any:
    # ComfyUI packs do ``from nodes import MAX_RESOLUTION`` (or NODE_CLASS_MAPPINGS, or a
    # node class such as SaveImage or LoraLoader): ComfyUI's module shares our package's
    # name, so its public names resolve here, lazily and torch-free until a class is
    # asked for (see comfy_compat.nodes_module), like server.PromptServer.
    if name in _COMFY_CONSTANTS or name[:1].isupper():
        from importlib import import_module

        comfy_nodes = import_module("comfy_compat.nodes_module")
        if name in comfy_nodes.COMFY_NAMES:
            return getattr(comfy_nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: ComfyUI's lower-case public names in its ``nodes`` module (packs import them)
_COMFY_CONSTANTS = frozenset({"interrupt_processing", "before_node_execution",
                              "common_ksampler", "unCLIPConditioning"})
