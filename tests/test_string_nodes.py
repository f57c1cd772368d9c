"""Preview Any and Concatenate (ComfyUI's utility nodes)."""

from __future__ import annotations

import pytest

from nodes.primitives import MAX_STRING_CHARS, PreviewAny, StringConcatenate


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
