"""Canvas benchmark: frame times while panning a 300-node graph, and the bundle's size.

    .venv/bin/python bench/bench_canvas.py [--nodes 300] [--seconds 4] [--url URL]

Starts `steerflow serve` on a free loopback port (unless --url is given), opens
the built canvas (web/dist) in Debian's chromium (headless, through Playwright
with ``executable_path``), loads a generated graph of real node types, and drags
the empty canvas back and forth with the mouse while the page records
requestAnimationFrame deltas. It measures, side by side in one run, every node
mounted (``?visibleOnly=0``) vs the default, React Flow's
``onlyRenderVisibleElements``, at zoom 1 and zoomed out to show the whole graph
(where the canvas switches to low detail: widgets are not painted). Timings are for this machine and
this moment; compare the ratios, not the absolute numbers.

Besides the frame times (which a busy machine stretches), it reports the CPU time all of
chromium's processes spent per frame (main thread, raster and compositor threads): the
work a pan costs, much less sensitive to other load. ``--baseline-dist DIR`` serves an
older build of the canvas (a copy of web/dist) from a second server and measures it in the
same run, interleaved with the current one: before/after side by side.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIST = REPO / "web" / "dist"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
# One txt2img chain: (type, inputs with links as (offset_in_chain, slot)).
CHAIN = [
    ("CheckpointLoaderSimple", {"ckpt_name": "steerflow-tiny"}),
    ("CLIPTextEncode", {"text": "a red cube", "clip": (0, 1)}),
    ("CLIPTextEncode", {"text": "", "clip": (0, 1)}),
    ("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 1}),
    ("KSampler", {"model": (0, 0), "seed": 1, "steps": 2, "cfg": 7.5, "sampler_name": "euler",
                  "scheduler": "normal", "positive": (1, 0), "negative": (2, 0),
                  "latent_image": (3, 0), "denoise": 1.0}),
    ("VAEDecode", {"samples": (4, 0), "vae": (0, 2)}),
    ("SaveImage", {"images": (5, 0), "filename_prefix": "bench"}),
]
COLUMNS = [0, 1, 1, 1, 2, 3, 4]
ROWS = [0, 0, 1, 2, 0, 1, 1]

COUNT_NODES = "document.querySelectorAll('.react-flow__node').length"
FRAME_PROBE = """
() => {
  window.__frames = [];
  window.__recording = true;
  let last = performance.now();
  const tick = (t) => {
    if (!window.__recording) return;
    window.__frames.push(t - last);
    last = t;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame((t) => { last = t; requestAnimationFrame(tick); });
}
"""


def make_document(n_nodes: int) -> dict:
    prompt: dict[str, dict] = {}
    layout: dict[str, dict] = {}
    chains = -(-n_nodes // len(CHAIN))
    per_row = max(1, int(chains ** 0.5))
    next_id = 1
    for c in range(chains):
        ids = []
        ox, oy = (c % per_row) * 5 * 300, (c // per_row) * 3 * 280
        for k, (type_, inputs) in enumerate(CHAIN):
            if next_id > n_nodes:
                break
            nid = str(next_id)
            next_id += 1
            ids.append(nid)
            resolved = {}
            for name, value in inputs.items():
                if isinstance(value, tuple):
                    if value[0] < len(ids) - 1:
                        resolved[name] = [ids[value[0]], value[1]]
                else:
                    resolved[name] = value
            prompt[nid] = {"class_type": type_, "inputs": resolved}
            layout[nid] = {"pos": [ox + COLUMNS[k] * 300, oy + ROWS[k] * 280]}
    return {"format": "steerflow.workflow", "version": 1, "prompt": prompt,
            "layout": {"nodes": layout, "groups": []}, "extra": {}}


def bundle_sizes() -> list[tuple[str, int, int]]:
    rows = []
    for path in sorted((DIST / "assets").glob("*")):
        if path.suffix in (".js", ".css"):
            data = path.read_bytes()
            rows.append((path.name, len(data), len(gzip.compress(data, 9))))
    return rows


def chromium_path() -> str:
    explicit = os.environ.get("STEERFLOW_CHROMIUM")
    for candidate in (explicit, "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    sys.exit("chromium not found: apt-get install chromium (or set STEERFLOW_CHROMIUM)")


# A server whose canvas is another build (web_dir), for --baseline-dist.
SERVE_DIST = """
import sys
from pathlib import Path
from aiohttp import web
from server.app import create_app
from server.config import ServerConfig
port, base, dist = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
config = ServerConfig(host="127.0.0.1", port=port, base_dir=base, web_dir=dist)
web.run_app(create_app(config), host="127.0.0.1", port=port, print=None)
"""


def start_server(base: Path, dist: Path | None = None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base.mkdir(parents=True, exist_ok=True)
    log = (base / "server.log").open("wb")
    cmd = ([sys.executable, "-c", SERVE_DIST, str(port), str(base), str(dist)] if dist else
           [sys.executable, "-m", "steerflow.cli", "serve", "--port", str(port),
            "--base-dir", str(base)])
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited: {(base / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/object_info", timeout=5) as r:
                if b"KSampler" in r.read():
                    return proc, url
        except OSError:
            pass
        time.sleep(0.3)
    proc.terminate()
    sys.exit("server did not start")


def empty_point(page) -> tuple[float, float]:
    """A point of the pane with no node under it (where a drag pans)."""
    return page.evaluate("""() => {
        const r = document.querySelector('.react-flow__pane').getBoundingClientRect();
        for (let y = r.top + 10; y < r.bottom - 10; y += 7)
          for (let x = r.left + 60; x < r.right - 10; x += 7) {
            const el = document.elementFromPoint(x, y);
            if (el && el.classList.contains('react-flow__pane')) return [x, y];
          }
        return [r.left + 5, r.top + 5];
    }""")


def chromium_cpu() -> float | None:
    """CPU seconds (user + system) of every chromium process this run started, or None
    without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" in child.name():
                times = child.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass  # a process that just ended
    return total


def measure(page, seconds: float) -> dict[str, float]:
    x, y = empty_point(page)
    page.mouse.move(x, y)
    page.mouse.down()
    cpu0 = chromium_cpu()
    page.evaluate(FRAME_PROBE)
    end = time.monotonic() + seconds
    step = 0
    while time.monotonic() < end:
        # a slow back-and-forth sweep, ~ one mouse event per frame
        phase = (step % 120) / 120
        dx = 300 * (phase * 2 if phase < 0.5 else 2 - phase * 2)
        page.mouse.move(x + dx, y + dx / 3)
        step += 1
    frames = page.evaluate("() => { window.__recording = false; return window.__frames; }")
    cpu1 = chromium_cpu()
    page.mouse.up()
    frames = [f for f in frames[2:] if f > 0]
    frames.sort()
    pick = lambda q: frames[min(len(frames) - 1, int(q * len(frames)))]  # noqa: E731
    cpu = (cpu1 - cpu0) * 1000 / len(frames) if cpu0 is not None and cpu1 is not None else -1.0
    return {"frames": len(frames), "mean": statistics.fmean(frames), "p50": pick(0.5),
            "p95": pick(0.95), "p99": pick(0.99), "max": frames[-1],
            "fps": 1000 / statistics.fmean(frames), "cpu": cpu}


def run_page(p, profile: Path, url: str, doc: dict, n_nodes: int, seconds: float,
             results: dict[tuple[str, str, str], dict[str, float]], build: str, mode: str) -> None:
    ctx = p.chromium.launch_persistent_context(
        str(profile), executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1600, "height": 1000})
    try:
        page = ctx.new_page()
        page.goto(url)
        page.wait_for_function("() => window.steerflow && window.steerflow.ready")
        page.evaluate("doc => window.steerflow.loadDocument(doc)", doc)
        page.wait_for_function(f"() => {COUNT_NODES} >= {min(n_nodes, 20)}")
        page.wait_for_timeout(1500)
        count = page.evaluate("() => window.steerflow.getDocument()")["prompt"]
        assert len(count) == n_nodes, len(count)
        for zoom_name, zoom in (("zoom 1", 1.0), ("whole graph", None)):
            if zoom is None:
                page.evaluate("() => window.steerflow.fitView()")
            else:
                page.evaluate("z => window.steerflow.setViewport({x: 0, y: 0, zoom: z})", zoom)
            page.wait_for_timeout(800)
            mounted = page.evaluate(f"() => {COUNT_NODES}")
            r = measure(page, seconds)
            r["mounted"] = mounted
            results[(build, mode, zoom_name)] = r
    finally:
        ctx.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--baseline-dist", type=Path,
                    help="an older build of the canvas (a copy of web/dist), measured side by side")
    args = ap.parse_args()
    if not (DIST / "index.html").is_file():
        sys.exit("web/dist is not built: cd web && npm ci && npm run build")
    if args.baseline_dist and not (args.baseline_dist / "index.html").is_file():
        sys.exit(f"{args.baseline_dist} holds no built canvas (index.html)")

    print("bundle (web/dist/assets):")
    total_raw = total_gz = 0
    for name, raw, gz in bundle_sizes():
        total_raw += raw
        total_gz += gz
        print(f"  {name:32s} {raw / 1024:8.1f} KiB raw {gz / 1024:8.1f} KiB gzip")
    print(f"  {'total':32s} {total_raw / 1024:8.1f} KiB raw {total_gz / 1024:8.1f} KiB gzip")

    from playwright.sync_api import sync_playwright

    doc = make_document(args.nodes)
    tmp = Path(tempfile.mkdtemp(prefix="sf-bench-"))
    servers: list[subprocess.Popen] = []
    builds: list[tuple[str, str]] = []
    results: dict[tuple[str, str, str], dict[str, float]] = {}
    try:
        if args.url:
            builds.append(("current", args.url))
        else:
            proc, url = start_server(tmp / "current")
            servers.append(proc)
            builds.append(("current", url))
        if args.baseline_dist:
            proc, url = start_server(tmp / "baseline", args.baseline_dist.resolve())
            servers.append(proc)
            builds.insert(0, ("baseline", url))
        with sync_playwright() as p:
            # interleaved: each mode measures every build back to back
            for mode, query in (("all nodes", "?visibleOnly=0"), ("visible only", "")):
                for build, url in builds:
                    run_page(p, tmp / f"profile-{len(results)}", url + "/" + query, doc,
                             args.nodes, args.seconds, results, build, mode)
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\npanning a {args.nodes}-node graph ({args.seconds:.0f} s each, headless chromium, "
          "requestAnimationFrame deltas in ms; cpu: chromium's CPU ms per frame):")
    print(f"  {'build':9s} {'mode':14s} {'view':12s} {'nodes in DOM':>12s} {'frames':>7s} "
          f"{'mean':>7s} {'p50':>7s} {'p95':>7s} {'p99':>7s} {'max':>7s} {'fps':>6s} {'cpu':>6s}")
    for (build, mode, view), r in results.items():
        print(f"  {build:9s} {mode:14s} {view:12s} {r['mounted']:12d} {r['frames']:7d} "
              f"{r['mean']:7.1f} {r['p50']:7.1f} {r['p95']:7.1f} {r['p99']:7.1f} {r['max']:7.1f} "
              f"{r['fps']:6.1f} {r['cpu']:6.1f}")
    for view in ("zoom 1", "whole graph"):
        a = results.get(("current", "all nodes", view))
        b = results.get(("current", "visible only", view))
        if a and b:
            print(f"  ratio mean frame time, all / visible-only ({view}): "
                  f"{a['mean'] / b['mean']:.2f}")
        if args.baseline_dist:
            for mode in ("all nodes", "visible only"):
                old = results.get(("baseline", mode, view))
                new = results.get(("current", mode, view))
                if old and new and old["cpu"] > 0 and new["cpu"] > 0:
                    print(f"  baseline / current ({mode}, {view}): frame time "
                          f"{old['mean'] / new['mean']:.2f}, "
                          f"cpu per frame {old['cpu'] / new['cpu']:.2f}")
    print(json.dumps({"bundle_raw": total_raw, "bundle_gzip": total_gz,
                      "frames": {f"{b}|{m}|{v}": r for (b, m, v), r in results.items()}}))


if __name__ == "__main__":
    main()
