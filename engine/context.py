"""What a node sees while it runs: its environment, progress and interrupt."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from engine.environment import Environment


class Interrupted(Exception):
    """Raised inside a node when its prompt was interrupted."""


@dataclass
class InterruptFlag:
    """A per-prompt flag; set from any thread, checked cooperatively."""

    _event: threading.Event = field(default_factory=threading.Event)

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


EventSink = Callable[[str, dict[str, Any]], None]

#: the prompt this thread is running and its flag (set by the executor for a run)
_RUNNING: ContextVar[tuple[str, InterruptFlag] | None] = ContextVar(
    "steerflow_running_prompt", default=None)


@contextmanager
def running_prompt(prompt_id: str, flag: InterruptFlag) -> Iterator[None]:
    """Make ``flag`` the one :func:`interrupt_point` checks in this thread."""
    token = _RUNNING.set((prompt_id, flag))
    try:
        yield
    finally:
        _RUNNING.reset(token)


def interrupt_point() -> None:
    """Raise :class:`Interrupted` if the prompt this thread runs was interrupted.

    For code that has no :class:`ExecutionContext` at hand, such as hooks inside a
    model's forward, so an interrupt acts within one long call; outside a run it does
    nothing.
    """
    running = _RUNNING.get()
    if running is not None and running[1].is_set():
        raise Interrupted(running[0])


#: the node whose fingerprint is being taken, and the run's prompt (see :func:`signing_node`)
_SIGNING: ContextVar[tuple[str, dict[str, Any]] | None] = ContextVar(
    "steerflow_signing_node", default=None)


@contextmanager
def signing_node(node_id: str, prompt: dict[str, Any]) -> Iterator[None]:
    """Name the node whose :meth:`~engine.node.Node.fingerprint` runs in this thread."""
    token = _SIGNING.set((node_id, prompt))
    try:
        yield
    finally:
        _SIGNING.reset(token)


def node_being_signed() -> tuple[str, dict[str, Any]] | None:
    """``(node_id, prompt)`` while a node's fingerprint is taken, else None: for a
    fingerprint that depends on which node it is (ComfyUI's ``IS_CHANGED`` is given
    the node's ``unique_id`` and the prompt)."""
    return _SIGNING.get()


#: the names of the inputs linked to other nodes, while a node's input check runs
_LINKED: ContextVar[frozenset[str]] = ContextVar("steerflow_linked_inputs",
                                                 default=frozenset())


@contextmanager
def checking_inputs(linked: frozenset[str]) -> Iterator[None]:
    """Name the linked inputs of the node whose ``validate_inputs`` runs in this thread."""
    token = _LINKED.set(linked)
    try:
        yield
    finally:
        _LINKED.reset(token)


def linked_inputs() -> frozenset[str]:
    """The inputs of the node being validated that come from links (their values are
    not known yet): ComfyUI hands them to ``VALIDATE_INPUTS`` as None."""
    return _LINKED.get()


#: the longest a node's ``finishing`` work holds off a kill after an interrupt (seconds)
FINISHING_LIMIT = 600.0


@dataclass
class ExecutionContext:
    """Passed to ``Node.execute``: report progress, honour interrupts, read the run's data."""

    prompt_id: str
    node_id: str
    env: Environment
    emit: EventSink
    interrupt_flag: InterruptFlag
    prompt: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    run: Any = field(default=None, repr=False)  # the executor's run, for graph queries

    @property
    def graph(self) -> Any:
        """The running graph as it grows (:class:`engine.expansion.DynamicGraph`)."""
        return self.run.dynamic_graph() if self.run is not None else None

    def new_node_id(self) -> str:
        """A fresh node id for a subgraph this node expands into."""
        if self.run is None:
            raise RuntimeError("node ids for an expansion are allocated only during a run")
        return self.run.dynamic_graph().new_id(self.node_id)

    @property
    def device(self) -> str:
        return self.env.device

    def check_interrupt(self) -> None:
        """Raise :class:`Interrupted` if this prompt was interrupted."""
        if self.interrupt_flag.is_set():
            raise Interrupted(self.prompt_id)

    def progress(self, value: int, total: int, preview: Any = None,
                 info: dict[str, Any] | None = None) -> None:
        """Report progress (and optionally a preview image); also checks for interrupt.

        ``info`` adds fields to the event (e.g. a training node's ``loss``); the four
        standard fields always win, so listeners that ignore extra fields are unaffected.
        """
        self.emit("progress", {**(info or {}), "prompt_id": self.prompt_id,
                               "node": self.node_id, "value": int(value), "max": int(total)})
        if preview is not None:
            self.preview(preview)
        self.check_interrupt()

    def preview(self, image: Any) -> None:
        """Send a live preview image of this node (a ``preview`` event, no progress)."""
        self.emit("preview", {"prompt_id": self.prompt_id, "node": self.node_id,
                              "image": image})

    def warn(self, message: str) -> None:
        """Report something the user should fix that did not stop the run (a
        ``node_warning`` event: the CLI prints it, the canvas shows it)."""
        self.emit("node_warning", {"prompt_id": self.prompt_id, "node": self.node_id,
                                   "message": str(message)})

    @contextmanager
    def finishing(self, what: str, limit: float = FINISHING_LIMIT) -> Iterator[None]:
        """Mark work a stop must wait for (writing the checkpoint a Stop promises): while
        it lasts, a host that kills runs that do not stop soon after an interrupt waits,
        up to ``limit`` seconds (a ``finishing`` event at its start and its end)."""
        limit = max(0.0, min(float(limit), FINISHING_LIMIT))
        self.emit("finishing", {"prompt_id": self.prompt_id, "node": self.node_id,
                                "what": str(what), "active": True, "limit": limit})
        try:
            yield
        finally:
            self.emit("finishing", {"prompt_id": self.prompt_id, "node": self.node_id,
                                    "what": str(what), "active": False, "limit": limit})

    def send_image(self, image: Any) -> None:
        """Send a full-size PIL image to the prompt's client as a PNG, on the preview path
        (ComfyUI's ``SaveImageWebsocket``: a binary websocket frame, image type PNG)."""
        self.emit("preview", {"prompt_id": self.prompt_id, "node": self.node_id,
                              "image": image, "format": "PNG"})
