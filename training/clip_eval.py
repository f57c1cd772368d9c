"""Zero-shot evaluation of a CLIP on the shapes world (held-out world seed 1_000_003).

    python -m training.clip_eval --threads 1                     # the shipped CLIP
    python -m training.clip_eval --model path/to/clip.safetensors --generated 64

Each held-out image is classified by the prompt whose text embedding is closest to the
image embedding (cosine), among every value of one attribute: colour ("a red shape", all
8 colours), shape ("a circle", all 6), and as extra figures position ("a shape at the top
left") and background ("a shape on a white background"). One-shape images count when the
prediction is the shape's value; two-shape images when it is either shape's. With
``--generated N`` the default model draws N held-out prompts and the CLIP is scored
against what the analytic judge reads in each image (images where the judge finds
exactly one shape): that is what CLIP guidance sees.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.shapes import (
    BACKGROUNDS,
    COLORS,
    POSITION_PHRASES,
    SHAPES,
    ShapeSpec,
    ShapesSample,
    generate,
)

HELD_OUT_SEED = 1_000_003
TARGETS = {"color": 0.95, "shape": 0.90}
#: attribute → (prompt template, values); the prompts are the short ones a user types
PROMPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "color": ("a {} shape", tuple(COLORS)),
    "shape": ("a {}", SHAPES),
    "position": ("a shape {}", tuple(POSITION_PHRASES)),
    "background": ("a shape on a {} background", BACKGROUNDS),
}


def _prompt(attribute: str, value: str) -> str:
    template, _ = PROMPTS[attribute]
    return template.format(POSITION_PHRASES[value] if attribute == "position" else value)


@dataclass
class ZeroShotReport:
    """Accuracy per attribute and image set ("one", "two", "generated")."""

    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def table(self) -> str:
        sets = list(self.accuracy)
        rows = [f"{'attribute':<12}" + "".join(f"{s + f' ({self.counts[s]})':>18}" for s in sets)
                + f"{'target':>9}"]
        for attr in PROMPTS:
            if not any(attr in self.accuracy[s] for s in sets):
                continue
            cells = "".join(f"{self.accuracy[s].get(attr, float('nan')):>18.3f}" for s in sets)
            target = TARGETS.get(attr)
            rows.append(f"{attr:<12}{cells}{'' if target is None else f'{target:>9.2f}'}")
        return "\n".join(rows)

    def passed(self, image_set: str = "one") -> bool:
        found = self.accuracy.get(image_set, {})
        return all(found.get(a, 0.0) >= t for a, t in TARGETS.items())


@torch.no_grad()
def classify(clip: Any, images: np.ndarray, attribute: str, batch_size: int = 256
             ) -> list[str]:
    """The zero-shot value of ``attribute`` for each uint8 ``[N, H, W, 3]`` image."""
    _, values = PROMPTS[attribute]
    text = clip.text_embeds([_prompt(attribute, v) for v in values]).float()
    text = text / text.norm(dim=-1, keepdim=True)
    out: list[str] = []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
        image = clip.image_embeds(chunk.float() / 255.0).float()
        image = image / image.norm(dim=-1, keepdim=True)
        out += [values[i] for i in (image @ text.T).argmax(dim=1).tolist()]
    return out


def _truth(shapes: Sequence[ShapeSpec], background: str, attribute: str) -> set[str]:
    if attribute == "background":
        return {background}
    return {getattr(s, attribute) for s in shapes}


def score(clip: Any, samples: Sequence[ShapesSample], attributes: Sequence[str]
          ) -> dict[str, float]:
    """Fraction of ``samples`` whose zero-shot prediction is one of the true values."""
    images = np.stack([s.image for s in samples])
    result = {}
    for attr in attributes:
        predicted = classify(clip, images, attr)
        hits = [p in _truth(s.shapes, s.background, attr)
                for p, s in zip(predicted, samples, strict=True)]
        result[attr] = float(np.mean(hits))
    return result


def held_out(n: int, two_shapes: bool, seed: int = HELD_OUT_SEED, size: int = 64
             ) -> list[ShapesSample]:
    """``n`` held-out images with one shape (or exactly two)."""
    out: list[ShapesSample] = []
    index = 0 if not two_shapes else 5_000_000  # disjoint index ranges
    while len(out) < n:
        sample = generate(seed, index, size, 1.0 if two_shapes else 0.0)
        out.append(sample)
        index += 1
    return out


def generated_samples(n: int, models_dir: Path, *, seed: int = HELD_OUT_SEED,
                      steps: int = 25) -> list[ShapesSample]:
    """Images the default model draws for ``n`` held-out one-shape prompts, labelled by
    the analytic judge (the ones where it finds exactly one shape)."""
    from training import judge
    from training.evaluate import EvalConfig, GraphRunner, txt2img_graph

    cfg = EvalConfig(steps=steps, progress=False)
    work = Path(tempfile.mkdtemp(prefix="clip-eval-"))
    runner = GraphRunner(models_dir, work)
    out: list[ShapesSample] = []
    for i in range(n):
        prompt = generate(seed, 7_000_000 + i, 64, 0.0)
        image = runner.image(txt2img_graph(cfg, prompt.caption, seed=i, size=64))
        found = judge.detect(image)
        if len(found) != 1:
            continue
        d = found[0]
        spec = ShapeSpec(shape=d.shape, color=d.color, position=d.position, size=d.size,
                         center=(0.5, 0.5), radius=0.1)
        out.append(ShapesSample(image, prompt.caption, (spec,), prompt.background,
                                d.mask[None]))
    return out


def evaluate_clip(clip: Any, *, samples: int = 500, two_shape_samples: int = 200,
                  generated: int = 0, models_dir: Path | None = None) -> ZeroShotReport:
    """Zero-shot accuracy on held-out images (and, optionally, on generated ones)."""
    report = ZeroShotReport()
    for name, n, two in (("one", samples, False), ("two", two_shape_samples, True)):
        if n:
            report.accuracy[name] = score(clip, held_out(n, two), list(PROMPTS))
            report.counts[name] = n
    if generated and models_dir is not None:
        made = generated_samples(generated, models_dir)
        # The judge reads colour and shape; the prompt's background is what was asked for.
        report.accuracy["generated"] = score(clip, made, ["color", "shape"])
        report.counts["generated"] = len(made)
    return report


def load_for_eval(model: Path | None, checkpoint: Path | None) -> Any:
    """A ClipVision from a CLIP file/folder (default: the shipped one) or from a training
    checkpoint of ``training.train_clip``."""
    from nodes.diffusion.builtin_models import shipped_weights
    from nodes.diffusion.clip_vision import ClipVision, load_clip_vision

    if checkpoint is not None:
        from nodes.diffusion.tokenizer import load_clip_tokenizer
        from training.train import StageOptions
        from training.train_clip import build_clip

        clip = build_clip(StageOptions(), text_source="shipped")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        clip.load_state_dict(state["modules"]["clip"])
        return ClipVision(clip.eval(), load_clip_tokenizer(), checkpoint.name)
    from training.train_clip import CLIP_NAME

    return load_clip_vision(model or shipped_weights(CLIP_NAME))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.clip_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="CLIP file or folder (default: shipped)")
    parser.add_argument("--checkpoint", type=Path, help="a train_clip checkpoint instead")
    parser.add_argument("--samples", type=int, default=500, help="one-shape images")
    parser.add_argument("--two-shape-samples", type=int, default=200)
    parser.add_argument("--generated", type=int, default=0,
                        help="also score N images drawn by the default model")
    parser.add_argument("--models", type=Path, default=Path("/tmp/steerflow-clip-eval"),
                        help="models folder for --generated (the default model is "
                        "installed there when missing)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clip = load_for_eval(args.model, args.checkpoint)
    models_dir = None
    if args.generated:
        from nodes.diffusion.shapes_model import ensure_shapes_model

        models_dir = args.models / "models"
        ensure_shapes_model(models_dir)
    report = evaluate_clip(clip, samples=args.samples, two_shape_samples=args.two_shape_samples,
                           generated=args.generated, models_dir=models_dir)
    print(f"zero-shot accuracy of {clip.name} (held-out world seed {HELD_OUT_SEED})")
    print(report.table())
    if "one" in report.accuracy:
        print("targets met (one-shape images):", "yes" if report.passed() else "NO")
    if args.json:
        args.json.write_text(json.dumps({"accuracy": report.accuracy, "counts": report.counts},
                                        indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
