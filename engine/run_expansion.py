"""The run's side of node expansion (what a subgraph is: :mod:`engine.expansion`).

A node that expands has its subgraph validated, signed and added to the running
graph; it then waits on the subgraph's linked outputs like on any input, and takes
their values once they have run. A node mapped over a list may expand per element:
its outputs are each call's (a :class:`engine.calls.PerCall`), merged by the list
rules, in call order, once every element's subgraph has run.

Loops expand once per iteration into a copy of the same body, so this path is
kept near a static node's cost: each copy is validated against a per-run memo of
the checks already passed (per input spec and source class or scalar value), and
signed incrementally (:func:`engine.signature.signature` remembers a node's own part;
its upstream signatures are already known), never re-walking the graph.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from engine.calls import PerCall, class_info
from engine.expansion import DynamicGraph, ExpansionError, validate_expansion
from engine.lists import merge_outputs
from engine.outputs import _NodeFailure
from engine.workflow import is_link

if TYPE_CHECKING:
    from engine.executor import Executor
    from engine.node import Node
    from engine.validation import ValidatedNode

_EXPANDED = 2  # the run's node state while it waits on its subgraph (engine.run)


class ExpansionSteps:
    """The expansion half of :class:`engine.run._Run` (a mixin: it shares the
    run's work-list state, declared below)."""

    ex: Executor
    nodes: dict[str, ValidatedNode]
    prompt: dict[str, Any]
    sigs: dict[str, str]
    rank: dict[str, int]
    state: dict[str, int]
    waits: dict[str, int]
    uses: dict[str, set[str]]
    ready: list[tuple[int, str]]
    expansions: dict[str, tuple[Any, dict[str, Any] | None]]
    _graph: DynamicGraph | None
    _classes: dict[str, type[Node]] | None
    _memo: dict[Any, Any]

    # provided by engine.run._Run
    def _sign(self, node: ValidatedNode, ephemeral: bool = False) -> None: ...
    def _use(self, consumer: str, src: str, uses: set[str]) -> bool: ...
    def _schedule(self, node_id: str) -> None: ...
    def _store(self, node_id: str, outputs: tuple[Any, ...],
               ui: dict[str, Any] | None) -> None: ...

    def dynamic_graph(self) -> DynamicGraph:
        if self._graph is None:
            self._graph = DynamicGraph(self.nodes, self.prompt)
        return self._graph

    def _expand(self, node_id: str, outputs: tuple[Any, ...] | PerCall,
                ui: dict[str, Any] | None, graph: dict[str, Any]) -> None:
        """Add ``node_id``'s subgraph to the run; ``node_id`` waits on what it links to."""
        if self._classes is None:
            self._classes = {n: v.cls for n, v in self.nodes.items()}
        added = validate_expansion(node_id, graph, self.nodes, self._classes,
                                   self.ex.registry, self.ex.env, memo=self._memo)
        dyn = self.dynamic_graph()
        nodes, classes, rank = self.nodes, self._classes, self.rank
        for vnode in added:
            nodes[vnode.id] = vnode
            classes[vnode.id] = vnode.cls
            rank[vnode.id] = len(rank)
            dyn.add(vnode.id, node_id, vnode.title)
            vnode.title = None
            self._sign(vnode, ephemeral=True)
        self.expansions[node_id] = (outputs, ui)
        self.state[node_id] = _EXPANDED
        uses = self.uses.setdefault(node_id, set())
        waits = 0
        for call in _expanded_calls(outputs):
            for out in call:
                if not is_link(out):
                    continue
                src = str(out[0])
                if src not in nodes:
                    raise ExpansionError(f"node {node_id}'s output links to node {src!r}, "
                                         "which is neither in its subgraph nor in the prompt")
                if src in uses:
                    continue
                if self._use(node_id, src, uses):
                    waits += 1
                    if src not in self.state:
                        self._schedule(src)
        self.waits[node_id] = waits
        if waits == 0:
            heapq.heappush(self.ready, (rank[node_id], node_id))

    def _resolve_expansion(self, node_id: str) -> None:
        """The subgraph has run: ``node_id``'s outputs are what its links point at."""
        outputs, ui = self.expansions.pop(node_id)
        if isinstance(outputs, PerCall):
            cls = self.nodes[node_id].cls
            results = [self._resolved(node_id, call) if expanded else call
                       for call, expanded in zip(outputs, outputs.expanded, strict=True)]
            self._store(node_id, merge_outputs(results, class_info(cls).output_is_list), ui)
        else:
            self._store(node_id, self._resolved(node_id, outputs), ui)

    def _resolved(self, node_id: str, outputs: tuple[Any, ...]) -> tuple[Any, ...]:
        values = []
        for out in outputs:
            if is_link(out):
                entry = self.ex.cache.get(self.sigs[str(out[0])])
                if entry is None:
                    raise _NodeFailure(node_id, RuntimeError(
                        f"internal: output of node {out[0]} is missing from the cache"))
                values.append(entry.outputs[out[1]])
            else:
                values.append(out)
        return tuple(values)


def _expanded_calls(outputs: tuple[Any, ...] | PerCall) -> list[tuple[Any, ...]]:
    """The output tuples whose links point into the subgraph."""
    if isinstance(outputs, PerCall):
        return [call for call, expanded in zip(outputs, outputs.expanded, strict=True)
                if expanded]
    return [outputs]
