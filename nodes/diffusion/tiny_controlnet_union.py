"""A tiny, randomly initialised ControlNet-Union for the tiny SDXL base (tests, offline demos).

Built like xinsir's ControlNet++: ``ControlNetUnionModel.from_unet`` on a UNet of the tiny
SDXL config, its condition transformer as wide as the UNet's first block (32 here, 320 in
SDXL), six control types (``controlnet-union-sdxl-1.0``: no tile or repaint). The zero
initialised layers (``zero_convs``, the hint encoder's last conv, ``spatial_ch_projs``) are
re-initialised so each part has an effect.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import ControlNetUnionModel, UNet2DConditionModel

from nodes.diffusion.controlnet_union import save_union_file
from nodes.diffusion.tiny import _seeded
from nodes.diffusion.tiny_controlnet import HINT_CHANNELS
from nodes.diffusion.tiny_sdxl import UNET_CONFIG

TINY_UNION_NAME = "steerflow-tiny-sdxl-union"
TINY_UNION_TYPES = 6


def build_tiny_union(seed: int = 0, num_control_type: int = TINY_UNION_TYPES
                     ) -> ControlNetUnionModel:
    """The tiny union ControlNet on CPU in float32; same seed, same weights."""
    unet = _seeded(seed + 30, lambda: UNet2DConditionModel(**UNET_CONFIG))
    width = int(UNET_CONFIG["block_out_channels"][0])  # type: ignore[index]

    def build() -> ControlNetUnionModel:
        shape = ControlNetUnionModel.from_unet(
            unet, conditioning_embedding_out_channels=HINT_CHANNELS, load_weights_from_unet=False)
        config = {k: v for k, v in shape.config.items() if not k.startswith("_")}
        net = ControlNetUnionModel.from_config({
            **config, "num_control_type": num_control_type, "num_trans_channel": width,
            "num_trans_head": 8, "num_trans_layer": 1, "num_proj_channel": width})
        for layer in (*net.controlnet_down_blocks, net.controlnet_mid_block,
                      net.controlnet_cond_embedding.conv_out, net.spatial_ch_projs):
            layer.reset_parameters()
        return net

    return _seeded(seed + 31, build).eval()


def save_tiny_union(target_dir: Path, seed: int = 0, *, with_config: bool = True
                    ) -> dict[str, Path]:
    """Write the tiny union as a diffusers folder and one single file in xinsir's layout
    (``<name>`` and ``<name>.safetensors``, Steerflow's config metadata unless
    ``with_config`` is off)."""
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    net = build_tiny_union(seed)
    folder, single = target / TINY_UNION_NAME, target / f"{TINY_UNION_NAME}.safetensors"
    net.save_pretrained(folder, safe_serialization=True)
    save_union_file(single, net, with_config=with_config)
    return {"diffusers": folder, "single_file": single}
