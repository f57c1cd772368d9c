r"""ComfyUI's legacy group nodes (before subgraphs) as subgraph :class:`Definition`\ s.

A group node is ``"type": "workflow>Name"`` (older files: ``workflow/Name``), described in
``extra.groupNodes[Name]`` by its nodes (by ``index``), its links ``[from_index | null,
from_slot, to_index, to_slot, ...]`` (``null``: from outside the group) and ``external``
outputs. The instance's inputs are the inner inputs no inner link feeds, in node order;
its outputs the inner outputs no inner link reads (or listed as external); its
``widgets_values`` the inner nodes' widget values one after another. Rewritten so, a
group node unpacks as a subgraph does (:mod:`engine.comfy_subgraphs`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from engine.comfy_subgraphs import INPUT_NODE, OUTPUT_NODE, Definition, items
from engine.comfy_workflow import Link

PREFIXES = ("workflow>", "workflow/")


def group_name(kind: Any) -> str | None:
    if isinstance(kind, str):
        for prefix in PREFIXES:
            if kind.startswith(prefix):
                return kind[len(prefix):]
    return None


def group_configs(obj: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    extra = obj.get("extra") if isinstance(obj.get("extra"), Mapping) else {}
    groups = extra.get("groupNodes") if isinstance(extra.get("groupNodes"), Mapping) else {}
    return {str(k): v for k, v in groups.items() if isinstance(v, dict)}


def group_definition(key: str, name: str, config: dict[str, Any]) -> Definition:
    """A group node's config as a :class:`Definition` (inner ids are the ``index``es)."""
    raw_nodes = [n for n in items(config.get("nodes")) if isinstance(n, dict)]
    nodes: list[dict[str, Any]] = []
    for k, n in enumerate(raw_nodes):
        index = n.get("index", k)
        copy_ = copy.deepcopy(n)
        copy_["id"] = index
        for slot in items(copy_.get("inputs")):
            if isinstance(slot, dict):
                slot["link"] = None
        nodes.append(copy_)
    by_index = {str(n["id"]): n for n in nodes}
    links: dict[str, Link] = {}
    internal_in: set[tuple[str, int]] = set()
    internal_out: set[tuple[str, int]] = set()
    for k, raw in enumerate(items(config.get("links"))):
        if not (isinstance(raw, list) and len(raw) >= 4):
            continue
        src, src_slot, dst, dst_slot = raw[:4]
        if src is None or str(dst) not in by_index:
            continue
        try:
            link = Link(f"g{k}", str(src), int(src_slot), str(dst), int(dst_slot))
        except (TypeError, ValueError):
            continue
        links[link.id] = link
        internal_in.add((link.target, link.target_slot))
        internal_out.add((link.origin, link.origin_slot))
        _set_link(by_index[link.target], link.target_slot, link.id)
    inputs: list[dict[str, Any]] = []
    for n in nodes:
        for s, slot in enumerate(items(n.get("inputs"))):
            if not isinstance(slot, dict) or (str(n["id"]), s) in internal_in \
                    or isinstance(slot.get("widget"), dict):
                continue
            link = Link(f"i{len(inputs)}", INPUT_NODE, len(inputs), str(n["id"]), s)
            links[link.id] = link
            slot["link"] = link.id
            inputs.append({"name": slot.get("name"), "type": slot.get("type")})
    external = {_external_key(e) for e in items(config.get("external"))}
    outputs = 0
    for n in nodes:
        for s, _ in enumerate(items(n.get("outputs"))):
            if (str(n["id"]), s) in internal_out and (str(n["id"]), s) not in external:
                continue
            link = Link(f"o{outputs}", str(n["id"]), s, OUTPUT_NODE, outputs)
            links[link.id] = link
            outputs += 1
    return Definition(key, name, nodes, links, inputs, legacy=True)


def _set_link(node: dict[str, Any], slot: int, link_id: str) -> None:
    slots = node.get("inputs")
    if isinstance(slots, list) and 0 <= slot < len(slots) and isinstance(slots[slot], dict):
        slots[slot]["link"] = link_id


def _external_key(entry: Any) -> tuple[str, int] | None:
    if not (isinstance(entry, list) and len(entry) >= 2):
        return None
    first = entry[0]
    index = first.get("index") if isinstance(first, dict) else first
    try:
        return str(index), int(entry[1])
    except (TypeError, ValueError):
        return None


def slice_group_values(definition: Definition, values: Any) -> Definition:
    """A copy of a group node's definition whose inner nodes hold the instance's widget
    values: ``values`` are the inner nodes' widget values one after another, as many for
    each as its ``widgets_values`` held when the group was made (ComfyUI's own count of
    its widgets then, control values included; a node without them has no widgets)."""
    out = copy.deepcopy(definition)
    if not isinstance(values, list):
        return out
    i = 0
    for n in out.nodes:
        stored = n.get("widgets_values")
        if not isinstance(stored, list) or not stored:
            continue
        n["widgets_values"] = values[i:i + len(stored)] + stored[len(values[i:]):]
        i += len(stored)
    return out
