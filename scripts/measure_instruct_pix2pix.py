"""Measure Instruct-Pix2Pix on the default model: edit shapes-world images by instruction.

    python scripts/measure_instruct_pix2pix.py --cases 60                       # dev world 77
    python scripts/measure_instruct_pix2pix.py --cases 60 --cfg 5 7.5 --image-cfg 1.2 1.5 2
    python scripts/measure_instruct_pix2pix.py --cases 60 --world-seed 1000003  # held out
    python scripts/measure_instruct_pix2pix.py --models output/training/export  # a new model

The protocol is ``training.ip2p_eval``'s: rendered before images of a world the model
never trained on, the four kinds of edit in turn (recolour, change shape, move one
cell, change the background); an edit succeeds when the judge reads the instruction
done and everything else kept (every shape's colour, kind, cell and size, and the
background). Each edit is a Steerflow graph: Load Image (the before image, saved to the
input folder) → Load Checkpoint (steerflow-shapes-ip2p) → CLIP Text Encode (the
instruction; an empty negative) → InstructPixToPix Conditioning → KSampler → VAE
Decode. Every combination of the listed settings is one line; tune on world seed 77,
then run the chosen settings once on the held-out world 1_000_003.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.settings_grid import add_grid_arguments, settings_grid  # noqa: E402

MODEL = "steerflow-shapes-ip2p"


@dataclass(frozen=True)
class Settings:
    """One sampling configuration (the nodes' inputs)."""

    steps: int = 20
    cfg: float = 7.5
    image_cfg: float = 1.5
    sampler: str = "euler"

    def row(self) -> str:
        return f"{self.steps:5d} {self.cfg:5g} {self.image_cfg:5g} {self.sampler:>10}"


HEADER = ("steps   cfg  icfg    sampler |  ok  done  kept recol shape  move   bg  psnr→target"
          " | failures")


def failure(score: object) -> str:
    if score.ok:  # type: ignore[attr-defined]
        return "ok"
    if not score.done:  # type: ignore[attr-defined]
        return "not done" if score.kept else "not done, not kept"  # type: ignore[attr-defined]
    return "not kept"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("/tmp/ip2p_base/models"),
                        help="models folder holding checkpoints/steerflow-shapes-ip2p (set-up "
                             "installs the shipped one there when missing)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--world-seed", type=int, default=77)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of every edit")
    parser.add_argument("--save", type=Path, help="save before|edit|expected strips of the "
                        "first setting here as PNGs")
    defaults = Settings()
    grid_args = ("steps", "cfg", "image_cfg", "sampler")
    add_grid_arguments(parser, defaults, grid_args)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from training.evaluate import GraphRunner
    from training.ip2p_eval import HELD_OUT_SEED, ip2p_graph, iter_cases, score_edit, summarise

    torch.set_num_threads(args.threads)
    if args.world_seed == HELD_OUT_SEED:
        print("note: the held-out world: report, do not tune", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="ip2p-") as work:
        runner = GraphRunner(args.models, Path(work))
        cases = list(iter_cases(args.world_seed, args.cases))
        names = [runner.put_image(f"before_{c.plan.index}.png", c.before.image) for c in cases]
        print(f"{len(cases)} cases (world {args.world_seed}): "
              f"{dict(Counter(c.kind for c in cases))}", flush=True)
        print(HEADER)
        for n_setting, s in enumerate(settings_grid(args, Settings, grid_args)):
            start = time.perf_counter()
            scores, outcomes = [], Counter()
            for case, name in zip(cases, names, strict=True):
                edited = runner.image(ip2p_graph(
                    args.model, name, case.instruction, seed=args.seed, steps=s.steps,
                    cfg=s.cfg, image_cfg=s.image_cfg, sampler=s.sampler))
                score = score_edit(case, edited)
                scores.append(score)
                outcomes[f"{case.kind}: {failure(score)}"] += 1
                if args.save is not None and n_setting == 0:
                    args.save.mkdir(parents=True, exist_ok=True)
                    strip = np.concatenate([case.before.image, edited, case.after], axis=1)
                    Image.fromarray(strip).save(
                        args.save / f"case_{case.plan.index:03d}_{case.kind}_"
                                    f"{failure(score).replace(' ', '_').replace(',', '')}.png")
            m = summarise(scores)
            per_kind = " ".join(f"{m.get(f'ok_{k}', float('nan')):5.0%}"
                                for k in ("recolour", "shape", "move", "background"))
            failures = {k: v for k, v in outcomes.most_common() if not k.endswith(": ok")}
            print(f"{s.row()} | {m['ok']:4.0%} {m['done']:5.0%} {m['kept']:5.0%} {per_kind} "
                  f"{m['psnr_target_median']:6.1f} dB | {failures} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
