"""Server benchmarks against a real ``steerflow serve`` subprocess (default node packs).

(a) start-up: process start → first answered request, and → node packs loaded
    (first /object_info answer; prompts can be validated from then on)
(b) throughput of a trivial workflow (Int → Int Math → Show Value, a new value
    each time so nothing is cached): each client submits a prompt through
    /prompt (persisted before the reply) and waits for its execution_success on
    its websocket before the next; 1 client and 10 concurrent clients. Also a
    pipelined variant: one client submits everything, then waits for all.
(c) event latency: the server's execution_start timestamp → the client
    receiving the first ``executing`` of that prompt (same clock, same machine)

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
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--port", str(port), "--base-dir",
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
                     pipelined: bool = False) -> tuple[float, list[float]]:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        cs = [Client(http, url) for _ in range(clients)]
        for c in cs:
            await c.__aenter__()
        t0 = time.perf_counter()
        if pipelined:
            futs = [await cs[0].submit(offset + i) for i in range(per_client)]
            await asyncio.gather(*futs)
        else:
            await asyncio.gather(*(c.sequential(per_client, offset + k * per_client)
                                   for k, c in enumerate(cs)))
        elapsed = time.perf_counter() - t0
        for c in cs:
            await c.__aexit__()
    return clients * per_client / elapsed, [x for c in cs for x in c.latencies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=2000, help="per measurement")
    parser.add_argument("--startups", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs (median)")
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
        ones, tens, pipes, lat = [], [], [], []
        try:
            asyncio.run(throughput(url, 1, 200, 10**6))  # warm-up
            for r in range(args.repeats):  # interleaved: the machine is shared and noisy
                base = (r + 1) * 10**7
                rate, lat1 = asyncio.run(throughput(url, 1, args.prompts, base))
                ones.append(rate)
                rate, lat10 = asyncio.run(throughput(url, 10, args.prompts // 10, base + 10**6))
                tens.append(rate)
                rate, _ = asyncio.run(throughput(url, 1, args.prompts, base + 2 * 10**6,
                                                 pipelined=True))
                pipes.append(rate)
                lat += lat1 + lat10
        finally:
            proc.terminate()
            proc.wait()
    lat.sort()
    one, ten, piped = (statistics.median(x) for x in (ones, tens, pipes))
    rows = [
        ("start-up: process start → first answered request", f"{statistics.median(firsts):.2f} s",
         "6.5 s (ComfyUI, nodes loaded)"),
        ("start-up: → node packs loaded (/object_info)", f"{statistics.median(readies):.2f} s",
         ""),
        ("prompts/s, 1 client (submit, await success)", f"{one:.0f}", "~430 (ComfyUI)"),
        ("prompts/s, 10 clients (each as above)", f"{ten:.0f}", "~310 (ComfyUI)"),
        ("prompts/s, 1 client pipelined (submit all)", f"{piped:.0f}", ""),
        ("event latency execution_start → executing, median",
         f"{statistics.median(lat) * 1000:.2f} ms", ""),
        ("event latency, p99", f"{lat[int(len(lat) * 0.99)] * 1000:.2f} ms", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':{width}}  {'steerflow':>10}  reference")
    for name, value, ref in rows:
        print(f"{name:{width}}  {value:>10}  {ref}")
    print(f"(medians; start-up runs: first {[round(x, 2) for x in firsts]}, loaded "
          f"{[round(x, 2) for x in readies]}; prompts/s runs: 1 client {[round(x) for x in ones]}, "
          f"10 clients {[round(x) for x in tens]}, pipelined {[round(x) for x in pipes]})")


if __name__ == "__main__":
    main()
