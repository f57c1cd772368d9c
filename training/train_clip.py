"""Train the shapes-world CLIP, ``steerflow-shapes-clip`` (after ``train text``, or from the
shipped default model's text encoder).

    python -m training.train_clip --out output/training --threads 1

transformers' ``CLIPModel`` with the real CLIP tokenizer: the text tower is the default
model's trained text encoder (hidden 64; it already tells every attribute of a caption
apart), kept frozen, so the contrastive training learns the ViT image tower, both
projections and the logit scale. Loss: symmetric InfoNCE with a learned temperature, with
one twist the shapes world needs: a batch holds many images a short caption fits ("red"
fits every image with a red shape), so each row's target is spread over every caption
(column: image) it is consistent with, not only its own (SupCon-style soft targets).
Without that, "a red shape" would be pushed away from all red images but one. And half of
each batch comes in groups that share background and colour (``hard_group``): otherwise
colour and background tell a batch's captions apart, and the image tower learned nothing
else (shape and position stayed at chance for 500 steps). Even so, the ViT learns shape
last and slowly: position took off after ~600 steps, shape later (training/README.md).
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel

from nodes.diffusion.clip_vision import CLIP_MEAN, CLIP_STD, save_clip_file
from nodes.diffusion.tokenizer import load_clip_tokenizer
from training.captions import SLOTS, caption_labels
from training.loop import LoopConfig, LoopResult, seed_everything, train_loop
from training.models import TEXT_CONFIG
from training.shapes import (
    _COLOR_JITTER,
    BACKGROUNDS,
    COLORS,
    POSITION_PHRASES,
    SHAPES,
    ShapeSpec,
    ShapesSample,
    full_caption,
    generate,
    render,
    sample_layout,
    training_caption,
)
from training.train import StageOptions, add_common_args, loop_config, write_log

CLIP_NAME = "steerflow-shapes-clip"
DEFAULTS: dict[str, float | int] = {"steps": 3000, "batch_size": 128, "lr": 1e-3, "warmup": 100}

# Image tower: 64x64 images in 8x8 patches (64 tokens + class token). Width 96 keeps the
# file within 8 MB: the text tower's 49408x64 token embedding alone is 6.3 MB in fp16.
VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 96, "intermediate_size": 384, "num_attention_heads": 4,
    "num_hidden_layers": 4, "image_size": 64, "patch_size": 8, "num_channels": 3,
    "hidden_act": "quick_gelu", "projection_dim": 64,
}
PROJECTION_DIM = 64
TWO_SHAPE_PROB = 0.3
GROUP = 8  # images per hard-negative group (same background and colour)


def clip_config(text: dict[str, Any] | None = None,
                vision: dict[str, Any] | None = None) -> CLIPConfig:
    """The shapes CLIP's config: the default model's text encoder + a small ViT."""
    text = {**copy.deepcopy(text or TEXT_CONFIG), "projection_dim": PROJECTION_DIM}
    vision = {**copy.deepcopy(vision or VISION_CONFIG), "projection_dim": PROJECTION_DIM}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION_DIM)


def shipped_text_encoder() -> Any:
    """The shipped default model's text encoder (CLIPTextModel), or None when not shipped."""
    from nodes.diffusion.builtin_models import SHAPES_NAME, shipped_weights
    from nodes.diffusion.loading import load_components

    path = shipped_weights(SHAPES_NAME)
    return load_components(path).text_encoder if path.is_file() else None


def build_clip(opts: StageOptions, *, text_source: str = "auto",
               vision: dict[str, Any] | None = None) -> CLIPModel:
    """A CLIPModel whose text tower is copied from the trained text encoder: the run's own
    (``<out>/text_encoder``) or the shipped model's (``text_source``: auto, run, shipped,
    random)."""
    from transformers import CLIPTextModel

    encoder = None
    run_dir = opts.final("text_encoder")
    if text_source in ("auto", "run") and (run_dir / "config.json").is_file():
        encoder = CLIPTextModel.from_pretrained(run_dir, local_files_only=True)
    elif text_source in ("auto", "shipped"):
        encoder = shipped_text_encoder()
    if encoder is None and text_source != "random":
        raise FileNotFoundError(f"no trained text encoder ({text_source}): train the text "
                                "stage first or pass --text-source random")
    text = encoder.config.to_dict() if encoder is not None else None
    model = CLIPModel(clip_config(text, vision))
    if encoder is not None:
        state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
        state.pop("embeddings.position_ids", None)
        model.text_model.load_state_dict(state, strict=True)
    return model


# --- data ----------------------------------------------------------------------------------

_SHORT = ("a {color} shape", "a {shape}", "a {color} {shape}", "{color}", "{shape}",
          "a {size} {color} {shape}", "a {color} shape {position}", "a {shape} {position}",
          "a {color} {shape} {position}", "a {color} {shape} on a {background} background",
          "a {shape} on a {background} background", "{background} background")


def clip_caption(shapes: Sequence[ShapeSpec], background: str, rng: np.random.Generator
                 ) -> str:
    """A caption for contrastive training: 40% the diffusion training's captions (full, or
    with words dropped), 60% a short prompt about one of the shapes ("a red shape",
    "a circle", "a blue star at the top"), as CLIP guidance and zero-shot prompts use."""
    if rng.random() < 0.4:
        return training_caption(shapes, background, rng)
    s = shapes[int(rng.integers(len(shapes)))]
    template = _SHORT[int(rng.integers(len(_SHORT)))]
    return template.format(color=s.color, shape=s.shape, size=s.size, background=background,
                           position=POSITION_PHRASES[s.position])


_ATTRS = ("size", "color", "shape", "position")


@lru_cache(maxsize=65536)
def caption_constraints(caption: str) -> tuple[tuple[tuple[tuple[str, str], ...], ...],
                                                str | None]:
    """What a caption claims: per named object its ``(attribute, value)`` pairs, and the
    background (or None), read with the text stage's caption parser."""
    labels = caption_labels(caption)
    values = {name: vocab[label - 1] for (name, vocab), label in zip(SLOTS, labels, strict=True)
              if label}
    objects = []
    for k in (1, 2):
        obj = tuple((a, values[f"{a}{k}"]) for a in _ATTRS if f"{a}{k}" in values)
        if obj:
            objects.append(obj)
    return tuple(objects), values.get("background")


def consistent(caption: str, shapes: Sequence[ShapeSpec], background: str) -> bool:
    """Does ``caption`` describe the image truthfully (partially is fine)? Named objects must
    match distinct shapes of the image."""
    objects, bg = caption_constraints(caption)
    if bg is not None and bg != background:
        return False
    if len(objects) > len(shapes):
        return False

    def fits(obj: tuple[tuple[str, str], ...], s: ShapeSpec) -> bool:
        return all(getattr(s, attr) == value for attr, value in obj)

    if len(objects) == 1:
        return any(fits(objects[0], s) for s in shapes)
    if len(objects) == 2:
        a, b = objects
        return ((fits(a, shapes[0]) and fits(b, shapes[1]))
                or (fits(a, shapes[1]) and fits(b, shapes[0])))
    return True


def hard_group(seed: int, group: int, n: int, size: int = 64) -> list[ShapesSample]:
    """``n`` images sharing one background and one colour (of their first shape): to tell
    their captions apart, the image tower must read shape, position and size."""
    rng = np.random.default_rng((seed, group, 3))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    out = []
    for _ in range(n):
        shapes, _ = sample_layout(rng, TWO_SHAPE_PROB)
        others = [c for c in COLORS if c != color]
        recoloured = []
        for k, s in enumerate(shapes):
            name = color if k == 0 else (s.color if s.color != color
                                         else others[int(rng.integers(len(others)))])
            rgb = np.clip(np.array(COLORS[name]) + rng.integers(-_COLOR_JITTER,
                                                                _COLOR_JITTER + 1, 3), 0, 255)
            recoloured.append(replace(s, color=name, rgb=tuple(int(v) for v in rgb)))
        image, masks = render(recoloured, background, size, rng)
        out.append(ShapesSample(image, full_caption(recoloured, background), tuple(recoloured),
                                background, masks))
    return out


def clip_batch(seed: int, step: int, batch_size: int, size: int = 64, *,
               with_shapes: bool = False) -> tuple[Any, ...]:
    """Step ``step``'s batch: CLIP-normalised pixels ``[B, 3, H, W]``, one caption per image
    and the ``[B, B]`` consistency matrix (caption j fits image i); ``with_shapes`` adds
    each image's shapes.

    Half the batch is the world's samples; the other half comes in groups of
    :data:`GROUP` that share background and colour (:func:`hard_group`). Without them
    colour and background alone tell a batch's full captions apart, and in a first run
    the image tower learned nothing else (shape and position at chance after 500 steps).
    """
    hard = (batch_size // 2) // GROUP * GROUP
    samples = [generate(seed, step * batch_size + i, size, TWO_SHAPE_PROB)
               for i in range(batch_size - hard)]
    for g in range(hard // GROUP):
        samples += hard_group(seed, step * batch_size + g, GROUP, size)
    captions = [clip_caption(s.shapes, s.background,
                             np.random.default_rng((seed, step * batch_size + i, 2)))
                for i, s in enumerate(samples)]
    fit = torch.tensor([[consistent(c, s.shapes, s.background) for c in captions]
                        for s in samples])
    pixels = torch.from_numpy(np.stack([s.image for s in samples])).float().div(255.0)
    out = (normalize(pixels.permute(0, 3, 1, 2)), captions, fit)
    return (*out, [s.shapes for s in samples]) if with_shapes else out


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` in 0..1 → CLIP's normalisation (what ``ClipVision.preprocess`` does)."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def soft_clip_loss(logits: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over ``logits`` [images, captions] with targets spread evenly over
    the consistent pairs (``fit``; its diagonal is always true)."""
    fit = fit.float()
    images = -(fit / fit.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    texts = -(fit / fit.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (images + texts) / 2


class TextCache:
    """Pooled text states of the frozen text tower, memoised per caption (captions repeat)."""

    def __init__(self, model: CLIPModel):
        self.model, self.tokenizer = model, load_clip_tokenizer()
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        todo = sorted({c for c in captions if c not in self.cache})
        if todo:
            tokens = self.tokenizer(todo, padding=True, return_tensors="pt")
            was = self.model.text_model.training
            self.model.text_model.eval()
            pooled = self.model.text_model(input_ids=tokens.input_ids).pooler_output
            self.model.text_model.train(was)
            self.cache.update(zip(todo, pooled, strict=True))
        return torch.stack([self.cache[c] for c in captions])


SHAPE_PROMPTS = tuple(f"a {shape}" for shape in SHAPES)


def shape_prompt_loss(logits: torch.Tensor, shapes: Sequence[Sequence[ShapeSpec]]
                      ) -> torch.Tensor:
    """Cross-entropy of each image against the :data:`SHAPE_PROMPTS` ("a circle", ...), the
    target spread over the shapes the image holds: the zero-shot question itself, asked of
    every image of the batch (in the contrastive loss a caption that names a shape is one
    column in eight, and the ViT learnt shape last and slowly)."""
    target = torch.zeros_like(logits)
    for i, specs in enumerate(shapes):
        for s in specs:
            target[i, SHAPES.index(s.shape)] = 1.0
    target = target / target.sum(1, keepdim=True)
    return -(target * logits.log_softmax(1)).sum(1).mean()


def init_from(model: CLIPModel, path: Path) -> None:
    """Start from a saved CLIP file (e.g. the shipped float16 one) instead of a new ViT."""
    from nodes.diffusion.clip_vision import load_clip_vision

    state = load_clip_vision(Path(path)).model.float().state_dict()
    model.load_state_dict(state, strict=True)


def train_clip(opts: StageOptions, loop: LoopConfig, *, batch_size: int = 128,
               text_source: str = "auto", vision: dict[str, Any] | None = None,
               init: Path | None = None, shape_weight: float = 0.0
               ) -> tuple[Path, LoopResult]:
    """Train the CLIP and write ``<out>/clip/<CLIP_NAME>.safetensors`` (float32, config in
    the metadata); ``ship_clip`` writes the float16 copy that ships. ``init``: a CLIP file to
    start from; ``shape_weight``: weight of :func:`shape_prompt_loss` added to the
    contrastive loss."""
    seed_everything(opts.seed)
    model = build_clip(opts, text_source=text_source, vision=vision)
    if init is not None:
        init_from(model, init)
    model.text_model.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    texts = TextCache(model)
    size = int(model.config.vision_config.image_size)

    def loss_fn(step: int) -> torch.Tensor:
        pixels, captions, fit, shapes = clip_batch(opts.seed, step, batch_size, size,
                                                   with_shapes=True)
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        image = image / image.norm(dim=-1, keepdim=True)

        def embed(texts_: Sequence[str]) -> torch.Tensor:
            t = model.text_projection(texts(texts_))
            return t / t.norm(dim=-1, keepdim=True)

        scale = model.logit_scale.clamp(max=np.log(100.0)).exp()
        loss = soft_clip_loss(scale * image @ embed(captions).T, fit)
        if shape_weight:
            loss = loss + shape_weight * shape_prompt_loss(
                scale * image @ embed(SHAPE_PROMPTS).T, shapes)
        return loss

    result, _ = train_loop("clip", loop, {"clip": model}, trainable, loss_fn,
                           opts.checkpoints("clip"))
    with torch.no_grad():  # what the loss used; the saved model then scores the same
        model.logit_scale.clamp_(max=np.log(100.0))
    target = opts.final("clip") / f"{CLIP_NAME}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_clip_file(model, target)
    write_log(opts, "clip", result, {"batch_size": batch_size, "text_source": text_source,
                                     "init": str(init) if init else None,
                                     "shape_weight": shape_weight,
                                     "logit_scale": float(model.logit_scale.detach().exp())})
    return target, result


def ship_clip(out_dir: Path) -> Path:
    """Copy the trained CLIP as float16 to ``nodes/assets/weights`` (what set-up installs)."""
    from nodes.diffusion.builtin_models import shipped_weights
    from nodes.diffusion.clip_vision import load_clip_vision

    clip = load_clip_vision(Path(out_dir) / "clip" / f"{CLIP_NAME}.safetensors")
    target = shipped_weights(CLIP_NAME)
    save_clip_file(clip.model, target, half=True)
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train_clip", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--text-source", choices=("auto", "run", "shipped", "random"),
                        default="auto", help="where the text tower comes from (auto: the "
                        "run's text stage if present, else the shipped default model)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this CLIP file (e.g. the shipped one) instead of "
                             "a new image tower")
    parser.add_argument("--shape-weight", type=float, default=0.0,
                        help="add the shape-prompt loss (\"a circle\", ...) with this weight")
    parser.add_argument("--ship", action="store_true",
                        help="after training, write the float16 file that ships")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = StageOptions(out_dir=args.out, seed=args.seed, device="cpu")
    path, result = train_clip(opts, loop_config(args, DEFAULTS),
                              batch_size=int(args.batch_size or DEFAULTS["batch_size"]),
                              text_source=args.text_source, init=args.init,
                              shape_weight=args.shape_weight)
    print(f"clip: {len(result.losses)} steps in {result.seconds:.0f} s "
          f"({result.seconds_per_step:.3f} s/step), written to {path}")
    if args.ship:
        shipped = ship_clip(args.out)
        print(f"shipped (float16): {shipped} ({shipped.stat().st_size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
