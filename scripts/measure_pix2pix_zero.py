"""Measure Pix2Pix-Zero on the default model: circle → square on generated one-circle images.

    python scripts/measure_pix2pix_zero.py --cases 50                       # dev world 77
    python scripts/measure_pix2pix_zero.py --cases 50 --amount 0 0.1 1 10 --reg-steps 0 5
    python scripts/measure_pix2pix_zero.py --cases 60 --amount 0 0.1 1 10 --baselines \\
        --world-seed 1000003                                                # held out

A case is a shapes-world layout (world seed, index) with its shape made a circle; its
caption ("a large red circle at the top left on a white background") is drawn by
text to image at seed = index, and cases the judge does not read as that circle are
skipped. The image is inverted with its caption (VAE Encode → DDIM Inversion, cfg 1,
optionally regularised) and sampled again from the inverted noise (KSamplerAdvanced,
add_noise off, DDIM) with Pix2Pix-Zero on the caption and the direction circle → square:
the mean of ``--sentences`` shapes-world captions with "square" minus the same with
"circle" (a fixed sentence stream, never the cases). Success: the judge reads a square
of the circle's colour at its position.

Baselines on the same inverted noise: the direction without cross-attention guidance
(``--amount 0``), the caption with "square" written in (prompt swap), and the caption
itself (reconstruction: still a circle of that colour there).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEV_SEED = 77  # tune here
HELD_OUT_SEED = 1_000_003  # report here (training.evaluate's world)
SENTENCE_SEED = 5  # the direction's sentences: a world neither the cases nor training use
SIZE = 64


@dataclasses.dataclass(frozen=True)
class Setting:
    amount: float
    reg_steps: int
    steps: int
    cfg: float


def circle_caption(world_seed: int, index: int) -> tuple[str, Any]:
    """The one-shape layout (world_seed, index) with its shape made a circle."""
    from training.shapes import full_caption, generate

    sample = generate(world_seed, index, SIZE, 0.0)
    spec = dataclasses.replace(sample.shapes[0], shape="circle")
    return full_caption([spec], sample.background), spec


def direction_sentences(count: int) -> tuple[list[str], list[str]]:
    """``count`` shapes-world captions with a circle, and the same with a square."""
    source = [circle_caption(SENTENCE_SEED, k)[0] for k in range(count)]
    return source, [s.replace(" circle ", " square ") for s in source]


def graph(caption: str, image: str, source: list[str], target: list[str], s: Setting, *,
          text: str | None = None, edit: bool = True) -> dict[str, dict[str, Any]]:
    """Image → VAE Encode → DDIM Inversion (caption) → KSamplerAdvanced (add_noise off) with
    Pix2Pix-Zero on the caption (or plain ``text``) → VAE Decode → Save Image."""
    positive: list[Any] = ["p2pz", 0] if edit else ["text", 0]
    g: dict[str, dict[str, Any]] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-shapes"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": caption,
                                                           "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0],
                                                         "vae": ["ckpt", 2]}},
        "invert": {"class_type": "DDIMInvert", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["encode", 0],
            "steps": s.steps, "cfg": 1.0, "num_reg_steps": s.reg_steps}},
        "sample": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["ckpt", 0], "add_noise": "disable", "noise_seed": 0, "steps": s.steps,
            "cfg": s.cfg, "sampler_name": "ddim", "scheduler": "normal",
            "positive": positive, "negative": ["neg", 0], "latent_image": ["invert", 0],
            "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0],
                                                         "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0],
                                                       "filename_prefix": "p2pz"}},
    }
    if edit:
        g["direction"] = {"class_type": "Pix2PixZeroEditDirection", "inputs": {
            "clip": ["ckpt", 1], "source": "\n".join(source), "target": "\n".join(target)}}
        g["p2pz"] = {"class_type": "Pix2PixZero", "inputs": {
            "conditioning": ["pos", 0], "edit_direction": ["direction", 0],
            "cross_attention_guidance_amount": s.amount}}
    else:
        g["text"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text or caption,
                                                                "clip": ["ckpt", 1]}}
    return g


def cases(runner: Any, world_seed: int, n: int) -> Iterator[tuple[int, str, Any, str]]:
    """(index, caption, spec, input image name) of the first ``n`` cases whose source image
    the judge reads as the captioned circle (25 DDIM steps, cfg 7.5, seed = index)."""
    from training import judge
    from training.evaluate import EvalConfig, txt2img_graph

    cfg = EvalConfig(seed=world_seed, progress=False)
    found = index = 0
    while found < n and index < 4 * n:
        caption, spec = circle_caption(world_seed, index)
        image = runner.image(txt2img_graph(cfg, caption, index, SIZE))
        read = judge.score_single(image, spec)
        if read["shape"] and read["color"] and read["position"]:
            found += 1
            yield index, caption, spec, image
        index += 1


def psnr_outside(source: Any, edited: Any, margin: int = 2) -> float:
    """PSNR between the source and the edit outside the main shape of either, dilated by
    ``margin`` pixels (what Pix2Pix-Zero should leave alone)."""
    import numpy as np
    from scipy import ndimage

    from training import judge

    region = np.zeros(source.shape[:2], bool)
    for image in (source, edited):
        for d in judge.detect(image, max_objects=1):
            region |= d.mask
    outside = ~ndimage.binary_dilation(region, iterations=margin)
    return min(99.0, judge.psnr(source[outside], edited[outside]))


def outcome(image: Any, spec: Any, want: str = "square") -> str:
    """"ok" (a ``want`` of the spec's colour at its position), else what went wrong."""
    from training import judge

    found = judge.detect(image, max_objects=1)
    if not found:
        return "lost"
    d = found[0]
    if d.color != spec.color:
        return "colour"
    if d.position != spec.position:
        return "moved"
    return "ok" if d.shape == want else d.shape


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-dir", type=Path, default=ROOT,
                        help="holds models/ (the shipped model is installed there if missing)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--world-seed", type=int, default=DEV_SEED)
    parser.add_argument("--sentences", type=int, default=60)
    parser.add_argument("--amount", type=float, nargs="+", default=[1.0])
    parser.add_argument("--reg-steps", type=int, nargs="+", default=[5])
    parser.add_argument("--steps", type=int, nargs="+", default=[25])
    parser.add_argument("--cfg", type=float, nargs="+", default=[7.5])
    parser.add_argument("--baselines", action="store_true",
                        help="also score the prompt swap and the reconstruction")
    parser.add_argument("--save", type=Path, help="save each setting's edits as a PNG grid")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from training.evaluate import GraphRunner, _save_grid

    torch.set_num_threads(args.threads)
    if args.world_seed == HELD_OUT_SEED:
        print("held-out world: report, do not tune", file=sys.stderr)
    source, target = direction_sentences(args.sentences)
    with tempfile.TemporaryDirectory(prefix="p2pz-measure-") as work:
        runner = GraphRunner(args.base_dir / "models", Path(work))
        items = [(i, caption, spec, runner.put_image(f"p2pz_case_{i}.png", image), image)
                 for i, caption, spec, image in cases(runner, args.world_seed, args.cases)]
        print(f"{len(items)} cases (world {args.world_seed}), {args.sentences} sentences "
              "per side", flush=True)
        settings = [Setting(*v) for v in itertools.product(args.amount, args.reg_steps,
                                                            args.steps, args.cfg)]
        if args.baselines:
            for s in {dataclasses.replace(s, amount=0.0) for s in settings}:
                for name, swap, want in (("prompt swap", True, "square"),
                                         ("reconstruction", False, "circle")):
                    counts: Counter[str] = Counter()
                    psnrs = []
                    for _, caption, spec, name_in, before in items:
                        text = caption.replace(" circle ", " square ") if swap else caption
                        after = runner.image(graph(caption, name_in, source, target, s,
                                                   text=text, edit=False))
                        counts[outcome(after, spec, want)] += 1
                        psnrs.append(psnr_outside(before, after))
                    print(f"{name:<15} reg {s.reg_steps} steps {s.steps} cfg {s.cfg:g}: "
                          f"{counts['ok'] / len(items):5.0%} psnr outside {np.median(psnrs):4.1f}"
                          f" dB (>= 30 dB: {np.mean(np.array(psnrs) >= 30):.0%}) "
                          f"{dict(counts.most_common())}", flush=True)
        print("amount  reg steps  cfg |  ok  | psnr outside: median dB, >= 30 dB | outcomes")
        for s in settings:
            start = time.perf_counter()
            counts = Counter()
            edits, psnrs = [], []
            for _, caption, spec, name_in, before in items:
                edited = runner.image(graph(caption, name_in, source, target, s))
                counts[outcome(edited, spec)] += 1
                psnrs.append(psnr_outside(before, edited))
                edits.append(edited)
            print(f"{s.amount:6g} {s.reg_steps:4d} {s.steps:5d} {s.cfg:4g} | "
                  f"{counts['ok'] / len(items):4.0%} | {np.median(psnrs):5.1f} "
                  f"{np.mean(np.array(psnrs) >= 30):4.0%} | "
                  f"{dict(counts.most_common())} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
            if args.save:
                path = args.save.with_name(
                    f"{args.save.stem}_a{s.amount:g}_r{s.reg_steps}_s{s.steps}_c{s.cfg:g}.png")
                _save_grid(edits, path)


if __name__ == "__main__":
    main()
