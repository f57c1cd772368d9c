"""ComfyUI's official frontend on a server started with ``--token``.

The app cannot send the token; opening ``/?token=T`` once sets the session cookie
(:mod:`server.security`) and redirects to the app without the token, whose requests
and websocket then pass on the cookie alone: it registers our nodes from
``/object_info`` and builds its default graph (Z-Image Turbo's in 1.58.1), and its
websocket gets the server's ``status``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.e2e.conftest import REPO, _free_port, chromium_page, chromium_path

pytestmark = pytest.mark.slow

TOKEN = "e2e-s3cret-token"
ALLOWED_MISSING = ("/api/userdata/comfy.templates.json",)


def _call(url: str, body: Any = None) -> Any:
    req = urllib.request.Request(
        url, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        data = r.read()
    return json.loads(data) if data[:1] in (b"{", b"[") else data


def test_the_official_app_works_with_a_token_through_the_cookie(tmp_path) -> None:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="Python Playwright is not installed")
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        pytest.skip("pip install 'steerflow[comfyui-frontend]' (comfyui-frontend-package)")

    port = _free_port()
    origin = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "steerflow.cli", "--verbose", "serve", "--front-end", "comfyui",
             "--host", "127.0.0.1", "--port", str(port), "--base-dir", str(tmp_path / "base"),
             "--token", TOKEN],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if "CheckpointLoaderSimple" in _call(origin + "/object_info"):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        _call(origin + "/api/settings", {"Comfy.TutorialCompleted": True})

        failed: list[str] = []
        frames: list[str] = []

        def on_response(response: Any) -> None:
            path = response.url[len(origin):] if response.url.startswith(origin) else None
            if path is not None and response.status >= 400 \
                    and path.split("?")[0] not in ALLOWED_MISSING:
                failed.append(f"{response.status} {response.request.method} {path}")

        def on_websocket(ws: Any) -> None:
            ws.on("framereceived", lambda frame: frames.append(
                frame if isinstance(frame, str) else ""))

        with chromium_page() as page:
            page.on("response", on_response)
            page.on("websocket", on_websocket)
            page.goto(f"{origin}/?token={TOKEN}")
            assert TOKEN not in page.url  # redirected without it
            try:
                page.wait_for_function("() => window.app?.graph?._nodes?.length > 0",
                                       timeout=120_000)
            except Exception:
                raise AssertionError(f"no graph; failed requests {failed}") from None
            # the websocket's first status frame (it may come after the graph is drawn)
            deadline = time.monotonic() + 30
            while not any('"status"' in f for f in frames) and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            page.wait_for_timeout(1000)  # start-up requests still in flight
            types = set(page.evaluate("() => window.app.graph._nodes.map(n => n.type)"))
            assert "KSampler" in types and "CLIPTextEncode" in types, types
            registered = page.evaluate("""() => ['CheckpointLoaderSimple', 'KSampler'].map(
                t => t in window.LiteGraph.registered_node_types)""")
            assert registered == [True, True]  # our /object_info, read with the cookie
            assert not failed, f"requests failed: {failed}"
            assert any('"status"' in f for f in frames), frames[:3]  # the websocket
            cookies = page.context.cookies(origin)
            [cookie] = [c for c in cookies if c["name"] == f"steerflow_token_{port}"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert TOKEN not in cookie["value"]
        assert TOKEN not in log.read_text()  # not in the access log either
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
