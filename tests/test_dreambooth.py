"""Train DreamBooth: a step matches diffusers' train_dreambooth.py (an independent plain
implementation with diffusers/torch on the tiny model: same batch, noise and timesteps;
with and without prior preservation and the text encoder), and the node runs as a node
(progress with loss, interrupt and resume, cache, a saved checkpoint that Load Checkpoint
reads back, the base handles unchanged, bad input refused)."""

from __future__ import annotations

import itertools
import math
import uuid

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine import PromptValidationError
from engine.session import Session
from nodes.diffusion import train_common as tc
from nodes.diffusion.handles import DiffusionModel, TextEncoder, Vae
from nodes.diffusion.loading import load_components
from nodes.diffusion.prior_preservation import PriorPreservation
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

RES = 32  # 4x4 latents on the tiny model
LR = 1e-3
TOL = 1e-5


def write_inputs(home) -> None:
    (home / "input").mkdir(exist_ok=True)
    colors = [(255, 0, 0), (0, 0, 255), (0, 160, 0)]
    for i, color in enumerate(colors):
        img = Image.new("RGB", (32, 32), (255, 255, 255))
        img.paste(color, (6 + 4 * i, 6, 22 + 4 * i, 22))
        img.save(home / "input" / f"shape{i}.png")


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    write_inputs(home)
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


def handles(folder) -> tuple[DiffusionModel, TextEncoder, Vae]:
    c = load_components(folder)
    return (DiffusionModel(c.unet, dict(c.scheduler_config)),
            TextEncoder(c.text_encoder, c.tokenizer), Vae(c.vae))


class _Context:
    """What drawing class images needs of an ExecutionContext."""

    def check_interrupt(self) -> None:
        pass

    def progress(self, *args, **kwargs) -> None:
        pass


def test_several_class_prompts_are_drawn_in_turn_and_captioned(tiny_model_paths):
    """One class prompt per line: the batches of 4 draw them in turn, each image captioned
    with its batch's prompt; one line is the scripts' single class."""
    from dataclasses import replace

    from nodes.diffusion.prior_preservation import generate_class_images

    model, clip, vae = handles(tiny_model_paths["diffusers"])
    two = PriorPreservation("a circle\n a square \n", num_class_images=6, sampling_steps=2)
    assert two.prompts == ["a circle", "a square"]
    assert two.captions(6) == ["a circle"] * 4 + ["a square"] * 2
    assert PriorPreservation("a shape").captions(5) == ["a shape"] * 5
    images = generate_class_images(_Context(), model, clip, vae, two, 64, seed=3)
    circles = generate_class_images(
        _Context(), model, clip, vae, replace(two, class_prompt="a circle", num_class_images=4),
        64, seed=3)
    squares = generate_class_images(  # batch 1 is seeded seed + 1
        _Context(), model, clip, vae, replace(two, class_prompt="a square", num_class_images=2),
        64, seed=4)
    assert torch.equal(images[:4], circles) and torch.equal(images[4:], squares)
    assert not torch.equal(images[4:], circles[:2])


def test_class_images_that_cannot_be_cached_are_a_warning(tiny_model_paths, tmp_path,
                                                          monkeypatch):
    """The class-image cache is a convenience: a read-only or full temp/ warns, never
    stops the training."""
    import errno

    import nodes.diffusion.train_common as train_common
    from engine import Environment
    from nodes.diffusion.prior_preservation import class_images

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(train_common, "save_atomic", refuse)
    warned: list[str] = []
    ctx = _Context()
    ctx.env = Environment.create(tmp_path)  # type: ignore[attr-defined]
    ctx.warn = warned.append  # type: ignore[attr-defined]
    model, clip, vae = handles(tiny_model_paths["diffusers"])
    prior = PriorPreservation("a shape", num_class_images=1, sampling_steps=1)
    images = class_images(ctx, model, clip, vae, prior, 64, 3, "base")  # type: ignore[arg-type]
    assert images.shape == (1, 64, 64, 3)
    assert len(warned) == 1 and "Read-only file system" in warned[0]


# --- parity with train_dreambooth.py --------------------------------------------------------

@pytest.mark.parametrize("prior,train_te,checkpointing", [
    (False, False, False), (True, False, True), (True, True, False)],
    ids=["instance", "prior+checkpointing", "prior+text_encoder"])
def test_step_matches_train_dreambooth(tiny_model_paths, prior, train_te, checkpointing):
    from diffusers import DDPMScheduler

    from nodes.diffusion.train_dreambooth import dreambooth_training

    folder = tiny_model_paths["diffusers"]
    model, clip, vae = handles(folder)
    base_before = tc.weights_hash(model.unet, clip.text_encoder)
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, RES, RES, 3, generator=g)
    class_images = torch.rand(2, RES, RES, 3, generator=g) if prior else None
    rows = 4 if prior else 2
    eps = torch.randn(rows, 4, RES // 8, RES // 8, generator=g)
    noises = [torch.randn(rows, 4, RES // 8, RES // 8, generator=g) for _ in range(2)]
    steps_t = [torch.tensor([17, 903, 500, 250])[:rows], torch.tensor([640, 3, 999, 120])[:rows]]
    captions = ["a sks shape", "a red sks shape"]
    spec = PriorPreservation("a shape", num_class_images=2, prior_loss_weight=0.7) \
        if prior else None
    settings = tc.TrainSettings(steps=2, learning_rate=LR, batch_size=2, seed=5, resolution=RES,
                                gradient_checkpointing=checkpointing)
    # The script's latents: the concatenated batch through the VAE, sampled with eps.
    vae_ref = load_components(folder).vae
    pixels = torch.cat([images] + ([class_images] if prior else [])).permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        dist = vae_ref.encode(pixels).latent_dist
        ref_latents = (dist.mean + dist.std * eps) * vae_ref.config.scaling_factor
    index = torch.arange(2)
    with dreambooth_training(model, clip, vae, images, captions, settings, train_te, spec,
                             class_images) as run:
        assert run.unet is not model.unet and run.unet.is_gradient_checkpointing == checkpointing
        r = run.rows(index)  # our posterior rows: the instances, then the classes
        latents = run.posterior.mean[r] + run.posterior.std[r] * eps
        print(f"latents max diff {(latents - ref_latents).abs().max():.2e}")
        assert (latents - ref_latents).abs().max() <= TOL
        # Both sides then step on the same latents: the first AdamW step moves a weight by
        # about lr · g / (|g| + 1e-8), which float noise in g changes visibly where g is tiny
        losses = [run.step(index, noise=n, timesteps=t, latents=ref_latents)
                  for n, t in zip(noises, steps_t, strict=True)]
        ours_unet = {k: v.clone() for k, v in run.unet.state_dict().items()}
        ours_te = {k: v.clone() for k, v in run.text_encoder.state_dict().items()}
    assert not run.unet.training and not any(p.requires_grad for p in run.unet.parameters())
    assert tc.weights_hash(model.unet, clip.text_encoder) == base_before  # base untouched

    # The script's steps, written independently on freshly loaded modules.
    c = load_components(folder)
    unet, te, tok = c.unet, c.text_encoder, c.tokenizer
    if not train_te:
        te.requires_grad_(False)
    unet.train()
    if train_te:
        te.train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    params = itertools.chain(unet.parameters(), te.parameters()) if train_te \
        else unet.parameters()
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=1e-2,
                                  eps=1e-8)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    prompts = captions + (["a shape"] * 2 if prior else [])  # collate_fn: instances, classes
    ids = tok(prompts, truncation=True, padding="max_length", max_length=tok.model_max_length,
              return_tensors="pt").input_ids
    ref_losses = []
    for noise, timesteps in zip(noises, steps_t, strict=True):
        noisy = scheduler.add_noise(ref_latents, noise, timesteps)
        hidden = te(ids)[0]
        pred = unet(noisy, timesteps, hidden).sample
        target = noise
        if prior:
            pred, pred_prior = torch.chunk(pred, 2, dim=0)
            target, target_prior = torch.chunk(target, 2, dim=0)
            prior_loss = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
        loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        if prior:
            loss = loss + 0.7 * prior_loss
        loss.backward()
        clip_params = itertools.chain(unet.parameters(), te.parameters()) if train_te \
            else unet.parameters()
        torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        ref_losses.append(loss.item())
    worst_unet = max((ours_unet[k] - v).abs().max().item() for k, v in unet.state_dict().items())
    worst_te = max((ours_te[k] - v).abs().max().item() for k, v in te.state_dict().items())
    moved = max((ours_unet[k] - v).abs().max().item()
                for k, v in model.unet.state_dict().items())
    print(f"DreamBooth losses {losses} vs {ref_losses}; max diff UNet {worst_unet:.2e}, "
          f"text encoder {worst_te:.2e}; moved {moved:.2e}")
    assert all(abs(a - b) <= TOL for a, b in zip(losses, ref_losses, strict=True))
    assert worst_unet <= TOL and worst_te <= TOL
    assert moved > 1e-4  # it trained
    te_moved = max((ours_te[k] - v).abs().max().item()
                   for k, v in clip.text_encoder.state_dict().items())
    assert (te_moved > 1e-4) == train_te


def test_rows_pair_instances_with_classes_as_the_script():
    from nodes.diffusion.train_dreambooth import DreamBoothTraining

    run = DreamBoothTraining(None, None, False, None, None, n_instance=3, n_class=5,
                             prior_loss_weight=1.0, scheduler=None, params=[], optimizer=None,
                             generator=None)
    assert run.dataset_size == 5  # max(instances, classes)
    assert run.rows(torch.tensor([4, 1])).tolist() == [1, 1, 3 + 4, 3 + 1]
    run.prior_loss_weight = None
    assert run.dataset_size == 3 and run.rows(torch.tensor([2])).tolist() == [2]


# --- as a node in a graph ---------------------------------------------------------------------

def graph(train: dict | None, *, text: str, model_from: list, clip_from: list,
          ckpt: str = "steerflow-tiny") -> dict:
    key = uuid.uuid4().hex
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "batch": {"class_type": "LoadImageBatch",
                  "inputs": {"folder": "", "images": "shape0.png\nshape1.png\nshape2.png"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip_from}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip_from}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": model_from, "seed": 1, "steps": 3, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": ["latent", 0], "denoise": 1.0}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["ks", 0], "key": key}},
    }
    if train is not None:
        prompt["train"] = train
    return prompt


def db_node(**overrides) -> dict:
    inputs = {"model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2],
              "images": ["batch", 0], "captions": "a sks shape", "learning_rate": 1e-3,
              "steps": 3, "batch_size": 2, "seed": 0, "resolution": RES,
              "train_text_encoder": False, "with_prior_preservation": False,
              "class_prompt": "", "num_class_images": 2, "prior_loss_weight": 1.0,
              "class_steps": 2, "class_cfg": 5.0, "class_sampler": "euler",
              "gradient_checkpointing": False, "save_name": ""}
    inputs.update(overrides)
    return {"class_type": "TrainDreamBooth", "inputs": inputs}


def run_latent(session, prompt, **kw):
    result = session.run(prompt, **kw)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["cap"]["inputs"]["key"]).samples, result


def trained_graph(**overrides) -> dict:
    return graph(db_node(**overrides), text="a sks shape", model_from=["train", 0],
                 clip_from=["train", 1])


def test_train_then_sample_save_and_load_back(session):
    plain = graph(None, text="a sks shape", model_from=["ckpt", 0], clip_from=["ckpt", 1])
    before, _ = run_latent(session, plain)
    prompt = trained_graph(train_text_encoder=True, save_name="db/sks")
    trained, result = run_latent(session, prompt, keep_events=True)
    losses = [d["loss"] for name, d in result.events
              if name == "progress" and d["node"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert (trained - before).abs().max() > 1e-3
    path = session.env.folder("models") / "checkpoints" / "db" / "sks.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["steerflow.steps"] == "3" and len(meta["steerflow.base_model_hash"]) == 64
    assert '"train_text_encoder": true' in meta["steerflow.parameters"]
    # Load Checkpoint reads the file back: the same latents as the trained graph
    loaded = graph(None, text="a sks shape", model_from=["ckpt", 0], clip_from=["ckpt", 1],
                   ckpt="db/sks.safetensors")
    via_file, _ = run_latent(session, loaded)
    print(f"trained-in-graph vs loaded checkpoint max diff {(via_file - trained).abs().max():.2e}")
    assert (via_file - trained).abs().max() <= 1e-4
    # the base handles are unchanged: the plain graph again (not from the cache)
    plain["cap"]["inputs"]["key"] = uuid.uuid4().hex
    after, _ = run_latent(session, plain)
    assert torch.equal(before, after)
    # the same inputs are not trained again
    prompt["cap"]["inputs"]["key"] = uuid.uuid4().hex
    again = session.run(prompt)
    assert again.ok and "train" not in again.run.executed
    CAPTURED.pop(prompt["cap"]["inputs"]["key"])


def test_prior_preservation_draws_class_images_once(session):
    prompt = trained_graph(with_prior_preservation=True, class_prompt="a shape",
                           num_class_images=5)
    _, result = run_latent(session, prompt, keep_events=True)
    phases = [d for n, d in result.events if n == "progress" and d["node"] == "train"]
    drawn = [d["value"] for d in phases if d.get("phase") == "class_images"]
    assert drawn == [1, 2]  # 5 images in batches of 4
    assert sum(1 for d in phases if "loss" in d) == 3
    cache = list((session.env.folder("temp") / "training").glob("class-*.safetensors"))
    assert len(cache) == 1
    # another learning rate: trained again, the class images come from the cache
    other = trained_graph(with_prior_preservation=True, class_prompt="a shape",
                          num_class_images=5, learning_rate=2e-3)
    _, result = run_latent(session, other, keep_events=True)
    assert "train" in result.run.executed
    assert not [d for n, d in result.events if n == "progress" and d.get("phase")]


def test_interrupt_then_resume_equals_an_uninterrupted_run(session, models_dir, tmp_path):
    prompt = trained_graph(steps=5, seed=9, with_prior_preservation=True,
                           class_prompt="a shape", num_class_images=2)
    seen = []

    def on_event(name, data):
        if name == "progress" and data.get("node") == "train" and "loss" in data:
            seen.append(data["value"])
            if len(seen) == 2:
                session.executor.interrupt()

    result = session.run(prompt, on_event=on_event)
    assert result.run.status == "interrupted" and seen == [1, 2]
    assert list((session.env.folder("temp") / "training").glob("dreambooth-*.pt"))
    seen.clear()
    resumed, _ = run_latent(session, prompt, on_event=lambda n, d: seen.append(d["value"])
                            if n == "progress" and "loss" in d else None)
    assert seen == [3, 4, 5]
    assert not list((session.env.folder("temp") / "training").glob("dreambooth-*.pt"))
    write_inputs(tmp_path)
    fresh = Session(tmp_path, models_dir=models_dir, device="cpu",
                    registry=registry_with_capture())
    whole, _ = run_latent(fresh, prompt)
    assert torch.equal(resumed, whole)


# --- bad input --------------------------------------------------------------------------------

def messages(session, prompt) -> str:
    with pytest.raises(PromptValidationError) as info:
        session.validate(prompt)
    return " ".join(f"{i.input_name}: {i.message}" for i in info.value.issues)


@pytest.mark.parametrize("overrides,expected", [
    ({"with_prior_preservation": True, "class_prompt": " "}, "needs a class prompt"),
    ({"save_name": "../escape"}, "save_name"),
    ({"save_name": "a b?"}, "save_name"),
    ({"num_class_images": 0}, "num_class_images"),
    ({"num_class_images": 1001}, "num_class_images"),
    ({"captions": "  "}, "rare word"),
    ({"steps": 0}, "steps"),
    ({"learning_rate": 1.0}, "learning_rate"),
])
def test_inputs_refused_before_running(session, overrides, expected):
    assert expected in messages(session, trained_graph(**overrides))


def test_run_errors(session):
    assert "2 captions for 3 images" in run_error(session, trained_graph(captions="a\nb"))
    assert "not a multiple of 16" in run_error(session, trained_graph(resolution=40))
    # a CLIP with textual-inversion words cannot be saved in a checkpoint file
    prompt = trained_graph(save_name="ti_db")
    prompt["ti"] = {"class_type": "TrainTextualInversion", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "images": ["batch", 0],
        "captions": "a <tok> shape", "placeholder_token": "<tok>", "initializer_token": "square",
        "num_vectors": 1, "learning_rate": 1e-2, "steps": 1, "batch_size": 1, "seed": 0,
        "resolution": RES, "gradient_checkpointing": False, "save_name": ""}}
    prompt["train"]["inputs"]["clip"] = ["ti", 0]
    assert "textual inversion" in run_error(session, prompt)


def test_no_images(tiny_model_paths):
    from nodes.dreambooth import TrainDreamBooth

    model, clip, vae = handles(tiny_model_paths["diffusers"])
    node = TrainDreamBooth(model=model, clip=clip, vae=vae, images=torch.zeros(0, RES, RES, 3),
                           captions="a sks shape")
    with pytest.raises(ValueError, match="no images"):
        node.execute(None)


def test_samples_every_n_steps_do_not_change_the_training(session):
    """sample_every draws images with the trained copy while a client watches previews;
    the trained model is the same as without samples."""
    without, _ = run_latent(session, trained_graph(steps=2, seed=5))
    frames: list[str] = []

    def on_event(name, data):
        if name == "preview" and data["node"] == "train":
            frames.append(name)

    with_samples, _ = run_latent(session, trained_graph(steps=2, seed=5, sample_every=1),
                                 on_event=on_event, extra={"preview": True})
    assert len(frames) == 2
    assert torch.equal(without, with_samples)
