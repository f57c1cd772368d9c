"""Guidance built from whole-canvas rows next to area regions (cropped prompts).

With Conditioning Set Area or "mask bounds" regions the cond and uncond are fused from
crop passes; PAG's perturbed copies, SEGA's concepts and SAG's degraded pass were set
against that fusion, so every step added the difference between a crop's prediction and
the canvas' and the image turned to noise. Each test removes the technique's own effect
(an idle hook, a concept equal to the negative, an undegraded latent): the run must then
be the plain one, which only holds when like is set against like.
"""

from __future__ import annotations

import numpy as np
import pytest

from nodes.diffusion.pag import IdentitySelfAttention
from nodes.diffusion.sag import SelfAttentionGuidance
from tests.region_graphs import with_region
from tests.test_pag import NEGATIVE, pag_prompt, run_graph

REGIONS = ["area", "mask bounds"]
TEXT = "a green star"


def regional(prompt: dict, regions: str) -> dict:
    return with_region(prompt, regions, TEXT)


def with_sega(prompt: dict, text: str, scale: float = 6.0) -> dict:
    g = dict(prompt)
    g["c9"] = {"class_type": "SEGAConcept", "inputs": {
        "clip": ["4", 1], "text": text, "scale": scale, "warmup_steps": 1, "threshold": 0.8}}
    g["s9"] = {"class_type": "ApplySEGA", "inputs": {"model": g["3"]["inputs"]["model"],
                                                    "concepts": ["c9", 0]}}
    g["3"] = {**g["3"], "inputs": {**g["3"]["inputs"], "model": ["s9", 0]}}
    return g


def with_sag(prompt: dict, scale: float = 1.0) -> dict:
    g = dict(prompt)
    g["g9"] = {"class_type": "SelfAttentionGuidance", "inputs": {
        "model": g["3"]["inputs"]["model"], "scale": scale, "blur_sigma": 2.0}}
    g["3"] = {**g["3"], "inputs": {**g["3"]["inputs"], "model": ["g9", 0]}}
    return g


@pytest.mark.parametrize("regions", REGIONS)
def test_pag_perturbs_the_crops_as_the_cond_is_fused(session, monkeypatch, regions):
    pag = {"scale": 3.0, "layers": "mid, up_blocks.1"}
    plain = run_graph(session, regional(pag_prompt(), regions))
    acting = run_graph(session, regional(pag_prompt(pag=pag), regions))
    # PAG moves the image about as much with regions as without (not the noise it made)
    alone = np.abs(run_graph(session, pag_prompt(pag=pag)) - run_graph(session, pag_prompt()))
    assert 0.2 < np.abs(acting - plain).mean() / alone.mean() < 5
    # an idle perturbation: the perturbed copies are the cond itself, crops included
    # (another seed: the cached run would answer otherwise)
    monkeypatch.setattr(IdentitySelfAttention, "on_output",
                        lambda self, call, attended, value: attended)
    idle = run_graph(session, regional(pag_prompt(pag=pag, seed=4), regions))
    assert np.abs(idle - run_graph(session, regional(pag_prompt(seed=4), regions))).max() <= 1e-4


@pytest.mark.parametrize("regions", REGIONS)
def test_sega_concepts_are_set_against_the_whole_canvas_negative(session, regions):
    plain = run_graph(session, regional(pag_prompt(), regions))
    # a concept that is the negative prompt itself edits nothing
    idle = run_graph(session, with_sega(regional(pag_prompt(), regions), NEGATIVE))
    assert np.abs(idle - plain).max() <= 1e-4
    acting = run_graph(session, with_sega(regional(pag_prompt(), regions), "a blue square"))
    alone = np.abs(run_graph(session, with_sega(pag_prompt(), "a blue square"))
                   - run_graph(session, pag_prompt()))
    assert 0.2 < np.abs(acting - plain).mean() / alone.mean() < 5


@pytest.mark.parametrize("regions", REGIONS)
@pytest.mark.parametrize("cfg", [7.5, 1.0])
def test_sag_degrades_the_row_its_pass_repeats(session, monkeypatch, regions, cfg):
    plain = run_graph(session, regional(pag_prompt(cfg=cfg), regions))
    acting = run_graph(session, with_sag(regional(pag_prompt(cfg=cfg), regions)))
    assert np.abs(acting - plain).max() > 1e-3
    # nothing blurred: the degraded pass repeats the main pass's row, so SAG adds nothing
    # (another seed: the cached run would answer otherwise)
    monkeypatch.setattr(SelfAttentionGuidance, "degraded_latents",
                        lambda self, run, t, latents, eps, attn_map: latents)
    idle = run_graph(session, with_sag(regional(pag_prompt(cfg=cfg, seed=4), regions)))
    plain = run_graph(session, regional(pag_prompt(cfg=cfg, seed=4), regions))
    assert np.abs(idle - plain).max() <= 1e-4
