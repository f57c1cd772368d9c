"""Canvas-only nodes: ComfyUI's Note and MarkdownNote import as notes in the layout, and a
document's reroutes and notes (layout only) never reach the prompt that runs."""

from __future__ import annotations

from engine.comfy_workflow import convert_ui_workflow
from engine.workflow import document_to_prompt, from_object
from tests.comfy_fixtures import comfy_default, object_info


def test_notes_go_to_the_layout_not_the_prompt():
    wf = comfy_default()
    wf["nodes"].append({"id": 13, "type": "MarkdownNote", "pos": [10, 700], "size": [300, 90],
                        "mode": 0, "title": "Read me", "color": "#432",
                        "widgets_values": ["# How to\nraise **cfg**"]})
    result = convert_ui_workflow(wf, object_info())
    assert result.warnings == []
    notes = result.document["layout"]["notes"]
    assert notes == {
        "12": {"pos": [0, 0], "size": [200, 60], "text": "hello"},
        "13": {"pos": [10, 700], "size": [300, 90], "text": "# How to\nraise **cfg**",
               "title": "Read me", "color": "#443322",  # as the canvas's palette writes it
               "markdown": True},
    }
    assert "12" not in result.prompt and "13" not in result.prompt
    assert "12" not in document_to_prompt(result.document)


def test_a_note_without_text_or_place_still_converts():
    wf = comfy_default()
    wf["nodes"].append({"id": 14, "type": "Note", "widgets_values": [3]})
    notes = convert_ui_workflow(wf, object_info()).document["layout"]["notes"]
    assert notes["14"] == {"pos": [0, 0], "text": ""}


def test_a_documents_reroutes_and_notes_stay_out_of_the_prompt():
    doc = {
        "format": "steerflow.workflow", "version": 1,
        "prompt": {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 5}},
                   "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}},
        "layout": {"nodes": {"1": {"pos": [0, 0]}, "2": {"pos": [400, 0], "via": {"value": "3"}}},
                   "reroutes": {"3": {"pos": [200, 0], "input": ["1", 0]}},
                   "notes": {"4": {"pos": [0, 200], "text": "hi"}}, "groups": []},
        "extra": {},
    }
    prompt, _ = from_object(doc)
    assert sorted(prompt) == ["1", "2"]
    assert prompt["2"]["inputs"]["value"] == ["1", 0]
