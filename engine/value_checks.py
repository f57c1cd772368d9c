"""Checking one constant input against its spec: type, bounds, step, finiteness, text,
choices (ComfyUI's validation of widget values, with Steerflow's messages)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from engine.environment import Environment
from engine.issues import Issue, jsonable, short_repr
from engine.node import ANY_TYPE, INT64_MAX, INT64_MIN, WIDGET_TYPES, InputSpec
from engine.paths import lone_surrogate

_RANGE_ERRORS = {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}
_INT64_MESSAGE = "must fit in a 64-bit signed integer (-2**63 to 2**63-1)"


def check_constant(spec: InputSpec, value: Any, env: Environment | None
                   ) -> tuple[Any, Issue | None]:
    """Validate (and coerce) one constant; returns the value or an issue."""
    if isinstance(value, dict) and "__value__" in value:
        # ComfyUI's front end wraps a widget's list value ({"__value__": [...]}), a bare
        # list meaning a link; its server unwraps it
        value = value["__value__"]
    if spec.type == ANY_TYPE or (spec.pass_constants and not spec.is_widget):
        return value, None
    if spec.type == "STRING" and isinstance(value, int | float):
        value = str(value)  # as ComfyUI's str(val): a number typed into a text widget
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
            return value, value_issue(spec, value, "out_of_range", _INT64_MESSAGE, "int64")
        if spec.type == "FLOAT" and not spec.allow_nonfinite and _nonfinite(value):
            # "nan" fails a bound first (NaN <= max is false): say what is wrong with it
            return value, value_issue(spec, value, "invalid_value",
                                       "must be a finite number", "finite_number")
        kind = "out_of_range" if err["type"] in _RANGE_ERRORS else "invalid_value"
        return value, value_issue(spec, value, kind, err["msg"], err["type"])
    if spec.type == "INT":
        issue = _int_issue(spec, value, coerced)
        if issue is not None:
            return value, issue
    elif spec.type == "FLOAT" and not spec.allow_nonfinite and not math.isfinite(coerced):
        return value, value_issue(spec, value, "invalid_value",
                                   "must be a finite number", "finite_number")
    elif isinstance(coerced, str) and (bad := lone_surrogate(coerced)) is not None:
        # JSON's "\ud800" decodes to text no tokenizer or file name can take
        return value, value_issue(spec, value, "invalid_value",
                                   f"holds a lone UTF-16 surrogate (U+{ord(coerced[bad]):04X} "
                                   f"at character {bad}): not valid Unicode text",
                                   "unicode_text")
    looked_in: list[str] = []
    choices = spec.resolve_choices(
        _ListingRecorder(env, looked_in) if env is not None and callable(spec.choices) else env)
    if choices is not None and coerced not in choices and not _also_accepted(spec, coerced, env):
        shown = ", ".join(map(repr, choices[:10])) + (" ..." if len(choices) > 10 else "")
        where = f" (looked in {' and '.join(looked_in)})" if looked_in else ""
        details = {"received": jsonable(value), "choices": choices[:100]}
        if looked_in:
            details["folders"] = looked_in
            if env is not None:  # where, on this machine, the file would go (the CLI says so)
                details["hint"] = f"to use it, put the file in {_absolute(env, looked_in[0])}"
        return value, Issue("not_in_choices",
                            f"input '{spec.name}': {short_repr(coerced)} is not one of "
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


def _absolute(env: Environment, folder: str) -> str:
    """``models/vae/`` as the folder it is here (``--models-dir`` and ``--base-dir`` applied)."""
    role, _, sub = folder.strip("/").partition("/")
    try:
        return str(env.folder(role, *[p for p in sub.split("/") if p]))
    except (KeyError, ValueError, OSError):
        return folder


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
        return value_issue(spec, value, "out_of_range", _INT64_MESSAGE, "int64")
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
    return value_issue(spec, value, "invalid_value", f"must be {grid} (nearest: "
                        f"{coerced - off} or {coerced - off + step})", "step")


def value_issue(spec: InputSpec, value: Any, kind: str, message: str, reason: str) -> Issue:
    details = {"received": jsonable(value), "min": spec.min, "max": spec.max, "reason": reason,
               "input_type": spec.type}
    if reason == "step":
        details["step"] = spec.step
    return Issue(kind, f"input '{spec.name}': {message} (got {short_repr(value)})",
                 input_name=spec.name, details=details)

