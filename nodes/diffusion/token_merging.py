"""Token Merging for Stable Diffusion (Bolya & Hoffman 2023, "ToMe for SD"; ComfyUI's
TomePatchModel): fewer tokens in the top level's self-attention.

Before a top-level self-attention layer the image tokens are split into destinations,
one random token in each 2×2 cell, and sources, the rest. Each source is matched to its
most similar destination (cosine similarity of the layer's input); the ``ratio`` of all
tokens most similar to theirs are merged into it (averaged), so attention runs over that
many fewer tokens, and afterwards every merged source takes its destination's output.
The cells are drawn from a generator seeded by the sampler's seed (a seed gives one
image).

As published (and in the tomesd package), queries, keys and values are all merged;
ComfyUI's node merges only the queries, so its images differ from these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from nodes.diffusion.attention import AttentionCall, AttentionHook, SelfAttentionLayout
from nodes.diffusion.extensions import SamplerExtension

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun

CELL = 2  # the destinations' grid: one per CELL × CELL tokens


@dataclass
class Merge:
    """One layer call's matching: ``merge`` [B, N, C] → [B, N − r, C], ``unmerge`` back."""

    sources: torch.Tensor  # [N − D] token indices of the sources
    destinations: torch.Tensor  # [D] token indices of the destinations
    kept: torch.Tensor  # [B, S − r] which sources stay (indices into the sources)
    merged: torch.Tensor  # [B, r] which sources merge
    into: torch.Tensor  # [B, r] the destination each merged source joins

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        src, dst = x[:, self.sources], x[:, self.destinations]
        c = x.shape[-1]
        kept = src.gather(1, self.kept[..., None].expand(-1, -1, c))
        moving = src.gather(1, self.merged[..., None].expand(-1, -1, c))
        dst = dst.scatter_reduce(1, self.into[..., None].expand(-1, -1, c), moving,
                                 reduce="mean", include_self=True)
        return torch.cat([kept, dst], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, c = y.shape
        n_kept = self.kept.shape[1]
        kept, dst = y[:, :n_kept], y[:, n_kept:]
        out = y.new_empty(b, len(self.sources) + len(self.destinations), c)
        out[:, self.destinations] = dst
        sources = self.sources[None].expand(b, -1)
        out.scatter_(1, sources.gather(1, self.kept)[..., None].expand(-1, -1, c), kept)
        out.scatter_(1, sources.gather(1, self.merged)[..., None].expand(-1, -1, c),
                     dst.gather(1, self.into[..., None].expand(-1, -1, c)))
        return out


def match(metric: torch.Tensor, height: int, width: int, r: int,
          generator: torch.Generator) -> Merge:
    """Bipartite soft matching on a ``height × width`` grid of ``metric`` [B, N, C]: the
    ``r`` sources most similar to a destination merge into it."""
    cells_h, cells_w = height // CELL, width // CELL
    choice = torch.randint(CELL * CELL, (cells_h, cells_w), generator=generator)
    is_destination = torch.zeros(height, width, dtype=torch.bool)
    rows = torch.arange(cells_h)[:, None] * CELL + choice // CELL
    cols = torch.arange(cells_w)[None, :] * CELL + choice % CELL
    is_destination[rows, cols] = True  # the rest (and any odd last row/column) are sources
    flat = is_destination.reshape(-1).to(metric.device)
    destinations = flat.nonzero().squeeze(1)
    sources = (~flat).nonzero().squeeze(1)
    normed = metric / metric.norm(dim=-1, keepdim=True)
    scores = normed[:, sources] @ normed[:, destinations].transpose(1, 2)
    best, into = scores.max(dim=-1)  # each source's most similar destination
    order = best.argsort(dim=-1, descending=True)
    r = min(r, len(sources))
    merged = order[:, :r]
    return Merge(sources, destinations, order[:, r:], merged, into.gather(1, merged))


@dataclass(frozen=True)
class TokenMerging(SamplerExtension):
    """Merge ``ratio`` of the top level's tokens in its self-attention (see the module)."""

    ratio: float = 0.3

    def setup(self, run: SamplingRun) -> None:
        run.state[self] = torch.Generator("cpu").manual_seed(int(run.params.seed))

    def attention_hooks(self, run: SamplingRun) -> list[AttentionHook]:
        return [_MergeHook(self.ratio, run.state[self])] if self.ratio > 0 else []

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)


class _MergeHook(SelfAttentionLayout):
    def __init__(self, ratio: float, generator: torch.Generator):
        self.ratio, self.generator = ratio, generator

    def on_tokens(self, call: AttentionCall, hidden_states: torch.Tensor
                  ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None]:
        if call.size is None or self.level(call) != 0:
            return hidden_states, None
        height, width = call.size
        r = int(hidden_states.shape[1] * self.ratio)
        if r <= 0 or height < CELL or width < CELL:
            return hidden_states, None
        with torch.no_grad():
            merge = match(hidden_states, height, width, r, self.generator)
        return merge.merge(hidden_states), merge.unmerge
