"""The Instruct-Pix2Pix protocol on the shapes world: edit a rendered image by instruction.

A case is a triplet of ``training.ip2p_data`` (before image, instruction, after image)
in a world the model never trained on (dev: 77; held out: 1_000_003), the four kinds
of edit in turn (recolour, change shape, move one cell, change the background). Cases
the judge cannot read correctly — the before image or the *expected* after image not
read as specified — are skipped (the judge's error, not the model's), and drawing goes
on until ``n`` usable ones.

Scoring (:func:`score_edit`) reads the edited image with ``training.judge`` and a
background classifier (:func:`background_of`):

- ``done``: the instruction is carried out: the edited shape reads with the new
  colour / kind / cell and its other attributes (colour, kind, cell, size) unchanged;
  for a background edit, the background reads as the new one;
- ``kept``: everything the instruction does not name is kept: every other shape reads
  the same (colour, kind, cell, size), no shape appears, and the background (or, for a
  background edit, every shape) is unchanged;
- ``ok``: both. ``psnr_target`` is the PSNR to the expected after image (a figure of
  how close the pixels are, not part of ``ok``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from scipy import ndimage

from training import judge
from training.edit_eval import DEV_SEED, HELD_OUT_SEED, SUCCESS_TARGET
from training.ip2p_data import EDIT_KINDS, Triplet, make_triplet
from training.shapes import BACKGROUNDS, render_background

__all__ = ["DEV_SEED", "HELD_OUT_SEED", "SUCCESS_TARGET", "EditScore", "background_of",
           "ip2p_graph", "iter_cases", "score_edit", "summarise"]


# --- background -------------------------------------------------------------------------------

def background_features(image: np.ndarray) -> np.ndarray:
    """Mean RGB of the pixels away from any shape, and twice their luma's std (textures)."""
    away = ~ndimage.binary_dilation(judge.foreground(image), iterations=2)
    pixels = image[away] if away.sum() > 16 else image.reshape(-1, 3)
    pixels = pixels.astype(np.float32)
    luma = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.concatenate([pixels.mean(axis=0), [2 * luma.std()]])


@cache
def _prototypes(size: int) -> dict[str, np.ndarray]:
    """Each background's features, averaged over a few textures."""
    out = {}
    for name in BACKGROUNDS:
        feats = [background_features(np.clip(np.rint(render_background(
            name, size, np.random.default_rng(k))), 0, 255).astype(np.uint8))
            for k in range(8)]
        out[name] = np.mean(feats, axis=0)
    return out


def background_of(image: np.ndarray) -> str:
    """The background (of ``shapes.BACKGROUNDS``) whose features are nearest."""
    feats = background_features(image)
    protos = _prototypes(image.shape[0])
    return min(protos, key=lambda name: float(np.linalg.norm(protos[name] - feats)))


# --- scoring --------------------------------------------------------------------------------

@dataclass(frozen=True)
class EditScore:
    kind: str
    done: bool
    kept: bool
    psnr_target: float

    @property
    def ok(self) -> bool:
        return self.done and self.kept


def score_edit(triplet: Triplet, image: np.ndarray) -> EditScore:
    """Judge the edited ``image`` (uint8 ``[H, W, 3]``) of ``triplet``."""
    plan = triplet.plan
    n = len(plan.after_shapes)
    found = judge.detect(image, max_objects=n + 1)
    got = {(d.color, d.shape, d.position, d.size) for d in found}
    matched = [(s.color, s.shape, s.position, s.size) in got for s in plan.after_shapes]
    no_extra = len(found) == n
    background = background_of(image)
    if plan.kind == "background":
        done = background == plan.after_background
        kept = all(matched) and no_extra
    else:
        done = matched[plan.target]
        kept = (all(m for k, m in enumerate(matched) if k != plan.target) and no_extra
                and background == plan.background)
    return EditScore(plan.kind, done, kept, judge.psnr(image, triplet.after))


def judge_reads(triplet: Triplet) -> bool:
    """The judge reads the before image and the expected after image as specified."""
    before = judge.detect(triplet.before.image, max_objects=len(triplet.plan.shapes) + 1)
    want = sorted((s.color, s.shape, s.position, s.size) for s in triplet.plan.shapes)
    return (sorted((d.color, d.shape, d.position, d.size) for d in before) == want
            and background_of(triplet.before.image) == triplet.plan.background
            and score_edit(triplet, triplet.after).ok)


def iter_cases(world_seed: int, n: int, size: int = 64, kinds: Sequence[str] = EDIT_KINDS,
               max_index: int | None = None) -> Iterator[Triplet]:
    """The first ``n`` judge-readable triplets of ``world_seed``, the kinds in turn
    (deterministic; the wording is variant 0)."""
    found, index = 0, 0
    limit = max_index if max_index is not None else 20 * n + 100
    while found < n and index < limit:
        kind = kinds[found % len(kinds)]
        triplet = make_triplet(world_seed, index, size, kind=kind)
        index += 1
        if triplet is not None and judge_reads(triplet):
            found += 1
            yield triplet


def summarise(scores: Sequence[EditScore]) -> dict[str, float]:
    """Rates over the cases (ok, done, kept; ok per kind) and the PSNR to the target."""
    if not scores:
        return {"n": 0}
    out: dict[str, float] = {
        "n": len(scores),
        "ok": float(np.mean([s.ok for s in scores])),
        "done": float(np.mean([s.done for s in scores])),
        "kept": float(np.mean([s.kept for s in scores])),
        "psnr_target_median": float(np.median([min(s.psnr_target, 99.0) for s in scores])),
    }
    for kind in EDIT_KINDS:
        of_kind = [s.ok for s in scores if s.kind == kind]
        if of_kind:
            out[f"ok_{kind}"] = float(np.mean(of_kind))
    return out


# --- the graph ------------------------------------------------------------------------------

def ip2p_graph(model: str, image: str, instruction: str, *, seed: int = 0, steps: int = 20,
               cfg: float = 7.5, image_cfg: float = 1.5, sampler: str = "euler",
               scheduler: str = "normal", prefix: str = "ip2p") -> dict[str, Any]:
    """Load Checkpoint → the instruction and an empty negative → InstructPixToPix
    Conditioning (the input image from the input folder) → KSampler → VAE Decode → Save."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model}},
        "pos": {"class_type": "CLIPTextEncode",
                "inputs": {"text": instruction, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "ip2p": {"class_type": "InstructPixToPixConditioning", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "vae": ["ckpt", 2],
            "pixels": ["load", 0], "image_cfg": image_cfg}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": seed, "steps": steps, "cfg": cfg,
            "sampler_name": sampler, "scheduler": scheduler, "positive": ["ip2p", 0],
            "negative": ["ip2p", 1], "latent_image": ["ip2p", 2], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode",
                   "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage",
                 "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }
