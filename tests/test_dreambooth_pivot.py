"""Train DreamBooth with pivotal tuning (its pivot_* inputs): the concept word's rows
train beside the UNet copy by the mechanism Train LoRA uses. With the rows' learning
rate 0 the UNet steps exactly as plain DreamBooth; in the token's own phase the rows step
as textual inversion's whole-table AdamW does; a vocabulary word's trained row travels in
the saved checkpoint, and a new placeholder cannot be saved there (a structured error)."""

from __future__ import annotations

import uuid

import pytest
import torch

from nodes.diffusion import train_common as tc
from nodes.diffusion.pivotal_tuning import PivotSpec
from nodes.diffusion.train_dreambooth import dreambooth_training
from nodes.diffusion.train_textual_inversion import retrained_clip
from tests.graph_nodes import run_error
from tests.test_dreambooth import RES, db_node, graph, handles, messages, run_latent, session
from tests.test_pivotal_tuning import assert_stepped_as, whole_table_step

__all__ = ["session"]

CAPTIONS = ["a sks shape", "a red sks shape"]


def batch(vae):
    g = torch.Generator().manual_seed(4)
    images = torch.rand(2, RES, RES, 3, generator=g)
    noise = torch.randn(2, 4, RES // 8, RES // 8, generator=g)
    latents = torch.randn(2, 4, RES // 8, RES // 8, generator=g)
    return images, noise, torch.tensor([37, 611]), latents


def two_steps(model, clip, vae, pivot):
    images, noise, timesteps, latents = batch(vae)
    settings = tc.TrainSettings(steps=2, learning_rate=1e-3, batch_size=2, seed=5,
                                resolution=RES)
    with dreambooth_training(model, clip, vae, images, CAPTIONS, settings, pivot=pivot) as run:
        for _ in range(2):
            run.step(torch.arange(2), noise=noise, timesteps=timesteps, latents=latents)
        unet = {k: v.clone() for k, v in run.unet.state_dict().items()}
        rows = None if run.token_rows is None else run.token_rows.rows.detach().clone()
    return unet, rows, run.clip


def test_rows_at_rate_zero_leave_dreambooths_step_unchanged(tiny_model_paths, monkeypatch):
    # the rows' gradient joins the clipped norm (the advanced script clips the embeddings
    # with the rest), so the comparison is made without clipping
    monkeypatch.setattr("nodes.diffusion.train_dreambooth.MAX_GRAD_NORM", 1e9)
    model, clip, vae = handles(tiny_model_paths["diffusers"])
    plain, _, plain_clip = two_steps(model, clip, vae, None)
    pivoted, rows, pivot_clip = two_steps(model, clip, vae,
                                          PivotSpec("sks", learning_rate=0.0))
    assert plain_clip is clip and pivot_clip is not clip
    diff = max((pivoted[k] - v).abs().max().item() for k, v in plain.items())
    print(f"UNet max diff with the rows at rate 0: {diff:.2e}")
    assert diff <= 1e-6
    sks = clip.tokenizer.encode("sks", add_special_tokens=False)
    assert torch.equal(rows, clip.text_encoder.get_input_embeddings().weight.detach()[sks])


def test_the_tokens_phase_steps_the_row_as_a_whole_table(tiny_model_paths):
    model, clip, vae = handles(tiny_model_paths["diffusers"])
    base_table = clip.text_encoder.get_input_embeddings().weight.detach().clone()
    images, noise, timesteps, latents = batch(vae)
    settings = tc.TrainSettings(steps=1, learning_rate=1e-3, batch_size=2, seed=5,
                                resolution=RES)
    pivot = PivotSpec("sks", "square", learning_rate=3e-2, ti_steps=1)
    with dreambooth_training(model, clip, vae, images, CAPTIONS, settings, pivot=pivot) as run:
        before = {k: v.clone() for k, v in run.unet.state_dict().items()}
        with torch.enable_grad():
            run.step(torch.arange(2), noise=noise, timesteps=timesteps, latents=latents)
        assert all(torch.equal(v, before[k]) for k, v in run.unet.state_dict().items())
        rows = run.token_rows.rows.detach().clone()
    trained_clip = run.clip
    # the reference: "sks" set to "square"'s row, the whole table in AdamW, then restored
    sks = clip.tokenizer.encode("sks", add_special_tokens=False)
    square = clip.tokenizer.encode("square", add_special_tokens=False)[0]
    ref = retrained_clip(clip, sks, square)
    table, original = whole_table_step(model, ref, sks, CAPTIONS, 3e-2, latents, noise,
                                       timesteps)
    assert_stepped_as(rows, table, original, sks, trained_clip, clip, base_table)


def test_a_saved_checkpoint_keeps_the_trained_word(session):
    """Load Checkpoint of the saved file, prompted with the plain word, draws what the
    training graph's own MODEL and CLIP draw."""
    name = f"dbp/{uuid.uuid4().hex[:8]}"
    prompt = graph(db_node(pivot_token="sks", pivot_learning_rate=5e-2, save_name=name),
                   text="a sks shape", model_from=["train", 0], clip_from=["train", 1])
    in_graph, _ = run_latent(session, prompt)
    loaded = graph(None, text="a sks shape", model_from=["ckpt", 0], clip_from=["ckpt", 1],
                   ckpt=f"{name}.safetensors")
    via_file, _ = run_latent(session, loaded)
    print(f"in-graph vs loaded max diff {(via_file - in_graph).abs().max():.2e}")
    assert (via_file - in_graph).abs().max() <= 1e-4
    base = graph(None, text="a sks shape", model_from=["train", 0], clip_from=["ckpt", 1])
    base["train"] = prompt["train"]
    base_word, _ = run_latent(session, base)  # the trained UNet with the untrained word
    assert (base_word - in_graph).abs().max() > 1e-4


def test_a_new_placeholder_cannot_be_saved_in_a_checkpoint(session):
    prompt = graph(db_node(pivot_token="<new>", captions="a <new> shape",
                           save_name="dbp/placeholder"),
                   text="a <new> shape", model_from=["train", 0], clip_from=["train", 1])
    assert "is a new word, which a checkpoint file cannot hold" in run_error(session, prompt)
    folder = session.env.folder("models") / "checkpoints" / "dbp"
    assert not (folder / "placeholder.safetensors").exists()


@pytest.mark.parametrize("overrides,said", [
    ({"pivot_token": "two words"}, "pivot_token: one word"),
    ({"pivot_token": "<q>"}, "captions: the captions must contain the pivot token"),
])
def test_bad_pivot_inputs_are_validation_errors(session, overrides, said):
    prompt = graph(db_node(**overrides), text="a sks shape", model_from=["train", 0],
                   clip_from=["train", 1])
    assert said in messages(session, prompt)
