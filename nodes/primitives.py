"""Primitive values and small arithmetic: constants to feed widget inputs, and a
text display output node."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from engine import ExecutionContext, Input, Node, NodeResult, Output
from engine.node import INT64_MAX, INT64_MIN

MAX_STRING_CHARS = 1_000_000
"""The most characters a text node takes in or gives out (a chain of text nodes must not
grow a string without bound)."""


def check_text(node: str, name: str, value: Any, limit: int = MAX_STRING_CHARS) -> str:
    """``value`` when it is a string of at most ``limit`` characters, else a ValueError
    that names the node and the input."""
    if not isinstance(value, str):
        raise ValueError(f"{node}: {name} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{node}: {name} is {len(value)} characters long; the most is {limit}")
    return value


class PrimitiveInt(Node):
    """An integer constant."""

    TYPE = "PrimitiveInt"
    DISPLAY_NAME = "Int"
    CATEGORY = "utils/primitive"
    OUTPUTS = (Output("INT"),)

    # ComfyUI's Int has "control after generate" (its files save [value, "increment"])
    value: int = Input(0, min=INT64_MIN, max=INT64_MAX, control_after_generate=True)

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


class PrimitiveStringMultiline(Node):
    """A text constant typed in a multi-line box (ComfyUI's String (Multiline)); at most
    10⁶ characters."""

    TYPE = "PrimitiveStringMultiline"
    DISPLAY_NAME = "String (Multiline)"
    CATEGORY = "utils/primitive"
    OUTPUTS = (Output("STRING"),)

    value: str = Input("", multiline=True)

    def execute(self, ctx: ExecutionContext) -> tuple[str]:
        return (check_text(self.TYPE, "value", self.value),)


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
    """``a <op> b`` on 64-bit integers; a result outside 64 bits is an error.

    Operands are 64-bit (the engine bounds INT inputs), so every op here costs at
    most a 128-bit multiply before the check; an op whose result can grow without
    bound (a power) would have to refuse by ``bit_length`` estimate before computing.
    """

    TYPE = "IntMath"
    DISPLAY_NAME = "Int Math"
    CATEGORY = "utils/math"
    OUTPUTS = (Output("INT"),)

    a: int = Input(0)
    b: int = Input(0)
    op: str = Input("add", choices=tuple(_INT_OPS))

    def execute(self, ctx: ExecutionContext) -> tuple[int]:
        a, b = self.a, self.b
        if self.op in ("floor_divide", "modulo") and b == 0:
            raise ValueError(f"IntMath: {self.op} by zero")
        for name, value in (("a", a), ("b", b)):
            # Linked values are checked by the executor too; this keeps the node safe
            # when it is constructed directly.
            if not isinstance(value, int) or not INT64_MIN <= value <= INT64_MAX:
                raise ValueError(f"IntMath: {name} must be a 64-bit integer")
        result = _INT_OPS[self.op](a, b)
        if not INT64_MIN <= result <= INT64_MAX:
            raise ValueError(f"IntMath: {a} {self.op} {b} does not fit in a 64-bit integer "
                             f"(-2**63 to 2**63-1)")
        return (result,)


SHOW_MAX_CHARS = 10_000


class ShowValue(Node):
    """Display any value as text in the UI (an output node)."""

    TYPE = "ShowValue"
    DISPLAY_NAME = "Show Value"
    CATEGORY = "utils"
    OUTPUT_NODE = True
    OUTPUTS = ()

    value: Any = Input(type="*")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        text = str(self.value)
        if len(text) > SHOW_MAX_CHARS:  # a UI label, stored in the history: keep it small
            text = text[:SHOW_MAX_CHARS] + f"… ({len(text) - SHOW_MAX_CHARS} more characters)"
        return NodeResult((), {"text": [text]})


def _plain_text(value: Any) -> str:
    try:
        return str(value)
    except RecursionError:  # lists in lists thousands deep: json and str both recurse
        return f"({type(value).__name__} nested too deeply to show)"


class PreviewAny(Node):
    """ComfyUI's Preview Any: show any value as text (lists and dicts as JSON)."""

    TYPE = "PreviewAny"
    DISPLAY_NAME = "Preview Any"
    CATEGORY = "utils"
    OUTPUT_NODE = True
    OUTPUTS = ()

    source: Any = Input(type="*")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        import json

        value = self.source
        try:
            text = json.dumps(value, indent=4) if isinstance(value, dict | list) else str(value)
        except (TypeError, ValueError, RecursionError):  # tensors, handles, deep nesting...
            text = _plain_text(value)
        return ShowValue(value=text).execute(ctx)


class StringConcatenate(Node):
    """Join two strings with a delimiter between them (ComfyUI's node)."""

    TYPE = "StringConcatenate"
    DISPLAY_NAME = "Concatenate"
    CATEGORY = "utils/string"
    OUTPUTS = (Output("STRING"),)

    string_a: str = Input("", multiline=True)
    string_b: str = Input("", multiline=True)
    delimiter: str = Input("", description="Put between the two (e.g. ', ')")

    def execute(self, ctx: ExecutionContext) -> tuple[str]:
        size = len(self.string_a) + len(self.delimiter) + len(self.string_b)
        if size > MAX_STRING_CHARS:  # a chain of these doubles a string at every link
            raise ValueError(f"the joined string would be {size} characters; the most is "
                             f"{MAX_STRING_CHARS}")
        return (self.delimiter.join((self.string_a, self.string_b)),)


#: ResolutionSelector's aspect ratios (ComfyUI's names and ratios)
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1 (Square)": (1, 1), "3:2 (Photo)": (3, 2), "4:3 (Standard)": (4, 3),
    "16:9 (Widescreen)": (16, 9), "21:9 (Ultrawide)": (21, 9),
    "2:3 (Portrait Photo)": (2, 3), "3:4 (Portrait Standard)": (3, 4),
    "9:16 (Portrait Widescreen)": (9, 16),
}


class ResolutionSelector(Node):
    """Width and height from an aspect ratio and a size in megapixels (1.0 ≈ 1024²),
    each side a multiple of ``multiple`` and at least ``minimum`` (ComfyUI's node): feed
    them to Empty Latent Image. For the default model (64 px) use about 0.004 MP with
    ``minimum`` 32."""

    TYPE = "ResolutionSelector"
    DISPLAY_NAME = "Resolution Selector"
    CATEGORY = "utils"
    OUTPUTS = (Output("INT", "width"), Output("INT", "height"))

    aspect_ratio: str = Input("1:1 (Square)", choices=tuple(ASPECT_RATIOS))
    megapixels: float = Input(1.0, min=0.001, max=16.0, step=0.1)
    multiple: int = Input(8, min=4, max=128, step=4)
    minimum: int = Input(256, min=32, max=4096, step=32)

    def execute(self, ctx: ExecutionContext) -> tuple[int, int]:
        w_ratio, h_ratio = ASPECT_RATIOS[self.aspect_ratio]
        scale = math.sqrt(self.megapixels * 1024 * 1024 / (w_ratio * h_ratio))
        width = max(round(w_ratio * scale / self.multiple), 1) * self.multiple
        height = max(round(h_ratio * scale / self.multiple), 1) * self.multiple
        if width < self.minimum or height < self.minimum:
            # the smallest k with ratio·k ≥ minimum on both sides and both multiples
            step_w = self.multiple // math.gcd(w_ratio, self.multiple)
            step_h = self.multiple // math.gcd(h_ratio, self.multiple)
            k_step = math.lcm(step_w, step_h)
            k = math.ceil(max(self.minimum / w_ratio, self.minimum / h_ratio) / k_step) * k_step
            width, height = w_ratio * k, h_ratio * k
        return width, height


NODE_CLASSES = (PrimitiveInt, PrimitiveFloat, PrimitiveString, PrimitiveStringMultiline,
                PrimitiveBoolean, IntMath, ShowValue, PreviewAny, StringConcatenate,
                ResolutionSelector)
