"""How a node is called: what it returns, normalized and checked, and list mapping.

A node fed lists or blockers (see :mod:`engine.lists` for the rules) is called once
per element: :func:`plan_calls` gives each call's inputs, :func:`merge_calls` one
output tuple from the calls' results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.lists import (
    ExecutionBlocker,
    ValueList,
    as_lists,
    blocker_in,
    calls,
    merge_outputs,
    merge_ui,
)
from engine.node import INT64_MAX, INT64_MIN, Node, NodeResult, Output
from engine.validation import check_constant

if TYPE_CHECKING:
    from engine.environment import Environment
    from engine.validation import ValidatedNode


def _normalize(returned: Any, expected: int, type_id: str
               ) -> tuple[tuple[Any, ...], dict[str, Any] | None, dict[str, Any] | None]:
    """``(outputs, ui, expand)`` from what ``execute`` returned."""
    expand = None
    if isinstance(returned, NodeResult):
        outputs, ui, expand = tuple(returned.outputs), returned.ui, returned.expand
    elif returned is None:
        outputs, ui = (), None
    else:
        outputs, ui = tuple(returned), None
    if len(outputs) != expected:
        raise RuntimeError(f"{type_id} returned {len(outputs)} output(s) but declares {expected}")
    return outputs, ui, expand


def plan_calls(node: ValidatedNode, kwargs: dict[str, Any], *, input_is_list: bool,
               raw: frozenset[str], env: Environment,
               report_block: Callable[[str], None]) -> list[dict[str, Any] | None]:
    """Each call's inputs by the list rules; None for a call a blocker stops (a
    blocker's message goes to ``report_block``). Linked widget values are checked
    per element, as the executor checks a single value."""
    plan = [as_lists(kwargs)] if input_is_list else list(calls(kwargs))
    mapped = len(plan) > 1 or any(isinstance(v, ValueList) for v in kwargs.values())
    out: list[dict[str, Any] | None] = []
    specs = node.cls.INPUT_SPECS
    for i, call in enumerate(plan):
        blocker = blocker_in(call)
        if blocker is not None:
            if blocker.message is not None:
                report_block(blocker.message)
            out.append(None)
            continue
        if not input_is_list:
            for name in node.links:
                spec = specs[name]
                value = call[name]
                if spec.is_widget and value is not None and name not in raw \
                        and not spec.accepts_as_is(value):
                    call[name], issue = check_constant(spec, value, env)
                    if issue is not None:
                        where = f"list item {i}: " if mapped else ""
                        raise ValueError(where + issue.message)
        out.append(call)
    return out


def merge_calls(cls: type[Node], output_is_list: tuple[bool, ...], returned: list[Any]
                ) -> tuple[tuple[Any, ...], dict[str, Any] | None, dict[str, Any] | None]:
    """``(outputs, ui, expand)`` from what each call returned (None: blocked)."""
    count = len(cls.OUTPUTS)
    results: list[tuple[Any, ...]] = []
    uis: list[dict[str, Any]] = []
    for item in returned:
        if item is None:  # blocked: so is every output of this call
            results.append((ExecutionBlocker(None),) * count)
            continue
        outputs, ui, expand = _normalize(item, count, cls.TYPE)
        if expand is not None:
            if len(returned) > 1:
                raise ValueError(f"{cls.TYPE} expanded while mapped over a list of "
                                 f"{len(returned)}: expansion per list element is not "
                                 "supported; make the node take whole lists")
            return outputs, ui, expand
        _check_outputs(cls, outputs)
        results.append(outputs)
        if ui:
            uis.append(ui)
    if not results:
        return tuple(ValueList() for _ in range(count)), None, None
    return merge_outputs(results, output_is_list), merge_ui(uis), None


_CHECKED_OUTPUTS: dict[type, tuple[tuple[int, Output], ...]] = {}


def _check_outputs(cls: type[Node], outputs: tuple[Any, ...]) -> None:
    """Primitive outputs must be what their sockets declare: the next node's widget
    input trusts them (an INT of 2**4096 or a NaN FLOAT must stop here)."""
    checked = _CHECKED_OUTPUTS.get(cls)
    if checked is None:
        checked = _CHECKED_OUTPUTS[cls] = () if getattr(cls, "LAX_OUTPUTS", False) else tuple(
            (i, out) for i, out in enumerate(cls.OUTPUTS)
            if out.type in _OUTPUT_TYPES and not out.is_list)
    for i, out in checked:
        value = outputs[i]
        kind = type(value)
        if kind is ExecutionBlocker:
            continue
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
