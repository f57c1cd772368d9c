"""ComfyUI's subgraphs and legacy group nodes, flattened into one UI-format graph.

A ComfyUI workflow may hold **subgraphs** (front end 1.24 and later): a node whose
``type`` is the id of an entry of ``definitions.subgraphs``. That entry is a graph of its
own (``nodes``, ``links``) with an input node (id -10) whose slot *i* is the instance's
input *i*, and an output node (id -20) whose slot *j* is the instance's output *j*.
Older files hold **group nodes**: ``"type": "workflow>Name"`` (or ``workflow/Name``),
described in ``extra.groupNodes[Name]`` by its nodes (by ``index``), its links
``[from_index | null, from_slot, to_index, to_slot, ...]`` (``null``: from outside) and
the instance's ``widgets_values``, the inner nodes' widget values one after another.

:func:`flatten` replaces every instance by its inner nodes, as ComfyUI's front end does
when it queues (``graphToPrompt`` with ``ExecutableNodeDTO``), so the one converter
(:func:`engine.comfy_workflow.convert_ui_workflow`) sees a plain graph:

- an inner node's id is the path of instance ids and its own, joined by ``:``
  (``"12:5"``, ``"12:3:7"``), the ids ComfyUI's API prompts use;
- a link from the input node follows the instance's input outwards; an unlinked input
  with a widget on the instance gives that widget's value (a PrimitiveNode is put in);
- a link to an instance's output follows the output node's link inwards;
- ``properties.proxyWidgets`` (``[[inner_id, widget], ...]``) with values in the
  instance's ``widgets_values`` set those inner widgets (returned as ``overrides``);
- a bypassed instance passes each output on from its first input of the same type; a
  muted one mutes everything inside it;
- the inner nodes keep their layout, moved to where the instance was, in a group box
  titled with the subgraph's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.comfy_workflow import Link, node_def, parse_links, vec2

INPUT_NODE = "-10"
OUTPUT_NODE = "-20"
MAX_DEPTH = 32  # nesting levels followed (a definition cannot contain itself anyway)
MAX_FLAT_NODES = 100_000  # nested instances multiply; past this the rest is left out
MUTED_MODE, BYPASS_MODE = 2, 4


@dataclass
class Definition:
    """A subgraph's content (or a group node's, rewritten to the same shape)."""

    key: str
    name: str
    nodes: list[dict[str, Any]]
    links: dict[str, Link]
    inputs: list[dict[str, Any]]
    groups: list[Any] = field(default_factory=list)
    legacy: bool = False


@dataclass
class Flat:
    """The flattened workflow and what came of it."""

    workflow: dict[str, Any]
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Instance:
    parent: _Level
    node: dict[str, Any]
    definition: Definition
    values: dict[int, Any]  # definition input index -> the instance's widget value


@dataclass
class _Level:
    path: tuple[str, ...]
    nodes: dict[str, dict[str, Any]]
    links: dict[str, Link]
    instance: _Instance | None = None
    ancestry: tuple[str, ...] = ()
    children: dict[str, _Level] = field(default_factory=dict)
    copies: list[dict[str, Any]] = field(default_factory=list)  # its plain nodes' flat copies

    def flat_id(self, node_id: Any) -> str:
        return ":".join((*self.path, str(node_id)))


def has_instances(obj: Mapping[str, Any]) -> bool:
    """Whether the workflow uses subgraphs or group nodes at all."""
    from engine import comfy_group_nodes as group_nodes  # it builds on this module

    defs = definition_list(obj)
    groups = group_nodes.group_configs(obj)
    keys = {str(d.get("id")) for d in defs}
    return any(isinstance(n, dict) and isinstance(n.get("type"), str)
               and (n["type"] in keys or (group_nodes.group_name(n["type"]) in groups))
               for n in items(obj.get("nodes")))


def flatten(obj: Mapping[str, Any],
            schemas: Mapping[str, Mapping[str, Any]] | None = None) -> Flat:
    """``obj`` with every subgraph / group-node instance replaced by its nodes; the node
    ``schemas`` tell which promoted widgets had a control value in older files."""
    return _Flattener(obj, schemas or {}).run()


class _Flattener:
    def __init__(self, obj: Mapping[str, Any], schemas: Mapping[str, Mapping[str, Any]]):
        from engine import comfy_group_nodes  # it builds on this module

        self.group_nodes = comfy_group_nodes
        self.obj = obj
        self.schemas = schemas
        self.definitions: dict[str, Definition] = {}
        for raw in definition_list(obj):
            d = _subgraph_definition(raw)
            if d is not None:
                self.definitions[d.key] = d
        self.group_configs = self.group_nodes.group_configs(obj)
        self._all: list[dict[str, Any]] = []  # every flat node, in the order made
        self._levels: list[_Level] = []
        self.links: list[list[Any]] = []
        self.groups: list[dict[str, Any]] = []
        self.result = Flat({})
        self._link_count = 0
        self._full = False

    # -- expansion -----------------------------------------------------------------

    def run(self) -> Flat:
        nodes = {str(n["id"]): n for n in items(self.obj.get("nodes"))
                 if isinstance(n, dict) and _has_id(n)}
        root = _Level((), nodes, _links(self.obj.get("links")))
        self._expand(root, force_mute=False)
        # links last: an inner link may lead out through an instance expanded later
        for level in self._levels:
            self._connect(level)
        out = {k: v for k, v in self.obj.items() if k not in ("nodes", "links", "definitions")}
        groups = self.obj.get("groups") if isinstance(self.obj.get("groups"), list) else []
        out.update(nodes=self._all, links=self.links, groups=[*groups, *self.groups])
        self.result.workflow = out
        return self.result

    def _definition_for(self, node: dict[str, Any]) -> Definition | None:
        kind = node.get("type")
        if kind in self.definitions:
            return self.definitions[kind]
        name = self.group_nodes.group_name(kind)
        if name is not None and name in self.group_configs:
            key = f"group:{name}"
            if key not in self.definitions:
                self.definitions[key] = self.group_nodes.group_definition(
                    key, name, self.group_configs[name])
            return self.definitions[key]
        return None

    def _expand(self, level: _Level, force_mute: bool) -> list[dict[str, Any]]:
        """The flat nodes of ``level`` (in its coordinates), its instances expanded."""
        placed: list[dict[str, Any]] = []
        self._levels.append(level)
        for nid, node in level.nodes.items():
            if nid in (INPUT_NODE, OUTPUT_NODE):
                continue
            definition = self._definition_for(node)
            if definition is None:
                if len(self._all) >= MAX_FLAT_NODES:
                    self._too_many()
                    continue
                placed.append(self._copy(level, node, force_mute))
                continue
            problem = self._cannot_expand(level, definition)
            if problem:
                self.result.warnings.append(
                    f"node {level.flat_id(nid)} is a {_what(definition)} ({definition.name}) "
                    f"that {problem}; it was left out")
                continue
            mode = node.get("mode")
            if mode == BYPASS_MODE and not force_mute:
                continue  # its consumers take its inputs (see _output)
            if definition.legacy:
                definition = self.group_nodes.slice_group_values(
                    definition, node.get("widgets_values"))
            child = _Level((*level.path, nid), {str(n["id"]): n for n in definition.nodes},
                           definition.links,
                           _Instance(level, node, definition,
                                     self._instance_values(level, node, definition)),
                           (*level.ancestry, definition.key))
            level.children[nid] = child
            inner = self._expand(child, force_mute or mode == MUTED_MODE)
            placed.extend(self._place(node, definition, inner))
        return placed

    def _cannot_expand(self, level: _Level, definition: Definition) -> str | None:
        if definition.key in level.ancestry:
            return "contains itself"
        if len(level.path) >= MAX_DEPTH:
            return f"is nested more than {MAX_DEPTH} deep"
        if self._full:
            return f"would take the workflow past {MAX_FLAT_NODES} nodes"
        return None

    def _too_many(self) -> None:
        if not self._full:
            self._full = True
            self.result.warnings.append(f"the workflow has more than {MAX_FLAT_NODES} nodes "
                                        "once its subgraphs are unpacked; the rest were "
                                        "left out")

    def _copy(self, level: _Level, node: dict[str, Any], mute: bool) -> dict[str, Any]:
        out = {k: v for k, v in node.items() if k not in ("inputs", "outputs")}
        out["id"] = level.flat_id(node["id"])
        out["inputs"] = [dict(s) if isinstance(s, dict) else s
                         for s in items(node.get("inputs"))]
        if mute:
            out["mode"] = MUTED_MODE
        self._all.append(out)
        level.copies.append(out)
        # the converter reads links from the inputs; _connect fills them in
        for slot in out["inputs"]:
            if isinstance(slot, dict):
                slot["_source"] = slot.get("link")
                slot["link"] = None
        return out

    def _place(self, instance: dict[str, Any], definition: Definition,
               inner: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Move the inner nodes to where the instance was, inside a titled group box."""
        points = [p for p in (vec2(n.get("pos")) for n in inner) if p]
        at = vec2(instance.get("pos")) or [0.0, 0.0]
        if not points:
            return inner
        left = min(p[0] for p in points)
        top = min(p[1] for p in points)
        dx, dy = at[0] - left, at[1] - top
        right = bottom = 0.0
        for n in inner:
            p = vec2(n.get("pos"))
            if p:
                n["pos"] = [p[0] + dx, p[1] + dy]
                size = vec2(n.get("size")) or [200.0, 100.0]
                right = max(right, n["pos"][0] + size[0])
                bottom = max(bottom, n["pos"][1] + size[1])
        title = instance.get("title") if isinstance(instance.get("title"), str) \
            and instance.get("title") else definition.name
        self.groups.append({"title": title, "bounding": [at[0] - 10, at[1] - 40,
                                                         right - at[0] + 20,
                                                         bottom - at[1] + 50]})
        for g in definition.groups:
            box = g.get("bounding") if isinstance(g, dict) else None
            if isinstance(box, list) and len(box) == 4 and all(
                    isinstance(v, int | float) for v in box):
                self.groups.append({**g, "bounding": [box[0] + dx, box[1] + dy, *box[2:]]})
        return inner

    # -- values ----------------------------------------------------------------------

    def _instance_values(self, level: _Level, node: dict[str, Any],
                         definition: Definition) -> dict[int, Any]:
        """The instance's widget values by definition input; proxied inner widgets go
        to ``overrides`` (or, for a nested instance, to its own values)."""
        values = node.get("widgets_values")
        out: dict[int, Any] = {}
        if definition.legacy:
            return out  # a group node's values were sliced into its nodes already
        names = {str(i.get("name")): k for k, i in enumerate(definition.inputs)}
        named = node.get("widgets_values_named")
        if isinstance(values, dict) or isinstance(named, dict):
            by_name = named if isinstance(named, dict) else values
            return {names[k]: v for k, v in by_name.items() if k in names}
        if not isinstance(values, list):
            return out
        props = node.get("properties") if isinstance(node.get("properties"), dict) else {}
        proxies = props.get("proxyWidgets")
        if isinstance(proxies, list) and proxies:
            path = level.flat_id(node["id"])
            for k, proxy in enumerate(proxies):
                if k >= len(values) or not (isinstance(proxy, list | tuple)
                                            and len(proxy) >= 2):
                    continue
                target, widget = str(proxy[0]), str(proxy[1])
                if target == "-1":
                    if widget in names:
                        out[names[widget]] = values[k]
                    continue
                if any(str(n["id"]) == target for n in definition.nodes):
                    self.result.overrides.setdefault(f"{path}:{target}", {})[widget] = values[k]
            return out
        promoted = _widget_inputs(definition)
        # older files also hold a control_after_generate value after a seed's
        extra = len(values) > len(promoted)
        i = 0
        for index, target, widget in promoted:
            if i >= len(values):
                break
            out[index] = values[i]
            i += 1
            if extra and self._has_control(target, widget):
                i += 1
        return out

    def _has_control(self, node: dict[str, Any], widget: str) -> bool:
        schema = self.schemas.get(node.get("type")) if isinstance(node.get("type"), str) \
            else None
        if not isinstance(schema, Mapping):
            return False
        return any(w.name == widget and w.control for w in node_def(schema).widgets)

    # -- links ----------------------------------------------------------------------

    def _connect(self, level: _Level) -> None:
        """Give the flat copies of ``level``'s plain nodes their resolved links."""
        for node in level.copies:
            for slot in items(node.get("inputs")):
                if not isinstance(slot, dict) or "_source" not in slot:
                    continue
                source = slot.pop("_source")
                if source is None:
                    continue
                found = self._link(level, source, set())
                if found is None:
                    continue
                if found[0] == "value":
                    found = ("node", self._primitive(node, slot, found[1]), 0)
                self._link_count += 1
                link_id = f"f{self._link_count}"
                self.links.append([link_id, found[1], found[2], node["id"], 0,
                                   slot.get("type")])
                slot["link"] = link_id

    def _link(self, level: _Level, link_id: Any, seen: set[tuple[Any, ...]]
              ) -> tuple[str, Any, int] | None:
        link = level.links.get(str(link_id))
        if link is None:
            return None
        if link.origin == INPUT_NODE:
            return self._instance_input(level.instance, link.origin_slot, seen)
        origin = level.nodes.get(link.origin)
        if origin is None:
            return None
        return self._output(level, origin, link.origin_slot, seen)

    def _instance_input(self, instance: _Instance | None, index: int,
                        seen: set[tuple[Any, ...]]) -> tuple[str, Any, int] | None:
        if instance is None:
            return None
        key = ("in", instance.parent.flat_id(instance.node["id"]), index)
        if key in seen:
            return None
        seen.add(key)
        slots = items(instance.node.get("inputs"))
        slot = slots[index] if 0 <= index < len(slots) and isinstance(slots[index], dict) \
            else None
        if slot is not None and slot.get("link") is not None:
            return self._link(instance.parent, slot["link"], seen)
        if index in instance.values:
            return ("value", instance.values[index], 0)
        return None

    def _output(self, level: _Level, origin: dict[str, Any], slot: int,
                seen: set[tuple[Any, ...]]) -> tuple[str, Any, int] | None:
        oid = str(origin["id"])
        key = ("out", level.flat_id(oid), slot)
        if key in seen:
            return None
        seen.add(key)
        definition = self._definition_for(origin)
        if definition is None:
            return ("node", level.flat_id(oid), slot)
        if origin.get("mode") == BYPASS_MODE:
            index = _bypass_input(origin, slot)
            slots = items(origin.get("inputs"))
            source = slots[index] if index is not None else None
            if not isinstance(source, dict) or source.get("link") is None:
                return None
            return self._link(level, source["link"], seen)
        child = level.children.get(oid)
        if child is None:
            return None  # left out (see the warnings)
        for link in child.links.values():
            if link.target == OUTPUT_NODE and link.target_slot == slot:
                return self._link(child, link.id, seen)
        return None

    def _primitive(self, node: dict[str, Any], slot: dict[str, Any], value: Any) -> str:
        """A PrimitiveNode holding an instance widget's value, for the converter."""
        name = (slot.get("widget") or {}).get("name") if isinstance(slot.get("widget"),
                                                                     dict) else None
        pid = f"{node['id']}:{name or slot.get('name')}=value"
        self._all.append({"id": pid, "type": "PrimitiveNode", "widgets_values": [value]})
        return pid


def items(value: Any) -> list[Any]:
    """A list field of a file that may hold anything there."""
    return value if isinstance(value, list) else []


def _links(value: Any) -> dict[str, Link]:
    return parse_links(value) if isinstance(value, list | dict) else {}


def _has_id(n: dict[str, Any]) -> bool:
    return isinstance(n.get("id"), int | str) and not isinstance(n.get("id"), bool) \
        and isinstance(n.get("type"), str)


def _what(definition: Definition) -> str:
    return "group node" if definition.legacy else "subgraph"


MAX_DEFINITIONS = 10_000  # subgraph definitions read from one workflow


def definition_list(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every subgraph definition, also those kept inside other definitions (at most
    :data:`MAX_DEFINITIONS`)."""
    found: list[dict[str, Any]] = []
    stack = [obj]
    while stack and len(found) < MAX_DEFINITIONS:
        holder = stack.pop()
        defs = holder.get("definitions") if isinstance(holder, Mapping) else None
        listed = defs.get("subgraphs") if isinstance(defs, Mapping) else None
        for d in listed if isinstance(listed, list) else []:
            if isinstance(d, dict) and d.get("id") is not None:
                found.append(d)
                stack.append(d)
    return found


def _subgraph_definition(raw: dict[str, Any]) -> Definition | None:
    nodes = [n for n in items(raw.get("nodes")) if isinstance(n, dict) and _has_id(n)]
    inputs = [i if isinstance(i, dict) else {} for i in items(raw.get("inputs"))]
    name = raw.get("name") if isinstance(raw.get("name"), str) else str(raw.get("id"))
    groups = raw.get("groups") if isinstance(raw.get("groups"), list) else []
    return Definition(str(raw["id"]), name, nodes, _links(raw.get("links")),
                      inputs, groups)


def _widget_inputs(definition: Definition) -> list[tuple[int, dict[str, Any], str]]:
    """The definition inputs that give the instance a widget (one of their links feeds a
    widget), in order, with the inner node and widget each feeds: the instance's
    ``widgets_values`` follow them."""
    by_id = {str(n["id"]): n for n in definition.nodes}
    feeds: dict[int, tuple[dict[str, Any], str]] = {}
    for link in definition.links.values():
        if link.origin != INPUT_NODE or link.origin_slot in feeds:
            continue
        target = by_id.get(link.target)
        slots = items(target.get("inputs")) if target else []
        slot = slots[link.target_slot] if 0 <= link.target_slot < len(slots) else None
        widget = slot.get("widget") if isinstance(slot, dict) else None
        if target is not None and isinstance(widget, dict):
            feeds[link.origin_slot] = (target, str(widget.get("name") or slot.get("name")))
    return [(k, *feeds[k]) for k in range(len(definition.inputs)) if k in feeds]


def _bypass_input(node: dict[str, Any], slot: int) -> int | None:
    """The input a bypassed node passes to output ``slot``: the same slot when its type
    matches, else the first input of that type (ComfyUI's rule)."""
    outputs = items(node.get("outputs"))
    inputs = [s if isinstance(s, dict) else {} for s in items(node.get("inputs"))]
    want = outputs[slot].get("type") if 0 <= slot < len(outputs) \
        and isinstance(outputs[slot], dict) else None
    if slot < len(inputs) and inputs[slot].get("type") == want:
        return slot
    for k, s in enumerate(inputs):
        if s.get("type") == want:
            return k
    return None
