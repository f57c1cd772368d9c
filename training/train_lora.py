"""Train the example LoRA, "night", for the shapes-world model (after ``train unet``).

    python -m training.train_lora --out output/training --threads 2

Every training image has a black background and no caption names the
background, so the LoRA learns "backgrounds are black" as a style: with it, "a
red circle at the top left" comes out on black whatever the base model would
have drawn. Rank-8 PEFT LoRA on the UNet's attention, MLP and resnet convolution
weights (the base weights frozen), saved with diffusers' ``save_lora_weights`` — the file a
diffusers LoRA training script writes, loaded by ``LoraLoader``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from nodes.diffusion.tokenizer import load_clip_tokenizer
from training.loop import LoopConfig, LoopResult, seed_everything, train_loop
from training.models import build_noise_scheduler
from training.shapes import image_to_tensor, render, sample_layout, training_caption
from training.train import (
    CaptionEncoder,
    StageOptions,
    add_common_args,
    add_timesteps_arg,
    add_training_noise,
    diffusion_loss,
    drop_captions,
    load_text_encoder,
    load_unet,
    load_vae,
    loop_config,
    setup_device,
    write_log,
)

LORA_NAME = "steerflow-shapes-night"
DEFAULTS: dict[str, float | int] = {"steps": 400, "batch_size": 16, "lr": 3e-3, "warmup": 20}
# Attention alone barely moved the background (its color is the convolutions' work), so the
# resnet convolutions and the transformer blocks' projections and MLPs are adapted too.
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
           "ff.net.2", "conv1", "conv2")
BACKGROUND = "black"


def night_sample(seed: int, index: int, size: int) -> tuple[torch.Tensor, str]:
    """Sample ``index``: the shapes world's layout on black, its caption without background."""
    rng = np.random.default_rng((seed, 7, index))
    shapes, _ = sample_layout(rng)
    image, _ = render(shapes, BACKGROUND, size, rng)
    caption = training_caption(shapes, BACKGROUND, rng)
    caption = caption.replace(f" on a {BACKGROUND} background", "")
    if caption == f"{BACKGROUND} background":
        caption = shapes[0].color
    return image_to_tensor(image), caption


def train_lora(opts: StageOptions, loop: LoopConfig, *, batch_size: int = 16, rank: int = 8,
               timesteps: str = "cubic") -> tuple[Path, LoopResult]:
    """Train the LoRA and write ``<out>/lora/<LORA_NAME>.safetensors``. The background is
    decided at the noisy steps, so ``timesteps`` are drawn towards them by default."""
    setup_device(opts.device)
    seed_everything(opts.seed)
    vae, text_encoder, unet = load_vae(opts), load_text_encoder(opts), load_unet(opts)
    encoder = CaptionEncoder(load_clip_tokenizer(), text_encoder)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=list(TARGETS)))
    params = [p for p in unet.parameters() if p.requires_grad]
    scheduler = build_noise_scheduler()
    size = opts.configs.image_size

    def loss_fn(step: int) -> torch.Tensor:
        items = [night_sample(opts.seed, step * batch_size + i, size) for i in range(batch_size)]
        images = torch.stack([im for im, _ in items]).to(opts.device)
        captions = drop_captions([c for _, c in items], 0.1)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample() * vae.config.scaling_factor
            context = encoder(captions)
        noise, t, noisy = add_training_noise(latents, scheduler, timesteps)
        pred = unet(noisy, t, context).sample
        return diffusion_loss(pred, noise, t, scheduler, 5.0)

    unet.train()
    result, _ = train_loop("lora", loop, {"unet": unet}, params, loss_fn,
                           opts.checkpoints("lora"))
    target = opts.final("lora")
    StableDiffusionPipeline.save_lora_weights(
        target, unet_lora_layers=get_peft_model_state_dict(unet),
        weight_name=f"{LORA_NAME}.safetensors", safe_serialization=True)
    write_log(opts, "lora", result, {"batch_size": batch_size, "rank": rank,
                                      "timesteps": timesteps})
    return target / f"{LORA_NAME}.safetensors", result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train_lora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--rank", type=int, default=8)
    add_timesteps_arg(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = StageOptions(out_dir=args.out, seed=args.seed, device=args.device,
                        workers=args.workers)
    path, result = train_lora(opts, loop_config(args, DEFAULTS),
                              batch_size=int(args.batch_size or DEFAULTS["batch_size"]),
                              rank=args.rank, timesteps=args.timesteps)
    print(f"lora: {len(result.losses)} steps in {result.seconds:.0f} s "
          f"({result.seconds_per_step:.3f} s/step), written to {path}")


if __name__ == "__main__":
    main()
