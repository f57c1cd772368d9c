"""Component loaders with ComfyUI's names: Load VAE, Load Diffusion Model (UNETLoader),
Load CLIP, DualCLIPLoader, Image Only Checkpoint Loader and the diff-ControlNet loader.
Offline, confined to their models/ folders, pickle-free unless opted in (as
:mod:`nodes.models`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.controlnet import list_controlnets
from nodes.diffusion.handles import DiffusionModel, Vae
from nodes.models import (
    CHECKPOINT_SUFFIXES,
    file_fingerprint,
    list_checkpoints,
    path_fingerprint,
    pickle_problem,
)

#: ComfyUI reads diffusion models from models/diffusion_models and, for older setups,
#: models/unet; a name is looked up in that order.
UNET_FOLDERS = ("diffusion_models", "unet")
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
#: ComfyUI reads text encoders from models/text_encoders and, for older setups, models/clip
CLIP_FOLDERS = ("text_encoders", "clip")
#: ComfyUI's Load CLIP / DualCLIPLoader ``type`` choices; Steerflow runs the SD families
CLIP_TYPES = ("stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv",
              "pixart", "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2",
              "qwen_image", "hunyuan_image")
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image")
CLIP_DEVICES = ("default", "cpu")


def list_vaes(env: Environment) -> list[str]:
    """Single files and diffusers VAE folders (with config.json) under models/vae."""
    return env.list_files("models", "vae", suffixes=CHECKPOINT_SUFFIXES, dirs_with="config.json")


def _list_in(env: Environment, folders: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for folder in folders:
        for name in env.list_files("models", folder, suffixes=CHECKPOINT_SUFFIXES,
                                   dirs_with="config.json"):
            if name not in names:
                names.append(name)
    return sorted(names)


def list_unets(env: Environment) -> list[str]:
    return _list_in(env, UNET_FOLDERS)


def list_text_encoders(env: Environment) -> list[str]:
    """Single files and transformers folders (with config.json) of models/text_encoders
    and models/clip."""
    return _list_in(env, CLIP_FOLDERS)


def _folder_of(env: Environment, name: str, folders: tuple[str, ...]) -> str:
    """The first of ``folders`` that holds ``name`` (names are confined to the folder)."""
    for folder in folders:
        try:
            if env.resolve("models", folder, name).exists():
                return folder
        except (KeyError, ValueError):
            continue
    return folders[0]


def _unet_folder(env: Environment, name: str) -> str:
    return _folder_of(env, name, UNET_FOLDERS)


def _existing(env: Environment, folder: str, name: str, what: str) -> Path:
    path = env.resolve("models", folder, name)
    if not path.exists():
        raise FileNotFoundError(f"{what} {name!r} not found in models/{folder}")
    return path


class VAELoader(Node):
    """Load a VAE on its own, to replace a checkpoint's (a fine-tuned SD VAE such as
    ft-mse decodes faces and text more cleanly; some merges ship a broken one). Wire it
    into VAE Decode / VAE Encode (and Empty Latent Image's vae) instead of the
    checkpoint's VAE output. A diffusers VAE folder or one .safetensors file in either
    key layout (a whole checkpoint works too: its VAE is taken). Costs one load."""

    TYPE = "VAELoader"
    DISPLAY_NAME = "Load VAE"
    CATEGORY = "loaders"
    OUTPUTS = (Output("VAE"),)

    vae_name: str = Input(..., choices=list_vaes,
                          description="A file or diffusers folder in models/vae")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        """The file's identity and that of a config beside it (editing only the config
        loads the VAE again)."""
        from nodes.diffusion.component_loading import vae_config_paths

        weights = file_fingerprint(env, inputs.get("vae_name"), "models", "vae")
        if weights is None:
            return None
        path = env.resolve("models", "vae", inputs["vae_name"])
        beside = [path_fingerprint(c) for c in vae_config_paths(path) if c.is_file()]
        return [weights, beside] if path.is_file() else weights

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, "vae_name", "models", "vae")

    def execute(self, ctx: ExecutionContext) -> tuple[Vae]:
        from nodes.diffusion.component_loading import load_vae
        from nodes.diffusion.memory import device_budget

        path = _existing(ctx.env, "vae", self.vae_name, "VAE")
        return (Vae(load_vae(path, allow_pickle=ctx.env.allow_pickle, device=ctx.device,
                             budget=device_budget(ctx))),)


class UNETLoader(Node):
    """Load a diffusion model (the UNet alone) from models/diffusion_models (or the older
    models/unet): a diffusers UNet folder or one file, in the original layout (with or
    without ``model.diffusion_model.``) or diffusers'. Pair it with a CLIP and a VAE
    from elsewhere (Load Checkpoint, Load VAE). ``weight_dtype`` fp8 rounds the weights
    to 8-bit floats as ComfyUI stores them (same numbers as ComfyUI; here it saves no
    memory)."""

    TYPE = "UNETLoader"
    DISPLAY_NAME = "Load Diffusion Model"
    CATEGORY = "advanced/loaders"
    OUTPUTS = (Output("MODEL"),)

    unet_name: str = Input(..., choices=list_unets,
                           description="A file or folder in models/diffusion_models")
    weight_dtype: str = Input("default", choices=WEIGHT_DTYPES)

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        name = inputs.get("unet_name")
        if not isinstance(name, str):
            return None  # linked: the upstream node's signature stands for the file
        return file_fingerprint(env, name, "models", _unet_folder(env, name))

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        name = inputs.get("unet_name")
        if not isinstance(name, str):
            return []
        return pickle_problem(inputs, env, "unet_name", "models", _unet_folder(env, name))

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.component_loading import load_unet
        from nodes.diffusion.memory import device_budget

        folder = _unet_folder(ctx.env, self.unet_name)
        path = _existing(ctx.env, folder, self.unet_name, "diffusion model")
        unet, scheduler_config, family = load_unet(
            path, allow_pickle=ctx.env.allow_pickle, weight_dtype=self.weight_dtype,
            device=ctx.device, budget=device_budget(ctx))
        from nodes.diffusion.loading import family_configs

        vae_config = family_configs(family)["vae"] or {}  # the family's usual VAE
        scale = vae_config.get("scaling_factor")
        return (DiffusionModel(unet, scheduler_config, family,
                               latent_scale=float(scale) if scale else None),)


class _TextEncoderFiles(Node):
    """Base of Load CLIP and DualCLIPLoader: files of models/text_encoders (or
    models/clip), their identity in the cache signature, pickles refused unless opted in."""

    FILE_INPUTS: ClassVar[tuple[str, ...]] = ()
    #: the ``type`` Steerflow runs, and what to say for another
    RUNS_TYPE: ClassVar[tuple[str, str]] = ("", "")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        out = []
        for key in cls.FILE_INPUTS:
            name = inputs.get(key)
            if not isinstance(name, str):
                return None
            out.append(file_fingerprint(env, name, "models", _folder_of(env, name, CLIP_FOLDERS)))
        return [out, env.options.get("dtype")]

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        for key in cls.FILE_INPUTS:
            name = inputs.get(key)
            if isinstance(name, str):
                problems += pickle_problem(inputs, env, key, "models",
                                           _folder_of(env, name, CLIP_FOLDERS))
        kind, hint = cls.RUNS_TYPE
        if isinstance(inputs.get("type"), str) and inputs["type"] != kind:
            problems.append(("type", f"{inputs['type']!r} text encoders belong to model "
                                     f"families Steerflow does not run; {hint}"))
        return problems

    def load(self, ctx: ExecutionContext, name: str) -> Any:
        from nodes.diffusion.loading import check_text_positions
        from nodes.diffusion.memory import device_budget
        from nodes.diffusion.precision import dtype_from_name
        from nodes.diffusion.text_encoder_loading import load_text_encoder

        path = _existing(ctx.env, _folder_of(ctx.env, name, CLIP_FOLDERS), name,
                         "text encoder")
        cpu = getattr(self, "device", "default") == "cpu"
        loaded = load_text_encoder(path, allow_pickle=ctx.env.allow_pickle,
                                   device="cpu" if cpu else ctx.device,
                                   dtype=dtype_from_name("default", ctx.env.options),
                                   budget=None if cpu else device_budget(ctx))
        # refused here, not with transformers' error at the first prompt
        check_text_positions(loaded.model, loaded.tokenizer, name)
        return loaded


class CLIPLoader(_TextEncoderFiles):
    """Load a text encoder on its own, for a diffusion model loaded with Load Diffusion
    Model. A CLIP-L file gives SD 1.x's CLIP, an OpenCLIP-H file SD 2.x's, a bigG file
    the SDXL refiner's (for SDXL base, load CLIP-L and bigG together with
    DualCLIPLoader). Files from models/text_encoders (or models/clip): one .safetensors
    in transformers', the original SD or OpenCLIP's key layout (ComfyUI's clip_l /
    clip_g files work), or a diffusers text_encoder folder. ``type`` is ComfyUI's:
    Steerflow runs stable_diffusion, the SD families; ``device`` cpu keeps the encoder
    in main memory (prompts encode a little slower, the GPU keeps its memory)."""

    TYPE = "CLIPLoader"
    DISPLAY_NAME = "Load CLIP"
    CATEGORY = "advanced/loaders"
    OUTPUTS = (Output("CLIP"),)
    FILE_INPUTS = ("clip_name",)
    RUNS_TYPE = ("stable_diffusion", "use stable_diffusion (SD 1.x, SD 2.x, the SDXL "
                                     "refiner), or DualCLIPLoader's sdxl")

    clip_name: str = Input(..., choices=list_text_encoders,
                           description="A file or folder in models/text_encoders")
    type: str = Input("stable_diffusion", choices=CLIP_TYPES)
    device: str = Input("default", choices=CLIP_DEVICES, optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        from nodes.diffusion.handles import TextEncoder

        loaded = self.load(ctx, self.clip_name)
        if loaded.kind == "clip_g":  # bigG alone: the refiner's conditioning
            return (TextEncoder(None, None, "sdxl_refiner", text_encoder_2=loaded.model,
                                tokenizer_2=loaded.tokenizer),)
        family = "sd1" if loaded.kind == "clip_l" else "sd2"
        return (TextEncoder(loaded.model, loaded.tokenizer, family),)


class DualCLIPLoader(_TextEncoderFiles):
    """Load SDXL's two text encoders, CLIP-L and OpenCLIP bigG (in either order), for an
    SDXL diffusion model loaded with Load Diffusion Model; encode with CLIP Text Encode
    or CLIPTextEncodeSDXL. Files as for Load CLIP; ``type`` sdxl (ComfyUI's other types
    belong to families Steerflow does not run)."""

    TYPE = "DualCLIPLoader"
    DISPLAY_NAME = "DualCLIPLoader"
    CATEGORY = "advanced/loaders"
    OUTPUTS = (Output("CLIP"),)
    FILE_INPUTS = ("clip_name1", "clip_name2")
    RUNS_TYPE = ("sdxl", "use sdxl")

    clip_name1: str = Input(..., choices=list_text_encoders)
    clip_name2: str = Input(..., choices=list_text_encoders)
    type: str = Input("sdxl", choices=DUAL_CLIP_TYPES)
    device: str = Input("default", choices=CLIP_DEVICES, optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        from nodes.diffusion.handles import TextEncoder
        from nodes.diffusion.text_encoder_loading import KIND_NAMES, tokenizer_for

        first = self.load(ctx, self.clip_name1)
        second = self.load(ctx, self.clip_name2)
        by_kind = {first.kind: first, second.kind: second}
        if set(by_kind) != {"clip_l", "clip_g"}:
            got = ", ".join(KIND_NAMES[x.kind] for x in (first, second))
            raise ValueError(f"SDXL needs CLIP-L and OpenCLIP bigG, one of each; got {got}")
        return (TextEncoder(by_kind["clip_l"].model, tokenizer_for("clip_l", "sdxl"), "sdxl",
                            text_encoder_2=by_kind["clip_g"].model,
                            tokenizer_2=tokenizer_for("clip_g", "sdxl")),)


class ImageOnlyCheckpointLoader(Node):
    """ComfyUI's loader for image-conditioned video checkpoints (Stable Video Diffusion),
    giving MODEL, CLIP_VISION and VAE. Steerflow has no such model family yet: the node
    is listed so ComfyUI workflows and model browsers see it, and running it says so.
    For SD 1.x / 2.x checkpoints use Load Checkpoint."""

    TYPE = "ImageOnlyCheckpointLoader"
    DISPLAY_NAME = "Image Only Checkpoint Loader (img2vid model)"
    CATEGORY = "loaders/video_models"
    OUTPUTS = (Output("MODEL"), Output("CLIP_VISION"), Output("VAE"))

    ckpt_name: str = Input(..., choices=list_checkpoints,
                           description="A file in models/checkpoints")

    def execute(self, ctx: ExecutionContext) -> tuple[Any, Any, Any]:
        raise ValueError(
            f"{self.ckpt_name!r}: Image Only Checkpoint Loader loads image-to-video models "
            "(Stable Video Diffusion), which Steerflow does not support yet. For an SD 1.x / "
            "2.x checkpoint use Load Checkpoint; for image prompts, Load CLIP Vision.")


class DiffControlNetLoader(Node):
    """Load a ControlNet for a particular model. A "diff" ControlNet file stores only
    its difference to the model it was trained from (it has a ``difference`` key); the
    linked model's UNet weights are added back. Any other ControlNet loads as with Load
    ControlNet Model. Apply it with Apply ControlNet."""

    TYPE = "DiffControlNetLoader"
    DISPLAY_NAME = "Load ControlNet Model (diff)"
    CATEGORY = "loaders"
    OUTPUTS = (Output("CONTROL_NET"),)

    model: DiffusionModel = Input(type="MODEL")
    control_net_name: str = Input(..., choices=list_controlnets,
                                  description="A file or diffusers folder in models/controlnet")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return file_fingerprint(env, inputs.get("control_net_name"), "models", "controlnet")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, "control_net_name", "models", "controlnet")

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        from nodes.diffusion.component_loading import load_diff_controlnet
        from nodes.diffusion.controlnet import ControlNet
        from nodes.diffusion.memory import device_budget

        path = _existing(ctx.env, "controlnet", self.control_net_name, "ControlNet")
        net = load_diff_controlnet(path, self.model.unet, allow_pickle=ctx.env.allow_pickle,
                                   device=ctx.device, budget=device_budget(ctx))
        return (ControlNet(net, self.control_net_name),)


NODE_CLASSES = (VAELoader, UNETLoader, CLIPLoader, DualCLIPLoader, ImageOnlyCheckpointLoader,
                DiffControlNetLoader)
