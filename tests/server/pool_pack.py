"""The pool tests' node pack: the server test pack plus a model loader and a worker probe.

``TestLoadModel`` stands for a checkpoint loader: its ``ckpt_name`` input is what
routing matches (server.worker.prompt_models), and loading takes a while, once
per worker (the cache keeps it). ``TestWorkerPid`` reports which process ran it.
"""

from __future__ import annotations

import os
import time

from engine import ExecutionContext, Input, Node, NodeRegistry, NodeResult, Output
from tests.server import pack


class TestLoadModel(Node):
    TYPE = "TestLoadModel"
    OUTPUTS = (Output("MODEL"),)
    ckpt_name: str = Input("a.safetensors")
    load_seconds: float = Input(0.2, min=0.0, max=10.0)

    def execute(self, ctx: ExecutionContext) -> tuple[str]:
        time.sleep(self.load_seconds)
        return (f"{self.ckpt_name}@{os.getpid()}",)


class TestWorkerPid(Node):
    """Outputs the model it got and this worker's pid; ``steps`` of 10 ms (interruptible)."""

    TYPE = "TestWorkerPid"
    OUTPUT_NODE = True
    model: str = Input(type="MODEL", optional=True)
    seed: int = Input(0, min=0, max=1 << 30)
    steps: int = Input(0, min=0, max=100000)

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        for i in range(self.steps):
            time.sleep(0.01)
            ctx.progress(i + 1, self.steps)
        return NodeResult((), {"pid": [os.getpid()], "model": [self.model]})


class TestBurn(Node):
    """A CPU-bound stand-in for a sampler: ``steps`` steps of ``step_ms`` of CPU time each."""

    TYPE = "TestBurn"
    OUTPUT_NODE = True
    seed: int = Input(0, min=0, max=1 << 30)
    steps: int = Input(20, min=1, max=10000)
    step_ms: float = Input(10.0, min=0.0, max=1000.0)

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        x = self.seed
        for i in range(self.steps):
            end = time.process_time() + self.step_ms / 1000
            while time.process_time() < end:
                x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            ctx.progress(i + 1, self.steps)
        return NodeResult((), {"value": [x], "pid": [os.getpid()]})


def make_registry() -> NodeRegistry:
    registry = pack.make_registry()
    for cls in (TestLoadModel, TestWorkerPid, TestBurn):
        registry.register(cls)
    return registry
