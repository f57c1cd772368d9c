"""ComfyUI subgraphs and legacy group nodes in UI-format files (engine.comfy_subgraphs):
flattened as ComfyUI's front end queues them, then converted as any other graph."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from engine import comfy_subgraphs
from engine.comfy_workflow import UNPACKED_SUBGRAPHS, convert_ui_workflow
from engine.registry import default_registry
from tests.comfy_fixtures import comfy_default, node, object_info

SCHEMAS = object_info()


def convert(wf):
    return convert_ui_workflow(wf, SCHEMAS)


def to_subgraph(wf: dict[str, Any], ids: set[int], instance_id: int, sg_id: str,
                name: str = "Sample and decode") -> dict[str, Any]:
    """``wf`` with the nodes ``ids`` moved into a subgraph, as the front end's "Convert to
    Subgraph" writes it: one subgraph input per outside source, one output per inside
    source read outside, and an instance node in their place."""
    wf = copy.deepcopy(wf)
    inner = [n for n in wf["nodes"] if n["id"] in ids]
    outer = [n for n in wf["nodes"] if n["id"] not in ids]
    links = [list(ln) for ln in wf["links"]]
    by_id = {n["id"]: n for n in wf["nodes"]}
    sg_links: list[dict[str, Any]] = []
    keep: list[list[Any]] = []
    ins: dict[tuple[int, int], int] = {}
    outs: dict[tuple[int, int], int] = {}
    instance = {"id": instance_id, "type": sg_id, "pos": inner[0]["pos"], "size": [300, 200],
                "mode": 0, "inputs": [], "outputs": [], "widgets_values": []}
    next_link = 1000
    for ln in links:
        lid, origin, oslot, target, tslot, kind = ln
        if origin in ids and target in ids:
            sg_links.append(_link_obj(ln))
        elif target in ids:  # into the subgraph
            if (origin, oslot) not in ins:
                ins[(origin, oslot)] = len(instance["inputs"])
                slot = by_id[target]["inputs"][tslot]
                entry = {"name": slot["name"], "type": kind, "link": lid}
                if "widget" in slot:
                    entry["widget"] = dict(slot["widget"])
                instance["inputs"].append(entry)
                keep.append([lid, origin, oslot, instance_id, ins[(origin, oslot)], kind])
            sg_links.append(_link_obj([lid + 5000, -10, ins[(origin, oslot)], target, tslot,
                                       kind]))
        elif origin in ids:  # out of it
            if (origin, oslot) not in outs:
                outs[(origin, oslot)] = len(instance["outputs"])
                instance["outputs"].append({"name": kind, "type": kind, "links": []})
                next_link += 1
                sg_links.append(_link_obj([next_link, origin, oslot, -20,
                                           outs[(origin, oslot)], kind]))
            keep.append([lid, instance_id, outs[(origin, oslot)], target, tslot, kind])
        else:
            keep.append(ln)
    definition = {
        "id": sg_id, "version": 1, "name": name, "revision": 0, "config": {},
        "inputNode": {"id": -10, "bounding": [0, 0, 120, 60]},
        "outputNode": {"id": -20, "bounding": [900, 0, 120, 60]},
        "inputs": [{"id": f"in-{k}", "name": s["name"], "type": s["type"], "linkIds": []}
                   for k, s in enumerate(instance["inputs"])],
        "outputs": [{"id": f"out-{k}", "name": s["name"], "type": s["type"], "linkIds": []}
                    for k, s in enumerate(instance["outputs"])],
        "widgets": [], "nodes": inner, "links": sg_links, "groups": [],
    }
    for n in inner:  # inner links keep their ids; the ones from outside get new ones
        for k, slot in enumerate(n.get("inputs") or []):
            for ln in sg_links:
                if ln["target_id"] == n["id"] and ln["target_slot"] == k:
                    slot["link"] = ln["id"]
    defs = copy.deepcopy(wf.get("definitions", {}).get("subgraphs", []))
    return {**wf, "nodes": [*outer, instance], "links": keep,
            "definitions": {"subgraphs": [*defs, definition]}}


def _link_obj(ln: list[Any]) -> dict[str, Any]:
    return dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"),
                    ln, strict=True))


def renamed(prompt: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    def fix(v: Any) -> Any:
        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
            return [mapping.get(v[0], v[0]), v[1]]
        return v

    return {mapping.get(k, k): {**e, "inputs": {n: fix(v) for n, v in e["inputs"].items()}}
            for k, e in prompt.items()}


def test_a_subgraph_runs_as_the_nodes_it_holds():
    flat = convert(comfy_default())
    wf = to_subgraph(comfy_default(), {3, 8}, 20, "a1b2")
    result = convert(wf)
    assert result.warnings == [UNPACKED_SUBGRAPHS]
    # ids are the instance path and the inner id, as ComfyUI's API prompts have them
    assert result.prompt == renamed(flat.prompt, {"3": "20:3", "8": "20:8"})
    assert result.prompt["20:3"]["inputs"]["seed"] == ["11", 0]  # the PrimitiveNode outside
    assert result.prompt["9"]["inputs"]["images"] == ["20:8", 0]
    layout = result.document["layout"]
    assert layout["nodes"]["20:3"]["pos"] == [863, 186]  # where the instance was
    assert any(g["title"] == "Sample and decode" for g in layout["groups"])


def test_nested_subgraphs_flatten_with_the_whole_path():
    inner = to_subgraph(comfy_default(), {3, 8}, 20, "sg-inner")
    outer = to_subgraph(inner, {20, 6, 7}, 21, "sg-outer", name="Prompt and sample")
    result = convert(outer)
    assert result.warnings == [UNPACKED_SUBGRAPHS]
    flat = convert(comfy_default()).prompt
    assert result.prompt == renamed(flat, {"3": "21:20:3", "8": "21:20:8", "6": "21:6",
                                           "7": "21:7"})


def test_an_unlinked_promoted_widget_gives_its_value_on_the_instance():
    wf = to_subgraph(comfy_default(), {3, 8}, 20, "sg")
    sg = wf["definitions"]["subgraphs"][0]
    sampler = next(n for n in sg["nodes"] if n["id"] == 3)
    # promote "steps": a subgraph input feeding the widget, shown on the instance
    sampler["inputs"].append({"name": "steps", "type": "INT", "widget": {"name": "steps"},
                              "link": 7001})
    sg["inputs"].append({"id": "in-steps", "name": "steps", "type": "INT",
                         "linkIds": [7001]})
    index = len(sg["inputs"]) - 1
    sg["links"].append(_link_obj([7001, -10, index, 3, len(sampler["inputs"]) - 1, "INT"]))
    instance = node(wf, 20)
    instance["inputs"].append({"name": "steps", "type": "INT", "widget": {"name": "steps"},
                               "link": None})
    # one value per promoted widget, also for one whose input is linked (seed, from the
    # PrimitiveNode outside): litegraph saves every widget's value
    instance["widgets_values"] = [1, 9]
    assert convert(wf).prompt["20:3"]["inputs"]["steps"] == 9


def test_proxy_widgets_set_the_inner_widgets():
    wf = to_subgraph(comfy_default(), {3, 8}, 20, "sg")
    instance = node(wf, 20)
    instance["properties"] = {"proxyWidgets": [["3", "cfg"], ["3", "sampler_name"]]}
    instance["widgets_values"] = [4.5, "dpmpp_2m"]
    inputs = convert(wf).prompt["20:3"]["inputs"]
    assert inputs["cfg"] == 4.5 and inputs["sampler_name"] == "dpmpp_2m"
    assert inputs["steps"] == 3  # not proxied: the inner node's own value
    # the front end's templates save proxies without values: the inner values stand
    instance["widgets_values"] = []
    assert convert(wf).prompt["20:3"]["inputs"]["cfg"] == 8


def test_a_bypassed_instance_passes_its_inputs_on_and_a_muted_one_mutes_its_nodes():
    # a subgraph LATENT -> LATENT (KSampler alone), bypassed: the decoder reads the
    # empty latent directly, as ComfyUI's front end resolves it
    wf = to_subgraph(comfy_default(), {3}, 20, "sg")
    node(wf, 20)["mode"] = 4
    result = convert(wf)
    assert "20:3" not in result.prompt
    assert result.prompt["8"]["inputs"]["samples"] == ["5", 0]
    node(wf, 20)["mode"] = 2
    result = convert(wf)
    assert result.prompt["20:3"]["mode"] == "muted"


def test_an_input_passed_straight_to_an_output():
    wf = to_subgraph(comfy_default(), {3}, 20, "sg")
    sg = wf["definitions"]["subgraphs"][0]
    # the subgraph's output 0 now comes from its input 3 (the latent) unchanged
    latent_in = next(k for k, i in enumerate(sg["inputs"]) if i["type"] == "LATENT")
    sg["links"] = [ln for ln in sg["links"] if ln["target_id"] != -20]
    sg["links"].append(_link_obj([8000, -10, latent_in, -20, 0, "LATENT"]))
    assert convert(wf).prompt["8"]["inputs"]["samples"] == ["5", 0]


def test_broken_and_hostile_definitions_are_reported_not_raised(monkeypatch):
    wf = to_subgraph(comfy_default(), {3, 8}, 20, "loop")
    sg = wf["definitions"]["subgraphs"][0]
    sg["nodes"].append({"id": 99, "type": "loop", "pos": [0, 0]})  # contains itself
    result = convert(wf)
    assert any("contains itself" in w for w in result.warnings)
    assert "20:3" in result.prompt
    for junk in (None, 7, "x", [1, 2], {"nodes": 5, "links": "no"}):
        bad = copy.deepcopy(wf)
        bad["definitions"]["subgraphs"][0]["links"] = junk
        bad["definitions"]["subgraphs"][0]["inputs"] = junk
        convert(bad)  # nothing raised
    # nested instances multiply: the node count is bounded
    monkeypatch.setattr(comfy_subgraphs, "MAX_FLAT_NODES", 5)
    result = convert(to_subgraph(comfy_default(), {3, 8}, 20, "sg"))
    assert any("more than 5 nodes" in w for w in result.warnings)


def test_a_legacy_group_node():
    """``workflow>Name`` nodes: the inner nodes' widget values one after another."""
    wf = comfy_default()
    ksampler = copy.deepcopy(node(wf, 3))
    latent = copy.deepcopy(node(wf, 5))
    for n, index in ((latent, 0), (ksampler, 1)):
        n.pop("id")
        n["index"] = index
        for slot in n.get("inputs", []):
            slot["link"] = None
    ksampler["inputs"] = [s for s in ksampler["inputs"] if "widget" not in s]
    wf["extra"]["groupNodes"] = {"LatentAndSample": {
        "nodes": [latent, ksampler],
        "links": [[None, 0, 1, 0, 1, "MODEL"], [None, 0, 1, 1, 4, "CONDITIONING"],
                  [None, 0, 1, 2, 6, "CONDITIONING"], [0, 0, 1, 3, 2, "LATENT"]],
        "external": [], "config": {}}}
    wf["nodes"] = [n for n in wf["nodes"] if n["id"] not in (3, 5, 11)]
    wf["nodes"].append({
        "id": 30, "type": "workflow>LatentAndSample", "pos": [500, 500], "mode": 0,
        "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                   {"name": "positive", "type": "CONDITIONING", "link": 4},
                   {"name": "negative", "type": "CONDITIONING", "link": 6}],
        "outputs": [{"name": "LATENT", "type": "LATENT", "links": [7]}],
        "widgets_values": [96, 64, 2, 5, "fixed", 12, 6.5, "dpmpp_2m", "karras", 1]})
    wf["links"] = [[1, 4, 0, 30, 0, "MODEL"], [4, 6, 0, 30, 1, "CONDITIONING"],
                   [6, 7, 0, 30, 2, "CONDITIONING"], [7, 30, 0, 8, 0, "LATENT"],
                   *[ln for ln in wf["links"] if ln[0] in (3, 5, 9, 10, 11)]]
    result = convert(wf)
    assert result.warnings == [UNPACKED_SUBGRAPHS]
    p = result.prompt
    assert p["30:0"]["inputs"] == {"width": 96, "height": 64, "batch_size": 2}
    assert p["30:1"]["inputs"] == {
        "seed": 5, "steps": 12, "cfg": 6.5, "sampler_name": "dpmpp_2m",
        "scheduler": "karras", "denoise": 1, "model": ["4", 0], "positive": ["6", 0],
        "negative": ["7", 0], "latent_image": ["30:0", 0]}
    assert p["8"]["inputs"]["samples"] == ["30:1", 0]
    assert result.document["layout"]["nodes"]["30:1"]["control"] == {"seed": "fixed"}
    # without its definition it is left out, saying why
    del wf["extra"]["groupNodes"]
    assert any("does not hold" in w for w in convert(wf).warnings)


def test_the_flattened_prompt_validates(tmp_path):
    from engine.environment import Environment
    from engine.validation import PromptValidationError, validate_prompt

    wf = to_subgraph(comfy_default(ckpt="not-there.safetensors"), {3, 8}, 20, "sg")
    node(wf, 20)["mode"] = 0
    prompt = convert(wf).prompt
    env = Environment.create(str(tmp_path), device="cpu")
    with pytest.raises(PromptValidationError) as info:  # only the missing checkpoint
        validate_prompt(prompt, default_registry(), env)
    assert [i.input_name for i in info.value.issues] == ["ckpt_name"]


def test_values_saved_by_name_win_over_positions():
    """Newer front ends add ``widgets_values_named``; it survives a schema whose widget
    order differs from the file's."""
    wf = comfy_default()
    sampler = node(wf, 3)
    sampler["inputs"][4]["link"] = None  # the seed its own widget (no PrimitiveNode)
    sampler["widgets_values"] = [1, "fixed", 99, 99, "euler", "normal", 1]  # stale order
    sampler["widgets_values_named"] = {"seed": 1, "control_after_generate": "increment",
                                       "steps": 4, "cfg": 6.0, "sampler_name": "ddim",
                                       "scheduler": "karras", "denoise": 0.5}
    result = convert(wf)
    inputs = result.prompt["3"]["inputs"]
    assert (inputs["steps"], inputs["cfg"], inputs["sampler_name"], inputs["denoise"]) == (
        4, 6.0, "ddim", 0.5)
    assert result.document["layout"]["nodes"]["3"]["control"] == {"seed": "increment"}
    # a subgraph instance's promoted widgets by name
    wf = to_subgraph(comfy_default(), {3, 8}, 20, "sg")
    sg = wf["definitions"]["subgraphs"][0]
    sampler = next(n for n in sg["nodes"] if n["id"] == 3)
    sampler["inputs"].append({"name": "steps", "type": "INT", "widget": {"name": "steps"},
                              "link": 7001})
    sg["inputs"].append({"id": "in-steps", "name": "steps", "type": "INT", "linkIds": []})
    sg["links"].append(_link_obj([7001, -10, len(sg["inputs"]) - 1, 3,
                                  len(sampler["inputs"]) - 1, "INT"]))
    node(wf, 20)["inputs"].append({"name": "steps", "type": "INT",
                                   "widget": {"name": "steps"}, "link": None})
    node(wf, 20)["widgets_values_named"] = {"steps": 11}
    assert convert(wf).prompt["20:3"]["inputs"]["steps"] == 11
    # an older instance: a control value after the promoted seed
    node(wf, 20).pop("widgets_values_named")
    seed_in = next(k for k, i in enumerate(sg["inputs"]) if i["name"] == "seed")
    node(wf, 20)["inputs"][seed_in]["link"] = None  # no PrimitiveNode: the widget's value
    node(wf, 20)["widgets_values"] = [777, "fixed", 12]
    inputs = convert(wf).prompt["20:3"]["inputs"]
    assert (inputs["seed"], inputs["steps"]) == (777, 12)
