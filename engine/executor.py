"""The executor: run a validated prompt's output nodes and their ancestors.

Plan: signatures in topological order; walking back from the outputs, a node
whose signature is cached is served from the cache and its ancestors are not
needed at all. Execute: only the rest, in topological order, no recursion, so
a 10,000-node chain is as easy as a 10-node one.

Events (ComfyUI's names and payloads): execution_start, execution_cached,
executing, progress, preview, executed, execution_error, execution_success,
execution_interrupted.
"""

from __future__ import annotations

import logging
import math
import reprlib
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.cache import OutputCache, signature
from engine.context import ExecutionContext, Interrupted, InterruptFlag
from engine.environment import Environment
from engine.node import INT64_MAX, INT64_MIN, Node, NodeResult, Output
from engine.registry import NodeRegistry
from engine.validation import ValidatedPrompt, check_constant, validate_prompt

log = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]


@dataclass
class RunResult:
    """The outcome of one prompt."""

    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"


class NodeExecutionError(RuntimeError):
    """A node failed; carries the structured ``execution_error`` payload."""

    def __init__(self, payload: dict[str, Any]):
        self.payload = payload
        super().__init__(f"node {payload.get('node_id')} ({payload.get('node_type')}) failed: "
                         f"{payload.get('exception_type')}: {payload.get('exception_message')}")


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
                return _Run(self, vp, prompt, prompt_id, extra or {}, emit, flag).execute()
            finally:
                with self._flags_lock:
                    self._flags.pop(prompt_id, None)


class _Run:
    """One prompt's execution state; kept apart so the executor stays reentrant."""

    def __init__(self, executor: Executor, vp: ValidatedPrompt, prompt: dict[str, Any],
                 prompt_id: str, extra: dict[str, Any], emit: EventCallback, flag: InterruptFlag):
        self.ex = executor
        self.cache = executor.cache
        self.vp = vp
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.extra = extra
        self.emit = emit
        self.flag = flag
        self.sigs: dict[str, str] = {}
        self.pinned: dict[str, int] = {}
        self.result = RunResult(prompt_id, "success")

    def execute(self) -> RunResult:
        self.emit("execution_start", {"prompt_id": self.prompt_id, "timestamp": _now_ms()})
        current: str | None = None
        try:
            self._sign_all()
            to_run, cached = self._plan()
            self.result.cached = cached
            self.emit("execution_cached", {"nodes": cached, "prompt_id": self.prompt_id,
                                           "timestamp": _now_ms()})
            self._replay_cached_ui(cached)
            remaining = self._count_consumers(to_run)
            for node_id in self.vp.order:
                if node_id not in to_run:
                    continue
                current = node_id
                self._execute_node(node_id)
                for src in {src for src, _ in self.vp.nodes[node_id].links.values()}:
                    remaining[src] -= 1
                    if remaining[src] == 0:
                        self._unpin(src)
                if remaining.get(node_id, 0) == 0:
                    self._unpin(node_id)
            for node_id in self.vp.outputs:
                entry = self.cache.get(self.sigs[node_id])
                if entry is not None and entry.ui:
                    self.result.outputs[node_id] = entry.ui
            self.emit("execution_success", {"prompt_id": self.prompt_id, "timestamp": _now_ms()})
        except Interrupted:
            self.result.status = "interrupted"
            node = self.vp.nodes.get(current or "")
            self.emit("execution_interrupted", {
                "prompt_id": self.prompt_id, "node_id": current,
                "node_type": node.cls.TYPE if node else None,
                "executed": list(self.result.executed), "timestamp": _now_ms()})
        except Exception as exc:
            self.result.status = "error"
            self.result.error = self._error_payload(current, exc)
            self.emit("execution_error", self.result.error)
        finally:
            for node_id in list(self.pinned):
                while self.pinned.get(node_id):
                    self._unpin(node_id)
            self.emit("executing", {"node": None, "display_node": None,
                                    "prompt_id": self.prompt_id})
        return self.result

    # --- planning --------------------------------------------------------------
    def _sign_all(self) -> None:
        env = self.ex.env
        for node_id in self.vp.order:
            node = self.vp.nodes[node_id]
            upstream = [(name, self.sigs[src], idx)
                        for name, (src, idx) in sorted(node.links.items())]
            try:
                fingerprint = node.cls.fingerprint(node.constants, env)
            except Exception as exc:
                raise _NodeFailure(node_id, exc) from exc
            self.sigs[node_id] = signature(node.cls.TYPE, node.cls.VERSION, node.constants,
                                           fingerprint, upstream)

    def _plan(self) -> tuple[set[str], list[str]]:
        need = set(self.vp.outputs)
        to_run: set[str] = set()
        cached: list[str] = []
        for node_id in reversed(self.vp.order):
            if node_id not in need:
                continue
            if self.sigs[node_id] in self.cache:
                cached.append(node_id)
                self._pin(node_id)
            else:
                to_run.add(node_id)
                need.update(src for src, _ in self.vp.nodes[node_id].links.values())
        cached.reverse()
        return to_run, cached

    def _replay_cached_ui(self, cached: list[str]) -> None:
        """``executed`` for each cached node with a UI result, as ComfyUI sends it: a
        client that shows results from ``executed`` must see a fully cached prompt's too."""
        for node_id in cached:
            entry = self.cache.get(self.sigs[node_id])
            if entry is not None and entry.ui:
                self.emit("executed", {"node": node_id, "display_node": node_id,
                                       "output": entry.ui, "prompt_id": self.prompt_id})

    def _count_consumers(self, to_run: set[str]) -> dict[str, int]:
        remaining: dict[str, int] = {}
        for node_id in to_run:
            for src in {src for src, _ in self.vp.nodes[node_id].links.values()}:
                remaining[src] = remaining.get(src, 0) + 1
        return remaining

    # --- execution -------------------------------------------------------------
    def _execute_node(self, node_id: str) -> None:
        if self.flag.is_set():
            raise Interrupted(self.prompt_id)
        sig = self.sigs[node_id]
        if sig in self.cache:  # a duplicate node earlier in this prompt made it
            self._pin(node_id)
            return
        node = self.vp.nodes[node_id]
        self.emit("executing", {"node": node_id, "display_node": node_id,
                                "prompt_id": self.prompt_id})
        try:
            kwargs = dict(node.constants)
            for name, (src, idx) in node.links.items():
                entry = self.cache.get(self.sigs[src])
                if entry is None:
                    raise RuntimeError(f"internal: output of node {src} is missing from the cache")
                value = entry.outputs[idx]
                spec = node.cls.INPUT_SPECS[name]
                if spec.is_widget and not spec.accepts_as_is(value):
                    value, issue = check_constant(spec, value, self.ex.env)
                    if issue is not None:
                        raise ValueError(issue.message)
                kwargs[name] = value
            instance = node.cls.model_construct(**kwargs)
            ctx = ExecutionContext(self.prompt_id, node_id, self.ex.env, self.emit, self.flag,
                                   self.prompt, self.extra)
            returned = instance.execute(ctx)
            outputs, ui = _normalize(returned, len(node.cls.OUTPUTS), node.cls.TYPE)
            _check_outputs(node.cls, outputs)
        except Interrupted:
            raise
        except Exception as exc:
            raise _NodeFailure(node_id, exc) from exc
        self.cache.put(sig, outputs, ui, pins=1)
        self.pinned[node_id] = self.pinned.get(node_id, 0) + 1
        self.result.executed.append(node_id)
        if ui:
            self.emit("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                   "prompt_id": self.prompt_id})

    def _pin(self, node_id: str) -> None:
        self.cache.pin(self.sigs[node_id])
        self.pinned[node_id] = self.pinned.get(node_id, 0) + 1

    def _unpin(self, node_id: str) -> None:
        if self.pinned.get(node_id):
            self.pinned[node_id] -= 1
            self.cache.unpin(self.sigs[node_id])

    def _error_payload(self, current: str | None, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, _NodeFailure):
            current, exc = exc.node_id, exc.original
        node = self.vp.nodes.get(current or "")
        if not isinstance(exc, ValueError | FileNotFoundError | PermissionError):
            log.error("node %s failed", current, exc_info=exc)
        return {
            "prompt_id": self.prompt_id,
            "node_id": current,
            "node_type": node.cls.TYPE if node else None,
            "executed": list(self.result.executed),
            "exception_message": str(exc),
            "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "traceback": traceback.format_exception(exc),
            "current_inputs": {k: _short_repr(v)
                               for k, v in (node.constants if node else {}).items()},
            "current_outputs": {},
            "timestamp": _now_ms(),
        }


class _NodeFailure(Exception):
    def __init__(self, node_id: str, original: Exception):
        super().__init__(str(original))
        self.node_id = node_id
        self.original = original


def _normalize(returned: Any, expected: int, type_id: str
               ) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    if isinstance(returned, NodeResult):
        outputs, ui = tuple(returned.outputs), returned.ui
    elif returned is None:
        outputs, ui = (), None
    else:
        outputs, ui = tuple(returned), None
    if len(outputs) != expected:
        raise RuntimeError(f"{type_id} returned {len(outputs)} output(s) but declares {expected}")
    return outputs, ui


# Per node class: (index, output) of the outputs whose primitive type is checked.
_CHECKED_OUTPUTS: dict[type, tuple[tuple[int, Output], ...]] = {}


def _check_outputs(cls: type[Node], outputs: tuple[Any, ...]) -> None:
    """Primitive outputs must be what their sockets declare: the next node's widget
    input trusts them (an INT of 2**4096 or a NaN FLOAT must stop here)."""
    checked = _CHECKED_OUTPUTS.get(cls)
    if checked is None:
        checked = _CHECKED_OUTPUTS[cls] = tuple(
            (i, out) for i, out in enumerate(cls.OUTPUTS)
            if out.type in _OUTPUT_TYPES and not out.is_list)
    for i, out in checked:
        value = outputs[i]
        kind = type(value)
        if out.type == "INT":
            if kind is not int and (kind is bool or not isinstance(value, int)):
                _bad_output(cls, i, out, value)
            if not out.wide and not INT64_MIN <= value <= INT64_MAX:
                raise ValueError(f"{cls.TYPE} output {i} ({out.label}): {value.bit_length()}"
                                 "-bit integer does not fit in a 64-bit INT")
        elif out.type == "FLOAT":
            if kind is not float and (kind is bool or not isinstance(value, float | int)):
                _bad_output(cls, i, out, value)
            if not out.allow_nonfinite and not _finite(value):
                raise ValueError(f"{cls.TYPE} output {i} ({out.label}) is not finite; a FLOAT "
                                 "output must be")
        elif not isinstance(value, _OUTPUT_TYPES[out.type]):
            _bad_output(cls, i, out, value)


_OUTPUT_TYPES: dict[str, type] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _finite(value: float | int) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


def _bad_output(cls: type[Node], index: int, out: Output, value: Any) -> None:
    raise TypeError(f"{cls.TYPE} output {index} ({out.label}) declares {out.type} but the node "
                    f"returned {type(value).__name__}")


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxlong, _REPR.maxother, _REPR.maxlevel = 200, 100, 200, 3


def _short_repr(value: Any) -> str:
    """At most ~200 characters, without first building the whole repr of a 20 MB string."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int too long to print in decimal
        text = f"<int of {value.bit_length()} bits>" if isinstance(value, int) \
            else f"<{type(value).__name__}>"
    return text[:200]


def _now_ms() -> int:
    return int(time.time() * 1000)
