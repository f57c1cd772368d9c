"""Widgets that only ComfyUI's front end draws: ``BOUNDING_BOX``, ``IMAGECOMPARE``, ``WEBCAM``.

ComfyUI's newer nodes take values of types that are not primitives (a crop region is a
``{"x", "y", "width", "height"}`` dict typed in a box editor; a webcam capture is a file
name its camera widget uploads). In an API prompt those values arrive as constants, which
the engine admits only for widget inputs: :class:`FrontEndWidgetNode` turns the inputs a
node names in ``FRONTEND_WIDGETS`` into widgets of their own socket type, whose constants
(and linked values) go through the node's check function instead of a primitive's.

Steerflow's canvas draws them too (``web/src/canvas/widgets/``: a crop box, the
before/after slider, the camera), and the UI-workflow converter keeps their places in
``widgets_values``.

:func:`frontend_widget` also serves sockets that ComfyUI lets an API prompt give a constant
(Math Expression's ``values.a``): both front ends still draw them as sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar

from pydantic import PlainValidator, TypeAdapter

from engine import Node
from engine.node import InputSpec


@dataclass(frozen=True)
class FrontEndWidgetSpec(InputSpec):
    """An input spec whose socket type is a front-end widget (constants admitted)."""

    @property
    def is_widget(self) -> bool:
        return not self.force_input


def frontend_widget(spec: InputSpec, check: Callable[[Any], Any]) -> FrontEndWidgetSpec:
    """``spec`` as a front-end widget whose values ``check`` validates: it returns the
    value to use, or raises ``ValueError`` with a message naming what to fix."""
    values = {f.name: getattr(spec, f.name) for f in fields(spec)}
    values["adapter"] = TypeAdapter(Annotated[Any, PlainValidator(check)])
    return FrontEndWidgetSpec(**values)


class FrontEndWidgetNode(Node):
    """Base of nodes with front-end widget inputs: ``FRONTEND_WIDGETS`` maps an input's
    name to the function that checks its values (see :func:`frontend_widget`)."""

    FRONTEND_WIDGETS: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if not cls.TYPE:
            return
        for name, check in cls.FRONTEND_WIDGETS.items():
            cls.INPUT_SPECS[name] = frontend_widget(cls.INPUT_SPECS[name], check)


def any_value(value: Any) -> Any:
    """A check that admits every value (a widget whose value the node ignores)."""
    return value
