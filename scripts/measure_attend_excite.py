"""Measure Attend-and-Excite on the default model: two-shape prompts, both shapes right.

    python scripts/measure_attend_excite.py --prompts 50                 # dev world 77
    python scripts/measure_attend_excite.py --prompts 50 --words shape color_shape
    python scripts/measure_attend_excite.py --prompts 50 --world-seed 1000003  # held out

The protocol is ``training.evaluate``'s "two shapes" metric: shapes-world captions naming
two shapes (stream 1 of the world), txt2img at seed = the prompt's index (DDIM 25, cfg
7.5, 64x64), judged right when both shapes are found with their colour, kind and place.
The first line is the plain model; each further line is one combination of the listed
settings, with Attend-and-Excite as the positive prompt. ``--words``: ``shape`` excites
the shape words ("circle, square"), ``color_shape`` the colour and shape of each
("red circle, blue square"), ``color`` the colour words. Tune on world 77, report once on
the held-out world 1_000_003.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.settings_grid import add_grid_arguments, settings_grid  # noqa: E402


@dataclass(frozen=True)
class Settings:
    """One Attend-and-Excite configuration (the node's inputs, and which words)."""

    words: str = "shape"
    scale_factor: float = 20.0
    thresholds: str = "0:0.05, 10:0.5, 20:0.8"
    max_iter_to_alter: int = 25
    max_refinement_steps: int = 20
    normalize_eot: bool = False
    attn_res: int = 0

    def row(self) -> str:
        return (f"{self.words:>11} {self.scale_factor:6g} {self.thresholds:>24} "
                f"{self.max_iter_to_alter:4d} {self.max_refinement_steps:4d} "
                f"{self.normalize_eot:d} {self.attn_res:3d}")


HEADER = ("      words  scale               thresholds iter refn eot res |  both right | "
          "failures")


def words_of(sample: Any, mode: str) -> str:
    """The words to excite for a two-shape sample (phrases when a word repeats)."""
    shapes = sample.shapes
    if mode == "shape":
        names = [s.shape for s in shapes]
        if len(set(names)) < len(names):
            names = [f"{s.color} {s.shape}" for s in shapes]
    elif mode == "color":
        names = [s.color for s in shapes]
        if len(set(names)) < len(names):
            names = [f"{s.color} {s.shape}" for s in shapes]
    elif mode == "color_shape":
        names = [f"{s.color} {s.shape}" for s in shapes]
    else:
        raise ValueError(f"unknown --words {mode!r}")
    return ", ".join(names)


def graph(model: str, sample: Any, seed: int, s: Settings | None, steps: int) -> dict[str, Any]:
    size = sample.image.shape[0]
    g: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": sample.caption,
                                                           "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {
            "width": size, "height": size, "batch_size": 1, "vae": ["ckpt", 2]}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": seed, "steps": steps, "cfg": 7.5,
            "sampler_name": "ddim", "scheduler": "normal", "positive": ["pos", 0],
            "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0],
                                                         "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0],
                                                       "filename_prefix": "ae"}},
    }
    if s is not None:
        g["pos"] = {"class_type": "AttendAndExcite", "inputs": {
            "clip": ["ckpt", 1], "text": sample.caption, "words": words_of(sample, s.words),
            "max_iter_to_alter": s.max_iter_to_alter, "thresholds": s.thresholds,
            "scale_factor": s.scale_factor, "attn_res": s.attn_res,
            "max_refinement_steps": s.max_refinement_steps,
            "normalize_eot": s.normalize_eot}}
    return g


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-dir", type=Path, default=Path("/tmp/attend_excite_base"),
                        help="holds models/ (the shipped model is installed there if missing)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--world-seed", type=int, default=77)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--no-baseline", action="store_true")
    defaults = Settings()
    grid_args = ("words", "scale_factor", "thresholds", "max_iter_to_alter",
                 "max_refinement_steps", "normalize_eot", "attn_res")
    add_grid_arguments(parser, defaults, grid_args)
    args = parser.parse_args(argv)

    import torch

    from training import judge
    from training.evaluate import EvalConfig, GraphRunner, _prompts

    torch.set_num_threads(args.threads)
    cfg = EvalConfig(seed=args.world_seed, steps=args.steps, progress=False)
    prompts = _prompts(cfg, args.prompts, 1, 1.0)  # the evaluation's two-shape stream
    with tempfile.TemporaryDirectory(prefix="attend-excite-") as work:
        runner = GraphRunner(args.base_dir / "models", Path(work))
        runs: list[Settings | None] = [] if args.no_baseline else [None]
        runs += list(settings_grid(args, Settings, grid_args))
        print(f"{len(prompts)} two-shape prompts (world {args.world_seed})")
        print(HEADER)
        for s in runs:
            start = time.perf_counter()
            right, wrong = [], Counter()
            for i, sample in enumerate(prompts):
                image = runner.image(graph(cfg.model, sample, i, s, args.steps))
                ok = judge.score_multi(image, sample.shapes)
                right.append(ok)
                if not ok:
                    found = judge.detect(image, max_objects=len(sample.shapes))
                    want = {(x.color, x.shape, x.position) for x in sample.shapes}
                    got = {(d.color, d.shape, d.position) for d in found}
                    for miss in want - got:
                        near = [g for g in got if g[0] == miss[0] and g[2] == miss[2]]
                        wrong["kind" if near else "missing/other"] += 1
            label = "without Attend-and-Excite" if s is None else s.row()
            print(f"{label:>72} | {sum(right) / len(right):6.0%} ({sum(right)}/{len(right)}) | "
                  f"{dict(wrong)} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
