"""ComfyUI's for loop (its test pack's ``TestForLoopOpen`` / ``Close`` over its while
loop), the ids GraphBuilder gives across prompts, hidden entries that are inputs, and
``comfy_api``'s ``ComfyAPI`` / ``ComfyAPISync`` progress. The pack is written here, in
the shape of ComfyUI's test nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.registry import NodeRegistry
from engine.session import Session
from tests.comfy_fixtures import pack_registry
from tests.test_comfy_pack_adapter import n

PACK = '''
import torch
from comfy_execution.graph_utils import GraphBuilder, is_link
from comfy_api.v0_0_2 import ComfyAPI, ComfyAPISync

SOCKETS = 3
api, api_sync = ComfyAPI(), ComfyAPISync()


class Grey:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT", {"default": 1.0})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    def run(self, value):
        return (torch.full((1, 4, 4, 3), value),)


class Average:
    """Averages its inputs, declared or not (ComfyUI's TestVariadicAverage)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"input1": ("IMAGE",)}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    def run(self, **kwargs):
        return (torch.stack(list(kwargs.values())).mean(dim=0),)


class Show:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    def run(self, value):
        shown = value.mean().item() if isinstance(value, torch.Tensor) else value
        return {"ui": {"text": [repr(shown)]}}


class IntMath:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"default": 0}), "b": ("INT", {"default": 0})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    def run(self, a, b):
        return (a - b,)


class ToBool:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}
    RETURN_TYPES = ("BOOLEAN",)
    FUNCTION = "run"
    def run(self, value):
        return (bool(value),)


class WhileOpen:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"condition": ("BOOLEAN", {"default": True})},
                "optional": {f"initial_value{i}": ("*",) for i in range(SOCKETS)}}
    RETURN_TYPES = ("FLOW_CONTROL",) + ("*",) * SOCKETS
    FUNCTION = "run"
    def run(self, condition, **kwargs):
        return ("stub", *(kwargs.get(f"initial_value{i}") for i in range(SOCKETS)))


class WhileClose:
    """Clones everything between its open node and itself while the condition holds."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"flow_control": ("FLOW_CONTROL", {"rawLink": True}),
                             "condition": ("BOOLEAN", {"forceInput": True})},
                "optional": {f"initial_value{i}": ("*",) for i in range(SOCKETS)},
                "hidden": {"dynprompt": "DYNPROMPT", "unique_id": "UNIQUE_ID"}}
    RETURN_TYPES = ("*",) * SOCKETS
    FUNCTION = "run"

    def run(self, flow_control, condition, dynprompt, unique_id, **kwargs):
        values = [kwargs.get(f"initial_value{i}") for i in range(SOCKETS)]
        if not condition:
            return tuple(values)
        users = {}
        stack = [unique_id]
        while stack:  # who uses whom, upstream of this node
            node_id = stack.pop()
            for value in dynprompt.get_node(node_id)["inputs"].values():
                if is_link(value):
                    if value[0] not in users:
                        stack.append(value[0])
                    users.setdefault(value[0], set()).add(node_id)
        open_id = flow_control[0]
        inside, stack = {open_id, unique_id}, [open_id]
        while stack:  # downstream of the open node
            for user in users.get(stack.pop(), ()):
                if user not in inside:
                    inside.add(user)
                    stack.append(user)
        graph = GraphBuilder()
        key = lambda node_id: "Recurse" if node_id == unique_id else node_id
        for node_id in inside:
            graph.node(dynprompt.get_node(node_id)["class_type"], key(node_id))
        for node_id in inside:
            clone = graph.lookup_node(key(node_id))
            for name, value in dynprompt.get_node(node_id)["inputs"].items():
                linked = is_link(value) and value[0] in inside
                clone.set_input(name, graph.lookup_node(key(value[0])).out(value[1])
                                if linked else value)
        opened = graph.lookup_node(open_id)
        for i, value in enumerate(values):
            opened.set_input(f"initial_value{i}", value)
        again = graph.lookup_node("Recurse")
        return {"result": tuple(again.out(i) for i in range(SOCKETS)),
                "expand": graph.finalize()}


class ForOpen:
    """ComfyUI's TestForLoopOpen: returns values *and* an expansion; its hidden
    initial_value0 is set only by the loop's clones."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"remaining": ("INT", {"default": 1, "min": 0})},
                "optional": {f"initial_value{i}": ("*",) for i in range(1, SOCKETS)},
                "hidden": {"initial_value0": ("*",)}}
    RETURN_TYPES = ("FLOW_CONTROL", "INT") + ("*",) * (SOCKETS - 1)
    FUNCTION = "run"

    def run(self, remaining, **kwargs):
        if "initial_value0" in kwargs:
            remaining = kwargs["initial_value0"]
        graph = GraphBuilder()  # never run: no output links to it (as in ComfyUI)
        graph.node("WhileOpen", condition=remaining, initial_value0=remaining)
        rest = [kwargs.get(f"initial_value{i}") for i in range(1, SOCKETS)]
        return {"result": ("stub", remaining, *rest), "expand": graph.finalize()}


class ForClose:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"flow_control": ("FLOW_CONTROL", {"rawLink": True})},
                "optional": {f"initial_value{i}": ("*", {"rawLink": True})
                             for i in range(1, SOCKETS)}}
    RETURN_TYPES = ("*",) * (SOCKETS - 1)
    FUNCTION = "run"

    def run(self, flow_control, **kwargs):
        graph = GraphBuilder()
        open_id = flow_control[0]
        sub = graph.node("IntMath", a=[open_id, 1], b=1)
        cond = graph.node("ToBool", value=sub.out(0))
        rest = {f"initial_value{i}": kwargs.get(f"initial_value{i}") for i in range(1, SOCKETS)}
        close = graph.node("WhileClose", flow_control=flow_control, condition=cond.out(0),
                           initial_value0=sub.out(0), **rest)
        return {"result": tuple(close.out(i) for i in range(1, SOCKETS)),
                "expand": graph.finalize()}


class Hidden:
    """A hidden entry of no hidden kind: passed only when the prompt sets it."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "hidden": {"secret": ("INT",), "unique_id": "UNIQUE_ID"}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    def run(self, unique_id, **kwargs):
        return (repr(sorted(kwargs.items())),)


class Once:
    """IS_CHANGED sees its linked input as None (its value is not known yet)."""
    calls = 0
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "value": ("FLOAT", {"default": 1.0})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    def run(self, image, value):
        Once.calls += 1
        return (image * value,)
    @classmethod
    def IS_CHANGED(cls, image, value):
        assert image is None
        return value


class SyncProgress:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}
    RETURN_TYPES = ("*",)
    FUNCTION = "run"
    def run(self, value):
        for step in range(5):
            api_sync.execution.set_progress(value=step / 4, max_value=1.0)
        api_sync.execution.set_progress(value=3, max_value=10,
                                        preview_image=torch.zeros(1, 4, 4, 3))
        return (value,)


class AsyncProgress:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}
    RETURN_TYPES = ("*",)
    FUNCTION = "run"
    async def run(self, value):
        await api.execution.set_progress(value=0.5, max_value=1.0)
        return (value,)


NODE_CLASS_MAPPINGS = {n: globals()[n] for n in (
    "Grey", "Average", "Show", "IntMath", "ToBool", "WhileOpen", "WhileClose", "ForOpen",
    "ForClose", "Hidden", "Once", "SyncProgress", "AsyncProgress")}
'''


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> NodeRegistry:
    registry = pack_registry(tmp_path_factory.mktemp("custom_nodes"),
                             {"for_loop_pack.py": PACK})
    assert not registry.errors, registry.errors
    return registry


@pytest.fixture
def session(registry: NodeRegistry, tmp_path: Path) -> Session:
    return Session(tmp_path, device="cpu", registry=registry)


def for_loop(remaining: int) -> dict[str, Any]:
    """ComfyUI's test_for_loop: white, averaged with black ``remaining`` times."""
    return {"1": n("Grey", value=0.0), "2": n("Grey", value=1.0),
            "4": n("ForOpen", remaining=remaining, initial_value1=["2", 0]),
            "5": n("Average", input1=["1", 0], input2=["4", 2]),
            "6": n("ForClose", flow_control=["4", 0], initial_value1=["5", 0]),
            "7": n("Show", value=["6", 0])}


def run(session: Session, prompt: dict[str, Any]) -> tuple[Any, list[tuple[str, dict]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    result = session.run(prompt, on_event=lambda name, data: events.append((name, data)))
    assert result.ok, result.run.error
    return result, events


def ran(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [d["node"] for name, d in events if name == "executing" and d["node"] is not None]


@pytest.mark.parametrize("remaining", [1, 2, 3, 4])
def test_comfyui_for_loop_runs_as_in_comfyui(session: Session, remaining: int):
    result, events = run(session, for_loop(remaining))
    assert float(result.run.outputs["7"]["text"][0]) == pytest.approx(0.5 ** remaining)
    # the open node's own values reach the close node's expansion (output 1: the count)
    assert sum(node.endswith(".Recurse") for node in ran(events)) == remaining - 1


def test_expansion_ids_are_rooted_in_this_prompt(session: Session):
    run(session, for_loop(2))

    def other(black: float) -> dict[str, Any]:  # other ids, a value the cache lacks
        return {"11": n("Grey", value=black), "12": n("Grey", value=1.0),
                "14": n("ForOpen", remaining=2, initial_value1=["12", 0]),
                "15": n("Average", input1=["11", 0], input2=["14", 2]),
                "16": n("ForClose", flow_control=["14", 0], initial_value1=["15", 0]),
                "17": n("Show", value=["16", 0])}

    # no expansion id names the earlier prompt's nodes
    _, events = run(session, other(0.25))
    expanded = [node for node in ran(events) if "." in node]
    assert expanded and all(node.startswith("16.") for node in expanded), expanded
    # the next prompt's ids start afresh, not where the last run left off
    _, again = run(session, other(0.75))
    assert [node for node in ran(again) if "." in node] == expanded


def test_hidden_entry_of_no_hidden_kind_is_an_input(session: Session):
    result, _ = run(session, {"1": n("Hidden"), "2": n("Show", value=["1", 0])})
    assert result.run.outputs["2"]["text"] == ["'[]'"]  # not passed as None
    result, _ = run(session, {"1": n("Hidden", secret=5), "2": n("Show", value=["1", 0])})
    assert result.run.outputs["2"]["text"] == [repr(repr([("secret", 5)]))]


def test_boolean_takes_a_number_as_comfyui(registry: NodeRegistry):
    from engine.value_checks import check_constant

    spec = registry.get("WhileOpen").INPUT_SPECS["condition"]
    assert check_constant(spec, 3, None) == (True, None)
    assert check_constant(spec, 0.0, None) == (False, None)
    assert check_constant(spec, "false", None) == (False, None)
    assert check_constant(spec, "maybe", None)[1] is not None


def test_is_changed_gets_linked_inputs_as_none(session: Session, registry: NodeRegistry):
    prompt = {"1": n("Grey", value=0.5), "2": n("Once", image=["1", 0], value=0.5),
              "3": n("Show", value=["2", 0])}
    first, _ = run(session, prompt)
    _, events = run(session, prompt)
    assert "2" not in ran(events)  # IS_CHANGED answered: served from the cache
    assert float(first.run.outputs["3"]["text"][0]) == pytest.approx(0.25)


def test_comfy_api_set_progress_reports_like_progress_bar(session: Session):
    prompt = {"1": n("Grey", value=0.5), "2": n("SyncProgress", value=["1", 0]),
              "3": n("AsyncProgress", value=["2", 0]), "4": n("Show", value=["3", 0])}
    _, events = run(session, prompt)
    progress = [(d["node"], d["value"], d["max"]) for name, d in events if name == "progress"]
    assert progress == [("2", 0, 1000), ("2", 250, 1000), ("2", 500, 1000), ("2", 750, 1000),
                        ("2", 1000, 1000), ("2", 3, 10), ("3", 500, 1000)]
    previews = [d for name, d in events if name == "preview"]
    assert len(previews) == 1 and previews[0]["node"] == "2"
    assert previews[0]["image"].size == (4, 4)  # a PIL image, as ProgressBar's


def test_comfy_api_versions_and_use_outside_a_run(registry: NodeRegistry):
    import comfy_api.latest
    import comfy_api.v0_0_1
    import comfy_api.v0_0_3

    for module in (comfy_api.latest, comfy_api.v0_0_1, comfy_api.v0_0_3):
        assert hasattr(module.ComfyAPI().execution, "set_progress")
        assert hasattr(module.ComfyAPISync().execution, "set_progress")
    assert comfy_api.v0_0_1.ComfyAPI.VERSION == "0.0.1"
    with pytest.raises(ValueError, match="node_id"):
        comfy_api.latest.ComfyAPISync().execution.set_progress(0.5, 1.0)
    comfy_api.latest.ComfyAPISync().execution.set_progress(0.5, 1.0, node_id="3")  # dropped
