"""Fine-tune the shapes-world UNet into an Instruct-Pix2Pix model (``steerflow-shapes-ip2p``).

    python -m training.train_instruct_pix2pix --out output/training --threads 2 \\
        --export output/training/export

Brooks et al. 2023's recipe on shapes-world triplets (``training.ip2p_data``: recolour,
change shape, move one cell, change the background; everything else kept exactly):

- the UNet starts from a trained shapes UNet with ``conv_in`` widened to 8 input
  channels, the 4 new ones zero (the paper's initialisation), so step 0 is the
  text-to-image model; the VAE and text encoder stay frozen;
- its extra input is the *before* image's latents: the VAE posterior's mode, not scaled,
  exactly what ``StableDiffusionInstructPix2PixPipeline`` and the engine feed at sampling;
  the target is the *after* image's latents (a fresh posterior sample, scaled);
- conditioning dropout for the three-way guidance: 5% of the rows lose the instruction
  (empty prompt), 5% the image (zero latents) and 5% both;
- ε-prediction, uniform timesteps, Min-SNR-γ 5, EMA 0.999, AdamW + cosine (the UNet
  stage's settings).

The base is a diffusers pipeline folder or a training run with ``unet/ vae/
text_encoder/`` (``--base``; default the installed steerflow-shapes, i.e. the shipped
weights). ``--latent-cache N`` encodes N triplets once (before mode, after posterior,
float16) so a step costs the UNet alone. The stage writes ``<out>/instruct_pix2pix/``;
``--export DIR`` then writes ``DIR/checkpoints/steerflow-shapes-ip2p{/,.safetensors}``
with the base's VAE and text encoder; ``training.export`` ships the UNet alone.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from functools import lru_cache, partial
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from nodes.diffusion.builtin_models import SHAPES_IP2P_NAME
from nodes.diffusion.instruct_pix2pix import IP2P_UNET_CHANNELS
from nodes.diffusion.tokenizer import load_clip_tokenizer
from training.ip2p_data import EditPlan, instruction, make_triplet, plan_edit
from training.latents import cache_indices
from training.loop import LoopConfig, LoopResult, seed_everything, train_loop
from training.models import build_noise_scheduler
from training.shapes import image_to_tensor
from training.train import (
    CaptionEncoder,
    StageOptions,
    add_common_args,
    add_training_noise,
    diffusion_loss,
    loop_config,
    setup_device,
    write_log,
)

STAGE = "instruct_pix2pix"
IP2P_NAME = SHAPES_IP2P_NAME
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE = ROOT / "models" / "checkpoints" / "steerflow-shapes"
DROPOUT = 0.05  # each of: text only, image only, both (the paper's)
CACHE_VERSION = 1  # bump when the triplets change
# Only smoke runs so far (150 steps, batch 32, 1 thread on a shared CPU: 0.66 s/step; lr
# 1e-3 raised the loss above its start, 3e-4 and 1e-4 did not). On 2 idle threads a step
# should cost about the UNet stage's 0.39 s (the same UNet): 7000 steps ≈ 46-50 min,
# plus ~4 min to cache 16384 triplets. Not yet trained to the end: tune with the eval.
DEFAULTS: dict[str, float | int] = {"steps": 7000, "batch_size": 32, "lr": 3e-4, "warmup": 200}


def resolve_base(base: Path | None, out_dir: Path) -> Path:
    """``base``, else the installed steerflow-shapes, else the shipped one installed under
    ``<out>/base_models``."""
    if base is not None:
        return Path(base)
    if (DEFAULT_BASE / "model_index.json").is_file():
        return DEFAULT_BASE
    from nodes.diffusion.shapes_model import ensure_shapes_model

    folder = ensure_shapes_model(Path(out_dir) / "base_models")
    if folder is None:
        raise FileNotFoundError("no steerflow-shapes weights: pass --base (a pipeline folder "
                                "or a training run with unet/, vae/ and text_encoder/)")
    return folder


def load_base(base: Path, device: str) -> tuple[AutoencoderKL, CLIPTextModel,
                                                 UNet2DConditionModel]:
    """The base's VAE, text encoder (frozen, eval) and UNet, in float32."""
    common = {"local_files_only": True}
    vae = AutoencoderKL.from_pretrained(base / "vae", torch_dtype=torch.float32, **common)
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", dtype=torch.float32,
                                                 **common)
    unet = UNet2DConditionModel.from_pretrained(base / "unet", torch_dtype=torch.float32,
                                                **common)
    for module in (vae, text_encoder):
        module.to(device).eval().requires_grad_(False)
    return vae, text_encoder, unet.to(device)


def widen_conv_in(unet: UNet2DConditionModel, channels: int = IP2P_UNET_CHANNELS
                  ) -> UNet2DConditionModel:
    """A copy of ``unet`` whose ``conv_in`` takes ``channels`` inputs, the new ones
    zero-initialised: it computes exactly what ``unet`` does until they are trained."""
    old = unet.config.in_channels
    # without diffusers' bookkeeping keys: "_use_default_values" would undo in_channels
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    wide = UNet2DConditionModel.from_config({**config, "in_channels": channels})
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat(
        [weight, weight.new_zeros(weight.shape[0], channels - old, *weight.shape[2:])], dim=1)
    wide.load_state_dict(state)
    return wide.to(unet.device)


@lru_cache(maxsize=1 << 18)
def _plan(seed: int, index: int) -> EditPlan:
    plan = plan_edit(seed, index)  # a drawn kind always applies
    assert plan is not None
    return plan


def instructions(seed: int, indices: Sequence[int], variant: int) -> list[str]:
    """The instructions of triplets ``indices``, worded by ``variant`` (the epoch)."""
    return [instruction(_plan(seed, i), variant) for i in indices]


def _render(seed: int, size: int, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    triplets = [make_triplet(seed, i, size) for i in indices]
    return {"before": torch.stack([image_to_tensor(t.before.image) for t in triplets]),
            "after": torch.stack([image_to_tensor(t.after) for t in triplets])}


class TripletLatents:
    """Before-image latents (mode, unscaled) and after-image posteriors by triplet index:
    from a one-off cache of the first ``cache_size`` triplets, or encoded per batch."""

    def __init__(self, vae: AutoencoderKL, seed: int, size: int, cache_size: int = 0,
                 cache_path: Path | None = None, workers: int = 0, progress: bool = True):
        self.vae, self.seed, self.size, self.cache_size = vae, seed, size, cache_size
        self.workers, self.progress = workers, progress
        self.scaling = float(vae.config.scaling_factor)
        self.cache: dict[str, torch.Tensor] | None = None
        if cache_size > 0:
            self.cache = self._load_or_build(cache_path)

    @torch.no_grad()
    def _encode(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dev, dtype = self.vae.device, self.vae.dtype
        before = self.vae.encode(batch["before"].to(dev, dtype)).latent_dist.mode()
        after = self.vae.encode(batch["after"].to(dev, dtype)).latent_dist
        return {"before": before, "after_mean": after.mean, "after_std": after.std}

    def _load_or_build(self, path: Path | None) -> dict[str, torch.Tensor]:
        vae_key = float(sum(p.detach().double().sum() for p in self.vae.parameters()))
        key = {"size": self.cache_size, "seed": self.seed, "image_size": self.size,
               "vae": vae_key, "version": CACHE_VERSION}
        if path is not None and path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("key") == key:
                return state["latents"]
        parts: dict[str, list[torch.Tensor]] = {}
        loader = DataLoader(range(self.cache_size), batch_size=64, num_workers=self.workers,
                            collate_fn=partial(_render, self.seed, self.size))
        for batch in tqdm(loader, desc="encode triplets", disable=not self.progress):
            for name, value in self._encode(batch).items():
                parts.setdefault(name, []).append(value.half().cpu())
        latents = {name: torch.cat(values) for name, values in parts.items()}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "latents": latents}, path)
        return latents

    def batch(self, step: int, batch_size: int, device: str
              ) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
        """(before latents, scaled after latents, indices, wording variant) of ``step``; the
        after posterior's noise comes from the global RNG."""
        indices, variant = cache_indices(step, batch_size, self.cache_size, self.seed)
        if self.cache is not None:
            where = torch.tensor(indices)
            got = {k: v[where].to(device).float() for k, v in self.cache.items()}
        else:
            got = self._encode(_render(self.seed, self.size, indices))
        noise = torch.randn(got["after_mean"].shape).to(device)
        after = (got["after_mean"] + got["after_std"] * noise) * self.scaling
        return got["before"], after, indices, variant


def dropout_masks(n: int, p: float = DROPOUT) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop text, drop image) per row: p of the rows lose the text, p the image, p both."""
    u = torch.rand(n)
    return (u < p) | ((u >= 2 * p) & (u < 3 * p)), (u >= p) & (u < 3 * p)


def train_instruct_pix2pix(opts: StageOptions, loop: LoopConfig, *, base: Path | None = None,
                           batch_size: int = 32, snr_gamma: float | None = 5.0,
                           latent_cache: int = 0, dropout: float = DROPOUT,
                           init: Path | None = None
                           ) -> tuple[UNet2DConditionModel, LoopResult]:
    """Train; saves the (EMA) UNet to ``<out>/instruct_pix2pix``. ``init``: an
    Instruct-Pix2Pix UNet folder (e.g. the installed ``steerflow-shapes-ip2p/unet``) to go
    on from instead of the widened base UNet."""
    setup_device(opts.device)
    seed_everything(opts.seed)
    base = resolve_base(base, opts.out_dir)
    vae, text_encoder, base_unet = load_base(base, opts.device)
    unet = widen_conv_in(base_unet).train()
    del base_unet
    if init is not None:
        start = UNet2DConditionModel.from_pretrained(init, torch_dtype=torch.float32,
                                                     local_files_only=True)
        unet.load_state_dict(start.state_dict(), strict=True)
        del start
    encoder = CaptionEncoder(load_clip_tokenizer(), text_encoder)
    scheduler = build_noise_scheduler()
    size = opts.configs.image_size
    cache_path = Path(opts.out_dir) / "cache" / f"ip2p-latents-{latent_cache}.pt"
    source = TripletLatents(vae, opts.seed, size, latent_cache, cache_path, opts.workers,
                            loop.progress)
    empty_ids = encoder.ids([""])

    def loss_fn(step: int) -> torch.Tensor:
        before, after, indices, variant = source.batch(step, batch_size, opts.device)
        drop_text, drop_image = (m.to(opts.device) for m in dropout_masks(len(indices),
                                                                          dropout))
        with torch.no_grad():
            ids = encoder.ids(instructions(opts.seed, indices, variant))
            context = text_encoder(torch.where(drop_text[:, None], empty_ids, ids))[0]
        image = torch.where(drop_image[:, None, None, None], torch.zeros_like(before), before)
        noise, t, noisy = add_training_noise(after, scheduler)
        pred = unet(torch.cat([noisy, image], dim=1), t, context).sample
        return diffusion_loss(pred, noise, t, scheduler, snr_gamma)

    result, ema = train_loop(STAGE, loop, {"unet": unet}, list(unet.parameters()), loss_fn,
                             opts.checkpoints(STAGE))
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet.save_pretrained(opts.final(STAGE), safe_serialization=True)
    (opts.final(STAGE) / "base.json").write_text(json.dumps({"base": str(base)}))
    write_log(opts, STAGE, result, {"batch_size": batch_size, "latent_cache": latent_cache,
                                    "init": str(init) if init else None,
                                    "dropout": dropout, "base": str(base),
                                    "ema": ema is not None})
    return unet, result


def trained_base(out_dir: Path) -> Path:
    """The base the stage in ``out_dir`` was trained from (its VAE and text encoder)."""
    return Path(json.loads((Path(out_dir) / STAGE / "base.json").read_text())["base"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train_instruct_pix2pix",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--base", type=Path, help="pipeline folder or training run to start "
                                                  "from (default: the installed steerflow-shapes)")
    parser.add_argument("--latent-cache", type=int, default=16384,
                        help="encode this many triplets once (0: encode every batch)")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay (0: none)")
    parser.add_argument("--init", type=Path,
                        help="an Instruct-Pix2Pix UNet folder to go on training (e.g. "
                             "models/checkpoints/steerflow-shapes-ip2p/unet)")
    parser.add_argument("--export", type=Path,
                        help="then write steerflow-shapes-ip2p into this models folder")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = StageOptions(out_dir=args.out, seed=args.seed, device=args.device,
                        workers=args.workers)
    loop = loop_config(args, DEFAULTS, ema_decay=args.ema or None)
    _, result = train_instruct_pix2pix(
        opts, loop, base=args.base, latent_cache=args.latent_cache, init=args.init,
        batch_size=int(args.batch_size or DEFAULTS["batch_size"]))
    print(f"{STAGE}: {len(result.losses)} steps in {result.seconds:.0f} s "
          f"({result.seconds_per_step:.3f} s/step), final to {opts.final(STAGE)}")
    if args.export:
        from training.export import export_instruct_pix2pix

        for kind, path in export_instruct_pix2pix(args.out, args.export).items():
            print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
