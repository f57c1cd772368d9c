"""Measure TIME on the default model: edit "circle" → "square", then ask for circles and
for the other shapes.

    python scripts/measure_model_editing.py --samples 100            # dev world (seed 77)
    python scripts/measure_model_editing.py --samples 100 --world 1000003   # held out
    python scripts/measure_model_editing.py --lamb 0.1 1 --with-to-k 1 0 --baseline

Two sets of single-shape prompts from the shapes world (full captions such as "a small
red circle at the top left on a gray background", sampled at seed = index): circle
prompts, where the edit succeeds if the judge (``training.judge``) reads the main shape
as a square, and prompts for the other shapes, which must still read as the shape asked
for. ``--baseline`` also runs the unedited model on the same prompts. Choose settings on
the dev world (77); report the held-out world (1_000_003) once.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEV_SEED = 77


def prompt_sets(world: int, n: int, source: str) -> tuple[list[Any], list[Any]]:
    """The first ``n`` single-shape samples naming ``source``, and the first ``n`` naming
    another shape (index order, so sets are stable)."""
    from training.shapes import generate

    hits: list[Any] = []
    others: list[Any] = []
    for index in itertools.count():
        if len(hits) >= n and len(others) >= n:
            break
        sample = generate(world, index, 64, 0.0)
        bucket = hits if sample.shapes[0].shape == source else others
        if len(bucket) < n:
            bucket.append((index, sample))
    return hits, others


def edit_graph(cfg: Any, text: str, seed: int, edit: dict[str, Any] | None) -> dict[str, Any]:
    from training.evaluate import txt2img_graph

    g = txt2img_graph(cfg, text, seed, cfg.image_size)
    if edit is not None:
        g["time"] = {"class_type": "TIMEModelEdit", "inputs": {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], **edit}}
        g["sample"]["inputs"]["model"] = ["time", 0]
    return g


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=DEV_SEED)
    parser.add_argument("--samples", type=int, default=100, help="prompts per set")
    parser.add_argument("--source", default="a circle")
    parser.add_argument("--destination", default="a square")
    parser.add_argument("--lamb", type=float, nargs="+", default=[0.1])
    parser.add_argument("--with-to-k", type=int, nargs="+", default=[1])
    parser.add_argument("--augmentations", nargs="+", default=["default"],
                        help="'default' (diffusers' three), 'none', or '|'-separated prefixes")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--baseline", action="store_true", help="also the unedited model")
    parser.add_argument("--base-dir", type=Path, default=Path("/tmp/time_base"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from nodes.model_editing import DEFAULT_AUGMENTATIONS
    from training import judge
    from training.evaluate import EvalConfig, GraphRunner

    torch.set_num_threads(args.threads)
    cfg = EvalConfig(steps=args.steps, progress=False)
    source_shape = args.source.split()[-1]
    target_shape = args.destination.split()[-1]
    hits, others = prompt_sets(args.world, args.samples, source_shape)
    settings: list[tuple[str, dict[str, Any] | None]] = []
    if args.baseline:
        settings.append(("unedited", None))
    for lamb, to_k, augs in itertools.product(args.lamb, args.with_to_k, args.augmentations):
        text = {"default": DEFAULT_AUGMENTATIONS, "none": ""}.get(augs, augs.replace("|", "\n"))
        settings.append((f"lamb={lamb} to_k={bool(to_k)} augs={augs}", {
            "source_prompt": args.source, "destination_prompt": args.destination,
            "lamb": lamb, "with_to_k": bool(to_k), "augmentations": text}))
    with tempfile.TemporaryDirectory(prefix="time-measure-") as work:
        runner = GraphRunner(args.base_dir / "models", Path(work))
        print(f"world {args.world}: {len(hits)} '{source_shape}' prompts, {len(others)} others; "
              f"{args.steps} steps", flush=True)
        for label, edit in settings:
            start = time.time()
            to_target = kept = 0
            missed: dict[str, int] = {}
            changed: dict[str, int] = {}
            for index, sample in hits:
                found = judge.detect(runner.image(edit_graph(cfg, sample.caption, index, edit)), 1)
                shape = found[0].shape if found else "nothing"
                to_target += shape == target_shape
                if shape != target_shape:
                    missed[shape] = missed.get(shape, 0) + 1
            for index, sample in others:
                found = judge.detect(runner.image(edit_graph(cfg, sample.caption, index, edit)), 1)
                shape = found[0].shape if found else "nothing"
                kept += shape == sample.shapes[0].shape
                if shape != sample.shapes[0].shape:
                    key = f"{sample.shapes[0].shape}→{shape}"
                    changed[key] = changed.get(key, 0) + 1
            print(f"{label}: {source_shape}→{target_shape} {to_target / len(hits):.1%} "
                  f"({to_target}/{len(hits)}; else {missed}), other shapes kept "
                  f"{kept / len(others):.1%} ({kept}/{len(others)}; {changed})  "
                  f"[{time.time() - start:.0f} s]",
                  flush=True)


if __name__ == "__main__":
    main()
