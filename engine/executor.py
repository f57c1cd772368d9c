"""The executor: run a validated prompt's output nodes and what they need.

Signatures first, in topological order. Then a work-list (no recursion, so a
10,000-node chain or a 10,000-iteration loop is as easy as a 10-node one): walking
back from the outputs, a node whose signature is cached is served from the cache
and its ancestors are not needed at all; the rest run when what they wait on is
done. Beyond a static DAG (see docs/engine.md): lazy inputs (``Input(lazy=True)``
and ``Node.check_lazy_status``), node expansion (:mod:`engine.expansion`: loops,
recursion), list mapping and blockers (:mod:`engine.lists`), and ``async def
execute`` nodes, which run concurrently on one event loop.

Events (ComfyUI's names and payloads): execution_start, execution_cached,
executing, progress, preview, executed, execution_error, execution_success,
execution_interrupted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from engine.cache import OutputCache
from engine.context import InterruptFlag, running_prompt
from engine.environment import Environment
from engine.outputs import NodeExecutionError, RunResult
from engine.registry import NodeRegistry
from engine.run import _Run
from engine.validation import ValidatedPrompt, validate_prompt

EventCallback = Callable[[str, dict[str, Any]], None]


def _noop(_event: str, _data: dict[str, Any]) -> None:
    pass


class Executor:
    """Runs prompts one at a time against a shared :class:`OutputCache`."""

    def __init__(self, registry: NodeRegistry, env: Environment,
                 cache: OutputCache | None = None):
        self.registry = registry
        self.env = env
        self.cache = cache if cache is not None else OutputCache()
        self._run_lock = threading.Lock()
        self._flags: dict[str, InterruptFlag] = {}
        self._flags_lock = threading.Lock()
        self._setup_done = False
        self._async: _AsyncHost | None = None

    # --- public API ------------------------------------------------------------
    def ensure_setup(self) -> None:
        """Run the packs' setup hooks once (e.g. create the default model)."""
        if not self._setup_done:
            self.registry.setup(self.env)
            self._setup_done = True

    def validate(self, prompt: Any, outputs: list[str] | None = None) -> ValidatedPrompt:
        self.ensure_setup()  # choices such as model lists depend on it
        return validate_prompt(prompt, self.registry, self.env, outputs=outputs)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (any, or only ``prompt_id``); True if one was."""
        with self._flags_lock:
            targets = list(self._flags.items())
        hit = False
        for pid, flag in targets:
            if prompt_id is None or pid == prompt_id:
                flag.set()
                hit = True
        return hit

    def async_host(self) -> _AsyncHost:
        """The event loop async nodes run on (a daemon thread, started on first use)."""
        if self._async is None:
            self._async = _AsyncHost()
        return self._async

    @property
    def running(self) -> list[str]:
        with self._flags_lock:
            return list(self._flags)

    def run(self, prompt: dict[str, Any], *, prompt_id: str | None = None,
            extra: dict[str, Any] | None = None, on_event: EventCallback | None = None,
            outputs: list[str] | None = None,
            validated: ValidatedPrompt | None = None) -> RunResult:
        """Validate (unless ``validated`` is given) and run a prompt.

        Raises :class:`engine.validation.PromptValidationError` before anything
        runs; failures during the run are reported in the result and events.
        """
        vp = validated if validated is not None else self.validate(prompt, outputs)
        prompt_id = prompt_id or str(uuid.uuid4())
        emit = on_event or _noop
        flag = InterruptFlag()
        with self._run_lock:
            with self._flags_lock:
                self._flags[prompt_id] = flag
            try:
                with running_prompt(prompt_id, flag):
                    return _Run(self, vp, prompt, prompt_id, extra or {}, emit, flag).execute()
            finally:
                with self._flags_lock:
                    self._flags.pop(prompt_id, None)


class _AsyncHost:
    """An asyncio loop in a daemon thread: async nodes of a prompt run on it
    concurrently while the work-list runs sync nodes in the calling thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="steerflow-async-nodes")
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


__all__ = ["EventCallback", "Executor", "NodeExecutionError", "RunResult", "_Run"]
