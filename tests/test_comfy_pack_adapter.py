"""ComfyUI behaviours real packs rely on (tests/fixtures-free: the packs are written
here): inputs a node takes without declaring them (rgthree's flexible inputs, ComfyUI's
variadic nodes), outputs past RETURN_TYPES (rgthree's Power Puter), ComfyUI's UI
workflow in EXTRA_PNGINFO (pysssss' Show Text), GraphBuilder's display ids (ComfyUI's
while loop) and constants for types without a widget ("IMAGE,FLOAT", "INT:seed")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.registry import NodeRegistry
from engine.session import Session
from engine.validation import PromptValidationError
from tests.comfy_fixtures import pack_registry

PACK = '''
import json
import torch
from comfy_execution.graph_utils import GraphBuilder, is_link


class AnyType(str):
    def __ne__(self, other):
        return False


ANY = AnyType("*")


class Flexible(dict):
    """rgthree's FlexibleOptionalInputType: claims every name."""
    def __init__(self, kind, data=None):
        self.kind = kind
        self.data = data or {}
        for k, v in self.data.items():
            self[k] = v

    def __getitem__(self, key):
        return self.data[key] if key in self.data else (self.kind,)

    def __contains__(self, key):
        return True


class ByPass(tuple):
    """rgthree's ByPassTypeTuple: "*" past the end."""
    def __getitem__(self, index):
        if index > len(self) - 1:
            return AnyType("*")
        return super().__getitem__(index)


class Blank:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 8})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    def run(self, size):
        return (torch.zeros(1, size, size, 3),)


class Number:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT", {"default": 0.0})}}
    RETURN_TYPES = ("FLOAT", "INT")
    FUNCTION = "run"
    def run(self, value):
        return (value, int(value))


class Show:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (ANY,)}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    def run(self, value):
        return {"ui": {"text": [repr(value)]}}


class Switch:
    """Any Switch: the first set of any_01, any_02, ... (all undeclared)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": Flexible(ANY)}
    RETURN_TYPES = (ANY,)
    FUNCTION = "run"
    def run(self, **kwargs):
        for key in sorted(kwargs):
            if key.startswith("any_") and kwargs[key] is not None:
                return (kwargs[key],)
        return (None,)


class Stack:
    """Power Lora Loader: dict constants under names it never declares."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"base": ("FLOAT", {"default": 1.0})},
                "optional": Flexible(ANY)}
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"
    def run(self, base, **kwargs):
        total = base
        for key, value in sorted(kwargs.items()):
            if key.startswith("item_") and value.get("on"):
                total += value["strength"]
        return (total,)


class Average:
    """ComfyUI's TestVariadicAverage: input2, input3, ... are linked, never declared."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"input1": ("FLOAT", {"forceInput": True})}}
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"
    def run(self, input1, **kwargs):
        values = [input1]
        while f"input{len(values) + 1}" in kwargs:
            values.append(kwargs[f"input{len(values) + 1}"])
        return (sum(values) / len(values),)


class Puter:
    """Power Puter: one declared output, as many returned as the workflow wants."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("FLOAT", {"forceInput": True}),
                             "count": ("INT", {"default": 1})}}
    RETURN_TYPES = ByPass((ANY,))
    RETURN_NAMES = ByPass(("*",))
    FUNCTION = "run"
    def run(self, a, count):
        return tuple(a * (i + 1) for i in range(count))


class FloatIn:
    """One FLOAT socket; subclasses return more, fewer or no tuple of outputs."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("FLOAT", {"forceInput": True})}}
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"


class TwoForOne(FloatIn):
    def run(self, a):
        return (a, a)


class OneForTwo(FloatIn):
    RETURN_TYPES = ("FLOAT", "STRING")
    def run(self, a):
        return (a,)


class Listed:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}
    RETURN_TYPES = ("FLOAT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"
    def run(self):
        return ([1.0, 2.0],)


class BareValue(FloatIn):
    def run(self, a):
        return a


class ShowText:
    """pysssss' Show Text: writes its text into the UI workflow's node."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True})},
                "hidden": {"unique_id": "UNIQUE_ID", "extra_pnginfo": "EXTRA_PNGINFO"}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    def run(self, text, unique_id=None, extra_pnginfo=None):
        seen = "none"
        if extra_pnginfo is not None:
            workflow = extra_pnginfo["workflow"]
            node = next(n for n in workflow["nodes"] if str(n["id"]) == str(unique_id))
            node["widgets_values"] = [text]
            seen = json.dumps(workflow, default=str)
        return {"ui": {"text": [seen]}, "result": (text,)}


class Words:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hi"}),
                             "seed": ("INT", {"default": 0}),
                             "mode": (["a", "b"],),
                             "image": ("IMAGE",)},
                "optional": {"extra": ("FLOAT", {"default": 1.0})}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    def run(self, text, seed, mode, image=None, extra=1.0):
        return (text,)


class Count:
    """A loop in ComfyUI's while-loop style: expands into a clone of its body that
    shows as the original nodes (set_override_display_id)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}), "limit": ("INT", {})},
                "hidden": {"dynprompt": "DYNPROMPT", "unique_id": "UNIQUE_ID"}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    def run(self, value, limit, dynprompt, unique_id):
        if value >= limit:
            return (value,)
        g = GraphBuilder()
        source = dynprompt.get_node(unique_id)["inputs"]["value"][0]
        inc = g.node(dynprompt.get_node(source)["class_type"], "inc")
        inc.set_override_display_id(source)
        for key, item in dynprompt.get_node(source)["inputs"].items():
            inc.set_input(key, item)
        assert inc.get_input("amount") == 1 and inc.get_input("missing") is None
        inc.set_input("value", value)
        again = g.node("Count", "again", value=inc.out(0), limit=limit)
        again.set_override_display_id(unique_id)
        assert again.override_display_id == unique_id
        return {"result": (again.out(0),), "expand": g.finalize()}


class Inc:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0}), "amount": ("INT", {"default": 1})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    def run(self, value, amount):
        return (value + amount,)


class Multi:
    """ComfyUI's TestCustomValidation1 shape: a type with no widget, constants allowed."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"input1": ("IMAGE,FLOAT",), "input2": ("IMAGE,FLOAT",)}}
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"
    def run(self, input1, input2):
        return (input1 * input2,)
    @classmethod
    def VALIDATE_INPUTS(cls, input1=None, input2=None):
        if input1 is not None and not isinstance(input1, (torch.Tensor, float)):
            return f"Invalid type of input1: {type(input1)}"
        return True


class Seeded:
    """ComfyUI_essentials' "INT:seed" inputs."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT:seed", {"default": 0, "min": 0,
                                                   "max": 0xffffffffffffffff}),
                             "image": ("IMAGE",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    def run(self, seed, image=None):
        return (seed,)


NODE_CLASS_MAPPINGS = {n: globals()[n] for n in (
    "Blank", "Number", "Show", "Switch", "Stack", "Average", "Puter", "TwoForOne", "OneForTwo",
    "Listed", "BareValue", "ShowText", "Words", "Count", "Inc", "Multi", "Seeded")}
'''


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> NodeRegistry:
    import nodes.image
    import nodes.latent

    registry = pack_registry(tmp_path_factory.mktemp("custom_nodes"),
                             {"adapter_test_pack.py": PACK}, nodes.image, nodes.latent)
    assert not registry.errors, registry.errors
    return registry


@pytest.fixture
def session(registry: NodeRegistry, tmp_path: Path) -> Session:
    return Session(tmp_path, device="cpu", registry=registry)


def n(kind: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": kind, "inputs": inputs}


def shown(result: Any, node_id: str) -> str:
    assert result.ok, result.run.error
    return result.run.outputs[node_id]["text"][0]


def errors(session: Session, prompt: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    with pytest.raises(PromptValidationError) as caught:
        session.validate(prompt)
    return [(i.kind, i.node_id, i.message) for i in caught.value.issues if i.severity == "error"]


# --- D1: inputs taken without being declared -----------------------------------------

def test_undeclared_inputs_reach_the_node_as_in_comfyui(session: Session):
    # a flexible section: linked and constant inputs, any name
    result = session.run({"1": n("Number", value=5.0), "2": n("Switch", any_02=["1", 0]),
                          "3": n("Show", value=["2", 0])})
    assert shown(result, "3") == "5.0" and not result.warnings
    result = session.run({"1": n("Stack", base=1.0, item_1={"on": True, "strength": 0.5},
                                 item_2={"on": False, "strength": 9.0}),
                          "2": n("Show", value=["1", 0])})
    assert shown(result, "2") == "1.5" and not result.warnings
    # ComfyUI's variadic node: undeclared *linked* inputs are passed ...
    prompt = {"1": n("Number", value=0.0), "2": n("Number", value=1.0),
              "3": n("Average", input1=["1", 0], input2=["2", 0], input3=["2", 0]),
              "4": n("Show", value=["3", 0])}
    assert float(shown(session.run(prompt), "4")) == pytest.approx(2 / 3)
    # ... an undeclared constant is not (ComfyUI drops it; we also warn)
    prompt["3"]["inputs"]["input2"] = 1.0
    result = session.run(prompt)
    assert shown(result, "4") == "0.0"
    assert [w.kind for w in result.warnings] == ["unknown_input"]


def test_undeclared_links_are_still_checked_and_ordered(session: Session):
    # a link to a node that is not there, or to an output it does not have
    found = errors(session, {"1": n("Number", value=1.0),
                             "2": n("Average", input1=["1", 0], input2=["9", 0]),
                             "3": n("Show", value=["2", 0])})
    assert [(k, nid) for k, nid, _ in found] == [("bad_link", "2")]
    found = errors(session, {"1": n("Number", value=1.0),
                             "2": n("Average", input1=["1", 0], input2=["1", 5]),
                             "3": n("Show", value=["2", 0])})
    assert [(k, nid) for k, nid, _ in found] == [("bad_link", "2")]
    # a cycle through an undeclared link
    found = errors(session, {"1": n("Average", input1=["2", 0]),
                             "2": n("Average", input1=["3", 0], input2=["1", 0]),
                             "3": n("Number", value=1.0), "4": n("Show", value=["2", 0])})
    assert {k for k, _, _ in found} == {"cycle"}
    # the source of an undeclared link runs first, and only the run's nodes are used
    vp = session.validate({"3": n("Show", value=["2", 0]),
                           "2": n("Average", input1=["1", 0], input2=["1", 1]),
                           "1": n("Number", value=1.0)})
    assert vp.order == ["1", "2", "3"] and vp.nodes["2"].links["input2"] == ("1", 1)


def test_builtin_nodes_still_ignore_unknown_inputs(session: Session):
    vp = session.validate({"1": n("EmptyLatentImage", width=64, height=64, batch_size=1,
                                  bogus=["2", 0]),
                           "2": n("Number", value=1.0),
                           "3": n("Show", value=["1", 0])})
    assert [w.kind for w in vp.warnings] == ["unknown_input"]
    assert "bogus" not in vp.nodes["1"].links and "bogus" not in vp.nodes["1"].constants


def test_the_front_ends_upload_buttons_are_dropped_silently(session: Session):
    """ComfyUI's front end writes its upload button into every Load Image node's inputs
    ("upload" / "choose file to upload"): not a warning on every prompt; on a node with
    no upload input it is still one."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(session.env.folder("input", create=True) / "up.png")
    prompt = {"1": n("LoadImage", image="up.png", upload="image"),
              "2": n("LoadImage", image="up.png", **{"choose file to upload": "image"}),
              "3": n("PreviewImage", images=["1", 0]), "4": n("PreviewImage", images=["2", 0])}
    assert session.validate(prompt).warnings == []
    vp = session.validate({"1": n("EmptyLatentImage", width=64, height=64, batch_size=1,
                                  upload="image"),
                           "3": n("Show", value=["1", 0])})
    assert [w.kind for w in vp.warnings] == ["unknown_input"]


# --- D2: outputs past RETURN_TYPES -----------------------------------------------------

def test_outputs_past_return_types_for_a_bypass_tuple(session: Session):
    result = session.run({"1": n("Number", value=2.0), "2": n("Puter", a=["1", 0], count=3),
                          "3": n("Show", value=["2", 2]), "4": n("Show", value=["2", 0])})
    assert shown(result, "3") == "6.0" and shown(result, "4") == "2.0"
    # a link past what the node returned gets None, as in ComfyUI
    result = session.run({"1": n("Number", value=2.0), "2": n("Puter", a=["1", 0], count=1),
                          "3": n("Show", value=["2", 1])})
    assert shown(result, "3") == "None"


def test_ordinary_nodes_keep_a_fixed_output_count(session: Session):
    found = errors(session, {"1": n("Number", value=2.0), "2": n("TwoForOne", a=["1", 0]),
                             "3": n("Show", value=["2", 1])})
    assert [(k, nid) for k, nid, _ in found] == [("bad_link", "3")]
    # a value past RETURN_TYPES is dropped, as ComfyUI does
    result = session.run({"1": n("Number", value=2.0), "2": n("TwoForOne", a=["1", 0]),
                          "3": n("Show", value=["2", 0])})
    assert shown(result, "3") == "2.0"


def test_a_node_returning_fewer_values_than_declared_fails_only_where_one_is_used(
        session: Session):
    """Comfyroll's CR Text Concatenate declares 2 outputs and returns 1: ComfyUI runs it,
    and so do we; only a link to the output it did not return fails, saying so."""
    result = session.run({"1": n("Number", value=2.0), "2": n("OneForTwo", a=["1", 0]),
                          "3": n("Show", value=["2", 0])})
    assert shown(result, "3") == "2.0"
    result = session.run({"1": n("Number", value=3.0), "2": n("OneForTwo", a=["1", 0]),
                          "3": n("Show", value=["2", 1])})
    assert result.run.status == "error" and result.run.error["node_id"] == "3"
    message = result.run.error["exception_message"]
    assert "output 1 of node 2" in message and "returned 1 of the 2 values" in message
    # run once per list item: the missing output is a list of what was not returned
    result = session.run({"1": n("Listed"), "2": n("OneForTwo", a=["1", 0]),
                          "3": n("Show", value=["2", 1])})
    assert result.run.status == "error" and result.run.error["node_id"] == "3"
    assert "output 1 of node 2" in result.run.error["exception_message"]
    result = session.run({"1": n("Number", value=3.0), "2": n("BareValue", a=["1", 0]),
                          "3": n("Show", value=["2", 0])})
    assert "returned a float, not a tuple" in result.run.error["exception_message"]


# --- D4: ComfyUI's UI workflow in EXTRA_PNGINFO -----------------------------------------

def test_extra_pnginfo_is_comfyuis_ui_workflow(session: Session):
    from engine.workflow import prompt_to_document

    prompt = {"1": n("Words", text="hello", seed=7, mode="b", image=["4", 0]),
              "2": n("ShowText", text=["1", 0]),
              "3": n("SaveImage", images=["4", 0], filename_prefix="t"),
              "4": n("Blank", size=8)}
    prompt["1"]["_meta"] = {"title": "My words"}
    document = prompt_to_document(prompt, layout={"nodes": {
        "1": {"pos": [10, 20], "size": [300, 100], "control": {"seed": "randomize"}}}})
    result = session.run(prompt, extra={"extra_pnginfo": {"workflow": document}})
    workflow = json.loads(shown(result, "2"))
    nodes = {node["id"]: node for node in workflow["nodes"]}
    words = nodes[1]
    assert words["type"] == "Words" and words["title"] == "My words"
    assert words["size"] == [300, 100] and words["mode"] == 0
    # its place, moved right of the Blank node laid out at the origin (which it covered:
    # ComfyUI's front end would draw them on top of each other)
    assert words["pos"][1] == 20 and words["pos"][0] >= nodes[4]["pos"][0] + nodes[4]["size"][0]
    # ComfyUI's widget order: text, seed + its control, mode, extra (image is a socket)
    assert words["widgets_values"] == ["hello", 7, "randomize", "b", 1.0]
    assert [s["name"] for s in words["inputs"]] == ["image"]
    assert nodes[2]["widgets_values"] == ["hello"]  # what Show Text wrote
    link = words["inputs"][0]["link"]
    assert [link, 4, 0, 1, 0, "IMAGE"] in workflow["links"]
    assert link in nodes[4]["outputs"][0]["links"]
    # Steerflow's own PNG carries Steerflow's document beside ComfyUI's view of it
    from PIL import Image

    text = Image.open(result.image_paths[0]).text
    assert json.loads(text["steerflow"])["format"] == "steerflow.workflow"
    assert {n["type"] for n in json.loads(text["workflow"])["nodes"]} >= {"Words"}


def test_extra_pnginfo_passes_comfyui_workflows_and_none_through(session: Session):
    ui = {"nodes": [{"id": 2, "type": "ShowText", "widgets_values": []}], "links": []}
    prompt = {"1": n("Words", text="x", seed=1, mode="a", image=["3", 0]),
              "2": n("ShowText", text=["1", 0]),
              "3": n("Blank", size=8)}
    result = session.run(prompt, extra={"extra_pnginfo": {"workflow": ui}})
    assert json.loads(shown(result, "2")) == {
        "nodes": [{"id": 2, "type": "ShowText", "widgets_values": ["x"]}], "links": []}
    prompt["1"]["inputs"]["text"] = "y"  # not from the cache
    run = session.executor.run(prompt, extra={})  # an API client that sends none
    assert run.status == "success" and run.outputs["2"]["text"] == ["none"]


# --- D7: GraphBuilder nodes' display ids --------------------------------------------------

def test_graph_builder_display_ids_follow_comfyui(session: Session):
    events: list[tuple[str, dict[str, Any]]] = []
    result = session.run({"1": n("Inc", value=0, amount=1), "2": n("Count", value=["1", 0],
                                                                   limit=4),
                          "3": n("Show", value=["2", 0])},
                         on_event=lambda name, data: events.append((name, data)))
    assert shown(result, "3") == "4"
    shown_as = {(d["node"], d["display_node"]) for name, d in events
                if name == "executing" and d["node"] is not None}
    clones = {(node, display) for node, display in shown_as if "." in node}
    assert clones and {display for _, display in clones} == {"1", "2"}
    # each clone shows as the prompt node it copies, however deep the loop went
    incs = [node for node, display in clones if display == "1"]
    counts = [node for node, display in clones if display == "2"]
    assert len(incs) == 3 and len(counts) == 3


# --- D11: constants for types without a widget -------------------------------------------

def test_constants_for_types_without_a_widget_pass_on(session: Session):
    result = session.run({"1": n("Multi", input1=0.5, input2=2.0),
                          "2": n("Show", value=["1", 0])})
    assert shown(result, "2") == "1.0"
    found = errors(session, {"1": n("Multi", input1="text", input2=2.0),
                             "2": n("Show", value=["1", 0])})
    assert [k for k, _, _ in found] == ["node_error"]  # VALIDATE_INPUTS judged it
    image = n("Blank", size=8)
    # "INT:seed": a constant, or a link from an INT
    result = session.run({"1": n("Seeded", seed=42, image=["9", 0]), "9": image,
                          "2": n("Show", value=["1", 0])})
    assert shown(result, "2") == "42"
    result = session.run({"1": n("Number", value=3.0), "9": image,
                          "2": n("Seeded", seed=["1", 1], image=["9", 0]),
                          "3": n("Show", value=["2", 0])})
    assert shown(result, "3") == "3"
    found = errors(session, {"1": n("Number", value=3.0), "9": image,
                             "2": n("Seeded", seed=["1", 0], image=["9", 0]),
                             "3": n("Show", value=["2", 0])})
    assert [k for k, _, _ in found] == ["type_mismatch"]  # a FLOAT is not an INT
    # an object type Steerflow knows still wants a link
    found = errors(session, {"1": n("Seeded", seed=1, image=0.5), "2": n("Show", value=["1", 0])})
    assert [k for k, _, _ in found] == ["expected_link"]


def test_int_seed_types_in_schemas_and_comfyui_workflows(registry: NodeRegistry):
    from engine.comfy_workflow import RegistrySchemas, convert_ui_workflow

    schema = registry.get("Seeded").schema(None)
    assert schema["input"]["required"]["seed"][0] == "INT:seed"  # as INPUT_TYPES says
    ui = {"nodes": [{"id": 1, "type": "Seeded", "widgets_values": [5, "randomize"],
                     "inputs": [], "outputs": []}], "links": []}
    converted = convert_ui_workflow(ui, RegistrySchemas(registry))
    assert converted.prompt["1"]["inputs"] == {"seed": 5}
    assert converted.document["layout"]["nodes"]["1"]["control"] == {"seed": "randomize"}
