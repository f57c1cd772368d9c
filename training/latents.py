"""Batches of VAE latents for the UNet and ControlNet stages, optionally from a cache.

On a CPU the frozen VAE encoder costs about half a UNet training step, so the
stages can encode the first ``n`` dataset samples once (posterior mean and std,
float16) and draw a fresh posterior sample from them at every use; without a
cache every batch is rendered and encoded on the fly.

Everything a step needs besides the GPU work (its sample indices, captions and their
token ids, control masks, and without a cache its pixels) is a pure function of the
step, so
``workers`` > 0 prepares it in DataLoader worker processes ahead of time: on a GPU
captions and token ids (~0.4 ms each) would otherwise cost more than the training step.
The batches are identical with any number of workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import CLIPTokenizer

from training.shapes import ShapesDataset, collate, image_to_tensor


@dataclass
class LatentBatch:
    """Latents already multiplied by the VAE scaling factor, with their sample indices,
    the token ids ``[B, 77]`` of their training captions and (when asked for) the union
    shape masks ``[B, H, W]``."""

    latents: torch.Tensor
    indices: list[int]
    input_ids: torch.Tensor
    masks: np.ndarray | torch.Tensor | None = None  # a tensor when built by a worker


@torch.no_grad()
def encode_posterior(vae: AutoencoderKL, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean, dist.std


def token_ids(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """``[B, model_max_length]`` ids, padded as the pipelines' prompt encoding pads."""
    return tokenizer(captions, padding="max_length", truncation=True,
                     max_length=tokenizer.model_max_length, return_tensors="pt").input_ids


def render_batch(dataset: ShapesDataset, indices: list[int]) -> dict[str, object]:
    return collate([dataset[i] for i in indices])


def cache_indices(step: int, batch_size: int, cache_size: int, seed: int
                  ) -> tuple[list[int], int]:
    """Sample indices of ``step`` and their caption variant: consecutive samples without
    a cache, else a fresh permutation of the cache per epoch (the variant is the epoch)."""
    if cache_size <= 0:
        return [step * batch_size + j for j in range(batch_size)], 0
    first = step * batch_size
    epoch = first // cache_size
    out: list[int] = []
    while len(out) < batch_size:
        e, offset = divmod(first + len(out), cache_size)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + e)
        perm = torch.randperm(cache_size, generator=gen)
        take = min(batch_size - len(out), cache_size - offset)
        out.extend(int(i) for i in perm[offset:offset + take])
    return out, epoch


class StepData(torch.utils.data.Dataset):
    """Item ``step``: what training step ``step`` needs from the CPU (no tensors on a GPU,
    so DataLoader workers can build it)."""

    def __init__(self, dataset: ShapesDataset, tokenizer: CLIPTokenizer, batch_size: int,
                 cache_size: int, seed: int, *, masks: bool = False):
        self.dataset, self.tokenizer, self.batch_size = dataset, tokenizer, batch_size
        self.cache_size, self.seed, self.masks = cache_size, seed, masks

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> dict[str, object]:
        idx, variant = cache_indices(step, self.batch_size, self.cache_size, self.seed)
        captions = [self.dataset.caption(i, variant) for i in idx]
        item: dict[str, object] = {"indices": idx, "variant": variant, "captions": captions,
                                   "input_ids": token_ids(self.tokenizer, captions)}
        samples = ([self.dataset.sample(i) for i in idx]
                   if self.masks or self.cache_size <= 0 else [])
        if self.masks:
            item["masks"] = np.stack([s.mask for s in samples])
        if self.cache_size <= 0:
            item["pixels"] = torch.stack([image_to_tensor(s.image) for s in samples])
        return item


class StepPrefetcher:
    """``data[step]`` for consecutive steps, built ``workers`` processes ahead."""

    def __init__(self, data: StepData, workers: int = 0):
        self.data, self.workers = data, workers
        self._iter: Iterator[dict[str, object]] | None = None
        self._next = -1

    def __call__(self, step: int) -> dict[str, object]:
        if self.workers <= 0:
            return self.data[step]
        if self._iter is None or step != self._next:
            loader = DataLoader(self.data, batch_size=None, num_workers=self.workers,
                                sampler=itertools.count(step), prefetch_factor=4)
            self._iter = iter(loader)
        self._next = step + 1
        return next(self._iter)


class LatentSource:
    """Latent batches by training step: cached (``cache_size`` > 0) or rendered on the fly."""

    def __init__(self, vae: AutoencoderKL, dataset: ShapesDataset, tokenizer: CLIPTokenizer, *,
                 cache_size: int = 0, cache_path: Path | None = None, seed: int = 0,
                 encode_batch: int = 64, progress: bool = True, workers: int = 0):
        self.vae, self.dataset, self.tokenizer, self.seed = vae, dataset, tokenizer, seed
        self.scaling = float(vae.config.scaling_factor)
        self.cache_size, self.workers = cache_size, workers
        self.mean = self.std = None
        self._cache_device: torch.device | str = "cpu"
        self._steps: dict[tuple[int, bool], StepPrefetcher] = {}
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
        loader = DataLoader(range(self.cache_size), batch_size=encode_batch,
                            num_workers=self.workers,
                            collate_fn=partial(render_batch, self.dataset))
        for batch in tqdm(loader, desc="encode latents", disable=not progress):
            mean, std = encode_posterior(self.vae, batch["pixel_values"])
            means.append(mean.half().cpu())
            stds.append(std.half().cpu())
        mean, std = torch.cat(means), torch.cat(stds)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "mean": mean, "std": std}, path)
        return mean, std

    def batch(self, step: int, batch_size: int, device: torch.device | str, *,
              masks: bool = False) -> LatentBatch:
        """Scaled latents of ``step``; the posterior noise comes from the global RNG."""
        key = (batch_size, masks)
        if key not in self._steps:
            self._steps[key] = StepPrefetcher(
                StepData(self.dataset, self.tokenizer, batch_size, self.cache_size, self.seed,
                         masks=masks),
                self.workers)
        item = self._steps[key](step)
        idx: list[int] = item["indices"]  # type: ignore[assignment]
        if self.mean is not None and self.std is not None:
            if self._cache_device != device:
                # Once: the whole cache on the training device, so a batch is one gather.
                self.mean, self.std = self.mean.to(device), self.std.to(device)
                self._cache_device = device
            where = torch.tensor(idx, device=self.mean.device)
            mean, std = self.mean[where].float(), self.std[where].float()
        else:
            mean, std = encode_posterior(self.vae, item["pixels"].to(device))  # type: ignore[union-attr]
        noise = torch.randn(mean.shape).to(device)
        return LatentBatch((mean + std * noise) * self.scaling, idx,
                           item["input_ids"], item.get("masks"))  # type: ignore[arg-type]
