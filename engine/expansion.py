"""Node expansion: a node returns a subgraph to run in its place.

A node's ``execute`` returns ``NodeResult(outputs, expand=graph)``: ``graph`` is a
subgraph in the API format, and each output that is a link ``[node_id, index]``
takes that node's output once it has run. The subgraph's nodes may link to each
other and to any node already in the run; they are validated as a prompt's nodes
are (a socket input may also hold a value, since code builds them), signed, and
served from the cache by signature like any other node. Loops and recursion are
expansions that expand again; the executor's work-list runs them without
recursion, and a dependency cycle created this way is a structured error.

:class:`Subgraph` builds such graphs with ids the run allocates, derived from the
prompt node the expansion descends from (``"<origin>.<n>"``, short however deep
the expansion goes). :class:`DynamicGraph` is the run's view of the graph as it
grows (ComfyUI's ``DynamicPrompt`` method names), given to nodes as ``ctx.graph``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from engine.registry import NodeRegistry
from engine.validation import Issue, ValidatedNode, _validate_node

if TYPE_CHECKING:
    from engine.context import ExecutionContext
    from engine.environment import Environment
    from engine.node import Node


class ExpansionError(ValueError):
    """A node's subgraph is malformed; ``issues`` says where."""

    def __init__(self, message: str, issues: list[Issue] | None = None):
        super().__init__(message)
        self.issues = issues or []


class DependencyCycleError(RuntimeError):
    """Nodes added at run time wait on each other; ``cycle`` lists them in order."""

    def __init__(self, cycle: list[str]):
        self.cycle = cycle
        super().__init__("dependency cycle created at run time (by a node's expansion): "
                         + " -> ".join([*cycle, cycle[0]]) + "; a subgraph must not link "
                         "to the node it replaces or to anything downstream of it")


class SubgraphNode:
    """One node of a :class:`Subgraph`; ``out(i)`` is a link to its output ``i``.

    ``display_id`` (ComfyUI's ``override_display_id``, also by that name) is the node
    the run's events show it as (``display_node``): a node of the running graph, whose
    own display node it takes; by default the expanding node's.
    """

    __slots__ = ("class_type", "display_id", "id", "inputs")

    def __init__(self, node_id: str, class_type: str, inputs: dict[str, Any]):
        self.id = node_id
        self.class_type = class_type
        self.inputs = inputs
        self.display_id: str | None = None

    def out(self, index: int) -> list[Any]:
        return [self.id, index]

    def set_input(self, name: str, value: Any) -> None:
        """Set an input (a value or a link); None removes it."""
        if value is None:
            self.inputs.pop(name, None)
        else:
            self.inputs[name] = value

    def get_input(self, name: str) -> Any:
        """An input's value or link; None if not set."""
        return self.inputs.get(name)

    def set_override_display_id(self, display_id: str | None) -> None:
        """Show this node in the run's events as ``display_id`` (ComfyUI's name)."""
        self.display_id = display_id

    @property
    def override_display_id(self) -> str | None:
        return self.display_id

    @override_display_id.setter
    def override_display_id(self, display_id: str | None) -> None:
        self.display_id = display_id

    def serialize(self) -> dict[str, Any]:
        data: dict[str, Any] = {"class_type": self.class_type, "inputs": dict(self.inputs)}
        if self.display_id is not None:
            data["override_display_id"] = self.display_id
        return data


class Subgraph:
    """Builds a subgraph for ``NodeResult(expand=...)`` with ids from the run.

    ``key`` names a node within this builder (e.g. the id of the node it clones),
    so links can be wired after all nodes exist: ``lookup(key)``.
    """

    def __init__(self, ctx: ExecutionContext):
        self._ctx = ctx
        self.nodes: dict[str, SubgraphNode] = {}
        self._keys: dict[str, SubgraphNode] = {}

    def node(self, class_type: str, key: str | None = None, **inputs: Any) -> SubgraphNode:
        if key is not None and key in self._keys:
            return self._keys[key]
        node = SubgraphNode(self._ctx.new_node_id(), class_type, inputs)
        self.nodes[node.id] = node
        if key is not None:
            self._keys[key] = node
        return node

    def lookup(self, key: str) -> SubgraphNode | None:
        return self._keys.get(key)

    def finalize(self) -> dict[str, Any]:
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}


class DynamicGraph:
    """The run's graph as it grows; ComfyUI's ``DynamicPrompt`` interface.

    ``get_node`` gives a node in the API format with its inputs as they run (modes
    resolved, defaults filled in, links as ``[id, index]``).
    """

    def __init__(self, nodes: Mapping[str, ValidatedNode], prompt: dict[str, Any]):
        self._nodes = nodes
        self._prompt = prompt
        self.parents: dict[str, str] = {}
        self.display: dict[str, str] = {}
        self._origin: dict[str, str] = {}
        self._counters: dict[str, int] = {}
        self._users: dict[str, list[str]] | None = None

    # --- ComfyUI's DynamicPrompt --------------------------------------------------
    def get_node(self, node_id: str) -> dict[str, Any]:
        node = self._nodes.get(node_id)
        if node is None:
            raise KeyError(f"node {node_id!r} is not in the running graph")
        inputs: dict[str, Any] = dict(node.constants)
        for name, (src, index) in node.links.items():
            inputs[name] = [src, index]
        return {"class_type": node.cls.TYPE, "inputs": inputs}

    def has_node(self, node_id: str) -> bool:
        return node_id in self._nodes

    def get_real_node_id(self, node_id: str) -> str:
        """The prompt node that ``node_id`` descends from (itself for prompt nodes)."""
        return self._origin.get(node_id, node_id)

    def get_parent_node_id(self, node_id: str) -> str | None:
        return self.parents.get(node_id)

    def get_display_node_id(self, node_id: str) -> str:
        return self.display.get(node_id, node_id)

    def all_node_ids(self) -> set[str]:
        return set(self._nodes)

    def get_original_prompt(self) -> dict[str, Any]:
        return self._prompt

    # --- ours ------------------------------------------------------------------
    def new_id(self, parent_id: str) -> str:
        """A fresh id for a node that ``parent_id`` expands into."""
        origin = self.get_real_node_id(parent_id)
        n = self._counters.get(origin, 0)
        while True:
            n += 1
            node_id = f"{origin}.{n}"
            if node_id not in self._nodes:
                self._counters[origin] = n
                return node_id

    def add(self, node_id: str, parent_id: str, display_id: str | None) -> None:
        self.parents[node_id] = parent_id
        self._origin[node_id] = self.get_real_node_id(parent_id)
        # ComfyUI follows display ids until a prompt node: stored resolved, so one step
        self.display[node_id] = self.get_display_node_id(
            str(display_id) if display_id is not None else parent_id)
        if self._users is not None:
            self._index(node_id)

    def upstream(self, node_id: str) -> Iterator[str]:
        """Sources of ``node_id``'s links."""
        for src, _ in self._nodes[node_id].links.values():
            yield src

    def downstream(self, node_id: str) -> list[str]:
        """Nodes linking to ``node_id`` (an index built on first use, then kept)."""
        if self._users is None:
            self._users = {}
            for user in self._nodes:
                self._index(user)
        return self._users.get(node_id, [])

    def between(self, start: str, end: str) -> set[str]:
        """Nodes on a path from ``start`` to ``end``, both included.

        Iterative, and bounded by what lies between the two (plus side branches
        of ``start``): a loop's later iterations never walk its earlier ones.
        """
        below = {start}  # downstream of start, not past end
        stack = [start]
        while stack:
            node_id = stack.pop()
            if node_id == end:
                continue
            for user in self.downstream(node_id):
                if user not in below:
                    below.add(user)
                    stack.append(user)
        if end not in below:
            return set()
        inside = {end}
        stack = [end]
        while stack:
            for src in self.upstream(stack.pop()):
                if src in below and src not in inside:
                    inside.add(src)
                    stack.append(src)
        return inside

    def _index(self, node_id: str) -> None:
        assert self._users is not None
        for src in {src for src, _ in self._nodes[node_id].links.values()}:
            self._users.setdefault(src, []).append(node_id)


def validate_expansion(parent_id: str, graph: Any, nodes: Mapping[str, ValidatedNode],
                       classes: Mapping[str, type[Node]], registry: NodeRegistry,
                       env: Environment, memo: dict[Any, Any] | None = None
                       ) -> list[ValidatedNode]:
    """The subgraph's nodes, validated, in an order where every link's source
    comes first; raises :class:`ExpansionError` listing every problem. ``memo``
    (kept by the run) skips the input checks earlier expansions already passed."""
    where = f"node {parent_id}'s expansion"
    if not isinstance(graph, dict):
        raise ExpansionError(f"{where} must be a dict of nodes, got {type(graph).__name__}")
    new: dict[str, type[Node]] = {}
    raw: dict[str, dict[str, Any]] = {}
    issues: list[Issue] = []
    for raw_id, entry in graph.items():
        node_id = str(raw_id)
        if node_id in nodes:
            issues.append(Issue("invalid_prompt", f"{where} reuses node id {node_id!r}; ids "
                                "must be new (use engine.expansion.Subgraph)", node_id=node_id))
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("class_type"), str) \
                or not isinstance(entry.get("inputs", {}), dict):
            issues.append(Issue("invalid_prompt", f"{where}: node {node_id!r} must be "
                                "{'class_type': str, 'inputs': dict}", node_id=node_id))
            continue
        cls = registry.get(entry["class_type"])
        if cls is None:
            issues.append(Issue("unknown_node_type", f"{where}: node {node_id!r} has unknown "
                                f"type {entry['class_type']!r}", node_id=node_id))
            continue
        new[node_id] = cls
        raw[node_id] = entry
    lookup = _Both(new, classes)
    validated: dict[str, ValidatedNode] = {}
    for node_id, cls in new.items():
        node_issues, vnode = _validate_node(node_id, cls, raw[node_id].get("inputs") or {},
                                            lookup, env, values_ok=True, memo=memo)
        for issue in node_issues:
            if issue.severity == "error":
                issue.node_id, issue.class_type = node_id, cls.TYPE
                issues.append(issue)
        vnode.title = raw[node_id].get("override_display_id")  # kept for display only
        validated[node_id] = vnode
    if issues:
        raise ExpansionError(f"{where} is invalid: " + "; ".join(
            f"node {i.node_id}: {i.message}" for i in issues[:5]), issues)
    return _ordered(parent_id, validated)


class _Both(Mapping[str, "type[Node]"]):
    """The subgraph's classes, then the run's: a ChainMap's ``get``, without its
    per-call overhead (this is on a loop's per-iteration path)."""

    __slots__ = ("_first", "_second")

    def __init__(self, first: Mapping[str, type[Node]], second: Mapping[str, type[Node]]):
        self._first, self._second = first, second

    def get(self, key: str, default: Any = None) -> Any:
        found = self._first.get(key)
        return found if found is not None else self._second.get(key, default)

    def __getitem__(self, key: str) -> type[Node]:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __iter__(self) -> Iterator[str]:
        yield from self._first
        yield from (k for k in self._second if k not in self._first)

    def __len__(self) -> int:
        return len(self._first) + sum(1 for k in self._second if k not in self._first)


def _ordered(parent_id: str, validated: dict[str, ValidatedNode]) -> list[ValidatedNode]:
    """Kahn's order within the subgraph (sources outside it are already signed)."""
    waiting: dict[str, int] = {}
    users: dict[str, list[str]] = {}
    for node_id, node in validated.items():
        srcs = {src for src, _ in node.links.values() if src in validated}
        waiting[node_id] = len(srcs)
        for src in srcs:
            users.setdefault(src, []).append(node_id)
    ready = [n for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[ValidatedNode] = []
    while ready:
        node_id = heapq.heappop(ready)
        order.append(validated[node_id])
        for user in users.get(node_id, ()):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(validated):
        stuck = sorted(n for n, count in waiting.items() if count)
        raise DependencyCycleError(stuck) from ExpansionError(
            f"node {parent_id}'s expansion contains a cycle")
    return order
