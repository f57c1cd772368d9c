"""A tiny, randomly initialised ControlNet for the tiny SD model (tests and offline demos).

Built with ``ControlNetModel.from_unet`` on a UNet of the tiny model's config, so
its residuals fit ``steerflow-tiny``. A freshly built ControlNet has zero
convolutions (``zero_convs``, ``middle_block_out``, the hint encoder's last conv)
and would change nothing; those are re-initialised so tests can see its effect.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import ControlNetModel, UNet2DConditionModel

from nodes.diffusion.builtin_models import TINY_CONTROLNET_NAME
from nodes.diffusion.controlnet_loading import save_original_controlnet
from nodes.diffusion.tiny import UNET_CONFIG, _seeded, ensure_built

# Four entries = three stride-2 convolutions: a 64x64 control image meets the
# 8x8 latent, the same 8x factor as SD's VAE (and the original layout's
# input_hint_block.0..14 numbering).
HINT_CHANNELS = (8, 16, 32, 32)


def build_tiny_controlnet(seed: int = 0) -> ControlNetModel:
    """Build the tiny ControlNet on CPU in float32; same seed, same weights."""
    unet = _seeded(seed + 10, lambda: UNet2DConditionModel(**UNET_CONFIG))

    def build() -> ControlNetModel:
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
        # Undo the zero initialisation so the ControlNet has an effect at all.
        zeroed = [*net.controlnet_down_blocks, net.controlnet_mid_block,
                  net.controlnet_cond_embedding.conv_out]
        for conv in zeroed:
            conv.reset_parameters()
        return net

    net = _seeded(seed + 11, build)
    return net.eval()


def save_tiny_controlnet(target_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny ControlNet as a diffusers folder and as one original-layout file.

    Returns ``{"diffusers": <target>/steerflow-tiny-controlnet, "single_file":
    <target>/steerflow-tiny-controlnet.safetensors}``; the single file has
    ``control_model.*`` keys and its diffusers config in the metadata.
    """
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    net = build_tiny_controlnet(seed)
    folder = target_dir / TINY_CONTROLNET_NAME
    single = target_dir / f"{TINY_CONTROLNET_NAME}.safetensors"
    net.save_pretrained(folder, safe_serialization=True)
    save_original_controlnet(single, net)
    return {"diffusers": folder, "single_file": single}


def ensure_default_controlnet(models_dir: Path) -> Path:
    """Make sure the tiny ControlNet exists under ``models_dir/controlnet``; return its folder."""
    return ensure_built(models_dir, "controlnet", TINY_CONTROLNET_NAME, "config.json",
                        save_tiny_controlnet)
