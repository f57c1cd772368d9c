"""Flow control: branches that are never computed, and loops.

``If`` and ``Switch`` take their branches as lazy inputs: only the chosen one is
evaluated (the others are never run, so a branch that would fail is harmless).
Loops are node expansion (:mod:`engine.expansion`): a loop's body is what lies
between its Start and End nodes; while the loop goes on, End returns a copy of the
body and of itself, the copy's Start fed this iteration's value, to run in its
place. Each copy is cached by signature like any node, so re-running a loop after
raising its count runs only the new iterations.

    start = ForLoopStart(value=x)            # -> flow, index, value
    body  = ...(start.value, start.index)    # any nodes
    end   = ForLoopEnd(flow=start.flow, value=body, count=10)  # -> the final value
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from engine import ExecutionContext, Input, Node, NodeResult, Output
from engine.expansion import Subgraph
from engine.workflow import is_link

MAX_ITERATIONS = 1_000_000
FLOW = "FLOW_CONTROL"


class _BooleanBranch(Node):
    """One of two lazy inputs, chosen by a boolean; only that one is computed."""

    BRANCH_INPUTS: ClassVar[tuple[str, str, str]]  # (the boolean, when true, when false)

    def _chosen(self) -> str:
        flag, on_true, on_false = self.BRANCH_INPUTS
        return on_true if getattr(self, flag) else on_false

    def check_lazy_status(self, ctx: ExecutionContext) -> list[str]:
        return [self._chosen()]

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        return (getattr(self, self._chosen()),)


class If(_BooleanBranch):
    """``if_true`` when ``condition`` holds, else ``if_false``; only that branch runs."""

    TYPE = "If"
    CATEGORY = "utils/flow"
    OUTPUTS = (Output("*", "value"),)
    BRANCH_INPUTS = ("condition", "if_true", "if_false")

    condition: bool = Input(True)
    if_true: Any = Input(type="*", optional=True, lazy=True)
    if_false: Any = Input(type="*", optional=True, lazy=True)


class Switch(Node):
    """Input number ``select`` (0-3); only the selected input is computed."""

    TYPE = "Switch"
    CATEGORY = "utils/flow"
    OUTPUTS = (Output("*", "value"),)

    select: int = Input(0, min=0, max=3)
    input_0: Any = Input(type="*", optional=True, lazy=True)
    input_1: Any = Input(type="*", optional=True, lazy=True)
    input_2: Any = Input(type="*", optional=True, lazy=True)
    input_3: Any = Input(type="*", optional=True, lazy=True)

    def check_lazy_status(self, ctx: ExecutionContext) -> list[str]:
        return [f"input_{self.select}"]

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        return (getattr(self, f"input_{self.select}"),)


class ComfySwitchNode(_BooleanBranch):
    """ComfyUI's Switch (``ComfySwitchNode``): ``on_true`` when ``switch`` is on, else
    ``on_false``; only the chosen input is computed. Connect both, of the same type."""

    TYPE = "ComfySwitchNode"
    DISPLAY_NAME = "Switch (boolean)"
    CATEGORY = "logic"
    OUTPUTS = (Output("*", "output"),)
    BRANCH_INPUTS = ("switch", "on_true", "on_false")

    switch: bool = Input(False)
    on_false: Any = Input(type="*", optional=True, lazy=True)
    on_true: Any = Input(type="*", optional=True, lazy=True)

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        (chosen,) = super().execute(ctx)
        if chosen is None:
            raise ValueError(f"Switch is {'on' if self.switch else 'off'} but "
                             f"{self._chosen()} is not connected")
        return (chosen,)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, "==": operator.eq,
    "!=": operator.ne, ">": operator.gt, ">=": operator.ge,
}


class IntCompare(Node):
    """``a <op> b`` as a BOOLEAN, e.g. a while loop's condition."""

    TYPE = "IntCompare"
    CATEGORY = "utils/math"
    OUTPUTS = (Output("BOOLEAN"),)

    a: int = Input(0)
    b: int = Input(0)
    op: str = Input("<", choices=tuple(_COMPARE))

    def execute(self, ctx: ExecutionContext) -> tuple[bool]:
        return (_COMPARE[self.op](self.a, self.b),)


@dataclass(frozen=True)
class LoopFlow:
    """What a loop's Start tells its End: which node starts the body, and the
    iteration number."""

    start: str
    index: int

    def __cache_nbytes__(self) -> dict[str, int]:
        """Next to nothing (the cache's fast path: a loop passes one per iteration)."""
        return {"cpu": len(self.start)}


class _LoopStart(Node):
    OUTPUTS = (Output(FLOW, "flow"), Output("*", "value"), Output("INT", "index"))

    value: Any = Input(type="*", optional=True)
    index: int = Input(0, min=0, max=MAX_ITERATIONS,
                       description="iteration number (set by the loop's own copies)")

    def execute(self, ctx: ExecutionContext) -> tuple[LoopFlow, Any, int]:
        return LoopFlow(ctx.node_id, self.index), self.value, self.index


class ForLoopStart(_LoopStart):
    """Start of a for loop's body: the value the body starts from, and the index."""

    TYPE = "ForLoopStart"
    CATEGORY = "utils/flow"


class WhileLoopStart(_LoopStart):
    """Start of a while loop's body: the value the body starts from, and the index."""

    TYPE = "WhileLoopStart"
    CATEGORY = "utils/flow"


class ForLoopEnd(Node):
    """End of a for loop: runs the body ``count`` times, each time on the value the
    previous time produced, and outputs the last one."""

    TYPE = "ForLoopEnd"
    CATEGORY = "utils/flow"
    OUTPUTS = (Output("*", "value"),)

    flow: Any = Input(type=FLOW)
    value: Any = Input(type="*", optional=True)
    count: int = Input(1, min=1, max=MAX_ITERATIONS)

    def execute(self, ctx: ExecutionContext) -> tuple[Any] | NodeResult:
        flow = _flow(self.flow, self.TYPE)
        if flow.index + 1 >= self.count:
            return (self.value,)
        return next_iteration(ctx, flow)


class WhileLoopEnd(Node):
    """End of a while loop: runs the body again while ``condition`` (computed by the
    body) holds, at most ``max_iterations`` times, and outputs the last value."""

    TYPE = "WhileLoopEnd"
    CATEGORY = "utils/flow"
    OUTPUTS = (Output("*", "value"),)

    flow: Any = Input(type=FLOW)
    condition: bool = Input(type="BOOLEAN", force_input=True)
    value: Any = Input(type="*", optional=True)
    max_iterations: int = Input(10_000, min=1, max=MAX_ITERATIONS)

    def execute(self, ctx: ExecutionContext) -> tuple[Any] | NodeResult:
        flow = _flow(self.flow, self.TYPE)
        if not self.condition:
            return (self.value,)
        if flow.index + 1 >= self.max_iterations:
            raise ValueError(f"WhileLoopEnd: the condition still holds after "
                             f"{self.max_iterations} iterations; raise max_iterations or "
                             "check the condition")
        return next_iteration(ctx, flow)


def _flow(value: Any, node_type: str) -> LoopFlow:
    if not isinstance(value, LoopFlow):
        raise ValueError(f"{node_type}: 'flow' must come from a loop Start node's flow output")
    return value


def next_iteration(ctx: ExecutionContext, flow: LoopFlow) -> NodeResult:
    """A copy of the body between ``flow.start`` and this End node, and of this End,
    whose Start gets this iteration's value; this End's output is the copy's."""
    graph = ctx.graph
    body = graph.between(flow.start, ctx.node_id)
    if not body:
        raise ValueError(f"loop end {ctx.node_id} is not downstream of its start "
                         f"{flow.start}")
    sub = Subgraph(ctx)
    # one pass per node and input, straight into the copies' inputs: this runs once
    # per iteration (links come from get_node as [id, index] lists)
    originals = {node_id: graph.get_node(node_id) for node_id in sorted(body)}
    clones = {}
    for node_id, original in originals.items():
        clone = clones[node_id] = sub.node(original["class_type"])
        clone.display_id = graph.get_display_node_id(node_id)
    for node_id, original in originals.items():
        inputs = clones[node_id].inputs
        for name, value in original["inputs"].items():
            if value is None:
                continue
            if isinstance(value, list) and is_link(value) and value[0] in clones:
                value = [clones[value[0]].id, value[1]]
            inputs[name] = value
    start, end = clones.get(flow.start), clones.get(ctx.node_id)
    assert start is not None and end is not None
    start.set_input("index", flow.index + 1)
    # the next iteration starts from what feeds this End: this iteration's result
    start.set_input("value", originals[ctx.node_id]["inputs"].get("value"))
    return NodeResult((end.out(0),), expand=sub.finalize())


NODE_CLASSES = (If, Switch, ComfySwitchNode, IntCompare, ForLoopStart, ForLoopEnd, WhileLoopStart,
                WhileLoopEnd)
