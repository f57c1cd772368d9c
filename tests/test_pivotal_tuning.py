"""Pivotal tuning (Train LoRA's pivot_* inputs): the concept word's embedding rows train
with the LoRA. Its rows, apart from the table, step as textual inversion's whole-table
AdamW does (other rows restored); the base CLIP is never changed."""

from __future__ import annotations

import uuid

import torch

from nodes.diffusion import train_common as tc
from nodes.diffusion import train_lora as tl
from nodes.diffusion.train_textual_inversion import (
    extended_clip,
    placeholder_tokens,
    restore_other_rows,
)
from tests.test_training_nodes import (
    RES,
    fixed_batch,
    graph,
    handles,
    lora_node,
    messages,
    run_latent,
    session,
)

__all__ = ["session"]


def whole_table_step(model, ref, ids, captions, lr, latents, noise, timesteps):
    """The reference: textual inversion's way, one AdamW step on ``ref``'s whole table on
    the batch, every row but ``ids`` restored; the table after and before."""
    table = ref.text_encoder.get_input_embeddings().weight
    original = table.detach().clone()
    opt = tc.make_optimizer([table], lr)
    with tc.frozen(model.unet, ref.text_encoder), torch.enable_grad():
        table.requires_grad_(True)
        context = ref.text_encoder(tc.tokenize(ref.tokenizer, captions, "cpu"))[0]
        pred, target = tc.prediction_and_target(
            model.unet, tc.noise_scheduler(model.scheduler_config), latents, noise,
            timesteps, context)
        torch.nn.functional.mse_loss(pred.float(), target.float()).backward()
        torch.nn.utils.clip_grad_norm_([table], tl.MAX_GRAD_NORM)
        opt.step()
        restore_other_rows(table, original, ids)
    return table.detach(), original


def test_pivot_rows_step_as_a_whole_table_does(tiny_model_paths):
    model, clip, vae, _ = handles(tiny_model_paths["diffusers"])
    images, latents, noise, timesteps = fixed_batch(vae)
    settings = tc.TrainSettings(steps=3, learning_rate=1e-2, batch_size=2, seed=5,
                                resolution=RES)
    pivot = tl.PivotSpec("<tok>", "square", 2, learning_rate=3e-2, ti_steps=1)
    captions = ["a <tok> shape", "a red <tok>"]
    spec = tl.LoraSpec(4, 4.0)
    base_table = clip.text_encoder.get_input_embeddings().weight.detach().clone()
    with tl.lora_training(model, clip, vae, images, captions, spec, settings,
                          pivot=pivot) as run:
        with torch.enable_grad():
            run.step(torch.arange(2), noise=noise, timesteps=timesteps, latents=latents)
        rows = run.token_rows.rows.detach().clone()
        # the token's phase: the LoRA has not moved
        assert all(not p.any() for p in (run.unet_layers.up[n] for n in run.unet_layers.up))
        trained_clip = run.clip
    # the reference: textual inversion's way, the whole table in AdamW, then restored
    init = clip.tokenizer.encode("square", add_special_tokens=False)[0]
    ref = extended_clip(clip, placeholder_tokens("<tok>", 2), init)
    ids = ref.tokenizer.convert_tokens_to_ids(placeholder_tokens("<tok>", 2))
    table, original = whole_table_step(model, ref, ids, captions, 3e-2, latents, noise,
                                       timesteps)
    assert_stepped_as(rows, table, original, ids, trained_clip, clip, base_table)


def assert_stepped_as(rows, table, original, ids, trained_clip, clip, base_table) -> None:
    """The pivot's ``rows`` are the reference ``table``'s rows ``ids`` and moved; the
    returned handle holds them; the base table is untouched."""
    assert torch.allclose(rows, table.detach()[ids], atol=1e-6)
    assert (rows - original[ids]).abs().max() > 1e-3  # it moved
    assert torch.equal(trained_clip.text_encoder.get_input_embeddings().weight[ids], rows)
    assert torch.equal(clip.text_encoder.get_input_embeddings().weight, base_table)


def test_train_lora_with_a_pivot_token_in_a_graph(session):
    prompt = graph(lora_node(captions="a red <p>\na blue <p>\na green <p>",
                             target="unet", pivot_token="<p>", pivot_initializer="square",
                             pivot_vectors=2, pivot_learning_rate=1e-2),
                   text="a red <p>", clip_from=["train", 1], model_from=["train", 0])
    trained, _ = run_latent(session, prompt)
    assert torch.isfinite(trained).all()
    # the base CLIP does not know the placeholder: it is the trained handle's only
    base = graph(lora_node(), text="a red <p>", clip_from=["ckpt", 1])
    base["cap"]["inputs"]["key"] = uuid.uuid4().hex
    plain, _ = run_latent(session, {k: v for k, v in base.items() if k != "train"})
    assert (trained - plain).abs().max() > 1e-4


def test_a_saved_pivot_token_is_an_embedding_that_gives_the_same_image(session):
    """save_name writes the LoRA and, beside it in models/embeddings, the token's trained
    vectors: outside the graph, Load LoRA plus ``embedding:<name>_emb`` where the token was
    draws what the training graph's own CLIP draws."""
    name = f"pivot/{uuid.uuid4().hex[:8]}"
    prompt = graph(lora_node(captions="a red sks\na blue sks\na green sks", target="unet",
                             pivot_token="sks", pivot_learning_rate=5e-2, save_name=name),
                   text="a red sks", clip_from=["train", 1], model_from=["train", 0])
    in_graph, _ = run_latent(session, prompt)
    models = session.env.folder("models")
    lora = models / "loras" / f"{name}.safetensors"
    embedding = models / "embeddings" / f"{name}_emb.safetensors"
    assert lora.is_file() and embedding.is_file()
    from safetensors.torch import load_file

    assert load_file(embedding)["sks"].shape[0] == 1
    elsewhere = graph(lora_node(), text=f"a red embedding:{name}_emb", clip_from=["ckpt", 1],
                      model_from=["lora", 0])
    del elsewhere["train"]
    elsewhere["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["ckpt", 0], "lora_name": f"{name}.safetensors", "strength_model": 1.0}}
    reused, _ = run_latent(session, elsewhere)
    assert torch.allclose(reused, in_graph, atol=1e-5)


def test_bad_pivot_inputs_are_validation_errors(session):
    for overrides, said in (({"pivot_token": "two words"}, "pivot_token: one word"),
                            ({"pivot_token": "<q>", "captions": "a red sks"},
                             "captions: the captions must contain the pivot token")):
        prompt = graph(lora_node(**overrides), text="a red sks", clip_from=["train", 1],
                       model_from=["train", 0])
        assert said in messages(session, prompt)
