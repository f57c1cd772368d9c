"""Scale-out benchmark: 1 worker vs a pool of 2 (local processes, or Ray actors).

A CPU-bound sampler stand-in (``TestBurn``: ``--steps`` steps of ``--step-ms`` of CPU
time, reporting progress each step like a sampler) runs behind a real server (the
head in this process, the workers as processes or Ray actors). Figures, as ratios
of the pool over one worker:

- throughput: ``--prompts`` prompts submitted at once by 4 clients, time until the
  last is in the history → prompts/s;
- time to image: one prompt on an idle server, submit → its final ``executing``
  on the client's websocket (median of ``--repeats``);
- the head's overhead per prompt: a trivial prompt's submit → final event on the
  websocket, minus the worker's own execution time (its ``execution_start`` →
  ``execution_success`` timestamps): queueing, routing, relaying, recording.

    .venv/bin/python bench/bench_scale.py [--prompts 40] [--steps 20] [--step-ms 10]
        [--repeats 10] [--ray]

Ratios only mean something on a machine with at least 2 free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from server.config import ServerConfig  # noqa: E402
from tests.server.helpers import Http, InProcessServer, Loop, wait_history  # noqa: E402
from tests.server.test_pool import POOL_REGISTRY, wait_idle  # noqa: E402


def burn(seed: int, steps: int, step_ms: float) -> dict[str, Any]:
    return {"1": {"class_type": "TestBurn",
                  "inputs": {"seed": seed, "steps": steps, "step_ms": step_ms}}}


def start(base: Path, workers: int, ray: bool) -> InProcessServer:
    config = ServerConfig(host="127.0.0.1", port=0, base_dir=base, device="cpu",
                          registry_factory=POOL_REGISTRY, workers=workers,
                          ray="local" if ray else None, workflows_dir=base / "wf",
                          web_dir=base / "web")
    srv = InProcessServer(config)
    wait_idle(srv.live, workers, timeout=300)  # a pool of one is a pool too
    return srv


def run_one(http: Http, ws: Any, prompt: dict[str, Any]) -> tuple[float, float]:
    """(client seconds submit → final event, worker seconds start → success)."""
    t0 = time.perf_counter()
    pid = http.post("/prompt", json={"prompt": prompt, "client_id": "bench"}).json()["prompt_id"]
    start = success = 0
    while True:
        msg = json.loads(ws.recv())
        data = msg.get("data", {})
        if data.get("prompt_id") != pid:
            continue
        if msg["type"] == "execution_start":
            start = data["timestamp"]
        elif msg["type"] == "execution_success":
            success = data["timestamp"]
        elif msg["type"] == "executing" and data.get("node") is None:
            return time.perf_counter() - t0, (success - start) / 1000


def measure(workers: int, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        srv = start(Path(tmp), workers, args.ray)
        loop = Loop()
        http = Http(srv.live.url, loop)
        ws = srv.live.connect_ws("bench")
        try:
            seed = iter(range(1, 1 << 30))
            for _ in range(2 * workers):  # warm: imports, first runs
                run_one(http, ws, burn(next(seed), 2, 1.0))
            tti = [run_one(http, ws, burn(next(seed), args.steps, args.step_ms))[0]
                   for _ in range(args.repeats)]
            overhead = []
            for _ in range(args.repeats * 3):
                total, worker = run_one(http, ws, burn(next(seed), 1, 0.0))
                overhead.append(total - worker)
            t0 = time.perf_counter()
            ids = [http.post("/prompt", json={
                "prompt": burn(next(seed), args.steps, args.step_ms),
                "client_id": f"c{i % 4}-{uuid.uuid4().hex[:4]}"}).json()["prompt_id"]
                for i in range(args.prompts)]
            history = wait_history(http, ids, timeout=3600)
            elapsed = time.perf_counter() - t0
            assert all(history[p]["status"]["status_str"] == "success" for p in ids)
            pids = {history[p]["outputs"]["1"]["pid"][0] for p in ids}
        finally:
            ws.close()
            http.close()
            loop.close()
            srv.stop()
    return {"workers": workers, "workers_used": len(pids),
            "prompts_per_s": args.prompts / elapsed,
            "time_to_image_s": statistics.median(tti),
            "head_overhead_ms": 1000 * statistics.median(overhead)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-ms", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ray", action="store_true", help="the pool as Ray actors")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.ray:  # Ray actors are processes of the raylet: they import the test pack
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    one = measure(1, args)
    two = measure(2, args)
    print(json.dumps({"one": one, "two": two, "ratios (two / one)": {
        "prompts_per_s": round(two["prompts_per_s"] / one["prompts_per_s"], 2),
        "time_to_image_s": round(two["time_to_image_s"] / one["time_to_image_s"], 2),
        "head_overhead_ms": round(two["head_overhead_ms"] / one["head_overhead_ms"], 2),
    }, "cpu_count": os.cpu_count(), "ray": args.ray}, indent=2))


if __name__ == "__main__":
    main()
