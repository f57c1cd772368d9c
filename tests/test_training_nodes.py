"""Train LoRA and Train Textual Inversion: one step matches diffusers' training scripts'
math (an independent plain implementation with peft/diffusers/torch), and the nodes run
as nodes (progress with loss, interrupt, cache, saved files that the loaders read, the
base handles unchanged, bad input refused)."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine import PromptValidationError
from engine.session import Session
from nodes.diffusion import train_common as tc
from nodes.diffusion.handles import DiffusionModel, TextEncoder, Vae
from nodes.diffusion.loading import load_components
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

RES = 32  # 4x4 latents on the tiny model: each step is milliseconds
LR = 1e-2  # large, so one step moves the weights well past the tolerance
TOL = 1e-5


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    (home / "input").mkdir()
    colors = [(255, 0, 0), (0, 0, 255), (0, 160, 0)]
    for i, color in enumerate(colors):
        img = Image.new("RGB", (40, 32) if i == 2 else (32, 32), (255, 255, 255))
        img.paste(color, (6 + 4 * i, 6, 22 + 4 * i, 22))
        img.save(home / "input" / f"shape{i}.png")
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


def handles(folder) -> tuple[DiffusionModel, TextEncoder, Vae, object]:
    c = load_components(folder)
    return (DiffusionModel(c.unet, dict(c.scheduler_config)), TextEncoder(c.text_encoder,
            c.tokenizer), Vae(c.vae), c)


def fixed_batch(vae: Vae, n: int = 2):
    """Images, their posterior and the step's random draws, shared by both sides."""
    g = torch.Generator().manual_seed(3)
    images = torch.rand(n, RES, RES, 3, generator=g)
    posterior = tc.encode_posterior(vae, tc.prepare_pixels(images, RES))
    eps = torch.randn(posterior.mean.shape, generator=g)
    latents = posterior.mean + posterior.std * eps
    noise = torch.randn(latents.shape, generator=g)
    timesteps = torch.tensor([17, 903])[:n]
    return images, latents, noise, timesteps


def reference_encode(vae_module, pixels, eps):
    """The scripts' ``vae.encode(...).latent_dist.sample() * scaling_factor``, with eps."""
    dist = vae_module.encode(pixels).latent_dist
    return (dist.mean + dist.std * eps) * vae_module.config.scaling_factor


# --- parity with the scripts (one step) -----------------------------------------------------

ATTENTION = ("to_k", "to_q", "to_v", "to_out.0")
WITH_CONVS = (*ATTENTION, "conv1", "conv2", "proj_in", "proj_out")  # 3x3 and 1x1 convs


@pytest.mark.parametrize(("with_text", "targets"), [
    (False, ATTENTION), (True, ATTENTION), (False, WITH_CONVS)],
    ids=["unet", "unet+text_encoder", "unet-convs"])
def test_lora_step_matches_train_text_to_image_lora(tiny_model_paths, with_text, targets):
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from nodes.diffusion import train_lora as tl

    folder = tiny_model_paths["diffusers"]
    model, clip, vae, _ = handles(folder)
    images, latents, noise, timesteps = fixed_batch(vae)
    captions = ["a red square", "a blue square"]
    spec = tl.LoraSpec(rank=4, alpha=8.0, unet_targets=targets,
                       text_targets=tl.TEXT_TARGETS if with_text else ())
    settings = tc.TrainSettings(steps=1, learning_rate=LR, batch_size=2, seed=5, resolution=RES)
    with tl.lora_training(model, clip, vae, images, captions, spec, settings) as run:
        init = {n: a.detach().clone() for n, a in run.unet_layers.down.items()}
        te_init = ({n: a.detach().clone() for n, a in run.text_layers.down.items()}
                   if with_text else {})
        with torch.enable_grad():  # two steps: the second also moves A (B is 0 at first)
            loss = run.step(torch.arange(2), noise=noise, timesteps=timesteps, latents=latents)
            loss2 = run.step(torch.arange(2), noise=noise.flip(0), timesteps=timesteps.flip(0),
                             latents=latents)
        ours = {**{("unet", n, "A"): a for n, a in run.unet_layers.down.items()},
                **{("unet", n, "B"): b for n, b in run.unet_layers.up.items()}}
        if with_text:
            ours.update({("te", n, "A"): a for n, a in run.text_layers.down.items()})
            ours.update({("te", n, "B"): b for n, b in run.text_layers.up.items()})
    for name, a in init.items():  # PEFT's default init: kaiming-uniform a=√5, B zero
        assert a.abs().max() <= 1 / math.sqrt(a.shape[1]) + 1e-7
        assert torch.count_nonzero(ours[("unet", name, "B")]) > 0  # it trained

    # The script's step, written independently: peft adapters on fresh modules.
    _, _, _, c = handles(folder)
    c.unet.requires_grad_(False)
    c.vae.requires_grad_(False)
    c.text_encoder.requires_grad_(False)
    c.unet.add_adapter(LoraConfig(r=4, lora_alpha=8.0, init_lora_weights=True,
                                  target_modules=list(targets)))
    if with_text:
        c.text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=8.0, init_lora_weights=True,
                                              target_modules=["q_proj", "k_proj", "v_proj",
                                                              "out_proj"]))
    refs = {}
    for kind, root, inits in (("unet", c.unet, init), ("te", c.text_encoder, te_init)):
        for name, module in root.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                with torch.no_grad():  # the same random init on both sides
                    module.lora_A["default"].weight.copy_(inits[name])
                refs[(kind, name, "A")] = module.lora_A["default"].weight
                refs[(kind, name, "B")] = module.lora_B["default"].weight
    assert set(refs) == set(ours)
    params = [p for p in [*c.unet.parameters(), *c.text_encoder.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=1e-2,
                                  eps=1e-8)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    ids = c.tokenizer(captions, max_length=c.tokenizer.model_max_length, padding="max_length",
                      truncation=True, return_tensors="pt").input_ids
    ref_losses = []
    for step_noise, step_t in ((noise, timesteps), (noise.flip(0), timesteps.flip(0))):
        hidden = c.text_encoder(ids, return_dict=False)[0]
        noisy = scheduler.add_noise(latents, step_noise, step_t)
        pred = c.unet(noisy, step_t, hidden, return_dict=False)[0]
        ref_loss = F.mse_loss(pred.float(), step_noise.float(), reduction="mean")
        ref_loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        ref_losses.append(ref_loss.item())
    print(f"LoRA({'unet+te' if with_text else 'unet'}) losses {loss:.8f}, {loss2:.8f} vs "
          f"{ref_losses[0]:.8f}, {ref_losses[1]:.8f}")
    assert abs(loss - ref_losses[0]) <= TOL and abs(loss2 - ref_losses[1]) <= TOL
    assert max(abs(ours[k] - init.get(k[1], ours[k])).max() for k in ours if k[2] == "A") > 0
    worst = max((ours[k] - refs[k]).abs().max().item() for k in refs)
    print(f"LoRA max weight diff {worst:.2e}")
    assert worst <= TOL


def test_textual_inversion_step_matches_textual_inversion_script(tiny_model_paths):
    from diffusers import DDPMScheduler

    from nodes.diffusion.train_textual_inversion import inversion_training

    folder = tiny_model_paths["diffusers"]
    model, clip, vae, _ = handles(folder)
    images, latents, noise, timesteps = fixed_batch(vae)
    settings = tc.TrainSettings(steps=1, learning_rate=LR, batch_size=2, seed=5, resolution=RES)
    captions = ["a photo of <sks>", "a red <sks>"]
    with inversion_training(model, clip, vae, images, captions, "<sks>", "square", 2,
                            settings) as run:
        with torch.enable_grad():
            loss = run.step(torch.arange(2), noise=noise, timesteps=timesteps, latents=latents)
        ours = run.clip.text_encoder.get_input_embeddings().weight.detach().clone()
        vectors = run.vectors()
    assert clip.text_encoder.get_input_embeddings().weight.shape[0] == 49408  # base unchanged

    # The script's step, independently: add tokens, resize, init, AdamW, restore rows.
    _, _, _, c = handles(folder)
    tok, te = c.tokenizer, c.text_encoder
    tokens = ["<sks>", "<sks>_1"]
    assert tok.add_tokens(tokens) == 2
    init_id = tok.encode("square", add_special_tokens=False)[0]
    new_ids = tok.convert_tokens_to_ids(tokens)
    te.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        for i in new_ids:
            te.get_input_embeddings().weight[i] = te.get_input_embeddings().weight[init_id]
    c.unet.requires_grad_(False)
    c.vae.requires_grad_(False)
    table = te.get_input_embeddings().weight
    for p in te.parameters():  # the script freezes encoder, final norm, positions
        p.requires_grad_(p is table)
    optimizer = torch.optim.AdamW(te.get_input_embeddings().parameters(), lr=LR,
                                  betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    orig = te.get_input_embeddings().weight.data.clone()
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    texts = ["a photo of <sks> <sks>_1", "a red <sks> <sks>_1"]
    ids = tok(texts, padding="max_length", truncation=True, max_length=tok.model_max_length,
              return_tensors="pt").input_ids
    noisy = scheduler.add_noise(latents, noise, timesteps)
    hidden = te(ids)[0]
    pred = c.unet(noisy, timesteps, hidden).sample
    ref_loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
    ref_loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    keep = torch.ones(len(tok), dtype=torch.bool)
    keep[min(new_ids):max(new_ids) + 1] = False
    with torch.no_grad():
        te.get_input_embeddings().weight[keep] = orig[keep]
    ref = te.get_input_embeddings().weight.detach()
    print(f"TI loss {loss:.8f} vs {ref_loss:.8f}; max diff {(ours - ref).abs().max():.2e}")
    assert abs(loss - ref_loss.item()) <= TOL
    assert (ours - ref).abs().max().item() <= TOL
    assert (vectors - ref[new_ids]).abs().max().item() <= TOL
    assert (vectors - orig[init_id]).abs().max() > 1e-4  # it trained


def test_gradient_checkpointing_gives_the_same_step(tiny_model_paths):
    from nodes.diffusion import train_lora as tl

    model, clip, vae, _ = handles(tiny_model_paths["diffusers"])
    images, latents, noise, timesteps = fixed_batch(vae)
    results = []
    for checkpointing in (False, True):
        settings = tc.TrainSettings(steps=1, learning_rate=LR, batch_size=2, seed=5,
                                    resolution=RES, gradient_checkpointing=checkpointing)
        with tl.lora_training(model, clip, vae, images, ["a"] * 2, tl.LoraSpec(4, 4.0),
                              settings) as run:
            assert model.unet.is_gradient_checkpointing == checkpointing
            with torch.enable_grad():
                loss = run.step(torch.arange(2), noise=noise, timesteps=timesteps,
                                latents=latents)
            results.append((loss, torch.cat([p.flatten() for p in run.unet_layers.parameters()])))
        assert not model.unet.is_gradient_checkpointing
    assert abs(results[0][0] - results[1][0]) <= TOL
    assert (results[0][1] - results[1][1]).abs().max() <= TOL
    assert all(p.requires_grad for p in model.unet.parameters())  # flags restored


# --- as nodes in a graph ----------------------------------------------------------------------

def graph(train: dict, *, text: str, clip_from: list, model_from: list | None = None) -> dict:
    key = uuid.uuid4().hex
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "batch": {"class_type": "LoadImageBatch",
                  "inputs": {"folder": "", "images": "shape0.png\nshape1.png\nshape2.png"}},
        "train": train,
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip_from}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip_from}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": model_from or ["ckpt", 0], "seed": 1, "steps": 3, "cfg": 5.0,
            "sampler_name": "euler", "scheduler": "normal", "positive": ["pos", 0],
            "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["ks", 0], "key": key}},
    }


def lora_node(**overrides) -> dict:
    inputs = {"model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2],
              "images": ["batch", 0], "captions": ["batch", 2], "rank": 4, "alpha": 4.0,
              "learning_rate": 1e-2, "steps": 4, "batch_size": 2, "seed": 0,
              "resolution": RES, "target": "unet+text_encoder",
              "target_modules": "to_k, to_q, to_v, to_out.0", "gradient_checkpointing": False,
              "save_name": ""}
    inputs.update(overrides)
    return {"class_type": "TrainLoRA", "inputs": inputs}


def ti_node(**overrides) -> dict:
    inputs = {"model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2],
              "images": ["batch", 0], "captions": "a <tok> shape", "placeholder_token": "<tok>",
              "initializer_token": "square", "num_vectors": 2, "learning_rate": 1e-2,
              "steps": 4, "batch_size": 2, "seed": 0, "resolution": RES,
              "gradient_checkpointing": False, "save_name": ""}
    inputs.update(overrides)
    return {"class_type": "TrainTextualInversion", "inputs": inputs}


def run_latent(session, prompt, **kw):
    result = session.run(prompt, **kw)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["cap"]["inputs"]["key"]).samples, result


def test_train_lora_then_sample_in_one_run(session):
    base_prompt = graph(lora_node(), text="a red square", clip_from=["ckpt", 1])
    before, _ = run_latent(session, {k: v for k, v in base_prompt.items() if k != "train"})
    prompt = graph(lora_node(captions="a red sks\na blue sks\na green sks",
                             save_name="trained/sks"),
                   text="a red sks", clip_from=["train", 1], model_from=["train", 0])
    trained, result = run_latent(session, prompt, keep_events=True)
    losses = [d["loss"] for name, d in result.events
              if name == "progress" and d["node"] == "train"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    path = session.env.folder("models") / "loras" / "trained" / "sks.safetensors"
    assert path.is_file()
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["steerflow.steps"] == "4" and len(meta["steerflow.base_model_hash"]) == 64
    assert '"rank": 4' in meta["steerflow.parameters"]
    # diffusers' own loader reads the file too (every layer, alpha/rank scaling)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        session.env.folder("models") / "checkpoints" / "steerflow-tiny", local_files_only=True,
        safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(path.parent, weight_name=path.name, adapter_name="sks")
    adapted = [m for root in (pipe.unet, pipe.text_encoder) for m in root.modules()
               if "sks" in getattr(m, "lora_A", {})]
    from safetensors.torch import load_file

    assert len(adapted) * 2 == len(load_file(str(path)))
    assert all(m.scaling["sks"] == 1.0 for m in adapted)

    # the base handles are unchanged: the plain graph gives the same latents again
    base_prompt["cap"]["inputs"]["key"] = uuid.uuid4().hex  # not served from the cache
    after, _ = run_latent(session, {k: v for k, v in base_prompt.items() if k != "train"})
    assert torch.equal(before, after)
    # the same inputs are not trained again
    prompt["cap"]["inputs"]["key"] = uuid.uuid4().hex
    again = session.run(prompt)
    assert "cap" in again.run.executed and "train" not in again.run.executed
    CAPTURED.pop(prompt["cap"]["inputs"]["key"])
    # the saved file, through Load LoRA, gives the trained graph's result
    loaded = graph({"class_type": "LoraLoader", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_name": "trained/sks.safetensors",
        "strength_model": 1.0, "strength_clip": 1.0}},
        text="a red sks", clip_from=["train", 1], model_from=["train", 0])
    via_file, _ = run_latent(session, loaded)
    print(f"trained-in-graph vs loaded-from-file max diff {(via_file - trained).abs().max():.2e}")
    assert (via_file - trained).abs().max() <= 1e-4
    assert (trained - before).abs().max() > 1e-3


def test_lora_on_convolutions_saves_a_file_the_loaders_read(session):
    targets = "to_q, conv1, conv2, proj_in, proj_out"
    prompt = graph(lora_node(target="unet", target_modules=targets, save_name="trained/conv"),
                   text="a red sks", clip_from=["train", 1], model_from=["train", 0])
    trained, _ = run_latent(session, prompt)
    path = session.env.folder("models") / "loras" / "trained" / "conv.safetensors"
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    assert any(t.dim() == 4 and t.shape[2:] == (3, 3) for t in tensors.values())
    pipe = StableDiffusionPipeline.from_pretrained(
        session.env.folder("models") / "checkpoints" / "steerflow-tiny", local_files_only=True,
        safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(path.parent, weight_name=path.name, adapter_name="conv")
    adapted = [m for m in pipe.unet.modules() if "conv" in getattr(m, "lora_A", {})]
    assert len(adapted) * 2 == len(tensors)
    assert any(isinstance(m.base_layer, torch.nn.Conv2d) for m in adapted)
    loaded = graph({"class_type": "LoraLoader", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_name": "trained/conv.safetensors",
        "strength_model": 1.0, "strength_clip": 1.0}},
        text="a red sks", clip_from=["train", 1], model_from=["train", 0])
    via_file, _ = run_latent(session, loaded)
    assert (via_file - trained).abs().max() <= 1e-4


def test_lora_refuses_modules_that_are_not_linear_or_conv(session):
    prompt = graph(lora_node(target_modules="norm1"), text="a", clip_from=["train", 1])
    assert "linear or convolution" in run_error(session, prompt)


def test_trained_lora_combines_with_sag(session):
    def latent(train: bool, sag: bool) -> torch.Tensor:
        model = ["train", 0] if train else ["ckpt", 0]
        prompt = graph(lora_node(seed=3), text="a red square", clip_from=["train", 1],
                       model_from=["sag", 0] if sag else model)
        if sag:
            prompt["sag"] = {"class_type": "SelfAttentionGuidance",
                             "inputs": {"model": model, "scale": 1.0, "blur_sigma": 1.0}}
        return run_latent(session, prompt)[0]

    both = latent(True, True)
    assert (both - latent(False, True)).abs().max() > 1e-3  # the LoRA still acts
    assert (both - latent(True, False)).abs().max() > 1e-3  # SAG still acts


def test_a_training_never_writes_over_another_file(session, models_dir):
    """save_name replaced any file of that name: a user's LoRA, the built-in model's. Now
    a file of another run (or of anyone else) is refused before training; the file this
    same run wrote (a later session, the cache cold) is written again."""
    from safetensors.torch import save_file

    def prompt(**over):
        return graph(lora_node(save_name="guard/one", steps=2, **over), text="a red sks",
                     clip_from=["train", 1], model_from=["train", 0])

    run_latent(session, prompt())
    path = models_dir / "loras" / "guard" / "one.safetensors"
    fresh = Session(session.env.folder("input").parent, models_dir=models_dir, device="cpu",
                    registry=registry_with_capture())
    run_latent(fresh, prompt())  # the same run again: allowed
    first = path.read_bytes()
    other = fresh.run(prompt(seed=5))
    assert not other.ok
    assert "guard/one.safetensors already exists" in other.run.error["exception_message"]
    assert path.read_bytes() == first
    foreign = models_dir / "loras" / "guard" / "mine.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(PromptValidationError, match="already exists"):
        fresh.validate(graph(lora_node(save_name="guard/mine"), text="a",
                             clip_from=["train", 1], model_from=["train", 0]))
    assert foreign.is_file()


def _train_steps(result) -> list[int]:
    return [d["value"] for n, d in result.events if n == "progress" and d["node"] == "train"]


def test_a_failed_save_keeps_the_training_and_the_rerun_only_saves(session, monkeypatch,
                                                                    models_dir, tmp_path):
    """The save failing after the last step (a full disk, a folder put at the path) lost
    the whole run: its checkpoint was gone, the error named a temporary file. A full disk
    is what safetensors' writer reports in its own exception type (the drill's raw
    "Error while serializing: I/O error: ..." message)."""
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        if "kept" not in str(filename):  # only the trained file's folder is full
            return real(tensors, filename, metadata=metadata)
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    prompt = graph(lora_node(save_name="kept/one", steps=3, seed=4), text="a red sks",
                   clip_from=["train", 1], model_from=["train", 0])
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    failed = session.run(prompt, keep_events=True)
    message = failed.run.error["exception_message"]
    assert "models/kept/one.safetensors could not be written (No space left on device)" \
        in message and "queue the prompt again" in message and ".tmp" not in message
    assert "saved without training again" in message
    assert _train_steps(failed) == [1, 2, 3]
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    saved, result = run_latent(session, prompt, keep_events=True)
    assert _train_steps(result) == []  # not trained again: saved from the kept state
    path = session.env.folder("models") / "loras" / "kept" / "one.safetensors"
    assert path.is_file()
    assert not list((session.env.folder("temp") / "training").glob("lora-*.pt"))
    assert torch.equal(saved, uninterrupted(session, models_dir, tmp_path, prompt))


def test_a_failed_save_names_the_folder_when_the_folder_is_the_trouble(tmp_path):
    """A file where models/embeddings should be: "File exists" is about the folder, not
    about the trained file (the message used to read as if that file existed)."""
    import errno

    from nodes.training import _os_reason

    target = tmp_path / "models" / "embeddings" / "tok.safetensors"
    folder_error = OSError(errno.EEXIST, "File exists", str(target.parent))
    assert _os_reason(folder_error, target) == (
        "File exists: its folder models/embeddings cannot be made or used")
    file_error = OSError(errno.ENOSPC, "No space left on device",
                         str(target.with_name(".tok.safetensors.1.tmp")))
    assert _os_reason(file_error, target) == "No space left on device"


def test_a_file_written_at_the_name_while_training_is_not_replaced(session):
    """Two workers training one save_name: both passed the check before training and the
    one that finished last silently replaced the other's file."""
    from safetensors.torch import save_file

    path = session.env.folder("models") / "loras" / "race" / "one.safetensors"

    def on_event(name, data):
        if name == "progress" and data.get("node") == "train" and data["value"] == 2:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"w": torch.zeros(2)}, str(path))  # the other worker's file

    prompt = graph(lora_node(save_name="race/one", steps=3, seed=6), text="a",
                   clip_from=["train", 1], model_from=["train", 0])
    result = session.run(prompt, on_event=on_event)
    assert not result.ok
    said = result.run.error["exception_message"]
    assert "race/one.safetensors was written by something else while this run trained" in said
    assert "give another save_name and queue the prompt again" in said
    from safetensors.torch import load_file

    assert set(load_file(str(path))) == {"w"}  # the other file stays
    renamed = graph(lora_node(save_name="race/two", steps=3, seed=6), text="a",
                    clip_from=["train", 1], model_from=["train", 0])
    _, again = run_latent(session, renamed, keep_events=True)
    assert _train_steps(again) == []  # another name: saved without training again
    assert (path.parent / "two.safetensors").is_file()


def test_textual_inversion_then_use_in_one_run(session):
    prompt = graph(ti_node(save_name="tok"), text="a <tok> shape", clip_from=["train", 0])
    trained, result = run_latent(session, prompt, keep_events=True)
    assert sum(1 for n, d in result.events if n == "progress" and "loss" in d) == 4
    assert (session.env.folder("models") / "embeddings" / "tok.safetensors").is_file()
    # the saved embedding, as embedding:tok with the base CLIP, conditions the same way
    via_file, _ = run_latent(session, graph(ti_node(save_name="tok"),
                                            text="a embedding:tok shape",
                                            clip_from=["ckpt", 1]))
    print(f"placeholder vs embedding:tok max diff {(via_file - trained).abs().max():.2e}")
    assert (via_file - trained).abs().max() <= 1e-4


def uninterrupted(session, models_dir, tmp_path, prompt) -> torch.Tensor:
    """The latent ``prompt`` gives in a fresh session (its own cache and training
    checkpoints) with the same input images: an uninterrupted run's result."""
    fresh = Session(tmp_path, models_dir=models_dir, device="cpu",
                    registry=registry_with_capture())
    (tmp_path / "input").mkdir(exist_ok=True)
    for i in range(3):
        name = f"shape{i}.png"
        (tmp_path / "input" / name).write_bytes((session.env.folder("input") / name).read_bytes())
    return run_latent(fresh, prompt)[0]


def test_interrupt_stops_training_and_the_rerun_resumes(session, models_dir, tmp_path):
    prompt = graph(lora_node(steps=6, seed=9), text="a", clip_from=["train", 1],
                   model_from=["train", 0])
    seen = []

    def on_event(name, data):
        if name == "progress" and data.get("node") == "train":
            seen.append(data["value"])
            if len(seen) == 2:
                session.executor.interrupt()

    result = session.run(prompt, on_event=on_event)
    assert result.run.status == "interrupted"
    assert seen == [1, 2]
    assert list((session.env.folder("temp") / "training").glob("lora-*.pt"))
    seen.clear()
    resumed, _ = run_latent(session, prompt, on_event=lambda n, d: seen.append(d["value"])
                            if n == "progress" and d.get("node") == "train" else None)
    assert seen == [3, 4, 5, 6]  # resumed from the checkpoint
    assert not list((session.env.folder("temp") / "training").glob("lora-*.pt"))
    assert torch.equal(resumed, uninterrupted(session, models_dir, tmp_path, prompt))


def test_a_stop_inside_a_step_resumes_to_the_uninterrupted_result(session, models_dir,
                                                                  tmp_path, monkeypatch):
    """A user's Stop lands inside a step (the UNet's interrupt points), after that step
    drew its noise: the resumed run must draw it again, not the next step's."""
    import nodes.diffusion.train_common as tc

    prompt = graph(lora_node(steps=5, seed=11), text="a", clip_from=["train", 1],
                   model_from=["train", 0])
    real_draw, calls = tc.draw_noise, []

    def draw_then_stop(*args, **kwargs):
        drawn = real_draw(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # inside step 3, before its UNet pass
            session.executor.interrupt()
        return drawn

    monkeypatch.setattr(tc, "draw_noise", draw_then_stop)
    assert session.run(prompt).run.status == "interrupted"
    monkeypatch.setattr(tc, "draw_noise", real_draw)
    seen = []
    resumed, _ = run_latent(session, prompt, on_event=lambda n, d: seen.append(d["value"])
                            if n == "progress" and d.get("node") == "train" else None)
    assert seen == [3, 4, 5]
    assert torch.equal(resumed, uninterrupted(session, models_dir, tmp_path, prompt))


def test_textual_inversion_resumes_to_the_same_vectors(session, models_dir, tmp_path):
    prompt = graph(ti_node(steps=5, seed=4), text="a <tok> shape", clip_from=["train", 0])
    count = []

    def on_event(name, data):
        if name == "progress" and data.get("node") == "train":
            count.append(data["value"])
            if len(count) == 3:
                session.executor.interrupt()

    assert session.run(prompt, on_event=on_event).run.status == "interrupted"
    resumed, _ = run_latent(session, prompt)
    assert torch.equal(resumed, uninterrupted(session, models_dir, tmp_path, prompt))


# --- bad input --------------------------------------------------------------------------------

def messages(session, prompt) -> str:
    with pytest.raises(PromptValidationError) as info:
        session.validate(prompt)
    return " ".join(f"{i.input_name}: {i.message}" for i in info.value.issues)


@pytest.mark.parametrize("field,value,expected", [
    ("steps", 0, "steps"), ("rank", 0, "rank"), ("learning_rate", 5.0, "learning_rate"),
    ("save_name", "../escape", "save_name"), ("target_modules", " , ", "target_modules"),
    ("captions", "  ", "caption"),
])
def test_lora_inputs_out_of_bounds_are_refused(session, field, value, expected):
    prompt = graph(lora_node(**{field: value}), text="a", clip_from=["train", 1])
    assert expected in messages(session, prompt)


@pytest.mark.parametrize("overrides,expected", [
    ({"placeholder_token": "a b"}, "placeholder_token"),
    ({"captions": "a photo of it"}, "must contain the placeholder"),
    ({"num_vectors": 0}, "num_vectors"),
    # prompts rewrite these before the token is looked up: the vectors would never be used
    # (CLIP Text Encode's weighting; the canvas's dynamic prompts and comments)
    *[({"placeholder_token": t, "captions": f"a {t}"}, "prompt syntax")
      for t in ("(blob)", "[blob]", "embedding:blob", "{sks}", "s|k", "s//k", "<s/*k*/>")],
])
def test_textual_inversion_inputs_refused_before_running(session, overrides, expected):
    prompt = graph(ti_node(**overrides), text="a", clip_from=["train", 0])
    assert expected in messages(session, prompt)


@pytest.mark.parametrize("overrides,expected", [
    ({"initializer_token": "red circle"}, "single token"),
    ({"initializer_token": "zzqqxxk"}, "single token"),
    ({"placeholder_token": "circle", "captions": "a circle"}, "already has the token"),
])
def test_textual_inversion_token_errors(session, overrides, expected):
    prompt = graph(ti_node(**overrides), text="a", clip_from=["train", 0])
    assert expected in run_error(session, prompt)


def test_a_placeholder_cut_off_by_the_text_encoder_is_refused(session):
    """A caption putting the placeholder past CLIP's 77 tokens trained nothing, silently
    (the training drill: the vectors moved 7.7e-5, weight decay only)."""
    long = "a " * 100 + "<blob> shape"
    prompt = graph(ti_node(placeholder_token="<blob>", captions=f"<blob> shape\n{long}\n<blob>"),
                   text="a", clip_from=["train", 0])
    error = run_error(session, prompt)
    assert "caption(s) [2] put the placeholder '<blob>' past the 75 tokens" in error


def test_captions_longer_than_the_text_encoder_reads_are_a_warning():
    from types import SimpleNamespace

    from nodes.diffusion.tiny import build_tiny_pipeline
    from nodes.training import training_captions

    tokenizer = build_tiny_pipeline().tokenizer
    warned: list[str] = []
    ctx = SimpleNamespace(warn=warned.append)
    node = SimpleNamespace(captions="a sks\n" + "a " * 80 + "sks", images=torch.zeros(2, 8, 8, 3),
                           clip=SimpleNamespace(tokenizer=tokenizer))
    training_captions(ctx, node)
    assert len(warned) == 1 and "caption(s) 2 are longer than the text encoder reads" in warned[0]
    node.captions = "a sks\nanother sks"
    training_captions(ctx, node)
    assert len(warned) == 1


@pytest.mark.parametrize("make", [lambda: lora_node(), lambda: ti_node()])
def test_a_training_node_linked_to_a_list_is_refused(session, make):
    """An image list (Load Image-Text (from Folder)) linked straight in trained once per
    image, silently (the training drill); it is refused with what to do instead."""
    folder = session.env.folder("input", "listset", create=True)
    for i in range(2):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a <tok> shape")
    train = make()
    train["inputs"].update(images=["list", 0], captions=["list", 1])
    prompt = graph(train, text="a", clip_from=["train", 0 if "placeholder_token" in
                                               train["inputs"] else 1])
    prompt["list"] = {"class_type": "LoadImageTextDataSetFromFolder",
                      "inputs": {"folder": "listset"}}
    error = run_error(session, prompt)
    assert "is linked to a list (captions, images: 2 items) and would run once per item" in error
    assert "Load Image Batch" in error


def test_caption_count_must_match(session):
    prompt = graph(lora_node(captions="one\ntwo"), text="a", clip_from=["train", 1])
    assert "2 captions for 3 images" in run_error(session, prompt)


def test_resolution_the_model_cannot_take(session):
    prompt = graph(lora_node(resolution=40), text="a", clip_from=["train", 1])
    assert "not a multiple of 16" in run_error(session, prompt)


def test_target_modules_that_match_nothing(session):
    prompt = graph(lora_node(target_modules="nonexistent"), text="a", clip_from=["train", 1])
    assert "no UNet module matches" in run_error(session, prompt)


def test_no_images_and_mixed_sizes():
    with pytest.raises(ValueError, match="at least one image"):
        tc.prepare_pixels(torch.zeros(0, 8, 8, 3), 8)
    # mixed sizes reach the node already resized by Load Image Batch (shape2.png is 40x32
    # in the graph tests); a non-square batch is scaled on its shorter side and centre-cropped
    out = tc.prepare_pixels(torch.rand(2, 24, 40, 3), 16)
    assert out.shape == (2, 3, 16, 16) and out.min() >= -1 and out.max() <= 1
    assert tc.parse_captions("only", 3) == ["only"] * 3
    with pytest.raises(ValueError, match="empty"):
        tc.parse_captions("\n", 3)


@pytest.mark.parametrize("node", ["TrainLoRA", "TrainTextualInversion", "TrainDreamBooth",
                                  "TrainCustomDiffusion"])
def test_training_nodes_refuse_an_sdxl_model_by_name(node):
    """They train SD 1.x / 2.x models: an SDXL UNet failed deep in diffusers."""
    from types import SimpleNamespace

    from engine import NodeRegistry
    from nodes import custom_diffusion, dreambooth, training
    from nodes.training import check_training_inputs

    registry = NodeRegistry()
    for module in (training, dreambooth, custom_diffusion):
        registry.add_module(module)
    cls = registry.get(node)
    unet = SimpleNamespace(config=SimpleNamespace(addition_embed_type="text_time"))
    fake = cls.model_construct(model=SimpleNamespace(unet=unet),
                               images=torch.zeros(1, 8, 8, 3))
    with pytest.raises(ValueError, match=r"works on SD 1.x / 2.x models; this is an SDXL"):
        check_training_inputs(fake)


def test_captions_that_are_all_empty_are_trained_with_a_warning():
    """Load Image Batch gives an empty caption for an image without a .txt: a batch of
    them trains with no word tied to it, which the scripts allow, but never silently
    (one image alone was trained without a word; so were some of many)."""
    from types import SimpleNamespace

    from nodes.training import training_captions

    warned: list[str] = []
    ctx = SimpleNamespace(warn=warned.append)
    node = SimpleNamespace(captions="\n\n", images=torch.zeros(3, 8, 8, 3))
    assert training_captions(ctx, node) == ["", "", ""]
    assert len(warned) == 1 and "all 3 captions are empty" in warned[0]
    one = SimpleNamespace(captions="\n", images=torch.zeros(1, 8, 8, 3))
    assert training_captions(ctx, one) == [""]
    assert len(warned) == 2 and "the only image's caption is empty" in warned[1]
    node.captions = "a\n\nb"
    assert training_captions(ctx, node) == ["a", "", "b"]
    assert len(warned) == 3 and "1 of 3 captions are empty (image 2;" in warned[2]
    many = SimpleNamespace(captions="a" + "\n" * 5, images=torch.zeros(6, 8, 8, 3))
    training_captions(ctx, many)
    assert "5 of 6 captions are empty (image 2, image 3, image 4 and 2 more;" in warned[3]
    assert "\n" not in warned[3]
    node.captions = "a\nb\nc"
    training_captions(ctx, node)
    assert len(warned) == 4


def test_some_empty_captions_name_load_image_batch_files(session):
    prompt = graph(lora_node(captions="a red sks\n\na green sks", steps=1),
                   text="a", clip_from=["train", 1], model_from=["train", 0])
    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    CAPTURED.pop(prompt["cap"]["inputs"]["key"])
    (warning,) = [d["message"] for n, d in result.events if n == "node_warning"]
    assert warning.startswith("1 of 3 captions are empty ('shape1.png';")


def test_save_name_without_its_extension_or_a_trailing_dot():
    """"foo.safetensors" was saved as foo.safetensors.safetensors, "x." as x..safetensors."""
    from engine import Environment
    from nodes.training import _name_problem, save_name

    assert save_name(" foo.safetensors ") == "foo"
    assert save_name("sub/Foo.SafeTensors") == "sub/Foo"
    assert save_name("foo.safetensors.safetensors") == "foo.safetensors"
    assert save_name("foo.ckpt") == "foo.ckpt"
    env = Environment.create(Path("/nonexistent-steerflow-home"), device="cpu")
    assert _name_problem("foo.safetensors", "loras", env) is None
    assert "ends with '.': leave it out" in _name_problem("x.", "loras", env)
    assert "ends with '.'" in _name_problem("x..safetensors", "loras", env)
    assert "ends with '/'" in _name_problem("sub/.safetensors", "loras", env)
    assert "names no file" in _name_problem(".safetensors", "loras", env)
    assert _name_problem("  ", "loras", env) is None


def test_saved_metadata_records_every_setting_and_the_extension_is_not_doubled(session,
                                                                              models_dir):
    """The LoRA file left out the schedule, Min-SNR, offset noise and the captions; the
    textual-inversion file the schedule."""
    import json

    from safetensors import safe_open

    prompt = graph(lora_node(captions="a red sks\na blue sks\na green sks", steps=2,
                             lr_scheduler="cosine", lr_warmup_steps=1, snr_gamma=5.0,
                             noise_offset=0.05, save_name="meta/lora.safetensors"),
                   text="a red sks", clip_from=["train", 1], model_from=["train", 0])
    prompt["show"] = {"class_type": "ShowValue", "inputs": {"value": ["train", 2]}}
    _, result = run_latent(session, prompt)
    assert result.run.outputs["show"]["text"] == ["meta/lora.safetensors"]
    loras = models_dir / "loras" / "meta"
    assert [p.name for p in loras.iterdir()] == ["lora.safetensors"]
    with safe_open(str(loras / "lora.safetensors"), "pt") as fh:
        params = json.loads(fh.metadata()["steerflow.parameters"])
    assert {k: params[k] for k in ("lr_scheduler", "lr_warmup_steps", "snr_gamma",
                                   "noise_offset", "rank", "seed", "images")} == {
        "lr_scheduler": "cosine", "lr_warmup_steps": 1, "snr_gamma": 5.0,
        "noise_offset": 0.05, "rank": 4, "seed": 0, "images": 3}
    assert params["captions"] == ["a red sks", "a blue sks", "a green sks"]
    assert params["target_modules"] == ["to_k", "to_q", "to_v", "to_out.0"]
    assert not {"save_name", "sample_every", "gradient_checkpointing"} & set(params)

    ti = graph(ti_node(lr_scheduler="linear", lr_warmup_steps=2, steps=2,
                       save_name="meta/tok.safetensors"), text="a <tok> shape",
               clip_from=["train", 0])
    ti["show"] = {"class_type": "ShowValue", "inputs": {"value": ["train", 1]}}
    _, result = run_latent(session, ti)
    assert result.run.outputs["show"]["text"] == ["meta/tok"]  # embedding:meta/tok
    with safe_open(str(models_dir / "embeddings" / "meta" / "tok.safetensors"), "pt") as fh:
        params = json.loads(fh.metadata()["steerflow.parameters"])
    assert params["lr_scheduler"] == "linear" and params["lr_warmup_steps"] == 2
    assert params["captions"] == ["a <tok> shape"] * 3 and params["num_vectors"] == 2


@pytest.mark.parametrize("node", ["TrainLoRA", "TrainTextualInversion", "TrainDreamBooth",
                                  "TrainCustomDiffusion"])
def test_every_training_node_records_every_input_of_its_run_key(node):
    """One helper for all four nodes: the saved parameters hold every input the run key
    (the checkpoint's name) digests, so two files of different runs never look alike."""
    from engine.registry import default_registry
    from nodes.training import _run_settings, training_info

    cls = default_registry().get(node)
    fake = cls.model_construct()
    info = training_info(fake, ["a sks"], "hash", 3, [0.5, 0.25])
    assert info["steps"] == 3 and info["final_loss"] == 0.25
    keys = set(_run_settings(fake)) - {"unmasked_weight"}  # with a loss mask only
    assert keys <= set(info["parameters"])
    assert info["parameters"]["captions"] == ["a sks"]


def test_a_checkpoint_that_cannot_be_written_never_fails_the_run(tmp_path, monkeypatch, caplog):
    """A full temp/ made torch's writer raise ("unexpected pos 128 vs 0") as the run's
    error, even on Stop, and left a half-written temp file."""
    import nodes.diffusion.train_common as tc

    def full_disk(obj, path):
        Path(path).write_bytes(b"")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    saving = tc.Checkpointing(tmp_path / "training" / "lora-x.pt", lambda: {"a": 1},
                              lambda saved: None)
    saving.save(3, [0.5, 0.4, 0.3])
    assert list((tmp_path / "training").iterdir()) == []
    assert "checkpoint not saved at step 3" in caplog.text


def test_a_read_only_checkpoint_folder_never_fails_the_run(tmp_path, monkeypatch, caplog):
    """On a read-only temp/training/, the cleanup's unlink raised EROFS (even for a file
    that is not there) out of save(): the first checkpoint aborted the training."""
    import errno

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(args[-1]))

    (tmp_path / "training").mkdir()
    monkeypatch.setattr(torch, "save", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    saving = tc.Checkpointing(tmp_path / "training" / "lora-x.pt", lambda: {"a": 1},
                              lambda saved: None)
    assert saving.save(50, [0.5]) is False
    assert ("checkpoint not saved at step 50 (temp/training/: Read-only file system); no "
            "checkpoint of this run is kept: a rerun starts from step 0") in caplog.text


@pytest.mark.parametrize("error", ["torch", "errno"])
def test_a_checkpoint_lost_to_a_full_disk_says_so(tmp_path, monkeypatch, caplog, error):
    """torch's writer reports ENOSPC as "enforce fail at inline_container.cc ... unexpected
    pos": the log never said the disk was full."""
    import errno
    import shutil
    from collections import namedtuple

    def full_disk(obj, path):
        Path(path).write_bytes(b"")
        if error == "errno":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(3 << 20, 3 << 20, 0))
    monkeypatch.setattr(torch, "save", full_disk)
    saving = tc.Checkpointing(tmp_path / "training" / "lora-x.pt", lambda: {"a": 1},
                              lambda saved: None)
    assert saving.save(22, [0.5]) is False
    assert ("checkpoint not saved at step 22 (no space left on temp/training/ (disk full)); "
            "no checkpoint of this run is kept") in caplog.text
    assert "enforce fail" not in caplog.text
    assert list((tmp_path / "training").iterdir()) == []
    # with room, a RuntimeError is not put down to the disk
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 40, 0, 1 << 40))
    assert tc.save_failure(RuntimeError("boom\nmore"), tmp_path) == "RuntimeError: boom"


@pytest.mark.parametrize("saved_before", [False, True])
def test_a_stop_whose_checkpoint_is_lost_tells_the_user(tmp_path, monkeypatch, saved_before):
    """Stop promises the state in temp/training/; when it cannot be written, whoever
    stopped is told (a node_warning: the canvas toasts it, the CLI prints it)."""
    from engine.context import ExecutionContext, Interrupted, InterruptFlag
    from engine.environment import Environment

    events: list[tuple[str, dict]] = []
    ctx = ExecutionContext("p", "train", Environment.create(tmp_path, device="cpu"),
                           lambda name, data: events.append((name, data)), InterruptFlag())
    real_save = torch.save

    def save(obj, path):
        if obj["step"] != 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
        real_save(obj, path)

    def step(i: int) -> float:
        if i == 2:
            ctx.interrupt_flag.set()
        return 1.0

    monkeypatch.setattr(torch, "save", save)
    saving = tc.Checkpointing(tmp_path / "training" / "lora-x.pt", lambda: {"a": 1},
                              lambda saved: None, every=2 if saved_before else 50)
    with pytest.raises(Interrupted):
        tc.run_steps(ctx, 10, step, saving)
    (warning,) = [d["message"] for n, d in events if n == "node_warning"]
    assert warning.startswith("Stop: the training state at step 3 could not be saved (")
    if saved_before:
        assert warning.endswith("a rerun resumes from step 2, the last one saved")
        assert tc.Checkpointing(saving.path, dict, lambda saved: None).load()[0] == 2
    else:
        assert warning.endswith("no checkpoint of this run is kept: a rerun starts from step 0")
        assert not saving.path.exists()


def test_a_save_folder_that_cannot_be_written_is_refused_before_training(tmp_path,
                                                                         monkeypatch):
    """models/loras read-only or full: every step ran, then the save failed and the
    finished run was lost. It is now refused before any training."""
    import errno
    import tempfile

    from engine import Environment
    from nodes.training import _claim

    env = Environment.create(tmp_path, device="cpu")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(OSError, match=r"models/loras cannot be written \(Read-only file "
                                      r"system\).*nothing was trained"):
        _claim(env, "loras", "mine", tmp_path / "lora-abc.pt")
    monkeypatch.undo()
    assert _claim(env, "loras", "mine", tmp_path / "lora-abc.pt").name == "mine.safetensors"
    assert [p.name for p in (env.folder("models") / "loras").iterdir()] == []
    # a save_name whose folder part is a file: that is what is said, not the folder's state
    (env.folder("models") / "loras" / "old.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"in a folder old.safetensors/, but models/loras "
                                         r"has a file of that name"):
        _claim(env, "loras", "old.safetensors/new", tmp_path / "lora-abc.pt")
