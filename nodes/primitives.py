"""Primitive values and small arithmetic: constants to feed widget inputs, and a
text display output node."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from engine import ExecutionContext, Input, Node, NodeResult, Output


class PrimitiveInt(Node):
    """An integer constant."""

    TYPE = "PrimitiveInt"
    DISPLAY_NAME = "Int"
    CATEGORY = "utils/primitive"
    OUTPUTS = (Output("INT"),)

    value: int = Input(0, min=-(2**63), max=2**63 - 1)

    def execute(self, ctx: ExecutionContext) -> tuple[int]:
        return (self.value,)


class PrimitiveFloat(Node):
    """A floating-point constant."""

    TYPE = "PrimitiveFloat"
    DISPLAY_NAME = "Float"
    CATEGORY = "utils/primitive"
    OUTPUTS = (Output("FLOAT"),)

    value: float = Input(0.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[float]:
        return (self.value,)


class PrimitiveString(Node):
    """A text constant."""

    TYPE = "PrimitiveString"
    DISPLAY_NAME = "String"
    CATEGORY = "utils/primitive"
    OUTPUTS = (Output("STRING"),)

    value: str = Input("", multiline=True)

    def execute(self, ctx: ExecutionContext) -> tuple[str]:
        return (self.value,)


class PrimitiveBoolean(Node):
    """A true/false constant."""

    TYPE = "PrimitiveBoolean"
    DISPLAY_NAME = "Boolean"
    CATEGORY = "utils/primitive"
    OUTPUTS = (Output("BOOLEAN"),)

    value: bool = Input(False)

    def execute(self, ctx: ExecutionContext) -> tuple[bool]:
        return (self.value,)


_INT_OPS: dict[str, Callable[[int, int], int]] = {
    "add": operator.add,
    "subtract": operator.sub,
    "multiply": operator.mul,
    "floor_divide": operator.floordiv,
    "modulo": operator.mod,
    "min": min,
    "max": max,
}


class IntMath(Node):
    """``a <op> b`` on integers."""

    TYPE = "IntMath"
    DISPLAY_NAME = "Int Math"
    CATEGORY = "utils/math"
    OUTPUTS = (Output("INT"),)

    a: int = Input(0)
    b: int = Input(0)
    op: str = Input("add", choices=tuple(_INT_OPS))

    def execute(self, ctx: ExecutionContext) -> tuple[int]:
        if self.op in ("floor_divide", "modulo") and self.b == 0:
            raise ValueError(f"IntMath: {self.op} by zero")
        return (_INT_OPS[self.op](self.a, self.b),)


class ShowValue(Node):
    """Display any value as text in the UI (an output node)."""

    TYPE = "ShowValue"
    DISPLAY_NAME = "Show Value"
    CATEGORY = "utils"
    OUTPUT_NODE = True
    OUTPUTS = ()

    value: Any = Input(type="*")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        return NodeResult((), {"text": [str(self.value)]})


NODE_CLASSES = (PrimitiveInt, PrimitiveFloat, PrimitiveString, PrimitiveBoolean, IntMath,
                ShowValue)
