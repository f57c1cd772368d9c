"""Lists and blockers: a node fed lists runs once per element.

ComfyUI's list semantics, in one place. A value travels between nodes as itself;
an output declared ``Output(is_list=True)`` (ComfyUI's ``OUTPUT_IS_LIST``) travels
as a :class:`ValueList`. A node whose inputs hold a :class:`ValueList` runs once per
element (the longest list sets the count, shorter ones repeat their last element),
and its outputs become lists, unless the node declares ``INPUT_IS_LIST = True``: it
then gets every input as a whole list (a single value as a list of one) in one call.
Outputs flagged ``is_list`` are concatenated across calls, the others collected one
per call; a slot that ends up with exactly one value leaves as that value.

An :class:`ExecutionBlocker` as an input value stops the call it reaches (every
output of that call becomes a blocker), and only that call: other list elements
run. A blocker with a message is reported (an ``execution_error`` event of type
``ExecutionBlocked`` that stops nothing else); one without is silent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class ValueList(list):  # type: ignore[type-arg]
    """An output slot holding a list in ComfyUI's sense: mapped over downstream."""


class NotReturned:
    """The value of a declared output that a ComfyUI pack's node did not return (its
    FUNCTION gave fewer values than RETURN_TYPES): as in ComfyUI, the node succeeds and
    only a node that uses that output fails, saying so."""

    __slots__ = ("index", "returned")

    def __init__(self, index: int, returned: int):
        self.index, self.returned = index, returned

    def __repr__(self) -> str:
        return f"<output {self.index} not returned>"


class ExecutionBlocker:
    """Return it as an output to stop every node that would consume it.

    ``message`` None blocks silently; a message is reported for each node it
    stops, as ComfyUI reports it: an ``execution_error`` event whose
    ``exception_type`` is ``"ExecutionBlocked"`` (the run goes on), and
    ``RunResult.blocked``.
    """

    __slots__ = ("message",)

    def __init__(self, message: str | None = None):
        self.message = message

    def __repr__(self) -> str:
        return f"ExecutionBlocker({self.message!r})"


EXECUTION_BLOCKED = "ExecutionBlocked"  # exception_type of a blocker's execution_error
SPECIAL = (ValueList, ExecutionBlocker)  # values that take the slow path


def call_count(inputs: dict[str, Any]) -> int:
    """How many calls a node fed these inputs makes (0 for an empty list)."""
    lengths = [len(v) for v in inputs.values() if isinstance(v, ValueList)]
    return max(lengths) if lengths else 1


def element(value: Any, index: int) -> Any:
    """Element ``index`` of an input (a plain value stands for a list of one)."""
    if isinstance(value, ValueList):
        return value[index if index < len(value) else -1] if value else None
    return value


def calls(inputs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The keyword arguments of each call, by the list rules."""
    for i in range(call_count(inputs)):
        yield {name: element(value, i) for name, value in inputs.items()}


def as_lists(inputs: dict[str, Any]) -> dict[str, list[Any]]:
    """Every input as a whole list, for an ``INPUT_IS_LIST`` node."""
    return {name: list(value) if isinstance(value, ValueList) else [value]
            for name, value in inputs.items()}


def blocker_in(kwargs: dict[str, Any]) -> ExecutionBlocker | None:
    """The first blocker among one call's inputs (inside whole lists too)."""
    for value in kwargs.values():
        if isinstance(value, ExecutionBlocker):
            return value
        if isinstance(value, list):
            for item in value:
                if isinstance(item, ExecutionBlocker):
                    return item
    return None


def merge_outputs(results: list[tuple[Any, ...]], is_list: tuple[bool, ...]
                  ) -> tuple[Any, ...]:
    """One output tuple from the calls' results (see the module's rules)."""
    merged = []
    # a node with EXTRA_OUTPUTS may return more than it declares (not a list, those)
    width = max([len(is_list), *(len(r) for r in results)])
    for i in range(width):
        flag = i < len(is_list) and is_list[i]
        items: list[Any] = []
        for result in results:
            value = result[i] if i < len(result) else None
            if flag and isinstance(value, list | tuple):
                items.extend(value)
            else:
                items.append(value)
        merged.append(items[0] if len(items) == 1 else ValueList(items))
    return tuple(merged)


def merge_ui(uis: list[dict[str, Any]]) -> dict[str, Any] | None:
    """ComfyUI's merge of UI results: each key's lists, concatenated across calls."""
    if not uis:
        return None
    if len(uis) == 1:
        return uis[0]
    keys: dict[str, None] = {}
    for ui in uis:
        keys.update(dict.fromkeys(ui))
    merged = {key: [item for ui in uis for item in (ui.get(key) or [])] for key in keys}
    return merged or None
