"""SDXL base and refiner checkpoints: diffusers folders and original-layout single files.

An original (Stability ``sgm``) SDXL file keeps the UNet under ``model.diffusion_model.``
(the size/pooled embedding as ``label_emb.0.*``), the VAE under ``first_stage_model.``
and its text encoders under ``conditioner.embedders.``: the base has CLIP-L at ``0``
(transformers layout, ``.transformer.``) and OpenCLIP bigG at ``1`` (OpenCLIP layout,
``.model.``); the refiner has only bigG, at ``0``. That is how the family is told from
the weights; configs then come from the file's ``steerflow.config`` metadata or from the
SDXL configs shipped in ``nodes/assets/configs``. diffusers' single-file converters do
the renaming, offline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from nodes.diffusion.continuous import LATENT_FORMAT_KEY, is_continuous, sampling_from_keys
from nodes.diffusion.loading import (
    FAMILY_CONFIG_DIRS,
    CheckpointKeyError,
    EmptyModels,
    LoadedCheckpoint,
    _load_strict,
    family_configs,
    load_vae,
)
from nodes.diffusion.original_layout import (
    CONFIG_METADATA_KEY,
    UNET_PREFIX,
    _config_dict,
    unet_to_original,
    vae_to_original,
)
from nodes.diffusion.tokenizer import folder_tokenizer, load_clip_tokenizer

StateDict = dict[str, torch.Tensor]

EMBEDDERS = "conditioner.embedders."
BASE_CLIP_L = EMBEDDERS + "0.transformer."
BASE_BIG_G = EMBEDDERS + "1.model."
REFINER_BIG_G = EMBEDDERS + "0.model."


def detect_sdxl_family(shapes: Mapping[str, Sequence[int]]) -> str:
    """"sdxl" (CLIP-L and bigG) or "sdxl_refiner" (bigG alone) from an original file's keys."""
    if not any(k.startswith(UNET_PREFIX) for k in shapes):
        raise ValueError(f"not a Stable Diffusion checkpoint: no {UNET_PREFIX}* weights")
    if any(k.startswith(BASE_BIG_G) for k in shapes) and any(
            k.startswith(BASE_CLIP_L) for k in shapes):
        return "sdxl"
    if any(k.startswith(REFINER_BIG_G) for k in shapes):
        return "sdxl_refiner"
    raise ValueError("an SDXL checkpoint (conditioner.embedders.*) without the text encoders "
                     "of the base model (CLIP-L + OpenCLIP bigG) or the refiner (bigG)")


# --- loading ---------------------------------------------------------------------------------

def load_original_sdxl(state_dict: StateDict, configs: Mapping[str, Any], *,
                       path: Path | None = None, empties: EmptyModels | None = None
                       ) -> LoadedCheckpoint:
    """Build an SDXL checkpoint's components from an original-layout state dict
    (``empties``: the models already built for ``configs``, see ``EmptyModels``)."""
    empties = empties if empties is not None else EmptyModels(configs)
    family = str(configs["family"])
    unet_config, vae_config = configs["unet"], configs["vae"]
    unet = _load_strict("unet", empties.take("unet"),
                        convert_ldm_unet_checkpoint(state_dict, unet_config))
    vae = load_vae(state_dict, empties, vae_config, path)
    refiner = family == "sdxl_refiner"
    text_encoder = None
    if not refiner:
        text_encoder = _load_clip_l(state_dict, empties.take("text_encoder"))
    text_encoder_2 = _load_big_g(state_dict, empties.take("text_encoder_2"),
                                 REFINER_BIG_G if refiner else BASE_BIG_G)
    tokenizers = FAMILY_CONFIG_DIRS[family]
    # ComfyUI's markers: Playground v2.5 (edm_mean), CosXL (edm_vpred.*), v_pred (+ ztsnr)
    scheduler_config = sampling_from_keys(
        state_dict, lambda key: state_dict[key].flatten()[0].item(), dict(configs["scheduler"]))
    return LoadedCheckpoint(
        unet=unet, vae=vae, text_encoder=text_encoder,
        missing_vae_scale=float(vae_config.get("scaling_factor", 0.13025)),
        tokenizer=None if refiner else load_clip_tokenizer(tokenizers / "tokenizer"),
        scheduler_config=scheduler_config, family=family, path=path,
        text_encoder_2=text_encoder_2,
        tokenizer_2=load_clip_tokenizer(tokenizers / "tokenizer_2"))


def _load_clip_l(state_dict: StateDict, model: CLIPTextModel) -> CLIPTextModel:
    if not any(k.startswith(BASE_CLIP_L) for k in state_dict):
        raise CheckpointKeyError(f"SDXL checkpoint has no CLIP-L weights ({BASE_CLIP_L}*)")
    converted = {k: v for k, v in convert_ldm_clip_checkpoint(state_dict).items()
                 if not k.startswith(EMBEDDERS)}
    # transformers >= 5.6 flattened CLIPTextModel; position_ids is a derived buffer.
    converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    converted.pop("embeddings.position_ids", None)
    return _load_strict("text_encoder", model, converted)


def _load_big_g(state_dict: StateDict, model: CLIPTextModelWithProjection,
                prefix: str) -> CLIPTextModelWithProjection:
    if not any(k.startswith(prefix) for k in state_dict):
        raise CheckpointKeyError(f"SDXL checkpoint has no OpenCLIP bigG weights ({prefix}*)")
    converted = convert_open_clip_checkpoint(model, state_dict, prefix=prefix)
    converted.pop("text_model.embeddings.position_ids", None)
    return _load_strict("text_encoder_2", model, converted)


def load_sdxl_folder(path: Path, index: Mapping[str, Any], *, allow_pickle: bool,
                     dtype: torch.dtype) -> LoadedCheckpoint:
    """Load a diffusers SDXL pipeline folder (base: both encoders; refiner: bigG only)."""
    from nodes.diffusion.loading import _check_folder_weights, weights_variant

    refiner = _component(index, "text_encoder") is None
    family = "sdxl_refiner" if refiner else "sdxl"
    subs = ["unet", "vae", "text_encoder_2"] + ([] if refiner else ["text_encoder"])
    for sub in subs:
        _check_folder_weights(path / sub, allow_pickle=allow_pickle)
    common = {"local_files_only": True, "use_safetensors": True if not allow_pickle else None}
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype,
                                                **common, **weights_variant(path / "unet"))
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **common,
                                        **weights_variant(path / "vae"))
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
        path / "text_encoder_2", dtype=dtype, **common,
        **weights_variant(path / "text_encoder_2"))
    text_encoder = None if refiner else CLIPTextModel.from_pretrained(
        path / "text_encoder", dtype=dtype, **common, **weights_variant(path / "text_encoder"))
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler_config = (json.loads(scheduler_file.read_text(encoding="utf-8"))
                        if scheduler_file.is_file() else family_configs(family)["scheduler"])
    scheduler_config = with_vae_latent_format(scheduler_config, vae)
    return LoadedCheckpoint(
        unet=unet, vae=vae, text_encoder=text_encoder,
        tokenizer=None if refiner else _tokenizer(path, "tokenizer", family),
        scheduler_config=scheduler_config, family=family, path=path,
        text_encoder_2=text_encoder_2, tokenizer_2=_tokenizer(path, "tokenizer_2", family))


def with_vae_latent_format(scheduler_config: dict[str, Any], vae: Any) -> dict[str, Any]:
    """A continuous model's config with the latent statistics its VAE's config carries
    (Playground v2.5's ``latents_mean`` / ``latents_std``, applied around sampling as
    ``StableDiffusionXLPipeline`` applies them around decoding)."""
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is None or std is None or not is_continuous(scheduler_config):
        return scheduler_config
    return {**scheduler_config, LATENT_FORMAT_KEY: {
        "mean": [float(v) for v in mean], "std": [float(v) for v in std],
        "scale": float(vae.config.scaling_factor)}}


def _component(index: Mapping[str, Any], name: str) -> Any:
    entry = index.get(name)
    return None if not entry or entry == [None, None] else entry


def _tokenizer(path: Path, sub: str, family: str) -> CLIPTokenizer:
    return folder_tokenizer(path / sub, FAMILY_CONFIG_DIRS[family] / sub)


# --- writing single files (tests, exports) ------------------------------------------------------

def open_clip_to_original(state_dict: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """transformers CLIPTextModelWithProjection weights -> OpenCLIP layout under ``prefix``
    (what diffusers' ``convert_open_clip_checkpoint`` reads back)."""
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    out: StateDict = {
        prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": sd.pop("final_layer_norm.bias"),
        prefix + "text_projection": sd.pop("text_projection.weight").T,
    }
    sd.pop("embeddings.position_ids", None)
    renames = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
               "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    layers = {int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")}
    for i in sorted(layers):
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")])
            for old, new in renames.items():
                out[f"{dst}{new}.{kind}"] = sd.pop(f"{src}{old}.{kind}")
    if sd:
        raise ValueError(f"bigG weights without an OpenCLIP name: {sorted(sd)[:5]}")
    return out


def save_original_sdxl_checkpoint(path: Path, *, unet: torch.nn.Module, vae: torch.nn.Module,
                                  text_encoder: torch.nn.Module | None,
                                  text_encoder_2: torch.nn.Module,
                                  scheduler_config: Mapping[str, Any]) -> None:
    """Write an SDXL base (``text_encoder`` given) or refiner checkpoint as one original-layout
    ``.safetensors`` file, its configs in the metadata."""
    refiner = text_encoder is None
    unet_cfg, vae_cfg = _config_dict(unet), _config_dict(vae)
    tensors: StateDict = {}
    tensors.update(unet_to_original(unet.state_dict(), unet_cfg))
    tensors.update(vae_to_original(vae.state_dict(), vae_cfg))
    if text_encoder is not None:
        tensors.update({BASE_CLIP_L + "text_model." + k.removeprefix("text_model."): v
                        for k, v in text_encoder.state_dict().items()})
    tensors.update(open_clip_to_original(text_encoder_2.state_dict(),
                                         REFINER_BIG_G if refiner else BASE_BIG_G))
    configs = {
        "family": "sdxl_refiner" if refiner else "sdxl",
        "unet": unet_cfg, "vae": vae_cfg,
        "text_encoder": None if text_encoder is None else _config_dict(text_encoder),
        "text_encoder_2": _config_dict(text_encoder_2),
        "scheduler": json.loads(json.dumps(dict(scheduler_config), default=list)),
    }
    configs["scheduler"].pop("_use_default_values", None)
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={
        "format": "pt", CONFIG_METADATA_KEY: json.dumps(configs, sort_keys=True)})

