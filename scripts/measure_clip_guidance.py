"""Measure CLIP guidance on the default model: does guiding toward the prompt fix the
prompts the plain model gets wrong?

    python scripts/measure_clip_guidance.py --two-shape-prob 1 --failures 57 \
        --scale 100 300 1000 --every-n 1 2 --cutouts 0 4 --control    # tune: dev world 77
    python scripts/measure_clip_guidance.py --two-shape-prob 1 --failures 100 \
        --scale 300 --every-n 2 --end 0.6 --control --world-seed 1000003  # report: held out

Two-shape captions (``--two-shape-prob 1``): the plain model fails only ~3% of one-shape
captions (~8% at the world's 0.3 mix) but ~15% of two-shape ones, so 100 failing cases
take ~700 plain images instead of thousands.

Cases are shapes-world captions (world seed, index; one shape, or two with
``--two-shape-prob``) drawn by plain text to image (25 DDIM steps, cfg 7.5, seed = index),
kept when the judge FAILS them: the main shape's colour, shape or position is wrong (two
shapes: not every prompted shape found with its colour, shape and position). Sampling
is deterministic, so the plain model scores 0% on these cases by construction; each
setting re-draws them at the same seed with CLIP Guidance toward the caption (the
shapes-world CLIP, ``steerflow-shapes-clip``) and reports how many the judge now reads
right. ``--control`` also guides toward another case's caption at the same setting:
what any perturbation of the sampling fixes by chance (the failures sit near the judge's
boundaries: most are small crosses drawn as diamonds). ``--random N`` reports the first
N captions (failing or not) with and without guidance: the effect on all prompts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEV_SEED = 77  # tune here
HELD_OUT_SEED = 1_000_003  # report here (training.evaluate's world)
SIZE = 64
CLIP_NAME = "steerflow-shapes-clip.safetensors"


@dataclass(frozen=True)
class Setting:
    scale: float
    every_n: int
    cutouts: int
    end: float
    start: float = 0.0
    through_unet: bool = True


def judged_right(image: Any, sample: Any) -> bool:
    """The judge reads the caption back: colour, shape and position of the main shape (or
    of every shape of a two-shape caption)."""
    from training import judge

    if len(sample.shapes) > 1:
        return judge.score_multi(image, sample.shapes)
    read = judge.score_single(image, sample.shapes[0])
    return read["color"] and read["shape"] and read["position"]


def graph(caption: str, seed: int, s: Setting | None, *, target: str | None = None,
          clip_name: str = CLIP_NAME, steps: int = 25) -> dict[str, dict[str, Any]]:
    """Text to image (training.evaluate's graph), with CLIP Guidance toward ``target``
    (default: the caption) when ``s`` is given and its scale is not 0."""
    from training.evaluate import EvalConfig, txt2img_graph

    g = txt2img_graph(EvalConfig(steps=steps, progress=False), caption, seed, SIZE)
    if s is not None and s.scale:
        g["clip_vision"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": clip_name}}
        g["guide"] = {"class_type": "CLIPGuidance", "inputs": {
            "model": g["sample"]["inputs"]["model"], "clip_vision": ["clip_vision", 0],
            "vae": ["ckpt", 2], "text": target or caption, "clip_guidance_scale": s.scale,
            "every_n_steps": s.every_n, "num_cutouts": s.cutouts, "end_percent": s.end,
            "start_percent": s.start, "through_unet": s.through_unet}}
        g["sample"]["inputs"]["model"] = ["guide", 0]
    return g


def find_failures(runner: Any, world_seed: int, n: int, two_shape_prob: float,
                  cache: Path | None) -> tuple[list[int], int]:
    """The first ``n`` indices the plain model fails, and how many indices were scanned."""
    from training.shapes import generate

    if cache is not None and cache.exists():
        saved = json.loads(cache.read_text())
        if (saved["world_seed"], saved["two_shape_prob"]) == (world_seed, two_shape_prob) \
                and len(saved["failures"]) >= n:
            failures = saved["failures"][:n]
            return failures, failures[-1] + 1
    failures: list[int] = []
    index = 0
    while len(failures) < n:
        sample = generate(world_seed, index, SIZE, two_shape_prob)
        if not judged_right(runner.image(graph(sample.caption, index, None)), sample):
            failures.append(index)
        index += 1
    if cache is not None:
        cache.write_text(json.dumps({"world_seed": world_seed, "two_shape_prob": two_shape_prob,
                                     "failures": failures, "scanned": index}))
    return failures, index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-dir", type=Path, default=ROOT,
                        help="holds models/ (the shipped models are installed there if missing)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--world-seed", type=int, default=DEV_SEED)
    parser.add_argument("--failures", type=int, default=100, help="failing cases to guide")
    parser.add_argument("--two-shape-prob", type=float, default=0.3,
                        help="share of two-shape captions (the world's default 0.3)")
    parser.add_argument("--scale", type=float, nargs="+", default=[300.0])
    parser.add_argument("--every-n", type=int, nargs="+", default=[2])
    parser.add_argument("--cutouts", type=int, nargs="+", default=[0])
    parser.add_argument("--end", type=float, nargs="+", default=[0.6],
                        help="end_percent: guide the steps before this fraction")
    parser.add_argument("--start", type=float, nargs="+", default=[0.0],
                        help="start_percent: guide from this fraction of the steps")
    parser.add_argument("--through-unet", type=int, nargs="+", default=[1], choices=(0, 1),
                        help="1: differentiate through a UNet pass too; 0: hold ε fixed")
    parser.add_argument("--control", action="store_true",
                        help="also guide toward another case's caption (chance fixes)")
    parser.add_argument("--control-only", action="store_true",
                        help="only the control (e.g. in a second process beside the guided run)")
    parser.add_argument("--random", type=int, default=0,
                        help="also score the first N captions with and without guidance")
    parser.add_argument("--clip-name", default=CLIP_NAME)
    parser.add_argument("--save", type=Path,
                        help="save each setting's guided images of the cases as a PNG grid")
    parser.add_argument("--cache", type=Path,
                        help="JSON file keeping the failing indices between runs")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from training.evaluate import GraphRunner, _save_grid
    from training.shapes import generate

    torch.set_num_threads(args.threads)
    if args.world_seed == HELD_OUT_SEED:
        print("held-out world: report, do not tune", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="cg-measure-") as work:
        runner = GraphRunner(args.base_dir / "models", Path(work))
        start = time.perf_counter()
        failures, scanned = find_failures(runner, args.world_seed, args.failures,
                                          args.two_shape_prob, args.cache)
        samples = {i: generate(args.world_seed, i, SIZE, args.two_shape_prob) for i in failures}
        print(f"world {args.world_seed}: {len(failures)} failing cases in the first {scanned} "
              f"captions (plain accuracy there {1 - len(failures) / scanned:.0%}; "
              f"{time.perf_counter() - start:.0f} s)", flush=True)
        settings = [Setting(*v[:5], bool(v[5])) for v in itertools.product(
            args.scale, args.every_n, args.cutouts, args.end, args.start, args.through_unet)]
        print("scale every_n cutouts end start unet | fixed (plain: 0%) | control | s/image")
        for s in settings:
            start = time.perf_counter()
            images = [] if args.control_only else [
                runner.image(graph(samples[i].caption, i, s, clip_name=args.clip_name))
                for i in failures]
            fixed = [judged_right(img, samples[i]) for img, i in
                     zip(images, failures, strict=False)]
            if args.save and images:
                _save_grid(images, args.save.with_name(
                    f"{args.save.stem}_s{s.scale:g}_n{s.every_n}_c{s.cutouts}_e{s.end:g}"
                    f"_b{s.start:g}_u{int(s.through_unet)}.png"))
            per_image = (time.perf_counter() - start) / len(failures)
            control = ""
            if args.control or args.control_only:
                others = failures[1:] + failures[:1]
                chance = [judged_right(runner.image(graph(
                    samples[i].caption, i, s, target=samples[o].caption,
                    clip_name=args.clip_name)), samples[i])
                    for i, o in zip(failures, others, strict=True)]
                control = f"{np.mean(chance):6.1%} ({sum(chance)}/{len(chance)})"
                print(f"    control fixed: "
                      f"{[i for i, ok in zip(failures, chance, strict=True) if ok]}", flush=True)
            shown = f"{np.mean(fixed):6.1%} ({sum(fixed)}/{len(fixed)})" if fixed else "-"
            print(f"{s.scale:6g} {s.every_n:3d} {s.cutouts:4d} {s.end:5.2f} {s.start:5.2f} "
                  f"{int(s.through_unet)} | {shown} | {control} | {per_image:.2f}", flush=True)
            if fixed:
                print(f"    fixed: {[i for i, ok in zip(failures, fixed, strict=True) if ok]}",
                      flush=True)
        if args.random:
            plain_ok = []
            rows = [generate(args.world_seed, i, SIZE, args.two_shape_prob)
                    for i in range(args.random)]
            for i, sample in enumerate(rows):
                plain_ok.append(judged_right(runner.image(graph(sample.caption, i, None)),
                                             sample))
            print(f"first {args.random} captions, plain: {np.mean(plain_ok):.1%}", flush=True)
            for s in settings:
                guided_ok = [judged_right(runner.image(graph(sample.caption, i, s,
                                                             clip_name=args.clip_name)), sample)
                             for i, sample in enumerate(rows)]
                pairs = list(zip(guided_ok, plain_ok, strict=True))
                print(f"  guided {s}: {np.mean(guided_ok):.1%} "
                      f"(fixed {sum(g and not p for g, p in pairs)}, "
                      f"broken {sum(p and not g for g, p in pairs)})", flush=True)


if __name__ == "__main__":
    main()
