"""The runtime: validates prompts here, runs them in the worker process.

Two things happen off the event loop:

- A loader thread imports the node packs for validation and ``/object_info``
  (light: packs import torch and diffusers only when a node runs).
- The dispatcher thread takes prompts from the queue one at a time, hands each
  to the worker process (:mod:`server.worker`), relays its events to the
  websocket hub as they come, and records the history entry.

Executor events are relayed as they happen, except the terminal ones
(``execution_success``/``error``/``interrupted`` and the final ``executing``
with node None): those are held until the history entry is committed, so a
client that reacts to them by fetching ``/history/{id}`` always finds it.

Interrupts are cooperative first; a prompt that has not stopped
``interrupt_grace`` seconds later has its worker killed (and restarted), and
is recorded as interrupted, never run again. A worker that dies on its own
mid-prompt fails that prompt with the cause; a kill -9 of the whole server
is handled by the queue's attempts rule at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from server.config import ServerConfig
from server.errors import ApiError
from server.prompt_queue import PromptQueue, QueueItem
from server.worker import Message, WorkerDied, WorkerProcess
from server.ws import Hub, message, preview_frame

log = logging.getLogger(__name__)

TERMINAL = frozenset({"execution_success", "execution_error", "execution_interrupted"})
RECORDED = TERMINAL | {"execution_start", "execution_cached"}
# An ExecutionBlocker's message: an execution_error (ComfyUI's form) that ends nothing
# and, as in ComfyUI, stays out of the history (engine.lists.EXECUTION_BLOCKED)
BLOCKED = "ExecutionBlocked"
PRUNE_EVERY = 100
POLL = 0.25  # seconds between checks for interrupt deadlines and shutdown
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def registry_factory_for(config: ServerConfig) -> Callable[[], Any]:
    """The node registry the server validates against: the worker's, same packs."""

    def make() -> Any:
        from engine.registry import load_registry

        return load_registry(config.registry_factory, config.custom_nodes)

    return make


class Validator:
    """Validates prompts against the server's registry and folders (nothing runs)."""

    def __init__(self, registry: Any, env: Any):
        self.registry = registry
        self.env = env

    def validate(self, prompt: Any, outputs: list[str] | None = None) -> Any:
        from engine.validation import validate_prompt

        return validate_prompt(prompt, self.registry, self.env, outputs=outputs)


class _Running:
    """The prompt the worker is running, and what the dispatcher knows of it."""

    def __init__(self, item: QueueItem):
        self.item = item
        self.node: str | None = None
        self.started: list[str] = []
        self.hard_deadline: float | None = None  # monotonic time of the hard interrupt


class Runtime:
    """Owns the validation registry, the worker process and the dispatcher thread."""

    def __init__(self, config: ServerConfig, queue: PromptQueue, hub: Hub, env: Any,
                 registry_factory: Callable[[], Any] | None = None):
        self.config = config
        self.queue = queue
        self.hub = hub
        self.env = env
        self.registry_factory = registry_factory or registry_factory_for(config)
        self.registry: Any = None
        self.load_error: str | None = None
        self.worker: WorkerProcess | None = None
        self.worker_error: str | None = None
        self.worker_info: dict[str, Any] = {}
        self.worker_starts = 0
        self._registry_ready: asyncio.Event | None = None
        self._setup_done: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._finished = 0
        self._lock = threading.Lock()
        self._running: _Running | None = None
        hub.on_connect = self._replay

    # --- lifecycle (event loop) ------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._registry_ready = asyncio.Event()
        self._setup_done = asyncio.Event()
        for item in self.queue.recover():
            self._record_failure(item, f"the server stopped {item.attempts} time(s) while "
                                 "running this prompt; giving up on it", "ServerRestart")
        self.queue.storage.prune_history(self.config.max_history)
        threading.Thread(target=self._load_registry, name="steerflow-packs",
                         daemon=True).start()
        self._thread = threading.Thread(target=self._dispatch, name="steerflow-dispatch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop taking prompts; the running one is interrupted and goes back in the queue."""
        self._stopping = True
        self.queue.close()
        self.interrupt()
        if self._thread is not None:
            self._thread.join(self.config.interrupt_grace + 5.0)
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop()

    async def get_registry(self, timeout: float = 300.0) -> Any:
        """The node registry, once packs loaded and the worker's first set-up (installing
        the built-in models, so that model lists are complete) is done; 503 if the packs
        failed to load. The set-up is a few file checks on an installed folder."""
        await self._wait(self._registry_ready, timeout, "loading node packs")
        if self.registry is None:
            raise ApiError(503, "nodes_unavailable", "node packs failed to load: "
                           f"{self.load_error or 'not started'}")
        await self._wait(self._setup_done, timeout, "installing the built-in models")
        return self.registry

    async def get_validator(self, timeout: float = 300.0) -> Validator:
        """A validator against the server's registry and folders."""
        return Validator(await self.get_registry(timeout), self.env)

    async def _wait(self, event: asyncio.Event | None, timeout: float, what: str) -> None:
        if event is None or event.is_set():
            return
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            raise ApiError(503, "starting", f"the server is still {what}; try again "
                           "shortly") from None

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (any, or only ``prompt_id``); True if one was."""
        with self._lock:
            running = self._running
            if running is None or (prompt_id is not None
                                   and running.item.prompt_id != prompt_id):
                return False
            if running.hard_deadline is None:
                running.hard_deadline = time.monotonic() + self.config.interrupt_grace
            worker = self.worker
        if worker is not None:
            worker.send({"op": "interrupt", "prompt_id": running.item.prompt_id})
        return True

    @property
    def device(self) -> str:
        return str(self.worker_info.get("device") or self.config.device or "pending")

    # --- threads -----------------------------------------------------------------
    def _load_registry(self) -> None:
        try:
            self.registry = self.registry_factory()
            for err in getattr(self.registry, "errors", []):
                log.warning("node pack %s failed to load: %s", err.pack, err.message)
        except BaseException as exc:
            log.exception("failed to load node packs")
            self.load_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._set(self._registry_ready)

    def _set(self, event: asyncio.Event | None) -> None:
        if event is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(event.set)

    def _dispatch(self) -> None:
        self._ensure_worker()  # set-up (models, packs) happens while nothing is queued
        while not self._stopping:
            try:
                item = self.queue.take()
            except Exception:  # e.g. the disk is full: keep the prompt, retry later
                log.exception("cannot take a prompt from the queue; retrying")
                time.sleep(1.0)
                continue
            if item is None:
                return
            try:
                self._process(item)
            except BaseException as exc:  # the dispatcher must outlive any one prompt
                log.exception("prompt %s could not be processed", item.prompt_id)
                self._record_failure(item, f"internal error: {type(exc).__name__}: {exc}",
                                     type(exc).__name__)
            finally:
                with self._lock:
                    self._running = None

    def _ensure_worker(self) -> WorkerProcess | None:
        """The live worker, started (and waited for) when there is none."""
        if self.worker is not None and self.worker.alive():
            return self.worker
        if self.worker is not None:
            self.worker.kill()
            self.worker = None
        for delay in (*RESTART_BACKOFF, None):
            if self._stopping:
                return None
            try:
                worker = self._start_worker()
                self.worker_error = None
                return worker
            except WorkerDied as exc:
                if self._stopping:
                    return None
                self.worker_error = exc.cause
                log.error("the worker process could not start: %s", exc.cause)
                self._set(self._setup_done)  # validation goes on; prompts fail with the cause
            if delay is None or self.queue.remaining():
                return None  # the prompt fails with the cause; the next one tries again
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self._stopping \
                    and not self.queue.remaining():
                time.sleep(POLL)
        return None

    def worker_config(self) -> dict[str, Any]:
        """The ``config`` message every worker gets first."""
        cfg = self.config
        return {
            "base_dir": str(cfg.base_dir), "models_dir": _str(cfg.models_dir),
            "device": cfg.device, "allow_pickle": cfg.allow_pickle,
            "custom_nodes": _str(cfg.custom_nodes), "registry_factory": cfg.registry_factory,
            "cache_budget": cfg.cache_budget, "cache_max_entries": cfg.cache_max_entries,
            "dtype": cfg.dtype, "verbose": cfg.verbose}

    def _start_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.worker_config(), module=self.config.worker_module)
        self.worker_starts += 1
        self.worker = self._wait_ready(worker)
        return worker

    def _wait_ready(self, worker: Any, info: dict[str, Any] | None = None) -> Any:
        """Wait for a started worker's ``ready`` (killing it on failure); returns it.
        What it reports goes into ``info`` (default: :attr:`worker_info`)."""
        cfg = self.config
        deadline = time.monotonic() + cfg.worker_start_timeout
        try:
            while True:
                if self._stopping:
                    raise WorkerDied("the server is stopping")
                if time.monotonic() > deadline:
                    raise WorkerDied(f"the worker did not start within "
                                     f"{cfg.worker_start_timeout:.0f} s")
                msg = worker.recv(POLL)
                if msg is None:
                    continue
                if msg.op == "setup":
                    self._set(self._setup_done)
                elif msg.op == "ready":
                    (self.worker_info if info is None else info).update(msg.data)
                    self._set(self._setup_done)
                    return worker
                elif msg.op == "failed":
                    raise WorkerDied(f"the worker could not load the node packs: "
                                     f"{msg.data.get('error')}")
        except BaseException:
            worker.kill()
            raise

    # --- one prompt (dispatcher thread) -------------------------------------------
    def _process(self, item: QueueItem) -> None:
        worker = self._ensure_worker()
        if worker is None:
            if self._stopping:
                self.queue.requeue(item)
                return
            self._record_failure(item, f"the worker process is unavailable: "
                                 f"{self.worker_error}", "WorkerUnavailable")
            return
        running = _Running(item)
        with self._lock:
            self._running = running
        extra = {**item.extra_data, "preview": self.hub.has_clients}
        worker.send({"op": "run", "prompt_id": item.prompt_id, "prompt": item.prompt,
                     "extra": extra, "outputs": item.outputs})
        messages: list[list[Any]] = []
        held: list[str] = []
        while True:
            try:
                msg = worker.recv(self._wait_time(running))
            except WorkerDied as exc:
                self.worker = None
                if self._stopping:
                    self.queue.requeue(item)
                elif running.hard_deadline is not None:
                    self._record_interrupted(running, messages)
                else:
                    log.error("worker died running prompt %s: %s", item.prompt_id, exc.cause)
                    self._record_failure(item, f"{exc.cause} while running this prompt",
                                         "WorkerDied", messages=messages, node=running.node)
                return
            if msg is None:
                if running.hard_deadline is not None and \
                        time.monotonic() >= running.hard_deadline:
                    self._kill_worker()
                    if self._stopping:
                        self.queue.requeue(item)
                    else:
                        self._record_interrupted(running, messages)
                    return
                continue
            if msg.op == "done":
                self._relay(running, msg, messages, held)  # its last events first
                self._finish(running, msg, messages, held)
                return
            self._relay(running, msg, messages, held)

    def _wait_time(self, running: _Running) -> float:
        if running.hard_deadline is None:
            return POLL
        return max(0.0, min(POLL, running.hard_deadline - time.monotonic()))

    def _relay(self, running: _Running, msg: Message, messages: list[list[Any]],
               held: list[str]) -> None:
        sid = running.item.client_id
        if msg.preview is not None:
            if self.hub.has_clients:
                self.hub.post(sid, preview_frame(msg.preview, msg.image_type))
            return
        events = msg.data.get("events")
        for event in events if isinstance(events, list) else ():
            if isinstance(event, list) and len(event) == 2 and isinstance(event[1], dict):
                self._relay_event(running, str(event[0]), event[1], messages, held)

    def _relay_event(self, running: _Running, name: str, data: dict[str, Any],
                     messages: list[list[Any]], held: list[str]) -> None:
        sid = running.item.client_id
        if name == "execution_error" and data.get("exception_type") == BLOCKED:
            self.hub.post(sid, message(name, data))  # a blocked node, not the end: as it comes
            return
        if name in RECORDED:
            messages.append([name, data])
        if name == "executing":
            node = data.get("node")
            if node is not None:  # the last node that started: a crash is blamed on it
                running.started.append(str(node))
                running.node = str(node)
        text = message(name, data)
        if name in TERMINAL or (name == "executing" and data.get("node") is None):
            held.append(text)
        else:
            self.hub.post(sid, text)

    def _finish(self, running: _Running, msg: Message, messages: list[list[Any]],
                held: list[str]) -> None:
        item = running.item
        data = msg.data
        self.worker_info.update({k: data[k] for k in ("cache_entries", "cache_bytes",
                                                      "vram_free", "vram_total", "models")
                                 if k in data})
        status = data.get("status")
        if status == "invalid":  # recovered after a restart: the packs or models changed
            self._record_failure(item, "the prompt is no longer valid:\n" + str(data.get("error")),
                                 "PromptValidationError", node_errors=data.get("node_errors"))
            return
        if status == "interrupted" and self._stopping:
            self.queue.requeue(item)  # shut down mid-run: run it again next time
            return
        outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}
        self.queue.finish(item, history_entry(item, outputs, status == "success", messages))
        self._clear_running()  # before the client hears of the end: /interrupt is now False
        for text in held:
            self.hub.post(item.client_id, text)
        self._after_finish()

    def _kill_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            log.warning("prompt did not stop within %.1f s of its interrupt; killing worker "
                        "%d", self.config.interrupt_grace, worker.pid)
            worker.kill()

    def _record_interrupted(self, running: _Running, messages: list[list[Any]]) -> None:
        """A hard interrupt: the worker was killed; the prompt ends here, not re-run."""
        item = running.item
        node = running.node
        payload = {"prompt_id": item.prompt_id, "node_id": node,
                   "node_type": _class_type(item, node),
                   "executed": [n for n in running.started if n != node],
                   "timestamp": _now_ms()}
        self._end(item, messages, "execution_interrupted", payload)

    def _record_failure(self, item: QueueItem, text: str, exc_type: str, *,
                        node_errors: dict[str, Any] | None = None,
                        messages: list[list[Any]] | None = None,
                        node: str | None = None) -> None:
        """Record a prompt that could not run, and tell its client, never silently."""
        payload = {"prompt_id": item.prompt_id, "node_id": node,
                   "node_type": _class_type(item, node), "executed": [],
                   "exception_message": text, "exception_type": exc_type, "traceback": [],
                   "current_inputs": {}, "current_outputs": {}, "timestamp": _now_ms()}
        if node_errors:
            payload["node_errors"] = node_errors
        self._end(item, [*(messages or [])], "execution_error", payload)

    def _end(self, item: QueueItem, messages: list[list[Any]], event: str,
             payload: dict[str, Any]) -> None:
        """Record an unsuccessful end in the history, then tell the client, in that order."""
        messages.append([event, payload])
        try:
            self.queue.finish(item, history_entry(item, {}, False, messages))
        except Exception:
            log.error("cannot record the end of prompt %s:\n%s", item.prompt_id,
                      traceback.format_exc())
        self._clear_running()
        self.hub.post_event(item.client_id, event, payload)
        self.hub.post_event(item.client_id, "executing",
                            {"node": None, "display_node": None, "prompt_id": item.prompt_id})
        self._after_finish()

    def _clear_running(self) -> None:
        with self._lock:
            self._running = None

    def _after_finish(self) -> None:
        self._finished += 1
        if self._finished % PRUNE_EVERY == 0:
            self.queue.storage.prune_history(self.config.max_history)

    def _replay(self, sid: str) -> list[str]:
        running = self._running
        if running is None or running.item.client_id != sid or running.node is None:
            return []
        return [message("executing", {"node": running.node, "display_node": running.node,
                                      "prompt_id": running.item.prompt_id})]


def history_entry(item: QueueItem, outputs: dict[str, Any], ok: bool,
                  messages: list[list[Any]]) -> dict[str, Any]:
    """ComfyUI's history entry for one prompt."""
    return {
        "prompt": item.as_list(),
        "outputs": outputs,
        "status": {"status_str": "success" if ok else "error", "completed": ok,
                   "messages": messages},
        "meta": {nid: {"node_id": nid, "display_node": nid, "parent_node": None,
                       "real_node_id": nid} for nid in outputs},
    }


def _class_type(item: QueueItem, node: str | None) -> str | None:
    entry = item.prompt.get(node) if node is not None else None
    return entry.get("class_type") if isinstance(entry, dict) else None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)
