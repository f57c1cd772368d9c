"""The node registry: built-in packs, custom packs, and the exported schema.

A node pack is any importable module exposing ``NODE_CLASSES`` (a sequence of
:class:`engine.node.Node` subclasses) and optionally ``setup(env)``, called once
before the first run (e.g. to create a default model). Built-in packs and
custom packs use exactly this API.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.environment import Environment
from engine.node import Node

log = logging.getLogger(__name__)

BUILTIN_PACKS = ("nodes",)
ENTRY_POINT_GROUP = "steerflow.nodes"


@dataclass
class PackError:
    pack: str
    message: str


@dataclass
class NodeRegistry:
    """Type id → node class, plus the packs they came from."""

    classes: dict[str, type[Node]] = field(default_factory=dict)
    setups: list[Callable[[Environment], None]] = field(default_factory=list)
    errors: list[PackError] = field(default_factory=list)

    def register(self, cls: type[Node], *, replace: bool = False) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Node)) or not cls.TYPE:
            raise TypeError(f"{cls!r} is not a Node subclass with a TYPE")
        if cls.TYPE in self.classes and not replace and self.classes[cls.TYPE] is not cls:
            raise ValueError(f"node type {cls.TYPE!r} is already registered")
        self.classes[cls.TYPE] = cls

    def get(self, type_id: str) -> type[Node] | None:
        return self.classes.get(type_id)

    def __contains__(self, type_id: object) -> bool:
        return type_id in self.classes

    def add_module(self, module: ModuleType) -> int:
        """Register a pack module's ``NODE_CLASSES``; returns how many were added."""
        classes: Iterable[type[Node]] = getattr(module, "NODE_CLASSES", ())
        count = 0
        for cls in classes:
            self.register(cls)
            count += 1
        setup = getattr(module, "setup", None)
        if callable(setup):
            self.setups.append(setup)
        return count

    def load_pack(self, name: str) -> None:
        """Import a pack by module name, recording (not raising) its failure."""
        try:
            self.add_module(importlib.import_module(name))
        except Exception as exc:  # a broken custom pack must not take the engine down
            log.exception("failed to load node pack %s", name)
            self.errors.append(PackError(name, f"{type(exc).__name__}: {exc}"))

    def load_directory(self, directory: Path) -> None:
        """Load every pack (a package or a ``.py`` file) in a custom-nodes folder."""
        if not directory.is_dir():
            return
        for path in sorted(directory.iterdir()):
            if path.name.startswith((".", "_")):
                continue
            if path.is_dir() and (path / "__init__.py").is_file():
                init = path / "__init__.py"
            elif path.suffix == ".py":
                init = path
            else:
                continue
            mod_name = f"steerflow_custom_nodes.{path.stem}"
            try:
                spec = importlib.util.spec_from_file_location(
                    mod_name, init,
                    submodule_search_locations=[str(path)] if path.is_dir() else None,
                )
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot import {init}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
                self.add_module(module)
            except Exception as exc:
                log.exception("failed to load custom node pack %s", path)
                sys.modules.pop(mod_name, None)
                self.errors.append(PackError(str(path), f"{type(exc).__name__}: {exc}"))

    def load_entry_points(self) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self.load_pack(ep.value)

    def setup(self, env: Environment) -> None:
        for hook in self.setups:
            hook(env)

    def schema(self, env: Environment | None = None) -> dict[str, dict[str, Any]]:
        """Every node's schema: the JSON the server, canvas and CLI all read."""
        return {type_id: cls.schema(env) for type_id, cls in sorted(self.classes.items())}


def default_registry(custom_nodes: Path | None = None) -> NodeRegistry:
    """Built-in packs, installed entry-point packs, and a custom-nodes folder."""
    registry = NodeRegistry()
    for name in BUILTIN_PACKS:
        registry.add_module(importlib.import_module(name))
    registry.load_entry_points()
    if custom_nodes is not None:
        registry.load_directory(custom_nodes)
    return registry
