"""HyperTile and Token Merging: UNet forward time with each ÷ the plain UNet, side by side
in one process, on a random UNet with SD 1.x's top level (320 channels, 8 heads,
attention at the first level) at several latent sizes.

    .venv/bin/python bench/bench_attention_speedups.py [--sizes 64 96] [--repeats 3]
        [--tile 256] [--ratio 0.5]

Runs alternate (plain, HyperTile, ToMe, plain, ...) so load on this shared machine hits
all alike; compare the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from diffusers import UNet2DConditionModel

from nodes.diffusion import attention
from nodes.diffusion.hypertile import HyperTile
from nodes.diffusion.token_merging import TokenMerging


def unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(320, 640), layers_per_block=1, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, norm_num_groups=32).eval()


def timed(model: UNet2DConditionModel, sample: torch.Tensor, context: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model(sample, 500, encoder_hidden_states=context)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    model = unet()
    context = torch.randn(1, 77, 768)
    print(f"{'latent':>8} {'plain s':>9} {'HyperTile ÷ plain':>18} {'ToMe ÷ plain':>13}")
    for size in args.sizes:
        sample = torch.randn(1, 4, size, size)
        run = SimpleNamespace(attention=attention.AttentionStore(), state={},
                              params=SimpleNamespace(seed=0))
        run.attention.learn_sizes(size, size, levels=2)
        cases = {}
        for extension in (HyperTile(tile_size=args.tile), TokenMerging(args.ratio)):
            extension.setup(run)
            cases[type(extension).__name__] = extension.attention_hooks(run)
        timed(model, sample, context)  # warm-up
        times: dict[str, list[float]] = {"plain": [], **{name: [] for name in cases}}
        for _ in range(args.repeats):
            times["plain"].append(timed(model, sample, context))
            for name, hooks in cases.items():
                saved = attention.install(model, hooks, run, run.attention)
                try:
                    times[name].append(timed(model, sample, context))
                finally:
                    model.set_attn_processor(saved)
        plain = statistics.median(times["plain"])
        tiled = statistics.median(times["HyperTile"]) / plain
        merged = statistics.median(times["TokenMerging"]) / plain
        print(f"{size:>5}²   {plain:9.2f} {tiled:18.2f} {merged:13.2f}")


if __name__ == "__main__":
    main()
