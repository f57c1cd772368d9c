"""Executor: partial re-runs, the shared LRU cache, pinning, failures, interrupt, events."""

from __future__ import annotations

import threading

import pytest

from engine import Environment, Executor, OutputCache
from tests import engine_nodes as tn


@pytest.fixture(autouse=True)
def reset_calls():
    tn.CALLS.clear()
    tn.STEP_STARTED.clear()


@pytest.fixture
def env(tmp_path):
    return Environment.create(tmp_path, device="cpu")


@pytest.fixture
def ex(env):
    return Executor(tn.make_registry(), env)


def chain(value=1, b=2, label="x"):
    return {
        "1": {"class_type": "TestSource", "inputs": {"value": value, "label": label}},
        "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": b}},
        "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}},
    }


def test_runs_and_reports_ui(ex):
    result = ex.run(chain())
    assert result.ok and result.outputs == {"3": {"value": [3]}}
    assert result.executed == ["1", "2", "3"]


def test_unchanged_workflow_runs_zero_nodes(ex):
    ex.run(chain())
    again = ex.run(chain())
    assert again.executed == [] and again.ok
    assert again.outputs == {"3": {"value": [3]}}  # cached UI outputs are still reported


def test_ui_of_nodes_that_are_not_output_nodes_is_reported_too(env):
    """ComfyUI's history keeps every node's UI (a pack's preview that is not an output
    node), fresh or cached, after the output nodes'."""
    from engine import Input, Node, NodeResult, Output

    class Shows(Node):
        TYPE = "TestShows"
        OUTPUTS = (Output("INT"),)
        x: int = Input(type="INT", force_input=True)

        def execute(self, ctx):
            return NodeResult((self.x,), {"text": [f"saw {self.x}"]})

    registry = tn.make_registry()
    registry.register(Shows)
    ex = Executor(registry, env)
    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 4}},
              "2": {"class_type": "TestShows", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}}
    for _ in range(2):
        result = ex.run(prompt)
        assert list(result.outputs.items()) == [("3", {"value": [4]}),
                                                ("2", {"text": ["saw 4"]})]


def test_execution_error_has_comfyuis_shapes(env):
    """current_inputs: each input a list of its values (plain JSON where it is one);
    current_outputs: the ids of the nodes whose outputs are at hand."""
    from engine import Input, Node, Output

    class Breaks(Node):
        TYPE = "TestBreaks"
        OUTPUTS = (Output("INT"),)
        x: int = Input(type="INT", force_input=True)
        text: str = Input("a / b")
        ratio: float = Input(0.5)

        def execute(self, ctx):
            raise ValueError("division by zero")

    registry = tn.make_registry()
    registry.register(Breaks)
    events = []
    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 4}},
              "2": {"class_type": "TestBreaks", "inputs": {"x": ["1", 0], "text": "a / b"}},
              "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}}
    executor = Executor(registry, env)
    result = executor.run(prompt, on_event=lambda name, data: events.append((name, data)))
    assert not result.ok
    [error] = [d for n, d in events if n == "execution_error"]
    assert error["current_inputs"] == {"text": ["a / b"], "ratio": [0.5], "x": [4]}
    assert error["current_outputs"] == ["1"]
    events.clear()  # again: the source is cached now, and still at hand
    result = executor.run(prompt, on_event=lambda name, data: events.append((name, data)))
    [error] = [d for n, d in events if n == "execution_error"]
    assert error["current_outputs"] == ["1"] and error["current_inputs"]["x"] == [4]


def test_change_reruns_only_downstream(ex):
    ex.run(chain())
    result = ex.run(chain(b=5))
    assert result.executed == ["2", "3"]
    assert result.cached == ["1"]
    assert result.outputs["3"] == {"value": [6]}


def test_change_of_unused_output_label_reruns_source_and_downstream(ex):
    ex.run(chain())
    assert ex.run(chain(label="y")).executed == ["1", "2", "3"]


def test_cache_shared_across_workflows(ex):
    ex.run(chain())
    other = {
        "a": {"class_type": "TestSource", "inputs": {"value": 1, "label": "x"}},
        "b": {"class_type": "TestOut", "inputs": {"value": ["a", 1]}},
    }
    result = ex.run(other)
    assert result.executed == ["b"]  # the source came from the first workflow's run
    assert tn.CALLS["TestSource"] == 1


def test_duplicate_nodes_in_one_prompt_run_once(ex):
    prompt = {
        "1": {"class_type": "TestSource", "inputs": {"value": 4}},
        "2": {"class_type": "TestSource", "inputs": {"value": 4}},
        "3": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 0}},
        "4": {"class_type": "TestAdd", "inputs": {"a": ["2", 0], "b": 1}},
        "5": {"class_type": "TestOut", "inputs": {"value": ["3", 0]}},
        "6": {"class_type": "TestOut", "inputs": {"value": ["4", 0]}},
    }
    assert ex.run(prompt).ok
    assert tn.CALLS["TestSource"] == 1


def tensor_prompt(seed, size=4000, other=None):
    prompt = {
        "t": {"class_type": "TestTensor", "inputs": {"size": size, "seed": seed}},
        "s": {"class_type": "TestSum", "inputs": {"x": ["t", 0]}},
        "o": {"class_type": "TestOut", "inputs": {"value": ["s", 0]}},
    }
    if other is not None:
        prompt["u"] = {"class_type": "TestTensor", "inputs": {"size": size, "seed": other}}
        prompt["s"]["inputs"]["y"] = ["u", 0]
    return prompt


def pair(x, y, size=4000):
    """A new Sum of two tensors: needs both tensors, cached or re-run."""
    prompt = tensor_prompt(x, size=size, other=y)
    prompt["o"]["inputs"]["value"] = ["s", 0]
    prompt["s"]["class_type"] = "TestSum"
    return prompt


def test_lru_eviction_within_budget(env):
    cache = OutputCache({"cpu": 10_000})  # room for two 4,000-byte tensors
    ex = Executor(tn.make_registry(), env, cache)
    for seed in (1, 2, 3):
        ex.run(tensor_prompt(seed))
    assert 0 < cache.used["cpu"] <= 10_000
    assert cache.evictions >= 1
    tn.CALLS.clear()
    ex.run(pair(2, 3))  # the two most recent tensors are still cached
    assert tn.CALLS["TestTensor"] == 0
    ex.run(pair(1, 3))  # the least recently used was evicted, so it re-runs
    assert tn.CALLS["TestTensor"] == 1


def test_lru_touch_on_use_protects_entry(env):
    cache = OutputCache({"cpu": 10_000})
    ex = Executor(tn.make_registry(), env, cache)
    ex.run(tensor_prompt(1))
    ex.run(tensor_prompt(2))
    ex.run(pair(1, 1))  # uses (touches) tensor 1, so tensor 2 is now the oldest
    ex.run(tensor_prompt(3))
    tn.CALLS.clear()
    ex.run(pair(1, 3))
    assert tn.CALLS["TestTensor"] == 0
    ex.run(pair(2, 3))
    assert tn.CALLS["TestTensor"] == 1


def test_running_prompt_entries_are_pinned(env):
    cache = OutputCache({"cpu": 1})  # smaller than any tensor
    ex = Executor(tn.make_registry(), env, cache)
    result = ex.run(tensor_prompt(1, other=2))
    assert result.ok  # both tensors survived until the sum used them
    assert cache.used.get("cpu", 0) <= 1  # and were evicted once unpinned
    assert all(entry.pins == 0 for entry in cache.entries.values())


def test_fingerprint_change_reruns(ex, env):
    env.folder("input", create=True)
    (env.folder("input") / "data.txt").write_text("one")
    prompt = {"1": {"class_type": "TestFile", "inputs": {"name": "data.txt"}},
              "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}
    assert ex.run(prompt).outputs["2"] == {"value": ["one"]}
    assert ex.run(prompt).executed == []
    (env.folder("input") / "data.txt").write_text("two")
    result = ex.run(prompt)
    assert result.executed == ["1", "2"] and result.outputs["2"] == {"value": ["two"]}


def test_failure_is_structured_and_cache_consistent(ex):
    prompt = chain()
    prompt["4"] = {"class_type": "TestFail", "inputs": {"x": ["2", 0]}}
    prompt["5"] = {"class_type": "TestOut", "inputs": {"value": ["4", 0]}}
    events = []
    result = ex.run(prompt, on_event=lambda e, d: events.append((e, d)))
    assert result.status == "error"
    err = result.error
    assert err["node_id"] == "4" and err["node_type"] == "TestFail"
    assert err["exception_message"] == "boom"
    assert any("boom" in line for line in err["traceback"])
    assert ("execution_error", err) in events
    assert all(e.pins == 0 for e in ex.cache.entries.values())
    # what succeeded before the failure is cached; the fixed prompt reruns nothing else
    del prompt["4"], prompt["5"]
    rerun = ex.run(prompt)
    assert set(rerun.executed) == {"1", "2", "3"} - set(result.executed)
    assert {"1", "2"} <= set(result.executed)


def test_event_sequence(ex):
    events = []
    ex.run(chain(), prompt_id="p1", on_event=lambda e, d: events.append((e, d)))
    names = [e for e, _ in events]
    assert names == ["execution_start", "execution_cached", "executing", "executing",
                     "executing", "executed", "execution_success", "executing"]
    assert events[-1][1] == {"node": None, "display_node": None, "prompt_id": "p1"}
    assert all(d["prompt_id"] == "p1" for _, d in events)


def slow_prompt(steps=100000):
    return {"1": {"class_type": "TestSource", "inputs": {}},
            "2": {"class_type": "TestSlow", "inputs": {"x": ["1", 0], "steps": steps}},
            "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}}


def test_interrupt_within_one_step(ex):
    events = []
    results = []
    thread = threading.Thread(target=lambda: results.append(
        ex.run(slow_prompt(), prompt_id="slow", on_event=lambda e, d: events.append((e, d)))))
    thread.start()
    assert tn.STEP_STARTED.wait(10)
    assert not ex.interrupt("another-prompt")  # per prompt: others are not touched
    assert ex.interrupt("slow")
    thread.join(10)
    assert not thread.is_alive()
    (result,) = results
    assert result.status == "interrupted"
    progress = [d["value"] for e, d in events if e == "progress"]
    assert len(progress) < 100000
    interrupted = [d for e, d in events if e == "execution_interrupted"]
    assert interrupted and interrupted[0]["node_id"] == "2"
    assert ex.run(chain()).ok  # the executor is usable afterwards


def test_ten_thousand_node_chain(ex):
    n = 10_000
    prompt = {"0": {"class_type": "PrimitiveInt", "inputs": {"value": 0}}}
    for i in range(1, n):
        prompt[str(i)] = {"class_type": "IntMath", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    prompt["out"] = {"class_type": "ShowValue", "inputs": {"value": [str(n - 1), 0]}}
    result = ex.run(prompt)
    assert result.ok and result.outputs["out"] == {"text": [str(n - 1)]}
    assert ex.run(prompt).executed == []


def test_fully_cached_prompt_still_sends_executed_with_ui(ex):
    """ComfyUI sends ``executed`` for cached output nodes: clients show results from it.
    ``execution_cached`` lists every cached node, also those the cached output spares."""
    ex.run(chain())
    events = []
    again = ex.run(chain(), prompt_id="p2", on_event=lambda e, d: events.append((e, d)))
    assert again.executed == [] and again.cached == ["1", "2", "3"]
    names = [e for e, _ in events]
    assert names == ["execution_start", "execution_cached", "executed", "execution_success",
                     "executing"]
    assert events[2][1] == {"node": "3", "display_node": "3", "output": {"value": [3]},
                            "prompt_id": "p2"}


def test_a_cached_output_node_without_ui_gets_executed_with_a_null_output(env):
    """ComfyUI sends ``executed`` for every cached output node of the prompt, its output
    null where it showed nothing, so a client waiting for each output node is answered;
    a fresh run without UI sends none, as there."""
    from engine import Input, Node

    class Sink(Node):
        TYPE = "TestSink"
        OUTPUT_NODE = True
        value: int = Input(type="INT", force_input=True)

        def execute(self, ctx):
            return ()

    registry = tn.make_registry()
    registry.register(Sink)
    ex = Executor(registry, env)
    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 4}},
              "2": {"class_type": "TestSink", "inputs": {"value": ["1", 0]}}}
    for run, expected in ((1, []), (2, [{"node": "2", "display_node": "2", "output": None,
                                         "prompt_id": "p2"}])):
        events: list = []
        assert ex.run(prompt, prompt_id=f"p{run}",
                      on_event=lambda e, d, seen=events: seen.append((e, d))).ok
        assert [d for e, d in events if e == "executed"] == expected


def test_a_twin_output_node_gets_executed_on_the_first_run_too(ex):
    """Two identical output nodes (a second preview on the same image): the second is a
    cache hit of the first in the same run, and gets its ``executed`` as ComfyUI sends it,
    so a client that shows results per node fills both."""
    prompt = {**chain(), "4": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}}
    events = []
    result = ex.run(prompt, prompt_id="p1", on_event=lambda e, d: events.append((e, d)))
    assert result.ok and result.executed == ["1", "2", "3"]
    shown = [d["node"] for e, d in events if e == "executed"]
    assert sorted(shown) == ["3", "4"]
    assert result.outputs == {"3": {"value": [3]}, "4": {"value": [3]}}


def test_a_node_calling_sys_exit_is_its_error_not_the_end_of_the_process(env):
    """A pack's node calling sys.exit() ended `steerflow run` and Sessions silently."""
    import sys

    from engine import Input, Node, Output

    class Quits(Node):
        TYPE = "TestQuits"
        OUTPUT_NODE = True
        OUTPUTS = (Output("INT"),)
        value: int = Input(1)

        def execute(self, ctx):
            sys.exit(4)

    registry = tn.make_registry()
    registry.register(Quits)
    result = Executor(registry, env).run({"1": {"class_type": "TestQuits", "inputs": {}}})
    assert result.status == "error" and result.error["node_id"] == "1"
    assert "sys.exit(4)" in result.error["exception_message"]
