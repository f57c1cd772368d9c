"""Engine II in our node API: lazy inputs, expansion (loops, recursion, run-time
cycles), list mapping with blockers, async nodes, partial execution, hidden data."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest

from engine import (
    Environment,
    ExecutionContext,
    Executor,
    Input,
    Node,
    NodeRegistry,
    NodeResult,
    Output,
)
from engine.expansion import Subgraph
from engine.lists import ExecutionBlocker
from nodes import flow_control
from tests import engine_nodes as tn


class IntList(Node):
    """``count`` ints from ``start``, as a list output (mapped over downstream)."""

    TYPE = "TestIntList"
    OUTPUTS = (Output("INT", is_list=True),)
    start: int = Input(0)
    count: int = Input(3, min=0, max=1000)

    def execute(self, ctx: ExecutionContext) -> tuple[list[int]]:
        tn.CALLS[self.TYPE] += 1
        return (list(range(self.start, self.start + self.count)),)


class BlockOdd(Node):
    """Passes even ints; blocks odd ones (silently, or with ``message``)."""

    TYPE = "TestBlockOdd"
    OUTPUTS = (Output("INT"),)
    x: int = Input(type="INT", force_input=True)
    message: str = Input("")

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        tn.CALLS[self.TYPE] += 1
        if self.x % 2:
            return (ExecutionBlocker(self.message or None),)
        return (self.x,)


class Total(Node):
    """Takes whole lists: the sum of ``values``."""

    TYPE = "TestTotal"
    INPUT_IS_LIST = True
    OUTPUTS = (Output("INT"),)
    values: Any = Input(type="INT", force_input=True)

    def execute(self, ctx: ExecutionContext) -> tuple[int]:
        assert isinstance(self.values, list)
        return (sum(self.values),)


class Factorial(Node):
    """n! by recursion: expands into ``n * Factorial(n - 1)``."""

    TYPE = "TestFactorial"
    OUTPUTS = (Output("INT"),)
    n: int = Input(1, min=0, max=10_000)

    def execute(self, ctx: ExecutionContext) -> tuple[int] | NodeResult:
        tn.CALLS[self.TYPE] += 1
        if self.n <= 1:
            return (1,)
        sub = Subgraph(ctx)
        inner = sub.node("TestFactorial", n=self.n - 1)
        mul = sub.node("IntMath", a=inner.out(0), b=self.n, op="multiply")
        return NodeResult((mul.out(0),), expand=sub.finalize())


class MakeCycle(Node):
    """Expands into a node that reads this node's own output: a run-time cycle."""

    TYPE = "TestMakeCycle"
    OUTPUTS = (Output("INT"),)
    x: int = Input(0)

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        sub = Subgraph(ctx)
        add = sub.node("TestAdd", a=[ctx.node_id, 0], b=1)
        return NodeResult((add.out(0),), expand=sub.finalize())


class DoubleByGraph(Node):
    """``2 * x`` by expanding into ``TestAdd(x, x)`` (0 returned as is, unexpanded)."""

    TYPE = "TestDoubleByGraph"
    OUTPUTS = (Output("INT"),)
    x: int = Input(type="INT", force_input=True)

    def execute(self, ctx: ExecutionContext) -> tuple[int] | NodeResult:
        tn.CALLS[self.TYPE] += 1
        if self.x == 0:
            return (0,)
        sub = Subgraph(ctx)
        add = sub.node("TestAdd", a=self.x, b=self.x)
        return NodeResult((add.out(0),), {"value": [self.x]}, expand=sub.finalize())


SLEEPS: list[tuple[str, float, float]] = []
CANCELLED: list[str] = []


class AsyncSleep(Node):
    """Sleeps ``seconds`` without blocking the engine; records when."""

    TYPE = "TestAsyncSleep"
    OUTPUTS = (Output("INT"),)
    seconds: float = Input(0.2, min=0.0, max=60.0)
    x: int = Input(0)

    async def execute(self, ctx: ExecutionContext) -> tuple[int]:
        start = time.perf_counter()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            CANCELLED.append(ctx.node_id)
            raise
        SLEEPS.append((ctx.node_id, start, time.perf_counter()))
        return (self.x,)


EXTRA_NODES = (IntList, BlockOdd, Total, Factorial, MakeCycle, AsyncSleep, DoubleByGraph)


@pytest.fixture(autouse=True)
def reset() -> None:
    tn.CALLS.clear()
    SLEEPS.clear()
    CANCELLED.clear()


def make_registry() -> NodeRegistry:
    """The engine test nodes, flow control and this module's nodes (server workers too)."""
    registry = tn.make_registry()
    for cls in (*flow_control.NODE_CLASSES, *EXTRA_NODES):
        registry.register(cls)
    return registry


@pytest.fixture
def ex(tmp_path) -> Executor:
    return Executor(make_registry(), Environment.create(tmp_path, device="cpu"))


def out(value: Any) -> dict[str, Any]:
    return {"class_type": "TestOut", "inputs": {"value": value}}


# --- lazy inputs ------------------------------------------------------------------

def lazy_prompt(condition: bool) -> dict[str, Any]:
    return {
        "1": {"class_type": "TestSource", "inputs": {"value": 5}},
        "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "TestFail", "inputs": {"x": ["1", 0]}},  # fails if it runs
        "4": {"class_type": "If", "inputs": {"condition": condition, "if_true": ["2", 0],
                                             "if_false": ["3", 0]}},
        "5": out(["4", 0]),
        "6": out(["1", 0]),  # a non-lazy user of the shared source
    }


def test_lazy_branch_that_would_fail_is_never_evaluated(ex):
    result = ex.run(lazy_prompt(True))
    assert result.ok, result.error
    assert result.outputs["5"] == {"value": [6]}
    assert "3" not in result.executed
    assert tn.CALLS["TestSource"] == 1
    # the evaluated branch is cached; the unevaluated one still is not computed
    again = ex.run(lazy_prompt(True))
    assert again.ok and again.executed == []
    # choosing the failing branch runs it, and only it (the source is cached)
    failed = ex.run(lazy_prompt(False))
    assert failed.status == "error" and failed.error["node_id"] == "3"
    assert "2" not in failed.executed and tn.CALLS["TestSource"] == 1


def test_lazy_input_served_from_the_cache_and_switch(ex):
    ex.run({"1": {"class_type": "TestSource", "inputs": {"value": 7}}, "9": out(["1", 0])})
    prompt = {
        "1": {"class_type": "TestSource", "inputs": {"value": 7}},
        "2": {"class_type": "TestSource", "inputs": {"value": 8}},
        "3": {"class_type": "Switch", "inputs": {"select": 0, "input_0": ["1", 0],
                                                 "input_1": ["2", 0]}},
        "4": out(["3", 0]),
    }
    result = ex.run(prompt)
    assert result.outputs["4"] == {"value": [7]}
    assert "1" in result.cached and "2" not in result.executed + result.cached
    prompt["3"]["inputs"]["select"] = 1
    assert ex.run(prompt).outputs["4"] == {"value": [8]}


def test_comfyui_boolean_switch_computes_only_its_branch(ex):
    prompt = lazy_prompt(True)
    prompt["4"] = {"class_type": "ComfySwitchNode", "inputs": {
        "switch": True, "on_true": ["2", 0], "on_false": ["3", 0]}}
    result = ex.run(prompt)
    assert result.ok and result.outputs["5"] == {"value": [6]} and "3" not in result.executed
    del prompt["4"]["inputs"]["on_true"]
    failed = ex.run(prompt)
    assert failed.status == "error" and "on_true is not connected" in str(failed.error)


def test_lazy_schema_flags(ex):
    schema = ex.registry.get("If").schema()
    assert schema["input"]["optional"]["if_true"] == ["*", {"lazy": True}]


# --- expansion: loops, recursion, cycles --------------------------------------------

def for_loop(count: int, start: int = 1) -> dict[str, Any]:
    return {
        "1": {"class_type": "TestSource", "inputs": {"value": start}},
        "2": {"class_type": "ForLoopStart", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "TestAdd", "inputs": {"a": ["2", 1], "b": 2}},
        "4": {"class_type": "ForLoopEnd", "inputs": {"flow": ["2", 0], "value": ["3", 0],
                                                     "count": count}},
        "5": out(["4", 0]),
    }


def test_for_loop_runs_and_its_body_is_cached_by_signature(ex):
    result = ex.run(for_loop(5))
    assert result.ok, result.error
    assert result.outputs["5"] == {"value": [11]}
    assert tn.CALLS["TestAdd"] == 5
    again = ex.run(for_loop(5))
    assert again.ok and again.executed == [] and tn.CALLS["TestAdd"] == 5
    # one more iteration: the first five bodies are found by signature, only one runs
    events = []
    more = ex.run(for_loop(6), on_event=lambda e, d: events.append((e, d)))
    assert more.outputs["5"] == {"value": [13]}
    assert tn.CALLS["TestAdd"] == 6
    # clients hear of the prompt's own nodes only, as ComfyUI lists them
    listed = [n for e, d in events if e == "execution_cached" for n in d["nodes"]]
    assert sorted(listed) == ["1", "2", "3"] and any("." in n for n in more.cached)
    # expanded ids derive from the prompt node, and stay short
    assert all(n.count(".") <= 1 for n in more.executed)


def test_while_loop_with_index_and_condition(ex):
    prompt = {
        "1": {"class_type": "WhileLoopStart", "inputs": {"value": 0}},
        "2": {"class_type": "IntMath", "inputs": {"a": ["1", 1], "b": ["1", 2]}},  # += index
        "3": {"class_type": "IntCompare", "inputs": {"a": ["1", 2], "b": 4, "op": "<"}},
        "4": {"class_type": "WhileLoopEnd", "inputs": {"flow": ["1", 0], "condition": ["3", 0],
                                                       "value": ["2", 0]}},
        "5": out(["4", 0]),
    }
    result = ex.run(prompt)
    assert result.ok, result.error
    assert result.outputs["5"] == {"value": [0 + 1 + 2 + 3 + 4]}


@pytest.mark.parametrize("count", [500, pytest.param(10_000, marks=pytest.mark.slow)])
def test_long_loops_run_without_recursion(ex, count):
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # any recursion per iteration would overflow this
    try:
        result = ex.run(for_loop(count, start=0))
    finally:
        sys.setrecursionlimit(old)
    assert result.ok, result.error
    assert result.outputs["5"] == {"value": [2 * count]}
    assert tn.CALLS["TestAdd"] == count


def test_recursion_by_expansion(ex):
    result = ex.run({"1": {"class_type": "TestFactorial", "inputs": {"n": 10}}, "2": out(["1", 0])})
    assert result.ok, result.error
    assert result.outputs["2"] == {"value": [3628800]}
    assert tn.CALLS["TestFactorial"] == 10


def test_a_cycle_created_at_run_time_is_a_structured_error(ex):
    result = ex.run({"1": {"class_type": "TestMakeCycle", "inputs": {}}, "2": out(["1", 0])})
    assert result.status == "error"
    assert result.error["exception_type"] == "engine.expansion.DependencyCycleError"
    assert set(result.error["cycle"]) == {"1", "1.1"}
    assert "dependency cycle" in result.error["exception_message"]


def test_a_malformed_expansion_is_a_node_error(ex, monkeypatch):
    def bad(self, ctx):
        return NodeResult((["nowhere", 0],), expand={"x.1": {"class_type": "NoSuchNode"}})

    monkeypatch.setattr(MakeCycle, "execute", bad)
    result = ex.run({"1": {"class_type": "TestMakeCycle", "inputs": {}}, "2": out(["1", 0])})
    assert result.status == "error" and result.error["node_id"] == "1"
    assert "unknown type 'NoSuchNode'" in result.error["exception_message"]


# --- lists and blockers -------------------------------------------------------------

def test_list_output_maps_downstream_and_whole_lists(ex):
    prompt = {
        "1": {"class_type": "TestIntList", "inputs": {"start": 1, "count": 3}},
        "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 10}},
        "3": out(["2", 0]),
        "4": {"class_type": "TestTotal", "inputs": {"values": ["2", 0]}},
        "5": out(["4", 0]),
    }
    result = ex.run(prompt)
    assert result.ok, result.error
    assert tn.CALLS["TestAdd"] == 3
    assert result.outputs["3"] == {"value": [11, 12, 13]}  # UI merged across calls
    assert result.outputs["5"] == {"value": [36]}


def test_blocker_stops_only_the_elements_it_blocks(ex):
    prompt = {
        "1": {"class_type": "TestIntList", "inputs": {"start": 0, "count": 5}},
        "2": {"class_type": "TestBlockOdd", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "TestAdd", "inputs": {"a": ["2", 0], "b": 100}},
        "4": out(["3", 0]),
    }
    result = ex.run(prompt)
    assert result.ok, result.error
    assert tn.CALLS["TestAdd"] == 3  # 0, 2, 4
    assert result.outputs["4"] == {"value": [100, 102, 104]}
    assert result.blocked == {}
    prompt["2"]["inputs"]["message"] = "odd"
    events: list[tuple[str, dict[str, Any]]] = []
    reported = ex.run(prompt, on_event=lambda name, data: events.append((name, data)))
    assert reported.ok and reported.blocked == {"3": "odd"}
    assert reported.outputs["4"] == {"value": [100, 102, 104]}  # the other elements ran
    # reported as ComfyUI reports it: an execution_error of type ExecutionBlocked
    # per call it stops (elements 1 and 3), and the prompt still succeeds
    blocked = [data for name, data in events if name == "execution_error"]
    assert len(blocked) == 2 and {b["node_id"] for b in blocked} == {"3"}
    assert blocked[0]["exception_type"] == "ExecutionBlocked"
    assert blocked[0]["exception_message"] == "Execution Blocked: odd"
    assert blocked[0]["node_type"] == "TestAdd" and blocked[0]["traceback"] == []
    names = [name for name, _ in events]
    assert "execution_blocked" not in names and names[-2] == "execution_success"
    assert names.index("execution_error") < names.index("execution_success")


def test_expansion_per_list_element(ex):
    prompt = {
        "1": {"class_type": "TestIntList", "inputs": {"start": 0, "count": 5}},
        "2": {"class_type": "TestBlockOdd", "inputs": {"x": ["1", 0]}},  # 0, -, 2, -, 4
        "3": {"class_type": "TestIntList", "inputs": {"start": 3, "count": 3}},  # 3, 4, 5
        "4": {"class_type": "TestDoubleByGraph", "inputs": {"x": ["3", 0]}},
        "5": out(["4", 0]),
        "6": {"class_type": "TestTotal", "inputs": {"values": ["4", 0]}},
        "7": out(["6", 0]),
        "8": {"class_type": "TestDoubleByGraph", "inputs": {"x": ["2", 0]}},
        "9": {"class_type": "TestAdd", "inputs": {"a": ["8", 0], "b": 1}},
        "10": out(["9", 0]),
    }
    result = ex.run(prompt)
    assert result.ok, result.error
    # each element's subgraph ran; its outputs were gathered back in order
    assert result.outputs["5"] == {"value": [6, 8, 10]}
    assert result.outputs["7"] == {"value": [24]}
    # element 0 returned a value, 2 and 4 expanded, 1 and 3 stayed blocked
    assert result.outputs["10"] == {"value": [1, 5, 9]}
    # subgraphs 3+3, 4+4, 5+5, 2+2, 4+4 and node 9's three calls; 4+4's two copies
    # share a signature, so it runs once
    assert tn.CALLS["TestDoubleByGraph"] == 6 and tn.CALLS["TestAdd"] == 4 + 3
    assert sorted(n.split(".")[0] for n in result.executed if "." in n) == ["4"] * 3 + ["8"]
    again = ex.run(prompt)
    assert again.ok and again.executed == []  # everything found by signature
    prompt["3"]["inputs"]["count"] = 4  # one more element: only it runs anew
    tn.CALLS.clear()
    longer = ex.run(prompt)
    assert longer.outputs["5"] == {"value": [6, 8, 10, 12]}
    assert tn.CALLS["TestAdd"] == 1


def test_expansion_per_element_with_a_clashing_id_is_a_node_error(ex, monkeypatch):
    def clash(self, ctx):
        return NodeResult((["same.1", 0],), expand={
            "same.1": {"class_type": "TestAdd", "inputs": {"a": self.x, "b": 0}}})

    monkeypatch.setattr(DoubleByGraph, "execute", clash)
    prompt = {"1": {"class_type": "TestIntList", "inputs": {"start": 1, "count": 2}},
              "2": {"class_type": "TestDoubleByGraph", "inputs": {"x": ["1", 0]}},
              "3": out(["2", 0])}
    result = ex.run(prompt)
    assert result.status == "error" and result.error["node_id"] == "2"
    assert "same node id 'same.1'" in result.error["exception_message"]


def test_an_empty_list_runs_nothing_downstream(ex):
    prompt = {"1": {"class_type": "TestIntList", "inputs": {"count": 0}},
              "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0]}}, "3": out(["2", 0])}
    result = ex.run(prompt)
    assert result.ok and tn.CALLS["TestAdd"] == 0 and "3" not in result.outputs


# --- async ----------------------------------------------------------------------------

def test_independent_async_nodes_run_concurrently(ex):
    prompt = {"1": {"class_type": "TestAsyncSleep", "inputs": {"seconds": 0.3, "x": 1}},
              "2": {"class_type": "TestAsyncSleep", "inputs": {"seconds": 0.3, "x": 2}},
              "3": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 0}},
              "4": out(["3", 0]), "5": out(["2", 0])}
    result = ex.run(prompt)
    assert result.ok, result.error
    assert result.outputs == {"4": {"value": [1]}, "5": {"value": [2]}}
    (_, start_a, end_a), (_, start_b, end_b) = SLEEPS
    assert start_b < end_a and start_a < end_b  # the two sleeps overlapped


def test_interrupt_cancels_async_nodes(ex):
    prompt = {"1": {"class_type": "TestAsyncSleep", "inputs": {"seconds": 30}},
              "2": out(["1", 0])}
    results = []
    worker = threading.Thread(target=lambda: results.append(ex.run(prompt, prompt_id="p")))
    worker.start()
    deadline = time.monotonic() + 10
    while "p" not in ex.running and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert ex.interrupt("p")
    worker.join(10)
    assert results and results[0].status == "interrupted"
    deadline = time.monotonic() + 5
    while not CANCELLED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert CANCELLED == ["1"]


# --- partial execution ------------------------------------------------------------------

def test_partial_execution_runs_only_the_chosen_outputs(ex):
    prompt = lazy_prompt(True)
    result = ex.run(prompt, outputs=["6"])
    assert result.ok and set(result.outputs) == {"6"}
    assert result.executed == ["1", "6"]
    lazy = ex.run(prompt, outputs=["5"])
    assert lazy.ok and lazy.executed == ["2", "4", "5"] and "3" not in lazy.executed


# --- hidden data and `*` types --------------------------------------------------------------

def test_dynamic_graph_is_visible_to_nodes(ex, monkeypatch):
    seen: dict[str, Any] = {}

    def spy(self, ctx):
        graph = ctx.graph
        seen["node"] = graph.get_node(ctx.node_id)
        seen["real"] = graph.get_real_node_id(ctx.node_id)
        return (self.a + self.b,)

    monkeypatch.setattr(tn.Add, "execute", spy)
    result = ex.run({"1": {"class_type": "TestSource", "inputs": {}},
                     "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 2}},
                     "3": out(["2", 0])})
    assert result.ok
    assert seen["node"] == {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 2}}
    assert seen["real"] == "2"


def test_any_typed_output_into_a_bounded_widget_is_checked_at_run_time(ex):
    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 9}},
              "2": {"class_type": "If", "inputs": {"if_true": ["1", 0]}},  # `*` output
              "3": {"class_type": "Switch", "inputs": {"select": ["2", 0]}},  # max 3
              "4": out(["3", 0])}
    result = ex.run(prompt)
    assert result.status == "error" and result.error["node_id"] == "3"
    assert "less than or equal to 3" in result.error["exception_message"]


# --- a batch of prompts through encode -> sample -> save ------------------------------

class PromptLines(Node):
    """One prompt per line, as a list output."""

    TYPE = "TestPromptLines"
    OUTPUTS = (Output("STRING", is_list=True),)
    text: str = Input("", multiline=True)

    def execute(self, ctx: ExecutionContext) -> tuple[list[str]]:
        return ([line for line in self.text.splitlines() if line.strip()],)


def test_a_batch_of_prompts_maps_through_encode_sample_save(session):
    session.registry.register(PromptLines, replace=True)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "2": {"class_type": "TestPromptLines",
              "inputs": {"text": "a red circle\na blue square\na green triangle"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": ["2", 0], "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["3", 0], "negative": ["4", 0],
            "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0],
                                                    "filename_prefix": "batch"}},
    }
    result = session.run(prompt)
    assert result.ok, result.run.error
    images = result.run.outputs["8"]["images"]
    assert len(images) == 3 and len({i["filename"] for i in images}) == 3
    import numpy as np
    from PIL import Image

    pixels = [np.asarray(Image.open(p)) for p in result.image_paths]
    assert all(p.shape == (32, 32, 3) for p in pixels)
    assert not np.array_equal(pixels[0], pixels[1])  # each prompt gave its own image
