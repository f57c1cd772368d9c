"""Math Expression (``ComfyMathExpression``, nodes/math_expression.py): results against hand
computations, its autogrow inputs through real prompts, and hostile expressions, which must
all end in a clear error, fast."""

from __future__ import annotations

import contextlib
import math
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import PromptValidationError
from engine.session import Session
from nodes import math_expression
from nodes.math_expression import ComfyMathExpression, ExpressionError, evaluate
from tests.graph_nodes import registry_with_capture, run_error

VARS = {"a": 6, "b": 2.5, "c": True}


@pytest.mark.parametrize(("expression", "expected"), [
    ("a + b", 8.5),
    ("a * 2 + 1", 13),
    ("a / 4", 1.5),
    ("a // 4", 1),
    ("a % 4", 2),
    ("-a ** 2", -36),
    ("round(a / 4) * 8", 16),  # round half to even, as Python (and ComfyUI)
    ("round(b)", 2),
    ("sum(values)", 9.5),
    ("sum(a, b, 1)", 9.5),
    ("max(values)", 6),
    ("min(a, b)", 2.5),
    ("pow(a, 3)", 216),
    ("sqrt(16) + abs(-b)", 6.5),
    ("ceil(b) + floor(b)", 5),
    ("log2(8) + log10(100) + log(1)", 5.0),
    ("sin(0) + cos(0)", 1.0),
    ("1 if a > b else 0", 1),
    ("a > b and c", True),
    ("not c", False),
    ("values[1] * 2", 5.0),
    ("c + c", 2),
    ("int(b) + float(a)", 8.0),
    ("a & 3 | 8", 10),
    ("1 << 10", 1024),
    ("2 in values", False),
    ("9 ** 0.5", 3.0),
    # from a ComfyUI video template: frames for 24 fps, 1 more than a multiple of 17
    ("max(5, round(a * 24)) + (5 - (max(5, round(a * 24)) % 17)) % 17", 158),
])
def test_results_match_hand_computation(expression, expected):
    result = evaluate(expression, VARS)
    assert result == expected and type(result) is type(expected)


def prompt(expression: str, **links) -> dict:
    """Math Expression with constants linked in (``a=("PrimitiveInt", 3)``) and each
    output shown by a Preview Any."""
    nodes = {"m": {"class_type": "ComfyMathExpression", "inputs": {"expression": expression}}}
    for name, (kind, value) in links.items():
        nodes[name] = {"class_type": kind, "inputs": {"value": value}}
        nodes["m"]["inputs"][f"values.{name}"] = [name, 0]
    for k in range(3):
        nodes[f"show{k}"] = {"class_type": "PreviewAny", "inputs": {"source": ["m", k]}}
    return nodes


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    registry = registry_with_capture()
    registry.setups.clear()  # no models needed: skip building the built-in ones
    return Session(tmp_path_factory.mktemp("math"), device="cpu", registry=registry)


def outputs(session, nodes: dict) -> tuple[str, str, str]:
    result = session.run(nodes)
    assert result.ok, result.run.error
    return tuple(result.run.outputs[f"show{k}"]["text"][0] for k in range(3))


def test_linked_inputs_are_the_variables(session):
    assert outputs(session, prompt("a * b - c", a=("PrimitiveInt", 3),
                                   b=("PrimitiveFloat", -2.5),
                                   c=("PrimitiveBoolean", True))) == ("-8.5", "-8", "True")
    # INT truncates toward 0 and BOOL is "non-zero", as ComfyUI's int() and bool()
    assert outputs(session, prompt("a / 4", a=("PrimitiveInt", -10))) == ("-2.5", "-2", "True")
    assert outputs(session, prompt("a - a", a=("PrimitiveInt", 7))) == ("0.0", "0", "False")
    # INT is not cut to 64 bits (ComfyUI's is a Python int): a 64-bit input then refuses it
    assert outputs(session, prompt("2 ** 70", a=("PrimitiveInt", 0)))[1] == str(2**70)
    nodes = prompt("2 ** 70", a=("PrimitiveInt", 0))
    nodes["int"] = {"class_type": "PrimitiveInt", "inputs": {"value": ["m", 1]}}
    nodes["show3"] = {"class_type": "PreviewAny", "inputs": {"source": ["int", 0]}}
    assert "value" in run_error(session, nodes)


def test_schema_is_comfyuis_autogrow(session):
    schema = ComfyMathExpression.schema()
    assert schema["input"]["required"]["expression"] == ["STRING", {
        "default": "a + b", "multiline": True,
        "tooltip": "e.g. a * 2 + b; a..z are the inputs"}]
    # ComfyUI's Autogrow of names a..z (engine/autogrow.py); the template is optional here
    assert schema["input"]["optional"] == {}
    assert schema["input_order"] == {"required": ["expression", "values"], "optional": []}
    assert schema["input"]["required"]["values"] == ["COMFY_AUTOGROW_V3", {"template": {
        "input": {"optional": {"value": ["FLOAT,INT,BOOLEAN", {}]}},
        "names": [chr(k) for k in range(ord("a"), ord("z") + 1)], "min": 1}}]
    assert [n for n in ComfyMathExpression.INPUT_SPECS if n.startswith("values.")] == [
        f"values.{chr(k)}" for k in range(ord("a"), ord("z") + 1)]
    assert schema["output"] == ["FLOAT", "INT", "BOOLEAN"]
    assert schema["output_name"] == ["FLOAT", "INT", "BOOL"]


def validation_issues(session, nodes: dict) -> list[tuple[str, str | None, str]]:
    with pytest.raises(PromptValidationError) as info:
        session.run(nodes)
    return [(i.kind, i.input_name, i.message) for i in info.value.issues if i.severity == "error"]


def test_errors_before_and_during_the_run(session):
    for expression, words in (("", "cannot be empty"), ("a +", "syntax error"),
                              ("a" + " + a" * 200, "nests more than 100"),
                              ("1" * 10_001, "10001 characters")):
        ((kind, name, message),) = validation_issues(session, prompt(expression))
        assert (kind, name) == ("node_error", "expression") and words in message
    # the inputs are sockets, but an API prompt may give a constant, as ComfyUI takes one
    nodes = prompt("a * 2 + b")
    nodes["m"]["inputs"].update({"values.a": 3, "values.b": True})
    assert outputs(session, nodes) == ("7.0", "7", "True")
    nodes["m"]["inputs"]["values.a"] = "3"
    ((kind, name, message),) = validation_issues(session, nodes)
    assert (kind, name) == ("invalid_value", "values.a") and "must be a number" in message
    for expression, words in (("a + b", "'b' is not defined"), ("1 / 0", "ZeroDivisionError"),
                              ("10 ** 400", "too large for a float"),
                              ("1e308 * 10", "non-finite"), ("abs", "must evaluate to a number"),
                              ("values", "must evaluate to a number")):
        message = run_error(session, prompt(expression, a=("PrimitiveInt", 1)))
        assert words in message, (expression, message)


HOSTILE = [
    # attributes and dunders
    "a.__class__", "().__class__.__bases__[0].__subclasses__()", "values.append(1)",
    "a.real", "__import__('os').system('true')", "getattr(a, 'x')", "open('/etc/passwd')",
    "eval('1')", "exec('1')", "globals()", "type(a)", "(lambda: 1)()", "[x for x in values]",
    "{1: 2}", "[1, 2]", "(1, 2)", "{1}", "x := 1", "f'{a}'", "f'{a:>999999999}'",
    "'%0999999999d' % 1", "'x' * 10 ** 9", "'ab' + 'cd'", "values * 100000",
    "int('9' * 5000)", "int('9' * 4000 + '9' * 500)",
    # huge numbers
    "9 ** 9 ** 9", "2 ** 4000000", "9 ** 4000000", "(2 ** 13000) ** 2", "pow(10, 5000)",
    "pow(2, 10 ** 18)", "2 ** 13999 * 2 ** 13999", "1 << 10 ** 9", "2 ** 13000 << 10000",
    "int(1e308) * int(1e308) * int(1e308) * int(1e308) * int(1e308) * int(1e308) * int(1e308)"
    " * int(1e308) * int(1e308) * int(1e308) * int(1e308) * int(1e308) * int(1e308) * 2",
    "10 ** 4000 * 10 ** 4000", "sum(values, 10 ** 4000)", "2.0 ** 10000", "(-8) ** (1 / 3)",
    "math.factorial(100000)", "factorial(100000)", "range(10 ** 9)",
    # deep nesting and long text
    "(" * 300 + "1" + ")" * 300, "-" * 5000 + "1", "+".join(["a"] * 3000),
    "a" + "[0]" * 500, "abs(" * 200 + "1" + ")" * 200, "1" * 20_000, "1 +" * 5000 + "1",
    "not " * 1000 + "a",
    # statements
    "a = 1", "import os", "a; b", "del a", "raise SystemExit",
]


@pytest.mark.parametrize("expression", HOSTILE)
def test_hostile_expressions_are_clean_errors_fast(expression):
    start = time.monotonic()
    with pytest.raises(ExpressionError) as info:
        result = evaluate(expression, {"a": 2, "b": 3})
        if not isinstance(result, bool | int | float):  # the node refuses a non-number
            raise ExpressionError(f"not a number: {type(result).__name__}")
        if isinstance(result, float) and not math.isfinite(result):
            raise ExpressionError("not finite")
        if isinstance(result, int) and result.bit_length() > 64:
            raise ExpressionError("beyond 64 bits")
        pytest.fail(f"{expression[:60]!r} gave {result!r}")
    assert time.monotonic() - start < 5, expression[:60]  # refused, not computed for ages
    assert len(str(info.value)) < 1000


def test_every_integer_is_bounded_before_it_is_computed(monkeypatch):
    monkeypatch.setattr(math_expression, "MAX_INT_BITS", 100)
    assert evaluate("2 ** 99", {}) == 2**99
    for expression in ("2 ** 101", "2 ** 60 * 2 ** 60", "1 << 101", "pow(3, 64)",
                       "sum(values)", "int('" + "9" * 40 + "')"):
        with pytest.raises(ExpressionError, match="100"):
            evaluate(expression, {"a": 2**99, "b": 2**99})


def test_the_time_limit_stops_a_slow_evaluation(monkeypatch):
    monkeypatch.setattr(math_expression, "TIME_LIMIT_S", -1.0)  # already past
    with pytest.raises(ExpressionError, match="took more than"):
        evaluate(" + ".join(["sum(values)"] * 40), {"a": 1})


TOKENS = ["a", "b", "values", "1", "0", "2.5", "1e308", "-", "+", "*", "/", "//", "%", "**",
          "<<", ">>", "&", "|", "^", "~", "(", ")", "[", "]", ",", ":", ".", "_", "__class__",
          "'x'", "sum", "min", "max", "pow", "int", "float", "round", "sqrt", "log", " if ",
          " else ", " and ", " or ", " not ", "<", "==", "9999", "lambda", "{", "}", "="]


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=40))
def test_random_token_soup_never_escapes(tokens):
    expression = "".join(tokens)
    start = time.monotonic()
    with contextlib.suppress(ExpressionError):  # any other exception fails the test
        evaluate(expression, {"a": 7, "b": -3.5})
    assert time.monotonic() - start < 5, expression  # no blow-up


def test_random_arithmetic_agrees_with_python():
    rng = random.Random(1234)
    for _ in range(300):
        terms = [str(rng.randint(-50, 50)) for _ in range(rng.randint(1, 8))]
        ops = [rng.choice(["+", "-", "*"]) for _ in terms[1:]]
        expression = terms[0] + "".join(f" {op} ({t})" for op, t in zip(ops, terms[1:],
                                                                        strict=True))
        assert evaluate(expression, {}) == eval(expression)  # plain integer arithmetic
