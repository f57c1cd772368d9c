"""Cold start against ComfyUI: server spawn -> first sampler step, side by side.

The same API-format txt2img graph (CheckpointLoaderSimple -> CLIPTextEncode x2 ->
EmptyLatentImage -> KSampler euler -> VAEDecode -> SaveImage) is sent through
/prompt to a real ComfyUI server and to ``steerflow serve`` (its ComfyUI-compatible
/prompt and /ws), both on the CPU, on the same checkpoint file (hard-linked into
each one's models/checkpoints). "First step" is the first ``progress`` message of
the KSampler on the websocket. Two figures per server, each from a fresh process:

(a) cold:  process spawn -> first progress (imports, start-up, loading, encoding, 1 step)
(b) warm:  server already answering (imports done, nothing loaded) -> prompt
           submitted -> first progress: the first prompt to a started server

plus the peak RSS (VmHWM) of the server process and of each of its child
processes (Steerflow runs prompts in a worker process), read at the first step.
Runs alternate between the two servers so the page cache is equally warm.

ComfyUI is not part of this project: point --comfy-dir at a ComfyUI checkout and
--comfy-python at a Python that has its requirements (a separate venv, CPU torch);
without them the bench says so and measures Steerflow alone.

    .venv/bin/python bench/bench_comfy_cold.py --comfy-dir /tmp/comfy/ComfyUI \\
        --comfy-python /tmp/comfy/venv/bin/python [--file /tmp/sd15-random-fp16.safetensors]
        [--size 128] [--steps 2] [--repeats 2] [--sf-home /tmp/comfy/sf_home]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILE = Path(tempfile.gettempdir()) / "sd15-random-fp16.safetensors"
PROMPT = "a photograph of an astronaut riding a horse"


def graph(ckpt: str, size: int, steps: int, seed: int) -> dict[str, Any]:
    """ComfyUI's API-format txt2img graph (the default workflow's nodes)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": size, "height": size, "batch_size": 1}},
        "3": {"class_type": "KSampler",
              "inputs": {"model": ["4", 0], "seed": seed, "steps": steps, "cfg": 7.5,
                         "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0],
                         "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage",
              "inputs": {"images": ["8", 0], "filename_prefix": "bench_cold"}},
    }


def link_into(file: Path, folder: Path) -> str:
    """Hard-link ``file`` into ``folder`` (Steerflow refuses symlinks); its name there."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file.name
    if not target.exists():
        try:
            os.link(file, target)
        except OSError:  # another file system: a symlink (ComfyUI follows it)
            target.symlink_to(file)
    return file.name


def hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid``'s child processes, recursively (from /proc)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Server:
    def __init__(self, name: str, cmd: list[str], cwd: Path, port: int, log: Path,
                 env: dict[str, str] | None = None, fresh_state: Path | None = None) -> None:
        self.name, self.cmd, self.cwd, self.port, self.log = name, cmd, cwd, port, log
        self.env = env
        self.fresh_state = fresh_state
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        if self.fresh_state is not None:
            # Steerflow's queue is durable: the prompt of the run killed last time would
            # be recovered and run first. Each run starts from an empty queue database.
            shutil.rmtree(self.fresh_state, ignore_errors=True)
        with open(self.log, "ab") as log:
            t0 = time.time()
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdout=log, stderr=log,
                                         env=self.env, start_new_session=True)
        return t0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: it and its workers
            self.proc.wait()
        self.proc = None

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 300) -> float:
        end = time.time() + timeout
        while time.time() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}), see {self.log}")
            try:
                async with http.get(self.url + "/system_stats") as r:
                    # Steerflow answers before its worker is up: ready is a worker pid
                    # (given once the worker has its imports done, as ComfyUI's server).
                    worker = (await r.json()).get("system", {}).get("worker", {"pid": 0}) \
                        if r.status == 200 else {}
                    if worker.get("pid") is not None and r.status == 200:
                        return time.time()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer within {timeout} s")

    async def first_step(self, http: aiohttp.ClientSession, prompt: dict[str, Any]
                         ) -> dict[str, Any]:
        """Submit ``prompt``; wait for the sampler's first progress. Times are absolute."""
        client_id = uuid.uuid4().hex
        marks: dict[str, float] = {}
        async with http.ws_connect(f"{self.url}/ws?clientId={client_id}") as ws:
            marks["submit"] = time.time()
            async with http.post(self.url + "/prompt",
                                 json={"prompt": prompt, "client_id": client_id}) as r:
                body = await r.text()
                if r.status != 200:
                    raise RuntimeError(f"{self.name} refused the prompt: {r.status} {body}")
            marks["accepted"] = time.time()
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                kind, data = m.get("type"), m.get("data") or {}
                marks.setdefault(f"msg_{kind}", time.time())
                if kind == "executing" and data.get("node") is not None:
                    marks.setdefault(f"start_{data['node']}", time.time())
                elif kind == "progress" and str(data.get("node")) == "3":
                    marks["first_step"] = time.time()
                    break
                elif kind in ("execution_success", "executed") or (
                        kind == "executing" and data.get("node") is None):
                    raise RuntimeError(f"{self.name}: the prompt ended with no progress "
                                       f"message seen: {marks}")
                elif kind == "execution_error":
                    raise RuntimeError(f"{self.name}: {data.get('exception_message')}")
            else:
                raise RuntimeError(f"{self.name}: websocket closed before the first step")
        assert self.proc is not None
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        marks["rss_gib"] = {str(p): hwm_kib(p) / 2**20 for p in pids}  # type: ignore[assignment]
        return marks


async def measure(server: Server, prompt: dict[str, Any], mode: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        t_spawn = server.start()
        try:
            ready = await server.wait_ready(http)
            if mode == "warm":  # let the start-up settle (background imports, workers)
                await asyncio.sleep(float(os.environ.get("BENCH_SETTLE_S", "8")))
            m = await server.first_step(http, prompt)
        finally:
            server.stop()
    t0 = t_spawn if mode == "cold" else m["submit"]
    rss = m.pop("rss_gib")
    out = {"first_step_s": m["first_step"] - t0, "ready_s": ready - t_spawn,
           "marks": {k: round(v - t0, 3) for k, v in m.items()},
           "rss_gib": rss, "rss_main_gib": next(iter(rss.values())),
           "rss_sum_gib": sum(rss.values())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comfy-dir", type=Path, help="a ComfyUI checkout (main.py)")
    parser.add_argument("--comfy-python", type=Path, help="the Python of ComfyUI's venv")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", default="cold,warm")
    parser.add_argument("--only", choices=("comfyui", "steerflow"))
    parser.add_argument("--comfy-port", type=int, default=8288)
    parser.add_argument("--sf-port", type=int, default=8289)
    parser.add_argument("--sf-home", type=Path,
                        default=Path(tempfile.gettempdir()) / "comfy" / "sf_home")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "comfy")
    args = parser.parse_args()
    if not args.file.exists():
        sys.exit(f"{args.file} is missing: build it with bench/bench_loading.py")
    args.logs.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    have_comfy = (args.comfy_dir is not None and (args.comfy_dir / "main.py").exists()
                  and args.comfy_python is not None and args.comfy_python.exists())
    if not have_comfy:
        print("ComfyUI skipped: pass --comfy-dir (a ComfyUI checkout) and --comfy-python "
              "(its venv's python); measuring Steerflow alone")
    elif args.only != "steerflow":
        name = link_into(args.file, args.comfy_dir / "models" / "checkpoints")
        servers.append(Server(
            "comfyui", [str(args.comfy_python), "main.py", "--cpu", "--listen", "127.0.0.1",
                        "--port", str(args.comfy_port), "--disable-auto-launch"],
            args.comfy_dir, args.comfy_port, args.logs / "comfyui_server.log"))
    if args.only != "comfyui":
        name = link_into(args.file, args.sf_home / "models" / "checkpoints")
        servers.append(Server(
            "steerflow", [sys.executable, "-m", "steerflow.cli", "serve", "--base-dir",
                          str(args.sf_home), "--port", str(args.sf_port), "--device", "cpu"],
            REPO, args.sf_port, args.logs / "steerflow_server.log",
            env={**os.environ, "PYTHONPATH": str(REPO)}, fresh_state=args.sf_home / "data"))
    modes = args.modes.split(",")
    print(f"file: {args.file} ({args.file.stat().st_size / 2**30:.2f} GiB), "
          f"{args.size}x{args.size}, {args.steps} steps euler, {args.repeats} run(s) each")
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    seed = 0
    for _ in range(args.repeats):
        for mode in modes:
            for server in servers:
                seed += 1  # a new seed each time: nothing can come from a cache
                try:
                    r = asyncio.run(measure(server, graph(name, args.size, args.steps, seed),
                                            mode))
                except RuntimeError as exc:
                    print(f"  {server.name:9} {mode:4} FAILED: {exc}", flush=True)
                    continue
                runs.setdefault((server.name, mode), []).append(r)
                print(f"  {server.name:9} {mode:4} first step {r['first_step_s']:6.2f} s  "
                      f"(server ready {r['ready_s']:5.2f} s after spawn)  peak RSS main "
                      f"{r['rss_main_gib']:5.2f} GiB, all processes {r['rss_sum_gib']:5.2f} GiB"
                      f"  marks {json.dumps(r['marks'])}", flush=True)
    print("median first step (s):")
    for (name_, mode), rs in runs.items():
        print(f"  {name_:9} {mode:4} {statistics.median(r['first_step_s'] for r in rs):6.2f}  "
              f"peak RSS (all processes) "
              f"{statistics.median(r['rss_sum_gib'] for r in rs):5.2f} GiB")


if __name__ == "__main__":
    main()
