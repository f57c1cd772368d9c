"""ComfyUI's ``comfy.k_diffusion.utils``: :class:`FolderOfImages` (packs read its
``IMG_EXTENSIONS`` to filter image files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from comfy_compat.shims._missing import missing_attributes


class FolderOfImages:
    """The images under ``root`` (recursively, sorted), each ``(transform(RGB image),)``."""

    IMG_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff",
                      ".webp"}

    def __init__(self, root: str, transform: Callable[[Any], Any] | None = None):
        self.root = Path(root)
        self.transform = transform if transform is not None else (lambda image: image)
        self.paths = sorted(p for p in self.root.rglob("*")
                            if p.suffix.lower() in self.IMG_EXTENSIONS)

    def __repr__(self) -> str:
        return f"FolderOfImages(root='{self.root}', len: {len(self)})"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int) -> tuple[Any]:
        from PIL import Image

        with Image.open(self.paths[key]) as image:
            return (self.transform(image.convert("RGB")),)


__getattr__ = missing_attributes(__name__)
