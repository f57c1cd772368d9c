"""A tiny, randomly initialised PhotoMaker v1 ID encoder for tests: the real layout at toy
sizes, fitting the tiny SDXL (``tiny_sdxl``: CLIP-L 32 wide, bigG 48, prompt tokens 80).

The image tower is 128 wide (2 heads of 64, as the loader infers), 2 layers, 32 px images
in 8 px patches (not CLIP's 224/14, so code that assumes those fails); its projections
give 32 + 48 = 80. LayerNorms get random gains and biases so every term of the math shows
in tests. A few ``lora_weights`` tensors ride along, as in ``photomaker-v1.bin`` (the
loader must ignore them). Weights depend only on the seed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nodes.diffusion.photomaker import PhotoMakerIDEncoder
from nodes.diffusion.tiny import _seeded
from nodes.diffusion.tiny_sdxl import BIG_G_WIDTH, CLIP_L_WIDTH

TINY_PHOTOMAKER_NAME = "steerflow-tiny-photomaker"
TINY_PHOTOMAKER_VISION: dict[str, Any] = {
    "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2,
    "num_hidden_layers": 2, "image_size": 32, "patch_size": 8, "num_channels": 3,
    "hidden_act": "quick_gelu", "projection_dim": CLIP_L_WIDTH,
}
FORMATS = ("safetensors", "pickle", "plain")


def build_tiny_photomaker(seed: int = 0) -> PhotoMakerIDEncoder:
    """The tiny ID encoder on CPU in float32, in eval mode."""
    from transformers import CLIPVisionConfig

    def build() -> PhotoMakerIDEncoder:
        model = PhotoMakerIDEncoder(CLIPVisionConfig(**TINY_PHOTOMAKER_VISION), BIG_G_WIDTH)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.copy_(1 + 0.2 * torch.randn_like(module.weight))
                elif isinstance(module, torch.nn.Linear) and module.bias is not None:
                    module.bias.copy_(0.05 * torch.randn_like(module.bias))
                if isinstance(module, torch.nn.LayerNorm):
                    module.bias.copy_(0.1 * torch.randn_like(module.bias))
        return model.eval()

    return _seeded(seed + 70, build)


def _lora_weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    name = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    return {f"{name}.lora.down.weight": torch.randn(4, 64, generator=generator),
            f"{name}.lora.up.weight": torch.randn(64, 4, generator=generator)}


def save_tiny_photomaker(target_dir: Path, seed: int = 0, *, fmt: str = "safetensors"
                         ) -> Path:
    """Write the tiny PhotoMaker into ``target_dir`` (a ``photomaker`` models folder):

    ``"safetensors"``: the pipeline's flat ``id_encoder.*`` / ``lora_weights.*`` keys;
    ``"pickle"``: the original ``.bin`` (``{"id_encoder": {...}, "lora_weights": {...}}``);
    ``"plain"``: a ``.safetensors`` with the ID encoder's keys unprefixed (ComfyUI's
    converted files). Returns the file."""
    from nodes.diffusion.train_common import save_atomic

    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    target_dir = Path(target_dir)
    state = {k: v.detach().clone() for k, v in build_tiny_photomaker(seed).state_dict().items()}
    if fmt == "plain":
        path = target_dir / f"{TINY_PHOTOMAKER_NAME}-plain.safetensors"
        save_atomic(state, {"format": "pt"}, path)
        return path
    if fmt == "safetensors":
        flat = {f"id_encoder.{k}": v for k, v in state.items()}
        flat.update({f"lora_weights.{k}": v for k, v in _lora_weights().items()})
        path = target_dir / f"{TINY_PHOTOMAKER_NAME}.safetensors"
        save_atomic(flat, {"format": "pt"}, path)
        return path
    path = target_dir / f"{TINY_PHOTOMAKER_NAME}.bin"
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({"id_encoder": state, "lora_weights": _lora_weights()}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
