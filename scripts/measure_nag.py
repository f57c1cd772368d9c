"""Measure Normalized Attention Guidance on the default model: does a negative prompt
steer away from a colour, at cfg 1 (where plain sampling ignores the negative) and
with CFG?

    python scripts/measure_nag.py --world 77 --prompts 24 --set nag_scale=5
    python scripts/measure_nag.py --world 1000003 --prompts 50 --out /tmp/nag/heldout.jsonl

Prompts name a shape and, every other one, a position, never a colour (prompt ``i``
takes sample ``i`` of the shapes world ``--world``; seed ``i``; DDIM 25 steps). For each
cfg, a plain run (empty negative) shows the colour the model picks; the negative prompt
is then that colour with the prompt's shape ("a red circle"), and a case succeeds when
the judge reads another colour and still the asked shape. Tune on the dev world 77;
report on the held-out world 1 000 003 once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS: dict[str, float] = {"nag_scale": 5.0, "nag_alpha": 0.5, "nag_tau": 1.5}


def prompts(world: int, n: int) -> list[tuple[str, str]]:
    """(prompt, its shape) pairs, colour-less."""
    from training.shapes import POSITION_PHRASES, generate

    out = []
    for i in range(n):
        spec = generate(world, i, 64, two_shape_prob=0.0).shapes[0]
        text = (f"a {spec.shape} {POSITION_PHRASES[spec.position]}" if i % 2
                else f"a {spec.shape}")
        out.append((text, spec.shape))
    return out


def graph(text: str, negative: str, seed: int, steps: int, cfg: float,
          nag: dict[str, float] | None) -> dict[str, Any]:
    g: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-shapes"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": negative,
                                                          "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {
            "width": 64, "height": 64, "batch_size": 1, "vae": ["ckpt", 2]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0],
                                                         "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0],
                                                       "filename_prefix": "nag"}},
    }
    model: list[Any] = ["ckpt", 0]
    if nag is not None:
        g["nag"] = {"class_type": "NAGuidance", "inputs": {"model": model, **nag}}
        model = ["nag", 0]
    g["sample"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "ddim",
        "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
        "latent_image": ["latent", 0], "denoise": 1.0}}
    return g


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=77)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfgs", type=float, nargs="+", default=[1.0, 7.5])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a NAGuidance input, e.g. nag_scale=7")
    parser.add_argument("--base-dir", type=Path, default=Path("/tmp/nag_base"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="append a JSON line here")
    args = parser.parse_args(argv)

    import torch

    from training import judge
    from training.evaluate import GraphRunner

    torch.set_num_threads(args.threads)
    settings = dict(SETTINGS)
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = float(value)
    runner = GraphRunner(args.base_dir / "models", args.base_dir / "work")

    def read(text: str, negative: str, seed: int, cfg: float,
             nag: dict[str, float] | None) -> tuple[str, str] | None:
        seen = judge.detect(runner.image(graph(text, negative, seed, args.steps, cfg, nag)),
                            max_objects=1)
        return (seen[0].color, seen[0].shape) if seen else None

    result: dict[str, Any] = {"world": args.world, "prompts": args.prompts,
                              "settings": settings}
    for cfg in args.cfgs:
        counts = {"plain_shape": 0, "cfg_moved": 0, "nag_moved": 0, "nag_shape": 0,
                  "cases": 0}
        for seed, (text, shape) in enumerate(prompts(args.world, args.prompts)):
            plain = read(text, "", seed, cfg, None)
            if plain is None:
                continue
            counts["cases"] += 1
            counts["plain_shape"] += plain[1] == shape
            negative = f"a {plain[0]} {shape}"
            if cfg > 1:  # CFG alone already reads the negative prompt
                moved = read(text, negative, seed, cfg, None)
                counts["cfg_moved"] += bool(moved and moved[0] != plain[0]
                                            and moved[1] == shape)
            with_nag = read(text, negative, seed, cfg, settings)
            counts["nag_moved"] += bool(with_nag and with_nag[0] != plain[0]
                                        and with_nag[1] == shape)
            counts["nag_shape"] += bool(with_nag and with_nag[1] == shape)
        result[f"cfg {cfg:g}"] = counts
        print(f"cfg {cfg:g}: {counts}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
