"""ComfyUI's display names as search aliases of the nodes Steerflow names otherwise."""

from __future__ import annotations

from typing import ClassVar

import nodes
from engine import Node, Output
from nodes.comfy_display_names import comfy_display_names

BUILTIN = {cls.TYPE: cls for cls in nodes.NODE_CLASSES}


def test_comfyuis_names_find_the_nodes_we_renamed():
    """The canvas drill typed "CLIP Text Encode (Prompt)" and found nothing."""
    expected = {"CLIPTextEncode": "CLIP Text Encode (Prompt)",
                "KSamplerAdvanced": "KSampler (Advanced)",
                "LoraLoader": "Load LoRA (Model and CLIP)"}
    for type_id, comfy in expected.items():
        assert comfy in BUILTIN[type_id].schema(None)["search_aliases"], type_id


def test_every_renamed_builtin_lists_comfyuis_name_once():
    names = comfy_display_names()
    assert set(names) <= set(BUILTIN)  # the table names only nodes we ship
    for type_id, comfy in names.items():
        cls = BUILTIN[type_id]
        aliases = cls.schema(None).get("search_aliases", [])
        shown = cls.DISPLAY_NAME or cls.TYPE
        if comfy.casefold() == shown.casefold():
            assert comfy not in aliases, type_id
        else:
            assert [a.casefold() for a in aliases].count(comfy.casefold()) == 1, type_id
    # a node ComfyUI shows as we do gets no alias; one it shows by its type id ("KSampler",
    # ours "Sample") gets that name (the palette ranks names ahead of ids); ours stay first
    assert "search_aliases" not in BUILTIN["SaveImage"].schema(None)
    assert BUILTIN["KSampler"].schema(None)["search_aliases"] == ["KSampler"]
    assert BUILTIN["SelfAttentionGuidance"].schema(None)["search_aliases"][:2] == [
        "SAG", "self attention guidance"]


class Renamed(Node):
    TYPE = "TestRenamed"
    DISPLAY_NAME = "Renamed"
    SEARCH_ALIASES = ("first", "first")
    COMFY_DISPLAY_NAME = "Test Renamed (Comfy)"
    OUTPUTS = (Output("INT"),)


class Derived(Renamed):
    TYPE = "TestDerived"
    DISPLAY_NAME = "Derived"


class SameType(Renamed):
    """A pack's subclass that replaces the node of that TYPE."""

    SEARCH_ALIASES: ClassVar[tuple[str, ...]] = ("test renamed (COMFY)",)


def test_the_alias_belongs_to_its_type_and_is_listed_once():
    assert Renamed.search_aliases() == ["first", "Test Renamed (Comfy)"]
    assert Derived.search_aliases() == ["first"]  # another TYPE: not inherited
    assert SameType.search_aliases() == ["test renamed (COMFY)"]  # already there, case aside
    shown = type("Shown", (Renamed,), {"DISPLAY_NAME": "test renamed (comfy)",
                                       "SEARCH_ALIASES": ()})
    assert shown.search_aliases() == []  # the name shown is no alias
