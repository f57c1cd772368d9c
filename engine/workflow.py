"""Workflow formats: ComfyUI's API format (executable) and our saved document.

API format (what runs)::

    {"<id>": {"class_type": T, "inputs": {name: value | ["<src_id>", index]}, "_meta": {...}}}

Document format (what the canvas saves and ``workflows/`` holds)::

    {"format": "steerflow.workflow", "version": 1,
     "prompt": <API format>,
     "layout": {"nodes": {"<id>": {"pos": [x, y], "size": [w, h], "title": str}},
                "groups": [...], "viewport": {...}},
     "extra": {...}}

The canvas's reroutes and notes are canvas-only: they live in the layout
(``"reroutes": {id: {"pos", "input": [src, slot]}}``, ``"notes": {id: {"pos", "size",
"text"}}``, and ``"via": {input: reroute_id}`` on a node's layout entry), while the
prompt links each input to the real source, so they never reach the executor.

Keeping the executable graph intact inside the document (rather than a second
node list with its own link table, as ComfyUI's UI format has) means a document
converts to something runnable without any schema knowledge.

A node entry may carry ``"mode": "muted"`` or ``"mode": "bypass"`` (ComfyUI's
"Never" and "Bypass", whose numbers 2 and 4 are read too). The validator resolves
modes with :func:`resolve_modes`: a muted node is left out, and a bypassed node's
consumers are linked to its input of the matching type, as ComfyUI's front end does
when it queues a graph. ComfyUI's UI format (``engine.comfy_workflow``) converts to
this when the node schemas are at hand (``registry=``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.registry import NodeRegistry

    # The node schemas: a registry, or type id -> /object_info entry (e.g. a server's).
    Schemas = NodeRegistry | Mapping[str, Any]

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


def types_match(out_type: str, in_type: str) -> bool:
    """Socket types match if equal, either is ``*``, or comma-lists intersect."""
    if out_type == in_type or ANY_TYPE in (out_type, in_type):
        return True
    if in_type == "COMBO" and out_type in ("STRING", "COMBO"):
        return True
    return bool(set(out_type.split(",")) & set(in_type.split(",")))


# --- node modes ------------------------------------------------------------------
ANY_TYPE = "*"
ACTIVE, MUTED, BYPASS = "active", "muted", "bypass"
# ComfyUI's LGraphEventMode: 0 always, 1 on event, 2 never, 3 on trigger, 4 bypass;
# its front end queues 1 and 3 like 0.
_MODES: dict[Any, str] = {ACTIVE: ACTIVE, MUTED: MUTED, BYPASS: BYPASS,
                          0: ACTIVE, 1: ACTIVE, 2: MUTED, 3: ACTIVE, 4: BYPASS}


def node_mode(node: Any) -> str | None:
    """``"active"``, ``"muted"`` or ``"bypass"`` for a node entry; None if its mode is
    none of those (absent means active)."""
    mode = node.get("mode", ACTIVE) if isinstance(node, dict) else ACTIVE
    if isinstance(mode, bool) or not isinstance(mode, str | int):
        return None
    return _MODES.get(mode)


@dataclass(frozen=True)
class NodeShape:
    """What resolving a bypass needs of a node type: its inputs as ``(name, type)``,
    sockets before widgets (the order of ComfyUI's input slots), and its output types."""

    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[str, ...]


ShapeOf = Callable[[str], "NodeShape | None"]


@dataclass
class ModeNote:
    """A consequence of a node's mode worth telling: an input left unconnected, or
    (``error``) a mode that is not one."""

    node_id: str
    input_name: str | None
    message: str
    error: bool = False


def resolve_modes(prompt: Prompt, shape_of: ShapeOf) -> tuple[Prompt, list[ModeNote]]:
    """The prompt as it runs: muted and bypassed nodes left out, and every link into
    one rewired, as ComfyUI's front end does when it queues a graph.

    A link from a bypassed node's output goes to the source of its input that
    matches: the input at the same slot if its type fits, else the first of the
    consumer's exact type, else the first whose type fits both. A link that ends at
    a muted node, or at a bypassed one with no such input linked, is dropped (a
    required input then reports itself missing). A prompt without modes is
    returned as it is.
    """
    modes = {nid: node_mode(node) for nid, node in prompt.items()
             if isinstance(node, dict) and "mode" in node}
    if not modes:
        return prompt, []
    notes = [ModeNote(nid, None, f"node {nid}: 'mode' must be \"muted\" or \"bypass\" "
                      f"(or ComfyUI's 0, 2, 4), not {str(prompt[nid].get('mode'))[:40]!r}",
                      error=True) for nid, mode in modes.items() if mode is None]
    inactive = {nid for nid, mode in modes.items() if mode in (MUTED, BYPASS)}
    out: Prompt = {}
    for nid, node in prompt.items():
        if nid in inactive:
            continue
        if nid in modes:
            node = {k: v for k, v in node.items() if k != "mode"}
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if isinstance(inputs, dict) and any(
                is_link(v) and str(v[0]) in inactive for v in inputs.values()):
            shape = shape_of(node.get("class_type", ""))
            wanted = dict(shape.inputs) if shape else {}
            rewired = dict(inputs)
            for name, value in inputs.items():
                if not (is_link(value) and str(value[0]) in inactive):
                    continue
                source, why = _through_inactive(prompt, modes, value,
                                                wanted.get(name, ANY_TYPE), shape_of)
                if source is None:
                    del rewired[name]
                    notes.append(ModeNote(nid, name, f"input '{name}' is left unconnected: "
                                          f"{why}"))
                else:
                    rewired[name] = source
            node = {**node, "inputs": rewired}
        out[nid] = node
    return out, notes


def _through_inactive(prompt: Prompt, modes: dict[str, str | None], link: Any, want: str,
                      shape_of: ShapeOf) -> tuple[list[Any] | None, str]:
    """Follow a link back through bypassed nodes to an active source."""
    src, slot = str(link[0]), link[1]
    seen: set[tuple[str, int]] = set()
    while modes.get(src) in (MUTED, BYPASS):
        if (src, slot) in seen:
            return None, f"bypassed nodes {src} ... form a loop"
        seen.add((src, slot))
        if modes[src] == MUTED:
            return None, f"it was linked to node {src}, which is muted"
        node = prompt[src]
        name = _bypass_input(prompt, node, slot, want, shape_of)
        if name is None:
            return None, (f"it was linked to node {src}, which is bypassed and has no "
                          f"input of type {want} to pass through")
        inputs = node.get("inputs")
        value = inputs.get(name) if isinstance(inputs, dict) else None
        if not is_link(value):
            return None, (f"it was linked to node {src}, which is bypassed and whose "
                          f"input '{name}' is not linked")
        src, slot = str(value[0]), value[1]
    return [src, slot], ""


def _bypass_input(prompt: Prompt, node: dict[str, Any], slot: int, want: str,
                  shape_of: ShapeOf) -> str | None:
    """The input of a bypassed node that passes through to output ``slot``."""
    inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
    shape = shape_of(node.get("class_type", ""))
    if shape is not None:
        candidates = list(shape.inputs)
        out_type = shape.outputs[slot] if 0 <= slot < len(shape.outputs) else ANY_TYPE
    else:  # a type we do not know: judge its inputs by what they are linked to
        candidates = [(name, _output_type(prompt, value, shape_of))
                      for name, value in inputs.items() if is_link(value)]
        out_type = ANY_TYPE
    if not candidates:
        return None
    if want == ANY_TYPE:
        index = slot if slot < len(candidates) else 0
        return candidates[index][0]
    fits = [name for name, kind in candidates
            if types_match(out_type, kind) and types_match(kind, want)]
    if slot < len(candidates) and candidates[slot][0] in fits:
        return candidates[slot][0]
    exact = [name for name, kind in candidates if kind == want]
    return exact[0] if exact else fits[0] if fits else None


def _output_type(prompt: Prompt, link: Any, shape_of: ShapeOf) -> str:
    source = prompt.get(str(link[0]))
    shape = shape_of(source.get("class_type", "")) if isinstance(source, dict) else None
    if shape is not None and 0 <= link[1] < len(shape.outputs):
        return shape.outputs[link[1]]
    return ANY_TYPE


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
    # the layout only gives titles: a malformed one is no reason to refuse the graph
    found = doc.get("layout")
    layout = found.get("nodes") if isinstance(found, dict) else None
    layout = layout if isinstance(layout, dict) else {}
    out: Prompt = {}
    for node_id, node in prompt.items():
        node = dict(node) if isinstance(node, dict) else node
        place = layout.get(node_id)
        if isinstance(node, dict) and isinstance(place, dict):
            title = place.get("title")
            if isinstance(title, str) and title:
                meta = node.get("_meta")
                node["_meta"] = {**(meta if isinstance(meta, dict) else {}), "title": title}
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


def load_workflow(path: str | Path, registry: Schemas | None = None,
                  warnings: list[str] | None = None
                  ) -> tuple[Prompt, dict[str, Any] | None]:
    """Read a workflow file: API JSON, our document, ComfyUI's UI format, or a PNG
    carrying one of those (as Steerflow and ComfyUI save them).

    Returns the executable prompt and the document (``None`` if the file had none).
    The UI format is converted with ``registry``'s node schemas (or a mapping of
    ``/object_info`` entries); what the conversion could not carry over is appended
    to ``warnings``.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".png":
            return _load_png(path, registry, warnings)
        try:
            obj = json.loads(path.read_text(encoding="utf-8-sig"))  # Notepad writes a BOM
        except (OSError, UnicodeDecodeError) as exc:
            raise WorkflowFormatError(f"cannot read {path}: {exc}") from exc
        except ValueError as exc:  # JSONDecodeError, or an integer of thousands of digits
            raise WorkflowFormatError(f"{path} is not valid JSON: {exc}") from exc
        return from_object(obj, registry, warnings)
    except RecursionError:
        raise WorkflowFormatError(f"{path} is nested too deeply to be a workflow") from None


def from_object(obj: Any, registry: Schemas | None = None,
                warnings: list[str] | None = None) -> tuple[Prompt, dict[str, Any] | None]:
    """Accept an API-format prompt (or a POST /prompt body), a document, or, with a
    ``registry``, ComfyUI's UI format; anything else is an error."""
    if is_document(obj):
        return _opened_document(obj, registry)
    from engine.comfy_workflow import is_ui_workflow

    if is_ui_workflow(obj):
        document = convert_ui(obj, registry, warnings)
        return document_to_prompt(document), document
    if (isinstance(obj, dict) and isinstance(obj.get("prompt"), dict) and "format" not in obj
            and "class_type" not in obj["prompt"]):
        obj = obj["prompt"]  # the body of a POST /prompt, not a node whose id is "prompt"
    if not isinstance(obj, dict):
        raise WorkflowFormatError("a workflow must be a JSON object")
    return {str(k): v for k, v in obj.items()}, None


def _restore_raw(document: dict[str, Any], registry: Schemas) -> None:
    """Nodes a ComfyUI file held whose type was not installed when it was converted keep
    their raw widget values; once the type is known, they become its inputs."""
    layout = document.get("layout")
    places = layout.get("nodes") if isinstance(layout, dict) else None
    if not isinstance(places, dict) or not any(
            isinstance(p, dict) and ("widgets_values" in p or "widgets_values_named" in p)
            for p in places.values()):
        return
    from engine.comfy_raw import restore_raw_widgets
    from engine.comfy_workflow import RegistrySchemas

    restore_raw_widgets(document, registry if isinstance(registry, Mapping)
                        else RegistrySchemas(registry))


def convert_ui(obj: Any, registry: Schemas | None,
               warnings: list[str] | None = None) -> dict[str, Any]:
    """ComfyUI's UI format as our document (:mod:`engine.comfy_workflow`)."""
    from engine.comfy_workflow import RegistrySchemas, convert_ui_workflow

    if registry is None:
        raise WorkflowFormatError(
            "this is a ComfyUI UI-format workflow: converting it needs the node schemas "
            "(pass registry=, or open it with `steerflow run`, Session or the canvas)")
    schemas = registry if isinstance(registry, Mapping) else RegistrySchemas(registry)
    result = convert_ui_workflow(obj, schemas)
    if warnings is not None:
        warnings.extend(result.warnings)
    return result.document


def _opened_document(document: dict[str, Any], registry: Schemas | None
                     ) -> tuple[Prompt, dict[str, Any]]:
    """A document read from a file: raw widget values filled in where the type is known
    now (as :func:`from_object` does), then its prompt."""
    if registry is not None:
        _restore_raw(document, registry)
    return document_to_prompt(document), document


def _load_png(path: Path, registry: Schemas | None, warnings: list[str] | None
              ) -> tuple[Prompt, dict[str, Any] | None]:
    from PIL import Image

    from engine.comfy_workflow import is_ui_workflow

    try:
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}) or {})
    except (OSError, ValueError) as exc:  # ValueError: a text chunk past Pillow's limit
        raise WorkflowFormatError(f"cannot read PNG {path}: {exc}") from exc
    # ours beside ComfyUI's view of it (nodes.output_files.file_metadata), read first:
    # it alone is enough; older images kept ours under "workflow"
    try:
        own = json.loads(text["steerflow"]) if "steerflow" in text else None
    except ValueError:  # corrupt JSON, or an integer of thousands of digits
        own = None
    if is_document(own):
        return _opened_document(own, registry)
    if "prompt" not in text and "workflow" not in text:
        what = ("its 'steerflow' chunk is not a workflow document" if "steerflow" in text
                else "no 'prompt', 'workflow' or 'steerflow' chunk")
        raise WorkflowFormatError(f"{path} carries no embedded workflow ({what})")
    try:
        prompt = json.loads(text["prompt"]) if "prompt" in text else None
        document = json.loads(text["workflow"]) if "workflow" in text else None
    except ValueError as exc:
        raise WorkflowFormatError(f"{path} has a corrupt embedded workflow: {exc}") from exc
    if is_document(document):
        return _opened_document(document, registry)
    if is_ui_workflow(document):
        if prompt is None:  # ComfyUI's UI format alone: it is the whole workflow
            return from_object(document, registry, warnings)
        # The prompt is what ran; the UI workflow gives it a layout when we can read it.
        document = convert_ui(document, registry, warnings) if registry is not None else None
    elif prompt is None:
        raise WorkflowFormatError(f"{path}: the embedded 'workflow' is not a workflow we "
                                  "can read")
    prompt, _ = from_object(prompt)
    if document is not None and not is_document(document):
        document = None
    return prompt, document
