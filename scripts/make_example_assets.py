"""Render the example workflows' input images from the shapes world (deterministic).

    .venv/bin/python scripts/make_example_assets.py   # writes workflows/assets/*.png

- ``steerflow_example.png``: a large red circle at the top left and a large blue
  square at the bottom right on a white background (img2img, DDIM inversion);
- ``steerflow_example_hole.png``: the same with the top-right cell transparent
  (LoadImage turns alpha into the inpainting mask: transparent = repaint);
- ``controlnet_control.png``: a large star's mask in the middle right, white on
  black, the kind of control image the shapes ControlNet was trained on;
- ``fabric_liked_blue.png`` / ``fabric_disliked_red.png``: a large blue circle and a
  large red circle in the middle of a white background, the first liked and disliked
  images of ``fabric_gallery.json`` (the canvas's gallery adds more);
- ``ip_adapter_reference.png``: a large purple star in the middle of a beige background,
  the reference image of ``ip_adapter.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.shapes import COLORS, SIZE_RADII, ShapeSpec, render  # noqa: E402

ASSETS = ROOT / "workflows" / "assets"
SIZE = 64


def spec(shape: str, color: str, position: str, center: tuple[float, float]) -> ShapeSpec:
    return ShapeSpec(shape=shape, color=color, position=position, size="large", center=center,
                     radius=SIZE_RADII["large"], rotation=0.0, rgb=COLORS[color])


def fabric_assets() -> list[Path]:
    paths = []
    for color, name in (("blue", "fabric_liked_blue.png"), ("red", "fabric_disliked_red.png")):
        image, _ = render((spec("circle", color, "center", (0.5, 0.5)),), "white", SIZE)
        Image.fromarray(image).save(ASSETS / name)
        paths.append(ASSETS / name)
    return paths


def main() -> None:
    example = (spec("circle", "red", "top left", (0.225, 0.225)),
               spec("square", "blue", "bottom right", (0.775, 0.775)))
    image, _ = render(example, "white", SIZE)
    Image.fromarray(image).save(ASSETS / "steerflow_example.png")

    rgba = np.dstack([image, np.full((SIZE, SIZE), 255, np.uint8)])
    third = SIZE // 3
    rgba[2:third + 4, SIZE - third - 4:SIZE - 2, 3] = 0  # the top-right cell, a margin wide
    Image.fromarray(rgba, "RGBA").save(ASSETS / "steerflow_example_hole.png")

    _, masks = render((spec("star", "green", "right", (0.7, 0.5)),), "black", SIZE)
    control = (masks[0] * 255).astype(np.uint8)
    Image.fromarray(control).convert("RGB").save(ASSETS / "controlnet_control.png")
    for name in ("steerflow_example.png", "steerflow_example_hole.png",
                 "controlnet_control.png"):
        print(ASSETS / name)
    for path in fabric_assets():
        print(path)
    image, _ = render((spec("star", "purple", "center", (0.5, 0.5)),), "beige", SIZE)
    Image.fromarray(image).save(ASSETS / "ip_adapter_reference.png")
    print(ASSETS / "ip_adapter_reference.png")


if __name__ == "__main__":
    main()
