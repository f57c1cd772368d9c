"""Server benchmarks against a real ``steerflow serve`` subprocess (default node packs).

(a) start-up: process start → first answered request, and → node packs loaded
    (first /object_info answer; prompts can be validated from then on)
(b) throughput of a trivial workflow (Int → Int Math → Show Value, a new value
    each time so nothing is cached): each client submits a prompt through
    /prompt (persisted before the reply) and waits for its execution_success on
    its websocket before the next; 1 client and 10 concurrent clients. Also two
    pipelined variants where one client does not wait for execution: POSTs one
    after another (each awaiting its 200), and all POSTs in flight at once
    (group commit shares one SQLite commit among the requests that overlap).
(d) the process boundary: a trivial prompt run by an executor in this process
    vs sent to a worker process (``server.worker``) and its ``done`` awaited.
(c) event latency: the server's execution_start timestamp → the client
    receiving the first ``executing`` of that prompt (same clock, same machine)
(e) a 5,000-node chain (Int Math after Int Math) run with a client that announced
    ComfyUI's feature flags (it gets progress_state, every node's state restated) ÷ the
    same with a plain client: the states' cost on a huge graph (a ratio near 1)

    .venv/bin/python bench/bench_server.py [--prompts 2000] [--startups 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]


def trivial(value: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": value}},
        "2": {"class_type": "IntMath", "inputs": {"a": ["1", 0], "b": 1, "op": "add"}},
        "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base: Path, models: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "steerflow.cli", "serve", "--port", str(port), "--base-dir",
           str(base), "--models-dir", str(models), "--device", "cpu"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def wait_answer(url: str, t0: float, timeout: float = 300) -> float:
    while time.perf_counter() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                resp.read()
                return time.perf_counter() - t0
        except OSError:
            time.sleep(0.005)
    raise TimeoutError(url)


def measure_startup(base: Path, models: Path) -> tuple[float, float, subprocess.Popen[bytes], int]:
    port = free_port()
    t0 = time.perf_counter()
    proc = start_server(base, models, port)
    first = wait_answer(f"http://127.0.0.1:{port}/prompt", t0)
    ready = wait_answer(f"http://127.0.0.1:{port}/object_info", t0)
    return first, ready, proc, port


class Client:
    """One websocket client submitting prompts and waiting for their success."""

    def __init__(self, http: aiohttp.ClientSession, url: str):
        self.http, self.url = http, url
        self.cid = uuid.uuid4().hex
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.starts: dict[str, float] = {}
        self.latencies: list[float] = []

    async def __aenter__(self) -> Client:
        self.ws = await self.http.ws_connect(
            self.url.replace("http", "ws", 1) + f"/ws?clientId={self.cid}")
        await self.ws.receive()  # the initial status
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        await self.ws.close()

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            received = time.time()
            event = json.loads(msg.data)
            data, kind = event["data"], event["type"]
            pid = data.get("prompt_id")
            if kind == "execution_start":
                self.starts[pid] = data["timestamp"] / 1000 + 0.0005  # ms truncation
            elif kind == "executing" and data.get("node") is not None and pid in self.starts:
                self.latencies.append(received - self.starts.pop(pid))
            elif kind in ("execution_success", "execution_error"):
                fut = self.waiters.pop(pid, None)
                if fut is not None and not fut.done():
                    fut.set_result(None) if kind == "execution_success" else fut.set_exception(
                        RuntimeError(json.dumps(data)[:500]))

    async def submit(self, value: int) -> asyncio.Future[None]:
        pid = str(uuid.uuid4())
        fut = asyncio.get_running_loop().create_future()
        self.waiters[pid] = fut
        async with self.http.post(self.url + "/prompt", json={
                "prompt": trivial(value), "client_id": self.cid, "prompt_id": pid}) as resp:
            if resp.status != 200:
                raise RuntimeError(await resp.text())
        return fut

    async def sequential(self, n: int, offset: int) -> None:
        for i in range(n):
            await (await self.submit(offset + i))


async def throughput(url: str, clients: int, per_client: int, offset: int,
                     pipelined: bool | str = False) -> tuple[float, list[float], float]:
    """(prompts run per second, event latencies, prompts accepted per second)."""
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        cs = [Client(http, url) for _ in range(clients)]
        for c in cs:
            await c.__aenter__()
        t0 = time.perf_counter()
        accepted = 0.0
        if pipelined == "concurrent":
            futs = await asyncio.gather(*(cs[0].submit(offset + i) for i in range(per_client)))
            accepted = per_client / (time.perf_counter() - t0)
            await asyncio.gather(*futs)
        elif pipelined:
            futs = [await cs[0].submit(offset + i) for i in range(per_client)]
            accepted = per_client / (time.perf_counter() - t0)
            await asyncio.gather(*futs)
        else:
            await asyncio.gather(*(c.sequential(per_client, offset + k * per_client)
                                   for k, c in enumerate(cs)))
        elapsed = time.perf_counter() - t0
        for c in cs:
            await c.__aexit__()
    return clients * per_client / elapsed, [x for c in cs for x in c.latencies], accepted


def chain(length: int, start: int) -> dict[str, Any]:
    graph: dict[str, Any] = {"0": {"class_type": "PrimitiveInt", "inputs": {"value": start}}}
    for i in range(1, length):
        graph[str(i)] = {"class_type": "IntMath",
                         "inputs": {"a": [str(i - 1), 0], "b": 1, "op": "add"}}
    graph["out"] = {"class_type": "ShowValue", "inputs": {"value": [str(length - 1), 0]}}
    return graph


async def big_graph(url: str, length: int, start: int, modern: bool) -> float:
    """Seconds from POST to the end of a ``length``-node chain, read by one client (with
    ComfyUI's feature flags if ``modern``) that reads every message."""
    cid = uuid.uuid4().hex
    async with aiohttp.ClientSession() as http, http.ws_connect(
            url.replace("http", "ws", 1) + f"/ws?clientId={cid}", max_msg_size=0) as ws:
        if modern:
            await ws.send_json({"type": "feature_flags",
                                "data": {"supports_preview_metadata": True}})
        t0 = time.perf_counter()
        async with http.post(url + "/prompt", json={"prompt": chain(length, start),
                                                    "client_id": cid}) as resp:
            pid = (await resp.json())["prompt_id"]
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            data = event["data"]
            if (event["type"] == "executing" and data.get("node") is None
                    and data.get("prompt_id") == pid):
                return time.perf_counter() - t0
    raise RuntimeError("the websocket closed before the prompt ended")


def boundary_cost(base: Path, models: Path, n: int) -> tuple[float, float]:
    """Seconds per trivial prompt: in-process executor, and through a worker process."""
    from engine.session import Session
    from server.worker import WorkerProcess

    session = Session(base, models_dir=models, device="cpu")
    session.executor.ensure_setup()
    t0 = time.perf_counter()
    for i in range(n):
        session.executor.run(trivial(i), on_event=lambda *_: None)
    local = (time.perf_counter() - t0) / n
    worker = WorkerProcess({"base_dir": str(base), "models_dir": str(models), "device": "cpu"})
    try:
        while (msg := worker.recv(60)) is not None and msg.op != "ready":
            pass
        t0 = time.perf_counter()
        for i in range(n):
            worker.send({"op": "run", "prompt_id": f"p{i}", "prompt": trivial(n + i),
                         "extra": {}, "outputs": []})
            while (msg := worker.recv(60)) is not None and msg.op != "done":
                pass
        remote = (time.perf_counter() - t0) / n
    finally:
        worker.stop()
    return local, remote


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=2000, help="per measurement")
    parser.add_argument("--startups", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs (median)")
    parser.add_argument("--chain", type=int, default=5000, help="nodes of the big graph (e)")
    parser.add_argument("--models-dir", default=str(REPO / "models"),
                        help="models folder (the default tiny model is created if missing)")
    args = parser.parse_args()
    models = Path(args.models_dir)
    firsts, readies = [], []
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = None, 0
        for i in range(args.startups):
            first, ready, proc, port = measure_startup(Path(tmp) / f"s{i}", models)
            firsts.append(first)
            readies.append(ready)
            if i < args.startups - 1:
                proc.terminate()
                proc.wait()
        assert proc is not None
        url = f"http://127.0.0.1:{port}"
        ones, tens, pipes, bursts, lat, chains = [], [], [], [], [], []
        posts, posts_burst = [], []
        try:
            asyncio.run(throughput(url, 1, 200, 10**6))  # warm-up
            for r in range(args.repeats):  # interleaved: the machine is shared and noisy
                base = (r + 1) * 10**7
                rate, lat1, _ = asyncio.run(throughput(url, 1, args.prompts, base))
                ones.append(rate)
                rate, lat10, _ = asyncio.run(throughput(url, 10, args.prompts // 10,
                                                        base + 10**6))
                tens.append(rate)
                rate, _, accepted = asyncio.run(throughput(url, 1, args.prompts,
                                                           base + 2 * 10**6, pipelined=True))
                pipes.append(rate)
                posts.append(accepted)
                rate, _, accepted = asyncio.run(throughput(url, 1, args.prompts,
                                                           base + 3 * 10**6,
                                                           pipelined="concurrent"))
                bursts.append(rate)
                posts_burst.append(accepted)
                lat += lat1 + lat10
                plain = asyncio.run(big_graph(url, args.chain, base + 4 * 10**6, False))
                modern = asyncio.run(big_graph(url, args.chain, base + 5 * 10**6, True))
                chains.append((modern / plain, plain))
        finally:
            proc.terminate()
            proc.wait()
        local, remote = boundary_cost(Path(tmp) / "boundary", models, args.prompts // 2)
    lat.sort()
    one, ten, piped, burst, post, post_burst = (
        statistics.median(x) for x in (ones, tens, pipes, bursts, posts, posts_burst))
    rows = [
        ("start-up: process start → first answered request", f"{statistics.median(firsts):.2f} s",
         "6.5 s (ComfyUI, nodes loaded)"),
        ("start-up: → node packs loaded (/object_info)", f"{statistics.median(readies):.2f} s",
         ""),
        ("prompts/s, 1 client (submit, await success)", f"{one:.0f}", "~430 (ComfyUI)"),
        ("prompts/s, 10 clients (each as above)", f"{ten:.0f}", "~310 (ComfyUI)"),
        ("prompts accepted/s, 1 client, POSTs back to back", f"{post:.0f}",
         "575 before group commit and the worker process"),
        ("  ... and run/s, awaiting every execution_success", f"{piped:.0f}", ""),
        ("prompts accepted/s, 1 client, all POSTs in flight", f"{post_burst:.0f}", ""),
        ("  ... and run/s, awaiting every execution_success", f"{burst:.0f}", ""),
        ("trivial prompt in-process executor", f"{local * 1e6:.0f} µs", ""),
        ("trivial prompt through the worker process", f"{remote * 1e6:.0f} µs",
         f"boundary cost {(remote - local) * 1e6:.0f} µs/prompt"),
        ("event latency execution_start → executing, median",
         f"{statistics.median(lat) * 1000:.2f} ms", ""),
        ("event latency, p99", f"{lat[int(len(lat) * 0.99)] * 1000:.2f} ms", ""),
        (f"{args.chain}-node chain, plain client",
         f"{statistics.median(c[1] for c in chains):.2f} s", ""),
        ("  ... with feature flags (progress_state) ÷ plain",
         f"{statistics.median(c[0] for c in chains):.2f}x",
         "progress_state rebuilt per event: > 290 s for 10,000 nodes"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':{width}}  {'steerflow':>10}  reference")
    for name, value, ref in rows:
        print(f"{name:{width}}  {value:>10}  {ref}")
    print(f"(medians; start-up runs: first {[round(x, 2) for x in firsts]}, loaded "
          f"{[round(x, 2) for x in readies]}; prompts/s runs: 1 client {[round(x) for x in ones]}, "
          f"10 clients {[round(x) for x in tens]}, back to back {[round(x) for x in pipes]}, "
          f"in flight {[round(x) for x in bursts]})")


if __name__ == "__main__":
    main()
