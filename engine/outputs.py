"""What a run produces (its result, its errors) and small helpers of the executor."""

from __future__ import annotations

import math
import reprlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunResult:
    """The outcome of one prompt."""

    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    blocked: dict[str, str] = field(default_factory=dict)  # node id -> blocker message

    @property
    def ok(self) -> bool:
        return self.status == "success"


class NodeExecutionError(RuntimeError):
    """A node failed; carries the structured ``execution_error`` payload."""

    def __init__(self, payload: dict[str, Any]):
        self.payload = payload
        super().__init__(f"node {payload.get('node_id')} ({payload.get('node_type')}) failed: "
                         f"{payload.get('exception_type')}: {payload.get('exception_message')}")


class _NodeFailure(Exception):
    """A node failed: the original exception, and which node."""

    def __init__(self, node_id: str, original: Exception):
        super().__init__(str(original))
        self.node_id = node_id
        self.original = original


_PLAIN = (str, int, float, bool, type(None))
_SCALAR_TYPES = frozenset(_PLAIN)


def _hashable_constants(constants: dict[str, Any]) -> dict[str, Any]:
    """An expanded node's constants for its signature: a value that is not plain
    data (a tensor handed over by code) gets a token of its own, so it never
    matches another (ComfyUI's rule for unhashable inputs)."""
    for value in constants.values():
        if type(value) not in _SCALAR_TYPES:
            break
    else:  # the usual case, a loop's copies: nothing to replace
        return constants
    return {name: value if _plain(value) else f"<value {uuid.uuid4()}>"
            for name, value in constants.items()}


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


# Per node class: (index, output) of the outputs whose primitive type is checked.
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


def error_input_value(value: Any) -> Any:
    """An input as ComfyUI's ``execution_error`` shows it: a finite number, bool,
    None or a (bounded) string as it is, anything else as a short text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value.bit_length() <= 64:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str):
        return bounded_message(value, 200)
    return _short_repr(value)


MESSAGE_CHARS = 2000  # a message quoting a 100k-character input stays readable


def bounded_message(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` with its middle cut to ``limit`` characters: nodes' messages may quote
    what the user typed, and a pasted 100k-character input must not come back whole."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]} … [{len(text) - 2 * keep} characters cut] … {text[-keep:]}"


def _now_ms() -> int:
    return int(time.time() * 1000)
