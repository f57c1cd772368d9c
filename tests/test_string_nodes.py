"""ComfyUI's text nodes: Preview Any, Concatenate (nodes/primitives.py) and the string and
regex nodes of nodes/strings.py — their schemas as ComfyUI defines them, their outputs, the
bounds on every string, and users' patterns that must not hang or exhaust the server."""

from __future__ import annotations

import time
from typing import Any

import pytest

from engine import PromptValidationError
from engine.session import Session
from nodes import strings
from nodes.primitives import MAX_STRING_CHARS, PreviewAny, StringConcatenate
from nodes.strings import (
    CaseConverter,
    RegexExtract,
    RegexMatch,
    RegexReplace,
    StringCompare,
    StringContains,
    StringLength,
    StringReplace,
    StringSubstring,
    StringTrim,
)
from tests.graph_nodes import registry_with_capture


def test_concatenate_joins_with_the_delimiter_and_bounds_the_result():
    assert StringConcatenate(string_a="a cat", string_b="a hat",
                             delimiter=", ").execute(None) == ("a cat, a hat",)
    assert StringConcatenate(string_a="x", string_b="y", delimiter="").execute(None) == ("xy",)
    big = "x" * (MAX_STRING_CHARS // 2 + 1)
    with pytest.raises(ValueError, match="the most is"):
        StringConcatenate(string_a=big, string_b=big, delimiter="").execute(None)


def test_preview_any_shows_json_for_containers_and_text_otherwise():
    assert PreviewAny(source={"a": [1, 2]}).execute(None).ui == {
        "text": ['{\n    "a": [\n        1,\n        2\n    ]\n}']}
    assert PreviewAny(source=3.5).execute(None).ui == {"text": ["3.5"]}
    assert PreviewAny(source=[object()]).execute(None).ui["text"][0].startswith("[<object")


# --- the schemas, as comfy_extras/nodes_string.py defines them -------------------------------

def _spec(node: type, name: str) -> tuple[Any, ...]:
    s = node.INPUT_SPECS[name]
    return s.type, s.default, s.required, s.multiline, s.min, s.max, s.resolve_choices(None)


ML = ("STRING", "", True, True, None, None, None)  # a multi-line text widget, default ""

COMFY_SCHEMAS: dict[type, dict[str, Any]] = {
    StringSubstring: {"display": "Substring", "inputs": {
        "string": ML, "start": ("INT", 0, True, False, None, None, None),
        "end": ("INT", 0, True, False, None, None, None)},
        "outputs": [("STRING", "STRING")]},
    StringLength: {"display": "Length", "inputs": {"string": ML},
                   "outputs": [("INT", "length")]},
    CaseConverter: {"display": "Case Converter", "inputs": {
        "string": ML, "mode": ("COMBO", "UPPERCASE", True, False, None, None,
                               ["UPPERCASE", "lowercase", "Capitalize", "Title Case"])},
        "outputs": [("STRING", "STRING")]},
    StringTrim: {"display": "Trim", "inputs": {
        "string": ML,
        "mode": ("COMBO", "Both", True, False, None, None, ["Both", "Left", "Right"])},
        "outputs": [("STRING", "STRING")]},
    StringReplace: {"display": "Replace", "inputs": {"string": ML, "find": ML, "replace": ML},
                    "outputs": [("STRING", "STRING")]},
    StringContains: {"display": "Contains", "inputs": {
        "string": ML, "substring": ML,
        "case_sensitive": ("BOOLEAN", True, True, False, None, None, None)},
        "outputs": [("BOOLEAN", "contains")]},
    StringCompare: {"display": "Compare", "inputs": {
        "string_a": ML, "string_b": ML,
        "mode": ("COMBO", "Starts With", True, False, None, None,
                 ["Starts With", "Ends With", "Equal"]),
        "case_sensitive": ("BOOLEAN", True, True, False, None, None, None)},
        "outputs": [("BOOLEAN", "BOOLEAN")]},
    RegexMatch: {"display": "Regex Match", "inputs": {
        "string": ML, "regex_pattern": ML,
        "case_insensitive": ("BOOLEAN", True, True, False, None, None, None),
        "multiline": ("BOOLEAN", False, True, False, None, None, None),
        "dotall": ("BOOLEAN", False, True, False, None, None, None)},
        "outputs": [("BOOLEAN", "matches")]},
    RegexExtract: {"display": "Regex Extract", "inputs": {
        "string": ML, "regex_pattern": ML,
        "mode": ("COMBO", "First Match", True, False, None, None,
                 ["First Match", "All Matches", "First Group", "All Groups"]),
        "case_insensitive": ("BOOLEAN", True, True, False, None, None, None),
        "multiline": ("BOOLEAN", False, True, False, None, None, None),
        "dotall": ("BOOLEAN", False, True, False, None, None, None),
        "group_index": ("INT", 1, True, False, 0, 100, None)},
        "outputs": [("STRING", "STRING")]},
    RegexReplace: {"display": "Regex Replace", "inputs": {
        "string": ML, "regex_pattern": ML, "replace": ML,
        "case_insensitive": ("BOOLEAN", True, False, False, None, None, None),
        "multiline": ("BOOLEAN", False, False, False, None, None, None),
        "dotall": ("BOOLEAN", False, False, False, None, None, None),
        "count": ("INT", 0, False, False, 0, 100, None)},
        "outputs": [("STRING", "STRING")]},
}


@pytest.mark.parametrize("node", list(COMFY_SCHEMAS), ids=lambda n: n.TYPE)
def test_schema_is_comfyuis(node):
    want = COMFY_SCHEMAS[node]
    schema = node.schema()
    assert schema["name"] == node.__name__  # ComfyUI's node id is the class name here
    assert schema["display_name"] == want["display"]
    assert schema["category"] == "utils/string"
    assert schema["description"]  # a docstring for the canvas
    # widget order decides how a UI-format file's widgets_values map: ComfyUI's order
    order = schema["input_order"]["required"] + schema["input_order"]["optional"]
    assert order == list(want["inputs"])
    assert {name: _spec(node, name) for name in order} == want["inputs"]
    assert list(zip(schema["output"], schema["output_name"], strict=True)) == want["outputs"]


def test_every_string_node_is_registered():
    registry = registry_with_capture()
    for node in (*COMFY_SCHEMAS, StringConcatenate):
        assert registry.get(node.TYPE) is node


# --- plain string nodes -----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "start", "end", "want"), [
    ("hello world", 0, 5, "hello"),
    ("hello world", 6, 11, "world"),
    ("hello world", -5, 11, "world"),       # negative counts from the end
    ("hello world", 3, -3, "lo wo"),
    ("hello", 2, 99, "llo"),                # past the end: clipped
    ("hello", 4, 2, ""),                    # start after end
    ("hello", 0, 0, ""),                    # ComfyUI's defaults
    ("", 0, 5, ""),
    ("😀a😀b", 1, 3, "a😀"),                # code points, not UTF-16 units or bytes
    ("x", -(2**63), 2**63 - 1, "x"),        # the 64-bit ends of the inputs
])
def test_substring(text, start, end, want):
    assert StringSubstring(string=text, start=start, end=end).execute(None) == (want,)


@pytest.mark.parametrize(("text", "want"), [("", 0), ("abc", 3), ("héllo", 5), ("😀", 1),
                                            ("e\u0301", 2), ("a\nb\r\n", 5)])
def test_length_counts_code_points(text, want):
    assert StringLength(string=text).execute(None) == (want,)


@pytest.mark.parametrize(("mode", "text", "want"), [
    ("UPPERCASE", "hello World", "HELLO WORLD"),
    ("UPPERCASE", "straße", "STRASSE"),       # one character can become two
    ("lowercase", "HeLLo ÉCOLE", "hello école"),
    ("Capitalize", "hELLO wORLD", "Hello world"),
    ("Title Case", "hello big world", "Hello Big World"),
    ("Title Case", "", ""),
])
def test_case_converter(mode, text, want):
    assert CaseConverter(string=text, mode=mode).execute(None) == (want,)


@pytest.mark.parametrize(("mode", "want"), [("Both", "a b"), ("Left", "a b \t\n\u3000"),
                                            ("Right", " \n\u3000a b")])
def test_trim_strips_unicode_whitespace(mode, want):
    assert StringTrim(string=" \n\u3000a b \t\n\u3000", mode=mode).execute(None) == (want,)
    assert StringTrim(string="", mode=mode).execute(None) == ("",)


def test_replace_is_plain_text_and_bounded():
    assert StringReplace(string="a.b.c", find=".", replace="-").execute(None) == ("a-b-c",)
    assert StringReplace(string="a(b)", find="(b)", replace="").execute(None) == ("a",)
    assert StringReplace(string="chat 🐱 chat", find="chat",
                         replace="猫").execute(None) == ("猫 🐱 猫",)
    assert StringReplace(string="ab", find="", replace="x").execute(None) == ("xaxbx",)
    assert StringReplace(string="", find="", replace="x").execute(None) == ("x",)
    assert StringReplace(string="abc", find="z", replace="y").execute(None) == ("abc",)
    # an empty find puts 1000 characters between every two of 1000: refused, not built
    with pytest.raises(ValueError, match="StringReplace: the result would be 1002000"):
        StringReplace(string="a" * 1000, find="", replace="x" * 1000).execute(None)


def test_every_string_input_is_bounded():
    big = "x" * (MAX_STRING_CHARS + 1)
    with pytest.raises(ValueError, match="StringLength: string is 1000001 characters long"):
        StringLength(string=big).execute(None)
    with pytest.raises(ValueError, match="StringReplace: find is"):
        StringReplace(string="a", find=big, replace="").execute(None)
    with pytest.raises(ValueError, match="StringContains: substring is"):
        StringContains(string="a", substring=big).execute(None)
    with pytest.raises(ValueError, match="RegexReplace: replace is"):
        RegexReplace(string="a", regex_pattern="a", replace=big).execute(None)
    with pytest.raises(ValueError, match="regex_pattern is 10001 characters long"):
        RegexMatch(string="a", regex_pattern="a" * 10_001).execute(None)


@pytest.mark.parametrize(("string", "sub", "case_sensitive", "want"), [
    ("Hello World", "World", True, True),
    ("Hello World", "world", True, False),
    ("Hello World", "world", False, True),
    ("ÉCOLE", "éco", False, True),
    ("abc", "", True, True),
    ("", "a", True, False),
    ("", "", False, True),
])
def test_contains(string, sub, case_sensitive, want):
    assert StringContains(string=string, substring=sub,
                          case_sensitive=case_sensitive).execute(None) == (want,)


@pytest.mark.parametrize(("a", "b", "mode", "case_sensitive", "want"), [
    ("Hello World", "Hello", "Starts With", True, True),
    ("Hello World", "hello", "Starts With", True, False),
    ("Hello World", "hello", "Starts With", False, True),
    ("Hello World", "WORLD", "Ends With", False, True),
    ("Hello World", "World", "Ends With", True, True),
    ("abc", "abc", "Equal", True, True),
    ("abc", "ABC", "Equal", True, False),
    ("abc", "ABC", "Equal", False, True),
    ("", "", "Equal", True, True),
    ("abc", "", "Starts With", True, True),
])
def test_compare(a, b, mode, case_sensitive, want):
    assert StringCompare(string_a=a, string_b=b, mode=mode,
                         case_sensitive=case_sensitive).execute(None) == (want,)


# --- regex nodes ------------------------------------------------------------------------------

def match(string: str, pattern: str, **flags: bool) -> bool:
    return RegexMatch(string=string, regex_pattern=pattern, **flags).execute(None)[0]


def test_regex_match_and_its_flags():
    assert match("Hello World", r"w\w+")                      # case-insensitive by default
    assert not match("Hello World", r"w\w+", case_insensitive=False)
    assert match("anything", "")                              # the empty pattern matches
    assert not match("first\nsecond", r"^second")
    assert match("first\nsecond", r"^second", multiline=True)
    assert not match("a\nb", r"a.b")
    assert match("a\nb", r"a.b", dotall=True)
    assert match("naïve café", r"\bcafé\b")                   # \w and \b know Unicode
    assert match("ÉCOLE", r"école")
    assert match("", r"^$")
    assert match("2024-05-01", r"\d{4}-\d{2}-\d{2}")


def extract(string: str, pattern: str, mode: str, **kw: Any) -> str:
    return RegexExtract(string=string, regex_pattern=pattern, mode=mode, **kw).execute(None)[0]


def test_regex_extract_modes_and_groups():
    text = "width=512 height=768 steps=20"
    assert extract(text, r"\w+=\d+", "First Match") == "width=512"
    assert extract(text, r"\w+=\d+", "All Matches") == "width=512\nheight=768\nsteps=20"
    # with groups, All Matches gives each match's first group (as re.findall)
    assert extract(text, r"(\w+)=(\d+)", "All Matches") == "width\nheight\nsteps"
    assert extract(text, r"(\w+)=(\d+)", "First Group") == "width"
    assert extract(text, r"(\w+)=(\d+)", "First Group", group_index=2) == "512"
    assert extract(text, r"(\w+)=(\d+)", "First Group", group_index=0) == "width=512"
    assert extract(text, r"(\w+)=(\d+)", "All Groups", group_index=2) == "512\n768\n20"
    assert extract(text, r"(?P<key>\w+)=", "All Groups") == "width\nheight\nsteps"
    # a group the pattern lacks, a pattern without groups, no match: ""
    assert extract(text, r"(\w+)=(\d+)", "First Group", group_index=3) == ""
    assert extract(text, r"\w+=\d+", "All Groups") == ""
    assert extract(text, r"\w+=\d+", "All Groups", group_index=0) == ""
    assert extract(text, r"seed=(\d+)", "First Match") == ""
    assert extract(text, r"seed=(\d+)", "All Matches") == ""
    assert extract("", r"x*", "First Match") == ""
    # a group that took no part in the match is "" (not None)
    assert extract("ab", r"(a)|(b)", "All Groups", group_index=2) == "\nb"
    assert extract("ab", r"(a)|(b)", "First Group", group_index=2) == ""


def test_regex_extract_flags_and_unicode():
    assert extract("Cat cat CAT", r"cat", "All Matches") == "Cat\ncat\nCAT"
    assert extract("Cat cat CAT", r"cat", "All Matches", case_insensitive=False) == "cat"
    assert extract("a: 1\nb: 2", r"^\w", "All Matches") == "a"
    assert extract("a: 1\nb: 2", r"^\w", "All Matches", multiline=True) == "a\nb"
    assert extract("<p>x\ny</p>", r"<p>(.*)</p>", "First Group") == ""
    assert extract("<p>x\ny</p>", r"<p>(.*)</p>", "First Group", dotall=True) == "x\ny"
    assert extract("東京 and 大阪", r"\p{Han}+", "All Matches") == "東京\n大阪"


def test_regex_extract_output_is_bounded():
    # a lookahead group captures the rest of the text at every position: n² characters
    with pytest.raises(ValueError, match="RegexExtract: the result would be"):
        extract("a" * 5000, r"(?=(a*))", "All Groups")


def replace(string: str, pattern: str, repl: str, **kw: Any) -> str:
    return RegexReplace(string=string, regex_pattern=pattern, replace=repl,
                        **kw).execute(None)[0]


def test_regex_replace_groups_count_and_flags():
    assert replace("John Smith", r"(\w+) (\w+)", r"\2, \1") == "Smith, John"
    assert replace("John Smith", r"(?P<first>\w+) (?P<last>\w+)",
                   r"\g<last> \g<first>") == "Smith John"
    assert replace("a1b2", r"\d", r"<\g<0>>") == "a<1>b<2>"
    assert replace("aaaa", "a", "b", count=2) == "bbaa"
    assert replace("aaaa", "a", "b", count=0) == "bbbb"
    assert replace("Cat cat", "cat", "dog") == "dog dog"
    assert replace("Cat cat", "cat", "dog", case_insensitive=False) == "Cat dog"
    assert replace("x\ny", "^", "> ", multiline=True) == "> x\n> y"
    assert replace("a\nb", "a.b", "-") == "a\nb"
    assert replace("a\nb", "a.b", "-", dotall=True) == "-"
    assert replace("ab", "", "-") == "-a-b-"
    assert replace("", "x", "y") == ""
    assert replace("tab\there", r"\t", r"\n") == "tab\nhere"
    assert replace("日本語", r"本", "🇯🇵") == "日🇯🇵語"


def test_regex_replace_output_is_bounded_even_through_group_references():
    with pytest.raises(ValueError, match="RegexReplace: the result would be"):
        replace("a" * 1000, "", "x" * 1001)
    # each match repeats the whole text 2000 times: counted as it goes, stopped early
    with pytest.raises(ValueError, match="RegexReplace: the result would be"):
        replace("ab" * 500, r"(.*)", r"\1" * 2000)
    assert len(replace("a" * 1000, "a", r"\g<0>\g<0>")) == 2000


@pytest.mark.parametrize(("pattern", "repl", "name", "message"), [
    (r"(a", "", "regex_pattern", "not a valid regular expression: missing \\)"),
    (r"a**", "", "regex_pattern", "not a valid regular expression"),
    (r"(?P<x", "", "regex_pattern", "not a valid regular expression"),
    (r"(a)", r"\2", "replace", "not a valid replacement"),
    (r"a", r"\g<name>", "replace", "not a valid replacement"),
])
def test_invalid_patterns_and_replacements_are_errors_naming_the_input(pattern, repl, name,
                                                                       message):
    # the replacement is checked even where nothing matches (as Python's re.sub does)
    with pytest.raises(ValueError, match=f"RegexReplace: {name} .*{message}"):
        replace("zzz", pattern, repl)
    if name == "regex_pattern":
        with pytest.raises(ValueError, match=f"RegexMatch: regex_pattern .*{message}"):
            match("zzz", pattern)
        with pytest.raises(ValueError, match=f"RegexExtract: regex_pattern .*{message}"):
            extract("zzz", pattern, "All Matches")


# regex defuses many classic cases ((a+)+$ on a short string); these still explode
CATASTROPHIC = [(r"(a+)+$", "a" * 10_000 + "!"), (r"(a|aa)+$", "a" * 60 + "!"),
                (r"(\w|\w\w)+$", "ab" * 40 + "!")]


@pytest.mark.parametrize(("pattern", "text"), CATASTROPHIC)
@pytest.mark.parametrize("node", ["match", "extract", "replace"])
def test_catastrophic_backtracking_times_out_into_an_error(monkeypatch, node, pattern, text):
    monkeypatch.setattr(strings, "REGEX_TIMEOUT_S", 0.3)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"regex_pattern took more than 0.3 s .*backtracks"):
        if node == "match":
            match(text, pattern)
        elif node == "extract":
            extract(text, pattern, "All Matches")
        else:
            replace(text, pattern, "x")
    assert time.perf_counter() - start < 5


def test_the_default_time_limit_stops_a_catastrophic_pattern():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"took more than {strings.REGEX_TIMEOUT_S:g} s"):
        match("a" * 10_000 + "!", r"(a+)+$")
    # the pattern alone would run for ages; the margin absorbs a loaded shared machine
    assert time.perf_counter() - start < strings.REGEX_TIMEOUT_S + 30


@pytest.mark.parametrize("pattern", [
    r"(?:(?:a{1000}){1000}){1000}",     # regex unrolls this into 10⁹ elements at compile
    r"(?:[ab]{1000}){1000}",
    r"a{99999999999999999999999}",
    r"(x{2,}){5000}y{3}",
])
def test_patterns_that_would_compile_huge_are_refused_before_compiling(pattern):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"regex_pattern would compile into .* elements"):
        match("a", pattern)
    assert time.perf_counter() - start < 1


def test_deeply_nested_groups_are_refused():
    with pytest.raises(ValueError, match="nests groups more than 100 deep"):
        match("a", "(" * 500 + "a" + ")" * 500)


@pytest.mark.parametrize(("pattern", "units"), [
    (r"abc", 3), (r"\d{4}-\d{2}", 7), (r"(ab){3}", 9), (r"a{2,}b{0,9999}", 3),
    (r"[a-z{}]{3}", 3), (r"\p{L}{2}", 2), (r"a|b{5}", 6), (r"(?#x{9999}){2}", 0),
    (r"\{5}", 3),                        # an escaped brace: the literal "{5}"
    (r"(a(b){3}){2}", 16),                # (1 + a + 3·(1 + b)) · 2
    (r"(?P<a_long_name>x){3}", 6),
    (r"(?<n>x)(?<=y)", 6),                # a lookbehind's "<=" counts: an over-estimate
])
def test_pattern_units_reads_counted_repeats(pattern, units):
    assert strings.pattern_units(pattern) == units


def test_common_patterns_are_accepted():
    for pattern in (r"\d{1,3}(?:\.\d{1,3}){3}", r"[A-Z][a-z]+(?: [A-Z][a-z]+)*",
                    r"^\s*#.*$", r"(?i)lora:(?P<name>[^:>]+)(?::(?P<w>[\d.]+))?",
                    r".{0,100000}", r"\w{500}", r"(?<=@)\w+", r"a++b", r"(?>a|ab)c"):
        assert strings.pattern_problem(pattern) is None, pattern


# --- through the engine -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(tmp_path_factory.mktemp("strings"), device="cpu",
                   registry=registry_with_capture())


def ui_node(node_id: int, type_: str, widgets: list[Any], inputs: list[dict[str, Any]] = (),
            outputs: list[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"id": node_id, "type": type_, "pos": [0, node_id * 100], "size": [300, 100],
            "mode": 0, "inputs": list(inputs), "outputs": list(outputs),
            "widgets_values": widgets}


def test_a_comfyui_workflow_of_string_nodes_runs(session):
    """A ComfyUI UI-format file (widgets_values by position, links): a multi-line prompt
    is cleaned up with Regex Replace, measured, tested and shown."""
    text = "  a photo of a CAT,   sitting\non a mat  "
    wf = {
        "last_node_id": 6, "last_link_id": 5, "version": 0.4, "config": {}, "groups": [],
        "nodes": [
            ui_node(1, "PrimitiveStringMultiline", [text],
                    outputs=[{"name": "STRING", "type": "STRING", "links": [1]}]),
            ui_node(2, "RegexReplace", ["", r"\s+", " ", True, False, False, 0],
                    inputs=[{"name": "string", "type": "STRING", "link": 1,
                             "widget": {"name": "string"}}],
                    outputs=[{"name": "STRING", "type": "STRING", "links": [2, 3, 4]}]),
            ui_node(3, "StringTrim", ["", "Both"],
                    inputs=[{"name": "string", "type": "STRING", "link": 2,
                             "widget": {"name": "string"}}],
                    outputs=[{"name": "STRING", "type": "STRING", "links": [5]}]),
            ui_node(4, "RegexMatch", ["", r"\bcat\b", True, False, False],
                    inputs=[{"name": "string", "type": "STRING", "link": 3,
                             "widget": {"name": "string"}}],
                    outputs=[{"name": "matches", "type": "BOOLEAN", "links": [6]}]),
            ui_node(5, "PreviewAny", [],
                    inputs=[{"name": "source", "type": "*", "link": 5}]),
            ui_node(6, "PreviewAny", [],
                    inputs=[{"name": "source", "type": "*", "link": 6}]),
        ],
        "links": [[1, 1, 0, 2, 0, "STRING"], [2, 2, 0, 3, 0, "STRING"],
                  [3, 2, 0, 4, 0, "STRING"], [5, 3, 0, 5, 0, "STRING"],
                  [6, 4, 0, 6, 0, "BOOLEAN"]],
        "extra": {},
    }
    result = session.run(wf)
    assert result.ok, result.run.error
    assert result.run.outputs["5"]["text"] == ["a photo of a CAT, sitting on a mat"]
    assert result.run.outputs["6"]["text"] == ["True"]


def api(nodes: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return {k: {"class_type": t, "inputs": i} for k, (t, i) in nodes.items()}


def test_an_api_prompt_chains_string_nodes(session):
    prompt = api({
        "1": ("RegexExtract", {"string": "lora:night:0.8, lora:day:0.5",
                               "regex_pattern": r"lora:(\w+):([\d.]+)", "mode": "All Groups",
                               "case_insensitive": True, "multiline": False, "dotall": False,
                               "group_index": 1}),
        "2": ("StringReplace", {"string": ["1", 0], "find": "\n", "replace": ", "}),
        "3": ("CaseConverter", {"string": ["2", 0], "mode": "Title Case"}),
        "4": ("StringLength", {"string": ["3", 0]}),
        "5": ("PreviewAny", {"source": ["3", 0]}),
        "6": ("PreviewAny", {"source": ["4", 0]}),
    })
    result = session.run(prompt)
    assert result.ok, result.run.error
    assert result.run.outputs["5"]["text"] == ["Night, Day"]
    assert result.run.outputs["6"]["text"] == ["10"]


def test_a_bad_constant_pattern_is_a_validation_error_before_the_run(session):
    prompt = api({
        "1": ("RegexMatch", {"string": "x", "regex_pattern": "(unclosed",
                             "case_insensitive": True, "multiline": False, "dotall": False}),
        "2": ("PreviewAny", {"source": ["1", 0]}),
    })
    with pytest.raises(PromptValidationError) as info:
        session.run(prompt)
    (issue,) = [i for i in info.value.issues if i.severity == "error"]
    assert (issue.kind, issue.node_id, issue.input_name) == ("node_error", "1", "regex_pattern")
    assert "not a valid regular expression" in issue.message

    prompt = api({
        "1": ("RegexReplace", {"string": "x", "regex_pattern": "(x)", "replace": r"\g<2>"}),
        "2": ("PreviewAny", {"source": ["1", 0]}),
    })
    with pytest.raises(PromptValidationError) as info:
        session.run(prompt)
    (issue,) = [i for i in info.value.issues if i.severity == "error"]
    assert (issue.kind, issue.input_name) == ("node_error", "replace")


def test_a_linked_pattern_is_checked_when_it_runs(session):
    prompt = api({
        "1": ("PrimitiveString", {"value": "(a|aa)+$"}),
        "2": ("RegexMatch", {"string": "a" * 10 + "!", "regex_pattern": ["1", 0],
                             "case_insensitive": True, "multiline": False, "dotall": False}),
        "3": ("PreviewAny", {"source": ["2", 0]}),
    })
    result = session.run(prompt)  # short: fine
    assert result.ok and result.run.outputs["3"]["text"] == ["False"]
    prompt["1"]["inputs"]["value"] = "(?:a{1000}){1000}"
    result = session.run(prompt)
    assert result.run.status == "error"
    assert result.run.error["node_id"] == "2"
    assert "regex_pattern would compile into" in result.run.error["exception_message"]
