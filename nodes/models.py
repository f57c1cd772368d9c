"""Model loaders: checkpoints from the models folder, offline and pickle-free by default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion import memory  # noqa: F401  (registers the cache's model mover)
from nodes.diffusion.handles import DiffusionModel, TextEncoder, Vae
from nodes.diffusion.precision import WEIGHT_DTYPE_CHOICES

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# Loading a pickle can run arbitrary code: the loaders refuse these files at validation
# unless the user opted in (and again when reading, for callers that skip validation).
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def list_checkpoints(env: Environment) -> list[str]:
    """Single files and diffusers folders (with model_index.json) under models/checkpoints."""
    return env.list_files("models", "checkpoints", suffixes=CHECKPOINT_SUFFIXES,
                          dirs_with="model_index.json")


def pickle_problem(inputs: dict[str, Any], env: Environment, input_name: str, *folder: str
                   ) -> list[tuple[str | None, str]]:
    """A validation issue when ``inputs[input_name]`` names a pickle file in ``folder`` and
    pickles are not allowed (a diffusers folder is checked when it is loaded)."""
    name = inputs.get(input_name)
    if not isinstance(name, str) or not name.lower().endswith(PICKLE_SUFFIXES) or env.allow_pickle:
        return []
    try:
        if env.resolve(*folder, name).is_dir():
            return []
    except (KeyError, ValueError):
        pass  # a name outside the folder is reported by the choices check
    return [(input_name, f"{name} is a pickle file; convert it to .safetensors or opt in "
                         "to loading pickles (--allow-pickle)")]


def path_fingerprint(path: Path) -> list[Any]:
    """Cheap identity of a file or folder: names, sizes and modification times.

    Hashing multi-GB checkpoints on every run would cost seconds; size and mtime
    change whenever a file is replaced.
    """
    if path.is_file():
        st = path.stat()
        return [path.name, st.st_size, st.st_mtime_ns]
    out: list[Any] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            st = (Path(dirpath) / name).stat()
            out.append([os.path.relpath(Path(dirpath) / name, path), st.st_size, st.st_mtime_ns])
    return out


class ModelFileNode(Node):
    """Base of the loaders that read one file of ``models/<MODEL_FOLDER>`` named by the
    input ``FILE_INPUT``: the file's identity joins the cache signature, and a pickle is
    refused before running unless the user opted in (--allow-pickle)."""

    MODEL_FOLDER: ClassVar[str] = ""
    FILE_INPUT: ClassVar[str] = ""

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        name = inputs.get(cls.FILE_INPUT)
        if not isinstance(name, str):
            return None
        try:
            path = env.resolve("models", cls.MODEL_FOLDER, name)
        except ValueError:
            return None
        return path_fingerprint(path) if path.is_file() else None

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, cls.FILE_INPUT, "models", cls.MODEL_FOLDER)

    def model_file(self, ctx: ExecutionContext, what: str) -> Path:
        """The named file, or FileNotFoundError naming ``what`` and the folder."""
        return model_file(ctx, self.MODEL_FOLDER, getattr(self, self.FILE_INPUT), what)


def model_file(ctx: ExecutionContext, folder: str, name: str, what: str) -> Path:
    """``models/<folder>/<name>`` (confined), or FileNotFoundError naming ``what``."""
    path = ctx.env.resolve("models", folder, name)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {name!r} not found in models/{folder}")
    return path


class CheckpointLoaderSimple(Node):
    """Load a Stable Diffusion checkpoint (diffusers folder or single .safetensors file):
    SD 1.x, SD 2.x, SDXL base or SDXL refiner, told apart by the weights."""

    TYPE = "CheckpointLoaderSimple"
    DISPLAY_NAME = "Load Checkpoint"
    CATEGORY = "loaders"
    OUTPUTS = (Output("MODEL"), Output("CLIP"), Output("VAE"))

    ckpt_name: str = Input(..., choices=list_checkpoints,
                           description="A file or diffusers folder in models/checkpoints")
    weight_dtype: str = Input("default", choices=WEIGHT_DTYPE_CHOICES,
                              description="Precision of the weights; default: the --dtype "
                                          "option, else fp32. In fp16 the VAE stays fp32.")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        path = env.resolve("models", "checkpoints", inputs["ckpt_name"])
        if not path.exists():
            return None
        # "default" follows --dtype, which is not an input: it joins the identity here.
        return [path_fingerprint(path), env.options.get("dtype")]

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, "ckpt_name", "models", "checkpoints")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel, TextEncoder, Vae]:
        from nodes.diffusion.precision import checkpoint_dtypes, dtype_from_name
        from nodes.diffusion.safetensors_io import read_in_background

        path = ctx.env.resolve("models", "checkpoints", self.ckpt_name)
        if not path.exists():
            raise FileNotFoundError(
                f"checkpoint {self.ckpt_name!r} not found in models/checkpoints")
        dtype = dtype_from_name(self.weight_dtype, ctx.env.options)
        # A cold process reads the weights while it imports diffusers (seconds each).
        prefetched = read_in_background(path, dtype=checkpoint_dtypes(dtype))
        from nodes.diffusion.loading import load_components
        from nodes.diffusion.memory import device_budget

        # A component bigger than the device's budget never goes there whole (place_model).
        loaded = load_components(path, allow_pickle=ctx.env.allow_pickle, device=ctx.device,
                                 dtype=dtype, prefetched=prefetched, budget=device_budget(ctx))
        from nodes.diffusion.preview import link_vae

        link_vae(loaded.unet, loaded.vae)  # live previews fit their colour map to this VAE
        from nodes.diffusion.unclip import UnclipExtension, is_unclip_unet

        # an unCLIP UNet needs class labels on every call: zeros here (no image); its
        # image conditioning needs unCLIPCheckpointLoader, which says so if asked for it
        extensions = (UnclipExtension(),) if is_unclip_unet(loaded.unet) else ()
        return (
            DiffusionModel(loaded.unet, dict(loaded.scheduler_config), loaded.family,
                           extensions=extensions),
            TextEncoder(loaded.text_encoder, loaded.tokenizer, loaded.family,
                        text_encoder_2=loaded.text_encoder_2, tokenizer_2=loaded.tokenizer_2),
            Vae(loaded.vae),
        )


NODE_CLASSES = (CheckpointLoaderSimple,)
