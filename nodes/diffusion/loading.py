"""Load SD 1.x / 2.x / SDXL components from a diffusers folder or a single checkpoint file.

Everything is local: configs come from the model folder, from the single file's
``steerflow.config`` metadata, or from the SD 1.5 / SD 2.1 / SDXL base / SDXL refiner
configs shipped in ``nodes/assets/configs``; nothing is ever fetched from the Hugging
Face hub. SDXL specifics live in :mod:`nodes.diffusion.sdxl_loading`.
Pickle-based files (``.ckpt`` and friends) are refused unless the caller opts in,
and even then are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from nodes.diffusion.concat import unet_kind
from nodes.diffusion.memory import place_model
from nodes.diffusion.original_layout import (
    CONFIG_METADATA_KEY,
    UNET_PREFIX,
    read_config_metadata,
)
from nodes.diffusion.precision import checkpoint_dtypes, vae_dtype
from nodes.diffusion.tokenizer import folder_tokenizer, load_clip_tokenizer

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "assets" / "configs"
FAMILY_CONFIG_DIRS = {"sd1": CONFIGS_DIR / "sd15", "sd2": CONFIGS_DIR / "sd21",
                      "sdxl": CONFIGS_DIR / "sdxl", "sdxl_refiner": CONFIGS_DIR / "sdxl_refiner"}
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".bin", ".pth"})
SAFE_SUFFIXES = frozenset({".safetensors", ".sft"})  # .sft: the same format (ComfyUI lists it)

_CLIP_PREFIX = "cond_stage_model.transformer."
_OPEN_CLIP_PREFIX = "cond_stage_model.model."
_SDXL_PREFIX = "conditioner.embedders."

StateDict = dict[str, torch.Tensor]
DtypeSpec = torch.dtype | Callable[[str], torch.dtype | None] | None
M = TypeVar("M", bound=torch.nn.Module)


class UnsafeCheckpointError(ValueError):
    """A pickle-based checkpoint was given without opting in to loading it."""


class CheckpointKeyError(ValueError):
    """A checkpoint's weights do not match the model its config describes."""


@dataclass
class LoadedCheckpoint:
    """The SD components of one checkpoint, in eval mode on the requested device/dtype."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL | None  # None: a single file without one (see load_vae)
    # None: the SDXL refiner (bigG only), or a single file without one (_build_text_encoder)
    text_encoder: CLIPTextModel | None
    tokenizer: CLIPTokenizer | None
    scheduler_config: dict[str, Any]
    family: str  # "sd1", "sd2", "sdxl" or "sdxl_refiner"
    path: Path | None = None
    # SDXL's OpenCLIP bigG (CLIPTextModelWithProjection) and its tokenizer
    text_encoder_2: Any = None
    tokenizer_2: CLIPTokenizer | None = None
    #: the latents' scaling factor when the file has no VAE (its family's)
    missing_vae_scale: float = 0.18215

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor) if self.vae is not None \
            else self.missing_vae_scale


def load_components(
    path: Path,
    *,
    allow_pickle: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    prefetched: Future[tuple[StateDict, dict[str, str]]] | None = None,
    budget: int | None = None,
) -> LoadedCheckpoint:
    """Load a diffusers folder, a ``.safetensors`` file, or (opt-in) a pickle checkpoint.

    In float16 the VAE stays float32 unless its config turns ``force_upcast`` off
    (:func:`nodes.diffusion.precision.vae_dtype`). ``prefetched`` is the file's
    :func:`read_checkpoint_file` result started earlier with the same ``dtype``
    (:func:`nodes.diffusion.safetensors_io.read_in_background`). A component bigger
    than ``budget`` bytes (the device's, :func:`nodes.diffusion.memory.device_budget`)
    stays on the CPU and runs with sequential offload (:func:`~nodes.diffusion.memory.place_model`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        try:
            loaded = _load_folder(path, allow_pickle=allow_pickle, dtype=dtype)
        except Exception as exc:  # diffusers' "Unable to load weights", a SafetensorError...
            damaged_component(path, exc)
            raise
    else:
        # Cast while reading, tensor by tensor: no second copy of the weights at the peak.
        empties = None
        if prefetched is not None:
            # The models' skeletons are built from the file's header while the weights are
            # read (the read releases the GIL): a second core's worth off the cold load.
            from nodes.diffusion.safetensors_io import read_header

            shapes, header_metadata = read_header(path)
            try:
                empties = EmptyModels(original_configs(shapes, header_metadata)[0],
                                      prebuild=True)
            except Exception:  # built again below, where the error is reported in full
                empties = None
            state_dict, metadata = prefetched.result()
        else:
            state_dict, metadata = read_checkpoint_file(path, allow_pickle=allow_pickle,
                                                        dtype=checkpoint_dtypes(dtype))
        loaded = load_original_state_dict(state_dict, metadata, path=path, empties=empties)
        del state_dict
    for encoder, tokenizer in ((loaded.text_encoder, loaded.tokenizer),
                               (loaded.text_encoder_2, loaded.tokenizer_2)):
        check_text_positions(encoder, tokenizer, path.name)
    for model in (loaded.unet, loaded.vae, loaded.text_encoder, loaded.text_encoder_2):
        if model is None:
            continue
        want = vae_dtype(dtype, model.config) if model is loaded.vae else dtype
        place_model(model, device, want, budget=budget)
    return loaded


#: the token positions of CLIP's text encoders: one window of a prompt (BOS, 75, EOS)
CLIP_POSITIONS = 77


def check_text_positions(encoder: Any, tokenizer: Any, source: str) -> None:
    """Refuse a text encoder with fewer positions than the windows its prompts are cut
    into (77 tokens, CLIP's): loading it would succeed and every prompt then fail inside
    transformers. More positions (long-CLIP's 248) are fine."""
    if encoder is None:
        return
    held = getattr(encoder.config, "max_position_embeddings", None)
    window = int(getattr(tokenizer, "model_max_length", None) or CLIP_POSITIONS)
    if held is not None and int(held) < window:
        raise ValueError(
            f"{source}: its text encoder holds {int(held)} token positions "
            f"(max_position_embeddings), but Steerflow encodes prompts in {window}-token "
            f"windows (CLIP's {CLIP_POSITIONS} positions), so no prompt could be encoded; "
            f"use a CLIP text encoder with at least {window} positions")


def _cast_tensors(
    state_dict: StateDict, *, device: torch.device | str, dtype: torch.dtype
) -> StateDict:
    """Cast the floating tensors (popping entries as they go to bound the extra memory)."""
    out: StateDict = {}
    for key in list(state_dict):
        tensor = state_dict.pop(key)
        out[key] = tensor.to(device=device, dtype=dtype) if tensor.is_floating_point() else tensor
    return out


def _own_aligned_memory(model: torch.nn.Module) -> None:
    """Copy CPU weights that live at unaligned addresses into fresh allocations.

    Weights read from safetensors are views into the (memory-mapped) file at
    arbitrary byte offsets. Misaligned weights make CPU kernels take other code
    paths: slower, and not bit-identical to the same weights loaded another way.
    The copies also stop the model pinning the file.
    """
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()


def read_checkpoint_file(
    path: Path, *, allow_pickle: bool = False, dtype: DtypeSpec = None
) -> tuple[StateDict, dict[str, str]]:
    """Read a single checkpoint file's tensors and (safetensors only) its metadata.

    With ``dtype``, floating tensors are cast as they are read. A ``.safetensors``
    file is read tensor by tensor into owned, aligned memory (no memory map kept).
    """
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        from nodes.diffusion.safetensors_io import read_safetensors

        return read_safetensors(path, dtype=dtype)
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{path.name} is a pickle-based checkpoint, which can run arbitrary code when "
                "loaded. Convert it to .safetensors, or opt in with allow_pickle=True (it is "
                "then read with torch.load(weights_only=True))."
            )
        state_dict, metadata = _torch_load_weights(path)
        if dtype is not None:
            dtype_of = dtype if callable(dtype) else (lambda key: dtype)
            for key, tensor in state_dict.items():
                want = dtype_of(key)
                if want is not None and tensor.is_floating_point():
                    state_dict[key] = tensor.to(want)
        return state_dict, metadata
    raise ValueError(
        f"unsupported checkpoint type {path.name!r}: expected a diffusers folder, .safetensors, "
        f"or (with allow_pickle) one of {sorted(PICKLE_SUFFIXES)}"
    )


def torch_load_weights_only(path: Path) -> Any:
    """A pickle file's contents through ``torch.load(weights_only=True)`` (tensors, dicts,
    lists, numbers: no code runs); a clear ValueError when it holds other objects. Call
    it only where the user opted in to pickles. A safetensors file under a pickle's name
    (sites rename them .pt or .ckpt) is read as the safetensors file it is."""
    if _looks_like_safetensors(path):
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # not torch's own text: it suggests weights_only=False, which runs the code
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it refers to {found.group(1)})" if found else ""
        raise ValueError(
            f"{path.name} holds Python objects besides tensors{what} and cannot be loaded "
            "safely; convert it to .safetensors with a trusted tool"
        ) from None


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors header: its 8-byte length, within the file, then a JSON object."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= size - 8 and head[8:9] == b"{"


def _torch_load_weights(path: Path) -> tuple[StateDict, dict[str, str]]:
    obj = torch_load_weights_only(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path.name} does not contain a state dict")
    # A top-level string under our metadata key plays the role of safetensors metadata.
    metadata = {k: v for k, v in obj.items() if k == CONFIG_METADATA_KEY and isinstance(v, str)}
    # Lightning checkpoints nest the weights under "state_dict".
    while isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, metadata


FAMILY_NAMES = {"sd1": "SD 1.5", "sd2": "SD 2.1", "sdxl": "SDXL base",
                "sdxl_refiner": "SDXL refiner"}


def detect_family(shapes: Mapping[str, Sequence[int]]) -> str:
    """Tell SD 1.x ("sd1") from SD 2.x ("sd2") by an original-layout checkpoint's keys/shapes.

    SD 1.x conditions on OpenAI CLIP-L (768-wide context, ``cond_stage_model.transformer``);
    SD 2.x on OpenCLIP ViT-H (1024-wide, ``cond_stage_model.model``).
    """
    if any(k.startswith(_SDXL_PREFIX) for k in shapes):
        from nodes.diffusion.sdxl_loading import detect_sdxl_family

        return detect_sdxl_family(shapes)
    if not any(k.startswith(UNET_PREFIX) for k in shapes):
        raise ValueError(f"not a Stable Diffusion checkpoint: no {UNET_PREFIX}* weights")
    context = {
        shape[-1]
        for key, shape in shapes.items()
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight")
    }
    has_clip = any(k.startswith(_CLIP_PREFIX) for k in shapes)
    has_open_clip = any(k.startswith(_OPEN_CLIP_PREFIX) for k in shapes)
    if context == {768} and not has_open_clip:
        return "sd1"
    if context == {1024} and not has_clip:
        return "sd2"
    raise ValueError(
        f"cannot tell the model family: cross-attention width {sorted(context)}, "
        f"CLIP text encoder {has_clip}, OpenCLIP text encoder {has_open_clip}"
    )


def family_configs(family: str) -> dict[str, Any]:
    """The shipped diffusers configs for ``family`` ("sd1", "sd2", "sdxl", "sdxl_refiner");
    SDXL's have ``text_encoder_2``, and the refiner's ``text_encoder`` is None."""
    root = FAMILY_CONFIG_DIRS[family]

    def read(*parts: str) -> dict[str, Any] | None:
        file = root.joinpath(*parts)
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None

    configs = {
        "family": family,
        "unet": read("unet", "config.json"),
        "vae": read("vae", "config.json"),
        "text_encoder": read("text_encoder", "config.json"),
        "scheduler": read("scheduler", "scheduler_config.json"),
    }
    if family.startswith("sdxl"):
        configs["text_encoder_2"] = read("text_encoder_2", "config.json")
    return configs


def _family_from_configs(unet_config: Mapping[str, Any], text_config: Mapping[str, Any]) -> str:
    # OpenCLIP (SD 2.x) uses plain GELU and 1024-wide context; OpenAI CLIP uses quick_gelu.
    if text_config.get("hidden_act") == "gelu" or unet_config.get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd1"


def original_configs(
    shapes: Mapping[str, Sequence[int]], metadata: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], bool]:
    """The diffusers configs of an original-layout checkpoint, from its tensors' shapes.

    From ``metadata`` (written by Steerflow) when present, else the shipped SD 1.5 /
    SD 2.1 / SDXL configs picked by :func:`detect_family`; the flag says which (True:
    detected, so weights of other sizes mean a non-standard architecture).
    """
    configs = read_config_metadata(metadata, shapes)
    if configs is not None:
        return configs, False
    family = detect_family(shapes)
    from nodes.diffusion.sd_upscale import is_x4_layout, x4_configs

    if family == "sd2" and is_x4_layout(shapes):
        return x4_configs(), True  # the x4 upscaler: its own UNet, VAE and schedule
    configs = family_configs(family)
    # Inpainting, depth and Instruct-Pix2Pix variants widen conv_in; the rest of the
    # architecture is unchanged.
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None:
        configs["unet"]["in_channels"] = int(conv_in[1])
        if configs["family"] == "sd2" and unet_kind(conv_in[1]) is not None:
            # SD 2's inpainting and depth models are 512-px epsilon fine-tunes of 2-base,
            # not of the 768-px v-prediction 2.1 the shipped configs describe.
            configs["scheduler"]["prediction_type"] = "epsilon"
            configs["unet"]["sample_size"] = 64
    return configs, True


def load_original_state_dict(
    state_dict: StateDict,
    metadata: Mapping[str, str] | None = None,
    *,
    path: Path | None = None,
    empties: EmptyModels | None = None,
) -> LoadedCheckpoint:
    """Build the components from an original (CompVis/LDM) layout state dict.

    Configs as :func:`original_configs` finds them (a file of other sizes than the
    shipped configs' is then a :class:`CheckpointKeyError` saying so). Tensors are
    assigned as they are (no copy, no cast). ``empties``: the models already built
    from the same configs (:class:`EmptyModels`), else they are built here.
    """
    name = f"{path.name}: " if path is not None else ""
    try:
        configs, detected = original_configs(
            {k: tuple(v.shape) for k, v in state_dict.items()}, metadata)
    except CheckpointKeyError:
        raise
    except ValueError as exc:  # the family: named with the file, and what loads it
        raise CheckpointKeyError(
            f"{name}{exc}; single files load as SD 1.x (cross-attention 768), SD 2.x (1024) "
            f"or SDXL (2048), or with their configs in the {CONFIG_METADATA_KEY} metadata "
            "(a file Steerflow saved); load other models from a diffusers folder") from exc
    if empties is None or empties.configs != configs:
        empties = EmptyModels(configs)
    if detected and configs.get("family") == "sd2" and configs["unet"].get("in_channels") == 4 \
            and configs.get("label") is None and not _predicts_v(state_dict):
        # SD 2.0-base / 2.1-base (512 px, epsilon) and their fine-tunes have the 768-px
        # v-prediction 2.1's shapes: the weights tell them apart (after the skeletons were
        # built: only the schedule and the native size differ)
        configs["scheduler"] = {**configs["scheduler"], "prediction_type": "epsilon"}
        configs["unet"] = {**configs["unet"], "sample_size": 64}
    if not detected:
        try:
            return _build_original(state_dict, configs, path=path, empties=empties)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, CheckpointKeyError):
                raise
            raise CheckpointKeyError(
                f"{name}its {CONFIG_METADATA_KEY} metadata does not describe a model these "
                f"weights fit ({type(exc).__name__}: {exc})") from exc
    try:
        loaded = _build_original(state_dict, configs, path=path, empties=empties)
    except CheckpointKeyError as exc:
        # Block sizes, depths and head counts cannot all be read back from tensor
        # shapes (diffusers' single-file loader assumes the published configs too), so
        # say that the file's architecture is not the standard one the shipped config
        # describes rather than leave a bare list of missing keys.
        raise CheckpointKeyError(
            f"{name}a checkpoint without {CONFIG_METADATA_KEY} metadata must have the "
            f"standard {configs.get('label') or FAMILY_NAMES[configs['family']]} "
            f"architecture (its configs are "
            f"taken from nodes/assets/configs), but its weights do not fit it; load "
            f"non-standard sizes from a diffusers folder or a file written with their "
            f"configs ({exc})"
        ) from exc
    size = configs["unet"].get("sample_size")
    if size is not None and loaded.unet.config.sample_size != size:  # a skeleton built before
        loaded.unet.register_to_config(sample_size=size)
    return loaded


#: a bias whose spread tells SD 2.x's v-prediction models from its epsilon ones (ComfyUI's
#: test: a standard deviation above 0.09 is v; the 512-px base models' are below)
_V_PROBE = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"


def _predicts_v(state_dict: StateDict) -> bool:
    """Whether an SD 2.x (4-channel) single file is a v-prediction model (2.0-v / 2.1);
    epsilon (2.0-base / 2.1-base) when the probe is absent, as ComfyUI reads it."""
    probe = state_dict.get(_V_PROBE)
    if probe is None or probe.numel() < 2:
        return False
    if probe.is_meta:  # no values to read (a skeleton): the shipped 2.1 config stands
        return True
    return float(probe.detach().float().std(unbiased=False)) > 0.09


class EmptyModels:
    """The components' models for ``configs``, built without weights (see :func:`_empty`).

    With ``prebuild`` they are built at once (while the weights are still being read);
    else each on :meth:`take`.
    """

    def __init__(self, configs: Mapping[str, Any], *, prebuild: bool = False) -> None:
        self.configs = configs
        self._builders: dict[str, Callable[[], torch.nn.Module]] = {
            "unet": lambda: UNet2DConditionModel.from_config(configs["unet"]),
        }
        if configs.get("vae"):  # null: a file saved without a VAE
            self._builders["vae"] = lambda: AutoencoderKL.from_config(configs["vae"])
        if configs.get("text_encoder"):
            self._builders["text_encoder"] = lambda: CLIPTextModel(
                CLIPTextConfig.from_dict(configs["text_encoder"]))
        if configs.get("text_encoder_2"):
            from transformers import CLIPTextModelWithProjection

            self._builders["text_encoder_2"] = lambda: CLIPTextModelWithProjection(
                CLIPTextConfig.from_dict(configs["text_encoder_2"]))
        self._built = {name: _empty(build) for name, build in self._builders.items()} \
            if prebuild else {}

    def take(self, name: str) -> Any:
        """The model ``name`` (each is handed out once: its weights get assigned)."""
        model = self._built.pop(name, None)
        return model if model is not None else _empty(self._builders[name])


def _build_original(
    state_dict: StateDict, configs: dict[str, Any], *, path: Path | None, empties: EmptyModels
) -> LoadedCheckpoint:
    """The components of an original-layout state dict whose ``configs`` are known."""
    if str(configs.get("family", "")).startswith("sdxl"):
        from nodes.diffusion.sdxl_loading import load_original_sdxl

        return load_original_sdxl(state_dict, configs, path=path, empties=empties)
    # vae / text_encoder null: a file saved without that part (Save Checkpoint of a CLIP
    # or VAE its checkpoint lacked); the part is then absent, as for a file without its keys
    unet_config, vae_config = configs["unet"], configs["vae"] or {}
    text_config = configs["text_encoder"] or {}
    family = configs.get("family") or _family_from_configs(unet_config, text_config)

    unet = _load_strict("unet", empties.take("unet"),
                        convert_ldm_unet_checkpoint(state_dict, unet_config))
    vae = load_vae(state_dict, empties, vae_config, path)
    label = path.name if path is not None else "the checkpoint"
    text_encoder = _build_text_encoder(state_dict, empties.take("text_encoder"), label) \
        if text_config else _no_text_encoder(state_dict, label)
    tokenizer_dir = FAMILY_CONFIG_DIRS.get(family, FAMILY_CONFIG_DIRS["sd1"]) / "tokenizer"
    return LoadedCheckpoint(
        unet=unet,
        vae=vae,
        missing_vae_scale=float(vae_config.get("scaling_factor",
                                               configs.get("latent_scale", 0.18215))),
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(tokenizer_dir),
        scheduler_config=sd_scheduler_config(configs["scheduler"]),
        family=family,
        path=path,
    )


#: where an original-layout checkpoint keeps its VAE
VAE_PREFIX = "first_stage_model."


def load_vae(state_dict: StateDict, empties: EmptyModels, vae_config: Mapping[str, Any],
             path: Path | None) -> AutoencoderKL | None:
    """The checkpoint's VAE, or None for a file that holds none: as in ComfyUI, its MODEL
    and CLIP still load, and its VAE output says what to do when used
    (:class:`nodes.diffusion.handles.MissingVae`)."""
    if not any(k.startswith(VAE_PREFIX) for k in state_dict):
        log.warning("%s holds no VAE (%s* weights): load one with Load VAE",
                    path.name if path is not None else "the checkpoint", VAE_PREFIX)
        return None
    return _load_strict("vae", empties.take("vae"),
                        convert_ldm_vae_checkpoint(state_dict, vae_config))


def _no_text_encoder(state_dict: StateDict, label: str) -> None:
    """None for a file whose metadata says it holds no text encoder (its config null)."""
    if any(k.startswith((_CLIP_PREFIX, _OPEN_CLIP_PREFIX)) for k in state_dict):
        raise CheckpointKeyError(f"{label}: its {CONFIG_METADATA_KEY} metadata has no text "
                                 "encoder config, but the file holds text encoder weights")
    log.warning("%s holds no text encoder: load one with Load CLIP", label)


def _build_text_encoder(state_dict: StateDict, model: CLIPTextModel,
                        label: str = "the checkpoint") -> CLIPTextModel | None:
    """The checkpoint's CLIP text encoder, or None for a file that holds none: as in
    ComfyUI its MODEL and VAE still load, and its CLIP output says what to do when used
    (:func:`nodes.diffusion.handles.missing_text_encoder`)."""
    if any(k.startswith(_CLIP_PREFIX) for k in state_dict):
        converted = convert_ldm_clip_checkpoint(state_dict)
    elif any(k.startswith(_OPEN_CLIP_PREFIX) for k in state_dict):
        converted = convert_open_clip_checkpoint(model, state_dict)
        # CLIPTextModel has no projection head; SD 2.x never uses it.
        converted.pop("text_projection.weight", None)
    else:
        log.warning("%s holds no text encoder (cond_stage_model.* weights): load one with "
                    "Load CLIP", label)
        return None
    # transformers >= 5.6 flattened CLIPTextModel; position_ids is a derived buffer.
    converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    converted.pop("embeddings.position_ids", None)
    return _load_strict("text_encoder", model, converted)


def _empty(build: Callable[[], M]) -> M:
    """Build a model without allocating its weights (they are assigned when loading)."""
    # include_buffers=False (the default) keeps non-persistent buffers real.
    with init_empty_weights():
        return build()


def _load_strict(name: str, model: M, state_dict: Mapping[str, torch.Tensor]) -> M:
    """Load ``state_dict`` into an empty model, naming a few offending keys on mismatch."""
    expected = set(model.state_dict())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise CheckpointKeyError(
            f"{name} weights do not match its config: {len(missing)} missing "
            f"(e.g. {missing[:4]}), {len(unexpected)} unexpected (e.g. {unexpected[:4]})"
        )
    try:
        model.load_state_dict(dict(state_dict), strict=True, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointKeyError(f"{name} weights do not match its config: {exc}") from exc
    return model


def _load_folder(path: Path, *, allow_pickle: bool, dtype: torch.dtype) -> LoadedCheckpoint:
    """Load a diffusers-format pipeline folder (``model_index.json`` + component subfolders)."""
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ValueError(f"{path} is a folder but not a diffusers model (no model_index.json)")
    index = json.loads(index_file.read_text(encoding="utf-8"))
    if "text_encoder_2" in index and "unet" in index:
        from nodes.diffusion.sdxl_loading import load_sdxl_folder

        return load_sdxl_folder(path, index, allow_pickle=allow_pickle, dtype=dtype)
    if "unet" not in index:
        raise ValueError(
            f"{path.name}: only Stable Diffusion 1.x / 2.x / SDXL pipelines are supported "
            f"(found {index.get('_class_name', 'unknown')})"
        )
    for sub in ("unet", "vae", "text_encoder"):
        _check_folder_weights(path / sub, allow_pickle=allow_pickle)
    # Pass use_safetensors=True unless opted in, so diffusers/transformers never unpickle.
    safetensors_only = True if not allow_pickle else None
    common = {"local_files_only": True, "use_safetensors": safetensors_only}
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype,
                                                **common, **weights_variant(path / "unet"))
    # Read the VAE in fp32 for an fp16 model: vae_dtype may keep it so (force_upcast).
    vae_read = torch.float32 if dtype == torch.float16 else dtype
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=vae_read, **common,
                                        **weights_variant(path / "vae"))
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", dtype=dtype, **common,
                                                 **weights_variant(path / "text_encoder"))
    family = _family_from_configs(dict(unet.config), text_encoder.config.to_dict())
    tokenizer = folder_tokenizer(path / "tokenizer", FAMILY_CONFIG_DIRS[family] / "tokenizer")
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    if scheduler_file.is_file():
        scheduler_config = json.loads(scheduler_file.read_text(encoding="utf-8"))
    else:
        scheduler_config = family_configs(family)["scheduler"]
    if not family.startswith("sdxl"):
        scheduler_config = sd_scheduler_config(scheduler_config)
    return LoadedCheckpoint(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        family=family,
        path=path,
    )


def sd_scheduler_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """An SD 1.x / 2.x scheduler config as diffusers' Stable Diffusion pipelines correct
    it when they load: ``steps_offset`` 1 and ``clip_sample`` off (an old config's
    ``clip_sample: true`` clamped every x̂₀ of DDIM, DDPM, Heun and LCM to [-1, 1];
    ComfyUI never clips either)."""
    fixed = dict(config)
    fixed["steps_offset"] = 1  # also where the file leaves it to a default of 0
    if fixed.get("clip_sample") is True:
        fixed["clip_sample"] = False
    return fixed


def weights_variant(folder: Path) -> dict[str, str]:
    """``{"variant": "fp16"}`` for a component folder holding only a variant's weights
    (``diffusion_pytorch_model.fp16.safetensors``, as diffusers saves with
    ``variant="fp16"``), else ``{}``: what ``from_pretrained`` needs to find them."""
    names = [p.name for p in folder.glob("*.safetensors")]
    plain = [n for n in names if "." not in n.removesuffix(".safetensors")]
    if plain or not names:
        return {}
    variants = sorted({n.removesuffix(".safetensors").rsplit(".", 1)[1].split("-")[0]
                       for n in names})
    return {"variant": "fp16" if "fp16" in variants else variants[0]}


def damaged_component(path: Path, exc: BaseException) -> None:
    """Raise the project's error for a truncated or corrupt ``*.safetensors`` file among
    the diffusers folder ``path``'s components, when one is why loading it failed with
    ``exc`` (diffusers says only "Unable to load weights from checkpoint file"); return
    when every file is whole, so ``exc`` stands."""
    from nodes.diffusion.safetensors_io import WeightsFileError, read_header

    if isinstance(exc, WeightsFileError):
        return
    for file in sorted(path.glob("*/*.safetensors")):
        try:
            read_header(file)  # the library checks that the data covers every tensor
        except OSError:
            continue  # unreadable, not damaged: diffusers' own error says more
        except (WeightsFileError, ValueError) as bad:
            raise WeightsFileError(f"{path.name}: {bad}") from None


def _check_folder_weights(folder: Path, *, allow_pickle: bool) -> None:
    if not folder.is_dir():
        raise ValueError(f"diffusers model is missing its {folder.name}/ folder: {folder}")
    if any(folder.glob("*.safetensors")):
        return
    if any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir()):
        if allow_pickle:
            return
        raise UnsafeCheckpointError(
            f"{folder} has only pickle-based weights; convert them to .safetensors or opt in "
            "with allow_pickle=True"
        )
    raise ValueError(f"no weights found in {folder}")
