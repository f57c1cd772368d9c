"""SDXL step time: our sampler ÷ diffusers' ``StableDiffusionXLPipeline``, same weights.

The model is a full-size SDXL-base architecture (the shipped configs: 2.6 B-parameter
UNet, CLIP-L and bigG) with random weights, written once as a diffusers folder that both
sides load (``--model full``; ~6.9 GB in float16; nothing is downloaded). ``--model tiny``
uses the tests' tiny SDXL instead, so the bench itself can be checked on a CPU in seconds.

Both sides sample the same prompt at the same size with Euler and CFG, interleaved in
one process (ours, diffusers, ours, ...), a new seed and prompt each round so neither
reuses a result. A step's time is the median gap between consecutive step-end callbacks
(ours: the sampler's progress events; diffusers: ``callback_on_step_end``), with the
device synchronised at each, so text encoding and decoding are not in it. Peak device
memory of each side is reported on CUDA.

    .venv/bin/python bench/bench_sdxl.py --device cuda --dtype fp16 --size 1024  # the GPU figure
    .venv/bin/python bench/bench_sdxl.py --model tiny --size 256                  # a CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.bench_engine import Keep  # noqa: E402
from bench.bench_loading import random_state  # noqa: E402
from engine import Input, NodeResult  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FULL_NAME = "sdxl-random"
PROMPT = "a photograph of an astronaut riding a horse, round {i}"
NEGATIVE = "blurry, round {i}"


def build_random_sdxl(folder: Path, device: str) -> None:
    """Write a full-size SDXL base (shipped configs) with random float16 weights as a
    diffusers folder. Modules are built empty and filled tensor by tensor (on ``device``,
    which is fast on a GPU), so no float32 random init is made."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from nodes.diffusion.loading import FAMILY_CONFIG_DIRS, _empty, family_configs
    from nodes.diffusion.tokenizer import load_clip_tokenizer

    configs, source = family_configs("sdxl"), FAMILY_CONFIG_DIRS["sdxl"]
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    for name in ("tokenizer", "tokenizer_2"):
        load_clip_tokenizer(source / name).save_pretrained(tmp / name)
    gen = torch.Generator(device).manual_seed(0)
    parts = {
        "unet": (_empty(lambda: UNet2DConditionModel.from_config(configs["unet"])),
                 "diffusion_pytorch_model.safetensors"),
        "vae": (_empty(lambda: AutoencoderKL.from_config(configs["vae"])),
                "diffusion_pytorch_model.safetensors"),
        "text_encoder": (_empty(lambda: CLIPTextModel(
            CLIPTextConfig.from_dict(configs["text_encoder"]))), "model.safetensors"),
        "text_encoder_2": (_empty(lambda: CLIPTextModelWithProjection(
            CLIPTextConfig.from_dict(configs["text_encoder_2"]))), "model.safetensors"),
    }
    for sub, (model, file) in parts.items():
        state = random_state(model, gen, device)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / sub / file),
                  metadata={"format": "pt"})
        del state
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def sdxl_prompt(ckpt: str, size: int, steps: int, seed: int, i: int) -> dict[str, Any]:
    def encode(text: str) -> dict[str, Any]:
        return {"class_type": "CLIPTextEncodeSDXL", "inputs": {
            "clip": ["4", 1], "width": size, "height": size, "crop_w": 0, "crop_h": 0,
            "target_width": size, "target_height": size, "text_g": text, "text_l": text}}

    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": encode(PROMPT.format(i=i)),
        "7": encode(NEGATIVE.format(i=i)),
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": size, "height": size, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": steps, "cfg": 5.0,
            "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "9": {"class_type": "BenchKeepLatent", "inputs": {"value": ["3", 0]}},
    }


class KeepLatent(Keep):
    """Output node that keeps the sampled latent (no decode: only steps are timed)."""

    TYPE = "BenchKeepLatent"
    value: Any = Input(type="LATENT")

    def execute(self, ctx: Any) -> NodeResult:
        return NodeResult((), {})


class StepClock:
    """Step-end times, the device synchronised at each (a step's kernels are done)."""

    def __init__(self, device: str) -> None:
        self.device, self.stamps = device, []

    def tick(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def step_s(self) -> float:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        if not gaps:
            raise RuntimeError("fewer than two steps were timed")
        return statistics.median(gaps)


def peak_gib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="weights' dtype (default: fp16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--home", type=Path,
                        default=Path(tempfile.gettempdir()) / "steerflow_bench_sdxl")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    dtype_name = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    dtype = DTYPES[dtype_name]

    import diffusers
    import transformers

    from engine.session import Session

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    models = args.home / "models"
    checkpoints = models / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    if args.model == "tiny":
        from nodes.diffusion.tiny_sdxl import TINY_SDXL_NAME, ensure_tiny_sdxl

        ensure_tiny_sdxl(models)
        name = TINY_SDXL_NAME
    else:
        name = FULL_NAME
        if not (checkpoints / name / "model_index.json").is_file():
            t0 = time.perf_counter()
            print(f"building {checkpoints / name} (random SDXL weights, float16) ...", flush=True)
            build_random_sdxl(checkpoints / name, args.device)
            print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)

    session = Session(args.home, models_dir=models, device=args.device)
    session.env.options["dtype"] = dtype_name
    session.registry.register(KeepLatent)
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
        checkpoints / name, local_files_only=True, dtype=dtype).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)

    def ours(i: int) -> float:
        clock = StepClock(args.device)

        def on_event(event: str, data: dict[str, Any]) -> None:
            if event == "progress":
                clock.tick()

        result = session.run(sdxl_prompt(name, args.size, args.steps, i, i), on_event=on_event)
        if not result.ok:
            raise RuntimeError(f"our run failed: {result.run.error}")
        return clock.step_s()

    def theirs(i: int) -> float:
        clock = StepClock(args.device)

        def callback(pipe: Any, step: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            clock.tick()
            return kwargs

        pipe(PROMPT.format(i=i), negative_prompt=NEGATIVE.format(i=i), height=args.size,
             width=args.size, num_inference_steps=args.steps, guidance_scale=5.0,
             generator=torch.Generator("cpu").manual_seed(i), output_type="latent",
             callback_on_step_end=callback)
        return clock.step_s()

    print(f"{name}, {args.device}, {dtype_name}, {args.size}x{args.size}, Euler, CFG 5, "
          f"{args.steps} steps, {args.repeats} interleaved round(s) after a warm-up", flush=True)
    ours(10_000)
    theirs(10_000)
    rows: dict[str, list[float]] = {"ours": [], "diffusers": []}
    peaks: dict[str, float | None] = {}
    for i in range(args.repeats):
        for side, fn in (("ours", ours), ("diffusers", theirs)):
            reset_peak(args.device)
            rows[side].append(fn(i))
            peaks[side] = max(peaks.get(side) or 0.0, peak_gib(args.device) or 0.0) or None
        print(f"  round {i}: ours {rows['ours'][-1] * 1e3:8.1f} ms/step   diffusers "
              f"{rows['diffusers'][-1] * 1e3:8.1f} ms/step", flush=True)
    ratios = [a / b for a, b in zip(rows["ours"], rows["diffusers"], strict=True)]
    figures = {
        "model": name, "device": args.device, "dtype": dtype_name, "size": args.size,
        "ours_step_ms": statistics.median(rows["ours"]) * 1e3,
        "diffusers_step_ms": statistics.median(rows["diffusers"]) * 1e3,
        "ratio": statistics.median(ratios), "peak_gib": peaks,
        "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
        else None,
    }
    print(f"step time ours / diffusers: {figures['ratio']:.3f} "
          f"({figures['ours_step_ms']:.1f} vs {figures['diffusers_step_ms']:.1f} ms)")
    if args.device.startswith("cuda"):
        print(f"peak device memory (GiB): ours {peaks['ours']:.2f}, "
              f"diffusers {peaks['diffusers']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
