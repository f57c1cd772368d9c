"""Token Merging: the bipartite matching and merge / unmerge written out by hand, and
sampling with TomePatchModel (seeded, with HyperTile and other techniques)."""

from __future__ import annotations

import pytest
import torch

from engine.session import Session
from nodes.diffusion.token_merging import match
from tests.graph_nodes import captured_samples, registry_with_capture, tiny_txt2img


def test_match_merges_the_most_similar_sources_into_their_destinations():
    torch.manual_seed(0)
    h, w, r = 4, 5, 6  # an odd width: the last column is all sources
    x = torch.randn(2, h * w, 8)
    m = match(x, h, w, r, torch.Generator().manual_seed(3))
    dest = set(m.destinations.tolist())
    # one destination in each 2×2 cell, none in the fifth column
    assert len(dest) == (h // 2) * (w // 2)
    for i in range(0, h, 2):
        for j in range(0, 4, 2):
            cell = {(i + a) * w + j + b for a in (0, 1) for b in (0, 1)}
            assert len(cell & dest) == 1
    assert all(t % w != 4 for t in dest)
    merged = m.merge(x)
    assert merged.shape == (2, h * w - r, 8)
    back = m.unmerge(merged)
    normed = x / x.norm(dim=-1, keepdim=True)
    sources = m.sources.tolist()
    destinations = m.destinations.tolist()
    for b in range(2):
        sims = normed[b, sources] @ normed[b, destinations].T
        best, choice = sims.max(dim=1)
        top = set(best.argsort(descending=True)[:r].tolist())  # the r best-matched sources
        groups = {d: [x[b, destinations[d]]] for d in range(len(destinations))}
        for s in top:
            groups[int(choice[s])].append(x[b, sources[s]])
        for d, members in groups.items():  # a destination: the mean of its group
            torch.testing.assert_close(back[b, destinations[d]], torch.stack(members).mean(0))
        for s, token in enumerate(sources):
            want = back[b, destinations[int(choice[s])]] if s in top else x[b, token]
            torch.testing.assert_close(back[b, token], want)


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory) -> Session:
    return Session(tmp_path_factory.mktemp("tome"), models_dir=models_dir, device="cpu",
                   registry=registry_with_capture())


def _tome(ratio: float, model=("ckpt", 0)) -> dict:
    return {"tome": {"class_type": "TomePatchModel",
                     "inputs": {"model": list(model), "ratio": ratio}}}


def test_sampling_with_token_merging(session):
    plain = captured_samples(session, tiny_txt2img())
    merged = captured_samples(session, tiny_txt2img(("tome", 0), extra=_tome(0.5)))
    assert torch.isfinite(merged).all() and (merged - plain).abs().max() > 1e-4
    again = captured_samples(session, tiny_txt2img(("tome", 0), extra=_tome(0.5)))
    assert torch.equal(merged, again)
    off = captured_samples(session, tiny_txt2img(("tome", 0), extra=_tome(0.0)))
    assert torch.equal(off, plain)


def test_token_merging_with_hypertile_and_sag(session):
    extra = {**_tome(1.0, ("ckpt", 0)),
             "ht": {"class_type": "HyperTile", "inputs": {
                 "model": ["tome", 0], "tile_size": 32, "swap_size": 2, "max_depth": 1,
                 "scale_depth": False}},
             "sag": {"class_type": "SelfAttentionGuidance",
                     "inputs": {"model": ["ht", 0], "scale": 0.5, "blur_sigma": 2.0}}}
    out = captured_samples(session, tiny_txt2img(("sag", 0), extra=extra))
    assert torch.isfinite(out).all()
