"""Each steering technique's step time ÷ its diffusers pipeline's on the same work,
measured side by side (interleaved) in one process on the tiny model.

Step time = (time of the last step callback − time of the first) / (steps − 1), so
prompt encoding, inversion, VAE decode and set-up are excluded on both sides; the
work inside the loop (extra UNet passes, gradient steps) is included. Both sides
run the same settings, seed and DDIM schedule.

    .venv/bin/python bench/bench_techniques.py [--size 128] [--steps 10] [--repeats 5]
        [--only sega sag ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.utils import logging as diffusers_logging

from engine.session import Session
from nodes.diffusion.loading import load_components

PROMPT = "a red circle at the top left and a blue square"
NEGATIVE = ""
Graph = dict[str, Any]


class StepClock:
    """Times between step callbacks (any callback signature)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        #: when set, the per-step time is the span of the stamps over this many steps
        self.steps: int | None = None

    def tick(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.stamps.append(time.perf_counter())
        return {}

    def per_step(self) -> float:
        span = self.stamps[-1] - self.stamps[0]
        return span / (self.steps or len(self.stamps) - 1)


def base_graph(size: int, steps: int, seed: int) -> Graph:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": "ddim",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def with_model_patch(node: dict[str, Any]) -> Callable[[Graph], None]:
    """Put a MODEL → MODEL node between the checkpoint and the sampler."""
    def edit(g: Graph) -> None:
        g["p"] = {"class_type": node["class_type"],
                  "inputs": {"model": ["4", 0], **node["inputs"]}}
        g["3"]["inputs"]["model"] = ["p", 0]
    return edit


def sega_graph(g: Graph) -> None:
    g["c0"] = {"class_type": "SEGAConcept", "inputs": {"clip": ["4", 1], "text": "green",
                                                       "warmup_steps": 0}}
    g["c1"] = {"class_type": "SEGAConcept", "inputs": {
        "clip": ["4", 1], "text": "red", "direction": "remove", "warmup_steps": 0,
        "previous": ["c0", 0]}}
    with_model_patch({"class_type": "ApplySEGA", "inputs": {"concepts": ["c1", 0]}})(g)


AE_THRESHOLDS = {0: 0.05, 3: 0.5, 6: 0.8}


def ae_graph(g: Graph) -> None:
    # the maps at the latent's own resolution (the tiny model's first attention level)
    size = g["5"]["inputs"]["width"] // 8
    g["6"] = {"class_type": "AttendAndExcite", "inputs": {
        "clip": ["4", 1], "text": PROMPT, "words": "circle, square", "max_iter_to_alter": 6,
        "attn_res": size,
        "thresholds": ", ".join(f"{k}:{v}" for k, v in AE_THRESHOLDS.items())}}


P2PZ_SOURCE = ["a red circle at the top", "a blue circle on the left"]
P2PZ_TARGET = ["a red square at the top", "a blue square on the left"]


def p2pz_graph(g: Graph) -> None:
    g["d"] = {"class_type": "Pix2PixZeroEditDirection", "inputs": {
        "clip": ["4", 1], "source": "\n".join(P2PZ_SOURCE), "target": "\n".join(P2PZ_TARGET)}}
    g["p"] = {"class_type": "Pix2PixZero", "inputs": {
        "conditioning": ["6", 0], "edit_direction": ["d", 0],
        "cross_attention_guidance_amount": 0.1}}
    g["3"]["inputs"]["positive"] = ["p", 0]


def p2pz_reference(pipe: Any, common: dict[str, Any], clock: StepClock) -> Any:
    # The pipeline runs the source prompt's whole reference loop before the edit loop
    # (ours runs it in lockstep): time both loops, from the first step of the first.
    source, target = pipe.get_embeds(P2PZ_SOURCE), pipe.get_embeds(P2PZ_TARGET)
    steps = common["num_inference_steps"]
    unet, calls = pipe.unet, []
    forward = unet.forward

    def timed(*args: Any, **kwargs: Any) -> Any:
        calls.append(time.perf_counter())
        return forward(*args, **kwargs)

    unet.forward = timed
    try:
        pipe(PROMPT, source_embeds=source, target_embeds=target,
             cross_attention_guidance_amount=0.1, **common)
    finally:
        del unet.forward
    clock.stamps = [calls[0], time.perf_counter()]
    clock.steps = steps  # both loops make one image of ``steps`` steps


DIFFEDIT_SOURCE = "a red circle at the top left"
DIFFEDIT_TARGET = "a green circle at the top left"


def diffedit_graph(g: Graph) -> None:
    steps, seed = g["3"]["inputs"]["steps"], g["3"]["inputs"]["seed"]
    g["10"] = {"class_type": "LoadImage", "inputs": {"image": "bench_picture.png"}}
    g["6"]["inputs"]["text"] = DIFFEDIT_SOURCE
    g["t"] = {"class_type": "CLIPTextEncode", "inputs": {"text": DIFFEDIT_TARGET,
                                                         "clip": ["4", 1]}}
    g["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    g["13"] = {"class_type": "DiffEditMask", "inputs": {
        "model": ["4", 0], "vae": ["4", 2], "image": ["10", 0], "source": ["6", 0],
        "target": ["t", 0], "negative": ["7", 0], "seed": seed}}
    g["12"] = {"class_type": "DDIMInvert", "inputs": {
        "model": ["4", 0], "positive": ["6", 0], "latent": ["11", 0], "steps": steps,
        "cfg": 7.5, "negative": ["7", 0], "denoise": 0.8}}
    g["14"] = {"class_type": "DiffEditLatent", "inputs": {"trajectory": ["12", 1],
                                                          "mask": ["13", 0]}}
    g["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["4", 0], "add_noise": "disable", "noise_seed": 0, "steps": ["14", 1],
        "cfg": 7.5, "sampler_name": "ddim", "scheduler": "normal", "positive": ["t", 0],
        "negative": ["6", 0], "latent_image": ["14", 0], "start_at_step": ["14", 2],
        "end_at_step": 10000, "return_with_leftover_noise": "disable"}}


def diffedit_reference(pipe: Any, common: dict[str, Any], clock: StepClock) -> Any:
    image = torch.from_numpy(bench_picture(common["height"], common["width"])).permute(
        2, 0, 1)[None].float() / 255.0
    mask = pipe.generate_mask(image=image, source_prompt=DIFFEDIT_SOURCE,
                              target_prompt=DIFFEDIT_TARGET, generator=common["generator"])
    steps = common["num_inference_steps"]
    inverted = pipe.invert(prompt=DIFFEDIT_SOURCE, image=image, num_inference_steps=steps,
                           inpaint_strength=0.8).latents
    pipe(prompt=DIFFEDIT_TARGET, mask_image=mask, image_latents=inverted,
         negative_prompt=DIFFEDIT_SOURCE, num_inference_steps=steps, inpaint_strength=0.8,
         callback=clock.tick, callback_steps=1, output_type="latent")


LEDITS_CONCEPTS = [("a green circle at the top left", "add"),
                   ("a red circle at the top left", "remove")]
LEDITS = {"skip": 0.2, "source_guidance_scale": 3.5, "scale": 5.0, "threshold": 0.9}


def ledits_graph(g: Graph) -> None:
    steps, seed = g["3"]["inputs"]["steps"], g["3"]["inputs"]["seed"]
    g["10"] = {"class_type": "LoadImage", "inputs": {"image": "bench_picture.png"}}
    g["6"]["inputs"]["text"] = DIFFEDIT_SOURCE
    g["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    g["12"] = {"class_type": "LEditsPPInvert", "inputs": {
        "model": ["4", 0], "latent": ["11", 0], "negative": ["7", 0], "source_prompt": ["6", 0],
        "num_inversion_steps": steps, "skip": LEDITS["skip"], "seed": seed,
        "source_guidance_scale": LEDITS["source_guidance_scale"],
        "sampler_name": "dpmpp_2m_sde", "scheduler": "ddim_uniform"}}
    previous: list[Any] | None = None
    for n, (text, direction) in enumerate(LEDITS_CONCEPTS):
        g[f"c{n}"] = {"class_type": "SEGAConcept", "inputs": {
            "clip": ["4", 1], "text": text, "direction": direction, "scale": LEDITS["scale"],
            "warmup_steps": 0, "cooldown_steps": 10000, "threshold": LEDITS["threshold"],
            **({"previous": previous} if previous else {})}}
        previous = [f"c{n}", 0]
    g["15"] = {"class_type": "ApplyLEditsPP", "inputs": {
        "model": ["4", 0], "inversion": ["12", 1], "concepts": previous,
        "use_cross_attn_mask": False, "use_intersect_mask": False}}
    g["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["15", 0], "add_noise": "disable", "noise_seed": 0, "steps": ["12", 2],
        "cfg": ["12", 4], "sampler_name": "dpmpp_2m_sde", "scheduler": "ddim_uniform",
        "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["12", 0],
        "start_at_step": ["12", 3], "end_at_step": 10000, "return_with_leftover_noise": "disable"}}


def ledits_reference(pipe: Any, common: dict[str, Any], clock: StepClock) -> Any:
    from PIL import Image

    image = Image.fromarray(bench_picture(common["height"], common["width"]))
    pipe.invert(image=image, source_prompt=DIFFEDIT_SOURCE,
                source_guidance_scale=LEDITS["source_guidance_scale"],
                num_inversion_steps=common["num_inference_steps"], skip=LEDITS["skip"],
                generator=common["generator"])
    n = len(LEDITS_CONCEPTS)
    pipe(editing_prompt=[text for text, _ in LEDITS_CONCEPTS],
         reverse_editing_direction=[d == "remove" for _, d in LEDITS_CONCEPTS],
         edit_guidance_scale=[LEDITS["scale"]] * n, edit_warmup_steps=[0] * n,
         edit_threshold=[LEDITS["threshold"]] * n, use_intersect_mask=False,
         use_cross_attn_mask=False, output_type="latent", callback_on_step_end=clock.tick)


def bench_picture(height: int, width: int) -> Any:
    import numpy as np

    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    arr = np.stack([x, y, 1 - x * y], axis=-1)
    arr[(x - 0.3) ** 2 + (y - 0.35) ** 2 < 0.04] = (0.9, 0.1, 0.1)
    return (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)


@dataclass
class Case:
    name: str
    pipeline: str  # the diffusers reference
    edit: Callable[[Graph], None]
    reference: Callable[[Any, dict[str, Any], StepClock], Any]
    #: writes what the case needs besides the built-in models into the models folder
    install: Callable[[Path], None] | None = None
    #: builds the reference from (models folder, steerflow-tiny's parts); default:
    #: ``PIPELINES[name]`` from the shared parts (+ ``EXTRA_PARTS``), DDIM or ``SCHEDULERS``
    make_pipe: Callable[[Path, dict[str, Any]], Any] | None = None


def _pipe(module: str, name: str, parts: dict[str, Any]) -> Any:
    import importlib

    cls = getattr(importlib.import_module(module), name)
    pipe = cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


CASES: list[Case] = [
    Case("sega", "SemanticStableDiffusionPipeline (2 concepts)", sega_graph,
         lambda pipe, common, clock: pipe(
             PROMPT, editing_prompt=["green", "red"], reverse_editing_direction=[False, True],
             edit_guidance_scale=20.0, edit_threshold=0.5, edit_warmup_steps=0,
             edit_momentum_scale=0.1, edit_mom_beta=0.4, callback=clock.tick,
             callback_steps=1, **common)),
    Case("sag", "StableDiffusionSAGPipeline",
         with_model_patch({"class_type": "SelfAttentionGuidance",
                           "inputs": {"scale": 0.75, "blur_sigma": 1.0}}),
         lambda pipe, common, clock: pipe(PROMPT, sag_scale=0.75, callback=clock.tick,
                                          callback_steps=1, **common)),
    Case("pag", "StableDiffusionPAGPipeline",
         with_model_patch({"class_type": "PerturbedAttentionGuidance",
                           "inputs": {"scale": 3.0, "layers": "mid"}}),
         lambda pipe, common, clock: pipe(PROMPT, pag_scale=3.0,
                                          callback_on_step_end=clock.tick, **common)),
    Case("attend_excite", "StableDiffusionAttendAndExcitePipeline", ae_graph,
         lambda pipe, common, clock: pipe(
             PROMPT, token_indices=[3, 11], max_iter_to_alter=6, thresholds=AE_THRESHOLDS,
             attn_res=(common["height"] // 8, common["width"] // 8),
             callback=clock.tick, callback_steps=1, **common)),
    Case("pix2pix_zero", "StableDiffusionPix2PixZeroPipeline (both loops)", p2pz_graph,
         p2pz_reference),
    Case("diffedit", "StableDiffusionDiffEditPipeline (the call, strength 0.8)",
         diffedit_graph, diffedit_reference),
    Case("ledits_pp", "LEditsPPPipelineStableDiffusion (the call, skip 0.2, 2 concepts)",
         ledits_graph, ledits_reference),
]

PIPELINES = {
    "sega": ("diffusers.pipelines.deprecated.semantic_stable_diffusion",
             "SemanticStableDiffusionPipeline"),
    "sag": ("diffusers.pipelines.deprecated.stable_diffusion_sag", "StableDiffusionSAGPipeline"),
    "pag": ("diffusers", "StableDiffusionPAGPipeline"),
    "attend_excite": ("diffusers", "StableDiffusionAttendAndExcitePipeline"),
    "pix2pix_zero": ("diffusers", "StableDiffusionPix2PixZeroPipeline"),
    "diffedit": ("diffusers", "StableDiffusionDiffEditPipeline"),
    "ledits_pp": ("diffusers", "LEditsPPPipelineStableDiffusion"),
}
#: the scheduler each reference runs (DDIM unless named here)
SCHEDULERS = {
    "ledits_pp": lambda cfg: DPMSolverMultistepScheduler.from_config(
        cfg, algorithm_type="sde-dpmsolver++", solver_order=2),
}
#: constructor arguments some reference pipelines need besides the SD parts
EXTRA_PARTS = {
    "pix2pix_zero": lambda cfg: {"inverse_scheduler": DDIMInverseScheduler.from_config(cfg),
                                 "caption_generator": None, "caption_processor": None},
    "diffedit": lambda cfg: {"inverse_scheduler": DDIMInverseScheduler.from_config(cfg)},
}


def run(cases: list[Case], description: str) -> None:
    """Time ``cases`` (those ``--only`` names) side by side and print the ratios."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    diffusers_logging.set_verbosity_error()  # deprecation notices of the reference pipelines
    warnings.filterwarnings("ignore")
    session = Session(Path(tempfile.mkdtemp(prefix="steerflow-bench-")), device="cpu")
    session.executor.ensure_setup()
    from PIL import Image

    Image.fromarray(bench_picture(args.size, args.size)).save(
        session.env.folder("input", create=True) / "bench_picture.png")
    models = session.env.folder("models")
    c = load_components(models / "checkpoints" / "steerflow-tiny")
    parts = {"vae": c.vae, "text_encoder": c.text_encoder, "tokenizer": c.tokenizer,
             "unet": c.unet, "safety_checker": None, "feature_extractor": None,
             "requires_safety_checker": False,
             "scheduler": DDIMScheduler.from_config(c.scheduler_config)}
    common = {"negative_prompt": NEGATIVE, "num_inference_steps": args.steps,
              "guidance_scale": 7.5, "height": args.size, "width": args.size,
              "output_type": "latent"}
    cases = [case for case in cases if args.only is None or case.name in args.only]
    print(f"step time, {args.size}x{args.size}, {args.steps} steps, cfg 7.5, tiny models, "
          f"{args.threads} thread(s), median of {args.repeats} interleaved runs")
    print(f"{'technique':<16}{'ours ms':>10}{'diffusers ms':>14}{'ratio':>8}  reference")
    for case in cases:
        if case.install is not None:
            case.install(models)
        if case.make_pipe is not None:
            pipe = case.make_pipe(models, parts)
        else:
            extra = EXTRA_PARTS.get(case.name, lambda cfg: {})(c.scheduler_config)
            pipe = _pipe(*PIPELINES[case.name], {**parts, **extra})
            pipe.scheduler = SCHEDULERS.get(case.name, DDIMScheduler.from_config)(
                c.scheduler_config)

        def ours(seed: int, case: Case = case) -> float:
            g = base_graph(args.size, args.steps, seed)
            case.edit(g)
            clock = StepClock()
            result = session.run(g, on_event=lambda n, d: clock.tick()
                                 if n == "progress" and d.get("node") == "3" else None)
            assert result.ok, result.run.error
            return clock.per_step()

        def ref(seed: int, case: Case = case, pipe: Any = pipe) -> float:
            clock = StepClock()
            case.reference(pipe, {**common, "generator": torch.Generator().manual_seed(seed)},
                           clock)
            return clock.per_step()

        ours(0), ref(0)  # warm up
        mine, theirs, ratios = [], [], []
        for seed in range(1, args.repeats + 1):
            o, r = ours(seed), ref(seed)
            mine.append(o)
            theirs.append(r)
            ratios.append(o / r)
        print(f"{case.name:<16}{statistics.median(mine) * 1e3:>10.2f}"
              f"{statistics.median(theirs) * 1e3:>14.2f}{statistics.median(ratios):>8.3f}  "
              f"{case.pipeline}")


if __name__ == "__main__":
    run(CASES, __doc__.split("\n")[0])
