"""Measure Train DreamBooth (or Train Custom Diffusion) on the default model: teach "sks"
(Custom Diffusion: its modifier token) = a heart from the 8 images of
``scripts/measure_training_nodes.py`` and score it with that script's protocol (new-shape
match rate, plain held-out prompts with vs without), plus "a circle" prompts.

    python scripts/measure_dreambooth.py --world 77 --prompts 20 --plain 0   # quick, dev
    python scripts/measure_dreambooth.py                                     # held out
    python scripts/measure_dreambooth.py --method custom_diffusion --lr 1e-3 --steps 600

The graph, the images, the scoring and the timing are measure_training_nodes.py's; only
the training node differs (its MODEL and CLIP are wired as Train LoRA's).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import measure_training_nodes as mtn  # noqa: E402

_lora_graph = mtn.graph


def graph(cfg: Any, text: str, seed: int, batch: int, train: dict[str, Any] | None
          ) -> dict[str, Any]:
    """measure_training_nodes' graph; Train DreamBooth's outputs are wired as Train LoRA's
    (MODEL 0, CLIP 1)."""
    if train is None or train["class_type"] not in ("TrainDreamBooth", "TrainCustomDiffusion"):
        return _lora_graph(cfg, text, seed, batch, train)
    g = _lora_graph(cfg, text, seed, batch, {**train, "class_type": "TrainLoRA"})
    g["train"] = train
    return g


mtn.graph = graph  # the protocol's functions build their graphs through this one


def circle_scores(runner: Any, cfg: Any, n: int, train: dict[str, Any] | None) -> float:
    """Fraction of "a <colour> circle" samples (n seeds over the colours) the judge reads as
    a circle in that colour."""
    from training import judge
    from training.shapes import COLORS

    hits = 0
    names = list(COLORS)
    for i in range(n):
        color = names[i % len(names)]
        img = mtn.images(runner, graph(cfg, f"a {color} circle", 500 + i, 1, train))[0]
        found = judge.detect(img, max_objects=1)
        hits += bool(found and found[0].shape == "circle" and found[0].color == color)
    return hits / max(n, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=mtn.HELD_OUT_SEED)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--plain", type=int, default=100)
    parser.add_argument("--circles", type=int, default=0, help="'a <colour> circle' samples")
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base-dir", type=Path, default=Path("/tmp/training_nodes_base"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--train-text-encoder", action="store_true")
    parser.add_argument("--class-prompt", default="", help="empty: no prior preservation")
    parser.add_argument("--class-images", type=int, default=100)
    parser.add_argument("--prior-weight", type=float, default=1.0)
    parser.add_argument("--prior", type=int, default=0,
                        help="also train on this many shapes-world images with their captions")
    parser.add_argument("--masked-loss", type=float, default=None, metavar="WEIGHT",
                        help="masked loss: the shapes' masks, this weight outside them")
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--method", default="dreambooth",
                        choices=["dreambooth", "custom_diffusion"])
    parser.add_argument("--modifier", default="<new1>", help="Custom Diffusion's new word")
    parser.add_argument("--initializer", default="pll", help="Custom Diffusion's start row")
    parser.add_argument("--freeze-model", default="crossattn_kv",
                        choices=["crossattn_kv", "crossattn"])
    parser.add_argument("--seed", type=int, default=0, help="the training seed")
    parser.add_argument("--pivot-token", default="", help="DreamBooth's pivotal tuning")
    parser.add_argument("--pivot-init", default="")
    parser.add_argument("--pivot-vectors", type=int, default=1)
    parser.add_argument("--pivot-lr", type=float, default=5e-3)
    parser.add_argument("--pivot-ti-steps", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from training.evaluate import EvalConfig, GraphRunner
    from training.new_shapes import WORD

    torch.set_num_threads(args.threads)
    cfg = EvalConfig(steps=args.sample_steps, progress=False)
    with tempfile.TemporaryDirectory(prefix="dreambooth-") as work:
        runner = GraphRunner(args.base_dir / "models", Path(work))
        captions = mtn.put_training_images(runner, args.prior)
        if args.masked_loss is not None:
            mtn.put_training_masks(runner, args.prior, 0)
        word = WORD
        common = {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2],
            "images": ["batch", 0], "captions": captions, "learning_rate": args.lr,
            "steps": args.steps, "batch_size": args.batch, "seed": args.seed, "resolution": 64,
            "with_prior_preservation": bool(args.class_prompt),
            "class_prompt": args.class_prompt, "num_class_images": args.class_images,
            "prior_loss_weight": args.prior_weight, "class_steps": args.sample_steps,
            "class_cfg": cfg.cfg, "class_sampler": "euler",
            "gradient_checkpointing": False, "save_name": "",
            "unmasked_weight": 1.0 if args.masked_loss is None else args.masked_loss}
        if args.method == "dreambooth":
            train = {"class_type": "TrainDreamBooth", "inputs": {
                **common, "train_text_encoder": args.train_text_encoder,
                "pivot_token": args.pivot_token, "pivot_initializer": args.pivot_init,
                "pivot_vectors": args.pivot_vectors, "pivot_learning_rate": args.pivot_lr,
                "pivot_ti_steps": args.pivot_ti_steps}}
        else:
            word = args.modifier
            common["captions"] = captions.replace(f" {WORD} ", f" {word} ")
            train = {"class_type": "TrainCustomDiffusion", "inputs": {
                **common, "modifier_token": word, "initializer_token": args.initializer,
                "freeze_model": args.freeze_model}}
        if not args.skip_base:
            base_plain = mtn.plain_scores(runner, cfg, args.plain, None) if args.plain else {}
            base_new, drawn = mtn.new_shape_scores(runner, cfg, args.world, args.prompts,
                                                   args.seeds, WORD, None)
            print(f"base: plain {mtn.fmt(base_plain)}; sks {mtn.fmt(base_new)} {drawn}",
                  flush=True)
            if args.circles:
                print(f"base: circles {circle_scores(runner, cfg, args.circles, None):.1%}",
                      flush=True)
        timing = mtn.train_and_time(runner, cfg, train)
        steps = len(timing.losses)
        print(f"training {timing.wall:.1f} s wall, {timing.cpu:.1f} s CPU, {steps} steps; loss "
              f"{timing.losses[0]:.4f} → {sum(timing.losses[-20:]) / 20:.4f} (last 20)",
              flush=True)
        start = time.time()
        new, drawn = mtn.new_shape_scores(runner, cfg, args.world, args.prompts, args.seeds,
                                          word, train)
        print(f"{args.method}: {word} {mtn.fmt(new)} {drawn}", flush=True)
        if args.plain:
            plain = mtn.plain_scores(runner, cfg, args.plain, train)
            print(f"{args.method}: plain {mtn.fmt(plain)}", flush=True)
        if args.circles:
            circles = circle_scores(runner, cfg, args.circles, train)
            print(f"{args.method}: circles {circles:.1%}", flush=True)
        print(f"[{time.time() - start:.0f} s to score]")


if __name__ == "__main__":
    main()
