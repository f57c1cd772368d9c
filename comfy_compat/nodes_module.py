"""ComfyUI's ``nodes`` module, as far as custom node packs use it (no torch imported).

Packs write ``from nodes import MAX_RESOLUTION`` (for INPUT_TYPES bounds) or
``import nodes; nodes.NODE_CLASS_MAPPINGS``. Our built-in node packs are also named
``nodes``; like ``server.PromptServer`` (:mod:`comfy_compat.prompt_server`),
``nodes/__init__.py`` resolves ComfyUI's public names lazily through a module
``__getattr__`` that reads them from here, so ``import nodes`` keeps meaning ours.

- :data:`MAX_RESOLUTION`: ComfyUI's bound on widths and heights, 16384.
- :data:`NODE_CLASS_MAPPINGS` / :data:`NODE_DISPLAY_NAME_MAPPINGS`: read-only live
  views, type id → class and → display name, over the built-in nodes and the ComfyUI
  packs adapted so far in this process. A pack's entries are its own ComfyUI classes; a
  built-in's is Steerflow's node class (it answers ``in`` and ``INPUT_TYPES``-free
  introspection through :meth:`engine.Node.schema`, not ComfyUI's calling convention).
- :func:`interrupt_processing` / :func:`before_node_execution`: ComfyUI's helpers,
  acting on the running prompt (see :mod:`comfy_compat.shims`'s model_management).
- ComfyUI's node classes packs call or subclass (``SaveImage``, ``PreviewImage``,
  ``LoraLoader``, ``CLIPTextEncode``, ``EmptyLatentImage``, ``KSampler``, ... and
  ``common_ksampler``): :mod:`comfy_compat.builtin_nodes`, built on first access.

:data:`COMFY_NAMES` lists every public name; ``nodes/__init__.py`` forwards those
(and only those) here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from comfy_compat.builtin_nodes import NAMES as _NODE_CLASS_NAMES

MAX_RESOLUTION = 16384

#: type id → (ComfyUI class, display name) of pack nodes adapted in this process
_pack_classes: dict[str, tuple[type, str | None]] = {}


def record_pack_class(type_id: str, comfy: type, display_name: str | None) -> None:
    """Called by the adapter for each ComfyUI class it adapts."""
    _pack_classes[type_id] = (comfy, display_name)


def _builtins() -> dict[str, Any]:
    import nodes  # our built-in packs (already imported wherever a pack loads)

    return {cls.TYPE: cls for cls in nodes.NODE_CLASSES}


class _ClassMappings(Mapping[str, Any]):
    """Type id → class: built-ins, then packs (a pack's own class wins on a clash)."""

    def _merged(self) -> dict[str, Any]:
        return {**_builtins(), **{k: v[0] for k, v in _pack_classes.items()}}

    def __getitem__(self, key: str) -> Any:
        if key in _pack_classes:
            return _pack_classes[key][0]
        return _builtins()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._merged())

    def __len__(self) -> int:
        return len(self._merged())

    def __repr__(self) -> str:
        return f"<NODE_CLASS_MAPPINGS: {len(self)} node types>"


class _DisplayNames(Mapping[str, str]):
    """Type id → display name."""

    def _merged(self) -> dict[str, str]:
        names = {k: str(getattr(cls, "DISPLAY_NAME", "") or k) for k, cls in _builtins().items()}
        names.update({k: v[1] or k for k, v in _pack_classes.items()})
        return names

    def __getitem__(self, key: str) -> str:
        return self._merged()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._merged())

    def __len__(self) -> int:
        return len(self._merged())


NODE_CLASS_MAPPINGS: Mapping[str, Any] = _ClassMappings()
NODE_DISPLAY_NAME_MAPPINGS: Mapping[str, str] = _DisplayNames()


def _model_management() -> Any:
    import importlib

    from comfy_compat import shims

    shims.install()  # the same comfy.model_management module packs import
    return importlib.import_module("comfy.model_management")


def interrupt_processing(value: bool = True) -> None:
    """ComfyUI's ``nodes.interrupt_processing``: interrupt the running prompt."""
    _model_management().interrupt_current_processing(value)


def before_node_execution() -> None:
    """ComfyUI's ``nodes.before_node_execution``: raise if the prompt was interrupted."""
    _model_management().throw_exception_if_processing_interrupted()


def __getattr__(name: str) -> Any:
    # ComfyUI's node classes (torch and the built-in nodes are imported only now)
    if name in _NODE_CLASS_NAMES:
        from comfy_compat.builtin_nodes import comfy_class

        return comfy_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: ComfyUI's public ``nodes`` names this module answers (``from nodes import X``)
COMFY_NAMES = frozenset({"MAX_RESOLUTION", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS",
                         "interrupt_processing", "before_node_execution",
                         *_NODE_CLASS_NAMES})
