"""Sampler step time with SEGA (3 concepts) + ControlNet in ONE run ÷ what diffusers'
references take for the same work, measured side by side in one process.

No diffusers pipeline does both, so the reference is
``SemanticStableDiffusionPipeline`` (3 concepts) + (``StableDiffusionControlNetPipeline``
− ``StableDiffusionPipeline``): the SEGA batch plus the ControlNet's extra cost.
Step time = (time of the last step callback − time of the first) / (steps − 1), so
prompt encoding, VAE decode and set-up are excluded on both sides.

Our ControlNet conditions every entry of the batch, the three concept entries
included (each concept's noise estimate is made under the control), so it runs on
5 entries where the ControlNet pipeline runs it on 2; the second ratio scales the
reference's ControlNet cost to 5 entries, i.e. compares equal work.

    .venv/bin/python bench/bench_controlled.py [--size 256] [--steps 12] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
)
from diffusers.pipelines.deprecated.semantic_stable_diffusion import (
    SemanticStableDiffusionPipeline,
)
from PIL import Image

from engine.session import Session
from nodes.diffusion.loading import load_components

CONCEPTS = ("a blue square", "green", "a star")
PROMPT = "a red circle"


class StepClock:
    """Times between step callbacks."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def tick(self, *_: Any, **__: Any) -> dict[str, Any]:
        self.stamps.append(time.perf_counter())
        return {}

    def per_step(self) -> float:
        return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)


def graph(size: int, steps: int, seed: int) -> dict[str, Any]:
    prompt: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "bench_control.png"}},
        "12": {"class_type": "ControlNetLoader",
               "inputs": {"control_net_name": "steerflow-tiny-controlnet"}},
        "13": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["12", 0],
            "image": ["10", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "20": {"class_type": "ApplySEGA", "inputs": {"model": ["4", 0], "concepts": ["c2", 0]}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["20", 0], "seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": "ddim",
            "scheduler": "normal", "positive": ["13", 0], "negative": ["13", 1],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    for i, text in enumerate(CONCEPTS):
        inputs: dict[str, Any] = {"clip": ["4", 1], "text": text, "warmup_steps": 0}
        if i:
            inputs["previous"] = [f"c{i - 1}", 0]
        prompt[f"c{i}"] = {"class_type": "SEGAConcept", "inputs": inputs}
    return prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home = Path(tempfile.mkdtemp(prefix="steerflow-bench-"))
    session = Session(home, device="cpu")
    session.executor.ensure_setup()
    control = (np.random.default_rng(0).random((args.size, args.size, 3)) > 0.5) * 255
    control_png = session.env.folder("input") / "bench_control.png"
    Image.fromarray(control.astype(np.uint8)).save(control_png)

    models = session.env.folder("models")
    c = load_components(models / "checkpoints" / "steerflow-tiny")
    controlnet = ControlNetModel.from_pretrained(
        models / "controlnet" / "steerflow-tiny-controlnet", local_files_only=True).eval()
    parts = {"vae": c.vae, "text_encoder": c.text_encoder, "tokenizer": c.tokenizer,
             "unet": c.unet, "safety_checker": None, "feature_extractor": None,
             "requires_safety_checker": False}
    sched = DDIMScheduler.from_config(c.scheduler_config)
    sd = StableDiffusionPipeline(**parts, scheduler=sched)
    cn = StableDiffusionControlNetPipeline(**parts, controlnet=controlnet, scheduler=sched)
    sega = SemanticStableDiffusionPipeline(**parts, scheduler=sched)
    for pipe in (sd, cn, sega):
        pipe.set_progress_bar_config(disable=True)
    control_tensor = torch.from_numpy(control / 255.0).permute(2, 0, 1)[None].float()
    common = {"num_inference_steps": args.steps, "guidance_scale": 7.5, "height": args.size,
              "width": args.size, "output_type": "latent"}

    def ours(seed: int) -> float:
        clock = StepClock()
        result = session.run(graph(args.size, args.steps, seed),
                             on_event=lambda n, d: clock.tick() if n == "progress" else None)
        assert result.ok, result.run.error
        return clock.per_step()

    def ref_sd(seed: int) -> float:
        clock = StepClock()
        sd(PROMPT, callback_on_step_end=clock.tick, **common)
        return clock.per_step()

    def ref_cn(seed: int) -> float:
        clock = StepClock()
        cn(PROMPT, image=control_tensor, callback_on_step_end=clock.tick, **common)
        return clock.per_step()

    def ref_sega(seed: int) -> float:
        clock = StepClock()
        sega(PROMPT, editing_prompt=list(CONCEPTS), edit_warmup_steps=0, callback=clock.tick,
             callback_steps=1, **common)
        return clock.per_step()

    runs: dict[str, list[float]] = {"ours": [], "sd": [], "cn": [], "sega": []}
    ours(0), ref_sd(0), ref_cn(0), ref_sega(0)  # warm up
    ratios, equal_work = [], []
    entries = 2 + len(CONCEPTS)
    for i in range(1, args.repeats + 1):
        o, s, n, g = ours(i), ref_sd(i), ref_cn(i), ref_sega(i)
        for key, value in zip(runs, (o, s, n, g), strict=True):
            runs[key].append(value)
        ratios.append(o / (g + n - s))
        equal_work.append(o / (g + (n - s) * entries / 2))
    med = {k: statistics.median(v) * 1e3 for k, v in runs.items()}
    print(f"step time, {args.size}x{args.size}, DDIM, cfg 7.5, tiny model, {args.threads} "
          f"thread(s), median of {args.repeats} interleaved runs (ms/step)")
    print(f"    StableDiffusionPipeline                 {med['sd']:8.2f}")
    print(f"    StableDiffusionControlNetPipeline       {med['cn']:8.2f}")
    print(f"    SemanticStableDiffusionPipeline (3)     {med['sega']:8.2f}")
    print(f"    reference for the same work (sega + cn - sd) "
          f"{med['sega'] + med['cn'] - med['sd']:8.2f}")
    print(f"    steerflow SEGA(3) + ControlNet, one run {med['ours']:8.2f}")
    print(f"    ratio to sega + cn - sd                 {statistics.median(ratios):8.3f}")
    print(f"    ratio to equal work (ControlNet on {entries} entries) "
          f"{statistics.median(equal_work):8.3f}")


if __name__ == "__main__":
    main()
