"""A tiny, randomly initialised GLIGEN for the tiny SD model (tests and benchmarks).

The real diffusers classes: a gated copy of ``steerflow-tiny``'s UNet
(``UNet2DConditionModel(attention_type="gated")``, ``nodes/diffusion/tiny.py``) whose base
weights are the tiny model's and whose GLIGEN layers (a ``fuser`` per transformer block,
the ``position_net``) are random. Their gates (``alpha_attn``/``alpha_dense``, 0 in a
fresh model, which would switch GLIGEN off) and the position net's null tokens are drawn
too, so the layers change the image. The gated UNet is what diffusers'
StableDiffusionGLIGENPipeline runs; the GLIGEN file holds only the added layers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from nodes.diffusion.gligen import FUSER, save_gligen
from nodes.diffusion.original_layout import unet_key_map
from nodes.diffusion.tiny import UNET_CONFIG, _seeded, build_tiny_pipeline

TINY_GLIGEN_NAME = "steerflow-tiny-gligen"


def build_tiny_gligen_unet(seed: int = 0, base_seed: int = 0) -> UNet2DConditionModel:
    """The tiny model (``base_seed``) with random GLIGEN layers (``seed``), float32, eval."""
    unet = _seeded(seed + 30, lambda: UNet2DConditionModel(**UNET_CONFIG,
                                                           attention_type="gated"))
    base = build_tiny_pipeline(base_seed).unet.state_dict()
    missing, unexpected = unet.load_state_dict(base, strict=False)
    assert not unexpected and all(FUSER in k or k.startswith("position_net.") for k in missing)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 31)
        for name, param in unet.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                param.copy_(torch.empty(()).uniform_(0.5, 1.5))
            elif name.startswith("position_net.null_"):
                param.copy_(torch.randn_like(param))
    return unet.eval()


def to_original_layout(state: dict[str, torch.Tensor], unet: UNet2DConditionModel
                       ) -> dict[str, torch.Tensor]:
    """A GLIGEN file's keys in ComfyUI's / the original repository's layout
    (``input_blocks.<i>.1.transformer_blocks.<j>.fuser.*``), for tests."""
    mapping = unet_key_map(dict(unet.config), {n for n, _ in unet.named_parameters()})
    prefixes = {diff: orig for diff, (orig, _) in mapping.items() if ".attentions." in diff}
    out = {}
    for key, value in state.items():
        head = next((p for p in prefixes if key.startswith(p)), None)
        out[prefixes[head] + key[len(head):] if head else key] = value
    return out


def save_tiny_gligen(target_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny GLIGEN under ``target_dir``: ``single_file`` (Steerflow's GLIGEN file)
    and ``unet`` (the whole gated UNet as a diffusers folder, what the pipeline loads)."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    unet = build_tiny_gligen_unet(seed)
    single = target_dir / f"{TINY_GLIGEN_NAME}.safetensors"
    folder = target_dir / f"{TINY_GLIGEN_NAME}-unet"
    save_gligen(single, unet)
    unet.save_pretrained(folder, safe_serialization=True)
    return {"single_file": single, "unet": folder}
