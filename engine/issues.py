"""What validation finds: :class:`Issue`, the error that carries them, and their
renderings (one line each for people, ComfyUI's ``node_errors`` for its clients)."""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.node import INT64_MIN


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

    def __post_init__(self) -> None:
        # names and ids come from the prompt: a 20 MB input name was echoed whole (in the
        # reply, twice, and in the log)
        self.message = _bounded(self.message, 40 * _SHOWN_CHARS)
        self.class_type = _bounded(self.class_type, 2 * _SHOWN_CHARS)
        self.input_name = _bounded(self.input_name, 2 * _SHOWN_CHARS)
        self.node_id = _bounded(self.node_id, 3 * _SHOWN_CHARS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bounded(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class PromptValidationError(ValueError):
    """The prompt has errors; ``issues`` lists every one. ``dependent_outputs(node_id)``
    names the output nodes that need a node (ComfyUI's ``dependent_outputs``)."""

    def __init__(self, issues: list[Issue],
                 dependent_outputs: Callable[[str], list[str]] | None = None):
        self.issues = issues
        self.dependent_outputs = dependent_outputs or (lambda node_id: [])
        errors = [i for i in issues if i.severity == "error"]
        super().__init__(f"{len(errors)} validation error(s): " + "; ".join(
            describe_issue(i) for i in errors[:5]))


def describe_issue(issue: Issue) -> str:
    where = f"node {issue.node_id}" if issue.node_id else "prompt"
    hint = issue.details.get("hint") if isinstance(issue.details, dict) else None
    return f"[{issue.kind}] {where}: {issue.message}" + (f"; {hint}" if hint else "")


_SHOWN_CHARS = 100  # of a received value in messages and details: prompts can be huge


_REPR = reprlib.Repr()  # Python 3.11's takes no keyword arguments
_REPR.maxstring = _REPR.maxother = _SHOWN_CHARS
_REPR.maxlong = 40


def short_repr(value: Any) -> str:
    """A bounded repr: a 20 MB string or a 10**400 int must not end up in every message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<{value.bit_length()}-bit integer>"  # repr of >4300 digits even raises
    try:
        text = _REPR.repr(value)  # slices containers and strings before repr'ing them
    except Exception:  # a nested huge int, or an object whose __repr__ fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 2 * _SHOWN_CHARS else text[:2 * _SHOWN_CHARS] + "..."


def jsonable(value: Any) -> Any:
    """The received value for ``details``: strict-JSON-safe and bounded."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # "inf"/"nan" as text
    if isinstance(value, int):
        return value if INT64_MIN <= value <= 2**64 else short_repr(value)
    if isinstance(value, str) and len(value) <= _SHOWN_CHARS:
        return value
    return short_repr(value)


def describe_issues(issues: list[Issue]) -> str:
    """Human-readable lines, one per issue, with its kind (the command line's)."""
    return "\n".join(describe_issue(i) for i in issues)


def plain_issues(issues: list[Issue]) -> str:
    """Lines for a person in an app: "node 3: message", or the message alone for the whole
    prompt; the kinds stay machine-readable beside them (``extra_info.issues``)."""
    return "\n".join(f"node {i.node_id}: {i.message}" if i.node_id else i.message
                     for i in issues)


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
            # ComfyUI's: the input's type and its options (["INT", {"min": 1, ...}])
            extra["input_config"] = [issue.details.get("input_type"),
                                     {k: issue.details.get(k) for k in ("min", "max")}]
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

