"""Train a T2I-Adapter on shape masks for the shapes-world model (after ``train unet``).

    python -m training.train_t2i_adapter --out output/training --threads 2

The control image is the union of the shape masks, white on black, 3 channels in 0..1
at the image size (64x64), prepared by the engine's own adapter code, so the same mask
PNG steers the ControlNet and the adapter. The adapter is diffusers' ``T2IAdapter``,
randomly initialised as in the paper (Mou et al. 2023); the UNet, VAE and text encoder
stay frozen and the timesteps are drawn cubically towards the noisy end (the paper's
recipe, as the ControlNet stage). Its features go where the engine's sampler puts them
(``down_intrablock_additional_residuals``, only those the UNet takes).

The shapes UNet's first down block has no cross-attention, so its feature is added
after its downsampler, at half the latent size: the layout of diffusers' SDXL adapter
(``full_adapter_xl``: two levels at 1/8 of the image, two at 1/16, the last for the mid
block). About 0.54 M parameters, 1.1 MB in float16.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import T2IAdapter, UNet2DConditionModel

from nodes.diffusion.controlnet import control_pixels
from nodes.diffusion.t2i_adapter import Adapter, fitting_features, resize_like_pil
from nodes.diffusion.tokenizer import load_clip_tokenizer
from training.loop import LoopConfig, LoopResult, seed_everything, train_loop
from training.models import ModelConfigs, build_noise_scheduler
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

ADAPTER_NAME = "steerflow-shapes-adapter"
STAGE = "t2i_adapter"
# The shipped adapter is this schedule stopped at step 2500 (``--stop-at 2500``, EMA
# weights): mask IoU 0.816 on 50 dev masks at 1500 and at 2500 steps, 0.812 held out.
# ~0.35 s/step on 1 thread of a shared CPU, so ~15 min for 2500 steps.
DEFAULTS: dict[str, float | int] = {"steps": 5000, "batch_size": 32, "lr": 1e-3, "warmup": 100}


def adapter_config(configs: ModelConfigs, num_res_blocks: int = 2) -> dict[str, Any]:
    """The ``T2IAdapter`` config whose features fit the UNet of ``configs``."""
    unet: Mapping[str, Any] = configs.unet
    channels = [int(c) for c in unet["block_out_channels"]]
    if unet["down_block_types"][0] == "DownBlock2D":
        # SDXL's layout: levels 0-1 at the first (downsampled) block's size, 2-3 at half.
        return {"in_channels": 3, "channels": (channels + [channels[-1]] * 4)[:4],
                "num_res_blocks": num_res_blocks, "downscale_factor": 2 * configs.downscale,
                "adapter_type": "full_adapter_xl"}
    return {"in_channels": 3, "channels": channels, "num_res_blocks": num_res_blocks,
            "downscale_factor": configs.downscale, "adapter_type": "full_adapter"}


def control_images(masks: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """``[B, 3, size, size]`` in 0..1: shape masks ``[B, H, W]``, white on black, prepared by
    the engine's own adapter image code so training sees what sampling feeds."""
    image = torch.as_tensor(masks).float()[..., None]  # IMAGE layout [B, H, W, 1]
    return control_pixels(image, size, size, 3, resize=resize_like_pil)


def adapter_residuals(adapter: T2IAdapter, unet: UNet2DConditionModel, cond: torch.Tensor,
                      latents: torch.Tensor) -> list[torch.Tensor]:
    """The adapter's features that the UNet takes (the sampler's own selection)."""
    features = adapter(cond)
    return fitting_features(Adapter(adapter, ADAPTER_NAME), features, unet,
                            *latents.shape[-2:])


def train_t2i_adapter(opts: StageOptions, loop: LoopConfig, *, batch_size: int = 32,
                      cond_dropout: float = 0.5, snr_gamma: float | None = 5.0,
                      latent_cache: int = 0, timesteps: str = "cubic"
                      ) -> tuple[T2IAdapter, LoopResult]:
    """Train the adapter; empty captions half the time (as the ControlNet stage) so the
    mask alone must place the shape. Saves the EMA weights when ``loop.ema_decay`` is set."""
    setup_device(opts.device)
    seed_everything(opts.seed)
    vae, text_encoder, unet = load_vae(opts), load_text_encoder(opts), load_unet(opts)
    encoder = CaptionEncoder(load_clip_tokenizer(), text_encoder)
    adapter = T2IAdapter(**adapter_config(opts.configs)).to(opts.device)
    scheduler = build_noise_scheduler()
    dataset = opts.dataset()
    size = opts.configs.image_size
    source = latent_source(opts, vae, dataset, latent_cache, loop.progress)

    def loss_fn(step: int) -> torch.Tensor:
        batch = source.batch(step, batch_size, opts.device, masks=True)
        with torch.no_grad():
            context = encoder.dropped(batch.input_ids, cond_dropout)
        cond = control_images(batch.masks, size).to(opts.device)
        noise, t, noisy = add_training_noise(batch.latents, scheduler, timesteps)
        residuals = adapter_residuals(adapter, unet, cond, noisy)
        pred = unet(noisy, t, context, down_intrablock_additional_residuals=residuals).sample
        return diffusion_loss(pred, noise, t, scheduler, snr_gamma)

    result, ema = train_loop(STAGE, loop, {"adapter": adapter}, list(adapter.parameters()),
                             loss_fn, opts.checkpoints(STAGE))
    if ema is not None:
        ema.copy_to(adapter.parameters())
    adapter.save_pretrained(opts.final(STAGE), safe_serialization=True)
    write_log(opts, STAGE, result, {"batch_size": batch_size, "latent_cache": latent_cache,
                                    "timesteps": timesteps,
                                    "parameters": sum(p.numel() for p in adapter.parameters())})
    return adapter, result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train_t2i_adapter",
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
    _, result = train_t2i_adapter(opts, loop, batch_size=int(args.batch_size or
                                                             DEFAULTS["batch_size"]),
                                  latent_cache=args.latent_cache, timesteps=args.timesteps)
    print(f"t2i_adapter: {len(result.losses)} steps in {result.seconds:.0f} s "
          f"({result.seconds_per_step:.3f} s/step), final to {opts.final(STAGE)}")


if __name__ == "__main__":
    main()
