"""Model loaders: checkpoints from the models folder, offline and pickle-free by default."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion import memory  # noqa: F401  (registers the cache's model mover)
from nodes.diffusion.handles import (
    DiffusionModel,
    MissingVae,
    TextEncoder,
    Vae,
    missing_text_encoder,
)
from nodes.diffusion.precision import WEIGHT_DTYPE_CHOICES

CHECKPOINT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
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


def file_fingerprint(env: Environment, name: Any, *folder: str) -> list[Any] | None:
    """Identity of the file or folder ``name`` in ``folder`` (e.g. "models", "vae"), or
    None: a linked name (a training node's output: its signature stands for the file), a
    name outside the folder (validation reports it), or nothing there yet."""
    if not isinstance(name, str):
        return None
    try:
        path = env.resolve(*folder, name)
    except (KeyError, ValueError):
        return None
    return path_fingerprint(path) if path.exists() else None


class ModelFileNode(Node):
    """Base of the loaders that read one file of ``models/<MODEL_FOLDER>`` named by the
    input ``FILE_INPUT``: the file's identity joins the cache signature, and a pickle is
    refused before running unless the user opted in (--allow-pickle)."""

    MODEL_FOLDER: ClassVar[str] = ""
    FILE_INPUT: ClassVar[str] = ""

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return file_fingerprint(env, inputs.get(cls.FILE_INPUT), "models", cls.MODEL_FOLDER)

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


class CheckpointFileNode(Node):
    """Base of the nodes that read a checkpoint of ``models/checkpoints`` named by
    ``ckpt_name`` (not a node): its identity and the --dtype it loads at join the cache
    signature, and a pickle is refused before running unless the user opted in."""

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        found = file_fingerprint(env, inputs.get("ckpt_name"), "models", "checkpoints")
        # "default" follows --dtype, which is not an input: it joins the identity here.
        return None if found is None else [found, env.options.get("dtype")]

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, "ckpt_name", "models", "checkpoints")


class CheckpointLoaderSimple(CheckpointFileNode):
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

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel, TextEncoder, Vae]:
        path = ctx.env.resolve("models", "checkpoints", self.ckpt_name)
        if not path.exists():
            raise FileNotFoundError(
                f"checkpoint {self.ckpt_name!r} not found in models/checkpoints")
        return load_checkpoint(ctx, path, self.weight_dtype)


def load_checkpoint(ctx: ExecutionContext, path: Path, weight_dtype: str = "default",
                    scheduler_overrides: dict[str, Any] | None = None
                    ) -> tuple[DiffusionModel, TextEncoder, Vae]:
    """MODEL, CLIP and VAE of the checkpoint file or diffusers folder at ``path``
    (``scheduler_overrides``: settings over its scheduler config, e.g. a yaml config's
    prediction type)."""
    from nodes.diffusion.precision import checkpoint_dtypes, dtype_from_name
    from nodes.diffusion.safetensors_io import read_in_background

    dtype = dtype_from_name(weight_dtype, ctx.env.options)
    # A cold process reads the weights while it imports diffusers (seconds each).
    prefetched = read_in_background(path, dtype=checkpoint_dtypes(dtype))
    from nodes.diffusion.loading import load_components
    from nodes.diffusion.memory import device_budget

    # A component bigger than the device's budget never goes there whole (place_model).
    loaded = load_components(path, allow_pickle=ctx.env.allow_pickle, device=ctx.device,
                             dtype=dtype, prefetched=prefetched, budget=device_budget(ctx))
    from nodes.diffusion.preview import link_vae

    if loaded.vae is not None:
        link_vae(loaded.unet, loaded.vae)  # live previews fit their colour map to this VAE
    from nodes.diffusion.sd_upscale import model_extensions
    from nodes.diffusion.unclip import UnclipExtension, is_unclip_unet

    # an unCLIP UNet needs class labels on every call: zeros here (no image); its
    # image conditioning needs unCLIPCheckpointLoader, which says so if asked for it.
    # The x4 upscaler's MODEL carries its low-res noise schedule (SD_4XUpscale_Conditioning).
    extensions = ((UnclipExtension(),) if is_unclip_unet(loaded.unet)
                  else model_extensions(loaded.unet, path))
    return (
        DiffusionModel(loaded.unet, {**loaded.scheduler_config, **(scheduler_overrides or {})},
                       loaded.family, extensions=extensions,
                       latent_scale=loaded.latent_scale),
        missing_text_encoder(path.name, loaded.family)
        if loaded.text_encoder is None and loaded.text_encoder_2 is None
        else TextEncoder(loaded.text_encoder, loaded.tokenizer, loaded.family,
                         text_encoder_2=loaded.text_encoder_2, tokenizer_2=loaded.tokenizer_2),
        Vae(loaded.vae) if loaded.vae is not None else MissingVae(path.name),
    )


def list_diffusers(env: Environment) -> list[str]:
    """diffusers pipeline folders (with model_index.json) under models/diffusers."""
    return env.list_files("models", "diffusers", dirs_with="model_index.json", dirs_only=True)


def list_yaml_configs(env: Environment) -> list[str]:
    return env.list_files("models", "configs", suffixes=(".yaml", ".yml"))


def yaml_settings(path: Path) -> tuple[str | None, int | None]:
    """What Steerflow reads from an original (LDM) yaml config: the prediction type
    (``model.params.parameterization``: ``v`` is v_prediction, ``eps`` epsilon, ``x0``
    sample) and the CLIP layer (``cond_stage_config.params`` with layer ``hidden`` and
    ``layer_idx`` -2: CLIP skip 2, as CLIP Set Last Layer's -2); None where it names none."""
    import yaml  # PyYAML; safe_load builds plain data only

    text = path.read_text(encoding="utf-8")[:MAX_YAML_CHARS]
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path.name} is not valid YAML: {exc}") from exc

    def section(value: Any, *keys: str) -> dict[str, Any]:
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value if isinstance(value, dict) else {}

    params = section(config, "model", "params")
    kind = {"v": "v_prediction", "eps": "epsilon", "x0": "sample"}.get(
        str(params.get("parameterization")))
    clip = section(params, "cond_stage_config", "params")
    layer = clip.get("layer_idx") if clip.get("layer") == "hidden" else None
    if layer is not None and (not isinstance(layer, int) or not -24 <= layer <= -1):
        raise ValueError(f"{path.name}: cond_stage_config layer_idx {layer!r} is not a layer "
                         f"from the end (-1 .. -24)")
    return kind, layer


MAX_YAML_CHARS = 1_000_000


class CheckpointLoader(Node):
    """ComfyUI's older checkpoint loader with an original (LDM) yaml config beside the
    checkpoint. The architecture comes from the weights, as in Load Checkpoint; from the
    yaml Steerflow reads the prediction type (``parameterization: "v"``: SD 2.x 768-v
    models whose file does not say) and CLIP skip (``layer_idx: -2``), which is what these
    configs are still used for. models/configs comes with stand-ins for the configs
    ComfyUI ships (v1-inference.yaml, v2-inference-v.yaml, v1-inference_clip_skip_2.yaml,
    ...). Prefer Load Checkpoint where the file alone tells."""

    TYPE = "CheckpointLoader"
    DISPLAY_NAME = "Load Checkpoint With Config (DEPRECATED)"
    CATEGORY = "advanced/loaders"
    OUTPUTS = (Output("MODEL"), Output("CLIP"), Output("VAE"))

    config_name: str = Input(..., choices=list_yaml_configs,
                             description="An LDM yaml config in models/configs")
    ckpt_name: str = Input(..., choices=list_checkpoints,
                           description="A file or diffusers folder in models/checkpoints")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        found = [file_fingerprint(env, inputs.get(key), "models", folder)
                 for folder, key in (("checkpoints", "ckpt_name"), ("configs", "config_name"))]
        return [found, env.options.get("dtype")]

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, "ckpt_name", "models", "checkpoints")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel, TextEncoder, Vae]:
        config = model_file(ctx, "configs", self.config_name, "config")
        path = ctx.env.resolve("models", "checkpoints", self.ckpt_name)
        if not path.exists():
            raise FileNotFoundError(
                f"checkpoint {self.ckpt_name!r} not found in models/checkpoints")
        kind, clip_layer = yaml_settings(config)
        model, clip, vae = load_checkpoint(
            ctx, path, scheduler_overrides={"prediction_type": kind} if kind else None)
        if clip_layer is not None:
            clip = replace(clip, stop_at_clip_layer=clip_layer)
        return model, clip, vae


class DiffusersLoader(Node):
    """Load a diffusers pipeline folder (``model_index.json`` with unet, vae,
    text_encoder and tokenizer subfolders) from models/diffusers: SD 1.x, 2.x or SDXL.
    The same as Load Checkpoint on a folder in models/checkpoints."""

    TYPE = "DiffusersLoader"
    DISPLAY_NAME = "DiffusersLoader"
    CATEGORY = "advanced/loaders/deprecated"
    OUTPUTS = (Output("MODEL"), Output("CLIP"), Output("VAE"))

    model_path: str = Input(..., choices=list_diffusers,
                            description="A diffusers folder in models/diffusers")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return [file_fingerprint(env, inputs.get("model_path"), "models", "diffusers"),
                env.options.get("dtype")]

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel, TextEncoder, Vae]:
        path = ctx.env.resolve("models", "diffusers", self.model_path)
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"diffusers model {self.model_path!r} not found in "
                                    f"models/diffusers (a folder with model_index.json)")
        return load_checkpoint(ctx, path)


NODE_CLASSES = (CheckpointLoaderSimple, CheckpointLoader, DiffusersLoader)
