"""A capture node for tests that compare a graph's float output with a reference."""

from __future__ import annotations

from typing import Any

from engine import ExecutionContext, Input, Node, NodeRegistry, NodeResult, default_registry

CAPTURED: dict[str, Any] = {}


class Capture(Node):
    """Keeps the value it receives in ``CAPTURED[key]`` (an output node)."""

    TYPE = "TestCapture"
    OUTPUT_NODE = True
    value: Any = Input(type="*")
    key: str = Input("image")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        CAPTURED[self.key] = self.value
        return NodeResult((), {"captured": [self.key]})


def registry_with_capture() -> NodeRegistry:
    reg = default_registry()
    reg.register(Capture)
    return reg
