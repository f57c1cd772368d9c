"""A small Python API for scripts and notebooks.

    from engine.session import Session, Workflow

    session = Session(base_dir=".")                 # models/, input/, output/ under it
    wf = session.load("workflows/txt2img.json")       # API JSON, document, ComfyUI UI format,
                                                      # or a PNG saved by Steerflow or ComfyUI
    wf.set("3.seed", 42)                              # NODE_ID.INPUT = value
    result = session.run(wf, on_event=print)
    result.images[0].show()

The session keeps one executor, so its cache serves later runs: a second run
with only the seed changed re-runs the sampler and what follows it.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.cache import OutputCache, parse_budget
from engine.comfy_primitives import PRIMITIVE_NODES, PRIMITIVE_TITLE
from engine.environment import Environment
from engine.executor import EventCallback, Executor, RunResult
from engine.registry import NodeRegistry, default_registry
from engine.validation import Issue, ValidatedPrompt
from engine.workflow import Prompt, from_object, load_workflow, prompt_to_document


class WorkflowInputError(ValueError):
    """An override names a node or input the workflow does not have."""


@dataclass
class Workflow:
    """An executable prompt plus (optionally) the document it came from.

    ComfyUI's UI format converts with a ``registry``'s node schemas (a Session's
    ``load`` passes its own); ``warnings`` says what the conversion left behind.
    """

    prompt: Prompt
    document: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | os.PathLike[str],
             registry: NodeRegistry | None = None) -> Workflow:
        warnings: list[str] = []
        prompt, document = load_workflow(path, registry, warnings)
        return cls(prompt, document, warnings)

    @classmethod
    def from_object(cls, obj: Any, registry: NodeRegistry | None = None) -> Workflow:
        warnings: list[str] = []
        prompt, document = from_object(obj, registry, warnings)
        return cls(prompt, document, warnings)

    def copy(self) -> Workflow:
        return Workflow(copy.deepcopy(self.prompt), copy.deepcopy(self.document),
                        list(self.warnings))

    def set(self, target: str, value: Any, registry: NodeRegistry | None = None) -> Workflow:
        """Set ``"NODE_ID.INPUT"`` to a constant; the node may also be named by its title
        (``"Title.INPUT"``) or, for a node without one, by the name a canvas shows it
        under: its type, our display name or ComfyUI's (``"KSampler.steps"``,
        ``"Sample.steps"``), when that names one node.

        An input name may hold dots (``"3.resize_type.width"``): the longest prefix that
        names a node is the node. With a ``registry``, an input the node type does not
        have is an error.
        """
        node_ref, sep, input_name = target.rpartition(".")
        if not sep or not node_ref or not input_name:
            raise WorkflowInputError(f"expected NODE_ID.INPUT, got {target!r}")
        while not self._matches(node_ref, registry) and "." in node_ref:
            node_ref, _, head = node_ref.rpartition(".")
            input_name = f"{head}.{input_name}"
        if not self._matches(node_ref, registry):
            node_ref, _, input_name = target.rpartition(".")  # the error names it as before
        node_id = self._find_node(node_ref, registry)
        cls = registry.get(self.prompt[node_id].get("class_type", "")) if registry else None
        if cls is not None and input_name not in cls.INPUT_SPECS:
            raise WorkflowInputError(f"node {node_id} ({cls.TYPE}) has no input {input_name!r}; "
                                     f"it has: {', '.join(cls.INPUT_SPECS)}")
        self.prompt[node_id].setdefault("inputs", {})[input_name] = value
        if self.document is not None and node_id in self.document.get("prompt", {}):
            self.document["prompt"][node_id].setdefault("inputs", {})[input_name] = value
        return self

    def _matches(self, ref: str, registry: NodeRegistry | None) -> list[str]:
        """The ids of the nodes ``ref`` names: the node of that id; else those of that
        title; else the untitled ones shown under that name (type or display name)."""
        if ref in self.prompt:
            return [ref]
        nodes = [(nid, node) for nid, node in self.prompt.items() if isinstance(node, dict)]
        titled = [nid for nid, node in nodes if (node.get("_meta") or {}).get("title") == ref]
        if titled:
            return titled

        def shown_as(node: dict[str, Any]) -> set[str]:
            kind = str(node.get("class_type", ""))
            cls = registry.get(kind) if registry is not None else None
            names = {kind}
            if cls is not None:
                names |= {cls.DISPLAY_NAME, cls.comfy_display_name() or ""}
            if kind in PRIMITIVE_TYPES:  # what a ComfyUI PrimitiveNode becomes
                names |= {PRIMITIVE_TITLE, "PrimitiveNode"}
            return names

        untitled = [nid for nid, node in nodes
                    if not (node.get("_meta") or {}).get("title") and ref in shown_as(node)]
        # else a titled node by its type (the examples title every node: `KSampler.steps`
        # on txt2img.json, whose KSampler is "Sample")
        return untitled or [nid for nid, node in nodes if ref in shown_as(node)]

    def _find_node(self, ref: str, registry: NodeRegistry | None = None) -> str:
        found = self._matches(ref, registry)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise WorkflowInputError(f"{ref!r} names {len(found)} nodes "
                                     f"({', '.join(found[:10])}); use a node id")
        raise WorkflowInputError(f"no node {ref!r} in the workflow (ids: "
                                 f"{', '.join(list(self.prompt)[:20])})")

    def to_document(self) -> dict[str, Any]:
        if self.document is not None:
            return {**self.document, "prompt": self.prompt}
        return prompt_to_document(self.prompt)


#: the node types a ComfyUI PrimitiveNode becomes (untitled, named as ComfyUI shows it)
PRIMITIVE_TYPES = frozenset(t for types in PRIMITIVE_NODES.values() for t in types)


def parse_override(text: str) -> tuple[str, Any]:
    """``NODE.INPUT=VALUE``; VALUE is read as JSON when it parses, else as a string."""
    target, sep, raw = text.partition("=")
    if not sep:
        raise WorkflowInputError(f"expected NODE_ID.INPUT=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return target.strip(), value


@dataclass
class SessionResult:
    """A run's result with its image files resolved to paths."""

    run: RunResult
    image_paths: list[Path] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # validation warnings (severity "warning": the prompt ran anyway)
    warnings: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.run.ok

    @property
    def images(self) -> list[Any]:
        from PIL import Image

        return [Image.open(p) for p in self.image_paths]


class Session:
    """Registry, environment and executor (with its cache) for repeated runs."""

    def __init__(self, base_dir: str | os.PathLike[str] = ".", *,
                 models_dir: str | os.PathLike[str] | None = None,
                 output_dir: str | os.PathLike[str] | None = None,
                 device: str | None = None, allow_pickle: bool = False,
                 cache_budgets: dict[str, int] | None = None,
                 registry: NodeRegistry | None = None,
                 custom_nodes: str | os.PathLike[str] | None = None):
        self.env = Environment.create(base_dir, models_dir=models_dir, output_dir=output_dir,
                                      device=device, allow_pickle=allow_pickle)
        self.registry = registry or default_registry(
            Path(custom_nodes) if custom_nodes else None, env=self.env)
        self.executor = Executor(self.registry, self.env,
                                 OutputCache(cache_budgets or default_budgets()))

    def load(self, path: str | os.PathLike[str]) -> Workflow:
        """Read a workflow file (any format :func:`engine.workflow.load_workflow` reads)."""
        return Workflow.load(path, self.registry)

    def run(self, workflow: Workflow | Prompt | str | os.PathLike[str], *,
            on_event: EventCallback | None = None, prompt_id: str | None = None,
            keep_events: bool = False, extra: dict[str, Any] | None = None) -> SessionResult:
        """Run a workflow; raises PromptValidationError before running if it is invalid."""
        wf = self._as_workflow(workflow)
        validated = self.executor.validate(wf.prompt)
        events: list[tuple[str, dict[str, Any]]] = []
        sink: Callable[[str, dict[str, Any]], None] | None = on_event
        if keep_events:
            def sink(name: str, data: dict[str, Any]) -> None:
                events.append((name, data))
                if on_event:
                    on_event(name, data)
        extra = dict(extra or {})
        pnginfo = dict(extra.get("extra_pnginfo") or {})
        pnginfo.setdefault("workflow", wf.to_document())
        extra["extra_pnginfo"] = pnginfo
        run = self.executor.run(wf.prompt, prompt_id=prompt_id, extra=extra, on_event=sink,
                                validated=validated)
        return SessionResult(run, self.image_paths(run), events, list(validated.warnings))

    def image_paths(self, run: RunResult) -> list[Path]:
        paths = []
        for ui in run.outputs.values():
            for item in ui.get("images", []):
                paths.append(self.env.resolve(item["type"], item.get("subfolder", ""),
                                              item["filename"]))
        return paths

    def validate(self, workflow: Workflow | Prompt | str | os.PathLike[str]
                 ) -> ValidatedPrompt:
        """Check a workflow; raises PromptValidationError, else returns what would run
        (its ``warnings`` too)."""
        return self.executor.validate(self._as_workflow(workflow).prompt)

    def _as_workflow(self, workflow: Workflow | Prompt | str | os.PathLike[str]) -> Workflow:
        if isinstance(workflow, Workflow):
            return workflow
        if isinstance(workflow, dict):
            return Workflow.from_object(workflow, self.registry)
        return Workflow.load(workflow, self.registry)


DEFAULT_BUDGET = "cpu=50%,cuda=80%"
_FALLBACK_RAM = 16 << 30


def default_budgets() -> dict[str, int]:
    """Half the machine's memory for cached CPU values, 80% of the GPU's."""
    return parse_budget(DEFAULT_BUDGET, memory=device_memory)


def device_memory(device: str) -> int | None:
    """Total memory of a device type in bytes; None when the machine has none.

    cpu: physical RAM, or the cgroup (container) limit when lower; cuda: the
    current GPU's memory (torch is imported only for this question).
    """
    if device == "cpu":
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            ram = _FALLBACK_RAM
        limit = _cgroup_memory_limit()
        return min(ram, limit) if limit else ram
    if device == "cuda":
        try:
            import torch
        except ImportError:
            return None
        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return None


def _cgroup_memory_limit() -> int | None:
    # In a container, RAM is the host's; the cgroup limit is what gets us OOM-killed.
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # cgroup v1 says "no limit" with ~2^63
            return int(raw)
    return None
