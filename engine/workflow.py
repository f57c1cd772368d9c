"""Workflow formats: ComfyUI's API format (executable) and our saved document.

API format (what runs)::

    {"<id>": {"class_type": T, "inputs": {name: value | ["<src_id>", index]}, "_meta": {...}}}

Document format (what the canvas saves and ``workflows/`` holds)::

    {"format": "steerflow.workflow", "version": 1,
     "prompt": <API format>,
     "layout": {"nodes": {"<id>": {"pos": [x, y], "size": [w, h], "title": str}},
                "groups": [...], "viewport": {...}},
     "extra": {...}}

Keeping the executable graph intact inside the document (rather than a second
node list with its own link table, as ComfyUI's UI format has) means a document
converts to something runnable without any schema knowledge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCUMENT_FORMAT = "steerflow.workflow"
DOCUMENT_VERSION = 1

Prompt = dict[str, dict[str, Any]]


class WorkflowFormatError(ValueError):
    """A file or object that is not a workflow we can read."""


def is_link(value: Any) -> bool:
    """A link is ``[source_id, output_index]`` with an int index."""
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def is_document(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == DOCUMENT_FORMAT


def _migrate(doc: dict[str, Any]) -> dict[str, Any]:
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise WorkflowFormatError(f"document has no valid version: {version!r}")
    if version > DOCUMENT_VERSION:
        raise WorkflowFormatError(
            f"document version {version} is newer than this Steerflow ({DOCUMENT_VERSION})"
        )
    # Future migrations go here as `if version == n: doc = _v{n}_to_v{n+1}(doc)`.
    return doc


def document_to_prompt(doc: dict[str, Any]) -> Prompt:
    """The executable graph of a document, with layout titles copied into ``_meta``."""
    doc = _migrate(doc)
    prompt = doc.get("prompt")
    if not isinstance(prompt, dict):
        raise WorkflowFormatError("document has no 'prompt' object")
    layout = (doc.get("layout") or {}).get("nodes") or {}
    out: Prompt = {}
    for node_id, node in prompt.items():
        node = dict(node) if isinstance(node, dict) else node
        if isinstance(node, dict):
            title = (layout.get(node_id) or {}).get("title")
            if title:
                node["_meta"] = {**(node.get("_meta") or {}), "title": title}
        out[str(node_id)] = node
    return out


def prompt_to_document(prompt: Prompt, *, layout: dict[str, Any] | None = None,
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Wrap an API-format prompt in a document, laying nodes out by depth if needed."""
    nodes_layout = dict((layout or {}).get("nodes") or {})
    missing = [nid for nid in prompt if nid not in nodes_layout]
    if missing:
        auto = auto_layout(prompt)
        for nid in missing:
            nodes_layout[nid] = auto[nid]
    for nid, node in prompt.items():
        title = (node.get("_meta") or {}).get("title") if isinstance(node, dict) else None
        if title and "title" not in nodes_layout[nid]:
            nodes_layout[nid] = {**nodes_layout[nid], "title": title}
    return {
        "format": DOCUMENT_FORMAT,
        "version": DOCUMENT_VERSION,
        "prompt": prompt,
        "layout": {**(layout or {}), "nodes": nodes_layout},
        "extra": extra or {},
    }


def auto_layout(prompt: Prompt, *, dx: float = 320.0, dy: float = 220.0) -> dict[str, Any]:
    """Columns by topological generation (all in column 0 if the graph has a cycle)."""
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(prompt)
    for nid, node in prompt.items():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        for value in inputs.values() if isinstance(inputs, dict) else ():
            if is_link(value) and str(value[0]) in prompt:
                graph.add_edge(str(value[0]), nid)
    generations = (
        list(nx.topological_generations(graph))
        if nx.is_directed_acyclic_graph(graph) else [list(prompt)]
    )
    out: dict[str, Any] = {}
    for col, generation in enumerate(generations):
        for row, nid in enumerate(generation):
            out[nid] = {"pos": [col * dx, row * dy]}
    return out


def load_workflow(path: str | Path) -> tuple[Prompt, dict[str, Any] | None]:
    """Read a workflow file (API JSON, document JSON, or a PNG we saved).

    Returns the executable prompt and the document (``None`` if the file had none).
    """
    path = Path(path)
    if path.suffix.lower() == ".png":
        return _load_png(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowFormatError(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(f"{path} is not valid JSON: {exc}") from exc
    return from_object(obj)


def from_object(obj: Any) -> tuple[Prompt, dict[str, Any] | None]:
    """Accept an API-format prompt or a document; anything else is an error."""
    if is_document(obj):
        return document_to_prompt(obj), obj
    if isinstance(obj, dict) and "nodes" in obj and "links" in obj:
        raise WorkflowFormatError(
            "this is a ComfyUI UI-format workflow; open it in the canvas or export it "
            "in API format"
        )
    if isinstance(obj, dict) and isinstance(obj.get("prompt"), dict) and "format" not in obj:
        obj = obj["prompt"]  # the body of a POST /prompt
    if not isinstance(obj, dict):
        raise WorkflowFormatError("a workflow must be a JSON object")
    return {str(k): v for k, v in obj.items()}, None


def _load_png(path: Path) -> tuple[Prompt, dict[str, Any] | None]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}) or {})
    except OSError as exc:
        raise WorkflowFormatError(f"cannot read PNG {path}: {exc}") from exc
    if "prompt" not in text:
        raise WorkflowFormatError(f"{path} carries no embedded workflow ('prompt' chunk)")
    try:
        prompt = json.loads(text["prompt"])
        document = json.loads(text["workflow"]) if "workflow" in text else None
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(f"{path} has a corrupt embedded workflow: {exc}") from exc
    if is_document(document):
        return document_to_prompt(document), document
    prompt, _ = from_object(prompt)
    return prompt, document
