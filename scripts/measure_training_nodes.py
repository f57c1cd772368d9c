"""Measure Train LoRA and Train Textual Inversion on the default model: teach "sks" = a
heart (a shape the shapes world never drew) from 8 images, then ask for it.

    python scripts/measure_training_nodes.py                       # both methods, held out
    python scripts/measure_training_nodes.py --methods lora --lora-steps 300 --rank 8
    python scripts/measure_training_nodes.py --methods lora --lora-seed 1  # run-to-run spread
    python scripts/measure_training_nodes.py --world 77 --prompts 20  # quick, dev world

Training runs through the real nodes in one graph (Load Image Batch → Train … → CLIP Text
Encode → KSampler), timed from the node's "executing" event to the sampler's with torch
on ``--threads`` threads; every step's wall time comes from its progress event. LoRA
trains on the hearts plus ``--prior`` known-shape images of the base model's own world
with their captions (prior preservation: without them, 40% hearts but the plain prompts'
shape score fell 50 points). Then:

- **new shape**: ``--prompts`` shapes-world layouts of world ``--world`` with the shape
  name replaced by the new word ("a small blue sks on the left on a beige background"),
  each at ``--seeds`` seeds (one batch); an image counts when its main blob reads as a
  heart in the asked colour (``training.new_shapes.classify_new``: heart template IoU ≥
  ``IOU_THRESHOLD`` and above every known shape's). Target ≥ 80%.
- **plain prompts**: the evaluation's held-out single-shape prompts (``training.evaluate``:
  world 1_000_003, seed = index), judged for colour / shape / position with the trained
  MODEL and CLIP and with the base ones. Target: no attribute drops by more than 3 points.

The base model's figures are computed once per run and shared by the methods; its
plain-prompt figures are also kept under ``--base-dir`` (per shipped model, prompt count
and sampling steps), so a later run reuses them. Each method's new-shape line ends with
the heart IoU quantiles of its misses (near 0.8: soft hearts; lower: blobs or known
shapes); ``--dump DIR`` writes its samples as a contact sheet (hits first).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HELD_OUT_SEED = 1_000_003
MATCH_TARGET = 0.80
DROP_TARGET = 0.03
TI_TOKEN = "<sks>"
TRAINING_NAMES: list[str] = []  # the hearts, then the prior images (put_training_images)
MASK_NAMES: list[str] = []  # their shapes' masks, with --masked-loss


@dataclass
class Timing:
    """Wall and process CPU time of the training node, and each step's wall time."""

    wall: float = 0.0
    cpu: float = 0.0
    step_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def training_node(method: str, args: argparse.Namespace, captions: str) -> dict[str, Any]:
    """The Train LoRA / Train Textual Inversion node of the measured settings."""
    common = {"model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2],
              "images": ["batch", 0], "captions": captions, "seed": 0, "resolution": 64,
              "gradient_checkpointing": False, "save_name": ""}
    if method == "lora":
        return {"class_type": "TrainLoRA", "inputs": {
            **common, "seed": args.lora_seed, "rank": args.rank,
            "alpha": float(args.alpha or args.rank),
            "learning_rate": args.lora_lr, "steps": args.lora_steps,
            "batch_size": args.lora_batch, "target": args.target,
            "target_modules": args.target_modules, "lr_scheduler": args.lora_scheduler,
            "lr_warmup_steps": args.lora_warmup, "snr_gamma": args.snr_gamma,
            "noise_offset": args.noise_offset,
            "unmasked_weight": 1.0 if args.masked_loss is None else args.masked_loss,
            **({"pivot_token": args.pivot_token, "pivot_initializer": args.pivot_init,
                "pivot_vectors": args.pivot_vectors, "pivot_learning_rate": args.pivot_lr,
                "pivot_ti_steps": args.pivot_ti_steps} if args.pivot_token else {})}}
    return {"class_type": "TrainTextualInversion", "inputs": {
        **common, "placeholder_token": TI_TOKEN, "initializer_token": args.initializer,
        "num_vectors": args.vectors, "learning_rate": args.ti_lr, "steps": args.ti_steps,
        "batch_size": args.ti_batch, "lr_scheduler": args.ti_scheduler,
        "lr_warmup_steps": args.ti_warmup}}


def graph(cfg: Any, text: str, seed: int, batch: int, train: dict[str, Any] | None
          ) -> dict[str, Any]:
    """txt2img of ``text`` (``batch`` images from ``seed``), with the trained MODEL / CLIP
    when ``train`` is given (the images are Load Image Batch's)."""
    from training.evaluate import txt2img_graph
    from training.new_shapes import TRAINING_LAYOUT

    g = txt2img_graph(cfg, text, seed, cfg.image_size)
    g["latent"]["inputs"]["batch_size"] = batch
    if train is not None:
        # Textual inversion trains on the hearts alone: every caption must hold the
        # placeholder, and its frozen UNet has no prior to keep.
        names = TRAINING_NAMES if train["class_type"] != "TrainTextualInversion" else (
            TRAINING_NAMES[:len(TRAINING_LAYOUT)])
        g["batch"] = {"class_type": "LoadImageBatch", "inputs": {
            "folder": "", "images": "\n".join(names), "size": "refuse",
            "caption_template": "{caption}"}}
        g["train"] = train
        if MASK_NAMES and train["class_type"] != "TrainTextualInversion":
            g["mask_batch"] = {"class_type": "LoadImageBatch", "inputs": {
                "folder": "", "images": "\n".join(MASK_NAMES), "size": "refuse",
                "caption_template": ""}}
            g["mask"] = {"class_type": "ImageToMask",
                         "inputs": {"image": ["mask_batch", 0], "channel": "red"}}
            train["inputs"]["loss_mask"] = ["mask", 0]
        for node in ("pos", "neg"):
            g[node]["inputs"]["clip"] = ["train", 1 if train["class_type"] == "TrainLoRA"
                                         else 0]
        if train["class_type"] == "TrainLoRA":
            g["sample"]["inputs"]["model"] = ["train", 0]
    return g


def images(runner: Any, g: dict[str, Any], on_event: Any = None) -> list[Any]:
    import numpy as np
    from PIL import Image

    result = runner.session.run(g, on_event=on_event)
    if not result.ok:
        raise RuntimeError(f"graph failed: {result.run.error}")
    out = []
    for path in result.image_paths:
        with Image.open(path) as img:
            out.append(np.asarray(img.convert("RGB")))
    return out


def train_and_time(runner: Any, cfg: Any, train: dict[str, Any]) -> Timing:
    """Run the training graph once (the trained result stays in the session's cache)."""
    timing = Timing()
    marks: dict[str, float] = {}

    def on_event(name: str, data: dict[str, Any]) -> None:
        now = time.perf_counter()
        if name == "executing" and data.get("node") == "train":
            marks["start"], marks["cpu"], marks["last"] = now, time.process_time(), now
        elif name == "executing" and "start" in marks and "end" not in marks:
            marks["end"], marks["cpu_end"] = now, time.process_time()
        elif name == "progress" and data.get("node") == "train":
            timing.step_times.append(now - marks["last"])
            marks["last"] = now
            if isinstance(data.get("loss"), float):
                timing.losses.append(data["loss"])
            if len(timing.step_times) % 200 == 0:  # a sign of life on a busy machine
                print(f"  step {len(timing.step_times)}: {now - marks['start']:.0f} s",
                      flush=True)

    images(runner, graph(cfg, "", 0, 1, train), on_event)
    timing.wall = marks["end"] - marks["start"]
    timing.cpu = marks["cpu_end"] - marks["cpu"]
    return timing


def plain_scores(runner: Any, cfg: Any, n: int, train: dict[str, Any] | None
                 ) -> dict[str, float]:
    """Judge's colour / shape / position rates (and all three) on the held-out prompts."""
    import numpy as np

    from training import judge
    from training.shapes import generate

    rows = []
    for i in range(n):
        s = generate(HELD_OUT_SEED, i, cfg.image_size, 0.0)
        img = images(runner, graph(cfg, s.caption, i, 1, train))[0]
        rows.append(judge.score_single(img, s.shapes[0]))
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("color", "shape", "position")}
    out["all"] = float(np.mean([r["color"] and r["shape"] and r["position"] for r in rows]))
    return out


def new_shape_scores(runner: Any, cfg: Any, world: int, n: int, seeds: int, word: str,
                     train: dict[str, Any] | None, dump: Path | None = None
                     ) -> tuple[dict[str, float], dict[str, int]]:
    """Heart-in-the-asked-colour rate over ``n`` prompts x ``seeds``; what else was drawn.
    With ``dump``, also write the images (hits then misses) as a contact sheet there."""
    import numpy as np

    from training import new_shapes as ns
    from training.shapes import generate

    verdicts, colors, drawn_images = [], [], []
    drawn: dict[str, int] = {}
    by_size: dict[str, list[bool]] = {}
    for i in range(n):
        spec = generate(world, i, cfg.image_size, 0.0).shapes[0]
        background = generate(world, i, cfg.image_size, 0.0).background
        text = ns.caption(spec, background, word)
        for img in images(runner, graph(cfg, text, i * 1000, seeds, train)):
            v = ns.classify_new(img)
            verdicts.append(v)
            colors.append(spec.color)
            drawn_images.append(img)
            drawn[v.shape] = drawn.get(v.shape, 0) + 1
            by_size.setdefault(spec.size, []).append(v.matches(spec.color))
    scores = ns.summarise(verdicts, colors)
    scores.update({f"match {size}": sum(hits) / len(hits) for size, hits in by_size.items()})
    # How near the misses come: near-misses (IoU just under the threshold) want sharper
    # shapes, low IoUs mean blobs or known shapes.
    misses = [v.heart_iou for v, c in zip(verdicts, colors, strict=True) if not v.matches(c)]
    if misses:
        q = np.quantile(misses, [0.1, 0.5, 0.9])
        scores["miss iou p10"], scores["miss iou p50"], scores["miss iou p90"] = q
    if dump is not None:
        hits = [v.matches(c) for v, c in zip(verdicts, colors, strict=True)]
        contact_sheet([im for im, h in zip(drawn_images, hits, strict=True) if h]
                      + [im for im, h in zip(drawn_images, hits, strict=True) if not h], dump)
    return scores, drawn


def contact_sheet(pictures: list[Any], path: Path, cols: int = 10) -> None:
    """Save ``pictures`` (uint8 ``[H, W, 3]``) as a grid, 1 px gaps, 2x nearest-upscaled."""
    import numpy as np
    from PIL import Image

    if not pictures:
        return
    h, w, _ = pictures[0].shape
    rows = -(-len(pictures) // cols)
    sheet = np.full((rows * (h + 1), cols * (w + 1), 3), 255, np.uint8)
    for k, pic in enumerate(pictures):
        r, c = divmod(k, cols)
        sheet[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = pic
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2),
                                  Image.Resampling.NEAREST).save(path)


def mirrored_caption(text: str) -> str:
    """A caption for the left-right mirror of its image: "left" and "right" swapped."""
    words = {"left": "right", "right": "left"}
    return " ".join(words.get(w, w) for w in text.split(" "))


def put_training_images(runner: Any, prior: int, mirror: bool = False) -> str:
    """Write the 8 hearts and ``prior`` images of the base model's training world
    (``training.new_shapes.training_files``) into the session's input/; their captions,
    one a line, in TRAINING_NAMES' order. With ``mirror``, each image's left-right mirror
    (its caption's sides swapped) follows them."""
    from training.new_shapes import training_files

    TRAINING_NAMES.clear()
    lines = []
    files = training_files(prior)
    if mirror:
        files += [("mirror_" + name, image[:, ::-1].copy(), mirrored_caption(text))
                  for name, image, text in files]
    for name, image, text in files:
        TRAINING_NAMES.append(runner.put_image(name, image))
        lines.append(text)
    return "\n".join(lines)


def put_training_masks(runner: Any, prior: int, grow: int = 0, mirror: bool = False) -> None:
    """Write the training images' shape masks into input/ (a masked loss's subjects),
    grown by ``grow`` pixels (so the loss also sees the ring of background that draws
    the silhouette)."""
    import numpy as np

    from training.new_shapes import training_masks

    def grown(mask: np.ndarray) -> np.ndarray:
        out = mask > 0
        for _ in range(grow):  # a 3x3 dilation per pixel of growth
            padded = np.pad(out, 1)
            out = np.any([padded[y:y + out.shape[0], x:x + out.shape[1]]
                          for y in range(3) for x in range(3)], axis=0)
        return (out * 255).astype(np.uint8)

    masks = training_masks(prior)
    if mirror:
        masks += [("mirror_" + name, m[:, ::-1].copy()) for name, m in masks]
    MASK_NAMES[:] = [runner.put_image(name, np.stack([grown(m)] * 3, -1))
                     for name, m in masks]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["lora", "ti"], choices=["lora", "ti"])
    parser.add_argument("--world", type=int, default=HELD_OUT_SEED,
                        help="world of the new-shape prompts (77: dev, for tuning)")
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=2, help="images per new-shape prompt")
    parser.add_argument("--plain", type=int, default=100, help="plain prompts (0: skip)")
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--cfgs", type=float, nargs="+", default=None,
                        help="also score the new-shape prompts at these CFG scales (the "
                        "trained result is reused)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prior", type=int, default=8,
                        help="also train on this many shapes-world images (prior preservation)")
    parser.add_argument("--skip-base", action="store_true",
                        help="skip the base model's new-shape figures (0%%: it draws no hearts)")
    parser.add_argument("--base-dir", type=Path, default=Path("/tmp/training_nodes_base"),
                        help="holds models/ (the shipped model is installed there if missing) "
                        "and the base model's plain-prompt figures, once computed")
    parser.add_argument("--dump", type=Path, default=None,
                        help="write each method's new-shape samples here as a contact sheet "
                        "(<method>.png: hits first, then misses)")
    lora = parser.add_argument_group("Train LoRA")
    lora.add_argument("--lora-steps", type=int, default=1200)
    lora.add_argument("--lora-lr", type=float, default=3e-3)
    lora.add_argument("--rank", type=int, default=8)
    lora.add_argument("--alpha", type=float, default=None, help="default: the rank")
    lora.add_argument("--lora-batch", type=int, default=4)
    lora.add_argument("--target", default="unet",
                      choices=["unet", "unet+text_encoder"])
    lora.add_argument("--target-modules",
                      default="to_k, to_q, to_v, to_out.0, conv1, conv2, proj_in, proj_out")
    lora.add_argument("--lora-scheduler", default="cosine")
    lora.add_argument("--lora-warmup", type=int, default=0)
    lora.add_argument("--snr-gamma", type=float, default=5.0)
    lora.add_argument("--noise-offset", type=float, default=0.0)
    lora.add_argument("--masked-loss", type=float, default=None, metavar="WEIGHT",
                      help="masked loss: the shapes' masks, this weight outside them")
    lora.add_argument("--mask-grow", type=int, default=0, metavar="PIXELS",
                      help="grow the masked loss's masks by this many pixels")
    lora.add_argument("--mirror", action="store_true",
                      help="also train on each image's left-right mirror (sides swapped in "
                           "its caption): 16 hearts from the 8")
    lora.add_argument("--lora-seed", type=int, default=0,
                      help="the node's seed (init, noise, batches): for run-to-run spread")
    lora.add_argument("--pivot-token", default="",
                      help="pivotal tuning: also learn this word's embedding (sks: its own "
                      "row; a new placeholder such as <sks> replaces sks in the captions "
                      "and prompts)")
    lora.add_argument("--pivot-init", default="",
                      help="pivotal tuning: the token's starting word (empty: sks's own "
                      "row, or 'shape' for a new placeholder)")
    lora.add_argument("--pivot-vectors", type=int, default=1)
    lora.add_argument("--pivot-lr", type=float, default=5e-3)
    lora.add_argument("--pivot-ti-steps", type=int, default=0,
                      help="pivotal tuning: the first steps train the token alone")
    ti = parser.add_argument_group("Train Textual Inversion")
    ti.add_argument("--ti-steps", type=int, default=1500)
    ti.add_argument("--ti-lr", type=float, default=1e-2)
    ti.add_argument("--vectors", type=int, default=4)
    ti.add_argument("--initializer", default="shape")
    ti.add_argument("--ti-batch", type=int, default=4)
    ti.add_argument("--ti-scheduler", default="constant")
    ti.add_argument("--ti-warmup", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from training.evaluate import EvalConfig, GraphRunner
    from training.new_shapes import TRAINING_LAYOUT, WORD

    torch.set_num_threads(args.threads)
    cfg = EvalConfig(steps=args.sample_steps, progress=False)
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="training-nodes-") as work:
        runner = GraphRunner(args.base_dir / "models", Path(work))
        lora_captions = put_training_images(runner, args.prior, args.mirror)
        if args.masked_loss is not None:
            put_training_masks(runner, args.prior, args.mask_grow, args.mirror)
        ti_captions = "\n".join(lora_captions.replace(f" {WORD} ", f" {TI_TOKEN} ")
                                .split("\n")[:len(TRAINING_LAYOUT)])
        print(f"new-shape prompts: world {args.world}, {args.prompts} x {args.seeds} seeds; "
              f"plain: {args.plain}; {args.sample_steps} sampling steps; "
              f"{args.threads} threads", flush=True)
        base_plain = cached_base_plain(runner, cfg, args) if args.plain else {}
        base_new, base_drawn = ({"match": float("nan")}, {}) if args.skip_base else (
            new_shape_scores(runner, cfg, args.world, args.prompts, args.seeds, WORD, None))
        print(f"base: plain {fmt(base_plain)}; 'sks' prompts {fmt(base_new)} {base_drawn}",
              flush=True)
        lora_word = args.pivot_token or WORD
        if lora_word != WORD:
            lora_captions = "\n".join(f" {line} ".replace(f" {WORD} ", f" {lora_word} ")
                                       .strip() for line in lora_captions.split("\n"))
        for method in args.methods:
            captions = lora_captions if method == "lora" else ti_captions
            train = training_node(method, args, captions)
            timing = train_and_time(runner, cfg, train)
            steps = len(timing.step_times)
            median = sorted(timing.step_times)[steps // 2] if steps else float("nan")
            start = time.time()
            word = lora_word if method == "lora" else TI_TOKEN
            new, drawn = new_shape_scores(runner, cfg, args.world, args.prompts, args.seeds,
                                          word, train,
                                          args.dump / f"{method}.png" if args.dump else None)
            for scale in args.cfgs or []:
                other, other_drawn = new_shape_scores(
                    runner, dataclasses.replace(cfg, cfg=scale), args.world, args.prompts,
                    args.seeds, word, train)
                print(f"  cfg {scale}: new shape {fmt(other)} drawn {other_drawn}", flush=True)
            plain = plain_scores(runner, cfg, args.plain, train) if args.plain else {}
            drop = max((base_plain[k] - plain[k] for k in ("color", "shape", "position")
                        if k in plain), default=0.0)
            params = {k: v for k, v in train["inputs"].items()
                      if not isinstance(v, list) and k not in ("captions", "save_name")}
            print(f"\n{method}: {params}\n  training {timing.wall:.1f} s wall, "
                  f"{timing.cpu:.1f} s CPU, {steps} steps, median step {median:.3f} s "
                  f"(estimate at the median: {median * steps:.1f} s); loss "
                  f"{timing.losses[0]:.4f} → {sum(timing.losses[-20:]) / 20:.4f} (last 20)"
                  f"\n  new shape {fmt(new)} drawn {drawn}\n  plain {fmt(plain)} "
                  f"(max drop {drop * 100:.1f} points)  [{time.time() - start:.0f} s to score]",
                  flush=True)
            rows.append(f"{method:<5} {timing.wall:>7.1f} {median * steps:>9.1f} "
                        f"{new['match']:>7.1%} {'yes' if new['match'] >= MATCH_TARGET else 'NO':>4}"
                        f" {drop * 100:>9.1f} {'yes' if drop <= DROP_TARGET + 1e-9 else 'NO':>4}")
    print(f"\n{'method':<5} {'train s':>7} {'median·n':>9} {'heart':>7} {'≥80':>4} "
          f"{'drop pts':>9} {'≤3':>4}")
    print(f"base  {'':>7} {'':>9} {base_new['match']:>7.1%}")
    print("\n".join(rows))


def cached_base_plain(runner: Any, cfg: Any, args: argparse.Namespace) -> dict[str, float]:
    """The base model's plain-prompt figures, computed once per shipped model, prompt
    count and sampling steps (they do not depend on the training settings)."""
    import hashlib
    import json

    from nodes.diffusion.builtin_models import SHAPES_NAME, shipped_weights

    digest = hashlib.sha256(shipped_weights(SHAPES_NAME).read_bytes()).hexdigest()[:16]
    path = args.base_dir / f"base_plain_{digest}_{args.plain}_{args.sample_steps}.json"
    if path.exists():
        return json.loads(path.read_text())
    scores = plain_scores(runner, cfg, args.plain, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scores))
    return scores


def fmt(scores: dict[str, float]) -> str:
    return ", ".join(f"n {int(v)}" if k == "n" else f"{k} {v:.2f}" if "iou" in k
                     else f"{k} {v:.1%}" for k, v in scores.items())


if __name__ == "__main__":
    main()
