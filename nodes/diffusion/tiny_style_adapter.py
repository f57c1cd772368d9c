"""A tiny, randomly initialised T2I style adapter for tests: the real layout at toy sizes.

It reads the tiny CLIP vision tower's hidden states (``tiny_clip``: 64 wide, 17 tokens)
and gives 8 tokens 32 wide, the tiny SD model's text width (``tiny``). ComfyUI's 8 heads
and 3 layers, as the shipped SD 1.4 style adapter; LayerNorms and attention biases are
drawn too (0/1 in a fresh module), so every term of the math shows in tests. Weights
depend only on the seed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nodes.diffusion.style_adapter import StyleAdapter
from nodes.diffusion.tiny import _seeded

TINY_STYLE_NAME = "steerflow-tiny-style"
TINY_STYLE_CONFIG = {"width": 64, "context_dim": 32, "heads": 8, "layers": 3, "tokens": 8}


def build_tiny_style_adapter(seed: int = 0) -> StyleAdapter:
    """The tiny style adapter on CPU in float32, in eval mode."""

    def build() -> StyleAdapter:
        model = StyleAdapter(**TINY_STYLE_CONFIG)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight",
                                  "ln_post.weight")):
                    param.copy_(1 + 0.2 * torch.randn_like(param))
                elif name.endswith("bias"):
                    param.copy_(0.1 * torch.randn_like(param))
        return model.eval()

    return _seeded(seed + 60, build)


def save_tiny_style_adapter(target_dir: Path, seed: int = 0, *, pickle: bool = False
                            ) -> Path:
    """Write the tiny style adapter into ``target_dir`` (a ``style_models`` folder) as
    ``.safetensors`` (or, ``pickle``, the original's ``.pth`` state dict); returns the file."""
    import os

    from nodes.diffusion.train_common import save_atomic

    target_dir = Path(target_dir)
    state = build_tiny_style_adapter(seed).state_dict()
    if not pickle:
        path = target_dir / f"{TINY_STYLE_NAME}.safetensors"
        save_atomic(state, {"format": "pt"}, path)
        return path
    path = target_dir / f"{TINY_STYLE_NAME}.pth"
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({k: v.clone() for k, v in state.items()}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
