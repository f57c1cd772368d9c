"""Measure LEDITS++ on the default model: recolour one shape of a generated image.

    python scripts/measure_ledits_pp.py --cases 50                      # dev world 77
    python scripts/measure_ledits_pp.py --cases 50 --scale 10 15 --threshold 0.8 0.9
    python scripts/measure_ledits_pp.py --cases 50 --world-seed 1000003  # held out: report
    python scripts/measure_ledits_pp.py --cases 50 --paste-back 0 1     # without / with

The protocol is ``training.edit_eval``'s: a shapes-world caption (one or two shapes) at
seed = its index is drawn with txt2img; cases whose image the judge does not read as
prompted are skipped; the first shape must turn to a colour no shape has, keep its kind,
the other shapes must stay, and the PSNR outside the (dilated) shape region must reach
30 dB. Each edit is a Steerflow graph: Load Image → VAE Encode → LEDITS++ Inversion →
SEGA Concepts (by default: add the target caption, remove the source caption) →
Apply LEDITS++ → KSamplerAdvanced (the inversion's steps, prompt and cfg, add_noise off)
→ VAE Decode (with ``--paste-back 1``: → Image Composite Masked onto the source through
LEDITS++ Edit Mask, as workflows/ledits_pp.json does).
Every combination of the listed settings is one line; tune on world seed 77, then run
the chosen settings once on the held-out world 1_000_003.
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
    """One LEDITS++ configuration (the nodes' inputs)."""

    steps: int = 30  # num_inversion_steps
    skip: float = 0.4
    # > 1: the caption guides the inversion, and the edit samples with it at this cfg (so
    # that without concepts the image comes back); <= 1: the empty prompt, cfg 1
    source_guidance: float = 3.5
    sampler: str = "dpmpp_2m_sde"
    scale: float = 4.0
    warmup: int = 0
    cooldown: int = 10000
    threshold: float = 0.95
    mask: str = "noise"  # intersect | cross | noise
    # caption: add the target caption, remove the source caption; color: add "green",
    # remove "red"; shape: add "green star", remove "red star"
    concept: str = "caption"
    # paste the edit onto the source where LEDITS++ Edit Mask says it acted
    paste_back: bool = False

    def row(self) -> str:
        return (f"{self.steps:5d} {self.skip:5.2f} {self.source_guidance:4g} "
                f"{self.sampler:>12} {self.scale:5g} {self.warmup:3d} {self.cooldown:5d} "
                f"{self.threshold:5g} {self.mask:>9} {self.concept:>7} {self.paste_back:d}")


HEADER = ("steps  skip  src      sampler scale  wu    cd   thr      mask concept pb |  ok  "
          "edited recol  psnr≥30  psnr med | failures")


def ledits_graph(model: str, case: Any, image: str, s: Settings) -> dict[str, Any]:
    """The edit graph of one case."""
    if s.concept == "caption":
        concepts = [(case.target_prompt, "add"), (case.source_prompt, "remove")]
    else:
        shape = f" {case.shape}" if s.concept == "shape" else ""
        concepts = [(case.new_color + shape, "add"), (case.old_color + shape, "remove")]
    guided = s.source_guidance > 1.0
    g: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0],
                                                         "vae": ["ckpt", 2]}},
        "invert": {"class_type": "LEditsPPInvert", "inputs": {
            "model": ["ckpt", 0], "latent": ["encode", 0], "negative": ["empty", 0],
            "num_inversion_steps": s.steps, "skip": s.skip,
            "source_guidance_scale": max(s.source_guidance, 1.0), "seed": case.seed,
            "sampler_name": s.sampler, "scheduler": "ddim_uniform"}},
        "apply": {"class_type": "ApplyLEditsPP", "inputs": {
            "model": ["ckpt", 0], "inversion": ["invert", 1],
            "concepts": [f"concept{len(concepts) - 1}", 0],
            "use_cross_attn_mask": s.mask == "cross",
            "use_intersect_mask": s.mask == "intersect"}},
        "sample": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["apply", 0], "add_noise": "disable", "noise_seed": 0,
            "steps": ["invert", 2], "cfg": ["invert", 4], "sampler_name": s.sampler,
            "scheduler": "ddim_uniform", "positive": ["source" if guided else "empty", 0],
            "negative": ["empty", 0],
            "latent_image": ["invert", 0], "start_at_step": ["invert", 3],
            "end_at_step": 10000, "return_with_leftover_noise": "disable"}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0],
                                                         "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0],
                                                       "filename_prefix": "ledits"}},
    }
    if s.paste_back:
        g["mask"] = {"class_type": "LEditsPPEditMask", "inputs": {"samples": ["sample", 0],
                                                                 "vae": ["ckpt", 2]}}
        g["paste"] = {"class_type": "ImageCompositeMasked", "inputs": {
            "destination": ["load", 0], "source": ["decode", 0], "x": 0, "y": 0,
            "resize_source": False, "mask": ["mask", 0]}}
        g["save"]["inputs"]["images"] = ["paste", 0]
    if guided:
        g["source"] = {"class_type": "CLIPTextEncode",
                       "inputs": {"text": case.source_prompt, "clip": ["ckpt", 1]}}
        g["invert"]["inputs"]["source_prompt"] = ["source", 0]
    for k, (text, direction) in enumerate(concepts):
        g[f"concept{k}"] = {"class_type": "SEGAConcept", "inputs": {
            "clip": ["ckpt", 1], "text": text, "direction": direction, "scale": s.scale,
            "warmup_steps": s.warmup, "cooldown_steps": s.cooldown, "threshold": s.threshold,
            "weight": 1.0, **({"previous": [f"concept{k - 1}", 0]} if k else {})}}
    return g


def vae_round_trip(model: str, image: str) -> dict[str, Any]:
    """Load Image → VAE Encode → VAE Decode: what any latent edit keeps at best."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model}},
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0],
                                                         "vae": ["ckpt", 2]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["encode", 0],
                                                         "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0],
                                                       "filename_prefix": "vae"}},
    }


def vae_ceiling(runner: Any, model: str, cases: list[Any], names: list[str]) -> float:
    """The fraction of cases whose VAE round trip alone keeps PSNR >= 30 dB outside the
    shape (dilated as the protocol does): the most a latent edit can score."""
    from scipy import ndimage

    from training import judge
    from training.edit_eval import PSNR_TARGET

    kept = []
    for (case, source), name in zip(cases, names, strict=True):
        spec = case.sample.shapes[0]
        found = judge.detect(source, max_objects=len(case.sample.shapes))
        target = next(d for d in found
                      if (d.color, d.shape, d.position) == (spec.color, spec.shape, spec.position))
        outside = ~ndimage.binary_dilation(target.mask, iterations=2)
        round_trip = runner.image(vae_round_trip(model, name))
        kept.append(judge.psnr(source[outside], round_trip[outside]) >= PSNR_TARGET)
    return sum(kept) / len(kept)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-dir", type=Path, default=Path("/tmp/ledits_pp_base"),
                        help="holds models/ (the shipped model is installed there if missing)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--world-seed", type=int, default=77)
    parser.add_argument("--source-steps", type=int, default=25,
                        help="txt2img steps of the source images (DDIM, cfg 7.5)")
    parser.add_argument("--vae-ceiling", action="store_true",
                        help="also report how many cases the VAE round trip alone keeps "
                             "at >= 30 dB outside the shape")
    parser.add_argument("--save", type=Path, help="save source|edit pairs of the first "
                        "setting here as PNGs")
    defaults = Settings()
    grid_args = ("steps", "skip", "source_guidance", "sampler", "scale", "warmup",
                 "cooldown", "threshold", "mask", "concept", "paste_back")
    add_grid_arguments(parser, defaults, grid_args)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from training.edit_eval import HELD_OUT_SEED, iter_cases, score_recolour, summarise
    from training.evaluate import EvalConfig, GraphRunner

    torch.set_num_threads(args.threads)
    if args.world_seed == HELD_OUT_SEED:
        print("note: the held-out world: report, do not tune", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="ledits-pp-") as work:
        runner = GraphRunner(args.base_dir / "models", Path(work))
        cfg = EvalConfig(seed=args.world_seed, steps=args.source_steps, progress=False)
        start = time.perf_counter()
        cases = list(iter_cases(runner, cfg, args.world_seed, args.cases))
        names = [runner.put_image(f"source_{c.index}.png", img) for c, img in cases]
        print(f"{len(cases)} cases (world {args.world_seed}), sources in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        if args.vae_ceiling:
            print(f"VAE round trip alone: {vae_ceiling(runner, cfg.model, cases, names):.0%} "
                  "of the cases at >= 30 dB outside the shape", flush=True)
        print(HEADER)
        for n_setting, s in enumerate(settings_grid(args, Settings, grid_args)):
            start = time.perf_counter()
            scores, outcomes = [], Counter()
            for (case, source), name in zip(cases, names, strict=True):
                edited = runner.image(ledits_graph(cfg.model, case, name, s))
                score = score_recolour(case, source, edited)
                scores.append(score)
                outcomes[score.verdict] += 1
                if args.save is not None and n_setting == 0:
                    args.save.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.concatenate([source, edited], axis=1)).save(
                        args.save / f"case_{case.index:03d}_{score.verdict.replace(' ', '_')}.png")
            m = summarise(scores)
            print(f"{s.row()} | {m['ok']:4.0%} {m['edited']:6.0%} {m['recoloured']:5.0%} "
                  f"{m['psnr_outside_ge_target']:7.0%} {m['psnr_outside_median']:7.1f} dB | "
                  f"{dict(outcomes.most_common())} ({time.perf_counter() - start:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
