"""Package trained stages as the engine loads models: diffusers folders + single files.

``<out>/export`` is laid out as a models folder: ``checkpoints/steerflow-shapes/``
(a ``StableDiffusionPipeline`` folder) and ``checkpoints/steerflow-shapes.safetensors``
(original layout, configs in the metadata, via ``save_original_checkpoint``), and
the same pair under ``controlnet/`` for the ControlNet and the T2I-Adapter when their
stages have run (and ``checkpoints/steerflow-shapes-ip2p`` for Instruct-Pix2Pix).
They load with ``nodes.diffusion.loading.load_components`` /
``controlnet_loading.load_control_model``, and a ``Session(models_dir=<out>/export)``
finds them by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    ControlNetModel,
    PNDMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    T2IAdapter,
    UNet2DConditionModel,
)
from safetensors import safe_open
from safetensors.torch import save_file

from nodes.diffusion.builtin_models import SHAPES_IP2P_NAME, SHAPES_IP2P_UNET
from nodes.diffusion.controlnet_loading import save_original_adapter, save_original_controlnet
from nodes.diffusion.loading import load_components
from nodes.diffusion.original_layout import (
    CONFIG_METADATA_KEY,
    UNET_PREFIX,
    read_config_metadata,
    save_original_checkpoint,
)
from nodes.diffusion.shapes_model import SHAPES_CONTROLNET_NAME as CONTROLNET_NAME
from nodes.diffusion.shapes_model import SHAPES_NAME as MODEL_NAME
from nodes.diffusion.shapes_model import WEIGHTS_DIR
from nodes.diffusion.tokenizer import load_clip_tokenizer
from training.models import SCHEDULER_CONFIG
from training.train import StageOptions, load_text_encoder, load_unet, load_vae
from training.train_instruct_pix2pix import STAGE as IP2P_STAGE
from training.train_lora import LORA_NAME
from training.train_t2i_adapter import ADAPTER_NAME
from training.train_t2i_adapter import STAGE as ADAPTER_STAGE

EXAMPLE_LORAS = Path(__file__).resolve().parents[1] / "workflows" / "assets" / "loras"


def _contiguous(module: torch.nn.Module) -> None:
    # EMA copies and transposed views can leave non-contiguous weights; safetensors refuses them.
    with torch.no_grad():
        for p in module.parameters():
            if not p.is_contiguous():
                p.data = p.data.contiguous()


def export_model(out_dir: Path, target: Path | None = None) -> dict[str, Path]:
    """Export the run in ``out_dir`` into the models folder ``target`` (default
    ``<out_dir>/export``); returns the written paths by kind."""
    opts = StageOptions(out_dir=Path(out_dir))
    target = Path(target) if target is not None else Path(out_dir) / "export"
    (target / "checkpoints").mkdir(parents=True, exist_ok=True)
    vae, text_encoder, unet = load_vae(opts), load_text_encoder(opts), load_unet(opts)
    for module in (vae, text_encoder, unet):
        _contiguous(module)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=load_clip_tokenizer(), unet=unet,
        scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    checkpoints, controlnets = target / "checkpoints", target / "controlnet"
    paths = {"diffusers": checkpoints / MODEL_NAME,
             "single_file": checkpoints / f"{MODEL_NAME}.safetensors"}
    pipe.save_pretrained(paths["diffusers"], safe_serialization=True)
    save_original_checkpoint(paths["single_file"], unet=unet, vae=vae,
                             text_encoder=text_encoder,
                             scheduler_config=dict(pipe.scheduler.config), family="sd1")
    controlnet_dir = opts.final("controlnet")
    if (controlnet_dir / "config.json").is_file():
        net = ControlNetModel.from_pretrained(controlnet_dir, local_files_only=True).eval()
        _contiguous(net)
        controlnets.mkdir(exist_ok=True)
        paths["controlnet"] = controlnets / CONTROLNET_NAME
        paths["controlnet_single_file"] = controlnets / f"{CONTROLNET_NAME}.safetensors"
        net.save_pretrained(paths["controlnet"], safe_serialization=True)
        save_original_controlnet(paths["controlnet_single_file"], net)
    adapter_dir = opts.final(ADAPTER_STAGE)
    if (adapter_dir / "config.json").is_file():
        adapter = T2IAdapter.from_pretrained(adapter_dir, local_files_only=True).eval()
        _contiguous(adapter)
        controlnets.mkdir(exist_ok=True)
        paths["adapter"] = controlnets / ADAPTER_NAME
        paths["adapter_single_file"] = controlnets / f"{ADAPTER_NAME}.safetensors"
        adapter.save_pretrained(paths["adapter"], safe_serialization=True)
        save_original_adapter(paths["adapter_single_file"], adapter)
    if (opts.final(IP2P_STAGE) / "config.json").is_file():
        paths.update(export_instruct_pix2pix(out_dir, target, base=paths["diffusers"]))
    return paths


def export_instruct_pix2pix(out_dir: Path, target: Path, base: Path | None = None
                            ) -> dict[str, Path]:
    """``steerflow-shapes-ip2p`` into the models folder ``target``: the run's Instruct-Pix2Pix
    UNet with the VAE, text encoder and scheduler of ``base`` (default: the model it was
    trained from), as a pipeline folder and a single file."""
    from training.train_instruct_pix2pix import trained_base

    unet = UNet2DConditionModel.from_pretrained(Path(out_dir) / IP2P_STAGE,
                                                local_files_only=True).eval()
    parts = load_components(base if base is not None else trained_base(out_dir))
    for module in (unet, parts.vae, parts.text_encoder):
        _contiguous(module)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=unet,
        scheduler=PNDMScheduler.from_config(parts.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    checkpoints = Path(target) / "checkpoints"
    paths = {"ip2p": checkpoints / SHAPES_IP2P_NAME,
             "ip2p_single_file": checkpoints / f"{SHAPES_IP2P_NAME}.safetensors"}
    pipe.save_pretrained(paths["ip2p"], safe_serialization=True)
    save_original_checkpoint(paths["ip2p_single_file"], unet=unet, vae=parts.vae,
                             text_encoder=parts.text_encoder,
                             scheduler_config=dict(pipe.scheduler.config), family="sd1")
    return paths


def save_unet_half(src: Path, dst: Path) -> Path:
    """The UNet of an original-layout single file alone, in float16, its config in the
    metadata (what ships of an Instruct-Pix2Pix model: the rest is steerflow-shapes')."""
    with safe_open(str(src), framework="pt") as f:
        configs = read_config_metadata(f.metadata())
        if configs is None:
            raise ValueError(f"{src} has no {CONFIG_METADATA_KEY} metadata")
        tensors = {k: f.get_tensor(k).half() for k in f.keys()  # noqa: SIM118
                   if k.startswith(UNET_PREFIX)}
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps({"unet": configs["unet"]})}
    save_file(tensors, str(dst), metadata=metadata)
    return Path(dst)


def disk_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def save_half_precision(src: Path, dst: Path) -> None:
    """Copy a safetensors file with its floating tensors in float16, metadata kept."""
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
        tensors = {}
        for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
            t = f.get_tensor(key)
            tensors[key] = t.half() if t.is_floating_point() else t
    save_file(tensors, str(dst), metadata=metadata)


def ship_weights(export_dir: Path, weights_dir: Path = WEIGHTS_DIR) -> list[Path]:
    """Copy the exported single files, in float16, to where the repository ships them
    (``nodes/assets/weights``); set-up derives the diffusers folders from them."""
    export_dir, weights_dir = Path(export_dir), Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    shipped = []
    for role, name in (("checkpoints", MODEL_NAME), ("controlnet", CONTROLNET_NAME),
                       ("controlnet", ADAPTER_NAME)):
        src = export_dir / role / f"{name}.safetensors"
        if src.is_file():
            shipped.append(weights_dir / src.name)
            save_half_precision(src, shipped[-1])
    ip2p = export_dir / "checkpoints" / f"{SHAPES_IP2P_NAME}.safetensors"
    if ip2p.is_file():
        shipped.append(save_unet_half(ip2p, weights_dir / f"{SHAPES_IP2P_UNET}.safetensors"))
    return shipped


def ship_lora(out_dir: Path, assets_dir: Path = EXAMPLE_LORAS) -> Path | None:
    """Copy the example LoRA (``train_lora``), in float16, beside the example workflows;
    set-up copies it into models/loras."""
    src = Path(out_dir) / "lora" / f"{LORA_NAME}.safetensors"
    if not src.is_file():
        return None
    Path(assets_dir).mkdir(parents=True, exist_ok=True)
    save_half_precision(src, Path(assets_dir) / src.name)
    return Path(assets_dir) / src.name
