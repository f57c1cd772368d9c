"""ComfyUI's V3 dynamic inputs (``io.Autogrow``, ``io.DynamicCombo``) in a pack: they
load as the engine's own Autogrow and DynamicCombo, show ComfyUI's V1 entries in
/object_info, validate their expanded inputs (``texts.text0``, ``mode.factor``) and
reach ``execute`` nested as ComfyUI passes them; a nested one fails its node only."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.registry import NodeRegistry
from engine.session import Session
from tests.comfy_fixtures import pack_registry
from tests.test_comfy_pack_adapter import errors, n, shown

PACK = '''
from comfy_api.latest import io

SEEN = []


class Say(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DynSay", inputs=[io.String.Input("text", default="")],
                         outputs=[io.String.Output()])

    @classmethod
    def execute(cls, text):
        return io.NodeOutput(text)


class Join(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        template = io.Autogrow.TemplatePrefix(io.String.Input("text"), prefix="text",
                                              min=1, max=5)
        return io.Schema(node_id="DynJoin", is_output_node=True,
                         inputs=[io.Autogrow.Input("texts", template=template),
                                 io.String.Input("sep", default="+")],
                         outputs=[io.String.Output()])

    @classmethod
    def validate_inputs(cls, texts, sep):
        SEEN.append(("validate", dict(texts), sep))
        return True

    @classmethod
    def execute(cls, texts, sep):
        SEEN.append(("execute", list(texts)))
        joined = sep.join(texts[k] for k in sorted(texts))
        return io.NodeOutput(joined, ui={"text": [joined]})


class Total(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        template = io.Autogrow.TemplateNames(io.Int.Input("v", min=0, max=100),
                                             names=["a", "b", "c"], min=0)
        return io.Schema(node_id="DynTotal", is_output_node=True,
                         inputs=[io.Autogrow.Input("values", template=template)],
                         outputs=[io.Int.Output()])

    @classmethod
    def execute(cls, values):
        return io.NodeOutput(sum(values.values()), ui={"text": [repr(values)]})


class Scale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DynScale", is_output_node=True, inputs=[
            io.Int.Input("value", default=3, min=0, max=1000),
            io.DynamicCombo.Input("mode", tooltip="how to change it", options=[
                io.DynamicCombo.Option("multiply", [
                    io.Float.Input("factor", default=2.0, min=0.0, max=10.0)]),
                io.DynamicCombo.Option("add", [
                    io.Int.Input("amount", default=1, min=-5, max=5),
                    io.Combo.Input("sign", options=["+", "-"], default="+")]),
            ])], outputs=[io.Float.Output()])

    @classmethod
    def execute(cls, value, mode):
        if mode["mode"] == "multiply":
            out = value * mode["factor"]
        else:
            out = value + (mode["amount"] if mode["sign"] == "+" else -mode["amount"])
        return io.NodeOutput(float(out), ui={"text": [f"{sorted(mode.items())}={out}"]})


class Sharpen(io.ComfyNode):
    """KJNodes' Image Sharpen: options bound the input they share differently."""
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DynSharpen", is_output_node=True, inputs=[
            io.DynamicCombo.Input("method", options=[
                io.DynamicCombo.Option("rcas", [
                    io.Float.Input("strength", default=0.8, min=0.0, max=1.0)]),
                io.DynamicCombo.Option("usm", [
                    io.Float.Input("strength", default=0.5, min=0.0, max=3.0),
                    io.Float.Input("radius", default=1.0, min=0.5, max=5.0)]),
            ])], outputs=[io.Float.Output()])

    @classmethod
    def execute(cls, method):
        return io.NodeOutput(method["strength"], ui={"text": [repr(method["strength"])]})


class Number(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DynNumber", inputs=[io.Float.Input("value", max=100.0)],
                         outputs=[io.Float.Output()])

    @classmethod
    def execute(cls, value):
        return io.NodeOutput(value)


class Nested(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        grow = io.Autogrow.Input("xs", template=io.Autogrow.TemplatePrefix(
            io.Int.Input("x"), prefix="x"))
        return io.Schema(node_id="DynNested", inputs=[io.DynamicCombo.Input(
            "pick", options=[io.DynamicCombo.Option("grow", [grow])])])

    @classmethod
    def execute(cls, pick):
        return io.NodeOutput()


NODE_CLASS_MAPPINGS = {"DynSay": Say, "DynJoin": Join, "DynTotal": Total,
                       "DynScale": Scale, "DynNested": Nested, "DynSharpen": Sharpen,
                       "DynNumber": Number}
'''


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> NodeRegistry:
    return pack_registry(tmp_path_factory.mktemp("custom_nodes"),
                         {"v3_dynamic_pack.py": PACK})


@pytest.fixture
def session(registry: NodeRegistry, tmp_path: Path) -> Session:
    return Session(tmp_path, device="cpu", registry=registry)


def seen() -> list:
    import sys

    return sys.modules["steerflow_custom_nodes.v3_dynamic_pack"].SEEN


def test_they_load_and_a_nested_one_fails_only_its_node(registry: NodeRegistry):
    assert {"DynSay", "DynJoin", "DynTotal", "DynScale"} <= set(registry.classes)
    assert "DynNested" not in registry
    message = " ".join(e.message for e in registry.errors)
    assert "DynNested" in message and "not supported" in message


def test_object_info_lists_comfyuis_entries(registry: NodeRegistry, tmp_path: Path):
    from engine.environment import Environment

    env = Environment.create(tmp_path, device="cpu")
    join = registry.get("DynJoin").schema(env)
    assert join["input"]["required"]["texts"] == ["COMFY_AUTOGROW_V3", {"template": {
        "input": {"required": {"text": ["STRING", {"multiline": False, "forceInput": True}]}},
        "prefix": "text", "min": 1, "max": 5}}]
    assert join["input_order"]["required"] == ["texts", "sep"]
    total = registry.get("DynTotal").schema(env)["input"]["required"]["values"]
    assert total[1]["template"]["names"] == ["a", "b", "c"]
    mode = registry.get("DynScale").schema(env)["input"]["required"]["mode"]
    assert mode[0] == "COMFY_DYNAMICCOMBO_V3"
    assert mode[1]["tooltip"] == "how to change it"
    assert [o["key"] for o in mode[1]["options"]] == ["multiply", "add"]
    assert mode[1]["options"][1]["inputs"]["required"]["sign"] == [
        "COMBO", {"default": "+", "multiselect": False, "options": ["+", "-"]}]


def test_autogrow_slots_reach_execute_as_one_dict(session: Session):
    seen().clear()
    prompt = {"a": n("DynSay", text="x"), "b": n("DynSay", text="y"),
              "j": n("DynJoin", **{"texts.text0": ["a", 0], "texts.text2": ["b", 0]},
                     sep="-")}
    assert shown(session.run(prompt), "j") == "x-y"
    assert ("execute", ["text0", "text2"]) in seen()
    # validate_inputs gets the group nested too (linked slots as None, as ComfyUI)
    assert ("validate", {"text0": None, "text2": None}, "-") in seen()


def test_autogrow_slots_take_constants_as_comfyui(session: Session):
    """A slot of a widget type is a socket (forceInput) but, as in ComfyUI's validation,
    an API prompt may give it a constant."""
    prompt = {"j": n("DynJoin", **{"texts.text0": "p", "texts.text1": "q"})}
    assert shown(session.run(prompt), "j") == "p+q"
    too_big = errors(session, {"t": n("DynTotal", **{"values.a": 101})})
    assert any("values.a" in msg for _k, _node, msg in too_big)


def test_autogrow_slot_errors_name_the_slot(session: Session):
    missing = errors(session, {"j": n("DynJoin", sep="+")})
    assert any(node == "j" and "texts.text0" in msg for _k, node, msg in missing)
    # past the last slot: ignored with a warning, as a built-in Autogrow's
    past = session.validate({"a": n("DynSay", text="x"),
                             "j": n("DynJoin", **{"texts.text0": ["a", 0],
                                                  "texts.text9": ["a", 0]})})
    [warning] = [i for i in past.warnings if i.input_name == "texts.text9"]
    assert warning.severity == "warning"
    assert "texts has 5 slots, texts.text0 to texts.text4" in warning.message


def test_autogrow_of_named_slots_may_be_empty(session: Session):
    assert shown(session.run({"t": n("DynTotal")}), "t") == "{}"


def test_dynamic_combo_passes_the_choice_and_its_inputs(session: Session):
    result = session.run({"s": n("DynScale", value=4, mode="multiply",
                                 **{"mode.factor": 2.5})})
    assert shown(result, "s") == "[('factor', 2.5), ('mode', 'multiply')]=10.0"
    result = session.run({"s": n("DynScale", value=4, mode="add",
                                 **{"mode.amount": 3, "mode.sign": "-"})})
    assert shown(result, "s") == "[('amount', 3), ('mode', 'add'), ('sign', '-')]=1"
    # left out: the chosen option's defaults
    result = session.run({"s": n("DynScale", value=4, mode="add")})
    assert shown(result, "s") == "[('amount', 1), ('mode', 'add'), ('sign', '+')]=5"


def test_dynamic_combo_checks_the_chosen_options_inputs(session: Session):
    too_big = errors(session, {"s": n("DynScale", mode="multiply", **{"mode.factor": 20})})
    assert any("mode.factor" in msg for _k, _node, msg in too_big)
    bad_sign = errors(session, {"s": n("DynScale", mode="add", **{"mode.sign": "*"})})
    assert any("mode.sign" in msg for _k, _node, msg in bad_sign)
    no_such = errors(session, {"s": n("DynScale", mode="divide")})
    assert any("multiply" in msg and "add" in msg for _k, _node, msg in no_such)


def test_options_may_bound_a_shared_input_differently(session: Session):
    """KJNodes' ImageSharpenKJ was skipped at load: each option's own bounds apply where
    it is chosen, for a constant and for a linked value alike."""
    result = session.run({"s": n("DynSharpen", method="usm", **{"method.strength": 2.5})})
    assert shown(result, "s") == "2.5"
    too_big = errors(session, {"s": n("DynSharpen", method="rcas",
                                      **{"method.strength": 2.5})})
    assert any("method.strength" in msg for _k, _node, msg in too_big)
    linked = {"v": n("DynNumber", value=2.5),
              "s": n("DynSharpen", method="usm", **{"method.strength": ["v", 0]})}
    assert shown(session.run(linked), "s") == "2.5"
    linked["s"]["inputs"]["method"] = "rcas"
    result = session.run(linked)
    assert result.run.status == "error" and "strength" in result.run.error["exception_message"]


def test_a_slot_past_the_last_is_not_passed(session: Session):
    prompt = {"a": n("DynSay", text="x"),
              "j": n("DynJoin", **{"texts.text0": ["a", 0], "texts.text9": ["a", 0]})}
    assert shown(session.run(prompt), "j") == "x"


def test_a_ui_workflow_maps_the_chosen_options_widgets(registry: NodeRegistry,
                                                      tmp_path: Path):
    """ComfyUI's front end saves a DynamicCombo's chosen option's widgets right after
    it: ``[value, "add", amount, sign]``."""
    from engine.comfy_workflow import convert_ui_workflow
    from engine.environment import Environment

    env = Environment.create(tmp_path, device="cpu")
    schemas = {"DynScale": registry.get("DynScale").schema(env)}
    ui = {"nodes": [{"id": 1, "type": "DynScale", "mode": 0, "inputs": [], "outputs": [],
                     "widgets_values": [4, "add", 3, "-"]}], "links": []}
    converted = convert_ui_workflow(ui, schemas)
    assert converted.prompt["1"]["inputs"] == {"value": 4, "mode": "add", "mode.amount": 3,
                                               "mode.sign": "-"}


def test_options_may_share_an_input(tmp_path: Path):
    """As in ComfyUI, options of a DynamicCombo may bring inputs of the same id (declared
    alike, the engine's rule); each option's default stays its own."""
    from comfy_compat import ADAPTER

    ADAPTER.prepare()
    folder = tmp_path / "custom_nodes"
    folder.mkdir()
    (folder / "shared_pack.py").write_text('''
from comfy_api.latest import io


class Shared(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DynShared", is_output_node=True, inputs=[
            io.DynamicCombo.Input("size", options=[
                io.DynamicCombo.Option("small", [io.Int.Input("w", default=8, max=64),
                                                  io.Combo.Input("crop", options=["a", "b"])]),
                io.DynamicCombo.Option("large", [io.Int.Input("w", default=32, max=64),
                                                  io.Combo.Input("crop", options=["a", "b"])]),
            ])], outputs=[])

    @classmethod
    def execute(cls, size):
        return io.NodeOutput(ui={"text": [f"{size['w']}{size['crop']}"]})


NODE_CLASS_MAPPINGS = {"DynShared": Shared}
''')
    registry = NodeRegistry()
    registry.load_directory(folder)
    assert "DynShared" in registry, registry.errors
    session = Session(tmp_path / "home", device="cpu", registry=registry)
    assert shown(session.run({"s": n("DynShared", size="large", **{"size.crop": "a"})}),
                 "s") == "32a"
    assert shown(session.run({"s": n("DynShared", size="small", **{"size.crop": "b"})}),
                 "s") == "8b"
    assert "size.crop" in str(errors(session, {"s": n("DynShared", **{"size.crop": "c"})}))
