"""EasyCache's and LazyCache's speed ratio against plain sampling, measured side by side
(interleaved, same process, same seed) on the tiny UNet.

Each line: the median wall time of a whole ``sample()`` run with the cache ÷ without
it, the UNet passes that ran, and how far the result moved (max |Δ| / max |plain|).
The tiny UNet is cheap, so the sampler's own per-step work weighs more than on a real
model: the ratio here is a lower bound of what skipping buys on SD-sized UNets.

    .venv/bin/python bench/bench_step_cache.py [--size 32] [--steps 20] [--repeats 5]
        [--threshold 0.2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from diffusers import UNet2DConditionModel

from nodes.diffusion.extensions import SamplerExtension
from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel, Latent
from nodes.diffusion.sampling import SamplingParams, sample
from nodes.diffusion.schedulers import make_scheduler
from nodes.diffusion.step_cache import EasyCache, LazyCache
from nodes.diffusion.tiny import SCHEDULER_CONFIG, UNET_CONFIG


class Passes(SamplerExtension):
    """Counts the main UNet passes that really run (inside the caches)."""

    priority = -5000

    def __init__(self) -> None:
        self.count = 0

    def unet_forward(self, run, step, call, forward):
        self.count += 1
        return forward(call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="latent side (pixels / 8)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--sampler", default="euler")
    args = parser.parse_args()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval().requires_grad_(False)
    model = DiffusionModel(unet, dict(SCHEDULER_CONFIG))
    g = torch.Generator().manual_seed(1)
    pos = Conditioning((CondEntry(torch.randn(1, 77, 32, generator=g)),))
    neg = Conditioning((CondEntry(torch.randn(1, 77, 32, generator=g)),))
    latent = Latent(torch.zeros(1, 4, args.size, args.size))
    params = SamplingParams(seed=1, steps=args.steps, cfg=5.0)
    variants = {"plain": None, f"EasyCache({args.threshold:g})": EasyCache(args.threshold),
                f"LazyCache({args.threshold:g})": LazyCache(args.threshold)}

    def run(ext: SamplerExtension | None) -> tuple[float, torch.Tensor, int]:
        passes = Passes()
        handle = model.with_extension(passes)
        if ext is not None:
            handle = handle.with_extension(ext)
        scheduler = make_scheduler(args.sampler, "normal", model.scheduler_config)
        start = time.perf_counter()
        out = sample(handle, scheduler, pos, neg, latent, params)
        return time.perf_counter() - start, out, passes.count

    run(None)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, tuple[torch.Tensor, int]] = {}
    for _ in range(args.repeats):  # interleaved: load changes hit every variant alike
        for name, ext in variants.items():
            seconds, out, passes = run(ext)
            times[name].append(seconds)
            results[name] = (out, passes)
    plain_time = statistics.median(times["plain"])
    plain_out = results["plain"][0]
    print(f"tiny UNet, {args.size}x{args.size} latent, {args.steps} {args.sampler} steps, "
          f"cfg 5, median of {args.repeats} (threads: {torch.get_num_threads()})")
    print(f"plain: {plain_time * 1000:.0f} ms per run")
    for name in list(variants)[1:]:
        out, passes = results[name]
        ratio = plain_time / statistics.median(times[name])
        moved = float((out - plain_out).abs().max() / plain_out.abs().max())
        print(f"{name}: {ratio:.2f}x the speed of plain sampling "
              f"({passes}/{args.steps} UNet passes, result moved {moved:.3f})")


if __name__ == "__main__":
    main()
