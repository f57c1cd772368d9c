"""HyperTile (tfernd 2023, the method A1111 and ComfyUI ship): self-attention in tiles.

Self-attention costs the square of its token count, so at high resolution the UNet's
first level dominates a step. HyperTile splits that level's ``h × w`` token grid into
``nh × nw`` tiles and lets each tile attend only within itself (queries, keys and values
all tiled): ``(nh·nw)``-fold less attention work. The tiling changes at every UNet call,
so the seams move and average out: at each call and axis the tile side is drawn among
the smallest ``swap_size`` divisors of the axis that are at least ``tile_size / 8``
latent pixels (×2 per level with ``scale_depth``); levels 0..``max_depth`` are tiled.

Here the draws come from a generator seeded by the sampler's seed, so a seed gives one
image. ComfyUI's node draws from torch's global generator (another image each run) and
tiles only the queries, its keys and values following the batch layout instead; images
therefore differ from ComfyUI's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodes.diffusion.attention import AttentionCall, AttentionHook, SelfAttentionLayout
from nodes.diffusion.extensions import SamplerExtension

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from nodes.diffusion.sampling import SamplingRun

#: the latent's downscale tile_size is given against (SD's VAE), as ComfyUI
LATENT_DOWNSCALE = 8
MIN_TILE_PX = 32


def tile_count(size: int, min_tile: int, options: int, rng: random.Random) -> int:
    """How many tiles ``size`` token rows (or columns) split into: ``size // d`` for ``d``
    drawn among the ``options`` smallest divisors of ``size`` that are ``≥ min_tile``
    (``size`` itself when none is)."""
    min_tile = min(min_tile, size)
    divisors = [d for d in range(min_tile, size + 1) if size % d == 0][:options]
    return size // divisors[rng.randrange(len(divisors))]


def tile(hidden_states: torch.Tensor, height: int, width: int, nh: int, nw: int
         ) -> torch.Tensor:
    """``[B, h·w, C]`` row-major tokens → ``[B·nh·nw, (h/nh)·(w/nw), C]`` tiles."""
    b, _, c = hidden_states.shape
    th, tw = height // nh, width // nw
    x = hidden_states.reshape(b, nh, th, nw, tw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * nh * nw, th * tw, c)


def untile(tiles: torch.Tensor, height: int, width: int, nh: int, nw: int) -> torch.Tensor:
    """The inverse of :func:`tile`."""
    c = tiles.shape[-1]
    th, tw = height // nh, width // nw
    x = tiles.reshape(-1, nh, nw, th, tw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height * width, c)


@dataclass(frozen=True)
class HyperTile(SamplerExtension):
    """Tile the self-attention of levels 0..``max_depth`` (see the module)."""

    tile_size: int = 256
    swap_size: int = 2
    max_depth: int = 0
    scale_depth: bool = False

    def setup(self, run: SamplingRun) -> None:
        run.state[self] = random.Random(int(run.params.seed))

    def attention_hooks(self, run: SamplingRun) -> list[AttentionHook]:
        return [_TileHook(self, run.state[self])]

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)


class _TileHook(SelfAttentionLayout):
    def __init__(self, config: HyperTile, rng: random.Random):
        self.config, self.rng = config, rng

    def on_tokens(self, call: AttentionCall, hidden_states: torch.Tensor
                  ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None]:
        depth = self.level(call)
        if depth is None or depth > self.config.max_depth:
            return hidden_states, None
        height, width = call.size
        min_tile = max(MIN_TILE_PX, self.config.tile_size) // LATENT_DOWNSCALE
        if self.config.scale_depth:
            min_tile *= 2 ** depth
        nh = tile_count(height, min_tile, self.config.swap_size, self.rng)
        nw = tile_count(width, min_tile, self.config.swap_size, self.rng)
        if nh * nw == 1:
            return hidden_states, None
        return (tile(hidden_states, height, width, nh, nw),
                lambda out: untile(out, height, width, nh, nw))

