"""Test-only nodes: counters, slow steps, failures and tensors, registered per test."""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, NodeRegistry, NodeResult, Output
from nodes import primitives

if TYPE_CHECKING:
    import torch

CALLS: Counter[str] = Counter()


class Source(Node):
    """Emits a value; counts its runs."""

    TYPE = "TestSource"
    OUTPUTS = (Output("INT"), Output("STRING", "label"))
    value: int = Input(1, min=0, max=100)
    label: str = Input("x")
    mode: str = Input("a", choices=("a", "b"))

    def execute(self, ctx: ExecutionContext) -> tuple[int, str]:
        CALLS[self.TYPE] += 1
        return self.value, self.label


class Add(Node):
    TYPE = "TestAdd"
    OUTPUTS = (Output("INT"),)
    a: int = Input(type="INT", force_input=True)
    b: int = Input(0)

    def execute(self, ctx: ExecutionContext) -> tuple[int]:
        CALLS[self.TYPE] += 1
        return (self.a + self.b,)


class Tensor(Node):
    """A float tensor of ``size`` bytes-ish (size/4 float32 elements)."""

    TYPE = "TestTensor"
    OUTPUTS = (Output("LATENT"),)
    size: int = Input(1024, min=4, max=1 << 30)
    seed: int = Input(0)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        CALLS[self.TYPE] += 1
        import torch  # here: server test workers never run this node, nor import torch

        g = torch.Generator().manual_seed(self.seed)
        return (torch.randn(self.size // 4, generator=g, device=ctx.device),)


class Sum(Node):
    TYPE = "TestSum"
    OUTPUTS = (Output("FLOAT"),)
    x: Any = Input(type="LATENT")
    y: Any = Input(type="LATENT", optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[float]:
        CALLS[self.TYPE] += 1
        total = float(self.x.sum())
        return (total + (float(self.y.sum()) if self.y is not None else 0.0),)


class Out(Node):
    TYPE = "TestOut"
    OUTPUT_NODE = True
    value: Any = Input(type="*")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        CALLS[self.TYPE] += 1
        return NodeResult((), {"value": [self.value]})


class Fail(Node):
    TYPE = "TestFail"
    OUTPUTS = (Output("INT"),)
    x: int = Input(type="INT", force_input=True)

    def execute(self, ctx: ExecutionContext) -> tuple[int]:
        raise RuntimeError("boom")


STEP_STARTED = threading.Event()


class Slow(Node):
    """Runs ``steps`` steps, reporting progress (and so checking interrupt) each step."""

    TYPE = "TestSlow"
    OUTPUTS = (Output("INT"),)
    x: int = Input(type="INT", force_input=True)
    steps: int = Input(1000, min=1, max=100000)

    def execute(self, ctx: ExecutionContext) -> tuple[int]:
        import time

        for i in range(self.steps):
            STEP_STARTED.set()
            time.sleep(0.002)
            ctx.progress(i + 1, self.steps)
        return (self.x,)


class Fingerprinted(Node):
    """Reads a file under input/; its content is its fingerprint."""

    TYPE = "TestFile"
    OUTPUTS = (Output("STRING"),)
    name: str = Input("data.txt")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        path = env.resolve("input", inputs["name"])
        return path.read_text() if path.exists() else None

    def execute(self, ctx: ExecutionContext) -> tuple[str]:
        CALLS[self.TYPE] += 1
        return (ctx.env.resolve("input", self.name).read_text(),)


class Finishing(Node):
    """Like TestSlow; stopped, it writes ``output/<name>`` for ``seconds`` first, as work a
    stop waits for (a training's checkpoint)."""

    TYPE = "TestFinishing"
    OUTPUT_NODE = True
    name: str = Input("finished.txt")
    seconds: float = Input(1.0, min=0.0, max=60.0)

    def execute(self, ctx: ExecutionContext) -> tuple[()]:
        import time

        from engine.context import Interrupted

        try:
            for i in range(100_000):
                time.sleep(0.005)
                ctx.progress(i + 1, 100_000)
        except Interrupted:
            with ctx.finishing("writing the test's file"):
                time.sleep(self.seconds)
                (ctx.env.folder("output", create=True) / self.name).write_text("complete")
            raise
        return ()


TEST_NODES = (Source, Add, Tensor, Sum, Out, Fail, Slow, Fingerprinted, Finishing)


def make_registry() -> NodeRegistry:
    reg = NodeRegistry()
    for cls in (*TEST_NODES, *primitives.NODE_CLASSES):
        reg.register(cls)
    return reg
