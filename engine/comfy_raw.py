"""A ComfyUI node of a type this server lacks: its widget values kept raw in the layout
(as ComfyUI keeps them), and filled in once the type is installed."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from engine.comfy_workflow import NodeDef, cached_node_def, short_json, widget_inputs
from engine.workflow import is_link

#: what a node of a type this server lacks keeps in its layout entry, as the file had it
RAW_KEYS = ("widgets_values", "widgets_values_named")


def keep_raw(n: Mapping[str, Any], place: dict[str, Any]) -> bool:
    """Keep an unknown node's widget values as they are (ComfyUI keeps them, and fills
    the widgets in once the node's pack is installed): True if it had any."""
    for key in RAW_KEYS:
        if n.get(key) not in (None, [], {}):
            place[key] = copy.deepcopy(n[key])
    return RAW_KEYS[0] in place or RAW_KEYS[1] in place


def raw_warning(ids: list[str], ui_nodes: Mapping[str, Mapping[str, Any]]) -> str:
    """One line for every unknown node kept with its raw widget values."""
    if len(ids) == 1:
        n = ui_nodes[ids[0]]
        return (f"node {ids[0]} ({n['type']}): its settings are kept only as raw widget "
                f"values ({short_json(n.get('widgets_values'))}), in the layout, until that "
                "node type is installed")
    named = [f"{nid} ({ui_nodes[nid]['type']})" for nid in ids[:8]]
    more = f" and {len(ids) - 8} more" if len(ids) > 8 else ""
    return (f"nodes {', '.join(named)}{more}: their settings are kept only as raw widget "
            "values, in the layout, until those node types are installed")


def restore_raw_widgets(document: dict[str, Any], schemas: Mapping[str, Mapping[str, Any]]
                        ) -> list[str]:
    """Fill in the widgets of nodes kept with raw ``widgets_values`` (a type that was
    not installed when the ComfyUI file was converted) whose type ``schemas`` now has,
    in place: a linked input keeps its link, any other value (a default the canvas filled
    in meanwhile) gives way to the raw one, and the raw keys go. Returns
    the ids filled in."""
    prompt = document.get("prompt") if isinstance(document.get("prompt"), dict) else {}
    layout = document.get("layout") if isinstance(document.get("layout"), dict) else {}
    places = layout.get("nodes") if isinstance(layout.get("nodes"), dict) else {}
    defs: dict[str, NodeDef | None] = {}
    done: list[str] = []
    for nid, place in places.items():
        entry = prompt.get(nid)
        if not (isinstance(place, dict) and any(k in place for k in RAW_KEYS)
                and isinstance(entry, dict) and isinstance(entry.get("class_type"), str)):
            continue
        nd = cached_node_def(entry["class_type"], schemas, defs)
        inputs = entry.setdefault("inputs", {})
        if nd is None or not isinstance(inputs, dict):
            continue  # not known yet, or a malformed node validation reports
        values, control = widget_inputs(place.pop(RAW_KEYS[0], None),
                                        place.pop(RAW_KEYS[1], None), nd)
        for name, value in values.items():
            if not is_link(inputs.get(name)):
                inputs[name] = value
        modes = {k: v for k, v in control.items() if not is_link(inputs.get(k))}
        if modes:
            kept = place.get("control")
            place["control"] = {**(kept if isinstance(kept, dict) else {}), **modes}
        done.append(nid)
    return done
