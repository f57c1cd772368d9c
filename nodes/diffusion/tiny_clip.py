"""A tiny, randomly initialised CLIP for tests: transformers' real classes at toy sizes.

Non-default geometry on purpose (32x32 images, 8x8 patches: 16 patches + class token),
so code that assumes 224 px or a fixed patch grid fails on it. Heads are hidden/64
(at least one) as OpenAI's, so the config inferred from a metadata-less file (ComfyUI's
clip_vision files have none) is the one it was built with. Weights depend only on the seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nodes.diffusion.clip_vision import save_clip_file
from nodes.diffusion.tiny import _seeded, ensure_built
from nodes.diffusion.tokenizer import load_clip_tokenizer

TINY_CLIP_NAME = "steerflow-tiny-clip"
#: the image tower alone, without metadata (as ComfyUI's clip_vision files)
TINY_CLIP_VISION_NAME = "steerflow-tiny-clip-vision"

TINY_CLIP_CONFIG: dict[str, Any] = {
    "projection_dim": 16,
    "text_config": {
        "vocab_size": 49408, "max_position_embeddings": 77, "hidden_size": 32,
        "intermediate_size": 64, "num_attention_heads": 1, "num_hidden_layers": 2,
        "hidden_act": "quick_gelu", "projection_dim": 16,
    },
    "vision_config": {
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 1,
        "num_hidden_layers": 2, "image_size": 32, "patch_size": 8, "num_channels": 3,
        "hidden_act": "quick_gelu", "projection_dim": 16,
    },
}


def build_tiny_clip(seed: int = 0, vision_only: bool = False) -> Any:
    """A tiny ``CLIPModel`` (or, ``vision_only``, the ``CLIPVisionModelWithProjection``
    with the same image-tower weights) on CPU in float32, in eval mode."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection

    model = _seeded(seed + 40, lambda: CLIPModel(CLIPConfig(**TINY_CLIP_CONFIG))).eval()
    if not vision_only:
        return model
    vision = CLIPVisionModelWithProjection(model.config.vision_config).eval()
    keep = {k: v for k, v in model.state_dict().items()
            if k.startswith("vision_model.") or k == "visual_projection.weight"}
    vision.load_state_dict(keep, strict=True)
    return vision


def save_tiny_clip(target_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny CLIP into ``target_dir`` (a ``clip_vision`` models folder).

    Returns ``{"single_file": <name>.safetensors`` (both towers, config in metadata),
    ``"vision_only": <name>-vision.safetensors`` (image tower, no metadata),
    ``"diffusers": <name>/`` (a transformers folder with tokenizer files)}``.
    """
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    model = build_tiny_clip(seed)
    single = target_dir / f"{TINY_CLIP_NAME}.safetensors"
    vision_only = target_dir / f"{TINY_CLIP_VISION_NAME}.safetensors"
    folder = target_dir / TINY_CLIP_NAME
    save_clip_file(model, single)
    save_clip_file(build_tiny_clip(seed, vision_only=True), vision_only, metadata=False)
    model.save_pretrained(folder, safe_serialization=True)
    load_clip_tokenizer().save_pretrained(folder)
    return {"single_file": single, "vision_only": vision_only, "diffusers": folder}


def ensure_tiny_clip(models_dir: Path) -> dict[str, Path]:
    """Make sure the tiny CLIP's three forms exist in ``models_dir/clip_vision``."""
    target = Path(models_dir) / "clip_vision"
    vision_only = target / f"{TINY_CLIP_VISION_NAME}.safetensors"
    if not vision_only.is_file():
        target.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{TINY_CLIP_VISION_NAME}.tmp"
        save_clip_file(build_tiny_clip(vision_only=True), tmp, metadata=False)
        tmp.replace(vision_only)
    folder = ensure_built(models_dir, "clip_vision", TINY_CLIP_NAME, "config.json",
                          save_tiny_clip)
    return {"single_file": target / f"{TINY_CLIP_NAME}.safetensors",
            "vision_only": vision_only, "diffusers": folder}
