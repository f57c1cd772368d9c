"""Every validation kind, reported all at once and never as a traceback."""

from __future__ import annotations

import pytest

from engine import Environment, PromptValidationError, validate_prompt
from engine.validation import to_node_errors
from tests.engine_nodes import make_registry


@pytest.fixture
def reg():
    return make_registry()


@pytest.fixture
def env(tmp_path):
    return Environment.create(tmp_path, device="cpu")


def kinds(prompt, reg, env):
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, reg, env)
    return {(i.kind, i.node_id, i.input_name) for i in info.value.issues if i.severity == "error"}


def test_valid_prompt_coerces_and_orders(reg, env):
    prompt = {
        "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": "3"}},
        "1": {"class_type": "TestSource", "inputs": {"value": 5}},
        "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}},
    }
    vp = validate_prompt(prompt, reg, env)
    assert vp.order == ["1", "2", "3"]
    assert vp.nodes["2"].constants == {"b": 3}
    assert vp.nodes["1"].constants == {"value": 5, "label": "x", "mode": "a"}  # defaults filled


@pytest.mark.parametrize("prompt", [None, [], "x", {}, 5])
def test_not_a_prompt(reg, env, prompt):
    assert kinds(prompt, reg, env) == {("invalid_prompt", None, None)}


def test_malformed_nodes(reg, env):
    prompt = {
        "1": "nope",
        "2": {"inputs": {}},
        "3": {"class_type": "TestOut", "inputs": []},
        "4": {"class_type": "TestOut", "inputs": {"value": 1}},
    }
    found = kinds(prompt, reg, env)
    assert ("invalid_prompt", "1", None) in found
    assert ("invalid_prompt", "2", None) in found
    assert ("invalid_prompt", "3", None) in found


def test_unknown_node_type(reg, env):
    prompt = {"1": {"class_type": "Nope", "inputs": {}},
              "2": {"class_type": "TestOut", "inputs": {"value": 1}}}
    assert kinds(prompt, reg, env) == {("unknown_node_type", "1", None)}


def test_missing_required_link(reg, env):
    prompt = {"1": {"class_type": "TestAdd", "inputs": {}},
              "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}
    assert kinds(prompt, reg, env) == {("missing_input", "1", "a")}


def test_bad_links(reg, env):
    prompt = {
        "1": {"class_type": "TestSource", "inputs": {}},
        "2": {"class_type": "TestAdd", "inputs": {"a": ["99", 0]}},
        "3": {"class_type": "TestAdd", "inputs": {"a": ["1", 7]}},
        "4": {"class_type": "TestAdd", "inputs": {"a": ["1", "0"]}},
        "5": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}},
        "6": {"class_type": "TestOut", "inputs": {"value": ["3", 0]}},
        "7": {"class_type": "TestOut", "inputs": {"value": ["4", 0]}},
    }
    found = kinds(prompt, reg, env)
    assert found == {("bad_link", "2", "a"), ("bad_link", "3", "a"), ("bad_link", "4", "a")}


def test_type_mismatch(reg, env):
    prompt = {"1": {"class_type": "TestSource", "inputs": {}},
              "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 1]}},  # STRING -> INT
              "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}}
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, reg, env)
    (issue,) = info.value.issues
    assert issue.kind == "type_mismatch"
    assert issue.details["expected_type"] == "INT"
    assert issue.details["received_type"] == "STRING"


def test_constant_where_link_required(reg, env):
    prompt = {"1": {"class_type": "TestSum", "inputs": {"x": 3}},
              "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}
    assert kinds(prompt, reg, env) == {("expected_link", "1", "x")}


def test_values_wrong_type_range_choices_all_reported(reg, env):
    prompt = {
        "1": {"class_type": "TestSource", "inputs": {"value": "abc", "label": 5, "mode": "c"}},
        "2": {"class_type": "TestSource", "inputs": {"value": 101}},
        "3": {"class_type": "TestSource", "inputs": {"value": -1}},
        "4": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}},
        "5": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}},
        "6": {"class_type": "TestOut", "inputs": {"value": ["3", 0]}},
    }
    found = kinds(prompt, reg, env)
    assert found == {
        ("invalid_value", "1", "value"),
        ("invalid_value", "1", "label"),
        ("not_in_choices", "1", "mode"),
        ("out_of_range", "2", "value"),
        ("out_of_range", "3", "value"),
    }


def test_cycle(reg, env):
    prompt = {"1": {"class_type": "TestAdd", "inputs": {"a": ["2", 0]}},
              "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0]}},
              "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}}
    found = kinds(prompt, reg, env)
    assert found == {("cycle", "1", None), ("cycle", "2", None)}


def test_self_loop(reg, env):
    prompt = {"1": {"class_type": "TestAdd", "inputs": {"a": ["1", 0]}},
              "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}
    assert kinds(prompt, reg, env) == {("cycle", "1", None)}


def test_no_output_node(reg, env):
    prompt = {"1": {"class_type": "TestSource", "inputs": {}}}
    assert kinds(prompt, reg, env) == {("no_output_node", None, None)}


def test_unknown_input_is_a_warning(reg, env):
    prompt = {"1": {"class_type": "TestOut", "inputs": {"value": 1, "extra": 2}}}
    vp = validate_prompt(prompt, reg, env)
    assert [w.kind for w in vp.warnings] == ["unknown_input"]


def test_dangling_nodes_not_validated(reg, env):
    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 500}},  # unused
              "2": {"class_type": "TestOut", "inputs": {"value": 1}}}
    assert validate_prompt(prompt, reg, env).order == ["2"]


def test_node_errors_shape(reg, env):
    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 500}},
              "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, reg, env)
    errors = to_node_errors(info.value.issues)
    assert errors["1"]["class_type"] == "TestSource"
    assert errors["1"]["errors"][0]["type"] == "out_of_range"
    assert errors["1"]["errors"][0]["extra_info"]["input_name"] == "value"
