"""Text utilities: ComfyUI's string nodes (``comfy_extras/nodes_string.py``) with its type
ids, input names, defaults and outputs: Substring, Length, Case Converter, Trim, Replace,
Contains, Compare, Regex Match, Regex Extract and Regex Replace (Concatenate is in
:mod:`nodes.primitives`).

Every string in or out is at most :data:`MAX_STRING_CHARS` characters. Patterns come from
users, so they run on the ``regex`` engine (a superset of Python's ``re`` syntax) under
:data:`REGEX_TIMEOUT_S` of matching time, at most :data:`MAX_PATTERN_CHARS` long, and a
pattern that would compile into more than :data:`MAX_PATTERN_UNITS` elements (``regex``
unrolls counted repeats: ``(?:a{1000}){1000}`` is a million) is refused before it is
compiled. Where ComfyUI quietly answers False or "" for an invalid pattern, these nodes
raise a ValueError that names the input to fix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import regex

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.primitives import MAX_STRING_CHARS, check_text

MAX_PATTERN_CHARS = 10_000
MAX_PATTERN_UNITS = 10_000
MAX_PATTERN_DEPTH = 100
REGEX_TIMEOUT_S = 3.0
"""Matching time a pattern may take on one string (the regex engine's own clock)."""

CASE_MODES = ("UPPERCASE", "lowercase", "Capitalize", "Title Case")
TRIM_MODES = ("Both", "Left", "Right")
COMPARE_MODES = ("Starts With", "Ends With", "Equal")
EXTRACT_MODES = ("First Match", "All Matches", "First Group", "All Groups")
MAX_GROUP_INDEX = 100
MAX_REPLACE_COUNT = 100
_HUGE = 10**12  # "more than any limit": keeps the estimate's integers small

_CASES: dict[str, Callable[[str], str]] = {
    "UPPERCASE": str.upper, "lowercase": str.lower, "Capitalize": str.capitalize,
    "Title Case": str.title}
_TRIMS: dict[str, Callable[[str], str]] = {"Both": str.strip, "Left": str.lstrip,
                                           "Right": str.rstrip}
_COMPARES: dict[str, Callable[[str, str], bool]] = {
    "Starts With": str.startswith, "Ends With": str.endswith, "Equal": str.__eq__}


def _check_size(node: str, size: int) -> None:
    if size > MAX_STRING_CHARS:
        raise ValueError(f"{node}: the result would be {size} characters long; the most is "
                         f"{MAX_STRING_CHARS}")


# --- plain string nodes --------------------------------------------------------------------

class StringSubstring(Node):
    """The part of ``string`` from ``start`` up to (not including) ``end``, as Python
    slices it: counted in characters from 0, negative values count from the end, and
    positions past either end are clipped (an empty result, not an error)."""

    TYPE = "StringSubstring"
    DISPLAY_NAME = "Substring"
    CATEGORY = "utils/string"
    OUTPUTS = (Output("STRING"),)

    string: str = Input("", multiline=True)
    start: int = Input(0)
    end: int = Input(0)

    def execute(self, ctx: ExecutionContext) -> tuple[str]:
        return (check_text(self.TYPE, "string", self.string)[self.start:self.end],)


class StringLength(Node):
    """How many characters ``string`` has (Unicode code points: "é" is 1, an emoji 1)."""

    TYPE = "StringLength"
    DISPLAY_NAME = "Length"
    CATEGORY = "utils/string"
    OUTPUTS = (Output("INT", "length"),)

    string: str = Input("", multiline=True)

    def execute(self, ctx: ExecutionContext) -> tuple[int]:
        return (len(check_text(self.TYPE, "string", self.string)),)


class CaseConverter(Node):
    """``string`` in UPPERCASE, lowercase, Capitalize (first letter only) or Title Case
    (each word's first letter)."""

    TYPE = "CaseConverter"
    DISPLAY_NAME = "Case Converter"
    CATEGORY = "utils/string"
    OUTPUTS = (Output("STRING"),)

    string: str = Input("", multiline=True)
    mode: str = Input(CASE_MODES[0], choices=CASE_MODES)

    def execute(self, ctx: ExecutionContext) -> tuple[str]:
        # at most 3 characters per character ("ß".upper() == "SS"): bounded by the input's
        return (_CASES[self.mode](check_text(self.TYPE, "string", self.string)),)


class StringTrim(Node):
    """``string`` without the whitespace (spaces, tabs, newlines) at both ends, or only the
    left or right one."""

    TYPE = "StringTrim"
    DISPLAY_NAME = "Trim"
    CATEGORY = "utils/string"
    OUTPUTS = (Output("STRING"),)

    string: str = Input("", multiline=True)
    mode: str = Input(TRIM_MODES[0], choices=TRIM_MODES)

    def execute(self, ctx: ExecutionContext) -> tuple[str]:
        return (_TRIMS[self.mode](check_text(self.TYPE, "string", self.string)),)


class StringReplace(Node):
    """``string`` with every occurrence of ``find`` replaced by ``replace`` (plain text, not
    a pattern: see Regex Replace). An empty ``find`` inserts ``replace`` between every two
    characters and at both ends, as Python does."""

    TYPE = "StringReplace"
    DISPLAY_NAME = "Replace"
    CATEGORY = "utils/string"
    OUTPUTS = (Output("STRING"),)

    string: str = Input("", multiline=True)
    find: str = Input("", multiline=True)
    replace: str = Input("", multiline=True)

    def execute(self, ctx: ExecutionContext) -> tuple[str]:
        string = check_text(self.TYPE, "string", self.string)
        find = check_text(self.TYPE, "find", self.find)
        replace = check_text(self.TYPE, "replace", self.replace)
        count = string.count(find)  # len(string) + 1 for an empty find
        _check_size(self.TYPE, len(string) + count * (len(replace) - len(find)))
        return (string.replace(find, replace),)


class StringContains(Node):
    """Whether ``substring`` occurs in ``string`` (an empty substring always does)."""

    TYPE = "StringContains"
    DISPLAY_NAME = "Contains"
    CATEGORY = "utils/string"
    OUTPUTS = (Output("BOOLEAN", "contains"),)

    string: str = Input("", multiline=True)
    substring: str = Input("", multiline=True)
    case_sensitive: bool = Input(True)

    def execute(self, ctx: ExecutionContext) -> tuple[bool]:
        string = check_text(self.TYPE, "string", self.string)
        substring = check_text(self.TYPE, "substring", self.substring)
        if not self.case_sensitive:
            string, substring = string.lower(), substring.lower()
        return (substring in string,)


class StringCompare(Node):
    """Whether ``string_a`` starts with, ends with, or equals ``string_b``."""

    TYPE = "StringCompare"
    DISPLAY_NAME = "Compare"
    CATEGORY = "utils/string"
    OUTPUTS = (Output("BOOLEAN"),)

    string_a: str = Input("", multiline=True)
    string_b: str = Input("", multiline=True)
    mode: str = Input(COMPARE_MODES[0], choices=COMPARE_MODES)
    case_sensitive: bool = Input(True)

    def execute(self, ctx: ExecutionContext) -> tuple[bool]:
        a = check_text(self.TYPE, "string_a", self.string_a)
        b = check_text(self.TYPE, "string_b", self.string_b)
        if not self.case_sensitive:
            a, b = a.lower(), b.lower()
        return (_COMPARES[self.mode](a, b),)


# --- regular expressions -------------------------------------------------------------------

def _escape_end(pattern: str, i: int) -> int:
    """The index after the escape starting at ``pattern[i] == "\\"``: ``\\p{L}``,
    ``\\N{name}``, ``\\x{263a}``, ``\\g<1>`` take their braces along."""
    j = i + 2
    if j - 1 < len(pattern) and pattern[j - 1] in "pPNxuUgk" and j < len(pattern) \
            and pattern[j] in "{<":
        close = pattern.find("}" if pattern[j] == "{" else ">", j)
        return len(pattern) if close < 0 else close + 1
    return j


def _class_end(pattern: str, i: int) -> int:
    """The index after the character set opening at ``pattern[i] == "["`` (nested sets
    and escapes included; a ``]`` first in the set is a member)."""
    depth, j = 1, i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern):
        c = pattern[j]
        if c == "\\":
            j = _escape_end(pattern, j)
            continue
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return len(pattern)


_COUNTED = regex.compile(r"\{(\d*)(?:,(\d*))?\}")
_NAMED_GROUP = regex.compile(r"\(\?P?<(?![=!])[^>]*>")


def pattern_units(pattern: str) -> int:
    """An upper estimate of how many elements ``regex`` compiles ``pattern`` into: every
    atom and group is 1 (a group's ``?:``-style marks count as atoms: an over-estimate),
    and a counted repeat multiplies what it repeats by its minimum
    (``regex`` unrolls ``x{n,m}`` into n copies; ``*``, ``+``, ``?`` and ``{0,m}`` add
    nothing). Raises ValueError when groups nest deeper than :data:`MAX_PATTERN_DEPTH`
    (the compiler recurses on them)."""
    stack = [[0, 0]]  # per open group: [its total, the last atom's size]
    i, n = 0, len(pattern)
    while i < n:
        c, frame = pattern[i], stack[-1]
        if c == "(":
            if pattern.startswith("(?#", i):  # a comment
                close = pattern.find(")", i)
                i = n if close < 0 else close + 1
                continue
            if len(stack) > MAX_PATTERN_DEPTH:
                raise ValueError(f"nests groups more than {MAX_PATTERN_DEPTH} deep")
            stack.append([1, 0])
            name = _NAMED_GROUP.match(pattern, i)  # (?P<name> / (?<name>: not atoms
            i = name.end() if name else i + 1
            continue
        if c == ")" and len(stack) > 1:
            total = stack.pop()[0]
            stack[-1][0] = min(stack[-1][0] + total, _HUGE)
            stack[-1][1] = total
            i += 1
            continue
        if c == "{" and (m := _COUNTED.match(pattern, i)) and (m[1] or m[2]):
            low = m[1] or "0"
            times = max(int(low) if len(low) <= 9 else _HUGE, 1)
            frame[0] = min(frame[0] + frame[1] * (times - 1), _HUGE)
            frame[1] = min(frame[1] * times, _HUGE)
            i = m.end()
            continue
        if c in "*+?":  # a repeat (or its lazy / possessive mark): no new atom
            i += 1
            continue
        if c == "|":
            frame[1] = 0
            i += 1
            continue
        i = _escape_end(pattern, i) if c == "\\" else _class_end(pattern, i) if c == "[" \
            else i + 1
        frame[0] = min(frame[0] + 1, _HUGE)
        frame[1] = 1
    while len(stack) > 1:  # an unclosed group: the compiler reports it
        total = stack.pop()[0]
        stack[-1][0] = min(stack[-1][0] + total, _HUGE)
    return stack[0][0]


def regex_flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    return ((regex.IGNORECASE if case_insensitive else 0)
            | (regex.MULTILINE if multiline else 0) | (regex.DOTALL if dotall else 0))


def pattern_problem(pattern: Any) -> str | None:
    """Why ``pattern`` cannot be used (too long, too big once compiled, not valid), in
    words that follow "regex_pattern"; None when it compiles."""
    if not isinstance(pattern, str):
        return f"must be a string, got {type(pattern).__name__}"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"is {len(pattern)} characters long; the most is {MAX_PATTERN_CHARS}"
    try:
        units = pattern_units(pattern)
    except ValueError as exc:
        return str(exc)
    if units > MAX_PATTERN_UNITS:
        shown = "over 10**12" if units >= _HUGE else str(units)
        return (f"would compile into {shown} elements (counted repeats such as {{1000}} "
                f"multiply what they repeat); the most is {MAX_PATTERN_UNITS}: use smaller "
                "counts, or a range such as {0,1000}, which is not unrolled")
    try:
        _compile(pattern, 0)
    except regex.error as exc:
        return f"is not a valid regular expression: {exc}"
    except RecursionError:
        return "nests too deeply to compile"
    return None


@functools.lru_cache(maxsize=64)
def _compile(pattern: str, flags: int) -> regex.Pattern[str]:
    # regex's own cache keeps 500 patterns; ours keeps 64 (each at most a few MB)
    return regex.compile(pattern, flags, cache_pattern=False)


def compile_pattern(node: str, pattern: Any, flags: int) -> regex.Pattern[str]:
    """``pattern`` compiled with ``flags``, or a ValueError naming ``regex_pattern``."""
    problem = pattern_problem(pattern)
    if problem is None:
        try:
            return _compile(pattern, flags)
        except regex.error as exc:  # a flag made it invalid
            problem = f"is not a valid regular expression: {exc}"
    raise ValueError(f"{node}: regex_pattern {problem}")


@contextmanager
def time_limited(node: str) -> Iterator[None]:
    """Turn the regex engine's timeout into a ValueError that says what to change."""
    try:
        yield
    except TimeoutError:
        raise ValueError(
            f"{node}: regex_pattern took more than {REGEX_TIMEOUT_S:g} s on this string "
            "and was stopped; it likely backtracks catastrophically (nested repeats such as "
            "(a+)+ or (a|aa)+): simplify it, or make the repeats possessive (a++) or atomic "
            "((?>...))") from None


def _template_problem(pattern: regex.Pattern[str], template: str) -> str | None:
    """Why ``template`` is not a replacement for ``pattern`` (a group it lacks, a bad
    escape), checked on a match with the same groups; None when it is one."""
    names = {index: name for name, index in pattern.groupindex.items()}
    shape = "".join(f"(?P<{names[k]}>)" if k in names else "()"
                    for k in range(1, pattern.groups + 1))
    try:
        _compile(shape, 0).match("").expand(template)  # type: ignore[union-attr]
    except (regex.error, IndexError) as exc:
        return f"is not a valid replacement: {exc}"
    return None


class _RegexNode(Node):
    """What the regex nodes share: a constant ``regex_pattern`` is checked before the run."""

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        pattern = inputs.get("regex_pattern")
        if pattern is None:  # linked: checked when it runs
            return []
        problem = pattern_problem(pattern)
        if problem is not None:
            return [("regex_pattern", f"regex_pattern {problem}")]
        template = inputs.get("replace")
        if isinstance(template, str) and len(template) <= MAX_STRING_CHARS:
            problem = _template_problem(_compile(pattern, 0), template)
            if problem is not None:
                return [("replace", f"replace {problem}")]
        return []

    def _pattern(self) -> regex.Pattern[str]:
        flags = regex_flags(self.case_insensitive, self.multiline,  # type: ignore[attr-defined]
                            self.dotall)  # type: ignore[attr-defined]
        return compile_pattern(self.TYPE, self.regex_pattern, flags)  # type: ignore[attr-defined]


class RegexMatch(_RegexNode):
    """Whether ``regex_pattern`` (a regular expression) matches anywhere in ``string``.

    ``case_insensitive``: letters match either case; ``multiline``: ^ and $ match at
    every line; ``dotall``: . matches newlines too. An invalid pattern is an error."""

    TYPE = "RegexMatch"
    DISPLAY_NAME = "Regex Match"
    CATEGORY = "utils/string"
    OUTPUTS = (Output("BOOLEAN", "matches"),)

    string: str = Input("", multiline=True)
    regex_pattern: str = Input("", multiline=True)
    case_insensitive: bool = Input(True)
    multiline: bool = Input(False)
    dotall: bool = Input(False)

    def execute(self, ctx: ExecutionContext) -> tuple[bool]:
        string = check_text(self.TYPE, "string", self.string)
        pattern = self._pattern()
        with time_limited(self.TYPE):
            return (pattern.search(string, timeout=REGEX_TIMEOUT_S) is not None,)


class RegexExtract(_RegexNode):
    """Text that ``regex_pattern`` finds in ``string``; several results one per line.

    First Match: the first match; All Matches: every match (or, when the pattern has
    groups, every match's first group); First Group: group ``group_index`` of the first
    match (0 is the whole match); All Groups: that group of every match. No match, or a
    group the pattern lacks, gives ""."""

    TYPE = "RegexExtract"
    DISPLAY_NAME = "Regex Extract"
    CATEGORY = "utils/string"
    OUTPUTS = (Output("STRING"),)

    string: str = Input("", multiline=True)
    regex_pattern: str = Input("", multiline=True)
    mode: str = Input(EXTRACT_MODES[0], choices=EXTRACT_MODES)
    case_insensitive: bool = Input(True)
    multiline: bool = Input(False)
    dotall: bool = Input(False)
    group_index: int = Input(1, min=0, max=MAX_GROUP_INDEX)

    def execute(self, ctx: ExecutionContext) -> tuple[str]:
        string = check_text(self.TYPE, "string", self.string)
        pattern = self._pattern()
        with time_limited(self.TYPE):
            if self.mode in ("First Match", "First Group"):
                match = pattern.search(string, timeout=REGEX_TIMEOUT_S)
                if match is None:
                    return ("",)
                if self.mode == "First Match":
                    return (match[0],)
                if self.group_index > pattern.groups:  # a group the pattern lacks
                    return ("",)
                return (match[self.group_index] or "",)  # None: the group took no part
            return (self._join_all(pattern, string),)

    def _join_all(self, pattern: regex.Pattern[str], string: str) -> str:
        if self.mode == "All Matches":  # as re.findall: the match, or its first group
            index = min(pattern.groups, 1)
        elif pattern.groups and self.group_index <= pattern.groups:
            index = self.group_index
        else:
            return ""
        parts: list[str] = []
        size = -1
        for match in pattern.finditer(string, timeout=REGEX_TIMEOUT_S):
            part = match[index] or ""
            size += len(part) + 1
            _check_size(self.TYPE, size)  # lookahead groups can repeat the whole text
            parts.append(part)
        return "\n".join(parts)


class RegexReplace(_RegexNode):
    """``string`` with what ``regex_pattern`` matches replaced by ``replace``, which may
    name groups: ``\\1``, ``\\g<1>``, ``\\g<name>`` (``\\g<0>``: the whole match).

    ``count`` replaces only the first that many matches (0: all)."""

    TYPE = "RegexReplace"
    DISPLAY_NAME = "Regex Replace"
    CATEGORY = "utils/string"
    OUTPUTS = (Output("STRING"),)

    string: str = Input("", multiline=True)
    regex_pattern: str = Input("", multiline=True)
    replace: str = Input("", multiline=True)
    case_insensitive: bool = Input(True, optional=True)
    multiline: bool = Input(False, optional=True)
    dotall: bool = Input(False, optional=True, description="When enabled, the dot (.) "
                         "also matches newlines; when disabled, it does not")
    count: int = Input(0, min=0, max=MAX_REPLACE_COUNT, optional=True,
                       description="The most replacements to make; 0 replaces every match")

    def execute(self, ctx: ExecutionContext) -> tuple[str]:
        string = check_text(self.TYPE, "string", self.string)
        template = check_text(self.TYPE, "replace", self.replace)
        pattern = self._pattern()
        problem = _template_problem(pattern, template)
        if problem is not None:
            raise ValueError(f"{self.TYPE}: replace {problem}")
        count = self.count or 0
        most = min(count or len(string) + 1, len(string) + 1)  # matches there can be
        with time_limited(self.TYPE):
            if "\\" not in template and len(string) + most * len(template) <= MAX_STRING_CHARS:
                return (pattern.sub(template, string, count=count, timeout=REGEX_TIMEOUT_S),)
            size = len(string)

            def expand(match: regex.Match[str]) -> str:  # group references: count as it goes
                nonlocal size
                text = match.expand(template)
                size += len(text) - (match.end() - match.start())
                _check_size(self.TYPE, size)
                return text

            return (pattern.sub(expand, string, count=count, timeout=REGEX_TIMEOUT_S),)


NODE_CLASSES = (StringSubstring, StringLength, CaseConverter, StringTrim, StringReplace,
                StringContains, StringCompare, RegexMatch, RegexExtract, RegexReplace)
