"""The runtime's shared half: validation here, events and history of the prompts the
workers run.

:class:`Runtime` owns what does not depend on how prompts reach the workers: the node
registry (imported by a loader thread, for validation and ``/object_info``; light:
packs import torch and diffusers only when a node runs), the :class:`Validator`,
relaying a worker's events to the websocket hub as they come, and recording each
prompt's end in the history. The one run loop is the worker pool's
(:class:`server.pool.PoolRuntime`, a pool of one worker by default).

Executor events are relayed as they happen, except the terminal ones
(``execution_success``/``error``/``interrupted`` and the final ``executing`` with node
None): those are held until the history entry is committed, so a client that reacts
to them by fetching ``/history/{id}`` always finds it.

Interrupts are cooperative first; a prompt that has not stopped ``interrupt_grace``
seconds later (:attr:`Running.hard_deadline`) has its worker killed (and restarted),
and is recorded as interrupted (:meth:`Runtime._record_interrupted`), never run again.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from engine.context import FINISHING_LIMIT
from server.config import ServerConfig
from server.errors import ApiError
from server.prompt_queue import PromptQueue, QueueItem
from server.worker import Channel, Message
from server.ws import Hub, message

log = logging.getLogger(__name__)

TERMINAL = frozenset({"execution_success", "execution_error", "execution_interrupted"})
RECORDED = TERMINAL | {"execution_start", "execution_cached"}
# An ExecutionBlocker's message: an execution_error (ComfyUI's form) that ends nothing
# and, as in ComfyUI, stays out of the history (engine.lists.EXECUTION_BLOCKED)
BLOCKED = "ExecutionBlocked"
PROGRESS_INTERVAL = 0.05  # least seconds between a prompt's progress_state messages
MAX_WARNINGS = 20  # node warnings a history entry keeps (the first; the rest are counted)
WARNING_CHARS = 2000
POLL = 0.25  # seconds between checks for interrupt deadlines and shutdown


def registry_factory_for(config: ServerConfig) -> Callable[[], Any]:
    """The node registry the server validates against: the worker's, same packs."""

    def make() -> Any:
        from engine.registry import load_registry

        env = config.environment()
        return load_registry(config.registry_factory, config.custom_nodes, env=env)

    return make


class Validator:
    """Validates prompts against the server's registry and folders (nothing runs)."""

    def __init__(self, registry: Any, env: Any):
        self.registry = registry
        self.env = env

    def validate(self, prompt: Any, outputs: list[str] | None = None,
                 partial: bool = False) -> Any:
        """``outputs``: ComfyUI's ``partial_execution_targets`` (output nodes only count)."""
        from engine.validation import validate_prompt

        return validate_prompt(prompt, self.registry, self.env, outputs=outputs,
                               partial=partial, output_nodes_only=True)


class NodeProgress:
    """ComfyUI's per-node progress of one prompt, sent as ``progress_state`` messages.

    ComfyUI's frontend (1.2x on) outlines the running node and draws its progress bar
    from these alone; the plain ``progress``/``executing`` messages go out as before.
    A node is ``running`` from its ``executing`` until the next node's (or its
    ``executed``), then ``finished``; the node an ``execution_error`` names is ``error``;
    an interrupt clears the states.
    """

    def __init__(self, prompt_id: str):
        self.prompt_id = prompt_id
        self.nodes: dict[str, dict[str, Any]] = {}
        self.ended = False  # after the prompt's end event nothing changes
        # message() runs on the event loop while the relay thread updates
        self._lock = threading.Lock()

    def _set(self, node: str, state: str, value: float = 0, max_: float = 1) -> None:
        self.nodes[node] = {"value": value, "max": max_, "state": state, "node_id": node,
                            "prompt_id": self.prompt_id, "display_node_id": node,
                            "parent_node_id": None, "real_node_id": node}

    def _finish_running(self, but: str | None = None) -> None:
        for node, entry in self.nodes.items():
            if entry["state"] == "running" and node != but:
                self._finish(entry)

    @staticmethod
    def _finish(entry: dict[str, Any]) -> None:
        entry["state"] = "finished"
        entry["value"] = entry["max"]  # ComfyUI's finish_progress: a done node reads 1/1

    def update(self, name: str, data: dict[str, Any]) -> bool:
        """Apply an executor event; True if the states changed (send :meth:`message`)."""
        if self.ended:
            return False
        with self._lock:
            changed = self._apply(name, data)
        self.ended = name in TERMINAL
        return changed

    def _apply(self, name: str, data: dict[str, Any]) -> bool:
        node = data.get("node")
        node = None if node is None else str(node)
        if name == "executing":
            self._finish_running(but=node)
            if node is not None and self.nodes.get(node, {}).get("state") != "running":
                self._set(node, "running")
        elif name == "progress" and node is not None:
            value, max_ = data.get("value"), data.get("max")
            if not isinstance(value, (int, float)) or not isinstance(max_, (int, float)):
                return False
            self._set(node, "running", value, max_)
        elif name == "executed" and node is not None:
            if node in self.nodes:
                self._finish(self.nodes[node])
            else:  # a cached output node shows its UI again without running (ComfyUI
                self._set(node, "finished", 1, 1)  # still runs it: finished)
        elif name == "execution_error":
            failed = data.get("node_id")
            self._finish_running()
            if failed is not None:
                self._set(str(failed), "error")
        elif name == "execution_success":
            self._finish_running()
        elif name == "execution_interrupted":
            # nothing runs any more: the frontend would go on outlining the node (as
            # after a hard interrupt, whose end sends no states)
            self.nodes.clear()
        else:
            return False
        return True

    def message(self) -> str:
        with self._lock:
            nodes = {k: dict(v) for k, v in self.nodes.items()}
        return message("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes})


class Running:
    """A prompt a worker is running, and what the runtime knows of it."""

    def __init__(self, item: QueueItem):
        self.item = item
        self.node: str | None = None
        self.started: list[str] = []
        self.hard_deadline: float | None = None  # monotonic time of the hard interrupt
        #: while a node does work a stop waits for (``finishing``): until when, at most
        self.finishing_until: float | None = None
        self.finishing_depth = 0
        self.progress = NodeProgress(item.prompt_id)
        #: its nodes' ``node_warning`` messages, kept in its history entry
        self.warnings: list[dict[str, Any]] = []
        self.warnings_dropped = 0

    def kill_at(self) -> float | None:
        """When the worker is killed for not stopping after an interrupt (None: never)."""
        if self.hard_deadline is None:
            return None
        return max(self.hard_deadline, self.finishing_until or 0.0)

    def finishing(self, data: dict[str, Any], grace: float) -> None:
        """A node's ``finishing`` event: a kill waits for that work (bounded by its
        limit); once it ends, a pending kill comes ``grace`` seconds later at the earliest."""
        now = time.monotonic()
        if data.get("active"):
            limit = data.get("limit")
            limit = float(limit) if isinstance(limit, int | float) and math.isfinite(limit) else 0.0
            until = now + max(0.0, min(limit, FINISHING_LIMIT))
            self.finishing_depth += 1  # (one inside another: the outer one still holds)
            self.finishing_until = max(self.finishing_until or 0.0, until)
            return
        self.finishing_depth = max(0, self.finishing_depth - 1)
        if self.finishing_depth:
            return
        self.finishing_until = None
        if self.hard_deadline is not None:
            self.hard_deadline = max(self.hard_deadline, now + grace)

    def warn(self, data: dict[str, Any]) -> None:
        if len(self.warnings) >= MAX_WARNINGS:
            self.warnings_dropped += 1
            return
        node = data.get("node")
        self.warnings.append({"node": None if node is None else str(node),
                              "message": str(data.get("message", ""))[:WARNING_CHARS]})

    def recorded_warnings(self) -> list[dict[str, Any]]:
        if not self.warnings_dropped:
            return self.warnings
        return [*self.warnings, {"node": None, "message":
                                 f"and {self.warnings_dropped} more warning(s), not kept"}]


class Runtime(abc.ABC):
    """The validation registry, event relaying and history recording; the subclass
    (:class:`server.pool.PoolRuntime`) runs the prompts on its workers."""

    def __init__(self, config: ServerConfig, queue: PromptQueue, hub: Hub, env: Any,
                 registry_factory: Callable[[], Any] | None = None):
        self.config = config
        self.queue = queue
        self.hub = hub
        self.env = env
        self.registry_factory = registry_factory or registry_factory_for(config)
        self.registry: Any = None
        self.load_error: str | None = None
        self.worker_error: str | None = None  # the last failed start's cause
        self.worker_info: dict[str, Any] = {}  # what the workers last reported
        self.worker_starts = 0
        self._registry_ready: asyncio.Event | None = None
        self._setup_done: asyncio.Event | None = None
        self._stopping = False
        self._history_lock = threading.Lock()  # one thread at a time trims the history
        self._reload_lock = threading.Lock()  # one reload of the node packs at a time
        hub.on_connect = self._replay

    # --- what the run loop provides ---------------------------------------------------
    @property
    @abc.abstractmethod
    def worker(self) -> Channel | None:
        """A live worker: what node packs' HTTP routes talk to (None: none is up)."""

    @abc.abstractmethod
    def workers(self) -> list[dict[str, Any]]:
        """Each worker's state, for /system_stats."""

    @abc.abstractmethod
    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt ``prompt_id`` (None: all); True if one was."""

    @abc.abstractmethod
    def free(self, unload_models: bool, free_memory: bool) -> int:
        """ComfyUI's ``POST /free``: each worker drops its cached outputs (models
        included) after the prompt it is running, if any; returns how many were asked."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop taking prompts; running ones are interrupted and go back in the queue."""

    @abc.abstractmethod
    def _clear_running(self) -> None:
        """The calling thread's prompt has ended: /interrupt no longer reaches it."""

    @abc.abstractmethod
    def _note_rerun(self, item: QueueItem, message: str) -> None:
        """Tell the prompt's history entry that it runs again, and why."""

    @abc.abstractmethod
    def _replay(self, sid: str) -> list[str]:
        """Events that tell a client connecting anew where its running prompts are."""

    # --- lifecycle (event loop) ------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Recover the stored queue and start loading the node packs (the subclass
        then starts its workers)."""
        self._loop = loop
        self._registry_ready = asyncio.Event()
        self._setup_done = asyncio.Event()
        failed, rerun = self.queue.recover()
        for item in failed:
            self._record_failure(item, f"the server stopped {item.attempts} time(s) while "
                                 "running this prompt; giving up on it", "ServerRestart")
        for item in rerun:
            self._note_rerun(item, "the server stopped while running this prompt; it was "
                             "run again")
        if restored := self.queue.remaining():
            log.warning("restored %d prompt(s) to the queue from the last run (running ones "
                        "run again)%s", restored, f"; {len(failed)} that ran out of "
                        "attempts recorded as failed" if failed else "")
        self.queue.storage.prune_history(self.config.max_history)
        threading.Thread(target=self._load_registry, name="steerflow-packs",
                         daemon=True).start()

    async def get_registry(self, timeout: float = 300.0) -> Any:
        """The node registry, once packs loaded and the workers' first set-up (installing
        the built-in models, so that model lists are complete) is done; 503 if the packs
        failed to load. The set-up is a few file checks on an installed folder."""
        await self._wait(self._registry_ready, timeout, "loading node packs")
        if self.registry is None:
            raise ApiError(503, "nodes_unavailable", "node packs failed to load: "
                           f"{self.load_error or 'not started'}")
        await self._wait(self._setup_done, timeout, "installing the built-in models")
        return self.registry

    async def models_ready(self, timeout: float = 300.0) -> None:
        """Wait for the workers' first set-up (the model folders made, the built-in
        models installed): a model list read before it would be missing or short."""
        await self._wait(self._setup_done, timeout, "installing the built-in models")

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

    @property
    def device(self) -> str:
        return str(self.worker_info.get("device") or self.config.device or "pending")

    # --- threads -----------------------------------------------------------------
    def _load_registry(self) -> None:
        try:
            self.registry = self.registry_factory()
            for err in getattr(self.registry, "errors", []):
                log.warning("%s", err.describe())
        except BaseException as exc:
            log.exception("failed to load node packs")
            self.load_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._set(self._registry_ready)

    def _match_packs(self, sources: Any) -> None:
        """A worker (re)started after a pack's files changed imported the new code; the
        server's node list (``/object_info``, validation) is then made from the same
        files, so both run one version (ComfyUI, one process, keeps the old until a
        restart; here a worker restart would otherwise split them)."""
        registry = self.registry
        if not isinstance(sources, str) or registry is None \
                or getattr(registry, "sources", None) in (None, sources):
            return
        with self._reload_lock:
            if getattr(self.registry, "sources", None) == sources:
                return  # another worker's start reloaded them meanwhile
            log.warning("custom node packs changed on disk since the server loaded them, "
                        "and a worker has just loaded the new files: loading them again "
                        "so that the node list matches (reload the page for the new "
                        "node definitions)")
            try:
                fresh = self.registry_factory()
            except BaseException:
                log.exception("reloading the node packs failed; the node list stays as "
                              "it was")
                return
            for err in getattr(fresh, "errors", []):
                log.warning("%s", err.describe())
            self.registry = fresh

    def _set(self, event: asyncio.Event | None) -> None:
        if event is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(event.set)

    # --- one prompt's events and end (a worker's thread) ----------------------------
    def _wait_time(self, running: Running) -> float:
        kill_at = running.kill_at()
        if kill_at is None:
            return POLL
        return max(0.0, min(POLL, kill_at - time.monotonic()))

    def _relay(self, running: Running, msg: Message, messages: list[list[Any]],
               held: list[tuple[str, str]]) -> None:
        sid = running.item.client_id
        if msg.preview is not None:
            if self.hub.has_clients:
                node = running.node
                self.hub.post_preview(sid, msg.preview, msg.image_type, {
                    "node_id": node, "display_node_id": node, "real_node_id": node,
                    "parent_node_id": None, "prompt_id": running.item.prompt_id})
            return
        events = msg.data.get("events")
        for event in events if isinstance(events, list) else ():
            if isinstance(event, list) and len(event) == 2 and isinstance(event[1], dict):
                self._relay_event(running, str(event[0]), event[1], messages, held)

    def _relay_event(self, running: Running, name: str, data: dict[str, Any],
                     messages: list[list[Any]], held: list[tuple[str, str]]) -> None:
        sid = running.item.client_id
        if name == "execution_error" and data.get("exception_type") == BLOCKED:
            self.hub.post(sid, message(name, data))  # a blocked node, not the end: as it comes
            return
        if name == "finishing":  # for the kill's timing (see Running.finishing), not clients
            running.finishing(data, self.config.interrupt_grace)
            return
        if name in RECORDED:
            messages.append([name, data])
        elif name == "node_warning":
            running.warn(data)
        if name == "executing":
            node = data.get("node")
            if node is not None:  # the last node that started: a crash is blamed on it
                running.started.append(str(node))
                running.node = str(node)
        text = message(name, data)
        if name in TERMINAL or (name == "executing" and data.get("node") is None):
            held.append((name, text))
        else:
            self.hub.post(sid, text)
        progress = running.progress
        if progress.update(name, data):
            # restated whole (ComfyUI's frontend replaces its states with each): throttled,
            # to about 1 MB/s for huge graphs, whose every message lists thousands of nodes
            self.hub.post_state(sid, progress.prompt_id, progress.message,
                                interval=max(PROGRESS_INTERVAL, len(progress.nodes) / 5000),
                                final=name in TERMINAL)

    def _finish(self, running: Running, msg: Message, messages: list[list[Any]],
                held: list[tuple[str, str]]) -> None:
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
        if status == "error":
            _log_failure(item.prompt_id, messages)
        outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}
        # ComfyUI's order: execution_success, the queue's status, then executing None
        with self.hub.status_deferred():
            self.queue.finish(item, history_entry(item, outputs, status == "success",
                                                  messages, running.recorded_warnings()))
            self._clear_running()  # before the client hears of the end: /interrupt is False
            for name, text in held:
                if name in TERMINAL:
                    self.hub.post(item.client_id, text)
        for name, text in held:
            if name not in TERMINAL:
                self.hub.post(item.client_id, text)
        self._after_finish()

    def _record_interrupted(self, running: Running, messages: list[list[Any]],
                            note: str | None = None) -> None:
        """A hard interrupt: the worker was killed; the prompt ends here, not re-run.
        ``note`` (our key, which ComfyUI's clients ignore) tells the user why the next
        prompt waits."""
        item = running.item
        node = running.node
        payload = {"prompt_id": item.prompt_id, "node_id": node,
                   "node_type": _class_type(item, node),
                   "executed": [n for n in running.started if n != node],
                   "timestamp": _now_ms()}
        if note:
            payload["steerflow_note"] = note
        self._end(item, messages, "execution_interrupted", payload,
                  running.recorded_warnings())

    def _record_failure(self, item: QueueItem, text: str, exc_type: str, *,
                        node_errors: dict[str, Any] | None = None,
                        messages: list[list[Any]] | None = None,
                        node: str | None = None) -> None:
        """Record a prompt that could not run, and tell its client, never silently."""
        payload = {"prompt_id": item.prompt_id, "node_id": node,
                   "node_type": _class_type(item, node), "executed": [],
                   "exception_message": text, "exception_type": exc_type, "traceback": [],
                   "current_inputs": {}, "current_outputs": [], "timestamp": _now_ms()}
        if node_errors:
            payload["node_errors"] = node_errors
        self._end(item, [*(messages or [])], "execution_error", payload)

    def _end(self, item: QueueItem, messages: list[list[Any]], event: str,
             payload: dict[str, Any], warnings: list[dict[str, Any]] | None = None) -> None:
        """Record an unsuccessful end in the history, then tell the client, in that order."""
        messages.append([event, payload])
        with self.hub.status_deferred():  # ComfyUI's order, as in _finish
            try:
                self.queue.finish(item, history_entry(item, {}, False, messages, warnings))
            except Exception:
                log.error("cannot record the end of prompt %s:\n%s", item.prompt_id,
                          traceback.format_exc())
            self._clear_running()
            # no node is running any more (ComfyUI's frontend would keep outlining it)
            cleared = message("progress_state", {"prompt_id": item.prompt_id, "nodes": {}})
            self.hub.post_state(item.client_id, item.prompt_id, lambda: cleared, final=True)
            self.hub.post_event(item.client_id, event, payload)
        self.hub.post_event(item.client_id, "executing",
                            {"node": None, "display_node": None, "prompt_id": item.prompt_id})
        self._after_finish()

    def _after_finish(self) -> None:
        """Keep the history to ``max_history`` entries exactly, as ComfyUI does: a finish
        past the cap drops the oldest entry. That costs a count on an index and, at the
        cap, one small delete (~0.1 ms); pruning every 100 finishes let the history run
        99 over, and a prune's OFFSET walk takes ~14 ms at 10,000 entries."""
        storage = self.queue.storage
        keep = self.config.max_history
        with self._history_lock:  # two threads would each drop the same excess
            try:
                total, _ = storage.history_jobs(None, 0, 0)
                if total > keep:
                    storage.drop_oldest(total - keep)  # by row: no entry's text is read
            except Exception as exc:  # e.g. a full disk: the prompt has ended all the same
                log.warning("cannot trim the history to %d entries: %s: %s", keep,
                            type(exc).__name__, exc)


def _log_failure(prompt_id: str, messages: list[list[Any]]) -> None:
    """A prompt that failed in a worker, in the server's log (its terminal, and the
    front end's Logs panel and error report), with the traceback, as ComfyUI prints it."""
    error = next((data for name, data in reversed(messages)
                  if name == "execution_error" and isinstance(data, dict)
                  and data.get("exception_type") != BLOCKED), None)
    if error is None:
        return
    trace = error.get("traceback")
    lines = "".join(str(t) for t in trace[-20:]) if isinstance(trace, list) else ""
    log.error("prompt %s failed at node %s (%s): %s: %s%s", prompt_id, error.get("node_id"),
              error.get("node_type"), error.get("exception_type"),
              error.get("exception_message"), "\n" + lines.rstrip() if lines else "")


def history_entry(item: QueueItem, outputs: dict[str, Any], ok: bool,
                  messages: list[list[Any]],
                  warnings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """ComfyUI's history entry for one prompt. Its nodes' warnings go in our own key,
    ``status.steerflow_warnings`` (``[{"node", "message"}]``), not in ``messages``:
    ComfyUI's frontends before the jobs API checked ``messages`` against the five
    execution events (its clients drop keys they do not know)."""
    status: dict[str, Any] = {"status_str": "success" if ok else "error", "completed": ok,
                              "messages": messages}
    if warnings:
        status["steerflow_warnings"] = warnings
    return {
        "prompt": item.as_list(),
        "outputs": outputs,
        "status": status,
        "meta": {nid: {"node_id": nid, "display_node": nid, "parent_node": None,
                       "real_node_id": nid} for nid in outputs},
    }


def _class_type(item: QueueItem, node: str | None) -> str | None:
    entry = item.prompt.get(node) if node is not None else None
    return entry.get("class_type") if isinstance(entry, dict) else None


def _now_ms() -> int:
    return int(time.time() * 1000)
