"""The worker thread: loads the node packs, then runs queued prompts one at a time.

Loading the packs (torch, diffusers) takes seconds, so it happens here rather
than before the server listens; routes that need the registry await
:meth:`Runtime.get_session`. Executor events become websocket messages as they
happen, except the terminal ones (``execution_success``/``error``/
``interrupted`` and the final ``executing`` with node None): those are held
until the history entry is committed, so a client that reacts to them by
fetching ``/history/{id}`` always finds it.
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
from server.imaging import encode_preview
from server.prompt_queue import PromptQueue, QueueItem
from server.ws import Hub, message, preview_frame

log = logging.getLogger(__name__)

TERMINAL = frozenset({"execution_success", "execution_error", "execution_interrupted"})
RECORDED = TERMINAL | {"execution_start", "execution_cached"}
PRUNE_EVERY = 100


class Runtime:
    """Owns the engine session and the single thread that executes prompts."""

    def __init__(self, config: ServerConfig, queue: PromptQueue, hub: Hub,
                 session_factory: Callable[[], Any]):
        self.config = config
        self.queue = queue
        self.hub = hub
        self.session_factory = session_factory
        self.session: Any = None
        self.load_error: str | None = None
        self._ready: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._finished = 0
        self._current: list[Any] = [None, None, None]  # prompt_id, client_id, node
        hub.on_connect = self._replay

    # --- lifecycle (event loop) ------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready = asyncio.Event()
        for item in self.queue.recover():
            self._record_failure(item, f"the server stopped {item.attempts} time(s) while "
                                 "running this prompt; giving up on it", "ServerRestart")
        self.queue.storage.prune_history(self.config.max_history)
        self._thread = threading.Thread(target=self._main, name="steerflow-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking prompts; interrupt the running one, which goes back in the queue."""
        self._stopping = True
        self.queue.close()
        running = self.queue.running()
        if running is not None and self.session is not None:
            self.session.executor.interrupt(running.prompt_id)
        if self._thread is not None:
            self._thread.join(timeout)

    async def get_session(self, timeout: float = 300.0) -> Any:
        """The engine session, waiting while node packs load; 503 if they failed."""
        if self.session is None and self.load_error is None and self._ready is not None:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                raise ApiError(503, "starting", "the server is still loading node packs; "
                               "try again shortly") from None
        if self.session is None:
            raise ApiError(503, "nodes_unavailable", "node packs failed to load: "
                           f"{self.load_error or 'not started'}")
        return self.session

    def interrupt(self, prompt_id: str | None = None) -> bool:
        return self.session is not None and self.session.executor.interrupt(prompt_id)

    # --- the thread ------------------------------------------------------------
    def _main(self) -> None:
        try:
            session = self.session_factory()
            # Setup hooks (e.g. creating the default model) run here, not on the first
            # validation, which happens on the event loop.
            ensure_setup = getattr(session.executor, "ensure_setup", None)
            if ensure_setup is not None:
                ensure_setup()
            self.session = session
        except BaseException as exc:
            log.exception("failed to load node packs")
            self.load_error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(RuntimeError):  # the server stopped while loading
                self._loop.call_soon_threadsafe(self._ready.set)  # type: ignore[union-attr]
        if self.session is None:
            return
        for err in getattr(self.session.registry, "errors", []):
            log.warning("node pack %s failed to load: %s", err.pack, err.message)
        while True:
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
            except BaseException as exc:  # the worker must outlive any one prompt
                log.exception("prompt %s could not be processed", item.prompt_id)
                self._record_failure(item, f"internal error: {type(exc).__name__}: {exc}",
                                     type(exc).__name__)

    def _process(self, item: QueueItem) -> None:
        from engine.validation import PromptValidationError, describe_issues, to_node_errors

        executor = self.session.executor
        sid = item.client_id
        messages: list[list[Any]] = []
        held: list[str] = []
        self._current = [item.prompt_id, sid, None]

        def on_event(name: str, data: dict[str, Any]) -> None:
            if name == "preview":
                self._post_preview(sid, data)
                return
            if name in RECORDED:
                messages.append([name, data])
            if name == "executing":
                self._current[2] = data.get("node")
            text = message(name, data)
            if name in TERMINAL or (name == "executing" and data.get("node") is None):
                held.append(text)
            else:
                self.hub.post(sid, text)

        vp = item.validated
        if vp is None:  # recovered after a restart: the registry may have changed
            try:
                vp = executor.validate(item.prompt, item.outputs or None)
            except PromptValidationError as exc:
                self._record_failure(item, "the prompt is no longer valid:\n"
                                     + describe_issues(exc.issues), "PromptValidationError",
                                     node_errors=to_node_errors(exc.issues))
                return
        extra = {**item.extra_data, "preview": self.hub.has_clients}
        try:
            result = executor.run(item.prompt, prompt_id=item.prompt_id, extra=extra,
                                  on_event=on_event, validated=vp)
        finally:
            self._current = [None, None, None]
        if result.status == "interrupted" and self._stopping:
            self.queue.requeue(item)  # shut down mid-run: run it again next time
            return
        ok = result.status == "success"
        outputs = result.outputs
        self.queue.finish(item, history_entry(item, outputs, ok, messages))
        for text in held:
            self.hub.post(sid, text)
        self._after_finish()

    def _record_failure(self, item: QueueItem, text: str, exc_type: str,
                        node_errors: dict[str, Any] | None = None) -> None:
        """Record a prompt that could not run, and tell its client, never silently."""
        payload = {"prompt_id": item.prompt_id, "node_id": None, "node_type": None,
                   "executed": [], "exception_message": text, "exception_type": exc_type,
                   "traceback": [], "current_inputs": {}, "current_outputs": {},
                   "timestamp": int(time.time() * 1000)}
        if node_errors:
            payload["node_errors"] = node_errors
        try:
            self.queue.finish(item, history_entry(item, {}, False,
                                                  [["execution_error", payload]]))
        except Exception:
            log.error("cannot record failure of prompt %s:\n%s", item.prompt_id,
                      traceback.format_exc())
        self.hub.post_event(item.client_id, "execution_error", payload)
        self.hub.post_event(item.client_id, "executing",
                            {"node": None, "display_node": None, "prompt_id": item.prompt_id})
        self._after_finish()

    def _after_finish(self) -> None:
        self._finished += 1
        if self._finished % PRUNE_EVERY == 0:
            self.queue.storage.prune_history(self.config.max_history)

    def _post_preview(self, sid: str | None, data: dict[str, Any]) -> None:
        if not self.hub.has_clients:
            return
        try:
            jpeg = encode_preview(data.get("image"))
        except Exception:
            log.debug("cannot encode a preview", exc_info=True)
            return
        self.hub.post(sid, preview_frame(jpeg))

    def _replay(self, sid: str) -> list[str]:
        prompt_id, client_id, node = self._current
        if prompt_id is None or client_id != sid or node is None:
            return []
        return [message("executing", {"node": node, "display_node": node,
                                      "prompt_id": prompt_id})]


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
