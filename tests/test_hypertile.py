"""HyperTile: the tiling, a tiled self-attention layer against attention run tile by
tile by hand, and sampling with it (seeded, combined with other techniques)."""

from __future__ import annotations

import random

import pytest
import torch
from diffusers.models.attention_processor import Attention

from engine.session import Session
from nodes.diffusion.attention import (
    AttentionHook,
    AttentionLayer,
    AttentionStore,
    HookedAttnProcessor,
)
from nodes.diffusion.hypertile import tile, tile_count, untile
from tests.graph_nodes import captured_samples, registry_with_capture, tiny_txt2img


def test_tiles_are_blocks_of_the_token_grid():
    h, w, nh, nw = 4, 6, 2, 3
    grid = torch.arange(h * w, dtype=torch.float32).reshape(1, h * w, 1).repeat(2, 1, 5)
    tiles = tile(grid, h, w, nh, nw)
    assert tiles.shape == (2 * nh * nw, (h // nh) * (w // nw), 5)
    image = grid[0, :, 0].reshape(h, w)
    for i in range(nh):
        for j in range(nw):
            block = image[i * 2:(i + 1) * 2, j * 2:(j + 1) * 2].reshape(-1)
            assert torch.equal(tiles[i * nw + j, :, 0], block)
    assert torch.equal(untile(tiles, h, w, nh, nw), grid)


def test_tile_count_draws_among_the_smallest_divisors():
    rng = random.Random(0)
    # 24: divisors ≥ 4 are 4, 6, 8, 12, 24; the two smallest give 6 or 4 tiles
    assert {tile_count(24, 4, 2, rng) for _ in range(50)} == {6, 4}
    assert tile_count(24, 4, 1, rng) == 6
    assert tile_count(7, 4, 3, rng) == 1  # prime: no tiling
    assert tile_count(3, 32, 2, rng) == 1  # smaller than a tile


class _Fixed(AttentionHook):
    layout_only = True

    def selects(self, layer: AttentionLayer) -> bool:
        return True

    def on_tokens(self, call, hidden_states):
        h, w = call.size
        return tile(hidden_states, h, w, 2, 3), lambda out: untile(out, h, w, 2, 3)


def test_a_tiled_layer_is_attention_within_each_tile():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    x = torch.randn(2, 4 * 6, 32)
    store = AttentionStore()
    store.learn_sizes(4, 6, levels=1)
    layer = AttentionLayer.parse("down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor")
    run = type("Run", (), {"attention": store})()
    original = attn.processor
    attn.set_processor(HookedAttnProcessor(layer, [_Fixed()], store, run, original))
    with torch.no_grad():
        ours = attn(x)
        attn.set_processor(original)
        by_hand = torch.zeros_like(x)
        grid = x.reshape(2, 4, 6, 32)
        out = by_hand.reshape(2, 4, 6, 32)
        for i in range(2):
            for j in range(3):
                block = grid[:, i * 2:(i + 1) * 2, j * 2:(j + 1) * 2].reshape(2, 4, 32)
                out[:, i * 2:(i + 1) * 2, j * 2:(j + 1) * 2] = attn(block).reshape(2, 2, 2, 32)
    torch.testing.assert_close(ours, by_hand, rtol=1e-5, atol=1e-6)


# --- sampling --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory) -> Session:
    return Session(tmp_path_factory.mktemp("hypertile"), models_dir=models_dir, device="cpu",
                   registry=registry_with_capture())


def _graph(model=("ckpt", 0), seed: int = 1, extra: dict | None = None) -> dict:
    return tiny_txt2img(model, seed=seed, extra=extra)


def _hypertile(tile_size: int = 32, **more) -> dict:
    return {"ht": {"class_type": "HyperTile", "inputs": {
        "model": ["ckpt", 0], "tile_size": tile_size, "swap_size": 2, "max_depth": 1,
        "scale_depth": False, **more}}}


def test_sampling_with_hypertile_is_seeded_and_tiles(session):
    plain = captured_samples(session, _graph())
    tiled = captured_samples(session, _graph(model=("ht", 0), extra=_hypertile()))
    assert torch.isfinite(tiled).all() and (tiled - plain).abs().max() > 1e-4
    again = captured_samples(session, _graph(model=("ht", 0), extra=_hypertile()))
    assert torch.equal(tiled, again)
    # tiles as large as the latent: no tiling, the model's own processors, the same image
    whole = captured_samples(session, _graph(model=("ht", 0), extra=_hypertile(2048)))
    assert torch.equal(whole, plain)


def test_hypertile_combines_with_attention_techniques(session):
    extra = {**_hypertile(max_depth=3),
             "fu": {"class_type": "FreeU", "inputs": {"model": ["ht", 0], "b1": 1.1,
                                                       "b2": 1.2, "s1": 0.9, "s2": 0.2}},
             "sag": {"class_type": "SelfAttentionGuidance",
                     "inputs": {"model": ["fu", 0], "scale": 0.5, "blur_sigma": 2.0}},
             "pag": {"class_type": "PerturbedAttentionGuidance",
                     "inputs": {"model": ["sag", 0], "scale": 1.0}}}
    out = captured_samples(session, _graph(model=("pag", 0), extra=extra))
    assert torch.isfinite(out).all()
