"""Every validation kind, reported all at once and never as a traceback."""

from __future__ import annotations

import itertools
import math

import pytest

from engine import Environment, Input, Node, Output, PromptValidationError, validate_prompt
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
    assert ("missing_class_type", "2", None) in found
    assert ("invalid_prompt", "3", None) in found


def test_unknown_node_type(reg, env):
    prompt = {"1": {"class_type": "Nope", "inputs": {}},
              "2": {"class_type": "TestOut", "inputs": {"value": 1}}}
    assert kinds(prompt, reg, env) == {("unknown_node_type", "1", None)}
    from engine.validation import describe_issues

    with pytest.raises(PromptValidationError) as caught:
        validate_prompt(prompt, reg, env)
    # the node is named once ("node 1: node 1: ..." before)
    assert (describe_issues(caught.value.issues)
            == "[unknown_node_type] node 1: unknown node type 'Nope'")


def test_a_link_from_a_node_of_an_unknown_type_names_the_type(reg, env):
    """It said the source "does not exist or is invalid", and a client showing one error
    per node blamed the consumer instead of the missing pack."""
    prompt = {"1": {"class_type": "ImpactThing", "inputs": {}},
              "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "TestOut", "inputs": {"value": ["9", 0]}}}
    with pytest.raises(PromptValidationError) as caught:
        validate_prompt(prompt, reg, env)
    messages = {i.node_id: i.message for i in caught.value.issues}
    assert messages["2"] == ("input 'value' links to node '1', whose type 'ImpactThing' is "
                             "not installed here")
    assert "does not exist" in messages["3"]  # a node the prompt does not have at all


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
        # (a number for text is its text, as ComfyUI's; a mapping is no text)
        "1": {"class_type": "TestSource", "inputs": {"value": "abc", "label": {"x": 5},
                                                     "mode": "c"}},
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


def test_a_huge_cycle_is_reported_in_linear_size(reg, env):
    """Each node of a ring is on the cycle, and its message shows a real path through it,
    cut short: every node listing the whole 20 000-node ring took gigabytes."""
    n = 20_000
    prompt = {str(i): {"class_type": "TestAdd", "inputs": {"a": [str((i + 1) % n), 0]}}
              for i in range(n)}
    prompt["out"] = {"class_type": "TestOut", "inputs": {"value": ["0", 0]}}
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, reg, env)
    cycles = [i for i in info.value.issues if i.kind == "cycle"]
    assert len(cycles) == n
    assert max(len(i.message) for i in cycles) < 200
    first = cycles[0].details["cycle"]
    assert len(first) == 12 and cycles[0].details["size"] == n
    for a, b in itertools.pairwise(first):  # a path the links really take
        assert prompt[b]["inputs"]["a"][0] == a or prompt[a]["inputs"]["a"][0] == b
    assert cycles[0].message.endswith(f"... ({n} nodes)")


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


def test_an_unknown_input_names_the_missing_input_it_may_stand_for(reg, env):
    """A misspelt input would run with the missing one's default: the warning says so."""
    prompt = {"1": {"class_type": "TestSource", "inputs": {"valeu": 7, "label": "y"}},
              "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}
    vp = validate_prompt(prompt, reg, env)
    [warning] = vp.warnings
    assert warning.kind == "unknown_input" and warning.input_name == "valeu"
    assert "did you mean 'value'?" in warning.message and "default 1" in warning.message
    prompt["1"]["inputs"] = {"value": 7, "zzz": 1}  # nothing close, nothing missing
    [warning] = validate_prompt(prompt, reg, env).warnings
    assert warning.message.endswith("unknown input 'zzz' ignored")


def test_output_nodes_only_counts_output_nodes_among_the_targets(reg, env):
    """ComfyUI's partial_execution_targets: a non-output node is left out (a warning);
    with no output node left the prompt has no outputs."""
    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 5}},
              "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}
    vp = validate_prompt(prompt, reg, env, outputs=["1", "2"], output_nodes_only=True)
    assert vp.outputs == ["2"]
    assert [(w.kind, "TestSource" in w.message) for w in vp.warnings] == [
        ("no_output_node", True)]
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, reg, env, outputs=["1"], output_nodes_only=True)
    [issue] = info.value.issues
    assert issue.kind == "no_output_node" and "not an output node" in issue.message
    # the engine's own callers may still ask for any node
    assert validate_prompt(prompt, reg, env, outputs=["1"]).outputs == ["1"]


def test_dangling_nodes_not_validated(reg, env):
    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 500}},  # unused
              "2": {"class_type": "TestOut", "inputs": {"value": 1}}}
    assert validate_prompt(prompt, reg, env).order == ["2"]


def test_partial_keeps_the_outputs_no_failing_node_feeds(reg, env):
    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 500}},  # out of range
              "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 1}},
              "4": {"class_type": "TestOut", "inputs": {"value": ["3", 0]}},
              "5": {"class_type": "TestAdd", "inputs": {"a": ["6", 0]}},  # a cycle
              "6": {"class_type": "TestAdd", "inputs": {"a": ["5", 0]}},
              "7": {"class_type": "TestOut", "inputs": {"value": ["6", 0]}},
              "8": {"class_type": "TestSource", "inputs": {"value": 5, "bogus": 1}},
              "9": {"class_type": "TestOut", "inputs": {"value": ["8", 0]}}}
    assert kinds(prompt, reg, env)  # strict by default: the CLI and Session refuse it all
    vp = validate_prompt(prompt, reg, env, partial=True)
    assert vp.outputs == ["9"] and vp.order == ["8", "9"] and set(vp.nodes) == {"8", "9"}
    assert [w.node_id for w in vp.warnings] == ["8"]
    assert vp.rejected is not None
    assert {(i.kind, i.node_id) for i in vp.rejected.issues if i.severity == "error"} == {
        ("out_of_range", "1"), ("cycle", "5"), ("cycle", "6")}
    assert vp.rejected.dependent_outputs("1") == ["2", "4"]
    # nothing valid left, or an error of the whole prompt: refused as before
    del prompt["9"]
    with pytest.raises(PromptValidationError):
        validate_prompt(prompt, reg, env, partial=True)
    prompt["9"] = {"class_type": "TestOut", "inputs": {"value": 1}}
    prompt["10"] = {"class_type": "Nope", "inputs": {}}
    with pytest.raises(PromptValidationError):
        validate_prompt(prompt, reg, env, partial=True)
    assert validate_prompt({"1": prompt["9"]}, reg, env, partial=True).rejected is None


def test_node_errors_shape(reg, env):
    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 500}},
              "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, reg, env)
    errors = to_node_errors(info.value.issues)
    assert errors["1"]["class_type"] == "TestSource"
    assert errors["1"]["errors"][0]["type"] == "value_bigger_than_max"
    assert errors["1"]["errors"][0]["extra_info"]["input_config"][1]["max"] == 100
    assert errors["1"]["errors"][0]["extra_info"]["input_config"][0] == "INT"  # as ComfyUI's
    assert errors["1"]["errors"][0]["extra_info"]["input_name"] == "value"


# --- every number bounded ---------------------------------------------------------
class Stepped(Node):
    """Inputs with steps, a wide INT and a FLOAT that admits inf/NaN."""

    TYPE = "TestStepped"
    OUTPUTS = (Output("INT"),)
    size: int = Input(512, min=16, max=4096, step=8)
    free: int = Input(0, step=4)
    big: int = Input(0, wide=True)
    ratio: float = Input(1.0, min=0.0, max=10.0, step=0.1)
    loose: float = Input(0.0, allow_nonfinite=True)

    def execute(self, ctx):
        return (self.size,)


class Outputs(Node):
    """Returns what ``mode`` says, to test the executor's output checks."""

    TYPE = "TestOutputs"
    OUTPUTS = (Output("INT"), Output("FLOAT"), Output("STRING"), Output("BOOLEAN"),
               Output("INT", "wide", wide=True), Output("FLOAT", "loose", allow_nonfinite=True),
               Output("LATENT"))
    mode: str = Input("ok", choices=("ok", "bool_int", "big_int", "str_float", "nan_float",
                                     "int_string", "int_bool", "huge_int_float"))

    def execute(self, ctx):
        out = [1, 1.5, "s", True, 2**100, math.inf, object()]
        bad = {"bool_int": (0, True), "big_int": (0, 2**63), "str_float": (1, "1.5"),
               "nan_float": (1, math.nan), "int_string": (2, 5), "int_bool": (3, 1),
               "huge_int_float": (1, 10**400)}.get(self.mode)
        if bad:
            out[bad[0]] = bad[1]
        return tuple(out)


@pytest.fixture
def nreg(reg):
    reg.register(Stepped)
    reg.register(Outputs)
    return reg


def one(node_type, inputs, reg, env):
    """Validate one node feeding a ShowValue; the first error issue, or None."""
    prompt = {"1": {"class_type": node_type, "inputs": inputs},
              "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}
    try:
        validate_prompt(prompt, reg, env)
    except PromptValidationError as exc:
        return next(i for i in exc.issues if i.severity == "error")
    return None


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**400, 1e300, -1e19])
def test_int_inputs_are_64_bit_by_default(nreg, env, value):
    issue = one("IntMath", {"a": value, "b": 1}, nreg, env)
    assert issue is not None and issue.kind == "out_of_range", issue
    assert issue.input_name == "a" and "64-bit" in issue.message
    assert len(issue.message) < 300  # a 10**400 is not spelled out


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), 0, -0.0, 7.0])
def test_int_inputs_accept_the_64_bit_range(nreg, env, value):
    assert one("IntMath", {"a": value, "b": 0}, nreg, env) is None


def test_declared_bounds_win_and_wide_lifts_the_limit(nreg, env):
    # A seed declares max=2**64-1; a wide input has no implicit limit.
    assert one("TestStepped", {"big": 10**30}, nreg, env) is None
    from nodes.sampling import KSampler  # seeds declare their own range

    seed = KSampler.INPUT_SPECS["seed"]
    from engine.validation import check_constant

    assert check_constant(seed, 2**64 - 1, env)[1] is None
    assert check_constant(seed, 2**64, env)[1].kind == "out_of_range"
    assert Stepped.schema()["input"]["required"]["big"][1]["wide"] is True


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity", math.inf, -math.inf,
                                   math.nan, 10**400])
def test_float_inputs_must_be_finite(nreg, env, value):
    issue = one("PrimitiveFloat", {"value": value}, nreg, env)
    assert issue is not None and issue.kind == "invalid_value", issue
    assert issue.input_name == "value"
    import json

    json.dumps(issue.to_dict(), allow_nan=False)  # the details are strict JSON too


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", math.nan, math.inf])
def test_a_bounded_float_says_nan_is_not_finite_not_out_of_range(nreg, env, value):
    """NaN fails a bound first (NaN <= max is false): the message must still say what is
    wrong, not "should be less than or equal to 10"."""
    issue = one("TestStepped", {"ratio": value}, nreg, env)
    assert issue is not None and issue.kind == "invalid_value", issue
    assert "finite number" in issue.message and "less than" not in issue.message


def test_allow_nonfinite_admits_inf(nreg, env):
    assert one("TestStepped", {"loose": math.inf}, nreg, env) is None


@pytest.mark.parametrize(("inputs", "ok"), [
    ({"size": 16}, True), ({"size": 24}, True), ({"size": 4096}, True), ({"size": 512}, True),
    ({"size": 9 + 16}, False), ({"size": 17}, False),
    ({"free": -8}, True), ({"free": 4}, True), ({"free": 6}, False),
    ({"ratio": 7.25}, True),  # a FLOAT step is the widget's increment only (as ComfyUI)
])
def test_int_step_is_enforced(nreg, env, inputs, ok):
    issue = one("TestStepped", inputs, nreg, env)
    if ok:
        assert issue is None, issue
    else:
        assert issue is not None and issue.kind == "invalid_value"
        assert issue.details["reason"] == "step" and "nearest" in issue.message


def test_empty_latent_height_off_its_step_fails_validation_not_the_run(env):
    from nodes.latent import EmptyLatentImage

    reg = make_registry()
    reg.register(EmptyLatentImage)
    issue = one("EmptyLatentImage", {"width": 64, "height": 9}, reg, env)
    assert issue is not None and issue.input_name == "height"
    assert "8 or 16" in issue.message
    assert one("EmptyLatentImage", {"width": 64, "height": 72}, reg, env) is None


def test_huge_values_are_not_echoed_whole(nreg, env):
    issue = one("IntMath", {"a": "x" * 1_000_000, "b": 1}, nreg, env)
    assert issue.kind == "invalid_value"
    assert len(issue.message) < 500 and len(str(issue.details["received"])) < 500


def run(reg, env, prompt):
    from engine import Executor

    return Executor(reg, env).run(prompt)


def test_linked_values_at_widget_inputs_are_bounded_too(nreg, env):
    # A wide INT output (legal) may not flow into a 64-bit input.
    prompt = {"1": {"class_type": "TestOutputs", "inputs": {}},
              "2": {"class_type": "IntMath", "inputs": {"a": ["1", 4], "b": 1}},
              "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}}}
    result = run(nreg, env, prompt)
    assert result.status == "error" and result.error["node_id"] == "2"
    assert "64-bit" in result.error["exception_message"]
    prompt["2"] = {"class_type": "PrimitiveFloat", "inputs": {"value": ["1", 5]}}  # inf
    result = run(nreg, env, prompt)
    assert result.status == "error" and "finite" in result.error["exception_message"]


@pytest.mark.parametrize("mode", ["bool_int", "big_int", "str_float", "nan_float",
                                  "int_string", "int_bool", "huge_int_float"])
def test_node_outputs_must_match_their_declared_types(nreg, env, mode):
    prompt = {"1": {"class_type": "TestOutputs", "inputs": {"mode": mode}},
              "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}
    result = run(nreg, env, prompt)
    assert result.status == "error", mode
    assert result.error["node_id"] == "1" and result.error["node_type"] == "TestOutputs"
    assert "TestOutputs output" in result.error["exception_message"]


def test_declared_outputs_pass(nreg, env):
    prompt = {"1": {"class_type": "TestOutputs", "inputs": {"mode": "ok"}},
              "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 4]}}}
    assert run(nreg, env, prompt).ok  # wide INT, non-finite FLOAT and LATENT as declared


def test_chained_int_multiply_stops_at_64_bits_at_once(nreg, env):
    """F5: 29 squarings of 3 would be a 46-million-digit number; it stops at node 7."""
    import time

    prompt = {"0": {"class_type": "PrimitiveInt", "inputs": {"value": 3}}}
    for i in range(1, 30):
        prompt[str(i)] = {"class_type": "IntMath",
                          "inputs": {"a": [str(i - 1), 0], "b": [str(i - 1), 0],
                                     "op": "multiply"}}
    prompt["out"] = {"class_type": "ShowValue", "inputs": {"value": ["29", 0]}}
    start = time.perf_counter()
    result = run(nreg, env, prompt)
    assert time.perf_counter() - start < 2
    assert result.status == "error" and result.error["node_id"] == "6"  # 3**64 > 2**63
    assert "does not fit in a 64-bit integer" in result.error["exception_message"]


@pytest.mark.parametrize(("a", "op", "b"), [(2**62, "add", 2**62), (-(2**63), "floor_divide", -1),
                                            (2**32, "multiply", 2**31),
                                            (-(2**63), "subtract", 1)])
def test_int_math_refuses_results_beyond_64_bits(a, op, b):
    from nodes.primitives import IntMath

    with pytest.raises(ValueError, match="64-bit"):
        IntMath(a=a, b=b, op=op).execute(None)
    with pytest.raises(ValueError, match="64-bit"):
        IntMath.model_construct(a=10**400, b=1, op="add").execute(None)


def test_listings_leave_out_symlinks_that_leave_their_folder(tmp_path) -> None:
    """A file list (the choices of Load Image, the loaders) offers only what loading will
    accept: a symlink pointing out of its folder is not listed; one inside it is."""
    env = Environment.create(tmp_path / "base")
    inputs = env.folder("input", create=True)
    (inputs / "real.png").write_bytes(b"x")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"y")
    (inputs / "evil_link.png").symlink_to(secret)
    (inputs / "alias.png").symlink_to(inputs / "real.png")
    # a loop and a dangling link are left out, not raised (a loop once made /object_info 500)
    (inputs / "loop.png").symlink_to(inputs / "loop.png")
    (inputs / "gone.png").symlink_to(inputs / "missing.png")
    assert env.list_files("input") == ["alias.png", "real.png"]
    from engine.paths import PathError

    with pytest.raises(PathError, match="cannot be resolved"):
        env.resolve("input", "loop.png")


def test_lone_surrogate_in_text_is_refused(reg, env):
    """JSON's "\\ud800" decodes to a string no tokenizer, file name or UTF-8 encoder takes;
    refused up front rather than failing mid-run."""
    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 5, "label": "a\ud800b"}},
              "3": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, reg, env)
    (issue,) = [i for i in info.value.issues if i.severity == "error"]
    assert (issue.kind, issue.input_name) == ("invalid_value", "label")
    assert "U+D800 at character 1" in issue.message
    prompt["1"]["inputs"]["label"] = "a\U0001f600b"  # a real astral character is fine
    validate_prompt(prompt, reg, env)


@pytest.mark.parametrize("name", ["x" * 300 + ".png", "/".join(["d" * 200] * 30) + ".png",
                                  "a" * 1_000_000])
def test_a_name_the_file_system_refuses_is_a_validation_error(env, name):
    """Load Image (from Outputs) looks for unlisted names on disk: one too long for the
    file system (ENAMETOOLONG) was a 500 quoting the whole name."""
    from engine import NodeRegistry
    from nodes.image import LoadImageOutput, PreviewImage

    registry = NodeRegistry()
    registry.register(LoadImageOutput)
    registry.register(PreviewImage)
    prompt = {"1": {"class_type": "LoadImageOutput", "inputs": {"image": name}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, registry, env)
    [issue] = info.value.issues
    assert issue.kind == "not_in_choices" and len(issue.message) < 2000


def test_an_empty_target_list_says_so(reg, env):
    prompt = {"1": {"class_type": "TestOut", "inputs": {"value": 1}}}
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, reg, env, outputs=[], output_nodes_only=True)
    [issue] = info.value.issues
    assert issue.kind == "no_output_node" and "partial_execution_targets, is empty" in \
        issue.message


def test_a_missing_input_names_the_misspelt_one_given(reg, env):
    """The prompt is refused for the missing input; the hint must be in that error."""
    prompt = {"1": {"class_type": "TestOut", "inputs": {"valeu": 1}}}
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, reg, env)
    [error] = [i for i in info.value.issues if i.severity == "error"]
    assert error.kind == "missing_input" and "'valeu': misspelt?" in error.message


@pytest.mark.parametrize("name", ["value", "label", "mode"])
def test_null_for_a_required_widget_is_refused_not_defaulted(reg, env, name):
    """``"steps": null`` ran with the default 20 without a word; ComfyUI refuses it
    (int(None) -> invalid_input_type), so null is an error here too."""
    prompt = {"1": {"class_type": "TestSource", "inputs": {name: None}},
              "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, reg, env)
    (issue,) = [i for i in info.value.issues if i.severity == "error"]
    assert (issue.kind, issue.node_id, issue.input_name) == ("invalid_value", "1", name)
    assert "null" in issue.message and "leave the input out" in issue.message
    error = to_node_errors(info.value.issues)["1"]["errors"][0]
    assert error["type"] == "invalid_input_type" and error["extra_info"]["received_value"] is None
    # left out, it still takes its default; an optional input's null is "not given"
    del prompt["1"]["inputs"][name]
    assert validate_prompt(prompt, reg, env).nodes["1"].constants[name] is not None
    prompt = {"1": {"class_type": "TestTensor", "inputs": {}},
              "2": {"class_type": "TestSum", "inputs": {"x": ["1", 0], "y": None}},
              "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}}
    assert "y" not in validate_prompt(prompt, reg, env).nodes["2"].links


def test_comfyui_value_wrapper_and_numbers_for_text_are_taken_as_comfyui(reg, env):
    """ComfyUI's front end sends a widget's list value as {"__value__": [...]} (a bare list
    is a link), and its server takes a number for a text input as its text (the packs
    drill: both were refused, so `--set 'Positive Prompt.text=42'` failed too)."""
    from engine.value_checks import check_constant

    name = reg.get("TestFile").INPUT_SPECS["name"]
    assert check_constant(name, 2024, env) == ("2024", None)
    assert check_constant(name, 1.5, env) == ("1.5", None)
    assert check_constant(name, {"__value__": "a.txt"}, env) == ("a.txt", None)
    prompt = {"2": {"class_type": "TestOut", "inputs": {"value": ["3", 0]}},
              "3": {"class_type": "TestSource", "inputs": {"value": {"__value__": 7}}}}
    assert validate_prompt(prompt, reg, env).nodes["3"].constants["value"] == 7
