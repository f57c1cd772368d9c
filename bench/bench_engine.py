"""Engine benchmarks, measured side by side in one process (the machine is noisy).

(a) our txt2img ÷ diffusers' StableDiffusionPipeline on the same weights (warm,
    interleaved; prompts change every iteration so neither side reuses an encoding)
(b) a re-run after only a seed change ÷ a full cold run (fresh session, model from disk)
(c) executor overhead per node on chains of trivial nodes: first run and unchanged re-run

    .venv/bin/python bench/bench_engine.py [--size 128] [--steps 20] [--repeats 7]
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

import torch

from engine import Environment, Executor, Input, Node, NodeRegistry, NodeResult
from engine.session import Session
from nodes import primitives


class Keep(Node):
    """Output node that keeps the decoded image in memory, like output_type='np'."""

    TYPE = "BenchKeep"
    OUTPUT_NODE = True
    value: Any = Input(type="IMAGE")
    tag: str = Input("")

    def execute(self, ctx: Any) -> NodeResult:
        return NodeResult((), {"shape": [list(self.value.shape)]})


def txt2img(size: int, steps: int, seed: int, text: str) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": f"neg {text}", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "BenchKeep", "inputs": {"value": ["8", 0]}},
    }


def bench_pipeline_ratio(home: Path, size: int, steps: int, repeats: int) -> dict[str, float]:
    import diffusers

    session = Session(home, device="cpu")
    session.registry.register(Keep)
    session.executor.ensure_setup()
    folder = session.env.folder("models") / "checkpoints" / "steerflow-tiny"
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    session.run(txt2img(size, steps, 0, "warm up"))
    pipe("warm up", negative_prompt="neg warm up", num_inference_steps=steps, height=size,
         width=size, output_type="np")
    ours, theirs = [], []
    for i in range(repeats):
        text = f"a red circle number {i}"
        t0 = time.perf_counter()
        result = session.run(txt2img(size, steps, i, text))
        t1 = time.perf_counter()
        pipe(text, negative_prompt=f"neg {text}", num_inference_steps=steps, height=size,
             width=size, output_type="np", generator=torch.Generator("cpu").manual_seed(i))
        t2 = time.perf_counter()
        assert result.ok and "4" not in result.run.executed  # the loaded model is reused
        ours.append(t1 - t0)
        theirs.append(t2 - t1)
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {"ours_s": statistics.median(ours), "diffusers_s": statistics.median(theirs),
            "ratio": statistics.median(ratios)}


def bench_seed_rerun(home: Path, size: int, steps: int) -> dict[str, float]:
    results = []
    for _ in range(3):
        t0 = time.perf_counter()
        session = Session(home, device="cpu")
        session.registry.register(Keep)
        session.run(txt2img(size, steps, 1, "a blue square"))
        t1 = time.perf_counter()
        session.run(txt2img(size, steps, 2, "a blue square"))
        t2 = time.perf_counter()
        results.append(((t2 - t1) / (t1 - t0), t1 - t0, t2 - t1))
    ratio, cold, rerun = min(results)
    return {"cold_s": cold, "seed_rerun_s": rerun, "ratio": ratio}


def chain(n: int) -> dict[str, Any]:
    prompt: dict[str, Any] = {"0": {"class_type": "PrimitiveInt", "inputs": {"value": 0}}}
    for i in range(1, n):
        prompt[str(i)] = {"class_type": "IntMath", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    prompt["out"] = {"class_type": "ShowValue", "inputs": {"value": [str(n - 1), 0]}}
    return prompt


def bench_chain(n: int, repeats: int = 3, clock: Any = time.perf_counter
                ) -> tuple[float, float]:
    registry = NodeRegistry()
    for cls in primitives.NODE_CLASSES:
        registry.register(cls)
    env = Environment.create(tempfile.mkdtemp(), device="cpu")
    firsts, reruns = [], []
    for _ in range(repeats):
        executor = Executor(registry, env)
        prompt = chain(n)
        t0 = clock()
        first = executor.run(prompt)
        t1 = clock()
        again = executor.run(prompt)
        t2 = clock()
        assert first.ok and len(first.executed) == n + 1 and again.executed == []
        firsts.append((t1 - t0) / (n + 1) * 1e6)
        reruns.append((t2 - t1) / (n + 1) * 1e6)
    return min(firsts), min(reruns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home = Path(tempfile.mkdtemp(prefix="steerflow-bench-"))

    print("(c) executor overhead per node, validation included (best of 3; µs/node);")
    print("    CPU = this process's CPU time, which other load on the machine does not inflate")
    print(f"    {'nodes':>7} {'first (wall)':>13} {'first (CPU)':>12} {'re-run (wall)':>14} "
          f"{'re-run (CPU)':>13}")
    for n in (100, 1_000, 10_000):
        first, rerun = bench_chain(n)
        first_cpu, rerun_cpu = bench_chain(n, clock=time.process_time)
        print(f"    {n:>7} {first:>13.1f} {first_cpu:>12.1f} {rerun:>14.1f} {rerun_cpu:>13.1f}")

    a = bench_pipeline_ratio(home, args.size, args.steps, args.repeats)
    print(f"(a) txt2img {args.size}x{args.size}, {args.steps} euler steps, tiny model, "
          f"{args.threads} thread(s), median of {args.repeats} interleaved runs")
    print(f"    steerflow {a['ours_s'] * 1e3:.1f} ms, StableDiffusionPipeline "
          f"{a['diffusers_s'] * 1e3:.1f} ms, ratio {a['ratio']:.3f} (target <= 1.02)")

    b = bench_seed_rerun(home, args.size, args.steps)
    print(f"(b) seed-only re-run {b['seed_rerun_s'] * 1e3:.1f} ms / cold run "
          f"{b['cold_s'] * 1e3:.1f} ms = {b['ratio']:.3f}")


if __name__ == "__main__":
    main()
