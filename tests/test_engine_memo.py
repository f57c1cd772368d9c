"""The loop fast paths keep their meaning: the remembered part of a signature and
the per-run validation memo give what a fresh computation gives, never less."""

from __future__ import annotations

import json

import pytest

from engine import Environment, ExecutionContext, Executor, NodeResult
from engine.cache import value_nbytes
from engine.expansion import Subgraph
from engine.signature import _HEADS, signature
from nodes.flow_control import LoopFlow
from tests.test_engine2 import DoubleByGraph, make_registry, out


def _fresh(type_id, version, constants, fingerprint, upstream) -> str:
    """The signature computed without the memo."""
    _HEADS.clear()
    return signature(type_id, version, constants, fingerprint, upstream)


@pytest.mark.parametrize("a, b", [(1, 1.0), (1, True), (0.0, -0.0), ("1", 1), (None, "None"),
                                  (float("nan"), "nan")])
def test_equal_looking_constants_never_share_a_signature(a, b):
    up = [("x", "0" * 32, 0)]
    sig_a = signature("T", 1, {"v": a}, None, up)
    sig_b = signature("T", 1, {"v": b}, None, up)
    assert sig_a != sig_b
    assert sig_a == _fresh("T", 1, {"v": a}, None, up)  # remembered == computed
    assert signature("T", 1, {"v": b}, None, up) == _fresh("T", 1, {"v": b}, None, up)


def test_signature_depends_on_each_part():
    base = ("T", 1, {"a": 1, "b": "x"}, None, [("in", "ab" * 16, 0)])
    sigs = {signature(*base),
            signature("U", *base[1:]),
            signature("T", 2, *base[2:]),
            signature("T", 1, {"a": 2, "b": "x"}, None, base[4]),
            signature("T", 1, base[2], "file-hash", base[4]),
            signature("T", 1, base[2], None, [("in", "ab" * 16, 1)]),
            signature("T", 1, base[2], None, [("in", "cd" * 16, 0)])}
    assert len(sigs) == 7
    # key order does not matter, non-scalar constants (not remembered) still work
    assert signature("T", 1, {"b": "x", "a": 1}, None, base[4]) == signature(*base)
    nested = ("T", 1, {"a": [1, {"k": 2}]}, None, base[4])
    assert signature(*nested) == _fresh(*nested)
    assert json.loads(json.dumps(base[2])) == base[2]


def test_an_object_reporting_cpu_bytes_takes_the_fast_path_and_counts_once():
    flow = LoopFlow("12.3", 4)
    assert value_nbytes((flow, 5, 4)) == {"cpu": 4}
    assert value_nbytes((flow, flow, "ab")) == {"cpu": 6}


class _BadLast(DoubleByGraph):
    """Expands into ``TestIntList(count=3)``, except for 3: ``count=100000`` (max 1000)."""

    TYPE = "TestBadLast"

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        sub = Subgraph(ctx)
        node = sub.node("TestIntList", start=0, count=3 if self.x < 3 else 100_000)
        return NodeResult((node.out(0),), expand=sub.finalize())


def test_the_validation_memo_never_hides_a_bad_value(tmp_path):
    registry = make_registry()
    registry.register(_BadLast)
    ex = Executor(registry, Environment.create(tmp_path, device="cpu"))
    prompt = {"1": {"class_type": "TestIntList", "inputs": {"start": 0, "count": 3}},
              "2": {"class_type": "TestBadLast", "inputs": {"x": ["1", 0]}},
              "3": out(["2", 0])}
    ok = ex.run(prompt)
    assert ok.ok, ok.error
    # one run: elements 0-2 pass (and are remembered), element 3 must still fail
    prompt["1"]["inputs"]["count"] = 4
    bad = ex.run(prompt)
    assert bad.status == "error" and bad.error["node_id"] == "2"
    assert "less than or equal to 1000" in bad.error["exception_message"]
