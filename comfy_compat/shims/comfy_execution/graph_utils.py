"""``comfy_execution.graph_utils``: build the subgraph a node expands into.

``GraphBuilder`` makes the graph a node returns as ``{"result": ..., "expand":
graph}``; the engine runs it in the node's place (:mod:`engine.expansion`). Ids
are ComfyUI's ``"<prefix><id>"``, the prefix rooted at an id the engine allocates
for the running node (so they are new in the run, and short for engine-built
loops); ``is_link`` and ``ExecutionBlocker`` are the engine's.
"""

from __future__ import annotations

from typing import Any

from comfy_compat import runtime
from engine.expansion import SubgraphNode as Node
from engine.lists import ExecutionBlocker

__all__ = ["ExecutionBlocker", "GraphBuilder", "Node", "add_graph_prefix", "is_link"]


def is_link(obj: Any) -> bool:
    """ComfyUI's test: a list ``[str, int]`` (a float index is tolerated)."""
    return (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str)
            and isinstance(obj[1], int | float) and not isinstance(obj[1], bool))


class GraphBuilder:
    """Collects nodes for an expansion; ``finalize()`` gives the graph."""

    # shared by every copy of this module (runtime.graph_prefix); the adapter resets it
    # at each call, and a prefix set during another node's call is never used
    _default_prefix = runtime.graph_prefix

    def __init__(self, prefix: str | None = None):
        self.prefix = GraphBuilder.alloc_prefix() if prefix is None else prefix
        self.nodes: dict[str, Node] = {}
        self.id_gen = 1

    @classmethod
    def set_default_prefix(cls, prefix_root: str | None, call_index: int,
                           graph_index: int = 0) -> None:
        """The prefix the running call's builders take (root None: one the engine
        allocates for the running node on first use)."""
        cls._default_prefix.set((runtime.running_node(), prefix_root, call_index,
                                 graph_index))

    @classmethod
    def alloc_prefix(cls, root: str | None = None, call_index: int | None = None,
                     graph_index: int | None = None) -> str:
        owner = runtime.running_node()
        set_by, default_root, default_call, default_graph = cls._default_prefix.get()
        if set_by != owner:  # another call's (another prompt's) state: start afresh
            default_root, default_call, default_graph = None, 0, 0
        if default_root is None:
            ctx = runtime.current_context()
            default_root = ctx.new_node_id() if ctx is not None and ctx.run is not None \
                else "expand"
        root = default_root if root is None else root
        call_index = default_call if call_index is None else call_index
        graph_index = default_graph if graph_index is None else graph_index
        cls._default_prefix.set((owner, default_root, default_call, default_graph + 1))
        return f"{root}.{call_index}.{graph_index}."

    def node(self, class_type: str, id: str | None = None, **kwargs: Any) -> Node:
        if id is None:
            id = str(self.id_gen)
            self.id_gen += 1
        node_id = self.prefix + id
        if node_id not in self.nodes:
            self.nodes[node_id] = Node(node_id, class_type, kwargs)
        return self.nodes[node_id]

    def lookup_node(self, id: str) -> Node | None:
        return self.nodes.get(self.prefix + id)

    def finalize(self) -> dict[str, Any]:
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}

    def replace_node_output(self, node_id: str, index: int, new_value: Any) -> None:
        """Point every link to ``node_id``'s output ``index`` at ``new_value``
        (None removes those inputs)."""
        target = self.prefix + node_id
        for node in self.nodes.values():
            for key, value in list(node.inputs.items()):
                if is_link(value) and value[0] == target and value[1] == index:
                    node.set_input(key, new_value)

    def remove_node(self, id: str) -> None:
        del self.nodes[self.prefix + id]


def add_graph_prefix(graph: dict[str, Any], outputs: Any, prefix: str
                     ) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """``graph`` with ``prefix`` on every node id and internal link, and ``outputs``'
    links likewise."""
    new_graph: dict[str, Any] = {}
    for node_id, info in graph.items():
        inputs = {name: [prefix + value[0], value[1]] if is_link(value) else value
                  for name, value in info.get("inputs", {}).items()}
        new_graph[prefix + node_id] = {"class_type": info["class_type"], "inputs": inputs}
    new_outputs = tuple([prefix + out[0], out[1]] if is_link(out) else out for out in outputs)
    return new_graph, new_outputs
