"""Train a ControlNet on shape masks for the shapes-world model (after ``train unet``).

    python -m training.train_controlnet --out output/training --threads 2

The control image is the union of the shape masks, white on black, 3 channels
in 0..1, resized to latent size x 8 as the engine's ControlNet nodes do. The ControlNet starts as
``ControlNetModel.from_unet`` of the trained UNet (zero convolutions zero), the
UNet, VAE and text encoder stay frozen.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import ControlNetModel

from nodes.diffusion.controlnet import prepare_control_image
from nodes.diffusion.tokenizer import load_clip_tokenizer
from training.loop import LoopConfig, LoopResult, seed_everything, train_loop
from training.models import build_controlnet, build_noise_scheduler
from training.train import (
    CaptionEncoder,
    StageOptions,
    add_common_args,
    add_timesteps_arg,
    add_training_noise,
    diffusion_loss,
    latent_source,
    load_text_encoder,
    load_unet,
    load_vae,
    loop_config,
    setup_device,
    write_log,
)

# lr 2e-3 with cubic timesteps reached in 800 steps the IoU that lr 5e-4 with uniform ones
# had after 4500 (training/README.md).
DEFAULTS: dict[str, float | int] = {"steps": 2500, "batch_size": 32, "lr": 2e-3, "warmup": 100}


def control_images(masks: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """``[B, 3, size, size]`` in 0..1: shape masks ``[B, H, W]``, white on black, resized
    by the engine's own ``prepare_control_image`` so training sees what sampling feeds."""
    image = torch.as_tensor(masks).float()[..., None]  # IMAGE layout [B, H, W, 1]
    return prepare_control_image(image, size, size, len(masks))


def train_controlnet(opts: StageOptions, loop: LoopConfig, *, batch_size: int = 32,
                     cond_dropout: float = 0.5, snr_gamma: float | None = 5.0,
                     latent_cache: int = 0, timesteps: str = "cubic"
                     ) -> tuple[ControlNetModel, LoopResult]:
    """Train the ControlNet; empty captions half the time (as the ControlNet paper) so the
    mask alone must place the shape, and ``timesteps`` sampled towards the noisy end by
    default, where the layout is decided. Saves the EMA weights when ``loop.ema_decay``
    is set."""
    setup_device(opts.device)
    seed_everything(opts.seed)
    vae, text_encoder, unet = load_vae(opts), load_text_encoder(opts), load_unet(opts)
    encoder = CaptionEncoder(load_clip_tokenizer(), text_encoder)
    controlnet = build_controlnet(unet, opts.configs).to(opts.device)
    scheduler = build_noise_scheduler()
    dataset = opts.dataset()
    # The control image is as much larger than the latent as the hint encoder shrinks it.
    latent_size = opts.configs.image_size // opts.configs.downscale
    hint_size = latent_size * 2 ** (len(opts.configs.hint_channels) - 1)
    source = latent_source(opts, vae, dataset, latent_cache, loop.progress)

    def loss_fn(step: int) -> torch.Tensor:
        batch = source.batch(step, batch_size, opts.device, masks=True)
        with torch.no_grad():
            context = encoder.dropped(batch.input_ids, cond_dropout)
        cond = control_images(batch.masks, hint_size).to(opts.device)
        noise, t, noisy = add_training_noise(batch.latents, scheduler, timesteps)
        down, mid = controlnet(noisy, t, encoder_hidden_states=context,
                               controlnet_cond=cond, return_dict=False)
        pred = unet(noisy, t, context, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        return diffusion_loss(pred, noise, t, scheduler, snr_gamma)

    result, ema = train_loop("controlnet", loop, {"controlnet": controlnet},
                             list(controlnet.parameters()), loss_fn,
                             opts.checkpoints("controlnet"))
    if ema is not None:
        ema.copy_to(controlnet.parameters())
    controlnet.save_pretrained(opts.final("controlnet"), safe_serialization=True)
    write_log(opts, "controlnet", result, {"batch_size": batch_size,
                                            "latent_cache": latent_cache,
                                            "timesteps": timesteps})
    return controlnet, result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train_controlnet",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--latent-cache", type=int, default=32768,
                        help="encode this many samples once (0: encode every batch)")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay (0: none)")
    add_timesteps_arg(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = StageOptions(out_dir=args.out, seed=args.seed, device=args.device,
                        workers=args.workers)
    loop = loop_config(args, DEFAULTS, ema_decay=args.ema or None)
    _, result = train_controlnet(opts, loop, batch_size=int(args.batch_size or
                                                            DEFAULTS["batch_size"]),
                                 latent_cache=args.latent_cache, timesteps=args.timesteps)
    print(f"controlnet: {len(result.losses)} steps in {result.seconds:.0f} s "
          f"({result.seconds_per_step:.3f} s/step), final to {opts.final('controlnet')}")


if __name__ == "__main__":
    main()
