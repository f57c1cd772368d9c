"""Measure Deep Shrink (PatchModelAddDownscale) on the default model: one shape at twice
the native size.

    python scripts/measure_deep_shrink.py --cases 50 --world-seed 1000003

Each case is a one-shape shapes-world caption ("a large red circle in the center on a
white background"), drawn at 128x128 (the model's native size is 64x64) plainly and with
Deep Shrink (``--block``, ``--factor``, ``--end``; DDIM 25, cfg 7.5). A case succeeds
when the judge finds exactly one shape, of the caption's colour and kind ("one shape
right"); "repeats" counts the images with more than one shape. ``--save`` writes a grid
(plain row, Deep Shrink row) of the first cases.

Tune on the dev world (seed 77, the default); report on the held-out world 1_000_003.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEV_SEED = 77
STREAM = 16_000_000  # sample indices of these cases (no other metric uses them)


def graph(text: str, seed: int, size: int, shrink: dict[str, Any] | None,
          steps: int = 25, cfg: float = 7.5) -> dict[str, Any]:
    """The evaluation's text-to-image graph (DDIM), Deep Shrink on the model if asked."""
    from training.evaluate import EvalConfig, txt2img_graph

    g = txt2img_graph(EvalConfig(steps=steps, cfg=cfg), text, seed, size)
    if shrink is not None:
        g["shrink"] = {"class_type": "PatchModelAddDownscale", "inputs": {
            "model": ["ckpt", 0], "downscale_after_skip": True, "downscale_method": "bicubic",
            "upscale_method": "bicubic", "start_percent": 0.0, **shrink}}
        g["sample"]["inputs"]["model"] = ["shrink", 0]
    return g


def read(image: Any, spec: Any) -> tuple[bool, bool]:
    """(one shape of the caption's colour and kind, more than one shape)."""
    from training import judge

    found = judge.detect(image, max_objects=4)
    if len(found) != 1:
        return False, len(found) > 1
    return found[0].color == spec.color and found[0].shape == spec.shape, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--world-seed", type=int, default=DEV_SEED)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--block", type=int, default=2)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--end", type=float, nargs="+", default=[0.35])
    parser.add_argument("--base-dir", type=Path, default=ROOT / "output" / "measure")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    from training.evaluate import GraphRunner
    from training.shapes import generate

    variants: dict[str, dict[str, Any] | None] = {"plain": None}
    for end in args.end:
        variants[f"shrink {end:g}"] = {"block_number": args.block,
                                       "downscale_factor": args.factor, "end_percent": end}
    with tempfile.TemporaryDirectory() as work:
        runner = GraphRunner(args.base_dir / "models", Path(work))
        right = {name: 0 for name in variants}
        repeats = {name: 0 for name in variants}
        rows: dict[str, list[Any]] = {name: [] for name in variants}
        for i in range(args.cases):
            sample = generate(args.world_seed, STREAM + i, 64, 0.0)
            text = sample.caption
            line = []
            for name, shrink in variants.items():
                image = runner.image(graph(text, i, args.size, shrink))
                ok, repeated = read(image, sample.shapes[0])
                right[name] += ok
                repeats[name] += repeated
                line.append(f"{name} {'ok' if ok else 'repeat' if repeated else 'wrong'}")
                if i < 8:
                    rows[name].append(image)
            print(f"{i:3d} {text:<64.64} {' | '.join(line)}", flush=True)
    print(f"\nworld {args.world_seed}, {args.cases} one-shape captions at "
          f"{args.size}x{args.size}, block {args.block}, factor {args.factor:g}")
    for name in variants:
        print(f"{name:<14} one shape right {right[name] / args.cases:6.0%}   "
              f"repeats {repeats[name] / args.cases:6.0%}")
    if args.save:
        grid = np.concatenate([np.concatenate(rows[name], axis=1) for name in variants])
        Image.fromarray(grid).save(args.save)
        print(f"saved {args.save}")


if __name__ == "__main__":
    main()
