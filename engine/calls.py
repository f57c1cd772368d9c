"""How a node is called: what it returns, normalized and checked, and list mapping.

A node fed lists or blockers (see :mod:`engine.lists` for the rules) is called once
per element: :func:`plan_calls` gives each call's inputs, :func:`merge_calls` one
output tuple from the calls' results.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.expansion import ExpansionError
from engine.lists import (
    ExecutionBlocker,
    NotReturned,
    ValueList,
    as_lists,
    blocker_in,
    calls,
    merge_outputs,
    merge_ui,
)
from engine.node import INT64_MAX, INT64_MIN, Node, NodeResult, Output
from engine.validation import check_constant, linked_spec

if TYPE_CHECKING:
    from engine.environment import Environment
    from engine.validation import ValidatedNode


@dataclass(frozen=True)
class ClassInfo:
    """What the work-list needs of a node class, computed once per class."""

    lazy: frozenset[str]
    raw: frozenset[str]
    is_async: bool
    input_is_list: bool
    output_is_list: tuple[bool, ...]
    any_list_out: bool
    #: the string inputs (file names, prompts): a fingerprint reads their linked values too
    text: frozenset[str] = frozenset()


_INFO: dict[type, ClassInfo] = {}


def class_info(cls: type[Node]) -> ClassInfo:
    info = _INFO.get(cls)
    if info is None:
        specs = cls.INPUT_SPECS.values()
        info = _INFO[cls] = ClassInfo(
            frozenset(s.name for s in specs if s.lazy),
            frozenset(s.name for s in specs if s.raw_link),
            inspect.iscoroutinefunction(cls.execute),
            bool(getattr(cls, "INPUT_IS_LIST", False)),
            tuple(o.is_list for o in cls.OUTPUTS),
            any(o.is_list for o in cls.OUTPUTS),
            frozenset(s.name for s in specs if s.type in ("STRING", "COMBO")))
    return info


def _normalize(returned: Any, expected: int, type_id: str, extra: bool = False
               ) -> tuple[tuple[Any, ...], dict[str, Any] | None, dict[str, Any] | None]:
    """``(outputs, ui, expand)`` from what ``execute`` returned (``extra``: the class's
    ``EXTRA_OUTPUTS``, so more than ``expected`` is fine)."""
    expand = None
    if isinstance(returned, NodeResult):
        outputs, ui, expand = tuple(returned.outputs), returned.ui, returned.expand
    elif returned is None:
        outputs, ui = (), None
    else:
        outputs, ui = tuple(returned), None
    if len(outputs) != expected and not (extra and len(outputs) > expected):
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
    if mapped and (advice := getattr(node.cls, "ONE_CALL_ONLY", "")):
        # a node whose one call must see everything (a training run): N calls on N items
        # would be N runs on one item each
        lists = sorted(k for k, v in kwargs.items() if isinstance(v, ValueList))
        raise ValueError(f"{node.cls.DISPLAY_NAME or node.cls.TYPE} is linked to a list "
                         f"({', '.join(lists)}: {len(plan)} items) and would run once per "
                         f"item; {advice}")
    out: list[dict[str, Any] | None] = []
    for i, call in enumerate(plan):
        blocker = blocker_in(call)
        if blocker is not None:
            if blocker.message is not None:
                report_block(blocker.message)
            out.append(None)
            continue
        if not input_is_list:
            for name in node.links:
                spec = linked_spec(node.cls, name, node.constants)
                value = call[name]
                if spec is not None and spec.is_widget and value is not None and name not in raw \
                        and not spec.accepts_as_is(value):
                    call[name], issue = check_constant(spec, value, env)
                    if issue is not None:
                        where = f"list item {i}: " if mapped else ""
                        raise ValueError(where + issue.message)
        out.append(call)
    return out


def merge_calls(cls: type[Node], output_is_list: tuple[bool, ...], returned: list[Any]
                ) -> tuple[tuple[Any, ...] | PerCall, dict[str, Any] | None,
                           dict[str, Any] | None]:
    """``(outputs, ui, expand)`` from what each call returned (None: blocked).

    A call may expand (node expansion per list element): ``expand`` is then the
    calls' subgraphs merged and ``outputs`` a :class:`PerCall`."""
    count = len(cls.OUTPUTS)
    results: list[tuple[Any, ...]] = []
    uis: list[dict[str, Any]] = []
    graph: dict[str, Any] | None = None
    expanded: list[bool] = []
    for item in returned:
        if item is None:  # blocked: so is every output of this call
            results.append((ExecutionBlocker(None),) * count)
            expanded.append(False)
            continue
        outputs, ui, expand = _normalize(item, count, cls.TYPE, cls.EXTRA_OUTPUTS)
        if expand is not None:
            if len(returned) == 1:
                return outputs, ui, expand
            graph = _merge_graphs(cls, graph, expand)
        else:
            _check_outputs(cls, outputs)
        results.append(outputs)
        expanded.append(expand is not None)
        if ui:
            uis.append(ui)
    if graph is not None:  # merged by the list rules once the subgraphs have run
        return PerCall(results, expanded), merge_ui(uis), graph
    if not results:
        return tuple(ValueList() for _ in range(count)), None, None
    return merge_outputs(results, output_is_list), merge_ui(uis), None


class PerCall(list):  # type: ignore[type-arg]
    """Each call's outputs of a node that expanded while mapped over a list: links
    into the merged subgraph or values (blockers for a blocked call). The run
    resolves the links of the calls that expanded (``expanded[i]``; another call's
    outputs are values, even one shaped like a link) once the subgraph has run,
    then merges them by the list rules (:func:`engine.lists.merge_outputs`), in
    call order."""

    def __init__(self, calls: list[tuple[Any, ...]], expanded: list[bool]):
        super().__init__(calls)
        self.expanded = expanded


def _merge_graphs(cls: type[Node], merged: dict[str, Any] | None, graph: Any
                  ) -> dict[str, Any]:
    """One subgraph from each call's (their ids are allocated by the run, so distinct)."""
    if not isinstance(graph, dict):
        raise ExpansionError(f"{cls.TYPE}'s expansion must be a dict of nodes, got "
                             f"{type(graph).__name__}")
    if merged is None:
        return dict(graph)
    clash = merged.keys() & graph.keys()
    if clash:
        raise ExpansionError(f"{cls.TYPE} expanded per list element into the same node "
                             f"id {sorted(clash)[0]!r} twice; allocate ids from the run "
                             "(engine.expansion.Subgraph, or GraphBuilder without a fixed "
                             "prefix)")
    merged.update(graph)
    return merged


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
        if kind is ExecutionBlocker or kind is NotReturned:
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
