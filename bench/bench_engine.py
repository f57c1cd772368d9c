"""Engine benchmarks, measured side by side in one process (the machine is noisy).

(a) our txt2img ÷ diffusers' StableDiffusionPipeline on the same weights (warm,
    interleaved; prompts change every iteration so neither side reuses an encoding)
(b) a re-run after only a seed change ÷ a full cold run (fresh session, model from disk)
(c) executor overhead per node on chains of trivial nodes: first run and unchanged re-run
(d) a 1,000-iteration ForLoop ÷ the same 3,000 nodes it runs (Start, body, End per
    iteration) as a static chain, and ÷ its 1,000 body nodes alone as a static chain;
    then a 10,000-iteration loop's cost per iteration (no recursion, linear)
(e) a 64-element list mapped through a node ÷ 64 copies of that node, static
(f) two independent 1-second async sleeps in one prompt: wall time (≈1 s if concurrent)

    .venv/bin/python bench/bench_engine.py [--size 128] [--steps 20] [--repeats 7]
                                           [--engine-only]
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

from engine import Environment, Executor, Input, Node, NodeRegistry, NodeResult, Output
from engine.session import Session
from nodes import flow_control, primitives


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


class IntList(Node):
    """``count`` ints as a list output (mapped over downstream)."""

    TYPE = "BenchIntList"
    OUTPUTS = (Output("INT", is_list=True),)
    count: int = Input(64, min=0, max=100_000)

    def execute(self, ctx: Any) -> tuple[list[int]]:
        return (list(range(self.count)),)


class Sleep(Node):
    """An async node: sleeps without blocking the engine."""

    TYPE = "BenchSleep"
    OUTPUTS = (Output("INT"),)
    seconds: float = Input(1.0, min=0.0, max=10.0)
    tag: int = Input(0)

    async def execute(self, ctx: Any) -> tuple[int]:
        import asyncio

        await asyncio.sleep(self.seconds)
        return (self.tag,)


def _executor() -> Executor:
    registry = NodeRegistry()
    for cls in (*primitives.NODE_CLASSES, *flow_control.NODE_CLASSES, IntList, Sleep):
        registry.register(cls)
    return Executor(registry, Environment.create(tempfile.mkdtemp(), device="cpu"))


def for_loop(n: int) -> dict[str, Any]:
    return {
        "0": {"class_type": "PrimitiveInt", "inputs": {"value": 0}},
        "1": {"class_type": "ForLoopStart", "inputs": {"value": ["0", 0]}},
        "2": {"class_type": "IntMath", "inputs": {"a": ["1", 1], "b": 1}},
        "3": {"class_type": "ForLoopEnd", "inputs": {"flow": ["1", 0], "value": ["2", 0],
                                                     "count": n}},
        "out": {"class_type": "ShowValue", "inputs": {"value": ["3", 0]}},
    }


def unrolled_loop(n: int) -> dict[str, Any]:
    """The nodes a ``for_loop(n)`` runs, written out statically: per iteration a Start,
    the body and an End of count 1 (which returns its value instead of expanding)."""
    prompt: dict[str, Any] = {"0": {"class_type": "PrimitiveInt", "inputs": {"value": 0}}}
    value = ["0", 0]
    for i in range(n):
        prompt[f"s{i}"] = {"class_type": "ForLoopStart", "inputs": {"value": value}}
        prompt[f"b{i}"] = {"class_type": "IntMath", "inputs": {"a": [f"s{i}", 1], "b": 1}}
        prompt[f"e{i}"] = {"class_type": "ForLoopEnd", "inputs": {
            "flow": [f"s{i}", 0], "value": [f"b{i}", 0], "count": 1}}
        value = [f"e{i}", 0]
    prompt["out"] = {"class_type": "ShowValue", "inputs": {"value": value}}
    return prompt


def mapped(n: int) -> dict[str, Any]:
    return {"0": {"class_type": "BenchIntList", "inputs": {"count": n}},
            "1": {"class_type": "IntMath", "inputs": {"a": ["0", 0], "b": 1}},
            "out": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}


def unmapped(n: int) -> dict[str, Any]:
    prompt: dict[str, Any] = {}
    for i in range(n):
        prompt[f"p{i}"] = {"class_type": "PrimitiveInt", "inputs": {"value": i}}
        prompt[f"m{i}"] = {"class_type": "IntMath", "inputs": {"a": [f"p{i}", 0], "b": 1}}
        prompt[f"o{i}"] = {"class_type": "ShowValue", "inputs": {"value": [f"m{i}", 0]}}
    return prompt


def bench_times(*prompts: dict[str, Any], repeats: int = 5) -> list[float]:
    """Best first-run time of each prompt (fresh cache; validation included),
    interleaved, in CPU seconds."""
    times: list[list[float]] = [[] for _ in prompts]
    for _ in range(repeats):
        for prompt, samples in zip(prompts, times, strict=True):
            executor = _executor()
            t0 = time.process_time()
            assert executor.run(prompt).ok
            samples.append(time.process_time() - t0)
    return [min(samples) for samples in times]


def bench_ratio(dynamic: dict[str, Any], static: dict[str, Any], repeats: int = 5
                ) -> tuple[float, float, float]:
    """Best first-run CPU time of each, interleaved; and their ratio."""
    dyn, sta = bench_times(dynamic, static, repeats=repeats)
    return dyn, sta, dyn / sta


def bench_async(seconds: float = 1.0) -> float:
    prompt = {"1": {"class_type": "BenchSleep", "inputs": {"seconds": seconds, "tag": 1}},
              "2": {"class_type": "BenchSleep", "inputs": {"seconds": seconds, "tag": 2}},
              "3": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}},
              "4": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}}}
    t0 = time.perf_counter()
    assert _executor().run(prompt).ok
    return time.perf_counter() - t0


def engine_benches() -> None:
    print("(c) executor overhead per node, validation included (best of 3; µs/node);")
    print("    CPU = this process's CPU time, which other load on the machine does not inflate")
    print(f"    {'nodes':>7} {'first (wall)':>13} {'first (CPU)':>12} {'re-run (wall)':>14} "
          f"{'re-run (CPU)':>13}")
    for n in (100, 1_000, 10_000):
        first, rerun = bench_chain(n)
        first_cpu, rerun_cpu = bench_chain(n, clock=time.process_time)
        print(f"    {n:>7} {first:>13.1f} {first_cpu:>12.1f} {rerun:>14.1f} {rerun_cpu:>13.1f}")
    loop_s, same_s, body_s = bench_times(for_loop(1_000), unrolled_loop(1_000), chain(1_000))
    print(f"(d) 1,000-iteration ForLoop {loop_s * 1e3:.1f} ms ({loop_s * 1e3:.0f} µs/iteration: "
          f"3 nodes and an expansion, {loop_s * 1e6 / 3_000:.0f} µs/node)")
    print(f"    / the same 3,000 nodes as a static chain {same_s * 1e3:.1f} ms "
          f"({same_s * 1e6 / 3_000:.0f} µs/node) = {loop_s / same_s:.2f}")
    print(f"    / its 1,000 body nodes alone, static {body_s * 1e3:.1f} ms = "
          f"{loop_s / body_s:.2f}")
    (long_s,) = bench_times(for_loop(10_000), repeats=1)
    print(f"    10,000-iteration ForLoop {long_s:.2f} s ({long_s * 1e2:.0f} µs/iteration)")
    map_s, flat_s, ratio = bench_ratio(mapped(64), unmapped(64))
    print(f"(e) 64-element list mapped {map_s * 1e3:.2f} ms / 64 static copies "
          f"{flat_s * 1e3:.2f} ms = {ratio:.2f}")
    print(f"(f) two independent 1 s async sleeps: {bench_async():.2f} s wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--engine-only", action="store_true",
                        help="only (c)-(f): no model, seconds instead of minutes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home = Path(tempfile.mkdtemp(prefix="steerflow-bench-"))

    engine_benches()
    if args.engine_only:
        return

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
