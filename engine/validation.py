"""Validate a prompt before anything runs, reporting every problem at once.

Issue kinds (machine-readable, stable):

==================== ==========================================================
invalid_prompt       the prompt or a node is not shaped like the API format
unknown_node_type    ``class_type`` is not registered
missing_input        a required input is neither linked nor given
bad_link             a link names a missing node or output slot, or is malformed
type_mismatch        a link joins sockets of different types
expected_link        a constant was given where only a link is accepted
expected_constant    a link was given for a DynamicCombo, whose value must be known
invalid_value        a constant has the wrong type, is not finite, or is off its step
out_of_range         a number is outside the input's min/max (or 64-bit, for INT)
not_in_choices       a value is neither a choice nor admitted by also_accept
cycle                the node is on a cycle
no_output_node       nothing in the prompt produces output
node_error           a node's own ``validate_inputs`` check failed
node_warning         a node's ``validate_inputs`` warning (third item ``"warning"``)
node_mode            a warning: an input left unconnected because it was linked to a
                     muted node, or to a bypassed one with nothing to pass through
==================== ==========================================================

Node modes (``"mode": "muted" | "bypass"``, see :mod:`engine.workflow`) are
resolved first: what is validated and run is the graph without those nodes.

Unknown inputs are reported as warnings (kind ``unknown_input``) and ignored, so
workflows saved by newer versions of a node still run, unless the node class takes
them undeclared (:meth:`engine.node.Node.undeclared_input`: ComfyUI packs' variadic
inputs), when they are checked against the spec it gives and passed on; so are the inputs of a
DynamicCombo option other than the chosen one (:mod:`engine.dynamic`), whose own
inputs are checked like any other. A MatchType output's type is that of what is linked
to its node (:class:`engine.dynamic.OutputTypes`), checked against where it leads.
"""

from __future__ import annotations

import difflib
import gc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx

from engine.dynamic import (
    OutputType,
    OutputTypes,
    active_specs,
    chosen_option,
    has_dynamic,
    ignored_message,
)
from engine.environment import Environment
from engine.inactive_outputs import inactive_details, inactive_outputs, inactive_outputs_message
from engine.issues import (  # noqa: F401  (re-exported: the validation API's one import)
    Issue,
    PromptValidationError,
    comfy_error_type,
    describe_issues,
    jsonable,
    plain_issues,
    short_repr,
    to_node_errors,
)
from engine.node import InputSpec, Node
from engine.outputs import bounded_message
from engine.registry import NodeRegistry
from engine.value_checks import check_constant, value_issue
from engine.workflow import NodeShape, is_link, resolve_modes, types_match

GC_PAUSE_NODES = 10_000  # prompts this big are validated with the cyclic GC paused


@dataclass
class ValidatedNode:
    id: str
    cls: type[Node]
    constants: dict[str, Any]
    links: dict[str, tuple[str, int]]
    title: str | None = None


@dataclass
class ValidatedPrompt:
    """A prompt that passed validation, reduced to what will run."""

    nodes: dict[str, ValidatedNode]
    order: list[str]
    outputs: list[str]
    warnings: list[Issue]
    #: with ``partial``: the errors of the output nodes left out, as ComfyUI reports them
    rejected: PromptValidationError | None = None


def node_shape(cls: type[Node]) -> NodeShape:
    """A node class's inputs (sockets first, as ComfyUI's slots) and output types."""
    specs = cls.INPUT_SPECS.values()
    inputs = [(s.name, s.type) for s in specs if not s.is_widget]
    inputs += [(s.name, s.type) for s in specs if s.is_widget]
    return NodeShape(tuple(inputs), tuple(o.type for o in cls.OUTPUTS))


def validate_prompt(prompt: Any, registry: NodeRegistry, env: Environment | None = None,
                    *, outputs: list[str] | None = None, partial: bool = False,
                    output_nodes_only: bool = False) -> ValidatedPrompt:
    """Check a prompt; raise :class:`PromptValidationError` listing every error.

    ``partial`` (ComfyUI's queue): output nodes whose own inputs and ancestors are valid
    still run when others fail; the failures come back in ``rejected``. It raises only
    when no output is left, or for an error of the prompt as a whole (an unknown node
    type, a malformed node, a requested output that is not there).
    ``output_nodes_only`` (ComfyUI's ``partial_execution_targets``): of ``outputs``,
    only output nodes count; the others are left out with a warning, and with none
    left the prompt has no outputs.
    """
    if output_nodes_only and outputs is not None:
        outputs = _OutputTargets(outputs)
    if not isinstance(prompt, dict) or len(prompt) < GC_PAUSE_NODES or not gc.isenabled():
        return _validate_prompt(prompt, registry, env, outputs, partial)
    # A big prompt makes a few objects per node, and every gen-2 collection that
    # triggers walks the whole heap (the prompt's million containers included): with
    # it paused, 200k nodes validate in half the time and a server's event loop, which
    # shares the GIL, is not stalled by those walks. Nothing here makes cycles.
    gc.disable()
    try:
        return _validate_prompt(prompt, registry, env, outputs, partial)
    finally:
        gc.enable()


class _OutputTargets(list[str]):
    """Requested outputs of which only output nodes count."""


def _validate_prompt(prompt: Any, registry: NodeRegistry, env: Environment | None,
                     outputs: list[str] | None, partial: bool = False) -> ValidatedPrompt:
    issues: list[Issue] = []
    if not isinstance(prompt, dict) or not prompt:
        raise PromptValidationError([Issue("invalid_prompt",
                                           "a prompt must be a non-empty JSON object of nodes")])
    given = prompt  # with its muted and bypassed nodes, to say why no output is left
    prompt, mode_notes = resolve_modes(prompt, lambda t: _shape(registry, t))
    mode_warnings: list[Issue] = []
    for note in mode_notes:
        node = prompt.get(note.node_id)
        kind = node.get("class_type") if isinstance(node, dict) else None
        issue = Issue("invalid_prompt" if note.error else "node_mode", note.message,
                      node_id=note.node_id, class_type=kind if isinstance(kind, str) else None,
                      input_name=note.input_name,
                      severity="error" if note.error else "warning")
        (issues if note.error else mode_warnings).append(issue)
    if not prompt:
        off = inactive_outputs(given, registry)
        raise PromptValidationError([*issues, Issue(
            "no_output_node", inactive_outputs_message(off) if off else
            "every node is muted or bypassed, so nothing would run",
            details=inactive_details(off))])
    classes: dict[str, type[Node]] = {}
    raw_inputs: dict[str, dict[str, Any]] = {}
    for raw_id, node in prompt.items():
        node_id = str(raw_id)
        if not isinstance(node, dict):
            issues.append(Issue("invalid_prompt", "a node must be an object with "
                                "'class_type' and 'inputs'", node_id=node_id))
            continue
        class_type = node.get("class_type")
        inputs = node.get("inputs", {})
        if not isinstance(class_type, str):
            issues.append(Issue("missing_class_type", "no 'class_type' string",
                                node_id=node_id))
            continue
        if not isinstance(inputs, dict):
            issues.append(Issue("invalid_prompt", "'inputs' must be an object",
                                node_id=node_id, class_type=class_type))
            continue
        cls = registry.get(class_type)
        if cls is None:
            issues.append(Issue("unknown_node_type", f"unknown node type {class_type!r}",
                                node_id=node_id, class_type=class_type))
            continue
        classes[node_id] = cls
        raw_inputs[node_id] = inputs

    graph = nx.DiGraph()
    graph.add_nodes_from(classes)
    for node_id, inputs in raw_inputs.items():
        for value in inputs.values():
            if is_link(value) and str(value[0]) in classes:
                graph.add_edge(str(value[0]), node_id)

    wanted = outputs if outputs is not None else [n for n, c in classes.items() if c.OUTPUT_NODE]
    missing_out = [n for n in wanted if n not in classes]
    switched_off = {o.node_id: o for o in inactive_outputs(given, registry)} \
        if missing_out and given is not prompt else {}
    for n in missing_out:
        if n in switched_off:
            o = switched_off[n]
            issues.append(Issue("no_output_node", f"requested output node {o.label} is "
                                f"{o.state}, so it does not run: {o.fix}",
                                node_id=n, class_type=o.class_type,
                                details=inactive_details([o])))
            continue
        issues.append(Issue("no_output_node", f"requested output node {n!r} is not in the prompt",
                            node_id=n))
    wanted = [n for n in wanted if n in classes]
    explained = bool(missing_out)  # why no output is left, already said
    left_out: list[Issue] = []
    if isinstance(outputs, _OutputTargets):
        left_out = [Issue("no_output_node", f"node {n} ({classes[n].TYPE}) is not an output "
                          "node; partial_execution_targets runs output nodes (e.g. Save "
                          "Image) and what they need", severity="warning")
                    for n in wanted if not classes[n].OUTPUT_NODE]
        wanted = [n for n in wanted if classes[n].OUTPUT_NODE]
        if not wanted and left_out:
            for issue in left_out:
                issue.severity = "error"
            issues.extend(left_out)
            explained, left_out = True, []
    if not wanted and not explained:
        off = inactive_outputs(given, registry) if outputs is None and given is not prompt \
            else []
        if off:  # the canvas shows the node: say why it does not count
            message = inactive_outputs_message(off)
        elif outputs is None or len(outputs):
            message = "the prompt has no output node (e.g. Save Image), so nothing would run"
        else:
            message = ("no output node was asked for (the list of outputs to run, "
                       "partial_execution_targets, is empty), so nothing would run")
        issues.append(Issue("no_output_node", message, details=inactive_details(off)))
    needed = _ancestors_and_self(graph, wanted)

    nodes: dict[str, ValidatedNode] = {}
    needed_ids = set(needed)  # a warning about a node that will not run is noise
    warnings: list[Issue] = [i for i in mode_warnings if i.node_id in needed_ids] + left_out
    output_type = OutputTypes(classes, raw_inputs)
    for node_id in needed:
        cls = classes[node_id]
        node_issues, vnode = _validate_node(node_id, cls, raw_inputs[node_id], classes, env,
                                            output_type=output_type)
        for issue in node_issues:
            issue.node_id, issue.class_type = node_id, cls.TYPE
            (warnings if issue.severity == "warning" else issues).append(issue)
        meta = prompt[node_id].get("_meta") if isinstance(prompt.get(node_id), dict) else None
        vnode.title = meta.get("title") if isinstance(meta, dict) else None
        nodes[node_id] = vnode

    # A real graph, not a subgraph view: views re-filter on every access.
    sub = graph if len(needed) == len(graph) else nx.DiGraph(graph.subgraph(needed))
    if not nx.is_directed_acyclic_graph(sub):
        for component in nx.strongly_connected_components(sub):
            if len(component) > 1 or any(sub.has_edge(n, n) for n in component):
                # one real cycle through the component, shown short: every node of a huge
                # ring listing the whole ring was quadratic (100 000 nodes: over 11 GiB)
                path = [u for u, _ in nx.find_cycle(sub.subgraph(component))]
                shown = path[:MAX_CYCLE_SHOWN]
                text = " -> ".join([*shown, "..." if len(path) > len(shown) else path[0]])
                more = f" ({len(component)} nodes)" if len(component) > len(shown) else ""
                for n in component:
                    issues.append(Issue("cycle", f"node {n} is on a cycle: {text}{more}",
                                        node_id=n, class_type=classes[n].TYPE,
                                        details={"cycle": shown, "size": len(component)}))
    rejected = None
    if issues:
        _name_missing_sources(issues)
        failed = PromptValidationError(issues + warnings, _dependents(graph, wanted))
        good = _valid_outputs(graph, wanted, issues) if partial else []
        if not good:
            raise failed
        rejected, wanted = failed, good
        needed_ids = set(_ancestors_and_self(graph, good))
        nodes = {n: v for n, v in nodes.items() if n in needed_ids}
        warnings = [w for w in warnings if w.node_id in needed_ids]
        sub = nx.DiGraph(graph.subgraph(needed_ids))
    order = [n for n in nx.topological_sort(sub)]
    return ValidatedPrompt(nodes=nodes, order=order, outputs=wanted, warnings=warnings,
                           rejected=rejected)


#: errors of the prompt as a whole: no output runs past them, as in ComfyUI
_WHOLE_PROMPT_KINDS = frozenset({"invalid_prompt", "unknown_node_type", "no_output_node",
                                 "missing_class_type"})


def _name_missing_sources(issues: list[Issue]) -> None:
    """A link from a node whose type is not installed says so, rather than that the node
    "does not exist" (a client that shows one error per node blamed the wrong one)."""
    missing = {i.node_id: i.class_type for i in issues if i.kind == "unknown_node_type"}
    if not missing:
        return
    for issue in issues:
        source = issue.details.get("source") if issue.kind == "bad_link" else None
        if source in missing and "does not exist" in issue.message:
            issue.message = (f"input '{issue.input_name}' links to node {source!r}, whose type "
                             f"{missing[source]!r} is not installed here")


def _valid_outputs(graph: nx.DiGraph, wanted: list[str], issues: list[Issue]) -> list[str]:
    """The output nodes that no failing node feeds (none when an error is global)."""
    if any(i.node_id is None or i.kind in _WHOLE_PROMPT_KINDS for i in issues):
        return []
    tainted = _reached(graph.successors, {i.node_id for i in issues if i.node_id in graph})
    return [o for o in wanted if o not in tainted]


def _validate_node(node_id: str, cls: type[Node], inputs: dict[str, Any],
                   classes: Mapping[str, type[Node]], env: Environment | None,
                   values_ok: bool = False, memo: dict[Any, Any] | None = None,
                   output_type: OutputType | None = None
                   ) -> tuple[list[Issue], ValidatedNode]:
    """One node's inputs. ``values_ok`` (a subgraph a node expanded into, built by
    code): a socket input may hold a value instead of a link. ``memo`` (one run's
    expansions) remembers the checks that passed, per input spec and source class or
    scalar value, so a loop's copies of a body are checked once per shape.
    ``output_type(node_id, index)`` gives a linked output's type when it depends on the
    prompt (a MatchType output); without it the declared type is checked."""
    issues: list[Issue] = []
    constants: dict[str, Any] = {}
    links: dict[str, tuple[str, int]] = {}
    specs = cls.INPUT_SPECS
    if has_dynamic(cls):  # a DynamicCombo: only the chosen option's inputs count
        specs = active_specs(specs, inputs)
    extra: dict[str, InputSpec] | None = None
    for name in inputs:
        if name not in specs:
            if name not in cls.INPUT_SPECS:
                # an input the class takes without declaring it (ComfyUI passes linked ones)
                spec = cls.undeclared_input(name, is_link(inputs[name]))
                if spec is not None:
                    if extra is None:
                        extra = {}
                    extra[name] = spec
                    continue
            if name in UPLOAD_BUTTONS and _has_upload(cls):
                continue  # the front end's upload button, saved with the widgets
            message = (ignored_message(cls.INPUT_SPECS, name, inputs)
                       if name in cls.INPUT_SPECS else _unknown_input_message(name, specs,
                                                                            inputs))
            issues.append(Issue("unknown_input", message, input_name=name,
                                severity="warning"))
    if extra:
        specs = {**specs, **extra}
    for name, spec in specs.items():
        if name in inputs and inputs[name] is None and spec.required and spec.is_widget \
                and not values_ok:
            # ComfyUI fails int(None)/float(None) (invalid_input_type): a null never
            # silently becomes the default; an optional input's null is "not given"
            default = (f", or leave the input out for its default {short_repr(spec.default)}"
                       if spec.has_default else "")
            issues.append(value_issue(spec, None, "invalid_value", f"null is not a "
                                       f"{spec.type} value; give one{default}", "null"))
            continue
        if name not in inputs or inputs[name] is None:
            if spec.required and not spec.has_default:
                unknown = [n for n in inputs if n not in specs and n not in cls.INPUT_SPECS]
                near = difflib.get_close_matches(name, unknown, n=1, cutoff=0.6)
                hint = f" (the prompt gives {near[0]!r}: misspelt?)" if near else ""
                issues.append(Issue("missing_input", f"required input '{name}' ({spec.type}) is "
                                    f"missing{hint}", input_name=name,
                                    details={"expected_type": spec.type}))
            elif spec.is_widget or spec.has_default:
                constants[name] = spec.default
            continue
        value = inputs[name]
        if spec.dynamic is not None and is_link(value):
            issues.append(Issue("expected_constant", f"input '{name}' chooses which inputs "
                                "the node has, so it must be a constant, not a link",
                                input_name=name))
            continue
        # No widget takes a list, so it must be a link (in a subgraph, only a link-shaped one)
        if isinstance(value, list | tuple) and (not values_ok or is_link(value)):
            key: Any = None
            if memo is not None and (values_ok or is_link(value)):  # values_ok: checked
                key = ("link", id(spec), classes.get(str(value[0])), value[1])
                if key in memo:
                    links[name] = (str(value[0]), value[1])
                    continue
            issue = _check_link(name, spec, value, classes, output_type)
            if issue:
                issues.append(issue)
            else:
                links[name] = (str(value[0]), value[1])
                if key is not None:
                    memo[key] = True  # type: ignore[index]
            continue
        if values_ok and not spec.is_widget:
            constants[name] = value
            continue
        key = _scalar_key(spec, value) if memo is not None else None
        if key is not None and key in memo:  # type: ignore[operator]
            constants[name] = memo[key]  # type: ignore[index]
            continue
        coerced, issue = check_constant(spec, value, env)
        if issue:
            issues.append(issue)
        else:
            constants[name] = coerced
            if key is not None:
                memo[key] = coerced  # type: ignore[index]
    if not issues and env is not None and _checks_inputs(cls):
        for input_name, message, *severity in _own_checks(cls, constants, env,
                                                          frozenset(links)):
            if severity and severity[0] == "warning":  # reported, and the prompt still runs
                issues.append(Issue("node_warning", bounded_message(message),
                                    input_name=input_name, severity="warning"))
            else:
                issues.append(Issue("node_error", bounded_message(message),
                                    input_name=input_name))
    return issues, ValidatedNode(node_id, cls, constants, links)


_SCALARS = (str, int, bool, type(None))


def _scalar_key(spec: InputSpec, value: Any) -> tuple[Any, ...] | None:
    """A memo key for a constant: its spec (by identity: the memo lives within one
    run, while the classes do), exact type and value (floats by repr, so -0.0 and
    0.0 differ); None for values not worth remembering, or whose check reads the
    outside world (choices listed from files, which may change during a run)."""
    if callable(spec.choices):
        return None
    kind = type(value)
    if kind is float:
        return (id(spec), kind, repr(value))
    if kind in _SCALARS and not (kind is str and len(value) > 256):
        return (id(spec), kind, value)
    return None


def _own_checks(cls: type[Node], constants: dict[str, Any], env: Environment,
                linked: frozenset[str] = frozenset()) -> list[tuple[Any, ...]]:
    """The class's ``validate_inputs`` (told the linked inputs' names: see
    :func:`engine.context.linked_inputs`); a check that raises is the node's error,
    never a crash of the whole validation (a server's 500)."""
    from engine.context import checking_inputs

    try:
        with checking_inputs(linked):
            return list(cls.validate_inputs(constants, env))
    except Exception as exc:
        return [(None, f"{cls.TYPE}'s input check failed: {type(exc).__name__}: {exc}")]


def _checks_inputs(cls: type[Node]) -> bool:
    """Whether the class has its own ``validate_inputs`` (the base one finds nothing)."""
    return getattr(cls.validate_inputs, "__func__", None) is not _BASE_VALIDATE


_BASE_VALIDATE = Node.validate_inputs.__func__  # type: ignore[attr-defined]


def linked_spec(cls: type[Node], name: str, constants: Mapping[str, Any] | None = None
                ) -> InputSpec | None:
    """The spec of ``cls``'s input ``name`` as linked: declared, or one the class takes
    undeclared (:meth:`engine.node.Node.undeclared_input`); None if neither. An input
    of a DynamicCombo option is the chosen option's (by ``constants``, the node's
    constant inputs): options may bound a shared input differently."""
    spec = cls.INPUT_SPECS.get(name)
    if spec is None:
        return cls.undeclared_input(name, True)
    if spec.parent is not None and constants is not None:
        option = chosen_option(cls.INPUT_SPECS[spec.parent], constants.get(spec.parent))
        for sub in option.inputs if option is not None else ():
            if sub.name == name:
                return sub
    return spec


def _check_link(name: str, spec: InputSpec, value: Any,
                classes: Mapping[str, type[Node]],
                output_type: OutputType | None = None) -> Issue | None:
    if not is_link(value):
        return Issue("bad_link", f"input '{name}': malformed link {value!r}; expected "
                     "[node_id, output_index]", input_name=name)
    src_id, index = str(value[0]), value[1]
    src = classes.get(src_id)
    if src is None:
        return Issue("bad_link", f"input '{name}' links to node {src_id!r}, which does not exist "
                     "or is invalid", input_name=name, details={"source": src_id})
    if src.EXTRA_OUTPUTS and index >= len(src.OUTPUTS):
        return None  # an output the node adds per workflow: any type, as ComfyUI's "*"
    if not 0 <= index < len(src.OUTPUTS):
        return Issue("bad_link", f"input '{name}' links to output {index} of node {src_id} "
                     f"({src.TYPE}), which has {len(src.OUTPUTS)} output(s)", input_name=name,
                     details={"source": src_id, "index": index})
    output = src.OUTPUTS[index]
    out_type = output_type(src_id, index) if output.match and output_type else output.type
    if not types_match(out_type, spec.type) and not (
            spec.also_links and types_match(out_type, spec.also_links)):
        return Issue("type_mismatch", f"input '{name}' expects {spec.type} but node {src_id} "
                     f"({src.TYPE}) output {index} is {out_type}", input_name=name,
                     details={"expected_type": spec.type, "received_type": out_type,
                              "source": src_id, "index": index})
    return None


def _shape(registry: NodeRegistry, type_id: Any) -> NodeShape | None:
    cls = registry.get(type_id) if isinstance(type_id, str) else None
    return node_shape(cls) if cls is not None else None


def _ancestors_and_self(graph: nx.DiGraph, roots: list[str]) -> list[str]:
    seen = _reached(graph.predecessors, set(roots))
    return [n for n in graph.nodes if n in seen]


def _reached(neighbours: Callable[[str], Iterable[str]], start: set[str]) -> set[str]:
    """``start`` and every node reached from it through ``neighbours``."""
    seen = set(start)
    stack = list(start)
    while stack:
        for nxt in neighbours(stack.pop()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen




def _unknown_input_message(name: str, specs: Mapping[str, InputSpec],
                           inputs: Mapping[str, Any]) -> str:
    """``unknown input 'step' ignored``, naming a missing input it may stand for: a
    missing input takes its default, so a misspelt ``steps`` would run with 20."""
    group = name.partition(".")[0]
    grown = next((s.autogrow for s in specs.values()
                  if s.autogrow is not None and s.autogrow.group == group), None)
    if grown is not None:  # not a misspelt slot: one past the group's last
        slots = grown.slots
        return (f"unknown input {name!r} ignored: {group} has {len(slots)} slots, "
                f"{grown.slot_name(slots[0])} to {grown.slot_name(slots[-1])}")
    missing = [n for n in specs if inputs.get(n) is None]
    close = difflib.get_close_matches(name, missing, n=1, cutoff=0.6)
    if not close:
        return f"unknown input {name!r} ignored"
    spec = specs[close[0]]
    default = ("its default " + short_repr(spec.default) if spec.default is not None
               else "no value")
    return (f"unknown input {name!r} ignored; did you mean {close[0]!r}? It is missing, "
            f"so it takes {default}")



def _dependents(graph: nx.DiGraph, outputs: list[str]) -> Callable[[str], list[str]]:
    """``node_id`` → the output nodes among ``outputs`` that need it (itself included).
    With few outputs, one walk back from each serves every node asked about (a walk per
    bad node took a minute on a 250 000-node chain with 100 of them)."""
    needs: dict[str, set[str]] = {}

    def dependents(node_id: str) -> list[str]:
        if node_id not in graph:
            return []
        if len(outputs) <= 16:
            if not needs:
                needs.update({o: nx.ancestors(graph, o) | {o} for o in outputs if o in graph})
            return [o for o in outputs if node_id in needs.get(o, ())]
        reached = nx.descendants(graph, node_id) | {node_id}
        return [o for o in outputs if o in reached]

    return dependents



#: how many nodes of a cycle its error names
MAX_CYCLE_SHOWN = 12

#: what ComfyUI's front end writes into a prompt for a node's upload button
UPLOAD_BUTTONS = frozenset({"upload", "choose file to upload"})


def _has_upload(cls: type[Node]) -> bool:
    return any(spec.upload for spec in cls.INPUT_SPECS.values())
