"""Draw the README's pictures with the shipped default model, through Steerflow graphs.

    .venv/bin/python scripts/make_readme_figures.py [--only samples|workflows|training]
                                                    [--examples a,b]  # docs/*.png

- ``docs/shapes_samples.png``: prompts (rows) x seeds (columns), text to image;
- ``docs/workflow_examples.png``: what each example in ``workflows/`` makes, as shipped (the
  SDXL ones need SDXL weights; the training ones are the next figure), and each one's tile
  alone as ``workflows/thumbnails/<name>.png`` (the canvas's examples browser);
- ``docs/training_examples.png``: what the training examples make (each trains for minutes).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.session import Session, Workflow  # noqa: E402
from training.evaluate import EvalConfig, txt2img_graph  # noqa: E402

DOCS = ROOT / "docs"
PROMPTS = [
    "a red circle at the top left on a white background",
    "a large blue square in the center on a black background",
    "a small yellow star at the bottom right on a gray background",
    "a green triangle at the top on a striped background",
    "a purple diamond on the left on a beige background",
    "an orange cross at the bottom on a slate background",
    "a pink circle at the top right and a cyan square at the bottom left on a white background",
    "a large red star in the center on a noisy background",
]
SEEDS = range(6)
SCALE = 2  # 64 px samples drawn at 128 px
LABEL_WIDTH = 330


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int) -> None:
    words, lines, line = text.split(), [], ""
    for word in words:
        if draw.textlength(f"{line} {word}".strip()) > width - 8:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for k, text_line in enumerate(lines):
        draw.text((xy[0] + 4, xy[1] + 4 + 12 * k), text_line, fill=(20, 20, 20))


def _up(image: Image.Image) -> Image.Image:
    return image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST)


def samples_figure(session: Session) -> Image.Image:
    cfg = EvalConfig(steps=25, progress=False)
    cell = 64 * SCALE
    fig = Image.new("RGB", (LABEL_WIDTH + cell * len(SEEDS), cell * len(PROMPTS)), "white")
    draw = ImageDraw.Draw(fig)
    for r, prompt in enumerate(PROMPTS):
        _label(draw, (0, r * cell), prompt, LABEL_WIDTH)
        for c, seed in enumerate(SEEDS):
            result = session.run(txt2img_graph(cfg, prompt, seed, 64))
            assert result.ok, result.run.error
            fig.paste(_up(Image.open(result.image_paths[-1]).convert("RGB")),
                      (LABEL_WIDTH + c * cell, r * cell))
    return fig


def example_tiles(session: Session, paths: list[Path]) -> list[tuple[str, Image.Image]]:
    """Run each example as shipped; its outputs side by side, also saved as the examples
    browser's thumbnail ``workflows/thumbnails/<name>.png`` (served by
    ``/workflows?details=1``), and returned at ``SCALE``x."""
    tiles: list[tuple[str, Image.Image]] = []
    for path in paths:
        result = session.run(Workflow.load(path))
        assert result.ok, (path.name, result.run.error)
        # What the example saves (then its previews), at most 4: before/after pairs show both.
        paths_out = sorted(result.image_paths, key=lambda p: session.env.folder("temp") in
                           Path(p).resolve().parents)
        images = [Image.open(p).convert("RGB") for p in paths_out[:4]]
        strip = Image.new("RGB", (sum(i.width for i in images) + 2 * (len(images) - 1),
                                  max(i.height for i in images)), "white")
        x = 0
        for image in images:
            strip.paste(image, (x, 0))
            x += image.width + 2
        strip.save(ROOT / "workflows" / "thumbnails" / f"{path.stem}.png", optimize=True)
        tiles.append((path.stem, _up(strip)))
    return tiles


def thumbnail_tiles(paths: list[Path]) -> list[tuple[str, Image.Image]]:
    """The examples' tiles from their saved thumbnails (no run), as example_tiles gives them."""
    return [(p.stem, _up(Image.open(ROOT / "workflows" / "thumbnails" / f"{p.stem}.png")
                         .convert("RGB"))) for p in paths]


def tiles_figure(tiles: list[tuple[str, Image.Image]], max_width: int = 1400) -> Image.Image:
    """Labelled tiles, their own aspect kept (panoramas are wide), in rows no wider than
    ``max_width``."""
    label_h, gap = 28, 8
    rows: list[list[tuple[str, Image.Image]]] = [[]]
    for tile in tiles:
        width = sum(t.width + gap for _, t in rows[-1])
        if rows[-1] and width + tile[1].width > max_width:
            rows.append([])
        rows[-1].append(tile)
    heights = [max(t.height for _, t in row) + label_h for row in rows]
    width = max(sum(t.width + gap for _, t in row) for row in rows)
    fig = Image.new("RGB", (width, sum(heights)), "white")
    draw = ImageDraw.Draw(fig)
    y = 0
    for row, height in zip(rows, heights, strict=True):
        x = 0
        for name, tile in row:
            draw.text((x + 4, y + 8), name, fill=(20, 20, 20))
            fig.paste(tile, (x, y + label_h))
            x += tile.width + gap
        y += height
    return fig


def _examples(names: list[str] | None = None, *, training: bool = False) -> list[Path]:
    """The shipped examples that run on the default model (the SDXL ones need SDXL
    weights); the training ones (minutes each) only when asked for."""
    paths = sorted((ROOT / "workflows").glob("*.json"))
    if names is not None:
        return [p for p in paths if p.stem in names]
    return [p for p in paths if not p.stem.startswith("sdxl_")
            and p.stem.startswith("train_") == training]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("samples", "workflows", "training"),
                        help="draw one of the figures")
    parser.add_argument("--examples", help="only refresh these examples' thumbnails "
                        "(comma-separated names, e.g. upscale_model)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    DOCS.mkdir(exist_ok=True)
    names = []
    with tempfile.TemporaryDirectory(prefix="steerflow-figures-") as home:
        session = Session(home, device="cpu")
        if not args.examples and args.only in (None, "samples"):
            samples_figure(session).save(DOCS / "shapes_samples.png", optimize=True)
            names.append("shapes_samples.png")
        if args.examples:
            refreshed = _examples(args.examples.split(","))
            example_tiles(session, refreshed)
            # the README's figure of the refreshed examples' group, from every thumbnail
            for training, figure in ((False, "workflow_examples.png"),
                                     (True, "training_examples.png")):
                group = _examples(training=training)
                if any(p in group for p in refreshed):
                    tiles_figure(thumbnail_tiles(group)).save(DOCS / figure, optimize=True)
                    names.append(figure)
        elif args.only in (None, "workflows"):
            tiles_figure(example_tiles(session, _examples())).save(
                DOCS / "workflow_examples.png", optimize=True)
            names.append("workflow_examples.png")
        if not args.examples and args.only in (None, "training"):
            tiles_figure(example_tiles(session, _examples(training=True))).save(
                DOCS / "training_examples.png", optimize=True)
            names.append("training_examples.png")
    for name in names:
        image = np.asarray(Image.open(DOCS / name))
        print(DOCS / name, image.shape)


if __name__ == "__main__":
    main()
