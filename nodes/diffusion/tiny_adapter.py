"""Tiny, randomly initialised T2I-Adapters for the tiny SD model (tests and offline demos).

Real diffusers ``T2IAdapter`` classes at sizes that fit ``steerflow-tiny``'s UNet
(``nodes/diffusion/tiny.py``: down blocks of 32 and 64 channels, 8x VAE): a full
adapter gives a 32-channel feature at latent size and a 64-channel one at half of
it; a light adapter gives the same two plus a third, smaller one the UNet ignores
(diffusers' light adapter always has one level more than its ``channels``).
"""

from __future__ import annotations

from pathlib import Path

from diffusers import T2IAdapter

from nodes.diffusion.controlnet_loading import save_original_adapter
from nodes.diffusion.tiny import _seeded

TINY_ADAPTER_NAME = "steerflow-tiny-adapter"
TINY_LIGHT_ADAPTER_NAME = "steerflow-tiny-adapter-light"
ADAPTER_TYPES = {"full_adapter": TINY_ADAPTER_NAME, "light_adapter": TINY_LIGHT_ADAPTER_NAME}


def build_tiny_adapter(adapter_type: str = "full_adapter", seed: int = 0,
                       channels: tuple[int, ...] = (32, 64), in_channels: int = 3
                       ) -> T2IAdapter:
    """Build a tiny adapter on CPU in float32; same arguments, same weights."""
    return _seeded(seed + 20, lambda: T2IAdapter(
        in_channels=in_channels, channels=list(channels), num_res_blocks=2,
        downscale_factor=8, adapter_type=adapter_type)).eval()


def save_tiny_adapter(target_dir: Path, adapter_type: str = "full_adapter", seed: int = 0
                      ) -> dict[str, Path]:
    """Write a tiny adapter as a diffusers folder and as one original-layout file.

    Returns ``{"diffusers": <target>/<name>, "single_file": <target>/<name>.safetensors}``;
    the single file has TencentARC's keys and its diffusers config in the metadata.
    """
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    adapter = build_tiny_adapter(adapter_type, seed)
    name = ADAPTER_TYPES[adapter_type]
    folder, single = target_dir / name, target_dir / f"{name}.safetensors"
    adapter.save_pretrained(folder, safe_serialization=True)
    save_original_adapter(single, adapter)
    return {"diffusers": folder, "single_file": single}
