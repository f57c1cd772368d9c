"""The training scripts' options as node inputs (learning-rate schedule, Min-SNR-γ, offset
noise): set, each matches diffusers' ``train_text_to_image_lora.py`` / ``textual_inversion.py``
written independently; off (the default), the step is the plain one (the parity tests in
test_training_nodes.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nodes.diffusion import train_common as tc
from tests.test_training_nodes import LR, RES, TOL, fixed_batch, handles


def reference_snr_loss(pred, target, scheduler, timesteps, gamma):
    """train_text_to_image_lora.py's Min-SNR-γ branch."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weights = torch.stack([snr, gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if scheduler.config.prediction_type == "epsilon":
        weights = weights / snr
    else:
        weights = weights / (snr + 1)
    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    return (loss.mean(dim=list(range(1, len(loss.shape)))) * weights).mean()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_snr_weighting_matches_the_script(kind):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    timesteps = torch.tensor([3, 400, 990])
    ours = tc.weighted_mse(pred, target, scheduler, timesteps, 5.0)
    ref = reference_snr_loss(pred, target, scheduler, timesteps, 5.0)
    assert abs(ours.item() - ref.item()) <= 1e-7
    assert tc.weighted_mse(pred, target, scheduler, timesteps, 0.0).item() == pytest.approx(
        F.mse_loss(pred, target).item())


def test_noise_offset_draws_as_the_script():
    from diffusers import DDPMScheduler

    latents = torch.zeros(2, 4, 8, 8)
    ours, t = tc.draw_noise(latents, DDPMScheduler(), torch.Generator().manual_seed(4), 0.1)
    g = torch.Generator().manual_seed(4)  # the script: randn_like, then the offset, then t
    ref = torch.randn(latents.shape, generator=g)
    ref += 0.1 * torch.randn((2, 4, 1, 1), generator=g)
    assert torch.equal(ours, ref)
    assert torch.equal(t, torch.randint(0, 1000, (2,), generator=g))


@pytest.mark.parametrize("schedule", ["cosine", "constant_with_warmup", "linear"])
def test_lora_with_schedule_and_snr_matches_the_script(tiny_model_paths, schedule):
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig

    from nodes.diffusion import train_lora as tl

    folder = tiny_model_paths["diffusers"]
    model, clip, vae, _ = handles(folder)
    images, latents, noise, timesteps = fixed_batch(vae)
    captions = ["a red square", "a blue square"]
    steps = 3
    settings = tc.TrainSettings(steps=steps, learning_rate=LR, batch_size=2, seed=5,
                                resolution=RES, lr_scheduler=schedule, lr_warmup_steps=1,
                                snr_gamma=5.0)
    draws = [(noise.roll(i, 0), timesteps.roll(i, 0)) for i in range(steps)]
    with tl.lora_training(model, clip, vae, images, captions, tl.LoraSpec(4, 4.0),
                          settings) as run:
        init = {n: a.detach().clone() for n, a in run.unet_layers.down.items()}
        with torch.enable_grad():
            losses = [run.step(torch.arange(2), noise=n, timesteps=t, latents=latents)
                      for n, t in draws]
        ours = {n: (run.unet_layers.down[n].detach(), run.unet_layers.up[n].detach())
                for n in init}
        lrs = run.lr_scheduler.get_last_lr()

    _, _, _, c = handles(folder)
    for m in (c.unet, c.vae, c.text_encoder):
        m.requires_grad_(False)
    c.unet.add_adapter(LoraConfig(r=4, lora_alpha=4.0, init_lora_weights=True,
                                  target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    refs = {}
    for name, module in c.unet.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            with torch.no_grad():
                module.lora_A["default"].weight.copy_(init[name])
            refs[name] = (module.lora_A["default"].weight, module.lora_B["default"].weight)
    params = [p for p in c.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=1e-2,
                                  eps=1e-8)
    lr_scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=1,
                                 num_training_steps=steps)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    ids = c.tokenizer(captions, max_length=c.tokenizer.model_max_length, padding="max_length",
                      truncation=True, return_tensors="pt").input_ids
    hidden = c.text_encoder(ids)[0]
    ref_losses = []
    for n, t in draws:
        pred = c.unet(scheduler.add_noise(latents, n, t), t, hidden).sample
        loss = reference_snr_loss(pred, n, scheduler, t, 5.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        ref_losses.append(loss.item())
    assert max(abs(a - b) for a, b in zip(losses, ref_losses, strict=True)) <= TOL
    assert lrs == pytest.approx(lr_scheduler.get_last_lr())
    worst = max(max((ours[n][0] - refs[n][0]).abs().max().item(),
                    (ours[n][1] - refs[n][1]).abs().max().item()) for n in refs)
    assert worst <= TOL


def test_textual_inversion_schedule_follows_get_scheduler(tiny_model_paths):
    from diffusers.optimization import get_scheduler

    from nodes.diffusion.train_textual_inversion import inversion_training

    model, clip, vae, _ = handles(tiny_model_paths["diffusers"])
    images, latents, noise, timesteps = fixed_batch(vae)
    settings = tc.TrainSettings(steps=4, learning_rate=LR, batch_size=2, seed=5,
                                resolution=RES, lr_scheduler="cosine", lr_warmup_steps=2)
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    ref = get_scheduler("cosine", sgd, num_warmup_steps=2, num_training_steps=4)
    with inversion_training(model, clip, vae, images, ["a <sks>"] * 2, "<sks>", "square", 1,
                            settings) as run:
        for _ in range(3):
            with torch.enable_grad():
                run.step(torch.arange(2), noise=noise, timesteps=timesteps, latents=latents)
            sgd.step()
            ref.step()
            assert run.optimizer.param_groups[0]["lr"] == pytest.approx(
                ref.get_last_lr()[0])


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="lr_scheduler"):
        tc.make_lr_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                             tc.TrainSettings(1, 1.0, 1, 0, 8, lr_scheduler="sometimes"))
