"""ComfyUI's Autogrow (engine/autogrow.py): the /object_info entry of each growing node
exactly as ComfyUI's backend writes it, declaration checks, the slots through validation
and a real prompt, and the UI-workflow converter (the slots are links, never widgets)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine import Input, PromptValidationError
from engine.autogrow import AUTOGROW, autogrow
from engine.comfy_workflow import RegistrySchemas, convert_ui_workflow, node_def
from engine.node import NamedInputsNode, Output
from engine.session import Session
from tests.graph_nodes import CAPTURED, registry_with_capture


def template(kind: str, name: str, **body: Any) -> list[Any]:
    return [AUTOGROW, {"template": {"input": {"required": {name: [kind, {}]}}, **body}}]


@pytest.mark.parametrize(("type_id", "group", "entry"), [
    # ComfyUI: TemplatePrefix(io.Image.Input("image"), prefix="image", min=2, max=50) and
    # its kin; Create List's TemplatePrefix keeps the defaults (min 1, max 10)
    ("BatchImagesNode", "images", template("IMAGE", "image", prefix="image", min=2, max=50)),
    ("BatchMasksNode", "masks", template("MASK", "mask", prefix="mask", min=2, max=50)),
    ("BatchLatentsNode", "latents",
     template("LATENT", "latent", prefix="latent", min=2, max=50)),
    ("CreateList", "inputs", template("*", "input", prefix="input", min=1, max=10)),
])
def test_object_info_is_comfyuis(type_id: str, group: str, entry: list[Any]) -> None:
    cls = registry_with_capture().get(type_id)
    schema = json.loads(json.dumps(cls.schema(None)))  # as /object_info sends it
    assert schema["input"] == {"required": {group: entry}, "optional": {}}
    assert schema["input_order"] == {"required": [group], "optional": []}
    # one spec per slot for the engine: the first ``min`` required
    body = entry[1]["template"]
    slots = [f"{group}.{body['prefix']}{k}" for k in range(body["max"])]
    assert list(cls.INPUT_SPECS) == slots
    assert [s.required for s in cls.INPUT_SPECS.values()] == [
        k < body["min"] for k in range(body["max"])]
    assert node_def(schema).widgets == ()


def test_declarations_are_checked() -> None:
    image = Input(type="IMAGE")
    for kwargs, words in (({}, "either prefix or names"),
                          ({"prefix": "x", "names": ["a"]}, "either prefix or names"),
                          ({"prefix": "x", "max": 101}, "1 to 100 slots"),
                          ({"prefix": "x", "max": 0}, "1 to 100 slots"),
                          ({"prefix": "x", "min": 3, "max": 2}, "min must be 0 to 2"),
                          ({"prefix": "x", "min": -1}, "min must be 0 to 10"),
                          ({"names": ["a", "a"]}, "unique"),
                          ({"names": ["a.b"]}, "without a '.'"),
                          ({"names": [""]}, "non-empty")):
        with pytest.raises(TypeError, match=words):
            autogrow("g", "x", Any, image, **kwargs)


def test_named_slots_optional_template_and_primitive_sockets() -> None:
    class Grow(NamedInputsNode):
        TYPE = "TestGrowNamed"
        OUTPUTS = (Output("INT"),)

    specs = autogrow("nums", "num", int, Input(0, min=0, max=9, description="n"),
                     names=["x", "y", "z"], min=2)
    assert [(n, s.required, s.force_input, s.is_widget) for n, s in specs.items()] == [
        ("nums.x", True, True, False), ("nums.y", True, True, False),
        ("nums.z", False, True, False)]
    Grow.INPUT_SPECS = specs
    assert Grow.schema(None)["input"]["required"] == {"nums": [AUTOGROW, {"template": {
        "input": {"required": {"num": ["INT", {"default": 0, "min": 0, "max": 9,
                                               "tooltip": "n", "forceInput": True}]}},
        "names": ["x", "y", "z"], "min": 2}}]}
    loose = autogrow("opt", "v", Any, Input(type="FLOAT", optional=True), names=["a", "b"],
                     optional=True)
    assert [s.required for s in loose.values()] == [False, False]
    Grow.INPUT_SPECS = {**specs, **loose}
    schema = Grow.schema(None)
    assert schema["input"]["optional"] == {"opt": [AUTOGROW, {"template": {
        "input": {"optional": {"v": ["FLOAT", {"forceInput": True}]}}, "names": ["a", "b"],
        "min": 1}}]}
    assert schema["input_order"] == {"required": ["nums"], "optional": ["opt"]}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory, models_dir: Any) -> Session:
    return Session(tmp_path_factory.mktemp("grow"), models_dir=models_dir, device="cpu",
                   registry=registry_with_capture())


def batch_prompt(**links: str) -> dict[str, Any]:
    nodes: dict[str, Any] = {
        "red": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8,
                                                        "color": 0xFF0000}},
        "blue": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4,
                                                         "color": 0x0000FF}},
        "b": {"class_type": "BatchImagesNode", "inputs": {}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["b", 0], "key": "grow"}},
    }
    nodes["b"]["inputs"] = {f"images.{slot}": [source, 0] for slot, source in links.items()}
    return nodes


def test_slots_through_validation_and_a_run(session: Session) -> None:
    result = session.run(batch_prompt(image0="red", image1="blue", image4="red"))
    assert result.ok, result.run.error
    batch = CAPTURED.pop("grow")
    assert tuple(batch.shape) == (3, 8, 8, 3)
    assert batch[1, 0, 0].tolist() == [0.0, 0.0, 1.0]  # blue, fitted to the first's size
    with pytest.raises(PromptValidationError) as info:
        session.run(batch_prompt(image0="red", image2="blue"))
    missing = [(i.input_name, i.message) for i in info.value.issues if i.severity == "error"]
    assert [name for name, _ in missing] == ["images.image1"]


def test_ui_workflow_links_to_slots_convert(session: Session) -> None:
    """A workflow saved by ComfyUI's front end: the slots are links by name, no widgets."""
    node = {"flags": {}, "order": 0, "mode": 0, "properties": {}, "size": [300, 100]}
    workflow = {
        "last_node_id": 3, "last_link_id": 2, "groups": [], "config": {}, "extra": {},
        "version": 0.4,
        "nodes": [
            {**node, "id": 1, "type": "EmptyImage", "pos": [0, 0], "inputs": [],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1, 2]}],
             "widgets_values": [8, 8, 1, 0]},
            {**node, "id": 2, "type": "BatchImagesNode", "pos": [400, 0],
             "inputs": [{"name": f"images.image{k}", "type": "IMAGE",
                         "link": [1, 2, None][k]} for k in range(3)],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}],
             "widgets_values": []},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 1, 0, 2, 1, "IMAGE"]],
    }
    converted = convert_ui_workflow(workflow, RegistrySchemas(session.registry))
    assert converted.prompt["2"]["inputs"] == {"images.image0": ["1", 0],
                                               "images.image1": ["1", 0]}
