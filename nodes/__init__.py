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


MODEL_FOLDERS = ("checkpoints", "vae", "loras", "controlnet", "embeddings")


def setup(env: Environment) -> None:
    """Create the models/ tree and the built-in default model (offline, on first run)."""
    from nodes.diffusion.tiny import ensure_default_model

    models = env.folder("models", create=True)
    for name in MODEL_FOLDERS:
        (models / name).mkdir(exist_ok=True)
    ensure_default_model(models)
