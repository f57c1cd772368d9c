"""The server tests' node pack: the engine test nodes plus an image-writing node.

Used in-process (``make_registry``) and by subprocess servers through the
hidden ``--registry tests.server.pack:make_registry`` option.
"""

from __future__ import annotations

import os
import signal
import time

from PIL import Image

from engine import ExecutionContext, Input, Node, NodeRegistry, NodeResult, Output
from nodes.image import SaveImageWebsocket
from tests import engine_nodes


class TestImage(Node):
    """Writes a small PNG to output/ (and optionally sends it as a preview)."""

    TYPE = "TestImage"
    OUTPUT_NODE = True
    value: int = Input(0, min=0, max=255)
    preview: bool = Input(False)
    hold: float = Input(0.0, min=0.0, max=10.0)  # seconds to stay running after the preview

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        img = Image.new("RGB", (8, 8), (self.value, 0, 0))
        if self.preview:
            ctx.progress(1, 1, preview=img)
        time.sleep(self.hold)
        folder = ctx.env.folder("output", create=True)
        name = f"test_{ctx.prompt_id}_{ctx.node_id}.png"
        img.save(folder / name)
        return NodeResult((), {"images": [{"filename": name, "subfolder": "", "type": "output"}]})


class TestImageTensor(Node):
    """An IMAGE ``[batch, 6, 8, 3]``: image i is (value + i, 0, 0) in 8-bit RGB."""

    TYPE = "TestImageTensor"
    OUTPUTS = (Output("IMAGE"),)
    value: int = Input(0, min=0, max=250)
    batch: int = Input(1, min=1, max=4)

    def execute(self, ctx: ExecutionContext) -> tuple[object]:
        import torch

        images = torch.zeros(self.batch, 6, 8, 3)
        for i in range(self.batch):
            images[i, ..., 0] = (self.value + i) / 255.0
        return (images,)


class TestHog(Node):
    """Holds the GIL for a long time in one C call and never checks for interrupts."""

    TYPE = "TestHog"
    OUTPUT_NODE = True
    OUTPUTS = (Output("INT"),)
    digits: int = Input(1_000_000, min=1, max=10_000_000)

    def execute(self, ctx: ExecutionContext) -> tuple[int]:
        # Modular exponentiation by a number of `digits` digits: millions of squarings
        # inside a single bytecode, so no other thread of this process can run.
        return (pow(3, 10 ** self.digits, (1 << 4096) - 1) & 0xFFFF,)


class TestCrash(Node):
    """Kills its own process with a signal, as a segfaulting extension would."""

    TYPE = "TestCrash"
    OUTPUT_NODE = True
    sig: str = Input("SIGSEGV", choices=("SIGSEGV", "SIGKILL", "EXIT"))

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        if self.sig == "EXIT":
            os._exit(3)  # as a C extension's exit(): sys.exit is the node's error
        os.kill(os.getpid(), getattr(signal, self.sig))
        time.sleep(10)
        return NodeResult()


class TestPrint(Node):
    """Prints its text to stdout and stderr, as a pack's debugging print does."""

    TYPE = "TestPrint"
    OUTPUT_NODE = True
    text: str = Input("hello")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        import sys

        print(f"stdout: {self.text}", flush=True)
        print(f"stderr: {self.text}", file=sys.stderr, flush=True)
        return NodeResult()


class TestWarn(Node):
    """Sends ``times`` node warnings, then fails if ``fail``."""

    TYPE = "TestWarn"
    OUTPUT_NODE = True
    text: str = Input("careful")
    times: int = Input(1, min=0, max=50)
    fail: bool = Input(False)

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        for i in range(self.times):
            ctx.warn(f"{self.text} {i}")
        if self.fail:
            raise ValueError("failed after its warnings")
        return NodeResult()


class TestSpawn(Node):
    """Starts a long-lived helper process (as a node starting a tool would); its pid is
    the node's UI output."""

    TYPE = "TestSpawn"
    OUTPUT_NODE = True
    seconds: int = Input(300, min=1, max=3600)

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        import subprocess
        import sys

        helper = subprocess.Popen([sys.executable, "-c",
                                   f"import time; time.sleep({self.seconds})"])
        return NodeResult((), {"pid": [helper.pid]})


PACK_NODES = (TestImage, TestImageTensor, SaveImageWebsocket, TestHog, TestCrash, TestPrint,
              TestWarn, TestSpawn)
NODE_CLASSES = (*engine_nodes.TEST_NODES, *PACK_NODES)


def make_registry() -> NodeRegistry:
    registry = engine_nodes.make_registry()
    for cls in PACK_NODES:
        registry.register(cls)
    return registry
