"""Measure Apply IP-Adapter on the default model: does the output take the reference
image's colour and shape?

    python scripts/measure_ip_adapter.py --models <models dir> [--cases 50] [--weights 0 0.6 1]

Each case is a one-shape picture of the shapes world ``--world`` (held out from training's
world 0), rendered exactly and given as the reference image. Two modes:

- **image prompt**: an empty text prompt and the reference: the judge reads the output's
  main shape; it counts when colour and kind both match the reference's (and, reported
  apart, its place). Weight 0 is the baseline (the model's unconditional drawings).
- **image + text**: the prompt names another kind of shape ("a square") and the reference
  gives the colour: it counts when the output is that kind in the reference's colour.

The shapes-world CLIP (``steerflow-shapes-clip``) is the image encoder; DDIM 25 steps,
cfg 7.5, seed = the case index.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HELD_OUT_SEED = 1_000_003


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="a models folder")
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--world", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.6, 1.0])
    parser.add_argument("--adapter", default="steerflow-shapes-ip-adapter.safetensors")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--text-mode", action="store_true",
                        help="also the image + text mode (a prompt naming another shape)")
    args = parser.parse_args(argv)

    import torch

    from training import judge
    from training.evaluate import EvalConfig, GraphRunner, ip_adapter_graph
    from training.shapes import SHAPES, generate

    torch.set_num_threads(args.threads)
    cfg = EvalConfig(progress=False)
    rng = np.random.default_rng(args.world)
    with tempfile.TemporaryDirectory(prefix="ipa-eval-") as work:
        runner = GraphRunner(args.models, Path(work))
        cases = []
        index = 0
        while len(cases) < args.cases:
            sample = generate(args.world, index, cfg.image_size, two_shape_prob=0.0)
            name = runner.put_image(f"ref_{index}.png", sample.image)
            other = str(rng.choice([s for s in SHAPES if s != sample.shapes[0].shape]))
            cases.append((index, name, sample.shapes[0], other))
            index += 1
        for weight in args.weights:
            hits = {"colour": 0, "shape": 0, "both": 0, "position": 0}
            for index, name, spec, _ in cases:
                out = runner.image(ip_adapter_graph(cfg, "", index, name, weight, args.adapter))
                score = judge.score_single(out, spec)
                hits["colour"] += score["color"]
                hits["shape"] += score["shape"]
                hits["both"] += score["color"] and score["shape"]
                hits["position"] += score["position"]
            n = len(cases)
            print(f"image prompt, weight {weight:g}: colour and shape {hits['both'] / n:.0%} "
                  f"(colour {hits['colour'] / n:.0%}, shape {hits['shape'] / n:.0%}, "
                  f"place {hits['position'] / n:.0%}; n {n})", flush=True)
        if args.text_mode:
            from dataclasses import replace

            for weight in args.weights:
                both = 0
                for index, name, spec, other in cases:
                    out = runner.image(ip_adapter_graph(cfg, f"a {other}", index, name,
                                                        weight, args.adapter))
                    score = judge.score_single(out, replace(spec, shape=other))
                    both += score["color"] and score["shape"]
                print(f"image + text ('a <other shape>'), weight {weight:g}: that shape in "
                      f"the reference's colour {both / len(cases):.0%}", flush=True)


if __name__ == "__main__":
    main()
