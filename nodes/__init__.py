"""Built-in node packs. Each module is one family of nodes and exposes NODE_CLASSES."""

from __future__ import annotations

from engine import Environment
from nodes import conditioning, image, latent, models, primitives, sampling, sega

NODE_CLASSES = (
    *models.NODE_CLASSES,
    *conditioning.NODE_CLASSES,
    *latent.NODE_CLASSES,
    *sampling.NODE_CLASSES,
    *sega.NODE_CLASSES,
    *image.NODE_CLASSES,
    *primitives.NODE_CLASSES,
)


def setup(env: Environment) -> None:
    """Make sure the built-in default model exists (built offline on first run)."""
    from nodes.diffusion.tiny import ensure_default_model

    ensure_default_model(env.folder("models", create=True))
