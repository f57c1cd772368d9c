"""Muted and bypassed nodes in our own prompts: the executor leaves them out."""

from __future__ import annotations

import pytest

from engine import Environment, Executor
from engine.validation import PromptValidationError
from tests import engine_nodes as tn


@pytest.fixture
def ex(tmp_path):
    tn.CALLS.clear()
    return Executor(tn.make_registry(), Environment.create(tmp_path, device="cpu"))


def chain(**modes):
    prompt = {
        "1": {"class_type": "TestSource", "inputs": {"value": 1}},
        "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 10}},
        "3": {"class_type": "TestAdd", "inputs": {"a": ["2", 0], "b": 100}},
        "4": {"class_type": "TestOut", "inputs": {"value": ["3", 0]}},
    }
    for node_id, mode in modes.items():
        prompt[node_id.removeprefix("n")]["mode"] = mode
    return prompt


def test_bypassed_node_passes_its_input_of_the_matching_type_through(ex):
    assert ex.run(chain()).outputs["4"] == {"value": [111]}
    result = ex.run(chain(n2="bypass"))
    assert result.ok and result.outputs["4"] == {"value": [101]}
    assert "2" not in result.executed and "2" not in result.cached


def test_chained_bypasses_and_comfyui_numbers(ex):
    assert ex.run(chain(n2=4, n3="bypass")).outputs["4"] == {"value": [1]}
    assert ex.run(chain(n2=0, n3=1)).outputs["4"] == {"value": [111]}  # ComfyUI's "always"


def test_bypass_with_nothing_to_pass_leaves_the_input_unconnected(ex):
    prompt = chain()
    # a bypassed TestSum (LATENT inputs) has nothing for TestAdd's INT input
    prompt["5"] = {"class_type": "TestTensor", "inputs": {"size": 4}}
    prompt["6"] = {"class_type": "TestSum", "inputs": {"x": ["5", 0]}, "mode": "bypass"}
    prompt["7"] = {"class_type": "TestAdd", "inputs": {"a": ["6", 0]}}
    prompt["8"] = {"class_type": "TestOut", "inputs": {"value": ["7", 0]}}
    # a bypassed TestSource has no linked input to pass on
    prompt["9"] = {"class_type": "TestSource", "inputs": {}, "mode": "bypass"}
    prompt["10"] = {"class_type": "TestOut", "inputs": {"value": ["9", 1]}}
    with pytest.raises(PromptValidationError) as err:
        ex.validate(prompt)
    issues = {(i.node_id, i.input_name, i.kind, i.severity) for i in err.value.issues}
    assert {("7", "a", "missing_input", "error"), ("10", "value", "missing_input", "error"),
            ("7", "a", "node_mode", "warning"), ("10", "value", "node_mode", "warning")} <= issues
    notes = {i.node_id: i.message for i in err.value.issues if i.kind == "node_mode"}
    assert "node 6, which is bypassed and has no input of type INT" in notes["7"]
    assert "node 9, which is bypassed and whose input 'label' is not linked" in notes["10"]


def test_muted_nodes_are_left_out(ex):
    prompt = chain(n4="muted")
    prompt["5"] = {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}
    result = ex.run(prompt)
    assert result.ok and set(result.outputs) == {"5"} and "2" not in result.executed
    with pytest.raises(PromptValidationError) as err:
        ex.validate(chain(n3="muted"))
    kinds = {(i.node_id, i.kind) for i in err.value.issues}
    assert ("4", "missing_input") in kinds and ("4", "node_mode") in kinds
    with pytest.raises(PromptValidationError, match="muted or bypassed"):
        ex.validate({"1": {"class_type": "TestSource", "inputs": {}, "mode": "muted"}})
    with pytest.raises(PromptValidationError, match="TestOut #1 is muted"):
        ex.validate({"1": {"class_type": "TestOut", "inputs": {"value": 1}, "mode": "muted"}})


def no_output_issue(ex, prompt, **kwargs):
    with pytest.raises(PromptValidationError) as err:
        ex.validate(prompt, **kwargs)
    [issue] = [i for i in err.value.issues if i.severity == "error"]
    assert issue.kind == "no_output_node"
    return issue


def test_a_muted_output_node_is_named_with_what_to_do(ex):
    """The canvas drill: Save Image muted (Ctrl+M) and queued got "the prompt has no
    output node (e.g. Save Image)" while a Save Image sat on the canvas."""
    prompt = chain(n4="muted")
    prompt["4"]["_meta"] = {"title": "Save Image"}
    issue = no_output_issue(ex, prompt)
    assert issue.message == ("Save Image #4 is muted, so no output node is left to run: "
                             "unmute it (Ctrl+M) or add an output node")
    assert issue.node_id is None  # the prompt as a whole, as before
    assert issue.details == {"inactive_outputs": [
        {"node_id": "4", "class_type": "TestOut", "mode": "muted"}]}
    # untitled: the node's display name; bypassed (ComfyUI's 4): its own fix
    issue = no_output_issue(ex, chain(n4=4))
    assert issue.message.startswith("TestOut #4 is bypassed, so no output node is left")
    assert "turn its bypass off (Ctrl+B)" in issue.message


def test_several_switched_off_output_nodes_are_named_together(ex):
    prompt = chain(n4="muted")
    for n in range(5, 9):
        prompt[str(n)] = {"class_type": "TestOut", "inputs": {"value": ["1", 0]},
                          "mode": "muted" if n < 8 else "bypass"}
    issue = no_output_issue(ex, prompt)
    assert issue.message.startswith("the output nodes TestOut #4, TestOut #5, TestOut #6 "
                                    "and 2 more are muted or bypassed, so none is left")
    assert [o["node_id"] for o in issue.details["inactive_outputs"]] == ["4", "5", "6", "7",
                                                                          "8"]
    prompt["8"]["mode"] = "muted"
    assert "are muted, so none is left to run: unmute one (Ctrl+M)" in \
        no_output_issue(ex, prompt).message


def test_a_prompt_without_output_nodes_still_says_so(ex):
    """Muted nodes that are no output nodes change nothing in the message."""
    prompt = chain(n2="muted")
    del prompt["4"]
    assert no_output_issue(ex, prompt).message.startswith("the prompt has no output node")


def test_a_requested_output_that_is_muted_says_so(ex):
    issue = no_output_issue(ex, chain(n4="muted"), outputs=["4"])
    assert issue.message == ("requested output node TestOut #4 is muted, so it does not "
                             "run: unmute it (Ctrl+M)")


def test_bad_mode_is_a_validation_error(ex):
    with pytest.raises(PromptValidationError) as err:
        ex.validate(chain(n2="sleeping"))
    (issue,) = [i for i in err.value.issues if i.severity == "error"]
    assert issue.kind == "invalid_prompt" and issue.node_id == "2"
    assert "'mode' must be" in issue.message
