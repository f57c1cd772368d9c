"""ComfyUI's training nodes (TrainLoraNode, LoraModelLoader, SaveLoRA, LossGraphNode and
the training-dataset nodes) on our trainer: ComfyUI-style API prompts run end to end, the
step's math is ComfyUI's (checked against an independent DDPM formulation), the LoRA
covers ComfyUI's layers, saved files read back through Load LoRA, and bad input gives
structured errors."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest
import torch

from engine import ExecutionContext, Input, Node, Output, PromptValidationError
from engine.session import Session
from nodes.diffusion import comfy_train as ct
from nodes.diffusion.comfy_lora_layers import (
    DiffLayers,
    create_layers,
    existing_steps,
    fit_state,
    lora_modules,
)
from nodes.diffusion.handles import DiffusionModel
from nodes.diffusion.loading import load_components
from nodes.diffusion.lora import kohya_keys
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

SIZE = 32  # 4x4 latents on the tiny model


class ImageTextList(Node):
    """Test source: ``count`` random images (a list of [1, H, W, 3]) and their captions."""

    TYPE = "TestImageTextList"
    OUTPUTS = (Output("IMAGE", is_list=True), Output("STRING", is_list=True))

    count: int = Input(3, min=1, max=8)
    sizes: str = Input("32x32", description="WxH per image, comma-separated (cycled)")
    captions: int = Input(-1, min=-1, max=8, description="-1: one each; else that many")

    def execute(self, ctx: ExecutionContext) -> tuple[list[Any], list[str]]:
        g = torch.Generator().manual_seed(0)
        sizes = [tuple(int(v) for v in s.split("x")) for s in self.sizes.split(",")]
        images = [torch.rand(1, sizes[i % len(sizes)][1], sizes[i % len(sizes)][0], 3,
                             generator=g) for i in range(self.count)]
        n = self.count if self.captions < 0 else self.captions
        return images, [f"a sks shape number {i}" for i in range(n)]


class ListCapture(Node):
    """Keeps the whole list it receives in ``CAPTURED[key]``."""

    TYPE = "TestListCapture"
    OUTPUT_NODE = True
    INPUT_IS_LIST = True
    value: Any = Input(type="*")
    key: str = Input("list")

    def execute(self, ctx: ExecutionContext) -> tuple[()]:
        CAPTURED[self.key[0]] = list(self.value)
        return ()


def make_registry():
    registry = registry_with_capture()
    registry.register(ImageTextList)
    registry.register(ListCapture)
    return registry


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory):
    return Session(tmp_path_factory.mktemp("home"), models_dir=models_dir, device="cpu",
                   registry=make_registry())


def train_inputs(**overrides: Any) -> dict[str, Any]:
    inputs = {"model": ["ckpt", 0], "latents": ["ds", 0], "positive": ["ds", 1],
              "batch_size": 2, "grad_accumulation_steps": 1, "steps": 3,
              "learning_rate": 1e-2, "rank": 4, "optimizer": "AdamW", "loss_function": "MSE",
              "seed": 0, "training_dtype": "fp32", "lora_dtype": "fp32",
              "quantized_backward": False, "algorithm": "LoRA",
              "gradient_checkpointing": False, "checkpoint_depth": 1, "offloading": False,
              "existing_lora": "[None]", "bucket_mode": False, "bypass_mode": False}
    inputs.update(overrides)
    return inputs


def prompt(*, model: list | None = None, images: dict | None = None,
           train: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
    """Images -> Make Training Dataset -> TrainLoraNode -> Load LoRA Model -> KSampler,
    the sampled latent kept by capture node "cap", the loss map by "loss"."""
    p = {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "imgs": {"class_type": "TestImageTextList", "inputs": images or {"count": 3}},
        "ds": {"class_type": "MakeTrainingDataset", "inputs": {
            "images": ["imgs", 0], "vae": ["ckpt", 2], "clip": ["ckpt", 1],
            "texts": ["imgs", 1]}},
        "train": {"class_type": "TrainLoraNode", "inputs": train_inputs(**(train or {}))},
        "apply": {"class_type": "LoraModelLoader", "inputs": {
            "model": ["ckpt", 0], "lora": ["train", 0], "strength_model": 1.0,
            "bypass": False}},
        "pos": {"class_type": "CLIPTextEncode",
                "inputs": {"text": "a sks shape", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "lat": {"class_type": "EmptyLatentImage",
                "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": model or ["apply", 0], "seed": 1, "steps": 3, "cfg": 5.0,
            "sampler_name": "euler", "scheduler": "normal", "positive": ["pos", 0],
            "negative": ["neg", 0], "latent_image": ["lat", 0], "denoise": 1.0}},
        "cap": {"class_type": "TestCapture",
                "inputs": {"value": ["ks", 0], "key": uuid.uuid4().hex}},
        "loss": {"class_type": "TestCapture",
                 "inputs": {"value": ["train", 1], "key": uuid.uuid4().hex}},
    }
    p.update(extra or {})
    return p


def run(session, p: dict[str, Any]) -> tuple[torch.Tensor, dict[str, list[float]], Any]:
    result = session.run(p)
    assert result.ok, result.run.error
    latent = CAPTURED.pop(p["cap"]["inputs"]["key"]).samples
    return latent, CAPTURED.pop(p["loss"]["inputs"]["key"], None), result


def sample_only(session, model: list, extra: dict) -> torch.Tensor:
    p = prompt(model=model, extra=extra)
    for key in ("imgs", "ds", "train", "apply", "loss"):
        p.pop(key)
    result = session.run(p)
    assert result.ok, result.run.error
    return CAPTURED.pop(p["cap"]["inputs"]["key"]).samples


# --- the workflow ------------------------------------------------------------------------------

def test_comfy_workflow_trains_saves_and_loads_back(session):
    base = sample_only(session, ["ckpt", 0], {})
    prefix = f"loras/cts_{uuid.uuid4().hex[:8]}"
    p = prompt(extra={
        "save": {"class_type": "SaveLoRA", "inputs": {
            "lora": ["train", 0], "prefix": prefix, "steps": ["train", 2]}},
        "graph": {"class_type": "LossGraphNode",
                  "inputs": {"loss": ["train", 1], "filename_prefix": "loss_graph"}}})
    trained, loss_map, result = run(session, p)
    # the loss map: one finite loss per micro-step; the plot is shown as a preview
    assert set(loss_map) == {"loss"} and len(loss_map["loss"]) == 3
    assert all(math.isfinite(v) for v in loss_map["loss"])
    assert result.run.outputs["graph"]["images"][0]["type"] == "temp"
    # the LoRA changes the samples; the base model is unchanged
    assert (trained - base).abs().max() > 1e-3
    assert torch.equal(sample_only(session, ["ckpt", 0], {}), base)
    # ComfyUI's file name, in models/loras, kohya keys, metadata
    stem = prefix.removeprefix("loras/")
    path = session.env.folder("models") / "loras" / f"{stem}_3_steps_00001_.safetensors"
    assert path.is_file()
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        keys, meta = set(fh.keys()), fh.metadata()
    assert all(k.startswith("lora_unet_") for k in keys)
    assert {k.rsplit(".", 1)[-1] for k in keys} >= {"weight", "alpha", "diff", "diff_b"}
    assert meta["steerflow.trainer"] == "TrainLoraNode" and meta["steerflow.steps"] == "3"
    assert json.loads(meta["steerflow.parameters"])["rank"] == 4
    assert len(meta["steerflow.base_model_hash"]) == 64
    # Load LoRA reads the file back and samples exactly as Load LoRA Model did
    via_file = sample_only(session, ["file", 0], {"file": {
        "class_type": "LoraLoader", "inputs": {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_name": path.name,
            "strength_model": 1.0, "strength_clip": 1.0}}})
    assert torch.equal(via_file, trained)
    # a second save never replaces the first
    p2 = dict(p, save={"class_type": "SaveLoRA", "inputs": {"lora": ["train", 0],
                                                          "prefix": prefix}})
    p2["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["ks", 0], "key": "x"}}
    assert session.run(p2).ok
    CAPTURED.pop("x", None)
    plain = [f for f in path.parent.glob(f"{stem}_*_.safetensors") if "steps" not in f.name]
    assert len(plain) == 1 and path.is_file()


def test_grad_accumulation_loss_map_and_steps_output(session):
    p = prompt(train={"steps": 2, "grad_accumulation_steps": 3, "batch_size": 1},
               extra={"steps": {"class_type": "TestCapture", "inputs": {
                   "value": ["train", 2], "key": "steps_out"}}})
    _, loss_map, _ = run(session, p)
    assert len(loss_map["loss"]) == 6
    assert CAPTURED.pop("steps_out") == 2


def test_default_dtypes_and_checkpointing_run(session):
    """ComfyUI's defaults: bf16 autocast, bf16 LoRA, gradient checkpointing."""
    p = prompt(train={"training_dtype": "bf16", "lora_dtype": "bf16",
                      "gradient_checkpointing": True, "optimizer": "Adam",
                      "loss_function": "Huber", "seed": 5})
    trained, loss_map, _ = run(session, p)
    assert all(math.isfinite(v) for v in loss_map["loss"]) and trained.isfinite().all()


def test_one_caption_for_all_and_no_captions(session):
    for images in ({"count": 3, "captions": 1}, {"count": 2, "captions": 0}):
        _, loss_map, _ = run(session, prompt(images=images))
        assert len(loss_map["loss"]) == 3


def test_images_of_two_sizes_multires_and_buckets(session):
    images = {"count": 4, "sizes": "32x32,32x48"}
    _, multires, _ = run(session, prompt(images=images))
    assert len(multires["loss"]) == 3
    key = uuid.uuid4().hex
    p = prompt(images=images, train={"bucket_mode": True, "latents": ["bucket", 0],
                                     "positive": ["bucket", 1]},
               extra={"bucket": {"class_type": "ResolutionBucket", "inputs": {
                   "latents": ["ds", 0], "conditioning": ["ds", 1]}},
                   "buckets": {"class_type": "TestListCapture",
                               "inputs": {"value": ["bucket", 0], "key": key}}})
    _, buckets, _ = run(session, p)
    assert len(buckets["loss"]) == 3
    shapes = sorted(tuple(lat.samples.shape) for lat in CAPTURED.pop(key))
    assert shapes == [(2, 4, 4, 4), (2, 4, 6, 4)]


def test_save_and_load_training_dataset_round_trip(session):
    folder = f"ds_{uuid.uuid4().hex[:8]}"
    key_a, key_b = uuid.uuid4().hex, uuid.uuid4().hex
    p = prompt(extra={"save_ds": {"class_type": "SaveTrainingDataset", "inputs": {
        "latents": ["ds", 0], "conditioning": ["ds", 1], "folder_name": folder,
        "shard_size": 2}}, "made": {"class_type": "TestListCapture",
                                    "inputs": {"value": ["ds", 0], "key": key_a}}})
    run(session, p)
    out = session.env.folder("output") / folder
    assert sorted(f.name for f in out.iterdir()) == [
        "metadata.json", "shard_0000.safetensors", "shard_0001.safetensors"]
    assert json.loads((out / "metadata.json").read_text())["num_samples"] == 3
    p = prompt(train={"latents": ["load", 0], "positive": ["load", 1]}, extra={
        "load": {"class_type": "LoadTrainingDataset", "inputs": {"folder_name": folder}},
        "loaded": {"class_type": "TestListCapture", "inputs": {"value": ["load", 0],
                                                            "key": key_b}}})
    run(session, p)
    made, loaded = CAPTURED.pop(key_a), CAPTURED.pop(key_b)
    assert len(made) == len(loaded) == 3
    assert all(torch.equal(a.samples, b.samples) for a, b in zip(made, loaded, strict=True))


def test_comfyui_pickle_shards_need_allow_pickle(session, models_dir, tmp_path):
    folder = session.env.folder("output") / "comfy_ds"
    folder.mkdir(parents=True, exist_ok=True)
    raw = torch.randn(1, 4, 4, 4)
    torch.save({"latents": [{"samples": raw}], "conditioning": [
        [[torch.randn(1, 77, 32), {"pooled_output": torch.randn(1, 32)}]]]},
        folder / "shard_0000.pkl")
    p = {"load": {"class_type": "LoadTrainingDataset", "inputs": {"folder_name": "comfy_ds"}},
         "cap": {"class_type": "TestListCapture", "inputs": {"value": ["load", 0], "key": "pk"}}}
    assert "--allow-pickle" in run_error(session, p)
    trusting = Session(session.env.folder("output").parent, models_dir=models_dir,
                       device="cpu", registry=make_registry(), allow_pickle=True)
    assert trusting.run(p).ok
    (latent,) = CAPTURED.pop("pk")
    assert torch.allclose(latent.samples, raw * 0.18215)  # ComfyUI's raw latents, scaled


# --- the math ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_model_paths):
    c = load_components(tiny_model_paths["diffusers"])
    return c, DiffusionModel(c.unet, dict(c.scheduler_config))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_x0_loss_is_comfyuis_denoised_against_an_independent_ddpm_form(tiny, prediction):
    from diffusers import DDPMScheduler

    c, _ = tiny
    config = {**c.scheduler_config, "prediction_type": prediction}
    table = ct.SigmaTable(config)
    scheduler = DDPMScheduler.from_config(config)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    context = torch.randn(2, 77, 32, generator=g)
    timesteps = torch.tensor([37, 811])
    # percent = 1 - t/999 lands exactly on training timestep t
    sigmas = torch.tensor([table.percent_to_sigma(1 - int(t) / 999) for t in timesteps])
    assert torch.equal(table.timestep(sigmas), timesteps)
    with torch.no_grad():
        ours = ct.x0_loss(c.unet, table, x0, noise, sigmas, context, torch.nn.MSELoss(), None)
        alpha = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        pred = c.unet(noisy, timesteps, context).sample
        if prediction == "epsilon":
            x0_hat = (noisy - (1 - alpha).sqrt() * pred) / alpha.sqrt()
        else:
            x0_hat = alpha.sqrt() * noisy - (1 - alpha).sqrt() * pred
        reference = torch.nn.functional.mse_loss(x0_hat, x0)
    assert abs(float(ours) - float(reference)) <= 1e-5 * max(1.0, float(reference))


def test_percent_to_sigma_spans_the_schedule(tiny):
    c, _ = tiny
    table = ct.SigmaTable(c.scheduler_config)
    sigmas = table.log_sigmas.exp()
    assert math.isclose(table.percent_to_sigma(0.0), float(sigmas[-1]), rel_tol=1e-6)
    assert math.isclose(table.percent_to_sigma(1.0), float(sigmas[0]), rel_tol=1e-6)
    mid = table.percent_to_sigma(1 - 100.5 / 999)  # between t=100 and t=101, in log σ
    assert math.isclose(mid, float((sigmas[100] * sigmas[101]).sqrt()), rel_tol=1e-5)


def test_layers_are_comfyuis_every_linear_conv_norm_and_bias(tiny):
    c, _ = tiny
    g = torch.Generator().manual_seed(0)
    layers, diffs = create_layers(c.unet, 4, torch.float32, g)
    linear_conv = [n for n, m in c.unet.named_modules()
                   if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    norms = [n for n, m in c.unet.named_modules()
             if isinstance(m, torch.nn.GroupNorm | torch.nn.LayerNorm)]
    assert sorted(layers.down) == sorted(linear_conv) == sorted(lora_modules(c.unet))
    assert sorted(diffs.weight) == sorted(norms)
    with_bias = [n for n in linear_conv + norms
                 if getattr(dict(c.unet.named_modules())[n], "bias", None) is not None]
    assert sorted(diffs.bias) == sorted(with_bias)
    assert layers.scale == 1 / 4  # alpha 1
    for name in layers.down:  # ComfyUI's init: up kaiming-uniform (a=√5), down zero
        assert not layers.down[name].any()
        assert 0 < layers.up[name].abs().max() <= 1 / math.sqrt(4) + 1e-7
    assert not any(t.any() for t in diffs.parameters())


def test_diff_hooks_equal_the_patched_weights(tiny):
    """A norm/bias difference acts through the hook exactly as the saved ``.diff`` /
    ``.diff_b`` patch acts on the weights."""
    from nodes.diffusion.lora import patched

    c, _ = tiny
    g = torch.Generator().manual_seed(1)
    _, diffs = create_layers(c.unet, 4, torch.float32, g)
    for tensors in (diffs.weight, diffs.bias):
        for name in tensors:
            tensors[name] = torch.randn(tensors[name].shape, generator=g) * 0.1
    x, ctx = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 77, 32, generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        with diffs.hooked(c.unet):
            hooked = c.unet(x, t, ctx).sample
        from nodes.diffusion.lora import LoraPatch

        with patched(c.unet, (LoraPatch("d", 1.0, tuple(diffs.entries())),)):
            patched_out = c.unet(x, t, ctx).sample
    assert (hooked - patched_out).abs().max() <= 1e-4
    assert isinstance(diffs, DiffLayers)


class _Ctx:
    def check_interrupt(self) -> None:
        pass

    def progress(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_same_seed_same_lora_other_seed_other(tiny):
    c, model = tiny
    g = torch.Generator().manual_seed(2)
    data = ct.Dataset([torch.randn(3, 4, 4, 4, generator=g)],
                      [torch.randn(1, 77, 32, generator=g) for _ in range(3)], "standard")

    def trained(seed: int) -> dict[str, torch.Tensor]:
        settings = ct.ComfySettings(steps=2, batch_size=2, learning_rate=1e-2, rank=2,
                                    seed=seed, training_dtype="fp32", lora_dtype="fp32",
                                    gradient_checkpointing=False)
        return ct.train(_Ctx(), model, data, settings)[0]

    before = {k: v.clone() for k, v in c.unet.state_dict().items()}
    flags = [p.requires_grad for p in c.unet.parameters()]
    a, b, other = trained(3), trained(3), trained(4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], other[k]) for k in a)
    after = c.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base is untouched
    assert [p.requires_grad for p in c.unet.parameters()] == flags  # flags restored


def test_comfyui_layout_keys_fit_like_ours(tiny, tmp_path_factory):
    """A LoRA saved by ComfyUI (``diffusion_model.<original name>.lora_up.weight``) fits
    the same weights as our kohya keys (so existing_lora takes ComfyUI's files)."""
    from nodes.diffusion.lora import _original_unet_names

    c, _ = tiny
    g = torch.Generator().manual_seed(3)
    layers, diffs = create_layers(c.unet, 2, torch.float32, g)
    from nodes.diffusion.comfy_lora_layers import lora_state

    ours = lora_state(layers, diffs, torch.float32)
    original = {d.replace(".", "_"): o for o, d in _original_unet_names(c.unet).items()}
    comfy = {}
    for key, value in ours.items():
        module, _, suffix = key.removeprefix("lora_unet_").partition(".")
        comfy[f"diffusion_model.{original[module]}.{suffix}"] = value
    assert kohya_keys(comfy).keys() != comfy.keys()
    fitted_ours = dict(fit_state(c.unet, ours, "ours"))
    fitted_comfy = dict(fit_state(c.unet, comfy, "comfy"))
    assert fitted_ours.keys() == fitted_comfy.keys()
    # and Load LoRA reads ComfyUI's files as it reads ours
    from safetensors.torch import save_file

    from nodes.diffusion.lora import load_lora

    folder = tmp_path_factory.mktemp("comfy_lora")
    save_file({k: v.contiguous() for k, v in comfy.items()}, folder / "comfy.safetensors")
    save_file({k: v.contiguous() for k, v in ours.items()}, folder / "ours.safetensors")
    ours_patch = load_lora(folder / "ours.safetensors").patch(c.unet, "unet", 1.0)
    comfy_patch = load_lora(folder / "comfy.safetensors").patch(c.unet, "unet", 1.0)
    assert sorted(k for k, _ in ours_patch.weights) == sorted(k for k, _ in comfy_patch.weights)


def test_existing_steps_from_comfyuis_file_names():
    assert existing_steps("ComfyUI_trained_lora_16_steps_00001_.safetensors") == 16
    assert existing_steps("sub/x_5_steps_00002_.safetensors") == 5
    assert existing_steps("my_lora.safetensors") == 0


def test_existing_lora_goes_on_training(session):
    prefix = f"loras/cont_{uuid.uuid4().hex[:8]}"
    first, _, _ = run(session, prompt(extra={"save": {"class_type": "SaveLoRA", "inputs": {
        "lora": ["train", 0], "prefix": prefix, "steps": ["train", 2]}}}))
    name = f"{prefix.removeprefix('loras/')}_3_steps_00001_.safetensors"
    # a learning rate too small to move anything: the run starts from the file's LoRA
    p = prompt(train={"existing_lora": name, "learning_rate": 1e-7, "steps": 1,
                      "optimizer": "SGD"},
               extra={"steps": {"class_type": "TestCapture", "inputs": {
                   "value": ["train", 2], "key": "cont_steps"}}})
    again, _, _ = run(session, p)
    assert CAPTURED.pop("cont_steps") == 4
    assert (again - first).abs().max() <= 1e-4


# --- bad input ---------------------------------------------------------------------------------

def issues(session, p) -> str:
    with pytest.raises(PromptValidationError) as info:
        session.validate(p)
    return " ".join(f"{i.input_name}: {i.message}" for i in info.value.issues)


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("steps", 0, "steps"), ("rank", 0, "rank"), ("learning_rate", 2.0, "learning_rate"),
    ("algorithm", "LoHa", "LoHa training is not supported"),
    ("optimizer", "Lion", "optimizer"), ("existing_lora", "missing.safetensors",
                                         "existing_lora"),
    ("grad_accumulation_steps", 1024, "micro-steps"),
])
def test_train_inputs_refused_before_running(session, field, value, expected):
    overrides = {field: value, **({"steps": 100000} if field == "grad_accumulation_steps"
                                  else {})}
    assert expected in issues(session, prompt(train=overrides))


@pytest.mark.parametrize("prefix", ["../escape", "loras/../../escape", ""])
def test_save_lora_prefix_is_confined(session, prefix):
    p = prompt(extra={"save": {"class_type": "SaveLoRA", "inputs": {
        "lora": ["train", 0], "prefix": prefix}}})
    assert "prefix" in issues(session, p)


def test_caption_and_latent_counts_must_match(session):
    assert "2 texts for 3 images" in run_error(session, prompt(images={"count": 3,
                                                                       "captions": 2}))
    # positive from another data set of 2 images, latents of 3
    p = prompt(train={"positive": ["ds2", 1]}, extra={
        "imgs2": {"class_type": "TestImageTextList", "inputs": {"count": 2}},
        "ds2": {"class_type": "MakeTrainingDataset", "inputs": {
            "images": ["imgs2", 0], "vae": ["ckpt", 2], "clip": ["ckpt", 1],
            "texts": ["imgs2", 1]}}})
    assert "2 conditionings but latents hold 3 images" in run_error(session, p)


def test_dataset_folder_errors(session):
    p = {"load": {"class_type": "LoadTrainingDataset", "inputs": {"folder_name": "nothing"}},
         "cap": {"class_type": "TestCapture", "inputs": {"value": ["load", 0], "key": "n"}}}
    assert "no data set folder output/nothing" in run_error(session, p)
    p["load"]["inputs"]["folder_name"] = "../outside"
    assert "folder_name" in issues(session, p)


def test_loss_graph_draws_comfyuis_canvas():
    from nodes.comfy_training import loss_graph

    image = loss_graph([3.0, 2.0, 2.5, 1.0])
    assert image.shape == (1, 520, 840, 3)
    blue = (image[0, ..., 2] > 0.9) & (image[0, ..., 0] < 0.1)
    assert blue.any()
    assert loss_graph([1.0]).shape == (1, 520, 840, 3)  # one point, a flat line: no error
    with pytest.raises(ValueError, match="empty"):
        loss_graph([])
    with pytest.raises(ValueError, match="NaN"):
        loss_graph([1.0, float("nan")])


def test_comfyui_ui_workflow_widgets_map_to_the_inputs(session):
    """A saved ComfyUI workflow's ``widgets_values`` (the seed's control widget included)."""
    from engine.comfy_workflow import map_widget_values, node_def

    schema = session.registry.get("TrainLoraNode").schema(None)
    values = [1, 1, 16, 0.0005, 8, "AdamW", "MSE", 0, "randomize", "bf16", "bf16", False,
              "LoRA", True, 1, False, "[None]", False, False]
    named, control = map_widget_values(values, node_def(schema))
    assert named["seed"] == 0 and control == {"seed": "randomize"}
    assert named["existing_lora"] == "[None]" and named["bypass_mode"] is False
    assert named["training_dtype"] == "bf16" and named["gradient_checkpointing"] is True
