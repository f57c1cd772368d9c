"""Cold loading: time from a fresh process to the first sampler step, and peak RSS.

Ours (``steerflow run`` on a txt2img workflow) against diffusers'
``StableDiffusionPipeline.from_single_file`` on the same file, each in a fresh
process (imports included), alternating, so the page cache is equally warm for
both. The model is a full-size SD 1.5-architecture checkpoint with random
weights (float16, original layout, no metadata: ~2.1 GB) that the bench builds
once, locally; nothing is downloaded.

    .venv/bin/python bench/bench_loading.py [--file /tmp/sd15-random-fp16.safetensors]
                                            [--size 128] [--repeats 2]

"loading" is our loader node (it also imports diffusers, overlapped with the
reads) against ``from_single_file`` alone. Peak RSS is the child's ``ru_maxrss``;
time to first step is measured from the child's spawn (interpreter start and
imports included) to the end of the first sampler step (the step itself
included, the same work on both sides). Ours also reports when the sampler node
starts (weights loaded, prompts encoded): the moment ComfyUI's progress bar appears.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_FILE = Path(tempfile.gettempdir()) / "sd15-random-fp16.safetensors"
PROMPT = "a photograph of an astronaut riding a horse"
# "-prewarmed": timed from after the imports, as a prompt sent to a started server
WHICH = ("ours", "diffusers", "ours-prewarmed", "diffusers-prewarmed")


def random_state(model: Any, gen: Any, device: str = "cpu") -> dict[str, Any]:
    """Random float16 weights for every tensor of ``model``'s state dict (an empty model
    will do): norms' weights 1, biases 0, other weights N(0, 1/fan_in); drawn on
    ``device`` with ``gen``, returned on the CPU."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if not t.is_floating_point():
            out[key] = t.clone()
        elif key.endswith("weight") and t.ndim == 1:  # norms: around 1
            out[key] = torch.ones(t.shape, dtype=torch.float16)
        elif key.endswith("bias"):
            out[key] = torch.zeros(t.shape, dtype=torch.float16)
        else:
            fan_in = max(1, t[0].numel()) if t.ndim > 1 else 1
            drawn = torch.randn(t.shape, generator=gen, device=device) / fan_in**0.5
            out[key] = drawn.half().cpu()
    return out


def build_random_sd15(path: Path) -> None:
    """Write a full-size SD 1.5-architecture checkpoint with random float16 weights.

    Models are built on the meta device and filled tensor by tensor, so building
    costs ~2x the file size in memory and no fp32 random init.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from nodes.diffusion.loading import _empty, family_configs
    from nodes.diffusion.original_layout import (
        text_encoder_to_original,
        unet_to_original,
        vae_to_original,
    )

    configs = family_configs("sd1")
    gen = torch.Generator().manual_seed(0)
    unet = _empty(lambda: UNet2DConditionModel.from_config(configs["unet"]))
    vae = _empty(lambda: AutoencoderKL.from_config(configs["vae"]))
    text = _empty(lambda: CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])))
    tensors: dict[str, torch.Tensor] = {}
    tensors.update(unet_to_original(random_state(unet, gen), configs["unet"]))
    tensors.update(vae_to_original(random_state(vae, gen), configs["vae"]))
    text_state = random_state(text, gen)
    text_state.pop("embeddings.position_ids", None)
    tensors.update(text_encoder_to_original(text_state))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


# --- the two children ----------------------------------------------------------------
def _session(file: Path) -> Any:
    from engine.session import Session

    # A kept home: the one-time install of the built-in models is not part of a cold start.
    base = file.with_name("steerflow_bench_loading_home")
    link = base / "models" / "checkpoints" / file.name
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(file, link)  # symlinks are refused (paths are confined)
    return Session(str(base), device="cpu")


def _child_ours(file: Path, size: int, t0: float, session: Any = None) -> dict[str, Any]:
    session = session if session is not None else _session(file)
    wf = session.load(str(ROOT / "workflows" / "txt2img.json"))
    for target, value in (("4.ckpt_name", file.name), ("6.text", PROMPT), ("5.width", size),
                          ("5.height", size), ("3.steps", 2)):
        wf.set(target, value, session.registry)
    marks: dict[str, float] = {}

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "executing" and data.get("node") is not None:
            marks.setdefault(f"start_{data['node']}", time.time() - t0)
        if event == "progress":  # the first sampler step is done: report and stop here
            marks["first_step"] = time.time() - t0
            _report({"first_step_s": marks["first_step"],
                     "load_s": marks.get("start_6", marks["first_step"]) - marks["start_4"],
                     "sampler_start_s": marks.get("start_3"), "marks": marks})

    result = session.run(wf, on_event=on_event)
    raise RuntimeError(f"no sampler step was reached: {result.run.error or marks}")


def _report(result: dict[str, Any]) -> None:
    """Print the child's result and end it at once (the rest of the run is not measured)."""
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)


def _child_diffusers(file: Path, size: int, t0: float) -> dict[str, Any]:
    import torch
    from diffusers import StableDiffusionPipeline

    from nodes.diffusion.loading import CONFIGS_DIR
    from nodes.diffusion.tokenizer import load_clip_tokenizer

    t_import = time.time() - t0
    pipe = StableDiffusionPipeline.from_single_file(
        str(file), config=str(CONFIGS_DIR / "sd15"), local_files_only=True,
        tokenizer=load_clip_tokenizer(CONFIGS_DIR / "sd15" / "tokenizer"),
        safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32)
    t_load = time.time() - t0
    marks: dict[str, float] = {"imported": t_import, "loaded": t_load}

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        marks["first_step"] = time.time() - t0
        _report({"first_step_s": marks["first_step"], "load_s": t_load - t_import,
                 "marks": marks})
        return kwargs

    pipe(PROMPT, height=size, width=size, num_inference_steps=2, guidance_scale=7.5,
         callback_on_step_end=callback, output_type="latent")
    raise RuntimeError("diffusers reached no step")


def _child(which: str, file: Path, size: int, t0: float) -> None:
    ours = which.startswith("ours")
    if ours:  # as `steerflow run` and the server's worker set up their process
        from steerflow import tune_process

        tune_process()
    if which.endswith("-prewarmed"):  # as a server's worker: imports done before the prompt
        import diffusers  # noqa: F401

        import nodes.diffusion.loading
        import nodes.diffusion.sampling  # noqa: F401
        session = _session(file) if ours else None  # a worker's session is built at start
        t0 = time.time()
    else:
        session = None  # built inside the measured time, as a cold `steerflow run` does
    if ours:
        _child_ours(file, size, t0, session)
    else:
        _child_diffusers(file, size, t0)


def run_child(script: str, which: str, args: list[str]) -> dict[str, Any]:
    """Run ``script --child which *args`` in a fresh, quiet, offline process and return
    the JSON it prints after ``RESULT `` (the benches' one way to measure a cold start)."""
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error",
               HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run([sys.executable, script, "--child", which, *args],
                          capture_output=True, text=True, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{which} child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def _spawn(which: str, file: Path, size: int) -> dict[str, Any]:
    return run_child(__file__, which, ["--file", str(file), "--size", str(size),
                                       "--t0", repr(time.time())])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=WHICH, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)  # when the child was spawned
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.file, args.size, args.t0 or time.time())
        return
    if not args.file.exists():
        print(f"building {args.file} (random SD 1.5 weights, float16) ...", flush=True)
        build_random_sd15(args.file)
    print(f"file: {args.file} ({args.file.stat().st_size / 2**30:.2f} GiB), "
          f"{args.size}x{args.size}, fresh process per run, {args.repeats} run(s) each")
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WHICH}
    for _ in range(args.repeats):
        for which in WHICH:
            r = _spawn(which, args.file, args.size)
            runs[which].append(r)
            start = r.get("sampler_start_s")
            print(f"  {which:19} first step {r['first_step_s']:6.2f} s  load "
                  f"{r['load_s']:5.2f} s  peak RSS {r['peak_rss_gib']:5.2f} GiB"
                  + (f"  sampler start {start:5.2f} s" if start is not None else ""), flush=True)
    med = {w: {k: statistics.median(r[k] for r in rs)
               for k in ("first_step_s", "load_s", "peak_rss_gib")} for w, rs in runs.items()}
    for key, label, suffix in (
            ("first_step_s", "cold process -> first step", ""),
            ("first_step_s", "prompt -> first step (imports done)", "-prewarmed"),
            ("load_s", "loading (ours: + imports)", ""),
            ("peak_rss_gib", "peak RSS (GiB)", "")):
        o, d = med["ours" + suffix][key], med["diffusers" + suffix][key]
        print(f"{label:36} ours {o:7.2f}  diffusers {d:7.2f}  ours/diffusers {o / d:5.2f}x")
    for suffix, label in (("", "cold process"), ("-prewarmed", "prompt (imports done)")):
        starts = [r["sampler_start_s"] for r in runs["ours" + suffix]]
        print(f"{label + ' -> sampler start':36} ours {statistics.median(starts):7.2f}")


if __name__ == "__main__":
    main()
