"""ComfyUI's V3 node API (``comfy_api.latest``) on Steerflow: packs written here load
through ``comfy_entrypoint`` (or ``NODE_CLASS_MAPPINGS``), show ComfyUI's V1 view in
/object_info, validate like V1 nodes and run through the real engine: widgets, combos,
lazy and optional inputs, hidden values, fingerprint_inputs, validate_inputs, list
outputs, UI previews, expansion, async execute, blocking; unsupported parts fail one
node with a message naming them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.registry import NodeRegistry
from engine.session import Session
from tests.comfy_fixtures import pack_registry
from tests.test_comfy_pack_adapter import errors, n, shown

V3_PACK = '''
import torch
from comfy_api.latest import ComfyExtension, Input, io, ui
from comfy_execution.graph_utils import GraphBuilder

LOADED = []
STATE = {"fingerprint": 1, "seen": []}


class Invert(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="V3Invert", display_name="Invert (V3)", category="image",
            description="1 - image, mixed by amount",
            inputs=[io.Image.Input("image"),
                    io.Float.Input("amount", default=1.0, min=0.0, max=1.0, step=0.05,
                                   tooltip="how much")],
            outputs=[io.Image.Output(tooltip="inverted")])

    @classmethod
    def execute(cls, image, amount) -> io.NodeOutput:
        return io.NodeOutput(image * (1 - amount) + (1 - image) * amount)


class Solid(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Solid", category="image",
            inputs=[io.Float.Input("value", default=0.25, min=0.0, max=1.0)],
            outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, value):
        return io.NodeOutput(torch.full((1, 2, 3, 3), float(value)))


class MaskOf(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3MaskOf", inputs=[io.Image.Input("image")],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, image):
        return io.NodeOutput(image[..., 0])


class Mean(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Mean", inputs=[io.Image.Input("image")],
                         outputs=[io.String.Output()])

    @classmethod
    def execute(cls, image):
        return io.NodeOutput(f"{float(image.mean()):.3f}")


class Widgets(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Widgets", display_name="Widgets", category="test/v3",
            inputs=[
                io.Int.Input("count", default=3, min=1, max=10, step=1,
                             control_after_generate=True, display_mode=io.NumberDisplay.slider),
                io.Combo.Input("mode", options=["add", "mul"], default="add"),
                io.String.Input("text", multiline=True, placeholder="say", default="hi"),
                io.Boolean.Input("flag", default=True, label_on="yes", label_off="no"),
                io.Int.Input("extra", optional=True, force_input=True),
                io.Custom("MY_THING").Input("thing", optional=True),
            ],
            outputs=[io.String.Output("summary", display_name="summary"), io.Int.Output()])

    @classmethod
    def execute(cls, count, mode, text, flag, extra=None, thing=None):
        total = count + (extra or 0) if mode == "add" else count * (extra or 1)
        return io.NodeOutput(f"{text}:{total}:{flag}:{thing}", total)


class Pick(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Pick",
            inputs=[io.Boolean.Input("first"),
                    io.String.Input("a", lazy=True, force_input=True),
                    io.String.Input("b", lazy=True, force_input=True)],
            outputs=[io.String.Output()])

    @classmethod
    def check_lazy_status(cls, first, a=None, b=None):
        assert cls.hidden is not None
        return ["a"] if first and a is None else ["b"] if not first and b is None else []

    @classmethod
    def execute(cls, first, a, b):
        return io.NodeOutput(a if first else b)


class Text(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Text", inputs=[io.String.Input("text")],
                         outputs=[io.String.Output()])

    @classmethod
    def execute(cls, text):
        return io.NodeOutput(text)


class Who(io.ComfyNode):
    """An output node: ComfyUI adds prompt and extra_pnginfo; an input named prompt."""
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Who", is_output_node=True,
            inputs=[io.String.Input("prompt", default="p")],
            hidden=[io.Hidden.unique_id], outputs=[io.String.Output()])

    @classmethod
    def execute(cls, prompt):
        h = cls.hidden
        text = f"{h.unique_id}|{prompt}|{sorted(h.prompt)}|{h.extra_pnginfo}|{h.dynprompt}"
        return io.NodeOutput(text, ui=ui.PreviewText(text))


class Fingerprint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Fingerprint", hidden=[io.Hidden.unique_id],
                         inputs=[io.Int.Input("value", default=0)],
                         outputs=[io.Int.Output()])

    @classmethod
    def fingerprint_inputs(cls, value):
        STATE["seen"].append(cls.hidden.unique_id)
        return STATE["fingerprint"]

    @classmethod
    def execute(cls, value):
        return io.NodeOutput(value + STATE["fingerprint"])


class Checked(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Checked",
            inputs=[io.Combo.Input("name", options=["a", "b"]), io.Int.Input("level", min=0,
                                                                           max=3)],
            outputs=[io.String.Output()])

    @classmethod
    def validate_inputs(cls, name):
        return True if name in ("a", "b", "custom") else f"name {name!r} is not allowed"

    @classmethod
    def execute(cls, name, level):
        return io.NodeOutput(f"{name}:{level}")


class Split(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Split", inputs=[io.String.Input("text")],
            outputs=[io.String.Output(is_output_list=True), io.Int.Output()])

    @classmethod
    def execute(cls, text):
        parts = text.split(",")
        return io.NodeOutput(parts, len(parts))


class Join(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Join", is_input_list=True,
            inputs=[io.String.Input("parts", force_input=True)], outputs=[io.String.Output()])

    @classmethod
    def execute(cls, parts):
        return io.NodeOutput("+".join(parts))


class Preview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Preview", is_output_node=True,
            inputs=[io.Image.Input("image"), io.Mask.Input("mask", optional=True)])

    @classmethod
    def execute(cls, image, mask=None):
        shown = ui.PreviewImage(image, cls=cls) if mask is None else ui.PreviewMask(mask)
        return io.NodeOutput(ui=shown)


class Twice(io.ComfyNode):
    """Expands into two Inverts (GraphBuilder): a full one, then an idle one."""
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Twice", enable_expand=True,
            inputs=[io.Image.Input("image")], outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image):
        g = GraphBuilder()
        one = g.node("V3Invert", image=image, amount=1.0)
        two = g.node("V3Invert", image=one.out(0), amount=0.0)
        return io.NodeOutput(two.out(0), expand=g.finalize())


class Later(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Async", inputs=[io.String.Input("text")],
                         hidden=[io.Hidden.unique_id], outputs=[io.String.Output()])

    @classmethod
    async def execute(cls, text):
        import asyncio
        await asyncio.sleep(0)
        return io.NodeOutput(f"{text}@{cls.hidden.unique_id}")


class Switch(io.ComfyNode):
    """ComfyUI's Switch pattern: validation tells a linked branch (None) from a missing one,
    and the lazy branch not taken is never run."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Switch", search_aliases=["if", "choose"],
            inputs=[io.Boolean.Input("switch"),
                    io.String.Input("on_false", optional=True, lazy=True, force_input=True),
                    io.String.Input("on_true", optional=True, lazy=True, force_input=True)],
            outputs=[io.String.Output()])

    @classmethod
    def validate_inputs(cls, switch, on_false=..., on_true=...):
        if on_false is ... and on_true is ...:
            return "At least one of on_false or on_true must be connected"
        return True

    @classmethod
    def check_lazy_status(cls, switch, on_false=None, on_true=None):
        return ["on_true"] if switch and on_true is None else \
            ["on_false"] if not switch and on_false is None else []

    @classmethod
    def execute(cls, switch, on_false=None, on_true=None):
        return io.NodeOutput(on_true if switch else on_false)


class Gate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Gate", inputs=[io.String.Input("text")],
                         outputs=[io.String.Output()])

    @classmethod
    def execute(cls, text):
        return io.NodeOutput(text, block_execution="stopped here") if text == "stop" \\
            else io.NodeOutput(text)


class Clip(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Clip", inputs=[io.Video.Input("video")],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, video: Input.Video):
        return io.NodeOutput(None)


class Ext(ComfyExtension):
    async def on_load(self):
        LOADED.append("on_load")

    async def get_node_list(self):
        return [Invert, Solid, MaskOf, Mean, Widgets, Pick, Text, Who, Fingerprint, Checked,
                Split, Join, Preview, Twice, Later, Gate, Switch, Clip]


async def comfy_entrypoint() -> Ext:
    return Ext()
'''

MIXED_PACK = '''
from comfy_api.v0_0_2 import ComfyExtension, io


class OldWidgets:
    """ComfyUI's V1 view of V3Widgets' first inputs, written by hand."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 3, "min": 1, "max": 10, "step": 1}),
                             "mode": (["add", "mul"],)}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    def run(self, count, mode):
        return (f"{mode}{count}",)


class Mapped(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="IgnoredId", display_name="Mapped V3",
                         inputs=[io.Int.Input("count", default=3, min=1, max=10, step=1),
                                 io.Combo.Input("mode", options=["add", "mul"])],
                         outputs=[io.String.Output()])
    @classmethod
    def execute(cls, count, mode):
        return io.NodeOutput(f"{mode}{count}")


class FromEntry(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MixedEntry", outputs=[io.Int.Output()])
    @classmethod
    def execute(cls):
        return io.NodeOutput(7)


NODE_CLASS_MAPPINGS = {"MixedV1": OldWidgets, "MixedV3": Mapped}
NODE_DISPLAY_NAME_MAPPINGS = {"MixedV1": "Mixed V1"}


class Ext(ComfyExtension):
    async def get_node_list(self):
        return [FromEntry]


def comfy_entrypoint():
    return Ext()
'''

BROKEN_ENTRY = '''
def comfy_entrypoint():
    raise RuntimeError("entry is broken")
'''


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> NodeRegistry:
    import nodes.image
    import nodes.latent

    return pack_registry(tmp_path_factory.mktemp("custom_nodes"), {
        "v3_pack.py": V3_PACK, "v3_mixed.py": MIXED_PACK,
        "v3_broken_entry.py": BROKEN_ENTRY}, nodes.image, nodes.latent)


@pytest.fixture
def session(registry: NodeRegistry, tmp_path: Path) -> Session:
    return Session(tmp_path, device="cpu", registry=registry)


def pack() -> Any:
    import sys

    return sys.modules["steerflow_custom_nodes.v3_pack"]


def said(result: Any, node_id: str) -> str:
    """The input a V3Who node echoed."""
    return shown(result, node_id).split("|")[1]


def text_of(result: Any, node_id: str) -> Any:
    assert result.ok, result.run.error
    return result.run.outputs[node_id]


# --- loading ---------------------------------------------------------------------------

def test_v3_packs_load_through_the_entrypoint_and_mappings(registry: NodeRegistry):
    assert {"V3Invert", "V3Widgets", "V3Pick", "V3Who", "V3Fingerprint", "V3Checked",
            "V3Split", "V3Join", "V3Preview", "V3Twice", "V3Async", "V3Gate"} <= \
        set(registry.classes)
    assert pack().LOADED == ["on_load"]  # ComfyExtension.on_load was awaited
    # a module with both: its mappings (V1 and V3 classes) and its entry point's nodes
    assert {"MixedV1", "MixedV3", "MixedEntry"} <= set(registry.classes)
    assert "IgnoredId" not in registry  # a mapped V3 class takes its mapping's name
    assert registry.get("MixedV1").DISPLAY_NAME == "Mixed V1"
    assert registry.get("MixedV3").DISPLAY_NAME == "Mapped V3"
    assert registry.get("V3Invert").DISPLAY_NAME == "Invert (V3)"
    errors_by_pack = {Path(e.pack).name: e.message for e in registry.errors}
    # an unsupported part fails its node, naming it; the pack's other nodes load
    assert "V3Clip" not in registry
    assert "node 'Clip' skipped: NotImplementedError" in errors_by_pack["v3_pack.py"]
    assert "comfy_api.latest.io.Video is not available in Steerflow" in \
        errors_by_pack["v3_pack.py"]
    assert "comfy_entrypoint failed: RuntimeError: entry is broken" in \
        errors_by_pack["v3_broken_entry.py"]


def test_unsupported_parts_name_themselves():
    from comfy_compat import ADAPTER

    ADAPTER.prepare()
    from comfy_api.latest import Input, InputImpl, Types, io, ui

    for use in (lambda: InputImpl.VideoFromFile("x.mp4"), lambda: Types.VideoContainer.MP4,
                lambda: io.DynamicSlot.Input(io.Image.Input("x"), []),
                lambda: io.MultiCombo.Input("m", options=["a"]), lambda: ui.PreviewAudio({}),
                lambda: ui.PreviewUI3D("m.glb", {}), lambda: io.NoSuchType):
        with pytest.raises((NotImplementedError, AttributeError), match="not available"):
            use()
    assert not isinstance(3, Input.Video)  # a type hint / isinstance still works
    import comfy_api.v0_0_1
    import comfy_api.v0_0_3

    assert comfy_api.v0_0_1.io is comfy_api.v0_0_3.IO is io


# --- /object_info: ComfyUI's V1 view ------------------------------------------------------

def test_object_info_is_comfyuis_v1_view(registry: NodeRegistry, tmp_path: Path):
    from engine.environment import Environment

    env = Environment.create(tmp_path, device="cpu")
    info = registry.get("V3Widgets").schema(env)
    assert info["input"]["required"] == {
        "count": ["INT", {"default": 3, "min": 1, "max": 10, "step": 1,
                          "control_after_generate": True, "display": "slider"}],
        "mode": ["COMBO", {"default": "add", "multiselect": False, "options": ["add", "mul"]}],
        "text": ["STRING", {"default": "hi", "multiline": True, "placeholder": "say"}],
        "flag": ["BOOLEAN", {"default": True, "label_on": "yes", "label_off": "no"}]}
    assert info["input"]["optional"] == {"extra": ["INT", {"forceInput": True}],
                                         "thing": ["MY_THING", {}]}
    assert info["output"] == ["STRING", "INT"]
    assert info["output_name"] == ["summary", "INT"]  # display_name, else the type
    assert info["output_is_list"] == [False, False]
    assert info["category"] == "test/v3" and info["display_name"] == "Widgets"
    invert = registry.get("V3Invert").schema(env)
    assert invert["description"] == "1 - image, mixed by amount"
    assert invert["input"]["required"]["amount"] == [
        "FLOAT", {"tooltip": "how much", "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05}]
    assert invert["output_tooltips"] == ["inverted"]
    who = registry.get("V3Who").schema(env)
    assert who["output_node"] is True
    assert who["input"]["hidden"] == {"unique_id": ["UNIQUE_ID"], "prompt": ["PROMPT"],
                                      "extra_pnginfo": ["EXTRA_PNGINFO"]}
    assert registry.get("V3Pick").schema(env)["input"]["required"]["a"] == [
        "STRING", {"lazy": True, "forceInput": True, "multiline": False}]
    assert registry.get("V3Split").schema(env)["output_is_list"] == [True, False]


# --- validation ---------------------------------------------------------------------------

def test_validate_inputs_gets_linked_inputs_as_none(session: Session):
    """As ComfyUI's validation: a linked input the check names arrives as None, an
    unconnected one keeps its default (ComfyUI's own Switch node relies on it)."""
    both = {"t": n("V3Text", text="yes"), "f": n("V3Text", text="no"),
            "s": n("V3Switch", switch=False, on_true=["t", 0], on_false=["f", 0]),
            "2": n("V3Who", prompt=["s", 0])}
    result = session.run(both)
    assert said(result, "2") == "no"
    assert "t" not in result.run.outputs  # the lazy branch not taken never ran
    one = {"f": n("V3Text", text="no"), "s": n("V3Switch", switch=False, on_false=["f", 0]),
           "2": n("V3Who", prompt=["s", 0])}
    assert said(session.run(one), "2") == "no"
    none = {"s": n("V3Switch", switch=True), "2": n("V3Who", prompt=["s", 0])}
    assert any("must be connected" in message for *_, message in errors(session, none))


def test_object_info_details_as_comfyui(registry: NodeRegistry, tmp_path: Path):
    from engine.environment import Environment

    env = Environment.create(tmp_path, device="cpu")
    switch = registry.get("V3Switch").schema(env)
    assert switch["search_aliases"] == ["if", "choose"]
    # ours too: the palette finds Self-Attention Guidance by "SAG"
    from nodes.sag import SelfAttentionGuidance

    assert "SAG" in SelfAttentionGuidance.schema(env)["search_aliases"]
    assert switch["output_tooltips"] == [None]
    # no description of its own: empty, not our base class's docstring
    assert registry.get("V3Solid").schema(env)["description"] == ""
    who = registry.get("V3Who").schema(env)
    assert who["input_order"]["hidden"] == ["unique_id", "prompt", "extra_pnginfo"]


def test_reshape_mask_as_comfyuis():
    import torch

    from comfy_compat import ADAPTER

    ADAPTER.prepare()
    import comfy.utils

    mask = torch.zeros(1, 4, 6)
    mask[:, :2] = 1
    out = comfy.utils.reshape_mask(mask, (3, 4, 8, 12))
    assert out.shape == (3, 4, 8, 12) and float(out[2, 3, 0, 0]) == 1.0
    assert float(out[0, 0, -1, -1]) == 0.0
    assert comfy.utils.reshape_mask(mask, (2, 4, 8, 12), expand=False).shape == (2, 1, 8, 12)


def test_bad_widget_values_get_the_errors_v1_nodes_get(session: Session):
    def issues(kind: str, **inputs: Any) -> list[tuple[str, str | None, str]]:
        return errors(session, {"1": n(kind, **inputs), "2": n("V3Who", prompt=["1", 0])})

    for bad in ({"count": 11, "mode": "add"}, {"count": 2, "mode": "pow"},
                {"count": "x", "mode": "add"}):
        v3, v1 = issues("MixedV3", **bad), issues("MixedV1", **bad)
        assert v3 == v1 and v3, bad
    assert issues("V3Widgets", count=0, mode="add", text="", flag=True)[0][:2] == \
        ("out_of_range", "1")
    # a link of the wrong type is refused, naming both types
    found = errors(session, {"1": n("V3Text", text="t"), "2": n("V3Invert", image=["1", 0]),
                             "3": n("V3Preview", image=["2", 0])})
    assert [(k, node) for k, node, _ in found] == [("type_mismatch", "2")]
    assert "expects IMAGE" in found[0][2] and "is STRING" in found[0][2]


def test_validate_inputs_replaces_the_checks_of_what_it_takes(session: Session):
    def checked(name: str, level: int) -> dict[str, Any]:
        return {"1": n("V3Checked", name=name, level=level), "2": n("V3Who", prompt=["1", 0])}

    # it takes "name": the combo check is skipped for it (as in ComfyUI) ...
    assert said(session.run(checked("custom", 2)), "2") == "custom:2"
    found = errors(session, checked("bad", 2))
    assert [(k, m) for k, _, m in found] == [
        ("node_error", "custom validation failed: name 'bad' is not allowed")]
    # ... "level" is still range-checked
    assert [k for k, _, _ in errors(session, checked("a", 9))] == ["out_of_range"]


# --- running ------------------------------------------------------------------------------

def test_widgets_optional_and_custom_inputs_run(session: Session):
    result = session.run({"1": n("V3Widgets", count=4, mode="mul", text="t", flag=False),
                          "2": n("V3Who", prompt=["1", 0])})
    assert said(result, "2").split(":") == ["t", "4", "False", "None"]
    prompt = {"1": n("V3Widgets", count=2, mode="add", text="x", flag=True),
              "2": n("V3Widgets", count=3, mode="add", text="y", flag=True, extra=["1", 1],
                     thing="anything"),
              "3": n("V3Who", prompt=["2", 0])}
    assert said(session.run(prompt), "3").split(":") == ["y", "5", "True", "anything"]


def test_lazy_inputs_evaluate_only_what_check_lazy_status_asks(session: Session):
    prompt = {"1": n("V3Text", text="A"), "2": n("V3Text", text="B"),
              "3": n("V3Pick", first=False, a=["1", 0], b=["2", 0]),
              "4": n("V3Who", prompt=["3", 0])}
    result = session.run(prompt)
    assert said(result, "4") == "B"
    assert "1" not in result.run.executed and "2" in result.run.executed


def test_hidden_values_per_call_and_an_input_sharing_a_hidden_name(session: Session):
    result = session.run({"7": n("V3Who", prompt="mine")},
                         extra={"extra_pnginfo": {"k": 1}})
    unique_id, prompt, keys, pnginfo, dynprompt = shown(result, "7").split("|")
    assert (unique_id, prompt, keys) == ("7", "mine", "['7']")  # cls.hidden.prompt: the prompt
    assert "'k': 1" in pnginfo and dynprompt == "None"  # not asked for: None
    assert pack().Who.hidden.unique_id is None  # nothing stays on the class
    # two async nodes at once: each sees its own id
    result = session.run({"1": n("V3Async", text="a"), "2": n("V3Async", text="b"),
                          "3": n("V3Who", prompt=["1", 0]), "4": n("V3Who", prompt=["2", 0])})
    assert said(result, "3") == "a@1"
    assert said(result, "4") == "b@2"


def test_fingerprint_inputs_joins_the_cache_key(session: Session):
    state = pack().STATE
    linked = {"1": n("V3Fingerprint", value=1), "2": n("V3Widgets", count=1, mode="add",
                                                      text="t", flag=True, extra=["1", 0]),
              "3": n("V3Who", prompt=["2", 0])}
    first = session.run(linked)
    assert said(first, "3").split(":")[:2] == ["t", "3"]
    assert state["seen"][-1] == "1"  # cls.hidden.unique_id in fingerprint_inputs
    again = session.run(linked)
    assert "1" not in again.run.executed  # same fingerprint: cached
    state["fingerprint"] = 2
    changed = session.run(linked)
    assert "1" in changed.run.executed and said(changed, "3").split(":")[:2] == ["t", "4"]


def test_list_outputs_and_input_is_list(session: Session):
    result = session.run({"1": n("V3Split", text="a,b,c"), "2": n("V3Join", parts=["1", 0]),
                          "3": n("V3Who", prompt=["2", 0])})
    assert said(result, "3") == "a+b+c"
    per_item = session.run({"1": n("V3Split", text="a,b"), "2": n("V3Who", prompt=["1", 0])})
    assert [t.split("|")[1] for t in text_of(per_item, "2")["text"]] == ["a", "b"]


def test_preview_image_and_mask_give_comfyuis_executed_payload(session: Session):
    result = session.run({"1": n("V3Solid", value=0.5), "2": n("V3Preview", image=["1", 0])})
    ui = text_of(result, "2")
    assert list(ui) == ["images", "animated"] and list(ui["animated"]) == [False]
    (entry,) = ui["images"]
    assert entry["type"] == "temp" and entry["subfolder"] == "" and \
        entry["filename"].endswith(".png")
    assert (session.env.folder("temp") / entry["filename"]).is_file()
    from PIL import Image

    mask = session.run({"1": n("V3Solid", value=0.5), "2": n("V3MaskOf", image=["1", 0]),
                        "3": n("V3Preview", image=["1", 0], mask=["2", 0])})
    (entry,) = text_of(mask, "3")["images"]
    grey = Image.open(session.env.folder("temp") / entry["filename"])
    red, green, blue = grey.getpixel((0, 0))
    assert grey.size == (3, 2) and red == green == blue and abs(red - 127.5) < 1


def test_expansion_async_and_blocking(session: Session):
    # an expansion: Twice runs two Inverts in its place (0.25 -> 0.75 -> 0.75)
    result = session.run({"1": n("V3Solid", value=0.25), "2": n("V3Twice", image=["1", 0]),
                          "3": n("V3Invert", image=["2", 0], amount=0.0),
                          "4": n("V3Mean", image=["3", 0]), "5": n("V3Who", prompt=["4", 0])})
    assert said(result, "5") == "0.750"
    blocked = session.run({"1": n("V3Gate", text="stop"), "2": n("V3Who", prompt=["1", 0]),
                           "3": n("V3Gate", text="go"), "4": n("V3Who", prompt=["3", 0])})
    assert "2" not in blocked.run.outputs and said(blocked, "4") == "go"


def test_a_pack_node_of_a_built_in_type_is_skipped_not_a_failed_pack(tmp_path: Path):
    """ComfyUI keeps its own node when a pack brings one of the same name; so do we, and
    the message says the pack loaded (its other nodes are there)."""
    import nodes.image
    from comfy_compat import ADAPTER

    ADAPTER.prepare()
    (tmp_path / "dup_pack.py").write_text(
        "class LoadImage:\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        "        return {'required': {}}\n"
        "    RETURN_TYPES = ('INT',)\n"
        "    FUNCTION = 'run'\n"
        "    def run(self):\n"
        "        return (1,)\n"
        "class Mine(LoadImage):\n"
        "    pass\n"
        "NODE_CLASS_MAPPINGS = {'LoadImage': LoadImage, 'DupMine': Mine}\n")
    registry = NodeRegistry()
    registry.add_module(nodes.image)
    registry.load_directory(tmp_path)
    assert "DupMine" in registry and registry.get("LoadImage").__module__ == "nodes.image"
    (error,) = registry.errors
    assert not error.whole and error.describe().startswith("node pack ")
    assert "loaded, but: node 'LoadImage' skipped" in error.describe()
    assert "the one registered first is kept" in error.message
