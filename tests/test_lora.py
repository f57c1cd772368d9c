"""LoRA through the graph equals diffusers' PEFT LoRA; the cached model is never changed."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.session import Session, Workflow
from nodes.diffusion.schedulers import SAMPLERS, SCHEDULES
from nodes.diffusion.tiny import build_tiny_pipeline
from tests.graph_nodes import CAPTURED, registry_with_capture

PROMPT = "a red circle at the top left on a white background"
NEGATIVE = "blurry"
SIZE, STEPS, SEED, CFG = 64, 4, 3, 7.5
WORKFLOW = Path("workflows/lora.json")
ASSET = Path("workflows/assets/loras/steerflow-shapes-night.safetensors")

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
                "ff.net.2", "down_blocks.0.resnets.0.conv1")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")

Layers = dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]


def random_lora(seed: int, rank: int = 4, up_scale: float = 0.3) -> Layers:
    """Random LoRA layers ``{component: {module: (down, up)}}`` for the tiny model."""
    pipe = build_tiny_pipeline()
    g = torch.Generator().manual_seed(seed)
    out: Layers = {}
    for component, root, targets in (("unet", pipe.unet, UNET_TARGETS),
                                     ("text_encoder", pipe.text_encoder, TEXT_TARGETS)):
        layers = out.setdefault(component, {})
        for name, module in root.named_modules():
            if not name.endswith(targets):
                continue
            w = module.weight
            down_shape = (rank, *w.shape[1:])
            up_shape = (w.shape[0], rank) + ((1, 1) if w.dim() == 4 else ())
            down = torch.randn(down_shape, generator=g) / w[0].numel() ** 0.5
            up = torch.randn(up_shape, generator=g) * up_scale
            layers[name] = (down, up)
    return out


def _file_name(component: str, module: str) -> str:
    # Real LoRA files name text-encoder modules as transformers < 5 did.
    return f"text_model.{module}" if component == "text_encoder" else module


def save_peft(path: Path, layers: Layers, metadata: dict | None = None) -> None:
    state = {}
    for component, modules in layers.items():
        for module, (down, up) in modules.items():
            key = f"{component}.{_file_name(component, module)}"
            state[f"{key}.lora_A.weight"] = down.clone()
            state[f"{key}.lora_B.weight"] = up.clone()
    meta = {"format": "pt"}
    if metadata:
        meta["lora_adapter_metadata"] = json.dumps(metadata)
    save_file(state, path, metadata=meta)


def save_kohya(path: Path, layers: Layers, alpha: float | None = None) -> None:
    state = {}
    for component, modules in layers.items():
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[component]
        for module, (down, up) in modules.items():
            key = prefix + _file_name(component, module).replace(".", "_")
            state[f"{key}.lora_down.weight"] = down.contiguous()
            state[f"{key}.lora_up.weight"] = up.contiguous()
            if alpha is not None:
                state[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(state, path)


def save_simpletuner_comfy(path: Path, layers: Layers, alpha: float) -> None:
    """SimpleTuner's LyCORIS prefix on the UNet (kohya's underscores), ComfyUI's generic
    ``text_encoders.clip_l.transformer.`` naming on the text encoder."""
    state = {}
    for component, modules in layers.items():
        for module, (down, up) in modules.items():
            key = ("lycoris_" + module.replace(".", "_") if component == "unet"
                   else f"text_encoders.clip_l.transformer.{_file_name(component, module)}")
            state[f"{key}.lora_down.weight"] = down.contiguous()
            state[f"{key}.lora_up.weight"] = up.contiguous()
            state[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(state, path)


def save_old_diffusers(path: Path, layers: Layers) -> None:
    """diffusers < 0.24: attention-processor keys for attention, ``.lora.down`` elsewhere."""
    state = {}
    for component, modules in layers.items():
        for module, (down, up) in modules.items():
            key = f"{component}.{_file_name(component, module)}"
            if component == "text_encoder":
                key += ".lora_linear_layer"
            elif module.endswith(("to_q", "to_k", "to_v", "to_out.0")):
                attn, _, slot = module.removesuffix(".0").rpartition(".")
                key = f"unet.{attn}.processor.{slot}_lora"
            else:
                key += ".lora"
            state[f"{key}.down.weight"] = down.contiguous()
            state[f"{key}.up.weight"] = up.contiguous()
    save_file(state, path)


@pytest.fixture(scope="module")
def loras(models_dir: Path) -> Path:
    """LoRA files in models/loras: the same layers in three layouts, and some misfits."""
    folder = models_dir / "loras"
    folder.mkdir(exist_ok=True)
    a, b = random_lora(1), random_lora(2, rank=2)
    save_peft(folder / "a_peft.safetensors", a)
    save_kohya(folder / "a_kohya.safetensors", a, alpha=4.0)  # alpha == rank: scale 1
    save_old_diffusers(folder / "a_old.safetensors", a)
    save_simpletuner_comfy(folder / "a_names.safetensors", a, alpha=4.0)
    save_kohya(folder / "b_kohya.safetensors", b, alpha=1.0)  # scale 1/2
    save_peft(folder / "b_peft_meta.safetensors", b, metadata={
        f"{c}.{k}": v for c in ("unet", "text_encoder")
        for k, v in {"r": 2, "lora_alpha": 1.0, "target_modules": sorted(b[c])}.items()})
    misfit = random_lora(3)
    down, up = misfit["unet"]["down_blocks.0.attentions.0.proj_in"]
    misfit["unet"]["down_blocks.0.attentions.0.proj_in"] = (down[:, :16], up)
    misfit["unet"]["down_blocks.9.attentions.0.proj_in"] = (down, up)
    save_peft(folder / "misfit.safetensors", misfit)
    save_file({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(1, 4),
               "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(4, 1)},
              folder / "sdxl.safetensors")
    torch.save({"x.lora_down.weight": torch.zeros(1)}, folder / "pickled.pt")
    return folder


@pytest.fixture(scope="module")
def session(models_dir, loras, tmp_path_factory):
    return Session(tmp_path_factory.mktemp("home"), models_dir=models_dir, device="cpu",
                   registry=registry_with_capture())


def lora_prompt(*loras: tuple[str, float, float], model_only: bool = False,
                sampler: str = "euler") -> dict:
    """txt2img with a chain of LoraLoader (name, strength_model, strength_clip)."""
    prompt: dict = {"4": {"class_type": "CheckpointLoaderSimple",
                          "inputs": {"ckpt_name": "steerflow-tiny"}}}
    model, clip = ["4", 0], ["4", 1]
    for i, (name, sm, sc) in enumerate(loras):
        nid = str(20 + i)
        if model_only:
            prompt[nid] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": model, "lora_name": name, "strength_model": sm}}
            model = [nid, 0]
        else:
            prompt[nid] = {"class_type": "LoraLoader", "inputs": {
                "model": model, "clip": clip, "lora_name": name,
                "strength_model": sm, "strength_clip": sc}}
            model, clip = [nid, 0], [nid, 1]
    prompt.update({
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": clip}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": sampler,
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["8", 0],
                                                       "key": uuid.uuid4().hex}},
    })
    return prompt


def run_image(session, prompt) -> np.ndarray:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["10"]["inputs"]["key"]).cpu().numpy()


def euler_pipeline(tiny_model_paths) -> diffusers.StableDiffusionPipeline:
    """The tiny model's diffusers pipeline with the sampler ``lora_prompt`` uses."""
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        tiny_model_paths["diffusers"], local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    class_name, extra = SAMPLERS["euler"]
    pipe.scheduler = getattr(diffusers, class_name).from_config(
        pipe.scheduler.config, **extra, **SCHEDULES["normal"])
    return pipe


def pipeline_image(pipe: diffusers.StableDiffusionPipeline) -> np.ndarray:
    """``lora_prompt``'s image drawn by a diffusers pipeline."""
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                guidance_scale=CFG, height=SIZE, width=SIZE, output_type="np",
                generator=torch.Generator("cpu").manual_seed(SEED)).images


def reference(tiny_model_paths, models_dir, adapters: list[tuple[str, float]]) -> np.ndarray:
    """diffusers + PEFT, unfused: ``load_lora_weights`` then ``set_adapters``."""
    pytest.importorskip("peft")
    pipe = euler_pipeline(tiny_model_paths)
    for i, (name, _) in enumerate(adapters):
        pipe.load_lora_weights(models_dir / "loras", weight_name=name, adapter_name=f"l{i}")
    pipe.set_adapters([f"l{i}" for i in range(len(adapters))],
                      adapter_weights=[s for _, s in adapters])
    return pipeline_image(pipe)


def test_peft_lora_matches_diffusers(session, tiny_model_paths, models_dir):
    ours = run_image(session, lora_prompt(("a_peft.safetensors", 0.8, 0.8)))
    base = run_image(session, lora_prompt())
    ref = reference(tiny_model_paths, models_dir, [("a_peft.safetensors", 0.8)])
    assert np.abs(ours - base).max() > 1e-2  # the LoRA does change the image
    assert np.abs(ours - ref).max() <= 1e-4


def test_stacked_kohya_and_alpha_metadata_match_diffusers(session, tiny_model_paths,
                                                          models_dir):
    ours = run_image(session, lora_prompt(("a_kohya.safetensors", 0.7, 0.7),
                                          ("b_kohya.safetensors", -1.2, -1.2)))
    ref = reference(tiny_model_paths, models_dir,
                    [("a_kohya.safetensors", 0.7), ("b_kohya.safetensors", -1.2)])
    assert np.abs(ours - ref).max() <= 1e-4
    # The same layers with alpha from diffusers' adapter metadata give the same image.
    meta = run_image(session, lora_prompt(("a_kohya.safetensors", 0.7, 0.7),
                                          ("b_peft_meta.safetensors", -1.2, -1.2)))
    assert np.array_equal(meta, ours)


def test_key_layouts_agree(session):
    peft = run_image(session, lora_prompt(("a_peft.safetensors", 1.0, 0.5)))
    # (a_names: the files drill's SimpleTuner "lycoris_" and ComfyUI "text_encoders.clip_l."
    # keys, refused as made "for another base model")
    for name in ("a_kohya.safetensors", "a_old.safetensors", "a_names.safetensors"):
        assert np.array_equal(run_image(session, lora_prompt((name, 1.0, 0.5))), peft), name


def test_switching_off_restores_the_base_model_exactly(session):
    base = run_image(session, lora_prompt())
    on = run_image(session, lora_prompt(("a_peft.safetensors", 1.0, 1.0)))
    off = run_image(session, lora_prompt(("a_peft.safetensors", 0.0, 0.0)))
    assert not np.array_equal(on, base)
    assert np.array_equal(off, base)  # bit for bit: weights copied back, not subtracted


def test_patched_weights_are_restored_bit_exact():
    from nodes.diffusion.lora import LoraPatch, LoraWeight, patched

    unet = build_tiny_pipeline().unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    layers = random_lora(1)["unet"]
    weights = tuple((f"{m}.weight", LoraWeight(d, u, 1.0)) for m, (d, u) in layers.items())
    patches = (LoraPatch("x", 0.9, weights), LoraPatch("y", -0.3, weights))
    with patched(unet, patches):
        changed = unet.state_dict()["down_blocks.0.resnets.0.conv1.weight"]
        assert not torch.equal(changed, before["down_blocks.0.resnets.0.conv1.weight"])
    with pytest.raises(RuntimeError), patched(unet, patches):
        raise RuntimeError("a failing run still restores")
    after = unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_model_only_leaves_the_text_encoder_alone(session):
    model_only = run_image(session, lora_prompt(("a_peft.safetensors", 0.8, 0.0),
                                                model_only=True))
    clip_off = run_image(session, lora_prompt(("a_peft.safetensors", 0.8, 0.0)))
    assert np.array_equal(model_only, clip_off)


def test_lora_that_does_not_fit_is_a_clear_error(session):
    result = session.run(lora_prompt(("misfit.safetensors", 1.0, 1.0)))
    assert result.run.status == "error"
    message = result.run.error["exception_message"]
    assert "does not fit" in message and "down_blocks.9.attentions.0.proj_in" in message
    assert "wrong shape" in message and "down_blocks.0.attentions.0.proj_in" in message
    result = session.run(lora_prompt(("sdxl.safetensors", 1.0, 1.0)))
    assert result.run.status == "error"
    assert "text_encoder_2" in result.run.error["exception_message"]


def test_pickle_lora_refused_at_validation(session):
    with pytest.raises(Exception, match="pickle"):
        session.validate(lora_prompt(("pickled.pt", 1.0, 1.0)))


def test_example_workflow_runs(session, models_dir):
    shutil.copy(ASSET, models_dir / "loras" / ASSET.name)
    wf = Workflow.load(WORKFLOW)
    session.validate(wf)
    prompt = json.loads(json.dumps(wf.prompt))
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    result = session.run(prompt)
    assert result.ok, result.run.error
    assert result.image_paths


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_a_float8_lora_loads_as_its_values(tmp_path, dtype):
    """The files drill: an e4m3fn LoRA crashed Load LoRA with a traceback (torch has no
    isfinite for it); its values are read as they are stored."""
    from nodes.diffusion.lora import load_lora

    layers = random_lora(5)
    narrow = {c: {m: (d.to(getattr(torch, dtype)), u.to(getattr(torch, dtype)))
                  for m, (d, u) in mods.items()} for c, mods in layers.items()}
    save_kohya(tmp_path / "fp8.safetensors", narrow, alpha=4.0)
    assert load_lora(tmp_path / "fp8.safetensors") is not None


def test_a_lora_with_nan_or_inf_values_is_refused_at_load(tmp_path):
    """A NaN alpha (a damaged file, a diverged training) turned every image to NaN."""
    from nodes.diffusion.lora import LoraMismatchError, load_lora

    layers = random_lora(5)
    save_kohya(tmp_path / "nan.safetensors", layers, alpha=float("nan"))
    with pytest.raises(LoraMismatchError, match="hold NaN or infinite values"):
        load_lora(tmp_path / "nan.safetensors")
    down, up = layers["unet"]["down_blocks.0.attentions.0.proj_in"]
    layers["unet"]["down_blocks.0.attentions.0.proj_in"] = (down, up * float("inf"))
    save_peft(tmp_path / "inf.safetensors", layers)
    with pytest.raises(LoraMismatchError, match=r"1 of \d+ tensors hold NaN"):
        load_lora(tmp_path / "inf.safetensors")


def test_lycoris_norm_changes_read_as_diffs():
    """LyCORIS's train_norm (``.w_norm`` / ``.b_norm``): the whole LoRA was refused ("6 of 30
    keys are not LoRA weights", the files drill); ComfyUI applies them as diffs."""
    from nodes.diffusion.lora import split_layers

    key = "lora_unet_down_blocks_0_attentions_0_norm"
    w, b = torch.randn(32), torch.randn(32)
    norm, unknown = split_layers({f"{key}.w_norm": w, f"{key}.b_norm": b})
    diff, _ = split_layers({f"{key}.diff": w, f"{key}.diff_b": b})
    assert unknown == []
    [(module, layer)] = norm["unet"].items()
    assert torch.equal(layer.diff, diff["unet"][module].diff)
    assert torch.equal(layer.diff_b, diff["unet"][module].diff_b)


def test_a_safetensors_file_under_a_pickles_name_is_read_as_safetensors(tmp_path):
    """The files drill: a .pt that is a safetensors file (sites rename them) was said to
    hold "Python objects besides tensors" under --allow-pickle."""
    from nodes.diffusion.loading import torch_load_weights_only
    from nodes.diffusion.lora import load_lora

    layers = random_lora(6)
    save_kohya(tmp_path / "renamed.pt", layers, alpha=4.0)
    assert set(torch_load_weights_only(tmp_path / "renamed.pt"))
    assert load_lora(tmp_path / "renamed.pt", allow_pickle=True) is not None


def test_sft_files_are_listed_and_read_as_safetensors(tmp_path):
    """ComfyUI lists ``.sft`` (safetensors under a short suffix) in every model folder; the
    server listed them, but no loader offered or read them."""
    from engine.environment import Environment
    from nodes.controlnet import CONTROLNET_SUFFIXES
    from nodes.diffusion.embeddings import EMBEDDING_SUFFIXES
    from nodes.diffusion.loading import read_checkpoint_file
    from nodes.diffusion.lora import LORA_SUFFIXES, load_lora
    from nodes.models import CHECKPOINT_SUFFIXES
    from nodes.upscale_model import UPSCALE_SUFFIXES

    for suffixes in (LORA_SUFFIXES, CHECKPOINT_SUFFIXES, EMBEDDING_SUFFIXES, CONTROLNET_SUFFIXES,
                     UPSCALE_SUFFIXES):
        assert ".sft" in suffixes
    layers = random_lora(7)
    (tmp_path / "models" / "loras").mkdir(parents=True)
    save_kohya(tmp_path / "models" / "loras" / "a.sft", layers, alpha=4.0)
    save_kohya(tmp_path / "models" / "loras" / "a.safetensors", layers, alpha=4.0)
    env = Environment.create(tmp_path)
    assert env.list_files("models", "loras", suffixes=LORA_SUFFIXES) == ["a.safetensors", "a.sft"]
    sft = load_lora(tmp_path / "models" / "loras" / "a.sft")  # no pickle opt-in needed
    plain = load_lora(tmp_path / "models" / "loras" / "a.safetensors")
    assert sft.layers.keys() == plain.layers.keys() and sft.metadata == plain.metadata
    folder = tmp_path / "models" / "loras"
    tensors, _ = read_checkpoint_file(folder / "a.sft")
    assert tensors.keys() == read_checkpoint_file(folder / "a.safetensors")[0].keys()
