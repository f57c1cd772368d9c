"""Engine II through a ComfyUI-style pack (tests/fixtures/comfy_flow_pack): lazy
inputs, a while loop by node expansion, lists with ExecutionBlocker, async nodes,
hidden inputs, and the ``comfy_execution`` shims."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from engine.registry import NodeRegistry
from engine.session import Session

PACKS = Path(__file__).parent / "fixtures" / "comfy_flow_pack"


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    from comfy_compat import ADAPTER

    ADAPTER.prepare()
    registry = NodeRegistry()
    registry.load_directory(PACKS)
    assert not registry.errors, registry.errors
    return registry


@pytest.fixture
def session(registry: NodeRegistry, tmp_path: Path) -> Session:
    return Session(tmp_path, device="cpu", registry=registry)


@pytest.fixture
def pack() -> Any:
    module = sys.modules["steerflow_custom_nodes.flow_pack"]
    module.CALLS.clear()
    module.SLEEPS.clear()
    module.SEEN.clear()
    return module


def show(value: Any) -> dict[str, Any]:
    return {"class_type": "ShowAny", "inputs": {"value": value}}


def test_lazy_switch_leaves_the_failing_branch_alone(session: Session, pack: Any):
    prompt = {
        "1": {"class_type": "FlowInt", "inputs": {"value": 4}},
        "2": {"class_type": "FlowAdd", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "FlowFail", "inputs": {"a": ["1", 0]}},
        "4": {"class_type": "LazySwitch", "inputs": {"switch": True, "on_true": ["2", 0],
                                                     "on_false": ["3", 0]}},
        "5": show(["4", 0]),
        "6": show(["1", 0]),
    }
    result = session.run(prompt)
    assert result.ok, result.run.error
    assert result.run.outputs["5"] == {"value": [5]}
    assert "3" not in result.run.executed
    assert session.run(prompt).run.executed == []  # the evaluated branch is cached
    prompt["4"]["inputs"]["switch"] = False
    failed = session.run(prompt)
    assert failed.run.error["node_id"] == "3"
    assert "must never run" in failed.run.error["exception_message"]


def while_prompt(limit: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "FlowInt", "inputs": {"value": 0}},
        "2": {"class_type": "WhileOpen", "inputs": {"condition": True, "value": ["1", 0]}},
        "3": {"class_type": "FlowAdd", "inputs": {"a": ["2", 1], "b": 1}},
        "4": {"class_type": "FlowLess", "inputs": {"a": ["3", 0], "b": limit}},
        "5": {"class_type": "WhileClose", "inputs": {"flow_control": ["2", 0],
                                                     "condition": ["4", 0],
                                                     "value": ["3", 0]}},
        "6": show(["5", 0]),
    }


def test_a_while_loop_built_with_graph_builder_and_its_cache(session: Session, pack: Any):
    result = session.run(while_prompt(5))
    assert result.ok, result.run.error
    assert result.run.outputs["6"] == {"value": [5]}
    assert pack.CALLS["FlowAdd"] == 5
    # second run: the whole loop is served from the cache
    again = session.run(while_prompt(5))
    assert again.ok and again.run.executed == [] and pack.CALLS["FlowAdd"] == 5
    # a longer loop: the iterations already run are found by signature
    longer = session.run(while_prompt(7))
    assert longer.run.outputs["6"] == {"value": [7]}
    assert pack.CALLS["FlowAdd"] == 7


def test_a_dynamic_cycle_is_a_structured_error(session: Session, pack: Any,
                                               monkeypatch: pytest.MonkeyPatch):
    from comfy_execution.graph_utils import GraphBuilder

    def looping(self, flow_control, condition, value=None, dynprompt=None, unique_id=None):
        graph = GraphBuilder()
        node = graph.node("FlowAdd", a=[unique_id, 0], b=1)  # reads its own parent
        return {"result": (node.out(0),), "expand": graph.finalize()}

    monkeypatch.setattr(pack.WhileClose, "close", looping)
    result = session.run(while_prompt(5))
    assert result.run.status == "error"
    assert result.run.error["exception_type"].endswith("DependencyCycleError")
    assert "5" in result.run.error["cycle"]


def test_list_mapping_with_a_blocked_element(session: Session, pack: Any):
    prompt = {
        "1": {"class_type": "MakeInts", "inputs": {"count": 5}},
        "2": {"class_type": "BlockOdd", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "FlowAdd", "inputs": {"a": ["2", 0], "b": 10}},
        "4": show(["3", 0]),
        "5": {"class_type": "SumInts", "inputs": {"values": ["1", 0]}},
        "6": show(["5", 0]),
    }
    result = session.run(prompt)
    assert result.ok, result.run.error
    assert pack.CALLS["FlowAdd"] == 3
    assert result.run.outputs["4"] == {"value": [10, 12, 14]}
    assert result.run.outputs["6"] == {"value": [10]}


def test_expansion_per_list_element_with_graph_builder(session: Session, pack: Any):
    prompt = {
        "1": {"class_type": "MakeInts", "inputs": {"count": 5}},
        "2": {"class_type": "BlockOdd", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "DoubleViaGraph", "inputs": {"value": ["2", 0]}},
        "4": show(["3", 0]),
        "5": {"class_type": "SumInts", "inputs": {"values": ["3", 0]}},
        "6": show(["5", 0]),
    }
    result = session.run(prompt)
    assert result.ok, result.run.error
    # elements 0, 2, 4 each expanded into their own FlowAdd; gathered back in order
    assert pack.CALLS["DoubleViaGraph"] == 3 and pack.CALLS["FlowAdd"] == 3
    assert result.run.outputs["4"] == {"value": [0, 4, 8]}
    # the blocked elements stay in the list, in place: a whole-list node is blocked
    assert "6" not in result.run.outputs
    again = session.run(prompt)
    assert again.ok and again.run.executed == [] and pack.CALLS["FlowAdd"] == 3


def test_async_pack_nodes_run_concurrently(session: Session, pack: Any):
    prompt = {"1": {"class_type": "Sleep", "inputs": {"seconds": 0.3, "value": 1}},
              "2": {"class_type": "Sleep", "inputs": {"seconds": 0.3, "value": 2}},
              "3": show(["1", 0]), "4": show(["2", 0])}
    result = session.run(prompt)
    assert result.ok, result.run.error
    assert result.run.outputs == {"3": {"value": [1]}, "4": {"value": [2]}}
    (start_a, end_a), (start_b, end_b) = pack.SLEEPS
    assert start_b < end_a and start_a < end_b


def test_hidden_inputs(session: Session, pack: Any):
    prompt = {"1": {"class_type": "FlowInt", "inputs": {"value": 3}}, "2": show(["1", 0])}
    assert session.run(prompt, extra={"extra_pnginfo": {"workflow": 1}}).ok
    assert pack.SEEN["2"] == {"prompt": prompt, "extra_pnginfo": {"workflow": 1},
                              "class_type": "ShowAny"}
    # a prompt without one (POST /prompt with no extra_data) passes None, as ComfyUI does
    # (the packs drill: it was left out)
    prompt["1"]["inputs"]["value"] = 4  # (not the cached run)
    assert session.executor.run(prompt).status == "success"
    assert pack.SEEN["2"]["extra_pnginfo"] is None


def test_lazy_and_raw_link_options_reach_the_schema(registry: NodeRegistry):
    switch = registry.get("LazySwitch")
    assert switch.INPUT_SPECS["on_true"].lazy and not switch.INPUT_SPECS["switch"].lazy
    assert registry.get("WhileClose").INPUT_SPECS["flow_control"].raw_link


def test_other_comfy_execution_modules_are_refused_by_name():
    from comfy_compat.shims import missing_message

    with pytest.raises(ModuleNotFoundError, match=r"comfy_execution\.caching"):
        import comfy_execution.caching  # noqa: F401
    assert "comfy_execution.graph_utils" in missing_message("x")
