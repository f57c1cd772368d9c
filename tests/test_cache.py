"""Cache memory accounting: every large value kind counts, is evicted, and budgets parse."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Environment, ExecutionContext, Executor, Input, Node, Output, OutputCache
from engine.cache import MAX_BUDGET, check_budget, parse_budget, value_nbytes
from engine.session import default_budgets, device_memory
from tests import engine_nodes as tn

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
GiB = 1 << 30


# --- value_nbytes ---------------------------------------------------------------
@pytest.mark.parametrize("value", [None, 0, 1.5, True, 3 + 4j, (1, 2.0, None), [1, 2], ""])
def test_numbers_weigh_nothing(value: Any):
    assert value_nbytes(value) == {}


def test_bytes_and_strings_count():
    assert value_nbytes(b"x" * 1000) == {"cpu": 1000}
    assert value_nbytes(bytearray(2048)) == {"cpu": 2048}
    assert value_nbytes(memoryview(bytearray(4096))[:10]) == {"cpu": 4096}  # its exporter
    assert value_nbytes(memoryview(np.zeros(100, np.uint8))) == {"cpu": 100}
    assert value_nbytes("a" * 5000) == {"cpu": 5000}
    # a non-ASCII string stores up to 4 bytes per character
    assert value_nbytes("\U0001f600" * 1000)["cpu"] >= 4000
    assert value_nbytes((1, "abc", b"de")) == {"cpu": 5}


def test_numpy_arrays_and_shared_bases():
    a = np.zeros((256, 256), np.float32)
    assert value_nbytes(a) == {"cpu": a.nbytes}
    # views of one buffer count the buffer once, whatever their own size
    assert value_nbytes((a[::2], a[:, 3], a.T)) == {"cpu": a.nbytes}
    assert value_nbytes([a, a.copy()]) == {"cpu": 2 * a.nbytes}
    # a tensor sharing the array's memory is not counted twice
    assert value_nbytes((a, torch.from_numpy(a))) == {"cpu": a.nbytes}
    obj = np.array(["x" * 1000, b"y" * 500], dtype=object)
    assert value_nbytes(obj)["cpu"] >= obj.nbytes + 1500


@pytest.mark.parametrize("mode, per_pixel", [("RGB", 4), ("RGBA", 4), ("L", 1), ("1", 1),
                                             ("F", 4), ("I;16", 2), ("LA", 4)])
def test_pil_images(mode: str, per_pixel: int):
    img = Image.new(mode, (300, 200))
    assert value_nbytes(img) == {"cpu": 300 * 200 * per_pixel}


@dataclass
class Holder:
    arrays: list[Any]
    name: str
    meta: dict[str, Any]


def test_containers_and_dataclasses_mix_devices():
    arr = np.ones(1000, np.uint8)
    img = Image.new("L", (10, 10))
    value = (Holder([arr, arr], "n" * 30, {"img": img, "blob": b"b" * 70}),
             {"t": torch.zeros(25, dtype=torch.float32)}, {arr.tobytes()})
    assert value_nbytes(value) == {"cpu": 1000 + 30 + 100 + 70 + 100 + 1000}

    class Reported:
        def __cache_nbytes__(self) -> dict[str, int]:
            return {"cuda": 123}

    assert value_nbytes([Reported(), "xy"]) == {"cuda": 123, "cpu": 2}


def test_counting_imports_nothing_heavy():
    """A value without torch/numpy/PIL objects is sized without importing them."""
    code = textwrap.dedent("""
        import sys
        from dataclasses import dataclass
        from engine.cache import value_nbytes
        @dataclass
        class D:
            x: object
        v = ({"a": [1, "x" * 10, b"y" * 3, bytearray(2)]}, D(memoryview(b"zz")), {1.5})
        assert value_nbytes(v) == {"cpu": 17}, value_nbytes(v)
        heavy = [m for m in ("torch", "numpy", "PIL") if m in sys.modules]
        assert not heavy, heavy
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- eviction of non-tensor values in a real run -------------------------------
CACHE: list[OutputCache] = []
SEEN: list[dict[str, int]] = []


class Blob(Node):
    """A large non-tensor value: a numpy array or bytes of ``size`` bytes."""

    TYPE = "TestBlob"
    OUTPUTS = (Output("BLOB"),)
    size: int = Input(1024, min=0, max=1 << 31)
    kind: str = Input("numpy", choices=("numpy", "bytes", "image"))
    seed: int = Input(0)

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        tn.CALLS[self.TYPE] += 1
        if self.kind == "bytes":
            return (bytes(self.size),)
        if self.kind == "image":
            return (Image.new("L", (self.size // 1024, 1024)),)
        return (np.full(self.size, self.seed % 256, np.uint8),)


class Measure(Node):
    """Total size of its inputs; records the cache's usage while both are live."""

    TYPE = "TestMeasure"
    OUTPUTS = (Output("INT"),)
    x: Any = Input(type="BLOB")
    y: Any = Input(type="BLOB", optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[int]:
        tn.CALLS[self.TYPE] += 1
        SEEN.append(dict(CACHE[0].used))
        sizes = [value_nbytes(v).get("cpu", 0) for v in (self.x, self.y) if v is not None]
        return (sum(sizes),)


@pytest.fixture
def run_env(tmp_path):
    tn.CALLS.clear()
    CACHE.clear()
    SEEN.clear()
    registry = tn.make_registry()
    registry.register(Blob)
    registry.register(Measure)
    return registry, Environment.create(tmp_path, device="cpu")


def blob_prompt(size: int, kind: str = "numpy", seed: int = 0, other: int | None = None
                ) -> dict[str, Any]:
    prompt: dict[str, Any] = {
        "b": {"class_type": "TestBlob", "inputs": {"size": size, "kind": kind, "seed": seed}},
        "m": {"class_type": "TestMeasure", "inputs": {"x": ["b", 0]}},
        "o": {"class_type": "TestOut", "inputs": {"value": ["m", 0]}},
    }
    if other is not None:
        prompt["c"] = {"class_type": "TestBlob",
                       "inputs": {"size": size, "kind": kind, "seed": other}}
        prompt["m"]["inputs"]["y"] = ["c", 0]
    return prompt


@pytest.mark.parametrize("kind", ["numpy", "bytes", "image"])
def test_large_value_is_evicted_after_the_prompt(run_env, kind: str):
    """The scaled-down "10 GiB output": 64 MiB against a 16 MiB budget."""
    registry, env = run_env
    budget = 16 * MiB
    cache = OutputCache({"cpu": budget})
    CACHE.append(cache)
    ex = Executor(registry, env, cache)
    result = ex.run(blob_prompt(64 * MiB, kind))
    assert result.ok and result.outputs["o"] == {"value": [64 * MiB]}
    assert SEEN[0]["cpu"] >= 64 * MiB  # it was held (pinned) while its consumer ran
    assert cache.used.get("cpu", 0) <= budget  # and dropped once the prompt let go
    assert cache.evictions >= 1
    assert all(e.pins == 0 for e in cache.entries.values())
    assert not any(e.nbytes.get("cpu", 0) >= 64 * MiB for e in cache.entries.values())
    assert ex.run(blob_prompt(64 * MiB, kind)).executed == []  # the small results stay


def test_pinned_values_are_never_evicted_mid_run(run_env):
    registry, env = run_env
    cache = OutputCache({"cpu": 16 * MiB})
    CACHE.append(cache)
    ex = Executor(registry, env, cache)
    result = ex.run(blob_prompt(32 * MiB, other=1))
    assert result.ok and result.outputs["o"] == {"value": [64 * MiB]}
    assert SEEN[0]["cpu"] >= 64 * MiB  # both over-budget inputs alive together
    assert cache.used.get("cpu", 0) <= 16 * MiB


def test_small_values_stay_cached(run_env):
    registry, env = run_env
    cache = OutputCache({"cpu": 16 * MiB})
    CACHE.append(cache)
    ex = Executor(registry, env, cache)
    ex.run(blob_prompt(1 * MiB))
    assert 1 * MiB <= cache.used["cpu"] <= 16 * MiB
    tn.CALLS.clear()
    assert ex.run(blob_prompt(1 * MiB)).executed == []


def test_large_ui_payload_counts():
    cache = OutputCache({"cpu": 1 * MiB})
    entry = cache.put("sig", (), {"text": ["x" * (4 * MiB)]})
    assert entry.nbytes["cpu"] >= 4 * MiB
    assert "sig" not in cache and cache.used["cpu"] == 0


# --- budgets --------------------------------------------------------------------
def fake_memory(gpu: bool):
    def memory(device: str) -> int | None:
        if device == "cpu":
            return 64 * GiB
        if device == "cuda" and gpu:
            return 80 * GiB
        return None

    return memory


@pytest.mark.parametrize("text, gpu, expected", [
    ("8000000", False, {"cpu": 8_000_000}),
    ("8GB", False, {"cpu": 8 * 10**9}),
    ("8GiB", False, {"cpu": 8 * GiB}),
    ("8G", False, {"cpu": 8 * GiB}),
    ("8gib", False, {"cpu": 8 * GiB}),
    (" 512 MiB ", False, {"cpu": 512 * MiB}),
    ("1.5GiB", False, {"cpu": 3 * GiB // 2}),
    ("0", False, {"cpu": 0}),
    ("100B", False, {"cpu": 100}),
    ("8GiB", True, {"cpu": 8 * GiB, "cuda": 8 * GiB}),
    ("50%", False, {"cpu": 32 * GiB}),
    ("50%", True, {"cpu": 32 * GiB, "cuda": 40 * GiB}),
    ("cpu=4GiB,cuda=80%", True, {"cpu": 4 * GiB, "cuda": 64 * GiB}),
    ("cpu=4GiB, cuda=80%", False, {"cpu": 4 * GiB}),  # no GPU here: nothing to bound
    ("CUDA=10GiB", False, {"cuda": 10 * GiB}),
    ("cpu=25%", True, {"cpu": 16 * GiB}),
])
def test_parse_budget(text: str, gpu: bool, expected: dict[str, int]):
    assert parse_budget(text, memory=fake_memory(gpu)) == expected


@pytest.mark.parametrize("text, message", [
    ("", "empty cache budget"),
    ("   ", "empty cache budget"),
    ("-1GiB", "is negative"),
    ("cpu=-5", "is negative"),
    ("lots", "is not a size"),
    ("8 GiBs", "unknown unit"),
    ("8XB", "unknown unit"),
    ("150%", "over 100%"),
    ("2000TiB", "more than 1 PiB"),
    ("gpu=4GiB", "unknown device 'gpu'"),
    ("cuda:0=4GiB", "per device type"),
    ("cpu=1GiB,cpu=2GiB", "given twice"),
    ("4GiB,cuda=80%", "names no device"),
    ("cpu=", "is not a size"),
    ("1e9", "is not a size"),
])
def test_parse_budget_errors(text: str, message: str):
    with pytest.raises(ValueError, match=r"bad cache budget|empty cache budget") as info:
        parse_budget(text, memory=fake_memory(True))
    assert message in str(info.value)
    with pytest.raises(ValueError):
        check_budget(text)


def test_percentage_of_unknown_ram_is_an_error():
    with pytest.raises(ValueError, match="give the cpu budget in bytes"):
        parse_budget("cpu=50%", memory=lambda device: None)


def test_check_budget_asks_no_device():
    assert check_budget("cpu=4GiB,cuda=80%") == [("cpu", ("bytes", 4 * GiB)),
                                                 ("cuda", ("percent", 80.0))]
    assert check_budget("50%") == [(None, ("percent", 50.0))]
    assert MAX_BUDGET == 1 << 50


def test_default_memory_and_budgets_agree():
    ram = device_memory("cpu")
    assert ram is not None and ram > 0
    has_cuda = torch.cuda.is_available()
    assert (device_memory("cuda") is not None) == has_cuda
    assert device_memory("tpu") is None
    assert parse_budget("50%")["cpu"] == ram // 2
    budgets = default_budgets()
    assert budgets["cpu"] == ram // 2
    assert ("cuda" in budgets) == has_cuda
