"""The pool pack plus the real ``LoadImage`` and a probe of what it loaded: for the
tests of remote workers, whose input/ is not the head's (tests/server/test_pool.py)."""

from __future__ import annotations

import os
from typing import Any

from engine import ExecutionContext, Input, Node, NodeRegistry, NodeResult
from nodes.image import LoadImage
from tests.server import pool_pack


class TestImageInfo(Node):
    """Reports an image's size, its first pixel (0-255) and the worker's pid."""

    TYPE = "TestImageInfo"
    OUTPUT_NODE = True
    image: Any = Input(type="IMAGE")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        image = self.image
        first = [round(float(v) * 255) for v in image[0, 0, 0]]
        return NodeResult((), {"size": [list(image.shape[1:3])], "pixel": [first],
                               "pid": [os.getpid()]})


def make_registry() -> NodeRegistry:
    registry = pool_pack.make_registry()
    for cls in (LoadImage, TestImageInfo):
        registry.register(cls)
    return registry
