"""Batches of VAE latents for the UNet and ControlNet stages, optionally from a cache.

On a CPU the frozen VAE encoder costs about half a UNet training step, so the
stages can encode the first ``n`` dataset samples once (posterior mean and std,
float16) and draw a fresh posterior sample from them at every use; without a
cache every batch is rendered and encoded on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from training.shapes import ShapesDataset, collate


@dataclass
class LatentBatch:
    """Latents already multiplied by the VAE scaling factor, with their sample indices."""

    latents: torch.Tensor
    indices: list[int]
    variant: int  # the caption wording to use (the epoch when cached)


@torch.no_grad()
def encode_posterior(vae: AutoencoderKL, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean, dist.std


class LatentSource:
    """Latent batches by training step: cached (``cache_size`` > 0) or rendered on the fly."""

    def __init__(self, vae: AutoencoderKL, dataset: ShapesDataset, *, cache_size: int = 0,
                 cache_path: Path | None = None, seed: int = 0, encode_batch: int = 64,
                 progress: bool = True):
        self.vae, self.dataset, self.seed = vae, dataset, seed
        self.scaling = float(vae.config.scaling_factor)
        self.cache_size = cache_size
        self.mean = self.std = None
        if cache_size > 0:
            self.mean, self.std = self._load_or_build(cache_path, encode_batch, progress)

    def _load_or_build(self, path: Path | None, encode_batch: int, progress: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        # A retrained VAE must not reuse latents of the old one.
        vae_key = float(sum(p.detach().double().sum() for p in self.vae.parameters()))
        key = {"size": self.cache_size, "seed": self.dataset.seed,
               "image_size": self.dataset.size, "vae": vae_key}
        if path is not None and path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("key") == key:
                return state["mean"], state["std"]
        means, stds = [], []
        for start in tqdm(range(0, self.cache_size, encode_batch), desc="encode latents",
                          disable=not progress):
            idx = range(start, min(start + encode_batch, self.cache_size))
            pixels = collate([self.dataset[i] for i in idx])["pixel_values"]
            mean, std = encode_posterior(self.vae, pixels)
            means.append(mean.half().cpu())
            stds.append(std.half().cpu())
        mean, std = torch.cat(means), torch.cat(stds)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "mean": mean, "std": std}, path)
        return mean, std

    def indices(self, step: int, batch_size: int) -> tuple[list[int], int]:
        """Sample indices of ``step`` and their caption variant (the epoch, when cached)."""
        if self.cache_size <= 0:
            return [step * batch_size + j for j in range(batch_size)], 0
        first = step * batch_size
        epoch = first // self.cache_size
        out: list[int] = []
        while len(out) < batch_size:
            e, offset = divmod(first + len(out), self.cache_size)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            perm = torch.randperm(self.cache_size, generator=gen)
            take = min(batch_size - len(out), self.cache_size - offset)
            out.extend(int(i) for i in perm[offset:offset + take])
        return out, epoch

    def batch(self, step: int, batch_size: int, device: torch.device | str) -> LatentBatch:
        """Scaled latents of ``step``; the posterior noise comes from the global RNG."""
        idx, variant = self.indices(step, batch_size)
        if self.mean is not None and self.std is not None:
            mean = self.mean[idx].to(device, torch.float32)
            std = self.std[idx].to(device, torch.float32)
        else:
            pixels = collate([self.dataset[i] for i in idx])["pixel_values"]
            mean, std = encode_posterior(self.vae, pixels.to(device))
        noise = torch.randn(mean.shape).to(device)
        return LatentBatch((mean + std * noise) * self.scaling, idx, variant)
