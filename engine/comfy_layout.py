"""What a ComfyUI UI-format workflow shows rather than runs, as our document's layout:
node colours, collapsed and pinned flags, Reroutes, and a warning for what has no place.

- **Colours**: litegraph keeps two per node, ``color`` (the title bar) and ``bgcolor``
  (the body); the canvas keeps one, drawn on the header, from the same palette as
  ComfyUI's ``bgcolor`` (red ``#553333`` is litegraph's red ``#533``). So ``bgcolor`` is
  taken (``color`` where there is none), written out as ``#rrggbb``; a title colour that
  is not its palette partner (``#322`` for ``#533``) is reported as lost.
- **Flags**: ``flags.collapsed`` and ``flags.pinned`` become ``collapsed`` / ``pinned``.
- **Reroutes**: Reroute nodes, and the link reroutes of newer front ends (``reroutes``
  at the top or in ``extra``, a link's ``parentId`` naming the reroute nearest its
  target, each reroute's ``parentId`` the next one towards the origin; ``extra.
  linkExtensions`` holds the links' in 0.4 files) go to ``layout.reroutes``
  (``{"pos", "input": [source, slot]}``) and an input fed through one gets
  ``layout.nodes[id].via[input]``; the prompt links the real source either way.
- **Warnings** (:class:`Dropped`): properties, shapes, renamed slots and title colours
  the document has no place for, one line per kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engine.comfy_workflow import REROUTE, Link, vec2

#: litegraph's node palette: ``bgcolor`` → its ``color`` (``LGraphCanvas.node_colors``)
PALETTE = {"#553333": "#332222", "#593930": "#332922", "#335533": "#223322",
           "#333355": "#222233", "#3f5159": "#2a363b", "#335555": "#223333",
           "#553355": "#332233", "#665533": "#443322", "#000000": "#222222"}
#: properties that say nothing the document needs: search-and-replace names, the node
#: pack's id and version, download links of the models it names, front-end extensions'
#: bookkeeping, and what the converter reads elsewhere (a subgraph's proxyWidgets)
QUIET_PROPERTIES = frozenset({
    "Node name for S&R", "cnr_id", "ver", "aux_id", "models", "proxyWidgets",
    "widget_ue_connectable", "ue_properties", "enableTabs", "tabWidth", "tabXOffset",
    "hasSecondTab", "secondTabText", "secondTabOffset", "secondTabWidth"})
_HEX = re.compile(r"#([0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")


class Dropped:
    """What the document has no place for, by kind, with the nodes that had it."""

    def __init__(self) -> None:
        self._seen: dict[str, list[str]] = {}

    def add(self, what: str, nid: str) -> None:
        ids = self._seen.setdefault(what, [])
        if nid not in ids:
            ids.append(nid)

    def warnings(self) -> list[str]:
        if not self._seen:
            return []
        parts = [f"{what} (node{'s' if len(ids) > 1 else ''} {_ids(ids)})"
                 for what, ids in self._seen.items()]
        return ["left out, as a Steerflow document has no place for it: " + "; ".join(parts)]


def _ids(ids: list[str], most: int = 8) -> str:
    shown = ", ".join(ids[:most])
    return f"{shown} and {len(ids) - most} more" if len(ids) > most else shown


def hex_color(value: Any) -> str | None:
    """``#rgb`` / ``#rgba`` / ``#rrggbb`` / ``#rrggbbaa`` as ``#rrggbb[aa]`` (lower case)."""
    m = _HEX.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        return None
    digits = m.group(1).lower()
    return "#" + ("".join(c * 2 for c in digits) if len(digits) <= 4 else digits)


def looks(nid: str, node: Mapping[str, Any], dropped: Dropped) -> dict[str, Any]:
    """A node's colour, collapsed and pinned flags, as the canvas's layout keeps them."""
    out: dict[str, Any] = {}
    body, title = hex_color(node.get("bgcolor")), hex_color(node.get("color"))
    for key, parsed in (("bgcolor", body), ("color", title)):
        if node.get(key) not in (None, "") and parsed is None:
            dropped.add(f"{key} {node.get(key)!r}, not a colour the canvas reads", nid)
    if body or title:
        out["color"] = body or title
    if body and title and PALETTE.get(body) != title:
        dropped.add("a title colour (color) besides the node's colour (bgcolor)", nid)
    flags = node.get("flags") if isinstance(node.get("flags"), dict) else {}
    for flag in ("collapsed", "pinned"):
        if flags.get(flag) is True:
            out[flag] = True
    return out


def note_extras(nid: str, node: Mapping[str, Any], dropped: Dropped) -> None:
    """Report what a node that becomes a prompt node carries and the layout cannot:
    properties other than bookkeeping, a shape, renamed slots."""
    props = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    for key in props:
        if key not in QUIET_PROPERTIES:
            dropped.add(f"property {key!r}", nid)
    if node.get("shape") is not None:
        dropped.add("a shape", nid)
    slots = [*_list(node.get("inputs")), *_list(node.get("outputs"))]
    if any(isinstance(s, dict) and isinstance(s.get("label"), str) and s["label"]
           and s["label"] != s.get("name") for s in slots):
        dropped.add("renamed slots (label)", nid)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def native_reroutes(obj: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The link reroutes of a workflow (top-level ``reroutes``, else ``extra.reroutes``)
    and each link's nearest one (link id → reroute id), from link objects' ``parentId``
    and ``extra.linkExtensions``."""
    extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
    raw = obj.get("reroutes") if isinstance(obj.get("reroutes"), list) else extra.get("reroutes")
    reroutes = [r for r in _list(raw) if isinstance(r, dict) and _plain_id(r.get("id"))]
    parents: dict[str, str] = {}
    links = obj.get("links")
    for item in [*(links.values() if isinstance(links, dict) else _list(links)),
                 *_list(extra.get("linkExtensions"))]:
        if isinstance(item, dict) and _plain_id(item.get("id")) \
                and _plain_id(item.get("parentId")):
            parents[str(item["id"])] = str(item["parentId"])
    return reroutes, parents


def _plain_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def fresh_ids(taken: list[str], count: int) -> list[str]:
    """``count`` numeric ids past every numeric one in ``taken`` (the canvas numbers new
    nodes past the largest, so these never collide with its own)."""
    # plain ASCII digits of a sane length: "٣" is decimal too, and int() refuses
    # thousands of digits
    top = max((int(t) for t in taken if t.isascii() and t.isdecimal() and len(t) <= 30),
              default=0)
    return [str(top + k + 1) for k in range(count)]


class Reroutes:
    """A workflow's Reroute nodes and link reroutes, as ``layout.reroutes`` and the
    ``via`` of the inputs they feed. ``kept``: the ids the prompt has (an upstream node
    left out gives its reroute no input)."""

    def __init__(self, obj: Mapping[str, Any], ui_nodes: Mapping[str, Mapping[str, Any]],
                 links: Mapping[str, Link], *, with_links: bool):
        self.ui_nodes = ui_nodes
        self.links = links
        self.nodes = [nid for nid, n in ui_nodes.items() if n.get("type") == REROUTE]
        # link reroutes name links by id, which unpacking subgraphs renumbers
        natives, parents = native_reroutes(obj) if with_links else ([], {})
        new = fresh_ids(list(ui_nodes), len(natives))
        self.native = {str(r["id"]): (rid, r) for rid, r in zip(new, natives, strict=True)}
        self.nearest = {lid: self.native[p][0] for lid, p in parents.items()
                        if p in self.native}

    def via(self, link: Link) -> str | None:
        """The reroute nearest the input ``link`` ends at, if it passes one."""
        if link.id in self.nearest:
            return self.nearest[link.id]
        return link.origin if link.origin in self.nodes else None

    def layout(self, kept: set[str] | dict[str, Any]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for rid in self.nodes:
            node = self.ui_nodes[rid]
            slots = _list(node.get("inputs"))
            into = slots[0].get("link") if slots and isinstance(slots[0], dict) else None
            link = self.links.get(str(into)) if into is not None else None
            near = self.via(link) if link is not None else None
            out[rid] = self._entry(node.get("pos"), [near, 0] if near else
                                   self._origin(link, kept))
        for rid, raw in self.native.values():
            parent = raw.get("parentId")
            source = [self.native[str(parent)][0], 0] if _plain_id(parent) \
                and str(parent) in self.native else None
            for lid in _list(raw.get("linkIds")) if source is None else ():
                source = self._origin(self.links.get(str(lid)), kept)
                if source:
                    break
            out[rid] = self._entry(raw.get("pos"), source)
        return out

    def _origin(self, link: Link | None, kept: set[str] | dict[str, Any]) -> list[Any] | None:
        if link is None:
            return None
        if link.origin in self.nodes:
            return [link.origin, 0]
        return [link.origin, link.origin_slot] if link.origin in kept else None

    @staticmethod
    def _entry(pos: Any, source: list[Any] | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"pos": vec2(pos) or [0, 0]}
        if source:
            entry["input"] = source
        return entry
