"""Measure SEGA on the default model: the shipped example over seeds, or a settings grid
of the evaluation's "SEGA replace" protocol on a dev stream of prompts.

    python scripts/sega_grid.py example --seeds 16
    python scripts/sega_grid.py example --set 10.scale=10 --set 11.scale=10
    python scripts/sega_grid.py replace --prompts 96 --scale 15 20 --warmup 2 3

``example`` runs ``workflows/sega.json`` with and without its ``ApplySEGA`` node per
seed; it succeeds where the main shape reads (``training.judge``) as the added concept's
color and as the same shape as without SEGA. ``replace`` is ``training.evaluate``'s
protocol (the full prompt at seed = index, SEGA adding another color and removing the
named one) on world seed 77, a stream the evaluation never uses: choose settings here,
then run the evaluation once.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEV_SEED = 77  # the dev world of training/README.md; the evaluation uses 1_000_003


def _runner(base_dir: Path, work: Path) -> Any:
    from training.evaluate import GraphRunner

    # Running a graph installs the shipped model under base_dir/models when it is missing.
    return GraphRunner(base_dir / "models", work)


def example(args: argparse.Namespace, work: Path) -> None:
    """The shipped SEGA example over seeds, with and without its ApplySEGA node."""
    import numpy as np

    from engine.session import Workflow
    from training import judge
    from training.shapes import COLORS

    runner = _runner(args.base_dir, work)
    wf = Workflow.load(ROOT / "workflows" / "sega.json")
    for item in args.set:
        key, _, value = item.partition("=")
        wf.set(key, _json_or_str(value))
    prompt = wf.prompt
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "KSampler")
    apply = next(k for k, n in prompt.items() if n["class_type"] == "ApplySEGA")
    added = next(n["inputs"]["text"] for n in prompt.values()
                 if n["class_type"] == "SEGAConcept" and n["inputs"]["direction"] == "add")
    # the colour the added concept names (a bare colour word, or a description with one)
    target = next((c for c in COLORS if c in added.split()), added)
    hits = 0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        with_sega = dict(prompt)
        with_sega[sampler] = _with_inputs(prompt[sampler], seed=seed)
        without = dict(with_sega)
        without[sampler] = _with_inputs(with_sega[sampler],
                                        model=prompt[apply]["inputs"]["model"])
        edited, plain = runner.image(with_sega), runner.image(without)
        after, before = judge.detect(edited, max_objects=1), judge.detect(plain, max_objects=1)
        ok = bool(after and before and after[0].color == target
                  and after[0].shape == before[0].shape)
        hits += ok
        diff = float(np.abs(edited.astype(np.float32) - plain).mean())
        print(f"seed {seed:3d}: without {_read(before):<18} with {_read(after):<18} "
              f"mean |diff| {diff:5.1f}  {'ok' if ok else '--'}", flush=True)
    print(f"{target}, same shape: {hits}/{args.seeds} = {hits / args.seeds:.0%}")


def replace(args: argparse.Namespace, work: Path) -> None:
    """A grid of SEGA settings on the replace protocol, dev prompts, one line each."""
    import numpy as np

    from training import judge
    from training.evaluate import (
        EvalConfig,
        _other_color,
        _prompts,
        edit_outcome,
        replace_outcome,
        txt2img_graph,
    )

    if args.world_seed == EvalConfig().seed:
        print("note: this is the evaluation's held-out world seed", file=sys.stderr)
    runner = _runner(args.base_dir, work)
    base_cfg = EvalConfig(seed=args.world_seed, steps=args.steps, progress=False)
    samples = _prompts(base_cfg, args.prompts, 0)
    rng = np.random.default_rng(args.world_seed)
    colors = [_other_color(rng, s.shapes[0].color) for s in samples]
    bases = [runner.image(txt2img_graph(base_cfg, s.caption, i, s.image.shape[0]))
             for i, s in enumerate(samples)]
    trials = list(enumerate(zip(samples, bases, colors, strict=True)))
    grid = itertools.product(args.scale, args.warmup, args.threshold, args.momentum_scale,
                             args.momentum_beta, args.concept)
    if args.prompt_swap:
        # The reference a color edit can hope for: the prompt itself names the new color.
        swapped = Counter(
            edit_outcome(judge.detect(base, max_objects=1),
                         runner.image(txt2img_graph(
                             base_cfg, s.caption.replace(s.shapes[0].color, color, 1), i,
                             s.image.shape[0])), color, s.shapes[0].color)
            for i, (s, base, color) in trials)
        print(f"prompt naming the new color instead of SEGA: "
              f"{swapped['ok'] / len(samples):.0%} {dict(swapped.most_common())}")
    print("scale warmup threshold momentum beta concept |  ok   | outcomes")
    for scale, warmup, threshold, m_scale, m_beta, concept in grid:
        cfg = dataclasses.replace(base_cfg, sega_scale=scale, sega_warmup=warmup,
                                  sega_threshold=threshold, sega_momentum_scale=m_scale,
                                  sega_momentum_beta=m_beta)
        start = time.perf_counter()
        outcomes = Counter(replace_outcome(runner, cfg, s, i, base, color, concept)
                           for i, (s, base, color) in trials)
        ok = outcomes["ok"] / len(samples)
        print(f"{scale:5g} {warmup:6d} {threshold:9g} {m_scale:8g} {m_beta:4g} {concept:>7} | "
              f"{ok:5.0%} | "
              f"{dict(outcomes.most_common())} ({time.perf_counter() - start:.0f} s)",
              flush=True)


def _read(found: list[Any]) -> str:
    return f"{found[0].color} {found[0].shape}" if found else "nothing"


def _with_inputs(node: dict[str, Any], **inputs: Any) -> dict[str, Any]:
    return {**node, "inputs": {**node["inputs"], **inputs}}


def _json_or_str(value: str) -> Any:
    import json

    try:
        return json.loads(value)
    except ValueError:
        return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-dir", type=Path, default=ROOT,
                        help="holds models/ (the shipped model is installed there if missing)")
    parser.add_argument("--threads", type=int, default=1)
    sub = parser.add_subparsers(dest="mode", required=True)
    ex = sub.add_parser("example", help="workflows/sega.json over seeds")
    ex.add_argument("--seeds", type=int, default=16)
    ex.add_argument("--first-seed", type=int, default=0)
    ex.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE")
    rp = sub.add_parser("replace", help="settings grid, the evaluation's replace protocol")
    rp.add_argument("--prompts", type=int, default=96)
    rp.add_argument("--world-seed", type=int, default=DEV_SEED)
    rp.add_argument("--steps", type=int, default=25)
    rp.add_argument("--scale", type=float, nargs="+", default=[20.0])
    rp.add_argument("--warmup", type=int, nargs="+", default=[3])
    rp.add_argument("--threshold", type=float, nargs="+", default=[0.5])
    rp.add_argument("--momentum-scale", type=float, nargs="+", default=[0.1])
    rp.add_argument("--momentum-beta", type=float, nargs="+", default=[0.4])
    kinds = ["word", "shape", "caption"]
    rp.add_argument("--concept", nargs="+", choices=[*kinds, *(f"{k}-add" for k in kinds)],
                    default=["word"], help="the concepts: the colours alone, with the shape "
                                           "noun, or captions; -add: no remove concept")
    rp.add_argument("--prompt-swap", action="store_true",
                    help="also score rewriting the prompt with the new color (no SEGA)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="sega-grid-") as work:
        (example if args.mode == "example" else replace)(args, Path(work))


if __name__ == "__main__":
    main()
