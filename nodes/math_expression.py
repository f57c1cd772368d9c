"""Math Expression (ComfyUI's ``ComfyMathExpression``): a formula over numbers linked in.

As in ComfyUI the expression is evaluated with ``simpleeval`` (no Python ``eval``): the
linked inputs ``a``, ``b``, ... ``z`` are its variables (``values`` is the list of them
all), with arithmetic, comparisons, ``x if c else y`` and the functions of
:data:`FUNCTIONS`. On top of simpleeval's guards the evaluator here bounds everything a
hostile expression could use to hang or fill the worker: the expression's length and
nesting, the size of every integer it makes (checked before a power, product or shift is
computed), string tricks (operators take numbers only; no f-strings, no attributes) and,
as a last line, the time it runs.
"""

from __future__ import annotations

import ast
import math
import string
import time
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

from simpleeval import (
    MAX_SHIFT,
    InvalidExpression,
    SimpleEval,
    safe_lshift,
    safe_power,
    safe_rshift,
)

from engine import Environment, ExecutionContext, Input, Output
from engine.autogrow import autogrow
from engine.node import NamedInputsNode, input_spec
from nodes.frontend_widgets import frontend_widget

GROUP = "values"
NAMES = tuple(string.ascii_lowercase)  # ComfyUI's variable names, one input each
INPUT_TYPE = "FLOAT,INT,BOOLEAN"  # ComfyUI's MultiType: a socket for any of the three
MAX_EXPRESSION_CHARS = 10_000
MAX_DEPTH = 100  # nesting levels of the parsed expression (a + b + c nests one per term)
MAX_INT_BITS = 14_000  # any integer the expression makes (10**4000 is 13,288 bits)
MAX_EXPONENT = 4000  # pow()'s exponent, ComfyUI's cap (** keeps simpleeval's 4,000,000)
TIME_LIMIT_S = 2.0
_SHOWN = 80  # characters of the expression quoted in messages


class ExpressionError(ValueError):
    """The expression cannot be evaluated; the message says why."""


def _is_number(value: Any) -> bool:
    return isinstance(value, bool | int | float)


def _number(value: Any, what: str) -> Any:
    if not _is_number(value):
        raise ExpressionError(f"{what} takes numbers, not {type(value).__name__}")
    return value


def _bounded(value: Any) -> Any:
    """``value``, unless it is an integer beyond :data:`MAX_INT_BITS` or not real."""
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionError(f"an integer in the expression has {value.bit_length()} bits, "
                              f"more than the {MAX_INT_BITS} allowed")
    if isinstance(value, complex):
        raise ExpressionError("the expression makes a complex number (e.g. a fractional "
                              "power of a negative number); only real numbers are allowed")
    return value


def _int_bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _check_power(base: Any, exponent: Any) -> None:
    """Refuse an integer power whose result would exceed :data:`MAX_INT_BITS`, before
    computing it (a float power overflows quickly by itself)."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 \
            and abs(base) > 1 and exponent * math.log2(abs(base)) > MAX_INT_BITS:
        raise ExpressionError(f"{_short_number(base)} ** {exponent} would have about "
                              f"{int(exponent * math.log2(abs(base)))} bits, more than the "
                              f"{MAX_INT_BITS} allowed")


def _short_number(value: Any) -> str:
    return f"<{value.bit_length()}-bit integer>" if _int_bits(value) > 64 else repr(value)


def _pow_operator(base: Any, exponent: Any) -> Any:
    _number(base, "**"), _number(exponent, "**")
    _check_power(base, exponent)
    return safe_power(base, exponent)  # simpleeval's own limit: |base|, |exp| <= 4,000,000


def _mult(a: Any, b: Any) -> Any:
    _number(a, "*"), _number(b, "*")
    if _int_bits(a) + _int_bits(b) > MAX_INT_BITS + 1:
        raise ExpressionError(f"the product would have more than {MAX_INT_BITS} bits")
    return a * b


def _shift(shift: Callable[[Any, Any], Any], symbol: str) -> Callable[[Any, Any], Any]:
    def run(a: Any, b: Any) -> Any:
        _number(a, symbol), _number(b, symbol)
        if isinstance(b, int) and abs(b) > MAX_SHIFT:
            raise ExpressionError(f"a shift by {_short_number(b)} is beyond the allowed "
                                  f"{MAX_SHIFT}")
        if symbol == "<<" and isinstance(b, int) and _int_bits(a) + b > MAX_INT_BITS:
            raise ExpressionError(f"{_short_number(a)} << {b} would have more than "
                                  f"{MAX_INT_BITS} bits")
        return shift(a, b)  # simpleeval's own checks then find nothing to refuse
    return run


def _binary(fn: Callable[[Any, Any], Any], symbol: str) -> Callable[[Any, Any], Any]:
    def run(a: Any, b: Any) -> Any:
        return fn(_number(a, symbol), _number(b, symbol))
    return run


def _unary(fn: Callable[[Any], Any], symbol: str) -> Callable[[Any], Any]:
    def run(a: Any) -> Any:
        return fn(_number(a, symbol))
    return run


def _operators() -> dict[type, Callable[..., Any]]:
    import operator as op

    return {
        ast.Add: _binary(op.add, "+"), ast.Sub: _binary(op.sub, "-"), ast.Mult: _mult,
        ast.Div: _binary(op.truediv, "/"), ast.FloorDiv: _binary(op.floordiv, "//"),
        ast.Mod: _binary(op.mod, "%"), ast.Pow: _pow_operator,
        ast.LShift: _shift(safe_lshift, "<<"), ast.RShift: _shift(safe_rshift, ">>"),
        ast.BitAnd: _binary(op.and_, "&"), ast.BitOr: _binary(op.or_, "|"),
        ast.BitXor: _binary(op.xor, "^"),
        ast.USub: _unary(op.neg, "-"), ast.UAdd: _unary(op.pos, "+"),
        ast.Invert: _unary(op.invert, "~"), ast.Not: op.not_,
        ast.Eq: op.eq, ast.NotEq: op.ne, ast.Gt: op.gt, ast.Lt: op.lt, ast.GtE: op.ge,
        ast.LtE: op.le,
        ast.In: lambda x, y: op.contains(y, x), ast.NotIn: lambda x, y: not op.contains(y, x),
        ast.Is: lambda x, y: x is y, ast.IsNot: lambda x, y: x is not y,
    }


def _sum(*args: Any) -> Any:
    """ComfyUI's sum: ``sum(values)`` or ``sum(a, b, c)``."""
    items = args[0] if len(args) == 1 and isinstance(args[0], list | tuple) else args
    total: Any = 0
    for item in items:
        total = _bounded(total + _number(item, "sum()"))
    return total


def _pow_function(base: Any, exponent: Any) -> Any:
    _number(base, "pow()"), _number(exponent, "pow()")
    if abs(exponent) > MAX_EXPONENT:
        raise ExpressionError(f"pow()'s exponent {_short_number(exponent)} is beyond the "
                              f"allowed {MAX_EXPONENT}")
    _check_power(base, exponent)
    return pow(base, exponent)


def _checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        return _bounded(fn(*args, **kwargs))
    run.__name__ = getattr(fn, "__name__", "function")
    return run


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sum": _sum, "min": min, "max": max, "abs": abs, "round": round, "pow": _pow_function,
    "sqrt": math.sqrt, "ceil": math.ceil, "floor": math.floor, "log": math.log,
    "log2": math.log2, "log10": math.log10, "sin": math.sin, "cos": math.cos,
    "tan": math.tan, "int": int, "float": float,
}
"""ComfyUI's functions (each result is checked like any other value)."""


class _Evaluator(SimpleEval):
    """simpleeval with the bounds of this module: no attributes, no f-strings,
    operators on numbers only, every value checked, and a deadline."""

    _BANNED: ClassVar[tuple[str, ...]] = (
        "Attribute", "JoinedStr", "FormattedValue", "Assign", "AugAssign", "Import")

    def __init__(self, names: dict[str, Any]):
        super().__init__(operators=_operators(),
                         functions={k: _checked(f) for k, f in FUNCTIONS.items()},
                         names=names)
        for banned in self._BANNED:
            node_type = getattr(ast, banned, None)
            if node_type is not None:
                self.nodes.pop(node_type, None)
        self.deadline = time.monotonic() + TIME_LIMIT_S
        self.steps = 0

    def _eval(self, node: Any) -> Any:
        self.steps += 1
        if self.steps % 32 == 0 and time.monotonic() > self.deadline:
            raise ExpressionError(f"evaluating took more than {TIME_LIMIT_S:g} s")
        return _bounded(super()._eval(node))


def parse(expression: str) -> ast.expr:
    """The expression's syntax tree, after the checks that need no values: not empty,
    at most :data:`MAX_EXPRESSION_CHARS` long and :data:`MAX_DEPTH` deep."""
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError("Expression cannot be empty.")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"the expression is {len(expression)} characters long; the "
                              f"most is {MAX_EXPRESSION_CHARS}")
    try:
        with warnings.catch_warnings():  # "invalid decimal literal" and the like: noise
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"the expression nests too deeply (at most {MAX_DEPTH} "
                              "levels)") from None
    stack = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ExpressionError(f"the expression nests more than {MAX_DEPTH} levels deep; a "
                                  "long chain such as a + b + c + ... nests one level per term "
                                  "(sum(values) does not)")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree.body


def evaluate(expression: str, variables: dict[str, Any]) -> Any:
    """The expression's value with ``variables`` (and ``values``, their list) as names.
    Every failure is an :class:`ExpressionError` (a ValueError) that quotes the
    expression and says what went wrong."""
    shown = expression if len(expression) <= _SHOWN else expression[:_SHOWN] + "..."
    try:
        body = parse(expression)
        names = {**variables, GROUP: list(variables.values())}
        return _Evaluator(names).eval(expression, previously_parsed=body)
    except ExpressionError as exc:
        raise ExpressionError(f"Math Expression {shown!r}: {exc}") from None
    except InvalidExpression as exc:
        raise ExpressionError(f"Math Expression {shown!r}: {str(exc)[:200]}") from None
    except (ArithmeticError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise ExpressionError(f"Math Expression {shown!r}: {type(exc).__name__}: "
                              f"{str(exc)[:200]}") from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"Math Expression {shown!r}: too deeply nested or too large "
                              "to evaluate") from None


def _variable(value: Any, name: str) -> Any:
    if not _is_number(value):
        raise ValueError(f"Math Expression: input {name} must be a number (FLOAT, INT or "
                         f"BOOLEAN), got {type(value).__name__}")
    return _bounded(value)


class ComfyMathExpression(NamedInputsNode):
    """Compute a number from the inputs linked in: ``a``, ``b``, ... ``z`` are the
    inputs (numbers or booleans; link one more to get the next), ``values`` their list.
    E.g. ``a * 2 + 1``, ``round(a / 8) * 8`` (a multiple of 8), ``max(values)``,
    ``sum(values) / 3``, ``1 if a > b else 0``, ``a > 0 and b > 0``. Functions: sum,
    min, max, abs, round, pow, sqrt, ceil, floor, log, log2, log10, sin, cos, tan, int,
    float. The result comes out as FLOAT, INT (truncated toward 0) and BOOL (non-zero)."""

    TYPE = "ComfyMathExpression"
    DISPLAY_NAME = "Math Expression"
    CATEGORY = "utils/math"
    OUTPUTS = (Output("FLOAT", "FLOAT"), Output("INT", "INT", wide=True),
               Output("BOOLEAN", "BOOL"))

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        try:
            parse(inputs.get("expression") or "")
        except ExpressionError as exc:
            return [("expression", f"Math Expression: {exc}")]
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[float, int, bool]:
        expression = self.inputs.get("expression")
        if not isinstance(expression, str):
            raise ValueError("Math Expression: expression must be a string")
        variables = {}
        for name in NAMES:
            value = self.inputs.get(f"{GROUP}.{name}")
            if value is not None:
                variables[name] = _variable(value, name)
        result = evaluate(expression, variables)
        if not _is_number(result):
            raise ValueError(f"Math Expression {expression[:_SHOWN]!r} must evaluate to a "
                             f"number, got {type(result).__name__}")
        try:
            as_float = float(result)
        except OverflowError:
            raise ValueError(f"Math Expression {expression[:_SHOWN]!r} gave a number too "
                             f"large for a float ({_short_number(result)})") from None
        if not math.isfinite(as_float):
            raise ValueError(f"Math Expression {expression[:_SHOWN]!r} gave a non-finite "
                             f"result: {result!r}")
        return as_float, int(result), bool(result)


def _check_variable(value: Any) -> Any:
    """A variable's value: a number or a boolean (a constant in an API prompt, as ComfyUI
    takes one, or a linked output)."""
    if not _is_number(value):
        raise ValueError(f"must be a number or a boolean, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return _bounded(value)


# The variables are sockets (ComfyUI's MultiType of FLOAT, INT and BOOLEAN) that, as in
# ComfyUI, also take a constant in an API prompt ("values.a": 3).
ComfyMathExpression.INPUT_SPECS = {
    "expression": input_spec("expression", str, Input(
        "a + b", multiline=True, description="e.g. a * 2 + b; a..z are the inputs")),
    # ComfyUI's Autogrow of names a..z, min 1 (a and b shown at first); the template input
    # is optional here (ComfyUI: required), so an expression may use no variable at all
    **{name: frontend_widget(spec, _check_variable) for name, spec in autogrow(
        GROUP, "value", Any, Input(type=INPUT_TYPE, optional=True), names=NAMES,
        min=1).items()},
}


NODE_CLASSES = (ComfyMathExpression,)
