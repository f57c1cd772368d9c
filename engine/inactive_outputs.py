"""Output nodes a prompt has but will not run (muted or bypassed): found before the
modes are resolved, so "no output node" can name them and say how to turn them on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.outputs import bounded_message
from engine.registry import NodeRegistry
from engine.workflow import BYPASS, MUTED, node_mode


@dataclass(frozen=True)
class InactiveOutput:
    """An output node that does not run because it is muted or bypassed."""

    node_id: str
    class_type: str
    name: str
    mode: str

    @property
    def label(self) -> str:
        return f"{self.name} #{self.node_id}"

    @property
    def state(self) -> str:
        return "muted" if self.mode == MUTED else "bypassed"

    @property
    def fix(self) -> str:
        return "unmute it (Ctrl+M)" if self.mode == MUTED else "turn its bypass off (Ctrl+B)"


MAX_INACTIVE_NAMED = 3  # output nodes a message names; the details list them all


def inactive_outputs(prompt: Mapping[Any, Any], registry: NodeRegistry
                      ) -> list[InactiveOutput]:
    """The output nodes of ``prompt`` (before modes are resolved) that are muted or
    bypassed, by their title (else their display name)."""
    found = []
    for raw_id, node in prompt.items():
        if not isinstance(node, dict) or node_mode(node) not in (MUTED, BYPASS):
            continue
        kind = node.get("class_type")
        cls = registry.get(kind) if isinstance(kind, str) else None
        if cls is None or not cls.OUTPUT_NODE:
            continue
        meta = node.get("_meta")
        title = meta.get("title") if isinstance(meta, dict) else None
        name = title if isinstance(title, str) and title.strip() else \
            cls.DISPLAY_NAME or cls.TYPE
        found.append(InactiveOutput(str(raw_id), cls.TYPE, bounded_message(name, 80),
                                     node_mode(node) or MUTED))
    return found


def inactive_outputs_message(off: list[InactiveOutput]) -> str:
    """Why no output node is left, and what to do: the output nodes are switched off."""
    if len(off) == 1:
        return (f"{off[0].label} is {off[0].state}, so no output node is left to run: "
                f"{off[0].fix} or add an output node")
    labels = [o.label for o in off[:MAX_INACTIVE_NAMED]]
    if len(off) > MAX_INACTIVE_NAMED:
        labels.append(f"{len(off) - MAX_INACTIVE_NAMED} more")
    named = f"{', '.join(labels[:-1])} and {labels[-1]}"
    states = {o.mode for o in off}
    if states == {MUTED}:
        state, fix = "muted", "unmute one (Ctrl+M)"
    elif states == {BYPASS}:
        state, fix = "bypassed", "turn bypass off on one (Ctrl+B)"
    else:
        state, fix = "muted or bypassed", "turn one back on (Ctrl+M unmutes, Ctrl+B ends a bypass)"
    return (f"the output nodes {named} are {state}, so none is left to run: {fix} or add "
            "an output node")


def inactive_details(off: list[InactiveOutput]) -> dict[str, Any]:
    """The switched-off output nodes, for a client to point at them."""
    if not off:
        return {}
    return {"inactive_outputs": [{"node_id": o.node_id, "class_type": o.class_type,
                                  "mode": o.mode} for o in off]}
