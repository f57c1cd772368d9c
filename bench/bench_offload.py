"""Sequential offload: peak memory of a model run layer by layer, against diffusers' offloads.

One txt2img prompt up to the end of its first sampler step (text encoding and one
UNet step with CFG), each mode in a fresh process, on the random full-size SD 1.5
checkpoint that ``bench/bench_loading.py`` builds (nothing is downloaded):

- ``ours``: the models whole on the device (the cache's budget is not exceeded);
- ``ours-sequential``: every model over the device's budget runs with sequential
  offload (on an accelerator through the cache, given a 1 MiB budget; on the CPU,
  where the cache never offloads, the same mover is applied once the loader is done);
- ``diffusers-model``: ``StableDiffusionPipeline.enable_model_cpu_offload`` (one whole
  model at a time on the device);
- ``diffusers-sequential``: ``enable_sequential_cpu_offload`` (accelerate's hooks).

    .venv/bin/python bench/bench_offload.py [--device cuda] [--size 512] [--repeats 1]

Peak RSS is the child's ``ru_maxrss``; on CUDA also ``torch.cuda.max_memory_allocated``,
the figure offloading is for. On a CPU-only machine the weights are in RAM in every mode,
so the RSS figures show the hooks' overhead, not a saving (and there accelerate's
sequential hooks fail with torch 2.13: that mode is reported as failed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_loading import DEFAULT_FILE, PROMPT, build_random_sd15, run_child  # noqa: E402

WHICH = ("ours", "ours-sequential", "diffusers-model", "diffusers-sequential")
GiB = 2**30


def _report(result: dict[str, Any], device: str) -> None:
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if device.startswith("cuda"):
        import torch

        result["peak_device_gib"] = torch.cuda.max_memory_allocated() / GiB
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)


def _child_ours(file: Path, size: int, device: str, sequential: bool, t0: float) -> None:
    from engine.session import Session
    from nodes.diffusion.handles import DiffusionModel
    from nodes.diffusion.memory import MOVER, is_sequentially_offloaded

    base = file.with_name("steerflow_bench_loading_home")  # shared with bench_loading
    link = base / "models" / "checkpoints" / file.name
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(file, link)  # symlinks are refused (paths are confined)
    budgets = {"cpu": 1 << 40}
    if sequential and device != "cpu":
        budgets[device.partition(":")[0]] = 1 << 20
    session = Session(str(base), device=device, cache_budgets=budgets)
    wf = session.load(str(ROOT / "workflows" / "txt2img.json"))
    for target, value in (("4.ckpt_name", file.name), ("6.text", PROMPT), ("5.width", size),
                          ("5.height", size), ("3.steps", 2)):
        wf.set(target, value, session.registry)
    state: dict[str, Any] = {}

    def loaded() -> DiffusionModel | None:
        for entry in session.executor.cache.entries.values():
            if entry.outputs and isinstance(entry.outputs[0], DiffusionModel):
                state["entry"] = entry
                return entry.outputs[0]
        return None

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "executing" and data.get("node") in ("6", "7") and "model" not in state:
            model = state["model"] = loaded()
            if sequential and device == "cpu" and model is not None:
                MOVER.offload_sequential(state["entry"].outputs, "cpu", 1 << 20)
        if event == "progress":
            model = state.get("model")
            _report({"first_step_s": time.time() - t0,
                     "sequential": bool(model and is_sequentially_offloaded(model.unet))},
                    device)

    result = session.run(wf, on_event=on_event)
    raise RuntimeError(f"no sampler step was reached: {result.run.error}")


def _child_diffusers(file: Path, size: int, device: str, sequential: bool, t0: float) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from nodes.diffusion.loading import CONFIGS_DIR
    from nodes.diffusion.tokenizer import load_clip_tokenizer

    pipe = StableDiffusionPipeline.from_single_file(
        str(file), config=str(CONFIGS_DIR / "sd15"), local_files_only=True,
        tokenizer=load_clip_tokenizer(CONFIGS_DIR / "sd15" / "tokenizer"),
        safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32)
    if sequential:
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.enable_model_cpu_offload(device=device)

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        _report({"first_step_s": time.time() - t0, "sequential": sequential}, device)
        return kwargs

    pipe(PROMPT, height=size, width=size, num_inference_steps=2, guidance_scale=7.5,
         callback_on_step_end=callback, output_type="latent")
    raise RuntimeError("diffusers reached no step")


def _spawn(which: str, args: argparse.Namespace) -> dict[str, Any]:
    return run_child(__file__, which, ["--file", str(args.file), "--size", str(args.size),
                                       "--device", args.device])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", choices=WHICH, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sequential = args.child.endswith("sequential")
        child = _child_ours if args.child.startswith("ours") else _child_diffusers
        child(args.file, args.size, args.device, sequential, time.time())
        return
    if not args.file.exists():
        print(f"building {args.file} (random SD 1.5 weights, float16) ...", flush=True)
        build_random_sd15(args.file)
    print(f"file: {args.file.name}, {args.size}x{args.size}, device {args.device}, fp32, "
          f"fresh process per run, up to the first sampler step")
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WHICH}
    for _ in range(args.repeats):
        for which in WHICH:
            try:
                r = _spawn(which, args)
            except RuntimeError as exc:  # e.g. accelerate's hooks on a CPU-only torch
                lines = str(exc).strip().splitlines()
                cause = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1])
                print(f"  {which:21} failed: {cause.strip()}", flush=True)
                continue
            runs[which].append(r)
            dev = (f"  peak device {r['peak_device_gib']:5.2f} GiB"
                   if "peak_device_gib" in r else "")
            print(f"  {which:21} first step {r['first_step_s']:6.2f} s  peak RSS "
                  f"{r['peak_rss_gib']:5.2f} GiB{dev}  sequential: {r['sequential']}",
                  flush=True)
    keys = ["first_step_s", "peak_rss_gib"] + (["peak_device_gib"]
                                                if args.device.startswith("cuda") else [])
    med = {w: {k: statistics.median(r[k] for r in rs) for k in keys}
           for w, rs in runs.items() if rs}
    if "ours-sequential" not in med:
        return
    for key in keys:
        ours = med["ours-sequential"][key]
        print(f"{key:16} ours-sequential {ours:7.2f}  " + "  ".join(
            f"{w} {med[w][key]:7.2f} ({ours / med[w][key]:4.2f}x)"
            for w in WHICH if w != "ours-sequential" and w in med))


if __name__ == "__main__":
    main()
