"""ControlNet-Union (xinsir's ControlNet++) and SetUnionControlNetType equal diffusers'
``StableDiffusionXLControlNetUnionPipeline`` on the tiny SDXL model and a tiny random union
ControlNet (non-square, folder and single file), ComfyUI's ``auto`` equals a plain ControlNet
with the zero-type embedding, and the errors are structured."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from engine import ExecutionContext, Input, Node, Output
from engine.session import Session
from engine.validation import PromptValidationError
from nodes.diffusion.controlnet_union import UNION_TYPES
from nodes.diffusion.handles import Conditioning
from nodes.diffusion.tiny_controlnet_union import TINY_UNION_NAME, TINY_UNION_TYPES
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error
from tests.test_controlnet import control_picture
from tests.test_sdxl import BASE, HEIGHT, NEGATIVE, PROMPT, WIDTH, txt2img_prompt

UNION = TINY_UNION_NAME
PLAIN = "steerflow-tiny-sdxl-controlnet"
ADAPTER = "steerflow-tiny-sdxl-adapter"
TOL = 1e-4
STEPS = 5


class UnionMultiTypeApply(Node):
    """Test-only: one union ControlNet, two images with two types, one extension (the
    pipeline's multi-type call; ComfyUI has no node for it)."""

    TYPE = "TestUnionMultiTypeApply"
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))
    positive: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    control_net: Any = Input(type="CONTROL_NET")
    image1: Any = Input(type="IMAGE")
    image2: Any = Input(type="IMAGE")
    types: str = Input("1,3")
    strength: float = Input(1.0, min=0.0, max=10.0)
    start_percent: float = Input(0.0, min=0.0, max=1.0)
    end_percent: float = Input(1.0, min=0.0, max=1.0)

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning, Conditioning]:
        from dataclasses import replace

        from nodes.controlnet import _with_extension
        from nodes.diffusion.controlnet import ControlNetResiduals

        net = replace(self.control_net,
                      control_types=tuple(int(t) for t in self.types.split(",")))
        ext = ControlNetResiduals(net, (self.image1, self.image2), self.strength,
                                  self.start_percent, self.end_percent)
        return _with_extension(self.positive, ext), _with_extension(self.negative, ext)


@pytest.fixture(scope="module")
def sdxl_models(tmp_path_factory) -> Path:
    from nodes.diffusion.tiny_controlnet_union import save_tiny_union
    from nodes.diffusion.tiny_sdxl import ensure_tiny_sdxl, save_tiny_sdxl_control

    root = tmp_path_factory.mktemp("union_models")
    ensure_tiny_sdxl(root)
    save_tiny_sdxl_control(root / "controlnet")
    save_tiny_union(root / "controlnet")
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("union_home")
    (home / "input").mkdir()
    control_picture((WIDTH, HEIGHT), 0).save(home / "input" / "control.png")
    control_picture((WIDTH, HEIGHT), 1).save(home / "input" / "control_b.png")
    control_picture((40, 56), 2).save(home / "input" / "control_odd.png")
    return home


@pytest.fixture(scope="module")
def session(sdxl_models, home):
    registry = registry_with_capture()
    registry.register(UnionMultiTypeApply)
    return Session(home, models_dir=sdxl_models, device="cpu", registry=registry)


@pytest.fixture(scope="module")
def base(sdxl_models):
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
        sdxl_models / "checkpoints" / BASE, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def union_net(sdxl_models):
    return diffusers.ControlNetUnionModel.from_pretrained(
        sdxl_models / "controlnet" / UNION, local_files_only=True).eval()


def scheduler(base, sampler: str):
    from nodes.diffusion.schedulers import SAMPLERS, SCHEDULES

    class_name, extra = SAMPLERS[sampler]
    return getattr(diffusers, class_name).from_config(base.scheduler.config, **extra,
                                                      **SCHEDULES["normal"])


def union_prompt(controls: list[dict], *, sampler: str = "euler", cfg: float = 5.0,
                 batch: int = 1) -> dict:
    """txt2img on the tiny SDXL base with, per control, Load ControlNet Model ->
    SetUnionControlNetType (when it has a ``type``) -> Apply ControlNet, chained."""
    prompt = txt2img_prompt(BASE, sampler, "normal", steps=STEPS, cfg=cfg)
    prompt["5"]["inputs"]["batch_size"] = batch
    pos, neg = ["6", 0], ["7", 0]
    for i, c in enumerate(controls):
        prompt[f"cn{i}"] = {"class_type": "ControlNetLoader",
                            "inputs": {"control_net_name": c.get("net", UNION)}}
        net = [f"cn{i}", 0]
        if "type" in c:
            prompt[f"type{i}"] = {"class_type": "SetUnionControlNetType",
                                  "inputs": {"control_net": net, "type": c["type"]}}
            net = [f"type{i}", 0]
        prompt[f"img{i}"] = {"class_type": "LoadImage",
                             "inputs": {"image": c.get("image", "control.png")}}
        prompt[f"apply{i}"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": pos, "negative": neg, "control_net": net, "image": [f"img{i}", 0],
            "strength": c.get("strength", 1.0), "start_percent": c.get("start", 0.0),
            "end_percent": c.get("end", 1.0), "guess_mode": c.get("guess", False)}}
        pos, neg = [f"apply{i}", 0], [f"apply{i}", 1]
    prompt["3"]["inputs"]["positive"], prompt["3"]["inputs"]["negative"] = pos, neg
    return prompt


def graph_image(session, prompt) -> np.ndarray:
    key = uuid.uuid4().hex
    prompt["10"]["inputs"]["key"] = key
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).cpu().numpy()


def reference(base, controlnet, home, *, sampler="euler", pipeline=None, images=("control.png",),
              **kwargs) -> np.ndarray:
    cls = pipeline or diffusers.StableDiffusionXLControlNetUnionPipeline
    pipe = cls(**{k: v for k, v in base.components.items() if k != "scheduler"},
               controlnet=controlnet, scheduler=scheduler(base, sampler))
    pipe.set_progress_bar_config(disable=True)
    pictures = [Image.open(home / "input" / x) if isinstance(x, str) else x for x in images]
    key = "image" if cls is diffusers.StableDiffusionXLControlNetPipeline else "control_image"
    kwargs.setdefault("guidance_scale", 5.0)
    return pipe(PROMPT, negative_prompt=NEGATIVE, **{key: pictures[0] if key == "image"
                                                     else pictures},
                num_inference_steps=STEPS, height=HEIGHT, width=WIDTH, output_type="np",
                generator=torch.Generator("cpu").manual_seed(3), **kwargs).images


# --- parity with StableDiffusionXLControlNetUnionPipeline ----------------------------------------

@pytest.mark.parametrize(("net", "sampler", "kind", "strength", "start", "end"), [
    (UNION, "euler", "depth", 1.0, 0.0, 1.0),
    (f"{UNION}.safetensors", "dpmpp_2m", "canny/lineart/anime_lineart/mlsd", 0.7, 0.2, 0.8),
    (UNION, "euler", "openpose", 1.3, 0.0, 1.0),
])
def test_one_type_matches_union_pipeline(session, base, union_net, home, net, sampler, kind,
                                         strength, start, end):
    control = {"net": net, "type": kind, "strength": strength, "start": start, "end": end}
    ours = graph_image(session, union_prompt([control], sampler=sampler))
    ref = reference(base, union_net, home, sampler=sampler, control_mode=[UNION_TYPES[kind]],
                    controlnet_conditioning_scale=strength, control_guidance_start=start,
                    control_guidance_end=end)
    assert ours.shape == ref.shape == (1, HEIGHT, WIDTH, 3)
    assert np.abs(ours - ref).max() <= TOL
    plain = graph_image(session, union_prompt([], sampler=sampler))
    assert np.abs(ours - plain).max() > 1e-3  # the ControlNet acts


def test_single_file_equals_folder_and_the_type_matters(session, sdxl_models):
    from nodes.diffusion.controlnet_loading import load_controlnet

    folder = load_controlnet(sdxl_models / "controlnet" / UNION)
    single = load_controlnet(sdxl_models / "controlnet" / f"{UNION}.safetensors")
    assert isinstance(single, diffusers.ControlNetUnionModel)
    assert ({k: v for k, v in single.config.items() if not k.startswith("_")}
            == {k: v for k, v in folder.config.items() if not k.startswith("_")})
    assert all(torch.equal(v, single.state_dict()[k]) for k, v in folder.state_dict().items())
    depth = graph_image(session, union_prompt([{"type": "depth"}]))
    assert np.array_equal(depth, graph_image(
        session, union_prompt([{"net": f"{UNION}.safetensors", "type": "depth"}])))
    normal = graph_image(session, union_prompt([{"type": "normal"}]))
    assert np.abs(depth - normal).max() > 1e-4


def test_batch_of_two_matches_union_pipeline(session, base, union_net, home):
    ours = graph_image(session, union_prompt([{"type": "segment"}], batch=2))
    ref = reference(base, union_net, home, control_mode=[5], num_images_per_prompt=2)
    assert ours.shape == ref.shape == (2, HEIGHT, WIDTH, 3)
    assert np.abs(ours - ref).max() <= TOL


def test_guess_mode_without_cfg_matches_union_pipeline(session, base, union_net, home):
    """Guess mode: the pipeline only runs it without CFG (with CFG its control_type has
    twice the ControlNet's rows and the call fails); ours runs both."""
    ours = graph_image(session, union_prompt([{"type": "depth", "guess": True}], cfg=1.0))
    ref = reference(base, union_net, home, control_mode=[1], guess_mode=True,
                    guidance_scale=1.0)
    assert np.abs(ours - ref).max() <= TOL
    with_cfg = graph_image(session, union_prompt([{"type": "depth", "guess": True}]))
    assert np.abs(with_cfg - graph_image(session, union_prompt([{"type": "depth"}]))).max() > 1e-4


def test_two_chained_types_match_multi_union(session, base, union_net, home):
    """Two applications of one union model with two types = MultiControlNetUnionModel."""
    controls = [{"type": "depth", "strength": 1.0},
                {"type": "canny/lineart/anime_lineart/mlsd", "image": "control_b.png",
                 "strength": 0.6, "start": 0.3, "end": 0.7}]
    ours = graph_image(session, union_prompt(controls))
    from diffusers.models.controlnets.multicontrolnet_union import MultiControlNetUnionModel

    multi = MultiControlNetUnionModel([union_net, union_net])
    ref = reference(base, multi, home, images=("control.png", "control_b.png"),
                    control_mode=[1, 3], controlnet_conditioning_scale=[1.0, 0.6],
                    control_guidance_start=[0.0, 0.3], control_guidance_end=[1.0, 0.7])
    assert np.abs(ours - ref).max() <= TOL
    first = graph_image(session, union_prompt(controls[:1]))
    assert np.abs(ours - first).max() > 1e-3


@pytest.mark.parametrize(("strength", "start", "end"), [(1.0, 0.0, 1.0), (0.8, 0.2, 0.8)])
def test_multi_type_call_matches_union_pipeline(session, base, union_net, home, strength,
                                                start, end):
    """One union model, two images with two types in one call (the pipeline's
    ``control_image=[a, b], control_mode=[1, 3]``), through the same extension."""
    prompt = union_prompt([])
    prompt["cn"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": UNION}}
    prompt["a"] = {"class_type": "LoadImage", "inputs": {"image": "control.png"}}
    prompt["b"] = {"class_type": "LoadImage", "inputs": {"image": "control_b.png"}}
    prompt["multi"] = {"class_type": "TestUnionMultiTypeApply", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["cn", 0],
        "image1": ["a", 0], "image2": ["b", 0], "types": "1,3", "strength": strength,
        "start_percent": start, "end_percent": end}}
    prompt["3"]["inputs"]["positive"], prompt["3"]["inputs"]["negative"] = ["multi", 0], [
        "multi", 1]
    ours = graph_image(session, prompt)
    ref = reference(base, union_net, home, images=("control.png", "control_b.png"),
                    control_mode=[1, 3], controlnet_conditioning_scale=strength,
                    control_guidance_start=start, control_guidance_end=end)
    assert np.abs(ours - ref).max() <= TOL


# --- ComfyUI's auto -----------------------------------------------------------------------------

def auto_as_plain_controlnet(union: diffusers.ControlNetUnionModel) -> diffusers.ControlNetModel:
    """ComfyUI's ``auto``: the hint added as a plain ControlNet adds it, plus the embedding of
    the all-zero control-type vector, a constant folded here into the time embedding."""
    keys = set(diffusers.ControlNetModel.from_config(union.config).state_dict())
    plain = diffusers.ControlNetModel.from_config(union.config)
    plain.load_state_dict({k: v for k, v in union.state_dict().items() if k in keys})
    with torch.no_grad():
        zeros = torch.zeros(union.config.num_control_type)
        extra = union.control_add_embedding(union.control_type_proj(zeros).reshape(1, -1))
        plain.time_embedding.linear_2.bias += extra[0]
    return plain.eval()


def test_auto_is_comfyuis_untyped_union_call(session, base, union_net, home):
    ours = graph_image(session, union_prompt([{"type": "auto", "strength": 0.9}]))
    ref = reference(base, auto_as_plain_controlnet(union_net), home,
                    pipeline=diffusers.StableDiffusionXLControlNetPipeline,
                    controlnet_conditioning_scale=0.9)
    assert np.abs(ours - ref).max() <= TOL
    # without SetUnionControlNetType a union model runs as auto (ComfyUI's default)
    assert np.array_equal(ours, graph_image(session, union_prompt([{"strength": 0.9}])))
    typed = graph_image(session, union_prompt([{"type": "depth", "strength": 0.9}]))
    assert np.abs(ours - typed).max() > 1e-4


def test_auto_leaves_no_hook_behind(sdxl_models):
    from nodes.diffusion.controlnet_loading import load_controlnet
    from nodes.diffusion.controlnet_union import union_forward

    net = load_controlnet(sdxl_models / "controlnet" / UNION)
    with union_forward(net, ()):
        assert len(net.spatial_ch_projs._forward_hooks) == 1
        assert not net.spatial_ch_projs(torch.ones(1, 32)).any()
    assert not net.spatial_ch_projs._forward_hooks
    with pytest.raises(RuntimeError), union_forward(net, ()):
        raise RuntimeError("interrupted")
    assert not net.spatial_ch_projs._forward_hooks


def test_offloaded_union_puts_its_attention_projection_on_the_compute_device(
        sdxl_models, monkeypatch):
    """Under sequential offload nn.MultiheadAttention reads ``out_proj``'s weights without
    calling it, so its offload hook never moves them: the call does, and puts them back.
    (On this CPU-only test the compute device is the CPU: the path runs, the move is moot.)"""
    from nodes.diffusion import memory
    from nodes.diffusion.controlnet_loading import load_controlnet
    from nodes.diffusion.controlnet_union import union_call_kwargs, union_forward

    net = load_controlnet(sdxl_models / "controlnet" / UNION)
    asked = []
    real = memory.compute_device
    monkeypatch.setattr(memory, "compute_device", lambda m: asked.append(m) or real(m))
    memory.start_sequential_offload(net, "cpu")
    try:
        proj = net.transformer_layes[0].attn.out_proj
        before = proj.weight.data_ptr()
        added = {"text_embeds": torch.zeros(1, 48), "time_ids": torch.zeros(1, 6)}
        with torch.no_grad(), union_forward(net, (1,)):
            down, _ = net(torch.zeros(1, 4, 8, 12), torch.tensor(10),
                          encoder_hidden_states=torch.zeros(1, 77, 80),
                          added_cond_kwargs=added, return_dict=False,
                          **union_call_kwargs(net, (1,), [torch.zeros(1, 3, 64, 96)], 1.0, 1))
        assert asked == [net] and proj.weight.data_ptr() == before and len(down) == 6
    finally:
        memory.end_sequential_offload(net, "cpu")


# --- union with a plain ControlNet ----------------------------------------------------------------

def test_union_and_plain_controlnet_in_one_run(session):
    both = graph_image(session, union_prompt([
        {"type": "depth"}, {"net": PLAIN, "image": "control_b.png", "strength": 0.8}]))
    union_only = graph_image(session, union_prompt([{"type": "depth"}]))
    plain_only = graph_image(session, union_prompt([
        {"net": PLAIN, "image": "control_b.png", "strength": 0.8}]))
    assert np.abs(both - union_only).max() > 1e-3
    assert np.abs(both - plain_only).max() > 1e-3


# --- loading ------------------------------------------------------------------------------------

def _real_size_union(count: int) -> diffusers.ControlNetUnionModel:
    from accelerate import init_empty_weights

    from nodes.diffusion.loading import family_configs

    with init_empty_weights():  # SDXL sizes, no memory
        unet = diffusers.UNet2DConditionModel.from_config(family_configs("sdxl")["unet"])
        shape = diffusers.ControlNetUnionModel.from_unet(unet, load_weights_from_unet=False)
        config = {k: v for k, v in shape.config.items() if not k.startswith("_")}
        return diffusers.ControlNetUnionModel.from_config({**config, "num_control_type": count})


def test_diff_loader_loads_a_union_file_as_it_is(session):
    prompt = union_prompt([{"net": f"{UNION}.safetensors", "type": "depth"}])
    expected = graph_image(session, prompt)
    prompt["cn0"] = {"class_type": "DiffControlNetLoader", "inputs": {
        "model": ["4", 0], "control_net_name": f"{UNION}.safetensors"}}
    assert np.array_equal(graph_image(session, prompt), expected)


@pytest.mark.parametrize("layout", ["xinsir", "original"])
def test_released_union_file_gets_its_config_from_the_weights(layout):
    """An SDXL union file as xinsir publishes it (diffusers names, no config), or in the
    original layout with ComfyUI's attention names: config from the shapes, ProMax's 8 types."""
    from nodes.diffusion.controlnet_loading import (
        controlnet_from_state_dict,
        controlnet_to_original,
    )
    from nodes.diffusion.controlnet_union import UNION_PREFIXES

    net = _real_size_union(8)
    weights = net.state_dict()
    if layout == "original":
        plain = {k: v for k, v in weights.items() if not k.startswith(UNION_PREFIXES)}
        weights = {**controlnet_to_original(plain, dict(net.config)),
                   **{"control_model." + k.replace("in_proj_", "in_proj."): v
                      for k, v in weights.items() if k.startswith(UNION_PREFIXES)}}
    loaded = controlnet_from_state_dict(weights, name="promax.safetensors")
    assert isinstance(loaded, diffusers.ControlNetUnionModel)
    keys = ("block_out_channels", "cross_attention_dim", "attention_head_dim",
            "transformer_layers_per_block", "addition_time_embed_dim", "num_control_type",
            "num_trans_channel", "num_trans_head", "num_trans_layer", "num_proj_channel",
            "conditioning_embedding_out_channels", "projection_class_embeddings_input_dim")
    assert {k: loaded.config[k] for k in keys} == {k: net.config[k] for k in keys}
    assert loaded.config.num_control_type == 8
    shapes = {k: v.shape for k, v in loaded.state_dict().items()}
    assert shapes == {k: v.shape for k, v in net.state_dict().items()}


def test_xinsir_folder_class_name_and_file_without_metadata(sdxl_models, tmp_path):
    """xinsir's config.json names the class ControlNetModel_Union; it loads as the union."""
    from nodes.diffusion.controlnet_loading import load_control_model
    from nodes.diffusion.tiny_controlnet_union import save_tiny_union

    folder = tmp_path / "xinsir"
    shutil.copytree(sdxl_models / "controlnet" / UNION, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config,
                                                    "_class_name": "ControlNetModel_Union"}))
    assert isinstance(load_control_model(folder), diffusers.ControlNetUnionModel)
    # The tiny model is no known family: without the metadata its base config is unknown.
    bare = save_tiny_union(tmp_path / "bare", with_config=False)["single_file"]
    with pytest.raises(ValueError, match="cannot tell which model"):
        load_control_model(bare)


def test_bad_union_weights_are_named():
    from nodes.diffusion.controlnet_union import union_config_from_weights

    good = _real_size_union(6).state_dict()
    with pytest.raises(ValueError, match="2-D task_embedding"):
        union_config_from_weights({**good, "task_embedding": torch.zeros(6)}, 256, "x")
    with pytest.raises(ValueError, match="condition transformer"):
        union_config_from_weights({k: v for k, v in good.items()
                                   if not k.startswith("transformer_layes.")}, 256, "x")
    with pytest.raises(ValueError, match="without its control-type embedding"):
        union_config_from_weights({k: v for k, v in good.items()
                                   if not k.startswith("control_add_embedding.")}, 256, "x")
    with pytest.raises(ValueError, match="control-type embedding takes 1536 inputs"):
        union_config_from_weights(good, 8, "x")


# --- SetUnionControlNetType: errors and no-ops ---------------------------------------------------

def test_a_type_the_model_was_not_trained_with_is_refused(session):
    assert TINY_UNION_TYPES == 6
    message = run_error(session, union_prompt([{"type": "tile"}]))
    assert "'tile' (index 6)" in message and "6 types" in message and "ProMax" in message
    assert "openpose" in message and "segment" in message


def test_an_unknown_type_is_refused_at_validation(session):
    with pytest.raises(PromptValidationError, match="type"):
        session.validate(union_prompt([{"type": "pose"}]))


@pytest.mark.parametrize("net", [PLAIN, ADAPTER])
def test_a_type_on_a_plain_controlnet_or_adapter_does_nothing_and_warns(session, net):
    """ComfyUI passes the type to the model, which a plain ControlNet ignores."""
    typed = union_prompt([{"net": net, "type": "depth"}])
    result = session.run(typed, keep_events=True)
    assert result.ok, result.run.error
    warnings = [d for name, d in result.events if name == "node_warning"]
    assert len(warnings) == 1 and "not a union ControlNet" in warnings[0]["message"]
    ours = graph_image(session, typed)
    assert np.array_equal(ours, graph_image(session, union_prompt([{"net": net}])))
    auto = session.run(union_prompt([{"net": net, "type": "auto"}]), keep_events=True)
    assert auto.ok and not [d for name, d in auto.events if name == "node_warning"]


def test_another_size_is_stretched_like_a_tensor_in_the_union_pipeline(session, base,
                                                                       union_net, home):
    ours = graph_image(session, union_prompt([{"type": "depth", "image": "control_odd.png"}]))
    pixels = np.asarray(Image.open(home / "input" / "control_odd.png"), dtype=np.float32)
    tensor = torch.from_numpy(pixels / 255.0).permute(2, 0, 1)[None]  # resized as a tensor
    ref = reference(base, union_net, home, images=(tensor,), control_mode=[1])
    assert ours.shape == ref.shape == (1, HEIGHT, WIDTH, 3)
    assert np.abs(ours - ref).max() <= TOL


def test_control_image_batch_mismatch_is_refused(session):
    prompt = union_prompt([{"type": "depth"}], batch=2)
    prompt["rep"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["img0", 0],
                                                                  "amount": 3}}
    prompt["apply0"]["inputs"]["image"] = ["rep", 0]
    message = run_error(session, prompt)
    assert "control image batch (3)" in message and "latent batch (2)" in message


def test_node_schema_is_comfyuis():
    schema = registry_with_capture().get("SetUnionControlNetType").schema()
    assert list(schema["input"]["required"]) == ["control_net", "type"]
    assert schema["input"]["required"]["type"][0] == [
        "auto", "openpose", "depth", "hed/pidi/scribble/ted",
        "canny/lineart/anime_lineart/mlsd", "normal", "segment", "tile", "repaint"]
    assert schema["output"] == ["CONTROL_NET"]
    assert schema["category"] == "conditioning/controlnet"


def test_a_control_lora_file_is_named_as_such(tmp_path):
    """The files drill: Stability's control-lora files ("lora_controlnet" key) were told
    "cannot tell which model this ControlNet is for (cross-attention width none)"."""
    from safetensors.torch import save_file

    from nodes.diffusion.controlnet_loading import load_control_model

    path = tmp_path / "control-lora-canny-rank128.safetensors"
    save_file({"lora_controlnet": torch.zeros(1),
               "input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match=r"is a Control-LoRA .* which Steerflow does not load"):
        load_control_model(path)
