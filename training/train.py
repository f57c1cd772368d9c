"""Train the shapes-world model stage by stage: VAE, text encoder, UNet, then export.

    python -m training.train vae   --out output/training --threads 2
    python -m training.train text  --out output/training
    python -m training.train unet  --out output/training
    python -m training.train_controlnet --out output/training
    python -m training.train export --out output/training

Every stage is seeded, resumes from its latest checkpoint under
``<out>/checkpoints/<stage>``, and writes its model as a diffusers folder
under ``<out>/<stage>`` for the next stage. See training/README.md.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr
from transformers import CLIPTextModel, CLIPTokenizer

from nodes.diffusion.tokenizer import load_clip_tokenizer
from training.captions import CaptionHeads, labels_tensor
from training.latents import LatentSource, token_ids
from training.loop import LoopConfig, LoopResult, seed_everything, train_loop
from training.models import (
    ModelConfigs,
    build_noise_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
)
from training.shapes import ShapesDataset, collate

DEFAULT_OUT = Path("output/training")


@dataclass
class StageOptions:
    """What every stage needs besides its own hyper-parameters."""

    out_dir: Path = DEFAULT_OUT
    seed: int = 0
    device: str = "cpu"
    models: ModelConfigs | None = None
    workers: int = 0  # DataLoader processes preparing batches ahead (0: inline)

    @property
    def configs(self) -> ModelConfigs:
        return self.models or ModelConfigs()

    def checkpoints(self, stage: str) -> Path:
        return Path(self.out_dir) / "checkpoints" / stage

    def final(self, stage: str) -> Path:
        return Path(self.out_dir) / stage

    def dataset(self, **kwargs: object) -> ShapesDataset:
        return ShapesDataset(seed=self.seed, size=self.configs.image_size, **kwargs)


# --- shared helpers ------------------------------------------------------------------------

class CaptionEncoder:
    """Tokenize (memoised: captions repeat a lot) and encode captions to UNet context."""

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self._ids = lru_cache(maxsize=65536)(self._tokenize)

    def _tokenize(self, caption: str) -> tuple[int, ...]:
        return tuple(token_ids(self.tokenizer, [caption])[0].tolist())

    def ids(self, captions: Sequence[str], *, trim: bool = False) -> torch.Tensor:
        """Token ids ``[B, 77]``; ``trim`` cuts the padding columns every caption has."""
        ids = torch.tensor([self._ids(c) for c in captions])
        if trim:
            # Causal attention: states up to each EOS ignore what follows, so the
            # pooled (EOS) output is the same; only the cost shrinks.
            eos = self.tokenizer.eos_token_id
            last = int((ids == eos).int().argmax(dim=1).max())
            ids = ids[:, : last + 1]
        return ids.to(self.text_encoder.device)

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        return self.text_encoder(self.ids(captions))[0]

    def dropped(self, input_ids: torch.Tensor, prob: float) -> torch.Tensor:
        """Context of ``input_ids`` with each row's caption emptied with probability
        ``prob`` (the same draw as :func:`drop_captions`)."""
        keep = caption_keep(len(input_ids), prob).to(self.text_encoder.device)
        ids = input_ids.to(self.text_encoder.device)
        ids = torch.where(keep[:, None], ids, self.ids([""]))
        return self.text_encoder(ids)[0]


def load_vae(opts: StageOptions) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(opts.final("vae"), local_files_only=True).to(
        opts.device).eval().requires_grad_(False)


def load_text_encoder(opts: StageOptions) -> CLIPTextModel:
    return CLIPTextModel.from_pretrained(opts.final("text_encoder"), local_files_only=True).to(
        opts.device).eval().requires_grad_(False)


def load_unet(opts: StageOptions) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(opts.final("unet"), local_files_only=True).to(
        opts.device).eval().requires_grad_(False)


def setup_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def write_log(opts: StageOptions, stage: str, result: LoopResult, extra: dict[str, object]
               ) -> None:
    log = {"stage": stage, "start_step": result.start_step, "steps_run": len(result.losses),
           "seconds": round(result.seconds, 1),
           "seconds_per_step": round(result.seconds_per_step, 4),
           "first_loss": result.losses[0] if result.losses else None,
           "last_loss_mean100": (sum(result.losses[-100:]) / len(result.losses[-100:])
                                 if result.losses else None),
           "threads": torch.get_num_threads(), "device": opts.device, **extra}
    path = Path(opts.out_dir) / "logs" / f"{stage}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(log) + "\n")


# --- stage 1: VAE -------------------------------------------------------------------------

def vae_loss(vae: AutoencoderKL, pixels: torch.Tensor, mask: torch.Tensor, kl_weight: float,
             edge_weight: float, shape_weight: float) -> torch.Tensor:
    """Weighted MSE + L1 on image gradients (sharp edges, no perceptual net) + LDM's tiny KL.

    Shapes cover ~5% of the pixels, so plain MSE learns the background long
    before the shapes' colors; pixels in ``mask`` count ``1 + shape_weight``
    times. The KL is summed per sample and divided by the pixel count, LDM's
    balance, so ``kl_weight`` 1e-6 is SD's setting.
    """
    posterior = vae.encode(pixels).latent_dist
    recon = vae.decode(posterior.sample()).sample
    weight = 1 + shape_weight * mask
    weight = weight / weight.mean()
    mse = (weight * (recon - pixels) ** 2).mean()
    edge = ((weight[..., 1:] * (recon.diff(dim=-1) - pixels.diff(dim=-1)).abs()).mean()
            + (weight[..., 1:, :] * (recon.diff(dim=-2) - pixels.diff(dim=-2)).abs()).mean())
    kl = posterior.kl().mean() / pixels[0].numel()
    return mse + edge_weight * edge + kl_weight * kl


def _random_crop(crop: int, *images: torch.Tensor) -> list[torch.Tensor]:
    """The same random ``crop``-pixel window of each image batch (global RNG)."""
    size = images[0].shape[-1]
    if crop <= 0 or crop >= size:
        return list(images)
    top, left = (int(v) for v in torch.randint(0, size - crop + 1, (2,)))
    return [x[..., top:top + crop, left:left + crop] for x in images]


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, dataset: ShapesDataset, n: int = 512,
                          start: int = 10**8) -> float:
    """1 / std of the latents of ``n`` samples (SD's recipe for ``scaling_factor``)."""
    latents = []
    for lo in range(start, start + n, 64):
        pixels = collate([dataset[i] for i in range(lo, min(lo + 64, start + n))])
        latents.append(vae.encode(pixels["pixel_values"].to(vae.device)).latent_dist.sample())
    return float(1.0 / torch.cat(latents).std())


def train_vae(opts: StageOptions, loop: LoopConfig, *, batch_size: int = 16, crop: int = 32,
              full_size_every: int = 8, kl_weight: float = 1e-6, edge_weight: float = 0.1,
              shape_weight: float = 4.0) -> tuple[AutoencoderKL, LoopResult]:
    """Train the VAE on random ``crop``-pixel crops (it is convolutional), with a full-size
    batch every ``full_size_every`` steps so the mid-block attention sees whole images."""
    setup_device(opts.device)
    seed_everything(opts.seed)
    vae = build_vae(opts.configs).to(opts.device)
    dataset = opts.dataset()

    def loss_fn(step: int) -> torch.Tensor:
        batch = dataset.batch(step, batch_size)
        pixels, mask = batch["pixel_values"].to(opts.device), batch["mask"].to(opts.device)
        if full_size_every <= 0 or step % full_size_every:
            pixels, mask = _random_crop(crop, pixels, mask)
        return vae_loss(vae, pixels, mask, kl_weight, edge_weight, shape_weight)

    result, _ = train_loop("vae", loop, {"vae": vae}, list(vae.parameters()), loss_fn,
                           opts.checkpoints("vae"))
    vae.eval()
    scaling = latent_scaling_factor(vae, dataset)
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(opts.final("vae"), safe_serialization=True)
    write_log(opts, "vae", result, {"batch_size": batch_size, "crop": crop,
                                     "scaling_factor": scaling})
    return vae, result


# --- stage 2: text encoder ----------------------------------------------------------------

def train_text_encoder(opts: StageOptions, loop: LoopConfig, *, batch_size: int = 128
                       ) -> tuple[CLIPTextModel, LoopResult]:
    """Pre-train CLIP's text tower to classify every attribute a caption names.

    Heads on the pooled (EOS) state must recover size/color/shape/position of
    both shapes and the background, so those words get separate, bound
    representations before the UNet learns to read them (README explains why).
    """
    setup_device(opts.device)
    seed_everything(opts.seed)
    cfg = opts.configs
    text_encoder = build_text_encoder(cfg).to(opts.device)
    heads = CaptionHeads(cfg.text["hidden_size"]).to(opts.device)
    encoder = CaptionEncoder(load_clip_tokenizer(), text_encoder)
    dataset = opts.dataset()

    def loss_fn(step: int) -> torch.Tensor:
        captions = [dataset.caption(step * batch_size + j) for j in range(batch_size)]
        pooled = text_encoder(encoder.ids(captions, trim=True)).pooler_output
        return heads.loss(pooled, labels_tensor(captions).to(opts.device))

    params = [*text_encoder.parameters(), *heads.parameters()]
    result, _ = train_loop("text_encoder", loop, {"text_encoder": text_encoder, "heads": heads},
                           params, loss_fn, opts.checkpoints("text_encoder"))
    with torch.no_grad():
        captions = [dataset.caption(10**8 + j) for j in range(512)]
        accuracy = heads.accuracy(text_encoder(encoder.ids(captions)).pooler_output,
                                  labels_tensor(captions).to(opts.device))
    text_encoder.save_pretrained(opts.final("text_encoder"), safe_serialization=True)
    write_log(opts, "text_encoder", result, {"batch_size": batch_size,
                                              "heldout_caption_accuracy": accuracy})
    return text_encoder, result


# --- stage 3: UNet ------------------------------------------------------------------------

def diffusion_loss(pred: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                   scheduler: object, snr_gamma: float | None) -> torch.Tensor:
    """ε-prediction MSE, Min-SNR-γ weighted when ``snr_gamma`` is set (as diffusers' examples)."""
    if snr_gamma is None:
        return F.mse_loss(pred, noise)
    snr = compute_snr(scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma) / snr
    per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


TIMESTEP_SAMPLING = ("uniform", "cubic")


def sample_timesteps(n: int, num_train_timesteps: int, sampling: str = "uniform"
                     ) -> torch.Tensor:
    """``n`` training timesteps: uniform, or ``cubic`` (T2I-Adapter, Mou et al. 2023:
    t = (1 - u³)·T, biased towards the noisy steps where the layout is decided)."""
    if sampling == "uniform":
        return torch.randint(0, num_train_timesteps, (n,))
    if sampling == "cubic":
        u = torch.rand(n)
        return ((1 - u**3) * num_train_timesteps).long().clamp(max=num_train_timesteps - 1)
    raise ValueError(f"unknown timestep sampling {sampling!r}; use one of {TIMESTEP_SAMPLING}")


def add_training_noise(latents: torch.Tensor, scheduler: DDPMScheduler,
                       sampling: str = "uniform"
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noise, timesteps, noisy latents) for one ε-prediction step; noise is drawn on the
    CPU generator first, then the timesteps, so runs on any device stay reproducible."""
    noise = torch.randn(latents.shape).to(latents.device)
    timesteps = sample_timesteps(latents.shape[0], scheduler.config.num_train_timesteps,
                                 sampling).to(latents.device)
    return noise, timesteps, scheduler.add_noise(latents, noise, timesteps)


def latent_source(opts: StageOptions, vae: AutoencoderKL, dataset: ShapesDataset,
                  latent_cache: int, progress: bool) -> LatentSource:
    """The stage's latents; the cache file is shared by every stage with the same VAE,
    seed and size (UNet, ControlNet)."""
    return LatentSource(vae, dataset, load_clip_tokenizer(), cache_size=latent_cache,
                        seed=opts.seed,
                        cache_path=Path(opts.out_dir) / "cache" / f"latents-{latent_cache}.pt",
                        progress=progress, workers=opts.workers)


def caption_keep(n: int, prob: float) -> torch.Tensor:
    """Which of ``n`` captions survive dropout with probability ``prob`` (global RNG)."""
    return torch.rand(n) >= prob


def drop_captions(captions: Sequence[str], prob: float) -> list[str]:
    """Empty a caption with probability ``prob`` (global RNG), for classifier-free guidance."""
    keep = caption_keep(len(captions), prob)
    return [c if k else "" for c, k in zip(captions, keep.tolist(), strict=True)]


def train_unet(opts: StageOptions, loop: LoopConfig, *, batch_size: int = 32,
               cond_dropout: float = 0.1, snr_gamma: float | None = 5.0,
               latent_cache: int = 0) -> tuple[UNet2DConditionModel, LoopResult]:
    """Train the UNet on frozen VAE latents and frozen text states (ε-prediction,
    SD 1.5's noise schedule, caption dropout for CFG); saves the EMA weights if any."""
    setup_device(opts.device)
    seed_everything(opts.seed)
    vae, text_encoder = load_vae(opts), load_text_encoder(opts)
    encoder = CaptionEncoder(load_clip_tokenizer(), text_encoder)
    unet = build_unet(opts.configs).to(opts.device)
    scheduler = build_noise_scheduler()
    dataset = opts.dataset()
    source = latent_source(opts, vae, dataset, latent_cache, loop.progress)

    def loss_fn(step: int) -> torch.Tensor:
        batch = source.batch(step, batch_size, opts.device)
        with torch.no_grad():
            context = encoder.dropped(batch.input_ids, cond_dropout)
        noise, timesteps, noisy = add_training_noise(batch.latents, scheduler)
        pred = unet(noisy, timesteps, context).sample
        return diffusion_loss(pred, noise, timesteps, scheduler, snr_gamma)

    result, ema = train_loop("unet", loop, {"unet": unet}, list(unet.parameters()), loss_fn,
                             opts.checkpoints("unet"))
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet.save_pretrained(opts.final("unet"), safe_serialization=True)
    write_log(opts, "unet", result, {"batch_size": batch_size, "latent_cache": latent_cache,
                                      "ema": ema is not None})
    return unet, result


# --- CLI ----------------------------------------------------------------------------------

STAGE_DEFAULTS: dict[str, dict[str, float | int]] = {
    # Sized for the ~90 min budget on the 2-core CPU (training/README.md, "Budget").
    "vae": {"steps": 6000, "batch_size": 16, "lr": 2e-3, "warmup": 200},
    "text": {"steps": 1500, "batch_size": 128, "lr": 1e-3, "warmup": 100},
    "unet": {"steps": 8000, "batch_size": 32, "lr": 1e-3, "warmup": 200},
}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="run folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default)")
    parser.add_argument("--steps", type=int, help="total steps (a resumed run continues)")
    parser.add_argument("--stop-at", type=int,
                        help="stop after this step; the LR schedule still spans --steps")
    parser.add_argument("--max-seconds", type=float,
                        help="wall-clock budget: stop, checkpointed, after the step that "
                             "crosses it (the LR schedule still spans --steps)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--workers", type=int, default=0,
                        help="unet, controlnet: processes building batches ahead (GPU: ~12)")
    parser.add_argument("--no-progress", action="store_true")


def add_timesteps_arg(parser: argparse.ArgumentParser, default: str = "cubic") -> None:
    """``--timesteps``, for the stages that train on top of a frozen UNet."""
    parser.add_argument("--timesteps", choices=TIMESTEP_SAMPLING, default=default,
                        help="training timestep distribution (cubic: T2I-Adapter's)")


def loop_config(args: argparse.Namespace, defaults: dict[str, float | int],
                ema_decay: float | None = None) -> LoopConfig:
    return LoopConfig(steps=int(args.steps or defaults["steps"]),
                      lr=float(args.lr or defaults["lr"]),
                      warmup_steps=int(args.warmup if args.warmup is not None
                                       else defaults["warmup"]),
                      save_every=args.save_every, ema_decay=ema_decay,
                      progress=not args.no_progress, stop_at=getattr(args, "stop_at", None),
                      max_seconds=getattr(args, "max_seconds", None))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("vae", "text", "unet", "export", "ship"))
    add_common_args(parser)
    parser.add_argument("--crop", type=int, default=32, help="vae: training crop size")
    parser.add_argument("--latent-cache", type=int, default=32768,
                        help="unet: encode this many samples once (0: encode every batch)")
    parser.add_argument("--ema", type=float, default=0.999, help="unet: EMA decay (0: none)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = StageOptions(out_dir=args.out, seed=args.seed, device=args.device,
                        workers=args.workers)
    if args.stage == "export":
        from training.export import export_model

        for kind, path in export_model(args.out).items():
            print(f"{kind}: {path}")
        return
    if args.stage == "ship":
        from training.export import ship_lora, ship_weights

        shipped = [*ship_weights(Path(args.out) / "export"), ship_lora(args.out)]
        for path in filter(None, shipped):
            print(f"shipped (float16): {path} ({path.stat().st_size / 2**20:.2f} MiB)")
        return
    defaults = STAGE_DEFAULTS[args.stage]
    batch = int(args.batch_size or defaults["batch_size"])
    if args.stage == "vae":
        _, result = train_vae(opts, loop_config(args, defaults), batch_size=batch, crop=args.crop)
    elif args.stage == "text":
        _, result = train_text_encoder(opts, loop_config(args, defaults), batch_size=batch)
    else:
        loop = loop_config(args, defaults, ema_decay=args.ema or None)
        _, result = train_unet(opts, loop, batch_size=batch, latent_cache=args.latent_cache)
    folder = opts.final({"text": "text_encoder"}.get(args.stage, args.stage))
    print(f"{args.stage}: {len(result.losses)} steps in {result.seconds:.0f} s "
          f"({result.seconds_per_step:.3f} s/step), final to {folder}")


if __name__ == "__main__":
    main()
