"""What a ComfyUI power user's file holds beyond the graph that runs: a PrimitiveNode's
control, nodes of packs not installed here, colours, collapsed nodes and reroutes."""

from __future__ import annotations

import copy
from typing import Any

from engine.comfy_raw import restore_raw_widgets
from engine.comfy_workflow import convert_ui_workflow
from tests.comfy_fixtures import comfy_default, object_info

SCHEMAS = object_info()
SEED_MAX = 2**64 - 1


def sampler(nid: int, seed_link: int | None, values: list[Any] | None = None,
            **extra: Any) -> dict[str, Any]:
    """A KSampler whose seed widget is fed by ``seed_link``; its own (hidden) seed control
    is the stale ``"randomize"`` ComfyUI leaves behind."""
    return {"id": nid, "type": "KSampler", "pos": [400, 100 * nid], "size": [315, 262],
            "inputs": [{"name": "seed", "type": "INT", "link": seed_link,
                        "widget": {"name": "seed"}}],
            "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}],
            "widgets_values": values or [1234, "randomize", 20, 8, "euler", "normal", 1],
            **extra}


def primitive(nid: int, values: list[Any], links: list[int], kind: str = "INT",
              **extra: Any) -> dict[str, Any]:
    return {"id": nid, "type": "PrimitiveNode", "pos": [0, 50], "size": [210, 82],
            "outputs": [{"name": kind, "type": kind, "links": links,
                         "widget": {"name": "seed"}}],
            "widgets_values": values, **extra}


def convert(wf: dict[str, Any], schemas: Any = SCHEMAS):
    return convert_ui_workflow(wf, schemas)


# --- PrimitiveNode -------------------------------------------------------------------

def test_a_fixed_primitive_keeps_the_seed_fixed():
    wf = {"nodes": [primitive(1, [42, "fixed"], [1], title="Seed"), sampler(2, 1)],
          "links": [[1, 1, 0, 2, 0, "INT"]]}
    result = convert(wf)
    assert result.warnings == []
    assert result.prompt["1"] == {"class_type": "PrimitiveInt", "inputs": {"value": 42},
                                  "_meta": {"title": "Seed"}}
    assert result.prompt["2"]["inputs"]["seed"] == ["1", 0]
    layout = result.document["layout"]["nodes"]
    # the primitive's control, where it stood; the sampler's stale "randomize" is gone
    assert layout["1"] == {"pos": [0, 50], "size": [210, 82], "title": "Seed",
                           "control": {"value": "fixed"}}
    assert "control" not in layout["2"]
    assert result.prompt["2"]["inputs"]["steps"] == 20  # the rest still by position


def test_a_primitive_linked_to_nothing_is_left_out_with_a_warning():
    wf = {"nodes": [primitive(1, [42, "fixed"], [1]), primitive(3, [], []), sampler(2, 1)],
          "links": [[1, 1, 0, 2, 0, "INT"]]}
    result = convert(wf)
    assert "3" not in result.prompt and "1" in result.prompt
    assert result.warnings == ["node 3 (Primitive) is linked to no widget, so it was left out"]


def test_one_primitive_drives_both_samplers_together():
    wf = {"nodes": [primitive(1, [7, "randomize"], [1, 2]), sampler(2, 1),
                    sampler(3, 2, [99, "fixed", 30, 7, "euler", "normal", 1])],
          "links": [[1, 1, 0, 2, 0, "INT"], [2, 1, 0, 3, 0, "INT"]]}
    result = convert(wf)
    assert result.warnings == []
    assert result.prompt["1"] == {"class_type": "PrimitiveInt", "inputs": {"value": 7}}
    assert result.prompt["2"]["inputs"]["seed"] == result.prompt["3"]["inputs"]["seed"] \
        == ["1", 0]
    layout = result.document["layout"]["nodes"]
    assert layout["1"]["control"] == {"value": "randomize"}  # one control for both
    assert "control" not in layout["2"] and "control" not in layout["3"]


def test_old_boolean_control_and_no_control_value():
    for values, mode in (([5, True], "randomize"), ([5, False], "fixed"), ([5], "fixed")):
        wf = {"nodes": [primitive(1, values, [1]), sampler(2, 1)],
              "links": [[1, 1, 0, 2, 0, "INT"]]}
        layout = convert(wf).document["layout"]["nodes"]
        assert layout["1"]["control"] == {"value": mode}, values


def test_a_big_seed_sent_as_text_by_the_canvas_converts_as_the_number_would():
    """The canvas keeps every digit of an INT past 2^53 by sending its decimal text; the
    same file opened by the CLI (a number) and by the canvas (text) gave two documents."""
    for value in (2**63 - 1, str(2**63 - 1)):
        wf = {"nodes": [primitive(1, [value, "fixed"], [1, 2]), sampler(2, 1), sampler(3, 2)],
              "links": [[1, 1, 0, 2, 0, "INT"], [2, 1, 0, 3, 0, "INT"]]}
        result = convert(wf)
        assert result.prompt["1"] == {"class_type": "PrimitiveInt",
                                      "inputs": {"value": 2**63 - 1}}, value
        assert result.prompt["2"]["inputs"]["seed"] == ["1", 0]


def test_a_seed_beyond_ints_range_is_written_with_the_primitives_control():
    """Int holds a signed 64-bit value; a seed up to 2**64 - 1 stays a value on each
    sampler, with the primitive's control rather than the sampler's stale one."""
    wf = {"nodes": [primitive(1, [SEED_MAX, "fixed"], [1]), sampler(2, 1)],
          "links": [[1, 1, 0, 2, 0, "INT"]]}
    result = convert(wf)
    assert result.warnings == []
    assert "1" not in result.prompt
    assert result.prompt["2"]["inputs"]["seed"] == SEED_MAX
    assert result.document["layout"]["nodes"]["2"]["control"] == {"seed": "fixed"}
    # two samplers randomized apart: said so
    wf = {"nodes": [primitive(1, [SEED_MAX, "randomize"], [1, 2]), sampler(2, 1),
                    sampler(3, 2)],
          "links": [[1, 1, 0, 2, 0, "INT"], [2, 1, 0, 3, 0, "INT"]]}
    result = convert(wf)
    layout = result.document["layout"]["nodes"]
    assert layout["2"]["control"] == layout["3"]["control"] == {"seed": "randomize"}
    assert any("node 2, 3, each randomized on its own" in w for w in result.warnings)


def test_a_choice_gets_the_value_and_a_stepping_control_is_reported():
    def feeding(name: str, slot_type: str) -> dict[str, Any]:
        node = sampler(2, None)
        node["inputs"] = [{"name": name, "type": slot_type, "link": 1,
                           "widget": {"name": name}}]
        return node

    wf = {"nodes": [primitive(1, ["dpmpp_2m", "increment", ""], [1], kind="COMBO"),
                    feeding("sampler_name", "COMBO")],
          "links": [[1, 1, 0, 2, 0, "COMBO"]]}
    result = convert(wf)
    assert "1" not in result.prompt
    assert result.prompt["2"]["inputs"]["sampler_name"] == "dpmpp_2m"
    assert result.document["layout"]["nodes"]["2"]["control"] == {"seed": "randomize"}
    assert any("steps only numbers" in w and "'increment'" in w for w in result.warnings)
    # a float becomes a Float, fed into cfg
    wf = {"nodes": [primitive(1, [6.5, "fixed"], [1], kind="FLOAT"), feeding("cfg", "FLOAT")],
          "links": [[1, 1, 0, 2, 0, "FLOAT"]]}
    result = convert(wf)
    assert result.prompt["1"] == {"class_type": "PrimitiveFloat", "inputs": {"value": 6.5}}
    assert result.prompt["2"]["inputs"]["cfg"] == ["1", 0]


def test_a_text_primitive_becomes_a_string_node():
    encode = {"id": 2, "type": "CLIPTextEncode", "pos": [300, 0],
              "inputs": [{"name": "text", "type": "STRING", "link": 1,
                          "widget": {"name": "text"}}], "widgets_values": ["old"]}
    wf = {"nodes": [primitive(1, ["a cat"], [1], kind="STRING"), encode],
          "links": [[1, 1, 0, 2, 0, "STRING"]]}
    result = convert(wf)
    assert result.prompt["1"] == {"class_type": "PrimitiveString", "inputs": {"value": "a cat"}}
    assert "control" not in result.document["layout"]["nodes"]["1"]
    # a text box is fed by String (Multiline) where the server has it
    multiline = {"display_name": "String (Multiline)", "input": {"required": {
        "value": ["STRING", {"default": "", "multiline": True}]}}}
    result = convert(wf, {**SCHEMAS, "PrimitiveStringMultiline": multiline})
    assert result.prompt["1"]["class_type"] == "PrimitiveStringMultiline"


def test_without_primitive_nodes_the_value_is_written_as_before():
    schemas = {k: v for k, v in SCHEMAS.items() if not k.startswith("Primitive")}
    wf = {"nodes": [primitive(1, [42, "increment"], [1]), sampler(2, 1)],
          "links": [[1, 1, 0, 2, 0, "INT"]]}
    result = convert(wf, schemas)
    assert result.prompt["2"]["inputs"]["seed"] == 42
    assert result.document["layout"]["nodes"]["2"]["control"] == {"seed": "increment"}


# --- nodes of packs not installed here -----------------------------------------------

UNKNOWN = {"id": 5, "type": "FancyUpscaler", "pos": [10, 20], "size": [300, 100],
           "inputs": [{"name": "image", "type": "IMAGE", "link": None}],
           "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}],
           "widgets_values": ["4x-Ultra.pth", 2.5, "lanczos"]}


def test_an_unknown_node_keeps_its_raw_widget_values():
    result = convert({"nodes": [copy.deepcopy(UNKNOWN)], "links": []})
    assert result.prompt["5"] == {"class_type": "FancyUpscaler", "inputs": {}}
    assert result.document["layout"]["nodes"]["5"] == {
        "pos": [10, 20], "size": [300, 100],
        "widgets_values": ["4x-Ultra.pth", 2.5, "lanczos"]}
    assert result.warnings == [
        "node type FancyUpscaler is not available here (node 5)",  # the canvas parses it
        'node 5 (FancyUpscaler): its settings are kept only as raw widget values '
        '(["4x-Ultra.pth", 2.5, "lanczos"]), in the layout, until that node type is '
        'installed']


def test_raw_widget_values_are_named_once_the_type_is_installed():
    document = convert({"nodes": [copy.deepcopy(UNKNOWN)], "links": []}).document
    installed = {"display_name": "Fancy Upscaler", "input": {"required": {
        "image": ["IMAGE", {}], "model": [["4x-Ultra.pth"], {}],
        "scale": ["FLOAT", {"default": 2.0}], "method": [["bicubic", "lanczos"], {}]}}}
    assert restore_raw_widgets(document, {"FancyUpscaler": installed}) == ["5"]
    assert document["prompt"]["5"]["inputs"] == {"model": "4x-Ultra.pth", "scale": 2.5,
                                                 "method": "lanczos"}
    assert "widgets_values" not in document["layout"]["nodes"]["5"]
    # still unknown: left as it is
    document = convert({"nodes": [copy.deepcopy(UNKNOWN)], "links": []}).document
    assert restore_raw_widgets(document, SCHEMAS) == []
    assert document["layout"]["nodes"]["5"]["widgets_values"][0] == "4x-Ultra.pth"


def test_opening_a_saved_document_fills_in_raw_values_over_the_canvas_defaults():
    """The canvas saves the raw values with the node; once the type is installed it may
    have filled in defaults too: opening the document (CLI, Session, /workflow/convert)
    gives the raw values, a link stays a link."""
    from engine.workflow import from_object

    document = convert({"nodes": [copy.deepcopy(UNKNOWN)], "links": []}).document
    document["prompt"]["5"]["inputs"] = {"scale": 2.0, "image": ["1", 0]}  # defaults, a link
    installed = {"display_name": "Fancy Upscaler", "input": {"required": {
        "image": ["IMAGE", {}], "model": [["4x-Ultra.pth"], {}],
        "scale": ["FLOAT", {"default": 2.0}], "method": [["bicubic", "lanczos"], {}]}}}
    prompt, opened = from_object(document, {"FancyUpscaler": installed})
    assert prompt["5"]["inputs"] == {"scale": 2.5, "image": ["1", 0], "model": "4x-Ultra.pth",
                                     "method": "lanczos"}
    assert "widgets_values" not in opened["layout"]["nodes"]["5"]


# --- looks -----------------------------------------------------------------------------

def test_colours_collapsed_and_pinned_are_kept():
    wf = {"nodes": [
        {"id": 1, "type": "EmptyLatentImage", "pos": [0, 0], "widgets_values": [64, 64, 1],
         "color": "#322", "bgcolor": "#533", "flags": {"collapsed": True}},  # ComfyUI's red
        {"id": 2, "type": "EmptyLatentImage", "pos": [0, 0], "widgets_values": [64, 64, 1],
         "color": "#223", "flags": {"pinned": True}},
        {"id": 3, "type": "EmptyLatentImage", "pos": [0, 0], "widgets_values": [64, 64, 1],
         "color": "#ff0000", "bgcolor": "#3f5159"},
        {"id": 4, "type": "Note", "pos": [0, 0], "widgets_values": ["hi"],
         "color": "#432", "bgcolor": "#653"},
    ], "links": []}
    result = convert(wf)
    layout = result.document["layout"]
    assert layout["nodes"]["1"] == {"pos": [0, 0], "color": "#553333", "collapsed": True}
    assert layout["nodes"]["2"] == {"pos": [0, 0], "color": "#222233", "pinned": True}
    assert layout["nodes"]["3"]["color"] == "#3f5159"
    assert layout["notes"]["4"]["color"] == "#665533"
    # the one colour the canvas keeps is the body's; node 3's own title colour is lost
    assert result.warnings == ["left out, as a Steerflow document has no place for it: a "
                               "title colour (color) besides the node's colour (bgcolor) "
                               "(node 3)"]


def test_properties_without_a_place_are_reported():
    wf = {"nodes": [
        {"id": 1, "type": "EmptyLatentImage", "pos": [0, 0], "widgets_values": [64, 64, 1],
         "properties": {"Node name for S&R": "EmptyLatentImage", "cnr_id": "comfy-core",
                        "ver": "0.3.40", "models": [{"name": "x", "url": "https://x"}]}},
        {"id": 2, "type": "EmptyLatentImage", "pos": [0, 0], "widgets_values": [64, 64, 1],
         "properties": {"Camera Info": {"zoom": 2}}, "shape": 1},
    ], "links": []}
    [warning] = convert(wf).warnings
    assert "property 'Camera Info' (node 2)" in warning and "a shape (node 2)" in warning
    assert "node 1" not in warning


# --- reroutes --------------------------------------------------------------------------

def _decode_through(*reroutes: dict[str, Any], links: list[list[Any]],
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Checkpoint → (reroutes) → VAE Decode's vae."""
    return {"nodes": [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [0, 0],
         "widgets_values": ["steerflow-tiny"]},
        {"id": 2, "type": "VAEDecode", "pos": [600, 0],
         "inputs": [{"name": "samples", "type": "LATENT", "link": None},
                    {"name": "vae", "type": "VAE", "link": links[-1][0]}]},
        *reroutes], "links": links, "extra": extra or {}, "version": 0.4}


def _reroute(nid: int, link: int | None, pos: list[int]) -> dict[str, Any]:
    return {"id": nid, "type": "Reroute", "pos": pos, "size": [75, 26],
            "inputs": [{"name": "", "type": "*", "link": link}],
            "outputs": [{"name": "", "type": "VAE", "links": []}],
            "properties": {"showOutputText": False, "horizontal": False}}


def test_reroute_nodes_go_to_the_layout():
    wf = _decode_through(_reroute(10, 1, [200, 0]), _reroute(11, 2, [400, 0]),
                         links=[[1, 1, 2, 10, 0, "VAE"], [2, 10, 0, 11, 0, "VAE"],
                                [3, 11, 0, 2, 1, "VAE"]])
    result = convert(wf)
    assert result.warnings == []
    assert result.prompt["2"]["inputs"]["vae"] == ["1", 2]  # the real source runs
    layout = result.document["layout"]
    assert layout["reroutes"] == {"10": {"pos": [200, 0], "input": ["1", 2]},
                                  "11": {"pos": [400, 0], "input": ["10", 0]}}
    assert layout["nodes"]["2"]["via"] == {"vae": "11"}  # the nearest one
    # nothing upstream: the reroute has no input and the input stays empty, as in ComfyUI
    wf["nodes"][2]["inputs"][0]["link"] = None
    result = convert(wf)
    assert "vae" not in result.prompt["2"]["inputs"]
    assert result.document["layout"]["reroutes"]["10"] == {"pos": [200, 0]}
    assert result.document["layout"]["nodes"]["2"]["via"] == {"vae": "11"}


def test_a_primitive_through_a_reroute():
    wf = {"nodes": [primitive(1, [42, "fixed"], [1]), _reroute(10, 1, [200, 0]),
                    sampler(2, 2)],
          "links": [[1, 1, 0, 10, 0, "INT"], [2, 10, 0, 2, 0, "INT"]]}
    result = convert(wf)
    assert result.prompt["2"]["inputs"]["seed"] == ["1", 0]
    assert result.document["layout"]["reroutes"]["10"]["input"] == ["1", 0]
    assert result.document["layout"]["nodes"]["2"]["via"] == {"seed": "10"}
    # a value written into the sampler: no reroute in between to keep (it would empty it)
    wf["nodes"][0]["widgets_values"] = [SEED_MAX, "fixed"]
    result = convert(wf)
    assert result.prompt["2"]["inputs"]["seed"] == SEED_MAX
    assert "via" not in result.document["layout"]["nodes"]["2"]
    assert result.document["layout"]["reroutes"]["10"] == {"pos": [200, 0]}


def test_link_reroutes_of_newer_front_ends():
    # 0.4 files: extra.reroutes, and each link's nearest one in extra.linkExtensions
    extra = {"reroutes": [{"id": 1, "pos": [200, 0], "linkIds": [5]},
                          {"id": 2, "parentId": 1, "pos": [400, 0], "linkIds": [5]},
                          {"id": 3, "pos": [0, 300], "linkIds": [], "floating": {
                              "slotType": "output"}}],
             "linkExtensions": [{"id": 5, "parentId": 2}]}
    wf = _decode_through(links=[[5, 1, 2, 2, 1, "VAE"]], extra=extra)
    result = convert(wf)
    assert result.warnings == []
    layout = result.document["layout"]
    # fresh ids past the nodes' (a reroute's id is not a node's)
    assert layout["reroutes"] == {"3": {"pos": [200, 0], "input": ["1", 2]},
                                  "4": {"pos": [400, 0], "input": ["3", 0]},
                                  "5": {"pos": [0, 300]}}
    assert layout["nodes"]["2"]["via"] == {"vae": "4"}
    assert result.prompt["2"]["inputs"]["vae"] == ["1", 2]
    # newer files: top-level reroutes, the parent on the link object
    objects = {**wf, "version": 1, "extra": {}, "reroutes": extra["reroutes"][:2],
               "links": [{"id": 5, "origin_id": 1, "origin_slot": 2, "target_id": 2,
                          "target_slot": 1, "type": "VAE", "parentId": 2}]}
    layout = convert(objects).document["layout"]
    assert layout["reroutes"] == {"3": {"pos": [200, 0], "input": ["1", 2]},
                                  "4": {"pos": [400, 0], "input": ["3", 0]}}
    assert layout["nodes"]["2"]["via"] == {"vae": "4"}


def test_link_reroutes_around_subgraphs_are_reported():
    from tests.comfy_fixtures import comfy_default
    from tests.test_comfy_subgraphs import to_subgraph

    wf = to_subgraph(comfy_default(), {3, 8}, 20, "sg")
    wf["extra"] = {"reroutes": [{"id": 1, "pos": [0, 0], "linkIds": [1]}],
                   "linkExtensions": [{"id": 1, "parentId": 1}]}
    result = convert(wf)
    assert "reroutes" in result.document["layout"]  # the Reroute node on the VAE
    assert "1" not in result.document["layout"]["reroutes"]
    assert any("reroute points on links were left out" in w for w in result.warnings)


def test_the_ui_view_of_a_document_reads_back_with_its_looks_and_raw_values():
    """What a saved PNG's ``workflow`` chunk holds (engine.comfy_export) opens back, here
    and in ComfyUI, with the nodes' colours, flags and a missing node's raw values."""
    from engine.comfy_export import ui_view

    wf = {"nodes": [
        {"id": 1, "type": "EmptyLatentImage", "pos": [0, 0], "widgets_values": [64, 64, 1],
         "color": "#322", "bgcolor": "#533", "flags": {"collapsed": True, "pinned": True}},
        copy.deepcopy(UNKNOWN)], "links": []}
    document = convert(wf).document
    view = ui_view(document, SCHEMAS)
    by_id = {n["id"]: n for n in view["nodes"]}
    assert by_id[1]["bgcolor"] == "#553333" and by_id[1]["color"] == "#332222"
    assert by_id[1]["flags"] == {"collapsed": True, "pinned": True}
    assert by_id[5]["widgets_values"] == ["4x-Ultra.pth", 2.5, "lanczos"]
    back = convert(view).document["layout"]["nodes"]
    assert back["1"]["color"] == document["layout"]["nodes"]["1"]["color"]
    assert back["1"]["collapsed"] is True and back["1"]["pinned"] is True
    assert back["5"]["widgets_values"] == ["4x-Ultra.pth", 2.5, "lanczos"]


def test_the_ui_view_keeps_reroutes():
    """The veteran's walk: a PNG's ComfyUI ``workflow`` chunk linked VAE Decode straight to
    Save Image, losing the Reroute between them (our ``steerflow`` chunk kept it)."""
    from engine.comfy_export import ui_view

    wf = comfy_default()
    result = convert(wf)
    assert result.document["layout"].get("reroutes"), "the default graph has a Reroute"
    view = ui_view(result.document, SCHEMAS)
    reroutes = [n for n in view["nodes"] if n["type"] == "Reroute"]
    assert len(reroutes) == len(result.document["layout"]["reroutes"])
    # it reads back the same: the same prompt, the same reroutes and vias
    back = convert(view)
    assert back.prompt == result.prompt
    assert back.document["layout"]["reroutes"] == result.document["layout"]["reroutes"]
    vias = {n: p.get("via") for n, p in result.document["layout"]["nodes"].items() if p.get("via")}
    assert {n: p.get("via") for n, p in back.document["layout"]["nodes"].items()
            if p.get("via")} == vias
    # every link is consistent on both ends
    by_id = {n["id"]: n for n in view["nodes"]}
    for link_id, a, a_slot, b, b_slot, _ in view["links"]:
        assert link_id in by_id[a]["outputs"][a_slot]["links"]
        assert by_id[b]["inputs"][b_slot]["link"] == link_id


# --- saved back as ComfyUI's format (the canvas's workflow library) ----------------------

def test_saved_back_a_comfyui_file_keeps_its_notes_view_and_names():
    """A ComfyUI file opened here and saved back (engine.comfy_export) keeps its Note and
    MarkdownNote, its view, and shows ComfyUI's own names: the canvas titles every node,
    and a title that is the type's display name is written as none."""
    from engine.comfy_export import ui_view

    wf = comfy_default()
    wf["nodes"].append({"id": 13, "type": "MarkdownNote", "pos": [900, 40], "size": [300, 120],
                        "widgets_values": ["# heading"], "color": "#432", "bgcolor": "#653"})
    wf["extra"] = {"ds": {"offset": [10, -20], "scale": 0.8}}
    doc = convert(wf).document
    notes = doc["layout"]["notes"]
    assert notes["13"]["markdown"] is True and notes["13"]["text"] == "# heading"
    for nid, place in doc["layout"]["nodes"].items():  # as the canvas saves them
        place.setdefault("title", SCHEMAS[doc["prompt"][nid]["class_type"]]["display_name"])
    view = ui_view(doc, SCHEMAS)
    kinds = {n["id"]: n for n in view["nodes"]}
    assert kinds[13]["type"] == "MarkdownNote" and kinds[13]["widgets_values"] == ["# heading"]
    assert [n["type"] for n in view["nodes"]].count("Note") == 1
    assert not [n for n in view["nodes"] if "title" in n and n["title"] == SCHEMAS.get(
        n["type"], {}).get("display_name")]
    assert view["extra"]["ds"]["scale"] == 0.8
    assert [round(v, 6) for v in view["extra"]["ds"]["offset"]] == [10, -20]
    again = convert(view).document
    assert again["layout"]["notes"] == notes
    assert again["layout"]["viewport"] == doc["layout"]["viewport"]


def test_unpacked_subgraphs_are_said():
    from tests.test_comfy_subgraphs import to_subgraph

    result = convert(to_subgraph(comfy_default(), {3, 8}, 20, "a1b2"))
    assert any("subgraphs were unpacked" in w for w in result.warnings)
