"""ComfyUI APIs that popular custom node packs use, as found by loading real packs
(rgthree-comfy, ComfyUI_essentials, ComfyUI-Custom-Scripts, ComfyUI-KJNodes,
ComfyUI-Impact-Pack, ComfyUI-VideoHelperSuite, WAS Node Suite, Comfyroll,
cg-use-everywhere; see docs/custom_nodes.md), exercised
through packs of our own written in their style (tests/fixtures/comfy_real_patterns/)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.registry import NodeRegistry
from engine.session import Session

PACKS = Path(__file__).parent / "fixtures" / "comfy_real_patterns"


@pytest.fixture(scope="module", autouse=True)
def shims() -> None:
    from comfy_compat import ADAPTER

    ADAPTER.prepare()


def load(base: Path) -> NodeRegistry:
    """Steerflow's image and latent nodes plus the fixture packs, imported with the
    environment at ``base`` bound (as the registry should bind the run's environment
    before packs import; see docs/custom_nodes.md)."""
    import nodes.image
    import nodes.latent
    from comfy_compat import runtime
    from engine.environment import Environment

    registry = NodeRegistry()
    registry.add_module(nodes.image)
    registry.add_module(nodes.latent)
    with runtime.bound_environment(Environment.create(base, device="cpu")):
        registry.load_directory(PACKS)
    return registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> NodeRegistry:
    return load(tmp_path_factory.mktemp("packs"))


@pytest.fixture
def session(registry: NodeRegistry, tmp_path: Path) -> Session:
    return Session(tmp_path, device="cpu", registry=registry)


def errors(registry: NodeRegistry) -> dict[str, str]:
    return {Path(e.pack).name: e.message for e in registry.errors}


def write_png(session: Session, name: str, size: tuple[int, int], color: tuple[int, ...]
              ) -> None:
    from PIL import Image

    Image.new("RGB", size, color).save(session.env.folder("input", create=True) / name)


# --- a pack with ComfyUI's helper modules imported at the top ------------------------

def test_a_pack_importing_comfyui_helpers_at_the_top_loads(registry: NodeRegistry):
    assert "helpers_pack" not in errors(registry), errors(registry)
    assert {"RealSamplerSettings", "RealNoisyLatent", "RealDeviceReport",
            "RealLoadImagesFromInput"} <= set(registry.classes)


def test_relative_import_through_a_folder_without_init_loads(tmp_path: Path):
    # KJNodes' layout: pack/__init__.py does `from .nodes.nodes import ...`, and nodes/
    # has no __init__.py. Without the steerflow_custom_nodes parent package this failed
    # with "No module named 'steerflow_custom_nodes'".
    sys.modules.pop("steerflow_custom_nodes", None)
    from comfy_compat import ADAPTER

    ADAPTER.prepare()
    (tmp_path / "kj" / "inner").mkdir(parents=True)
    (tmp_path / "kj" / "__init__.py").write_text(
        "from .inner.mod import NODE_CLASS_MAPPINGS\n")
    (tmp_path / "kj" / "inner" / "mod.py").write_text(
        "class N:\n    @classmethod\n    def INPUT_TYPES(cls):\n        return {'required': {}}\n"
        "    RETURN_TYPES = ()\n    FUNCTION = 'run'\n    def run(self):\n        return ()\n"
        "NODE_CLASS_MAPPINGS = {'KjStyleNode': N}\n")
    registry = NodeRegistry()
    registry.load_directory(tmp_path)
    assert registry.errors == []
    assert "KjStyleNode" in registry


def test_sampler_and_scheduler_lists_are_steerflows(registry: NodeRegistry, session: Session):
    import comfy.samplers

    from nodes.diffusion.schedulers import SAMPLERS, SCHEDULES

    assert comfy.samplers.KSampler.SAMPLERS == list(SAMPLERS) == comfy.samplers.SAMPLER_NAMES
    assert list(SCHEDULES) == comfy.samplers.KSampler.SCHEDULERS
    schema = registry.get("RealSamplerSettings").schema(session.env)
    assert schema["input"]["required"]["scheduler"][0] == [*SCHEDULES, "custom"]
    # a pack's widget value is one Steerflow's KSampler accepts
    ksampler = importlib.import_module("nodes.sampling").KSampler
    assert set(ksampler.INPUT_SPECS["sampler_name"].resolve_choices(None)) == set(SAMPLERS)
    prompt = {"1": {"class_type": "RealSamplerSettings",
                    "inputs": {"sampler_name": "dpmpp_2m", "scheduler": "karras"}}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    assert result.run.outputs["1"] == {"text": ["dpmpp_2m/karras"]}


def test_prepare_noise_is_seeded_as_in_comfyui():
    import comfy.sample
    import torch

    latent = torch.zeros(3, 4, 2, 2)
    noise = comfy.sample.prepare_noise(latent, 42)
    assert torch.equal(noise, torch.randn(latent.shape, generator=torch.manual_seed(42)))
    # batch indices: draw up to the largest, keep those asked for, in order
    picked = comfy.sample.prepare_noise(latent[:2], 42, [2, 0])
    draws = [torch.randn((1, 4, 2, 2), generator=g) for g in [torch.manual_seed(42)]
             for _ in range(3)]
    assert torch.equal(picked, torch.cat([draws[2], draws[0]]))


def test_noise_node_batches_with_comfy_extras_latent_batch(session: Session):
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                           "batch_size": 1}},
        "2": {"class_type": "RealNoisyLatent", "inputs": {"samples": ["1", 0], "seed": 7}},
        "3": {"class_type": "RealNoisyLatent",
              "inputs": {"samples": ["2", 0], "seed": 8}},
    }
    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    assert result.run.outputs["2"] == {"text": ["[2, 4, 8, 8]"]}
    assert result.run.outputs["3"] == {"text": ["[4, 4, 8, 8]"]}
    progress = [d for name, d in result.events if name == "progress" and d["node"] == "2"]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 2), (2, 2)]  # the callback


def test_latent_batch_resizes_and_concatenates():
    import torch
    from comfy_extras.nodes_latent import LatentBatch

    (out,) = LatentBatch().batch({"samples": torch.zeros(1, 4, 8, 8)},
                                 {"samples": torch.ones(2, 4, 4, 4)})
    assert out["samples"].shape == (3, 4, 8, 8)
    assert out["samples"][1:].eq(1).all()


def test_device_memory_and_cli_args(session: Session):
    result = session.run({"1": {"class_type": "RealDeviceReport", "inputs": {}}})
    assert result.ok, result.run.error
    assert result.run.outputs["1"] == {"text": ["cpu torch.float32 False False auto None"]}


def test_input_folder_exists_for_packs_that_list_it(registry: NodeRegistry, session: Session):
    import torch

    folder = session.env.folders["input"]
    assert not folder.exists()
    # INPUT_TYPES lists the folder unguarded (VideoHelperSuite's loaders do)
    schema = registry.get("RealLoadImagesFromInput").schema(session.env)
    assert schema["input"]["required"]["image"] == [["none"]]
    assert folder.is_dir()
    write_png(session, "red.png", (3, 2), (255, 0, 0))
    (folder / "notes.txt").write_text("not an image")
    schema = registry.get("RealLoadImagesFromInput").schema(session.env)
    assert schema["input"]["required"]["image"] == [["red.png"]]
    prompt = {"1": {"class_type": "RealLoadImagesFromInput", "inputs": {"image": "red.png"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    from PIL import Image

    with Image.open(result.image_paths[0]) as img:
        assert img.size == (3, 2) and img.getpixel((0, 0)) == (255, 0, 0)
    _ = torch


def test_small_helpers_behave_as_comfyuis(tmp_path: Path):
    import comfy.utils
    import node_helpers
    import torch
    from comfy.k_diffusion.utils import FolderOfImages
    from PIL import Image

    sd = {"model.a": 1, "model.b": 2, "other": 3}
    assert comfy.utils.state_dict_prefix_replace(dict(sd), {"model.": "m."}) == \
        {"m.a": 1, "m.b": 2, "other": 3}
    assert comfy.utils.state_dict_prefix_replace(dict(sd), {"model.": ""}, filter_keys=True) \
        == {"a": 1, "b": 2}
    comfy.utils.save_torch_file({"w": torch.ones(2)}, str(tmp_path / "w.safetensors"))
    assert comfy.utils.load_torch_file(str(tmp_path / "w.safetensors"))["w"].tolist() == [1, 1]
    layer = torch.nn.Sequential(torch.nn.Linear(1, 1))
    assert comfy.utils.get_attr(layer, "0.bias") is layer[0].bias
    assert comfy.utils.get_tiled_scale_steps(512, 512, 256, 256, 0) == 4
    rgba, rgb = torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 3)
    assert node_helpers.image_alpha_fix(rgb, rgba)[1].shape[-1] == 3
    assert node_helpers.image_alpha_fix(rgba, rgb)[1][..., 3].eq(1).all()
    Image.new("RGB", (2, 2)).save(tmp_path / "a.png")
    (tmp_path / "b.txt").write_text("x")
    assert len(FolderOfImages(str(tmp_path))) == 1


def test_missing_internals_fail_clearly_when_used():
    import comfy.model_management
    import comfy.sample
    import comfy.samplers
    import execution
    import latent_preview
    import node_helpers

    # names ComfyUI's module has: a placeholder that imports and fails when used
    for module, name in ((comfy.samplers, "CFGGuider"), (comfy.sample, "sample"),
                         (comfy.model_management, "load_models_gpu"),
                         (execution, "PromptExecutor"),
                         (node_helpers, "conditioning_set_values"),
                         (latent_preview, "TAESDPreviewerImpl")):
        placeholder = getattr(module, name)
        with pytest.raises(NotImplementedError, match=f"{module.__name__}.{name} is not "
                                                      "available in Steerflow"):
            placeholder()
    exec("from comfy.samplers import KSAMPLER", {})
    # a name ComfyUI does not have either stays missing (feature detection sees it)
    with pytest.raises(AttributeError, match=r"comfy\.samplers\.NoSuchSampler is not"):
        comfy.samplers.NoSuchSampler  # noqa: B018
    assert not hasattr(comfy.model_management, "no_such_helper")
    with pytest.raises(NotImplementedError, match="KSampler objects are not available"):
        comfy.samplers.KSampler()


def test_internal_modules_import_as_stubs_that_fail_when_used():
    import comfy
    import comfy.sd
    from comfy.ldm.lightricks.model import apply_rotary_emb

    from comfy_compat.shims._missing import Unavailable

    for module in ("comfy.sd", "comfy.model_patcher", "comfy.ldm.modules.attention",
                   "comfy.k_diffusion.sampling", "comfy_extras.nodes_mask",
                   "comfy_extras.nodes_custom_sampler", "comfy.taesd.taesd"):
        assert importlib.import_module(module).__name__ == module
    with pytest.raises(NotImplementedError,
                       match=r"comfy\.ldm\.lightricks\.model\.apply_rotary_emb is not "
                             "available in Steerflow"):
        apply_rotary_emb(None, None)
    # reached through the package, as `import comfy` then `comfy.sd.VAE` in ComfyUI
    assert comfy.sd.VAE is importlib.import_module("comfy.sd").VAE
    assert isinstance(comfy.model_patcher.ModelPatcher, Unavailable)
    assert not isinstance(object(), comfy.sd.VAE)  # nothing here is a ComfyUI VAE
    # attributes of a placeholder are placeholders, named in full; values refuse use
    conv = comfy.ops.disable_weight_init.Conv2d
    with pytest.raises(NotImplementedError, match=r"comfy\.ops\.disable_weight_init\.Conv2d"):
        conv(1, 1, 1)
    for use in (bool, list, len, int, lambda v: v + 1, lambda v: v * 2, lambda v: v[0]):
        with pytest.raises(NotImplementedError, match="is not available in Steerflow"):
            use(comfy.ldm.modules.attention.SAGE_ATTENTION_IS_AVAILABLE)

    class Int8Conv(conv):
        pass

    with pytest.raises(NotImplementedError, match=r"Conv2d is not available .*Int8Conv "
                                                  "is built on it"):
        Int8Conv()
    # other modules are still refused by name: not ComfyUI's, or ComfyUI's executor
    with pytest.raises(ModuleNotFoundError, match=r"'comfy\.no_such_module' is not"):
        importlib.import_module("comfy.no_such_module")
    with pytest.raises(ModuleNotFoundError, match=r"'comfy_execution\.caching' is not"):
        importlib.import_module("comfy_execution.caching")
    with pytest.raises(AttributeError):
        comfy.no_such_module  # noqa: B018


# --- a pack importing ComfyUI's internals at the top, typed with comfy_types --------

def test_a_pack_importing_internals_at_the_top_loads(registry: NodeRegistry):
    assert "internals_pack" not in errors(registry), errors(registry)
    assert {"RealTypedJoin", "RealLazyPick", "RealCheckpointInfo",
            "RealGuiderFromModel"} <= set(registry.classes)


def test_comfy_types_io_in_input_types(registry: NodeRegistry, session: Session):
    from comfy.comfy_types import IO

    schema = registry.get("RealTypedJoin").schema(session.env)
    assert json.loads(json.dumps(schema["input"]["required"]["text"])) == \
        ["STRING", {"default": "a", "multiline": False}]
    assert schema["output"] == ["STRING"]
    # ComfyUI's link rule: "*" matches all, a comma list matches its members
    assert not IO.ANY != "IMAGE" and not IO.NUMBER != "INT"  # noqa: SIM202
    assert IO.IMAGE != "MASK"
    assert {"*": 1}[IO.ANY] == 1 and f"{IO.NUMBER}" == "FLOAT,INT"
    prompt = {"1": {"class_type": "RealTypedJoin", "inputs": {"text": "x", "count": 3}},
              "2": {"class_type": "RealTypedJoin",
                    "inputs": {"text": "y", "count": 1, "anything": ["1", 0]}}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    assert result.run.outputs["2"] == {"text": ["y+x-x-x"]}


def test_check_lazy_mixin_evaluates_only_what_is_asked(session: Session):
    from comfy.comfy_types import CheckLazyMixin

    assert CheckLazyMixin().check_lazy_status(a=None, b="x", c=None) == ["a", "c"]
    prompt = {"1": {"class_type": "RealTypedJoin", "inputs": {"text": "a", "count": 1}},
              "2": {"class_type": "RealTypedJoin", "inputs": {"text": "b", "count": 1}},
              "3": {"class_type": "RealLazyPick",
                    "inputs": {"use_a": True, "a": ["1", 0], "b": ["2", 0]}},
              "4": {"class_type": "RealTypedJoin",
                    "inputs": {"text": "z", "count": 1, "anything": ["3", 0]}}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    assert result.run.outputs["4"] == {"text": ["z+a"]}


@pytest.mark.parametrize(("node", "inputs", "missing"), [
    ("RealCheckpointInfo", {"ckpt_path": "m.safetensors"},
     "comfy.sd.load_checkpoint_guess_config"),
    ("RealGuiderFromModel", {"cfg": 4.0}, "comfy.samplers.CFGGuider"),
])
def test_a_stubbed_name_fails_the_node_clearly_when_it_runs(session: Session, node: str,
                                                            inputs: dict[str, Any],
                                                            missing: str):
    result = session.run({"1": {"class_type": node, "inputs": inputs}})
    assert not result.ok
    assert f"{missing} is not available in Steerflow" in str(result.run.error)


def test_latent_preview_callback_and_previewer_base():
    import latent_preview

    assert latent_preview.get_previewer("cpu", None) is None

    class Mine(latent_preview.LatentPreviewer):
        def decode_latent_to_preview(self, x0: Any) -> Any:
            return "image"

    assert Mine().decode_latent_to_preview_image("JPEG", None) == ("JPEG", "image", 512)
    out: dict[str, Any] = {}
    latent_preview.prepare_callback(None, 3, out)(0, "x0", "x", 3)  # no run: no event
    assert out == {"x0": "x0"}


# --- ComfyUI's node classes from `nodes` -------------------------------------------

def test_from_nodes_import_comfyui_node_classes(tmp_path: Path):
    """``from nodes import SaveImage, LoraLoader``: ComfyUI's classes through our package."""
    import nodes

    registry = load(tmp_path)
    assert "classes_pack" not in errors(registry), errors(registry)
    assert nodes.MAX_RESOLUTION == 16384
    with pytest.raises(AttributeError):
        nodes.NotAComfyNode  # noqa: B018


@pytest.fixture
def classes(tmp_path: Path) -> Session:
    registry = load(tmp_path)
    assert "classes_pack" not in errors(registry), errors(registry)
    return Session(tmp_path, device="cpu", registry=registry)


def test_saveimage_subclasses_save_through_steerflow(classes: Session):
    write_png(classes, "in.png", (4, 2), (0, 255, 0))
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "RealSaveWithSuffix",
              "inputs": {"images": ["1", 0], "filename_prefix": "sub/pic", "suffix": "v2"}},
        "3": {"class_type": "RealMaskPreview", "inputs": {"mask": ["1", 1]}},
        "4": {"class_type": "RealImageCompare", "inputs": {"image_a": ["1", 0],
                                                           "image_b": ["1", 0]}},
    }
    result = classes.run(prompt, extra={"extra_pnginfo": {"note": "hi"}})
    assert result.ok, result.run.error
    outputs = result.run.outputs
    assert outputs["2"]["images"] == [{"filename": "pic_v2_00001_.png", "subfolder": "sub",
                                       "type": "output"}]
    [mask] = outputs["3"]["images"]
    assert mask["type"] == "temp" and mask["filename"].startswith("maskpreview_temp_")
    assert outputs["4"]["a_images"][0]["type"] == "temp"
    assert outputs["4"]["a_images"][0]["filename"].startswith("compare.a_temp_")
    from PIL import Image

    with Image.open(classes.env.resolve("output", "sub", "pic_v2_00001_.png")) as img:
        assert img.getpixel((0, 0)) == (0, 255, 0)
        assert '"note": "hi"' in img.info["note"] or img.info["note"] == '"hi"'
        assert "prompt" in img.info


def test_calling_builtin_node_classes_inside_a_pack_node(classes: Session):
    write_png(classes, "in.png", (4, 2), (0, 0, 255))
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "RealSizedLatent",
              "inputs": {"image": ["1", 0], "width": 16, "method": "bilinear"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
        "4": {"class_type": "RealNoisyLatent", "inputs": {"samples": ["2", 0], "seed": 1}},
    }
    result = classes.run(prompt)
    assert result.ok, result.run.error
    from PIL import Image

    with Image.open(result.image_paths[0]) as img:
        assert img.size == (16, 16)


def test_builtin_node_classes_show_steerflows_inputs(classes: Session):
    from comfy_compat.nodes_module import COMFY_NAMES
    from nodes import ImageScale, LoraLoader

    schema = classes.registry.get("RealLoraWithInfo").schema(classes.env)
    assert list(schema["input"]["required"]) == ["model", "clip", "lora_name",
                                                "strength_model", "strength_clip"]
    assert schema["output"] == ["MODEL", "CLIP", "STRING"]
    assert LoraLoader.FUNCTION == "load_lora" and ImageScale.crop_methods == ["disabled",
                                                                              "center"]
    assert {"SaveImage", "PreviewImage", "common_ksampler", "KSampler"} <= COMFY_NAMES
    # and every one of them imports as a pack writes it (essentials' sampling.py does
    # ``from nodes import common_ksampler, CLIPTextEncode``)
    import nodes

    for name in COMFY_NAMES:
        assert getattr(nodes, name) is not None, name
    with pytest.raises(RuntimeError, match="only run inside a node's run"):
        LoraLoader().load_lora(None, None, "x.safetensors", 1.0, 1.0)
    with pytest.raises(TypeError, match="'denoise' is not an input"):
        importlib.import_module("nodes").KSamplerAdvanced().sample(*[None] * 13, denoise=0.5)


def test_every_bridged_class_names_steerflow_inputs():
    """ComfyUI's parameter names, in ComfyUI's order, are the built-in node's inputs."""
    import nodes
    from comfy_compat.builtin_nodes import COMFY_NODES, comfy_class

    types = {cls.TYPE: cls for cls in nodes.NODE_CLASSES}
    for name, (type_id, function, params, _ignorable) in COMFY_NODES.items():
        cls = types[type_id]
        assert set(params) <= set(cls.INPUT_SPECS), name
        required = {n for n, s in cls.INPUT_SPECS.items() if s.required and not s.has_default}
        assert required <= set(params), name
        assert function == comfy_class(name).FUNCTION


def test_more_node_classes_bridge_with_comfyuis_methods():
    """essentials' ConditioningSetTimestepRange, Impact's SaveLatent, ...: ComfyUI's
    method and argument order, run by the built-in node (inside a node's run only)."""
    from comfy_compat.builtin_nodes import comfy_class

    ranged = comfy_class("ConditioningSetTimestepRange")
    assert ranged.FUNCTION == "set_range" and ranged.RETURN_TYPES == ("CONDITIONING",)
    with pytest.raises(RuntimeError, match="only run inside a node's run"):
        ranged().set_range(None, 0.0, 0.5)
    save = comfy_class("SaveLatent")
    assert save.OUTPUT_NODE and save.FUNCTION == "save"
    with pytest.raises(RuntimeError, match="only run inside a node's run"):  # prompt dropped
        save().save(None, "x", prompt={"1": {}}, extra_pnginfo={})
    with pytest.raises(TypeError, match="'nope' is not an input"):
        save().save(None, "x", nope=1)


def test_packs_import_against_the_runs_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A pack that lists its input folder when it registers sees the server's base
    directory (default_registry binds the environment first), not the working one."""
    from engine.environment import Environment
    from engine.registry import default_registry

    monkeypatch.chdir(tmp_path)  # no input/ here
    env = Environment.create(tmp_path / "base", device="cpu")
    env.folder("input", create=True).joinpath("pic.png").write_bytes(b"")
    registry = default_registry(PACKS, env=env)
    assert "helpers_pack" not in errors(registry), errors(registry)
    schema = registry.get("RealLoadImagesFromInput").schema(env)
    assert "pic.png" in json.dumps(schema)
    assert not (tmp_path / "input").exists()


# --- declarations a strict reading would refuse ---------------------------------------

def test_quirky_declarations_of_real_packs_load(registry: NodeRegistry, session: Session):
    from aiohttp import web

    from engine import PromptValidationError
    from server import PromptServer

    assert "quirks_pack" not in errors(registry), errors(registry)
    # an unhashable "any type" str subclass (ComfyUI-Logic) is the any type
    assert registry.get("QuirksIf").schema(session.env)["output"] == ["*"]
    linked = {"1": {"class_type": "RealTypedJoin", "inputs": {"text": "x", "count": 1}},
              "2": {"class_type": "QuirksIf", "inputs": {"condition": True,
                                                         "if_true": ["1", 0],
                                                         "if_false": ["1", 0]}}}
    session.validate({**linked, "3": {"class_type": "RealTypedJoin", "inputs": {
        "text": "y", "count": 1, "anything": ["2", 0]}}})
    # float bounds on an INT (WAS): the integers inside them
    for radius, ok in ((1, True), (9, True), (0, False), (10, False)):
        prompt = {"r": {"class_type": "QuirksRadius", "inputs": {"radius": radius}},
                  "j": {"class_type": "RealTypedJoin", "inputs": {
                      "text": "y", "count": 1, "anything": ["r", 0]}}}
        if ok:
            session.validate(prompt)
        else:
            with pytest.raises(PromptValidationError):
                session.validate(prompt)
    # routes added on the app at import (KJNodes) join the pack routes
    assert ("GET", "/quirks/hello") in [(r.method, r.path) for r in PromptServer.instance.routes
                                         if isinstance(r, web.RouteDef)]


def test_reshape_latent_to_as_comfyuis_helper():
    """comfy_extras.nodes_latent.reshape_latent_to (ComfyUI's post-processing nodes import
    it): resized to the target's size and repeated to its batch."""
    import torch
    from comfy_extras.nodes_latent import reshape_latent_to

    latent = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert reshape_latent_to((3, 1, 4, 4), latent).shape == (3, 1, 4, 4)
    assert torch.equal(reshape_latent_to((3, 1, 4, 4), latent)[2], latent[0])
    assert reshape_latent_to((2, 1, 2, 6), latent).shape == (2, 1, 2, 6)
    assert reshape_latent_to((5, 1, 4, 4), latent, repeat_batch=False).shape == (1, 1, 4, 4)
