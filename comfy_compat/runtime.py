"""What the shims need to know while a pack runs: the node's context and the environment.

ComfyUI's helpers are module-level functions (``folder_paths.get_filename_list``,
``comfy.model_management.processing_interrupted``, ``ProgressBar(total)``) with no
handle on the run, so the adapter records the running node's
:class:`engine.ExecutionContext` here for the length of its call, and the
environment the schema, validation or run is working with. These are process
globals, not thread-locals, on purpose: packs update progress bars from their own
threads. An executor runs one node at a time, so one slot suffices per process.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.context import ExecutionContext
    from engine.environment import Environment

_lock = threading.Lock()
_context: ExecutionContext | None = None
_env: Environment | None = None
_default_env: Environment | None = None
_fallback = False  # _default_env is the working-directory stand-in, not the run's
# An async node's context: per asyncio task, since several run at once on one loop.
_task_context: contextvars.ContextVar[ExecutionContext | None] = contextvars.ContextVar(
    "steerflow_comfy_task_context", default=None)
# GraphBuilder's default prefix: (owner, root, call index, graph index), owner the
# (prompt id, node id) of the call that set it. Kept here, not in the shim module: a pack
# imports ``comfy_execution.graph_utils``, a second copy of the module the adapter knows.
graph_prefix: contextvars.ContextVar[tuple[tuple[str, str] | None, str | None, int, int]] = \
    contextvars.ContextVar("steerflow_graph_builder_prefix", default=(None, None, 0, 0))


def current_context() -> ExecutionContext | None:
    """The context of the ComfyUI node running now, if any."""
    return _task_context.get() or _context


def current_environment() -> Environment:
    """The environment in use: the running node's, else the one bound by schema or
    validation, else the run's default (set by the adapter's setup hook), else one
    rooted at the working directory (only at import time, before any of these)."""
    global _default_env, _fallback
    ctx = current_context()
    if ctx is not None:
        return ctx.env
    if _env is not None:
        return _env
    with _lock:
        if _default_env is None:
            from engine.environment import Environment

            _default_env = Environment.create(os.getcwd(), device="cpu")
            _fallback = True
        return _default_env


def is_fallback_environment() -> bool:
    """True when :func:`current_environment` is only the working-directory stand-in
    (at import time, before any run, schema or validation): its folders may not be
    the server's, so nothing should be created in them."""
    return current_context() is None and _env is None and _fallback


def running_node() -> tuple[str, str] | None:
    """The running node's (prompt id, node id), if a node is running."""
    ctx = current_context()
    return None if ctx is None else (ctx.prompt_id, ctx.node_id)


def set_default_environment(env: Environment) -> None:
    global _default_env, _fallback
    with _lock:
        _default_env, _fallback = env, False


@contextlib.contextmanager
def bound_environment(env: Environment | None) -> Iterator[None]:
    """Make ``env`` the current environment (schema, validation, IS_CHANGED)."""
    global _env
    if env is None:
        yield
        return
    with _lock:
        previous, _env = _env, env
    try:
        yield
    finally:
        with _lock:
            _env = previous


@contextlib.contextmanager
def running(ctx: ExecutionContext) -> Iterator[None]:
    """Make ``ctx`` the current node context for the length of a node's call."""
    global _context
    with _lock:
        previous, _context = _context, ctx
    try:
        yield
    finally:
        with _lock:
            _context = previous


@contextlib.contextmanager
def running_task(ctx: ExecutionContext) -> Iterator[None]:
    """Make ``ctx`` the current node context within this asyncio task (async nodes:
    interleaved tasks must not restore each other's context)."""
    token = _task_context.set(ctx)
    try:
        yield
    finally:
        _task_context.reset(token)
