"""Train Custom Diffusion: steps match diffusers' train_custom_diffusion.py (an independent
implementation with diffusers' CustomDiffusionAttnProcessor2_0), and the node runs as a node
(progress with loss, interrupt/resume, cache, saved files the loaders read back, base
handles unchanged, bad input refused)."""

from __future__ import annotations

import itertools
import math
import uuid

import pytest
import torch
import torch.nn.functional as F

from nodes.diffusion import train_common as tc
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error
from tests.test_training_nodes import (
    RES,
    fixed_batch,
    graph,
    handles,
    messages,
    run_latent,
    uninterrupted,
)

LR = 1e-2  # large, so a step moves the weights well past the tolerance
TOL = 1e-5


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory):
    """Three shape images in input/ (as test_training_nodes' session)."""
    from PIL import Image

    from engine.session import Session

    home = tmp_path_factory.mktemp("home")
    (home / "input").mkdir()
    for i, color in enumerate([(255, 0, 0), (0, 0, 255), (0, 160, 0)]):
        img = Image.new("RGB", (40, 32) if i == 2 else (32, 32), (255, 255, 255))
        img.paste(color, (6 + 4 * i, 6, 22 + 4 * i, 22))
        img.save(home / "input" / f"shape{i}.png")
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


# --- parity with the script ---------------------------------------------------------------

def script_reference(folder, captions, class_prompts, freeze_model, latents, draws,
                     prior_loss_weight):
    """train_custom_diffusion.py's setup and steps, written from the script: a modifier
    token, CustomDiffusionAttnProcessor2_0 on every attention layer, the masked loss (mask all
    ones: --noaug), grads of other rows zeroed, clipping, AdamW. Returns the components,
    processors, token id, the table before training and the losses."""
    from diffusers import DDPMScheduler
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    _, _, _, c = handles(folder)
    tok, te, unet = c.tokenizer, c.text_encoder, c.unet
    assert tok.add_tokens("<new1>") == 1
    init_id = tok.encode("pll", add_special_tokens=False)[0]
    token_id = tok.convert_tokens_to_ids("<new1>")
    te.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        te.get_input_embeddings().weight[token_id] = te.get_input_embeddings().weight[init_id]
    table = te.get_input_embeddings().weight
    for p in te.parameters():  # the script freezes encoder, final norm, positions
        p.requires_grad_(p is table)
    c.vae.requires_grad_(False)
    unet.requires_grad_(False)
    train_q_out = freeze_model != "crossattn_kv"
    st = unet.state_dict()
    procs = {}
    for name in unet.attn_processors:
        cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        layer = name.split(".processor")[0]
        hidden = unet.get_submodule(layer).to_q.out_features
        if cross is None:
            procs[name] = CustomDiffusionAttnProcessor2_0(train_kv=False, train_q_out=False,
                                                       hidden_size=hidden)
            continue
        weights = {"to_k_custom_diffusion.weight": st[layer + ".to_k.weight"],
                   "to_v_custom_diffusion.weight": st[layer + ".to_v.weight"]}
        if train_q_out:
            weights["to_q_custom_diffusion.weight"] = st[layer + ".to_q.weight"]
            weights["to_out_custom_diffusion.0.weight"] = st[layer + ".to_out.0.weight"]
            weights["to_out_custom_diffusion.0.bias"] = st[layer + ".to_out.0.bias"]
        procs[name] = CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out=train_q_out,
                                                   hidden_size=hidden,
                                                   cross_attention_dim=cross)
        procs[name].load_state_dict(weights)
    unet.set_attn_processor(dict(procs))  # it pops what it sets
    layers = torch.nn.ModuleList(procs.values())
    original = te.get_input_embeddings().weight.detach().clone()
    optimizer = torch.optim.AdamW(
        itertools.chain(te.get_input_embeddings().parameters(), layers.parameters()), lr=LR,
        betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    prompts = captions + (class_prompts or [])
    ids = tok(prompts, truncation=True, padding="max_length", max_length=tok.model_max_length,
              return_tensors="pt").input_ids
    mask = torch.ones(latents.shape[0], 1, *latents.shape[2:])
    losses = []
    for noise, timesteps in draws:
        noisy = scheduler.add_noise(latents, noise, timesteps)
        hidden = te(ids)[0]
        pred = unet(noisy, timesteps, hidden).sample
        target = noise
        if class_prompts:
            pred, pred_prior = torch.chunk(pred, 2, dim=0)
            target, target_prior = torch.chunk(target, 2, dim=0)
            m = torch.chunk(mask, 2, dim=0)[0]
            loss = F.mse_loss(pred.float(), target.float(), reduction="none")
            loss = ((loss * m).sum([1, 2, 3]) / m.sum([1, 2, 3])).mean()
            prior = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
            loss = loss + prior_loss_weight * prior
        else:
            loss = F.mse_loss(pred.float(), target.float(), reduction="none")
            loss = ((loss * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3])).mean()
        loss.backward()
        grads = te.get_input_embeddings().weight.grad
        zero = torch.arange(len(tok)) != token_id
        grads.data[zero, :] = grads.data[zero, :].fill_(0)
        torch.nn.utils.clip_grad_norm_(itertools.chain(te.parameters(), layers.parameters()),
                                       1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return c, procs, token_id, original, losses


@pytest.mark.parametrize("freeze_model,prior", [("crossattn_kv", False), ("crossattn", True)],
                         ids=["kv", "crossattn+prior"])
def test_steps_match_train_custom_diffusion(tiny_model_paths, freeze_model, prior):
    from nodes.diffusion import train_custom_diffusion as tcd
    from nodes.diffusion.prior_preservation import PriorPreservation

    folder = tiny_model_paths["diffusers"]
    model, clip, vae, _ = handles(folder)
    images, latents, noise, timesteps = fixed_batch(vae)
    captions = ["photo of a <new1> square", "a red <new1> square"]
    prior_options = PriorPreservation("a square", 2, prior_loss_weight=0.7) if prior else None
    class_prompts = ["a square"] * 2 if prior else None
    class_images = images.flip(1) if prior else None
    if prior:  # the class half of the batch: its own latents, noise and timesteps
        _, class_latents, class_noise, _ = fixed_batch(vae)
        latents = torch.cat([latents, class_latents.flip(-1)])
        noise = torch.cat([noise, class_noise.flip(-2)])
        timesteps = torch.cat([timesteps, torch.tensor([500, 3])])
    draws = [(noise, timesteps), (noise.flip(0), timesteps.flip(0))]
    spec = tcd.CustomDiffusionSpec(freeze_model=freeze_model, modifier_token="<new1>",
                                   initializer_token="pll")
    settings = tc.TrainSettings(steps=2, learning_rate=LR, batch_size=2, seed=5,
                                resolution=RES)
    base_table = clip.text_encoder.get_input_embeddings().weight.detach().clone()
    base_kv = {n: p.detach().clone() for n, p in model.unet.named_parameters() if "attn2" in n}
    with tcd.custom_diffusion_training(model, clip, vae, images, captions, spec, settings,
                                       prior_options, class_images) as run:
        ours_losses = []
        with torch.enable_grad():
            for step_noise, step_t in draws:
                ours_losses.append(run.step(torch.arange(2), noise=step_noise,
                                            timesteps=step_t, latents=latents))
        ours = {k: v.detach().clone() for k, v in run.layers.named().items()}
        drifted = run.clip.text_encoder.get_input_embeddings().weight.detach().clone()
        run.finish()
        table = run.clip.text_encoder.get_input_embeddings().weight.detach().clone()
        token_id = run.token_id
    # the base handles are untouched
    assert torch.equal(clip.text_encoder.get_input_embeddings().weight, base_table)
    assert all(torch.equal(p, base_kv[n]) for n, p in model.unet.named_parameters()
               if "attn2" in n)
    assert not run.clip.text_encoder.get_input_embeddings().weight.requires_grad

    c, procs, ref_id, original, ref_losses = script_reference(
        folder, captions, class_prompts, freeze_model, latents, draws, 0.7)
    assert token_id == ref_id
    refs = {}
    slots = {"to_k": "to_k_custom_diffusion.weight", "to_v": "to_v_custom_diffusion.weight",
             "to_q": "to_q_custom_diffusion.weight",
             "to_out.0": "to_out_custom_diffusion.0.weight"}
    for name, proc in procs.items():
        layer = name.split(".processor")[0]
        state = proc.state_dict()
        for slot, key in slots.items():
            if key in state:
                refs[f"{layer}.{slot}.weight"] = state[key]
        if "to_out_custom_diffusion.0.bias" in state:
            refs[f"{layer}.to_out.0.bias"] = state["to_out_custom_diffusion.0.bias"]
    assert set(refs) == set(ours)
    assert len(ours) == 6 * (5 if freeze_model == "crossattn" else 2)
    worst = max((ours[k] - refs[k]).abs().max().item() for k in refs)
    ref_table = c.text_encoder.get_input_embeddings().weight.detach()
    row_diff = (table[token_id] - ref_table[token_id]).abs().max().item()
    print(f"custom diffusion ({freeze_model}, prior={prior}) losses {ours_losses} vs "
          f"{ref_losses}; max weight diff {worst:.2e}, modifier row diff {row_diff:.2e}")
    assert all(abs(a - b) <= TOL for a, b in zip(ours_losses, ref_losses, strict=True))
    assert worst <= TOL and row_diff <= TOL
    moved = max((ours[k] - base_kv[k]).abs().max().item() for k in ours)
    assert moved > 1e-3  # it trained
    assert (table[token_id] - original[token_id]).abs().max() > 1e-4
    # Every other row: the base's here; the script's AdamW decays them (gradient zeroed,
    # weight decay not) but saves only the modifier row.
    # During training every other row drifts with AdamW's weight decay as in the script
    # (gradient zeroed, decay not); the result is the base rows plus the learned one, what
    # the script saves.
    assert (drifted - ref_table).abs().max().item() <= TOL
    others = torch.ones(table.shape[0], dtype=torch.bool)
    others[token_id] = False
    assert torch.equal(table[others], original[others])
    assert not torch.equal(drifted[others], original[others])


def test_gradient_checkpointing_and_no_modifier(tiny_model_paths):
    from nodes.diffusion import train_custom_diffusion as tcd

    model, clip, vae, _ = handles(tiny_model_paths["diffusers"])
    images, latents, noise, timesteps = fixed_batch(vae)
    results = []
    for checkpointing in (False, True):
        settings = tc.TrainSettings(steps=1, learning_rate=LR, batch_size=2, seed=5,
                                    resolution=RES, gradient_checkpointing=checkpointing)
        spec = tcd.CustomDiffusionSpec(modifier_token="")  # K/V only: the CLIP stays
        with tcd.custom_diffusion_training(model, clip, vae, images, ["a square"] * 2, spec,
                                           settings) as run:
            assert run.clip is clip and run.token_id is None
            assert model.unet.is_gradient_checkpointing == checkpointing
            with torch.enable_grad():
                loss = run.step(torch.arange(2), noise=noise, timesteps=timesteps,
                                latents=latents)
            results.append((loss, torch.cat([p.flatten() for p in run.layers.parameters()])))
        assert not model.unet.is_gradient_checkpointing
    assert abs(results[0][0] - results[1][0]) <= TOL
    assert (results[0][1] - results[1][1]).abs().max() <= TOL
    assert all(p.requires_grad for p in model.unet.parameters())  # flags restored


# --- as a node in a graph -------------------------------------------------------------------

def cd_node(**overrides) -> dict:
    inputs = {"model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2],
              "images": ["batch", 0], "captions": "a <new1> shape", "modifier_token": "<new1>",
              "initializer_token": "pll", "freeze_model": "crossattn_kv",
              "learning_rate": 1e-2, "scale_lr": False, "steps": 4, "batch_size": 2,
              "seed": 0, "resolution": RES, "with_prior_preservation": False,
              "class_prompt": "", "num_class_images": 2, "prior_loss_weight": 1.0,
              "class_steps": 2, "class_cfg": 5.0, "class_sampler": "euler",
              "gradient_checkpointing": False, "save_name": ""}
    inputs.update(overrides)
    return {"class_type": "TrainCustomDiffusion", "inputs": inputs}


@pytest.mark.slow
def test_train_then_sample_and_load_back(session):
    base_prompt = graph(cd_node(), text="a <new1> shape", clip_from=["ckpt", 1])
    plain = {k: v for k, v in base_prompt.items() if k != "train"}
    plain["pos"]["inputs"]["text"] = "a shape"
    before, _ = run_latent(session, plain)
    prompt = graph(cd_node(save_name="cd/new1"), text="a <new1> shape",
                   clip_from=["train", 1], model_from=["train", 0])
    trained, result = run_latent(session, prompt, keep_events=True)
    losses = [d["loss"] for name, d in result.events
              if name == "progress" and d["node"] == "train"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    lora = session.env.folder("models") / "loras" / "cd" / "new1.safetensors"
    emb = session.env.folder("models") / "embeddings" / "cd" / "new1.safetensors"
    assert lora.is_file() and emb.is_file()
    from safetensors import safe_open

    with safe_open(str(lora), "pt") as fh:
        meta, keys = fh.metadata(), list(fh.keys())
    assert meta["steerflow.steps"] == "4" and len(meta["steerflow.base_model_hash"]) == 64
    assert '"freeze_model": "crossattn_kv"' in meta["steerflow.parameters"]
    assert len(keys) == 12 and all(k.startswith("unet.") and k.endswith(".diff") for k in keys)
    with safe_open(str(emb), "pt") as fh:
        assert list(fh.keys()) == ["<new1>"] and fh.get_tensor("<new1>").shape[0] == 1

    # the base handles are unchanged: the plain graph gives the same latents again
    plain["cap"]["inputs"]["key"] = uuid.uuid4().hex
    after, _ = run_latent(session, plain)
    assert torch.equal(before, after)
    # the same inputs are not trained again
    prompt["cap"]["inputs"]["key"] = uuid.uuid4().hex
    again = session.run(prompt)
    assert "cap" in again.run.executed and "train" not in again.run.executed
    CAPTURED.pop(prompt["cap"]["inputs"]["key"])
    # the saved files, through Load LoRA and embedding:<name> on the base CLIP, give the
    # trained graph's result
    loaded = graph({"class_type": "LoraLoader", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_name": "cd/new1.safetensors",
        "strength_model": 1.0, "strength_clip": 1.0}},
        text="a embedding:cd/new1 shape", clip_from=["train", 1], model_from=["train", 0])
    via_files, _ = run_latent(session, loaded)
    print(f"trained-in-graph vs loaded-from-files max diff {(via_files - trained).abs().max():.2e}")
    assert (via_files - trained).abs().max() <= 1e-4
    assert (trained - before).abs().max() > 1e-3


def test_prior_preservation_draws_class_images(session):
    prompt = graph(cd_node(with_prior_preservation=True, class_prompt="a shape",
                           num_class_images=3, class_steps=2, steps=2,
                           freeze_model="crossattn", scale_lr=True, learning_rate=1e-3),
                   text="a <new1> shape", clip_from=["train", 1], model_from=["train", 0])
    _, result = run_latent(session, prompt, keep_events=True)
    train = [d for n, d in result.events if n == "progress" and d.get("node") == "train"]
    assert sum(1 for d in train if "loss" in d) == 2
    assert any(d.get("phase") == "class_images" for d in train)
    assert list((session.env.folder("temp") / "training").glob("class-*.safetensors"))


@pytest.mark.slow
def test_interrupt_then_resume_gives_the_uninterrupted_result(session, models_dir,
                                                               tmp_path):

    prompt = graph(cd_node(steps=5, seed=7), text="a <new1> shape", clip_from=["train", 1],
                   model_from=["train", 0])
    seen = []

    def on_event(name, data):
        if name == "progress" and data.get("node") == "train":
            seen.append(data["value"])
            if len(seen) == 2:
                session.executor.interrupt()

    assert session.run(prompt, on_event=on_event).run.status == "interrupted"
    assert list((session.env.folder("temp") / "training").glob("custom_diffusion-*.pt"))
    seen.clear()
    resumed, _ = run_latent(session, prompt, on_event=lambda n, d: seen.append(d["value"])
                            if n == "progress" and d.get("node") == "train" else None)
    assert seen == [3, 4, 5]
    assert not list((session.env.folder("temp") / "training").glob("custom_diffusion-*.pt"))
    assert torch.equal(resumed, uninterrupted(session, models_dir, tmp_path, prompt))


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,expected", [
    ({"modifier_token": "a b"}, "modifier_token"),
    ({"captions": "a photo of it"}, "must contain the modifier token"),
    ({"save_name": "../escape"}, "save_name"),
    ({"learning_rate": 5.0}, "learning_rate"),
    ({"freeze_model": "everything"}, "freeze_model"),
    ({"prior_loss_weight": -1.0}, "prior_loss_weight"),
    ({"with_prior_preservation": True}, "class_prompt"),
    ({"modifier_token": "(new1)", "captions": "a (new1)"}, "prompt syntax"),
    ({"modifier_token": "{new1}", "captions": "a {new1}"}, "prompt syntax"),
])
def test_inputs_refused_before_running(session, overrides, expected):
    prompt = graph(cd_node(**overrides), text="a", clip_from=["train", 1])
    assert expected in messages(session, prompt)


@pytest.mark.parametrize("overrides,expected", [
    ({"initializer_token": "ktn"}, "single token"),  # the script's default: 2 CLIP tokens
    ({"modifier_token": "circle", "captions": "a circle"}, "already has the token"),
    ({"captions": "one <new1>\ntwo <new1>"}, "2 captions for 3 images"),
    ({"resolution": 40}, "not a multiple of 16"),
])
def test_errors_when_running(session, overrides, expected):
    prompt = graph(cd_node(**overrides), text="a", clip_from=["train", 1])
    assert expected in run_error(session, prompt)


def test_diff_file_that_does_not_fit(tmp_path, tiny_model_paths):
    from safetensors.torch import save_file

    from nodes.diffusion.lora import LoraMismatchError, load_lora

    model, _, _, _ = handles(tiny_model_paths["diffusers"])
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    path = tmp_path / "bad.safetensors"
    save_file({f"unet.{layer}.to_k.diff": torch.zeros(3, 3),
               f"unet.{layer}.to_q.diff_b": torch.zeros(32),
               "unet.nowhere.to_v.diff": torch.zeros(32, 32)}, str(path))
    with pytest.raises(LoraMismatchError) as info:
        load_lora(path).patch(model.unet, "unet", 1.0)
    text = str(info.value)
    assert "wrong shape" in text and "(3, 3)" in text and "target no unet module" in text
    assert "nowhere.to_v" in text and "to_q" in text  # to_q has no bias
    ok = tmp_path / "ok.safetensors"
    save_file({f"lora_unet_{layer.replace('.', '_')}_to_k.diff": torch.ones(32, 32),
               f"unet.{layer}.to_out.0.diff_b": torch.ones(32)}, str(ok))
    patch = load_lora(ok).patch(model.unet, "unet", 0.5)
    assert sorted(n for n, _ in patch.weights) == [f"{layer}.to_k.weight",
                                                   f"{layer}.to_out.0.bias"]


@pytest.mark.slow
def test_samples_every_n_steps_do_not_change_the_training(session):
    """sample_every draws images with the weights being trained (modifier included)
    while a client watches previews; the trained model is the same as without."""
    def prompt(**overrides):
        return graph(cd_node(steps=2, seed=5, **overrides), text="a <new1> shape",
                     clip_from=["train", 1], model_from=["train", 0])

    without, _ = run_latent(session, prompt())
    frames: list[str] = []

    def on_event(name, data):
        if name == "preview" and data["node"] == "train":
            frames.append(name)

    with_samples, _ = run_latent(session, prompt(sample_every=2, sample_prompt="a <new1>"),
                                 on_event=on_event, extra={"preview": True})
    assert len(frames) == 1
    assert torch.equal(without, with_samples)
