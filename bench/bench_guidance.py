"""Issue 15's techniques (CLIP guidance, FABRIC, TIME): step time ÷ plain or reference, side by
side in one process on tiny models (``bench_techniques.py``'s harness and clock).

CLIP guidance: step time ÷ diffusers' plain ``StableDiffusionPipeline`` (no CLIP-guided
pipeline ships): every step guided with the tiny CLIP, the whole image / 4 cutouts /
``through_unet`` off.

FABRIC: step time ÷ diffusers' plain ``StableDiffusionPipeline`` on the same work (FABRIC is
only a community pipeline, not installed): what a FABRIC step costs over a plain one, with
2 liked + 1 disliked images and the node's defaults (one extra UNet pass over the 3
feedback images per step, self-attention over 4x the tokens).

TIME: step time: the edited MODEL (TIMEModelEdit between the checkpoint and the sampler) ÷
StableDiffusionModelEditingPipeline after ``edit_model`` (the pipeline's weights edited
in place). Both sample a plain SD model, so the ratio should be ~1: the edit is applied
as a weight patch once per run, outside the step loop.

Edit time: ``time_edit`` (what the node runs) ÷ ``pipe.edit_model`` on the same prompts.

    .venv/bin/python bench/bench_guidance.py [--size 128] [--steps 10] [--repeats 5]
        [--only clip_guidance clip_guid_cut4 clip_guid_fixed fabric time]
    .venv/bin/python bench/bench_guidance.py --edit-only
    .venv/bin/python bench/bench_guidance.py --clip-score   # CLIP Score ÷ transformers
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_techniques import PROMPT, Case, Graph, StepClock, run, with_model_patch

TIME_SOURCE = "a circle"
TIME_DESTINATION = "a blue circle"  # the pipeline needs the source's words in the destination


def editing_pipe(models: Path, parts: dict[str, Any]) -> Any:
    """The pipeline on the shared tiny parts (copied: its edit would change them), with
    its layer lists set as its ``__init__`` would on SD 1.x (it looks for a class named
    ``CrossAttention``, gone from diffusers, and width 768); edited once."""
    from diffusers import DDIMScheduler
    from diffusers.pipelines.deprecated.stable_diffusion_variants import (
        StableDiffusionModelEditingPipeline,
    )

    parts = {**parts, "unet": copy.deepcopy(parts["unet"]),
             "scheduler": DDIMScheduler.from_config(parts["scheduler"].config)}
    pipe = StableDiffusionModelEditingPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    hidden = pipe.text_encoder.config.hidden_size
    layers = [m for name, m in pipe.unet.named_modules()
              if name.startswith(("down_blocks.", "up_blocks.", "mid_block."))
              and getattr(m, "is_cross_attention", False) and m.to_v.in_features == hidden]
    pipe.ca_clip_layers = layers
    pipe.projection_matrices = [m.to_v for m in layers] + [m.to_k for m in layers]
    pipe.og_matrices = [copy.deepcopy(m) for m in pipe.projection_matrices]
    pipe.edit_model(TIME_SOURCE, TIME_DESTINATION)
    return pipe


TIME_CASE = Case(
    "time", "StableDiffusionModelEditingPipeline (after edit_model)",
    with_model_patch({"class_type": "TIMEModelEdit", "inputs": {
        "clip": ["4", 1], "source_prompt": TIME_SOURCE,
        "destination_prompt": TIME_DESTINATION}}),
    lambda pipe, common, clock: pipe("a red circle at the top left and a blue square",
                                     callback=clock.tick, callback_steps=1, **common),
    make_pipe=editing_pipe)


def fabric_graph(g: Graph) -> None:
    g["fl"] = {"class_type": "LoadImage", "inputs": {"image": "bench_picture.png"}}
    g["fb"] = {"class_type": "ImageBatch", "inputs": {"image1": ["fl", 0],
                                                      "image2": ["fl", 0]}}
    g["p"] = {"class_type": "FABRICFeedback", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2], "liked": ["fb", 0],
        "disliked": ["fl", 0], "min_weight": 0.05, "max_weight": 0.8, "neg_scale": 0.5,
        "feedback_start_ratio": 0.33, "feedback_end_ratio": 0.66}}
    g["3"]["inputs"]["model"] = ["p", 0]


def plain_pipe(models: Path, parts: dict[str, Any]) -> Any:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**parts)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_reference(pipe: Any, common: dict[str, Any], clock: StepClock) -> Any:
    return pipe(PROMPT, callback_on_step_end=clock.tick, **common)


FABRIC_CASE = Case("fabric", "StableDiffusionPipeline, plain (no FABRIC pipeline installed)",
                   fabric_graph, plain_reference, make_pipe=plain_pipe)

CLIP_NAME = "steerflow-tiny-clip.safetensors"


def install_clip(models: Path) -> None:
    from nodes.diffusion.tiny_clip import ensure_tiny_clip

    ensure_tiny_clip(models)


def clip_guidance_graph(cutouts: int, through_unet: bool = True) -> Any:
    def edit(g: Graph) -> None:
        g["cv"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP_NAME}}
        g["p"] = {"class_type": "CLIPGuidance", "inputs": {
            "model": ["4", 0], "clip_vision": ["cv", 0], "vae": ["4", 2], "text": PROMPT,
            "clip_guidance_scale": 100.0, "num_cutouts": cutouts,
            "through_unet": through_unet}}
        g["3"]["inputs"]["model"] = ["p", 0]
    return edit


def clip_case(name: str, note: str, cutouts: int, through_unet: bool = True) -> Case:
    return Case(name, f"StableDiffusionPipeline, plain ({note})",
                clip_guidance_graph(cutouts, through_unet), plain_reference,
                install=install_clip, make_pipe=plain_pipe)


CLIP_CASES = [clip_case("clip_guidance", "no CLIP-guided pipeline ships", 0),
              clip_case("clip_guid_cut4", "4 cutouts on our side", 4),
              clip_case("clip_guid_fixed", "through_unet off on our side", 0, False)]

CASES = [*CLIP_CASES, FABRIC_CASE, TIME_CASE]


def edit_time(repeats: int = 5) -> None:
    """The closed-form edit itself, ours vs the pipeline's, on steerflow-tiny."""
    import tempfile

    import torch

    from engine.session import Session
    from nodes.diffusion.handles import DiffusionModel, TextEncoder
    from nodes.diffusion.loading import load_components
    from nodes.diffusion.model_editing import time_edit

    torch.set_num_threads(1)
    session = Session(Path(tempfile.mkdtemp(prefix="steerflow-bench-")), device="cpu")
    session.executor.ensure_setup()
    c = load_components(session.env.folder("models") / "checkpoints" / "steerflow-tiny")
    parts = {"vae": c.vae, "text_encoder": c.text_encoder, "tokenizer": c.tokenizer,
             "unet": c.unet, "safety_checker": None, "feature_extractor": None,
             "requires_safety_checker": False, "scheduler": None}
    from diffusers import DDIMScheduler

    parts["scheduler"] = DDIMScheduler.from_config(c.scheduler_config)
    pipe = editing_pipe(Path(), parts)
    model, clip = DiffusionModel(c.unet, c.scheduler_config), TextEncoder(c.text_encoder,
                                                                          c.tokenizer)
    ours, theirs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        time_edit(model, clip, TIME_SOURCE, TIME_DESTINATION)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        pipe.edit_model(TIME_SOURCE, TIME_DESTINATION)
        theirs.append(time.perf_counter() - start)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"edit (tiny model, 4 sentences, K+V of 6 layers): ours {o * 1e3:.1f} ms, "
          f"diffusers {t * 1e3:.1f} ms, ratio {o / t:.3f}")


CLIP_SCORE_TEXT = "a large red circle at the top left on a white background"


def clip_score_time(repeats: int = 5, batch: int = 16) -> None:
    """CLIP Score's time per image ÷ transformers' (with CLIPImageProcessor) on the same
    work: the shipped shapes CLIP, 64x64 held-out shapes images."""
    TEXT = CLIP_SCORE_TEXT
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from nodes.diffusion.builtin_models import SHAPES_CLIP_NAME, shipped_weights
    from nodes.diffusion.clip_vision import load_clip_vision
    from training.shapes import generate

    images = np.stack([generate(1_000_003, i, 64).image for i in range(batch)])
    pixels = torch.from_numpy(images).float() / 255
    clip = load_clip_vision(shipped_weights(SHAPES_CLIP_NAME))
    from nodes.clip_vision import CLIPScore

    def ours() -> float:
        t = time.perf_counter()
        CLIPScore(clip_vision=clip, image=pixels, text=TEXT).execute(None)
        return (time.perf_counter() - t) / batch

    def ref() -> float:
        from transformers import CLIPImageProcessor

        processor = CLIPImageProcessor(size={"shortest_edge": 64},
                                       crop_size={"height": 64, "width": 64})
        t = time.perf_counter()
        with torch.no_grad():
            px = processor(images=list(images), return_tensors="pt").pixel_values
            image = clip.model.get_image_features(pixel_values=px).pooler_output
            tokens = clip.tokenizer([TEXT], padding="max_length", max_length=77,
                                    return_tensors="pt")
            text = clip.model.get_text_features(**tokens).pooler_output
            (100 * torch.cosine_similarity(image, text)).clamp(min=0)
        return (time.perf_counter() - t) / batch

    ours(), ref()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        a.append(ours())
        b.append(ref())
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"CLIPScore: {ma * 1e3:.2f} ms/image, transformers + CLIPImageProcessor "
          f"{mb * 1e3:.2f} ms/image, ratio {ma / mb:.2f}")



if __name__ == "__main__":
    if "--edit-only" in sys.argv:
        edit_time()
    elif "--clip-score" in sys.argv:
        clip_score_time()
    else:
        run(CASES, __doc__.split("\n")[0])
        edit_time()
