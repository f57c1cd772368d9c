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
import math
import reprlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx
from pydantic import ValidationError

from engine.dynamic import (
    OutputType,
    OutputTypes,
    active_specs,
    chosen_option,
    has_dynamic,
    ignored_message,
)
from engine.environment import Environment
from engine.node import ANY_TYPE, INT64_MAX, INT64_MIN, WIDGET_TYPES, InputSpec, Node
from engine.outputs import bounded_message
from engine.registry import NodeRegistry
from engine.workflow import NodeShape, is_link, resolve_modes, types_match

_RANGE_ERRORS = {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}
_INT64_MESSAGE = "must fit in a 64-bit signed integer (-2**63 to 2**63-1)"
GC_PAUSE_NODES = 10_000  # prompts this big are validated with the cyclic GC paused


@dataclass
class Issue:
    """One problem found in a prompt."""

    kind: str
    message: str
    node_id: str | None = None
    class_type: str | None = None
    input_name: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    severity: str = "error"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PromptValidationError(ValueError):
    """The prompt has errors; ``issues`` lists every one. ``dependent_outputs(node_id)``
    names the output nodes that need a node (ComfyUI's ``dependent_outputs``)."""

    def __init__(self, issues: list[Issue],
                 dependent_outputs: Callable[[str], list[str]] | None = None):
        self.issues = issues
        self.dependent_outputs = dependent_outputs or (lambda node_id: [])
        errors = [i for i in issues if i.severity == "error"]
        super().__init__(f"{len(errors)} validation error(s): " + "; ".join(
            _describe(i) for i in errors[:5]))


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


def check_constant(spec: InputSpec, value: Any, env: Environment | None
                   ) -> tuple[Any, Issue | None]:
    """Validate (and coerce) one constant; returns the value or an issue."""
    if spec.type == ANY_TYPE or (spec.pass_constants and not spec.is_widget):
        return value, None
    # a forced socket of a widget type (forceInput, an Autogrow slot of numbers) takes a
    # constant too, checked as the widget's: ComfyUI's validation ignores forceInput
    takes_constant = spec.is_widget or (spec.force_input and spec.type in WIDGET_TYPES)
    if not takes_constant or spec.adapter is None:
        return value, Issue("expected_link",
                            f"input '{spec.name}' must be linked to a {spec.type} output",
                            input_name=spec.name, details={"expected_type": spec.type})
    try:
        coerced = spec.adapter.validate_python(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "int_parsing_size":  # pydantic's words for a float beyond 64 bits
            return value, _value_issue(spec, value, "out_of_range", _INT64_MESSAGE, "int64")
        if spec.type == "FLOAT" and not spec.allow_nonfinite and _nonfinite(value):
            # "nan" fails a bound first (NaN <= max is false): say what is wrong with it
            return value, _value_issue(spec, value, "invalid_value",
                                       "must be a finite number", "finite_number")
        kind = "out_of_range" if err["type"] in _RANGE_ERRORS else "invalid_value"
        return value, _value_issue(spec, value, kind, err["msg"], err["type"])
    if spec.type == "INT":
        issue = _int_issue(spec, value, coerced)
        if issue is not None:
            return value, issue
    elif spec.type == "FLOAT" and not spec.allow_nonfinite and not math.isfinite(coerced):
        return value, _value_issue(spec, value, "invalid_value",
                                   "must be a finite number", "finite_number")
    elif isinstance(coerced, str) and (bad := _lone_surrogate(coerced)) is not None:
        # JSON's "\ud800" decodes to text no tokenizer or file name can take
        return value, _value_issue(spec, value, "invalid_value",
                                   f"holds a lone UTF-16 surrogate (U+{ord(coerced[bad]):04X} "
                                   f"at character {bad}): not valid Unicode text",
                                   "unicode_text")
    looked_in: list[str] = []
    choices = spec.resolve_choices(
        _ListingRecorder(env, looked_in) if env is not None and callable(spec.choices) else env)
    if choices is not None and coerced not in choices and not _also_accepted(spec, coerced, env):
        shown = ", ".join(map(repr, choices[:10])) + (" ..." if len(choices) > 10 else "")
        where = f" (looked in {' and '.join(looked_in)})" if looked_in else ""
        details = {"received": _jsonable(value), "choices": choices[:100]}
        if looked_in:
            details["folders"] = looked_in
        return value, Issue("not_in_choices",
                            f"input '{spec.name}': {_short(coerced)} is not one of "
                            f"[{shown}]{where}",
                            input_name=spec.name, details=details)
    return coerced, None


def _also_accepted(spec: InputSpec, value: Any, env: Environment | None) -> bool:
    """``spec.also_accept``, where a name the file system refuses (too long, too deep)
    is simply not accepted."""
    if spec.also_accept is None or env is None:
        return False
    try:
        return bool(spec.also_accept(value, env))
    except (OSError, ValueError):
        return False


def _nonfinite(value: Any) -> bool:
    """True for NaN or an infinity, as a number or as the text pydantic reads as one."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        try:
            return not math.isfinite(float(value))
        except ValueError:
            return False
    return False


def _lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in ``text``, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


class _ListingRecorder:
    """The environment, noting which folders a choices function lists (e.g. a loader's
    ``models/checkpoints/``) so that "not one of" can say where it looked."""

    def __init__(self, env: Environment, looked_in: list[str]):
        self._env, self._looked_in = env, looked_in

    def list_files(self, role: str, subfolder: str = "", **kwargs: Any) -> list[str]:
        folder = "/".join(p for p in (role, subfolder.strip("/")) if p) + "/"
        if folder not in self._looked_in:
            self._looked_in.append(folder)
        return self._env.list_files(role, subfolder, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def _int_issue(spec: InputSpec, value: Any, coerced: int) -> Issue | None:
    """The limits pydantic does not know: 64-bit range and ``step``."""
    # A declared bound wins (seeds declare max=2**64-1); an undeclared side is 64-bit.
    if not spec.wide and ((spec.min is None and coerced < INT64_MIN)
                          or (spec.max is None and coerced > INT64_MAX)):
        return _value_issue(spec, value, "out_of_range", _INT64_MESSAGE, "int64")
    step, base = spec.step, spec.min if spec.min is not None else 0
    # Only a whole step on a whole base means anything for an integer (0.5 allows all).
    if step is None or step <= 1 or not float(step).is_integer() \
            or not float(base).is_integer():
        return None
    step, base = int(step), int(base)  # exact: floats lose precision beyond 2**53
    off = (coerced - base) % step
    if off == 0:
        return None
    grid = f"{base} + k*{step}" if base else f"a multiple of {step}"
    return _value_issue(spec, value, "invalid_value", f"must be {grid} (nearest: "
                        f"{coerced - off} or {coerced - off + step})", "step")


def _value_issue(spec: InputSpec, value: Any, kind: str, message: str, reason: str) -> Issue:
    details = {"received": _jsonable(value), "min": spec.min, "max": spec.max, "reason": reason}
    if reason == "step":
        details["step"] = spec.step
    return Issue(kind, f"input '{spec.name}': {message} (got {_short(value)})",
                 input_name=spec.name, details=details)


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
        raise PromptValidationError([*issues, Issue(
            "no_output_node", "every node is muted or bypassed, so nothing would run")])
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
    for n in missing_out:
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
        issues.append(Issue("no_output_node", "the prompt has no output node (e.g. Save Image), "
                            "so nothing would run" if outputs is None or len(outputs) else
                            "no output node was asked for (the list of outputs to run, "
                            "partial_execution_targets, is empty), so nothing would run"))
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
            default = (f", or leave the input out for its default {_short(spec.default)}"
                       if spec.has_default else "")
            issues.append(_value_issue(spec, None, "invalid_value", f"null is not a "
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


def _describe(issue: Issue) -> str:
    where = f"node {issue.node_id}" if issue.node_id else "prompt"
    return f"[{issue.kind}] {where}: {issue.message}"


_SHOWN_CHARS = 100  # of a received value in messages and details: prompts can be huge


_REPR = reprlib.Repr()  # Python 3.11's takes no keyword arguments
_REPR.maxstring = _REPR.maxother = _SHOWN_CHARS
_REPR.maxlong = 40


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
    default = ("its default " + _short(spec.default) if spec.default is not None
               else "no value")
    return (f"unknown input {name!r} ignored; did you mean {close[0]!r}? It is missing, "
            f"so it takes {default}")


def _short(value: Any) -> str:
    """A bounded repr: a 20 MB string or a 10**400 int must not end up in every message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<{value.bit_length()}-bit integer>"  # repr of >4300 digits even raises
    try:
        text = _REPR.repr(value)  # slices containers and strings before repr'ing them
    except Exception:  # a nested huge int, or an object whose __repr__ fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 2 * _SHOWN_CHARS else text[:2 * _SHOWN_CHARS] + "..."


def _jsonable(value: Any) -> Any:
    """The received value for ``details``: strict-JSON-safe and bounded."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # "inf"/"nan" as text
    if isinstance(value, int):
        return value if INT64_MIN <= value <= 2**64 else _short(value)
    if isinstance(value, str) and len(value) <= _SHOWN_CHARS:
        return value
    return _short(value)


def describe_issues(issues: list[Issue]) -> str:
    """Human-readable lines, one per issue."""
    return "\n".join(_describe(i) for i in issues)


def _dependents(graph: nx.DiGraph, outputs: list[str]) -> Callable[[str], list[str]]:
    """``node_id`` → the output nodes among ``outputs`` that need it (itself included)."""
    def dependents(node_id: str) -> list[str]:
        if node_id not in graph:
            return []
        reached = nx.descendants(graph, node_id) | {node_id}
        return [o for o in outputs if o in reached]

    return dependents


def to_node_errors(issues: list[Issue],
                   dependent_outputs: Callable[[str], list[str]] | None = None
                   ) -> dict[str, Any]:
    """ComfyUI's ``node_errors`` shape, keyed by node id; ``dependent_outputs`` (from the
    :class:`PromptValidationError`) fills each entry's outputs that need the node."""
    out: dict[str, Any] = {}
    for issue in issues:
        if issue.severity != "error" or issue.node_id is None:
            continue
        entry = out.get(issue.node_id)
        if entry is None:
            entry = out[issue.node_id] = {
                "errors": [], "class_type": issue.class_type,
                "dependent_outputs": (dependent_outputs(issue.node_id)
                                      if dependent_outputs is not None else [])}
        kind, message = comfy_error_type(issue)
        extra = {"input_name": issue.input_name, "steerflow_kind": issue.kind, **issue.details}
        if "received" in issue.details:
            extra["received_value"] = issue.details["received"]
        if issue.kind == "out_of_range":
            extra["input_config"] = [None, {k: issue.details.get(k) for k in ("min", "max")}]
        entry["errors"].append({
            "type": kind,
            "message": message,
            "details": issue.message,
            "extra_info": extra,
        })
    return out


#: issue kind -> (ComfyUI's error type, its message), which ComfyUI's front end knows
_COMFY_ERRORS = {
    "missing_input": ("required_input_missing", "Required input is missing"),
    "bad_link": ("bad_linked_input", "Bad linked input"),
    "expected_link": ("bad_linked_input", "Bad linked input"),
    "expected_constant": ("invalid_input_type", "Invalid input type"),
    "type_mismatch": ("return_type_mismatch", "Return type mismatch between linked nodes"),
    "invalid_value": ("invalid_input_type", "Failed to convert an input value"),
    "not_in_choices": ("value_not_in_list", "Value not in list"),
    "cycle": ("dependency_cycle", "Dependency cycle detected"),
    "node_error": ("custom_validation_failed", "Custom validation failed for node"),
    "unknown_input": ("invalid_input_type", "Invalid input type"),
}


def comfy_error_type(issue: Issue) -> tuple[str, str]:
    """ComfyUI's ``(type, message)`` for a node error; Steerflow's own message is its
    ``details`` and its kind ``extra_info.steerflow_kind``."""
    if issue.kind == "out_of_range":
        received, low = issue.details.get("received"), issue.details.get("min")
        below = isinstance(received, int | float) and low is not None and received < low
        return (("value_smaller_than_min", "Value smaller than min") if below
                else ("value_bigger_than_max", "Value bigger than max"))
    return _COMFY_ERRORS.get(issue.kind, ("custom_validation_failed",
                                          "Custom validation failed for node"))


#: how many nodes of a cycle its error names
MAX_CYCLE_SHOWN = 12

#: what ComfyUI's front end writes into a prompt for a node's upload button
UPLOAD_BUTTONS = frozenset({"upload", "choose file to upload"})


def _has_upload(cls: type[Node]) -> bool:
    return any(spec.upload for spec in cls.INPUT_SPECS.values())
