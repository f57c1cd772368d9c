"""The training nodes' masked loss (``loss_mask``, ``unmasked_weight``): each image's MSE
is the weighted mean over its latent pixels, the weights 1 on the mask and
``unmasked_weight`` off it, the mask scaled and cropped as the images are. Written out
here by hand; without a mask the loss is the scripts' (test_training_nodes.py)."""

from __future__ import annotations

import uuid

import pytest
import torch

from nodes.diffusion import train_common as tc
from tests.test_training_nodes import RES, graph, handles, lora_node, run_error, session  # noqa: F401


def reference_masked_loss(pred, target, weights, snr_weights=None):
    """Per image: Σ w·(pred - target)² / (C · Σ w), then the (SNR-weighted) batch mean."""
    out = []
    for i in range(pred.shape[0]):
        w = weights[i, 0]
        se = ((pred[i] - target[i]) ** 2).sum(0)  # over channels
        out.append((w * se).sum() / (pred.shape[1] * w.sum()))
    per_image = torch.stack(out)
    return (per_image if snr_weights is None else per_image * snr_weights).mean()


def test_masked_loss_is_the_weighted_mean_over_each_images_pixels():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 6, 5, generator=g), torch.randn(2, 4, 6, 5, generator=g)
    weights = torch.rand(2, 1, 6, 5, generator=g)
    scheduler, t = DDPMScheduler(), torch.tensor([10, 700])
    ours = tc.weighted_mse(pred, target, scheduler, t, 0.0, weights)
    assert ours.item() == pytest.approx(reference_masked_loss(pred, target, weights).item(),
                                        rel=1e-6)
    snr = compute_snr(scheduler, t)
    snr_w = torch.clamp(snr, max=5.0) / snr
    with_snr = tc.weighted_mse(pred, target, scheduler, t, 5.0, weights)
    assert with_snr.item() == pytest.approx(
        reference_masked_loss(pred, target, weights, snr_w).item(), rel=1e-6)
    # uniform weights are the scripts' loss
    flat = torch.full_like(weights, 0.3)
    assert tc.weighted_mse(pred, target, scheduler, t, 0.0, flat).item() == pytest.approx(
        tc.weighted_mse(pred, target, scheduler, t).item(), rel=1e-6)
    assert tc.weighted_mse(pred, target, scheduler, t, 5.0, flat).item() == pytest.approx(
        tc.weighted_mse(pred, target, scheduler, t, 5.0).item(), rel=1e-6)


def test_loss_weights_follow_the_images_scale_and_crop():
    # a 32x48 image trained at 16: scaled to 16x24, the middle 16x16 kept (columns 4..20
    # of 24, i.e. 8..40 of 48); the subject: the image's right third, columns 32..48
    images = torch.zeros(1, 32, 48, 3)
    mask = torch.zeros(1, 32, 48)
    mask[:, :, 32:] = 1
    w = tc.loss_weights(mask, images, 16, (4, 4), 0.25)
    assert w.shape == (1, 1, 4, 4)
    # kept columns 8..40: latent columns of 8 source pixels each; only the last (32..40)
    # lies on the subject (the antialiased scaling softens the edge by a pixel)
    assert torch.allclose(w[0, 0, :, :2], torch.full((4, 2), 0.25))
    assert (w[0, 0, :, 2] < 0.3).all() and (w[0, 0, :, 3] > 0.95).all()
    # a mask of another size is stretched to the images' first; one mask serves a batch
    small = torch.zeros(1, 8, 12)
    small[:, :, 8:] = 1
    w2 = tc.loss_weights(small, images.expand(3, -1, -1, -1), 16, (4, 4), 0.25)
    assert w2.shape == (3, 1, 4, 4) and torch.allclose(w2[2], w[0], atol=0.05)
    assert tc.loss_weights(mask, images, 16, (4, 4), 1.0).eq(1).all()


@pytest.mark.parametrize(("mask", "weight", "message"), [
    (torch.ones(2, 8, 8), 0.1, "one mask for all 3 images or one per image"),
    (torch.ones(3, 2, 8, 8), 0.1, "one mask for all"),
    (torch.full((1, 8, 8), float("nan")), 0.1, "NaN"),
    (torch.zeros(1, 8, 8), 0.0, "empty"),
])
def test_bad_loss_masks_are_refused(mask, weight, message):
    with pytest.raises(ValueError, match=message):
        tc.loss_weights(mask, torch.zeros(3, 8, 8, 3), 8, (2, 2), weight)


def test_lora_first_step_loss_is_the_masked_loss(tiny_model_paths):
    from nodes.diffusion import train_lora as tl
    from tests.test_training_nodes import fixed_batch

    model, clip, vae, _ = handles(tiny_model_paths["diffusers"])
    images, latents, noise, timesteps = fixed_batch(vae)
    mask = torch.zeros(2, RES, RES)
    mask[0, :16, :16] = 1
    mask[1, 8:, :] = 1
    settings = tc.TrainSettings(steps=1, learning_rate=1e-2, batch_size=2, seed=5,
                                resolution=RES)
    with tl.lora_training(model, clip, vae, images, ["a red square"] * 2, tl.LoraSpec(4, 4.0),
                          settings, tc.LossMask(mask, 0.2)) as run:
        weights = run.posterior.weights
        assert weights.shape == (2, 1, *latents.shape[-2:])
        with torch.no_grad():  # B = 0 at the start: the prediction is the base UNet's
            hidden = clip.text_encoder(run.ids)[0]
            pred = model.unet(run.scheduler.add_noise(latents, noise, timesteps), timesteps,
                              hidden).sample
        with torch.enable_grad():
            loss = run.step(torch.arange(2), noise=noise, timesteps=timesteps, latents=latents)
    assert loss == pytest.approx(reference_masked_loss(pred, noise, weights).item(), abs=1e-6)
    # the weights: 1 where the mask is, 0.2 elsewhere (latent cells are 8x8 pixels here)
    assert weights[0, 0, 0, 0].item() == pytest.approx(1.0)
    assert weights[0, 0, -1, -1].item() == pytest.approx(0.2)
    assert weights[1, 0, 0, 0].item() == pytest.approx(0.2)
    assert weights[1, 0, -1, 0].item() == pytest.approx(1.0)


def test_prior_preservation_weights_the_instances_only():
    from nodes.diffusion.prior_preservation import prior_loss

    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(4, 4, 3, 3, generator=g), torch.randn(4, 4, 3, 3, generator=g)
    weights = torch.rand(4, 1, 3, 3, generator=g)
    ours = prior_loss(pred, target, 0.7, weights)
    ref = (reference_masked_loss(pred[:2], target[:2], weights[:2])
           + 0.7 * ((pred[2:] - target[2:]) ** 2).mean())
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert prior_loss(pred, target, None, weights).item() == pytest.approx(
        reference_masked_loss(pred, target, weights).item(), rel=1e-6)


def test_dreambooth_first_step_masks_the_instances_not_the_class_images(tiny_model_paths):
    from nodes.diffusion.prior_preservation import PriorPreservation
    from nodes.diffusion.train_dreambooth import dreambooth_training

    model, clip, vae, _ = handles(tiny_model_paths["diffusers"])
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, RES, RES, 3, generator=g)
    class_images = torch.rand(2, RES, RES, 3, generator=g)
    latents = torch.randn(4, 4, RES // 8, RES // 8, generator=g)
    noise = torch.randn(4, 4, RES // 8, RES // 8, generator=g)
    timesteps = torch.tensor([17, 903, 500, 250])
    mask = torch.zeros(1, RES, RES)
    mask[:, :, RES // 2:] = 1
    spec = PriorPreservation("a shape", num_class_images=2, prior_loss_weight=0.7)
    settings = tc.TrainSettings(steps=1, learning_rate=1e-3, batch_size=2, seed=5,
                                resolution=RES)
    with dreambooth_training(model, clip, vae, images, ["a sks shape"] * 2, settings, False,
                             spec, class_images, tc.LossMask(mask, 0.0)) as run:
        weights = run.posterior.weights
        rows = run.rows(torch.arange(2))
        with torch.no_grad():
            pred = run.unet(run.scheduler.add_noise(latents, noise, timesteps), timesteps,
                            run.encode(rows)).sample
        loss = run.step(torch.arange(2), noise=noise, timesteps=timesteps, latents=latents)
    assert weights.shape[0] == 4 and weights[2:].eq(1).all()  # class images: unmasked
    assert weights[:2, ..., :weights.shape[-1] // 2].eq(0).all()
    ref = (reference_masked_loss(pred[:2], noise[:2], weights[:2])
           + 0.7 * ((pred[2:] - noise[2:]) ** 2).mean())
    assert loss == pytest.approx(ref.item(), rel=1e-5)


def mask_graph(train: dict, *, clip_out: int = 1, model_out: int | None = 0) -> dict:
    prompt = graph(train, text="a red sks", clip_from=["train", clip_out],
                   model_from=["train", model_out] if model_out is not None else None)
    prompt["solid"] = {"class_type": "SolidMask",
                       "inputs": {"value": 1.0, "width": 32, "height": 32}}
    prompt["train"]["inputs"]["loss_mask"] = ["solid", 0]
    return prompt


def saved_parameters(session, folder: str, name: str) -> dict:  # noqa: F811
    import json

    from safetensors import safe_open

    path = session.env.folder("models") / folder / f"{name}.safetensors"
    with safe_open(str(path), "pt") as fh:
        return json.loads(fh.metadata()["steerflow.parameters"])


@pytest.mark.parametrize("kind", ["lora", "ti", "dreambooth", "custom_diffusion"])
def test_every_training_node_takes_a_loss_mask(session, kind):  # noqa: F811
    from tests.test_custom_diffusion import cd_node
    from tests.test_dreambooth import db_node
    from tests.test_training_nodes import CAPTURED, ti_node

    name = f"masked/{kind}-{uuid.uuid4().hex[:6]}"
    train, folder, outs = {
        "lora": (lora_node(captions="a red sks\na blue sks\na green sks", save_name=name),
                 "loras", (1, 0)),
        "ti": (ti_node(captions="a <tok> shape", save_name=name), "embeddings", (0, None)),
        "dreambooth": (db_node(save_name=name, steps=2), "checkpoints", (1, 0)),
        "custom_diffusion": (cd_node(save_name=name, steps=2), "loras", (1, 0)),
    }[kind]
    train["inputs"]["unmasked_weight"] = 0.25
    prompt = mask_graph(train, clip_out=outs[0], model_out=outs[1])
    result = session.run(prompt)
    assert result.ok, result.run.error
    CAPTURED.pop(prompt["cap"]["inputs"]["key"])
    params = saved_parameters(session, folder, name)
    assert params["masked_loss"] is True and params["unmasked_weight"] == 0.25


def test_an_empty_mask_with_nothing_outside_is_refused(session):  # noqa: F811
    prompt = mask_graph(lora_node(captions="a red sks\na blue sks\na green sks",
                                  unmasked_weight=0.0))
    prompt["solid"]["inputs"]["value"] = 0.0
    assert "would teach nothing" in run_error(session, prompt)
