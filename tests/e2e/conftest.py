"""End-to-end fixtures: a real Steerflow server on loopback and Debian's chromium.

The tests skip (with the reason) only when chromium, the Python Playwright
driver or the built canvas (web/dist) is missing; `make test` installs all three.
Playwright never downloads a browser here: it drives the system chromium through
``executable_path``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
WEB_DIST = REPO / "web" / "dist"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
VIEWPORT = {"width": 1600, "height": 1000}


_playwright: Any = None
_browsers: dict[tuple[str, ...], Any] = {}


def shared_browser(args: tuple[str, ...] = tuple(CHROMIUM_ARGS)) -> Any:
    """This module's chromium (Debian's, never a downloaded one) launched with ``args``,
    started once: each test takes a fresh context of it (its own storage, like a new profile),
    which costs a fraction of a browser start. One Playwright serves the module (the sync
    API allows no second one while it runs)."""
    global _playwright
    browser = _browsers.get(args)
    if browser is not None and browser.is_connected():
        return browser
    if _playwright is None:
        from playwright.sync_api import sync_playwright

        _playwright = sync_playwright().start()
    browser = _playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=list(args))
    _browsers[args] = browser
    return browser


@pytest.fixture(scope="module", autouse=True)
def _stop_shared_browser() -> Iterator[None]:
    """Playwright's sync API keeps an event loop running in this thread while it is started:
    it is stopped after each module, so later (non-browser) tests in this process can run
    their own loops (``asyncio.run``)."""
    yield
    global _playwright
    for browser in _browsers.values():
        with contextlib.suppress(Exception):
            browser.close()
    _browsers.clear()
    if _playwright is not None:
        with contextlib.suppress(Exception):
            _playwright.stop()
        _playwright = None


@contextlib.contextmanager
def fresh_context(args: tuple[str, ...] = tuple(CHROMIUM_ARGS), timeout_ms: int = 30_000,
                  **options: Any) -> Iterator[Any]:
    """A new browser context (no cookies, storage or cache of any test before) of the shared
    chromium, closed afterwards."""
    ctx = shared_browser(args).new_context(viewport=VIEWPORT, **options)
    ctx.set_default_timeout(timeout_ms)
    try:
        yield ctx
    finally:
        with contextlib.suppress(Exception):
            ctx.close()


@contextlib.contextmanager
def chromium_page(timeout_ms: int = 60_000) -> Iterator[Any]:
    """A page of a fresh context of headless chromium, closed afterwards."""
    with fresh_context(timeout_ms=timeout_ms) as ctx:
        yield ctx.new_page()


def chromium_path() -> str | None:
    explicit = os.environ.get("STEERFLOW_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _requirements() -> str:
    if chromium_path() is None:
        pytest.skip("chromium is not installed "
                    "(apt-get install chromium, or set STEERFLOW_CHROMIUM)")
    if not (WEB_DIST / "index.html").is_file():
        pytest.skip("the web canvas is not built (cd web && npm ci && npm run build)")
    pytest.importorskip("playwright.sync_api", reason="Python Playwright is not installed")
    return chromium_path()  # type: ignore[return-value]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    base_dir: Path
    log: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            data = r.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.read()

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def wait_history(self, prompt_id: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and (entry.get("status") or {}).get("completed") is not None:
                return entry
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")

    def stop_all(self, timeout: float = 60) -> None:
        """Empty the queue and interrupt what runs, then wait until nothing is queued or
        running and each prompt that ran is in the history: the next test starts on an idle
        server (an interrupt ends a run at its next step, and its history entry is written
        after it leaves the queue: a test that reads the history or the queue would
        otherwise see the previous test's prompt)."""
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while True:
            q = self.get("/queue")
            running = [item[1] for item in q["queue_running"]]
            seen.update(running)
            if not running and not q["queue_pending"]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the queue did not empty in {timeout}s: {q}")
            if q["queue_pending"]:
                self.post("/queue", {"clear": True})
            for prompt_id in running:  # again each time: a pending one may have started
                self.post("/interrupt", {"prompt_id": prompt_id})
            time.sleep(0.2)
        for prompt_id in seen:  # (a test may have deleted it: then it never comes)
            with contextlib.suppress(TimeoutError):
                self.wait_history(prompt_id, max(1.0, min(15.0, deadline - time.monotonic())))

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def chromium() -> str:
    return _requirements()


@pytest.fixture(scope="session")
def server(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`steerflow serve` in a subprocess, with the tiny checkpoint in its models folder."""
    from nodes.diffusion.tiny import save_tiny_model

    base = tmp_path_factory.mktemp("steerflow-e2e")
    save_tiny_model(base / "models" / "checkpoints")
    port = _free_port()
    log = base / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "steerflow.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--base-dir", str(base)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    live = LiveServer(f"http://127.0.0.1:{port}", base, log)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}):\n{live.log_tail()}")
            try:
                info = live.get("/object_info")
                if "KSampler" in info:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer in time:\n{live.log_tail()}")
            time.sleep(0.3)
        yield live
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def browser_context(chromium: str) -> Iterator[Any]:
    """A fresh browser context (own storage, as a new profile) per test."""
    with fresh_context(accept_downloads=True) as ctx:
        yield ctx


@pytest.fixture
def page(browser_context: Any, server: LiveServer) -> Iterator[Any]:
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    server.stop_all()  # nothing of an earlier test runs on (its events, its history entry)
    page.goto(server.url + "/")
    page.wait_for_selector(".sf-toolbar")
    page.wait_for_selector(".sf-dot.on")  # websocket connected
    # A first visit opens the default txt2img graph; these tests start from a clean canvas.
    page.wait_for_function("() => document.querySelectorAll('.react-flow__node').length > 0")
    page.locator(".sf-toolbar").get_by_role("button", name="Clear", exact=True).click()
    # Clear asks first when the graph is not empty (as ComfyUI's Clear)
    page.get_by_role("alertdialog", name="Clear the workflow?").get_by_role(
        "button", name="Clear", exact=True).click()
    page.wait_for_function("() => document.querySelectorAll('.react-flow__node').length === 0")
    yield page
    assert not errors, f"uncaught errors in the page: {errors}"
