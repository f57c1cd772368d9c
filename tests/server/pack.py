"""The server tests' node pack: the engine test nodes plus an image-writing node.

Used in-process (``make_registry``) and by subprocess servers through the
hidden ``--registry tests.server.pack:make_registry`` option.
"""

from __future__ import annotations

from PIL import Image

from engine import ExecutionContext, Input, Node, NodeRegistry, NodeResult
from tests import engine_nodes


class TestImage(Node):
    """Writes a small PNG to output/ (and optionally sends it as a preview)."""

    TYPE = "TestImage"
    OUTPUT_NODE = True
    value: int = Input(0, min=0, max=255)
    preview: bool = Input(False)

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        img = Image.new("RGB", (8, 8), (self.value, 0, 0))
        if self.preview:
            ctx.progress(1, 1, preview=img)
        folder = ctx.env.folder("output", create=True)
        name = f"test_{ctx.prompt_id}_{ctx.node_id}.png"
        img.save(folder / name)
        return NodeResult((), {"images": [{"filename": name, "subfolder": "", "type": "output"}]})


NODE_CLASSES = (*engine_nodes.TEST_NODES, TestImage)


def make_registry() -> NodeRegistry:
    registry = engine_nodes.make_registry()
    registry.register(TestImage)
    return registry
