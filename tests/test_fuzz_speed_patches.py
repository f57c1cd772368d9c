"""EasyCache, LazyCache, TorchCompileModel and ModelComputeDtype with extreme but
in-bounds inputs: each gives a result (the plain one where nothing can be cached) or a
clear ValueError, never a raw torch error."""

from __future__ import annotations

import pytest
import torch

from nodes.diffusion.handles import Latent
from nodes.diffusion.sampling import SamplingParams, sample
from nodes.diffusion.schedulers import make_scheduler
from nodes.diffusion.step_cache import EasyCache, LazyCache
from tests.test_speed_patches import Calls, compute_dtype, model, prompts  # noqa: F401

CACHES = [EasyCache, LazyCache]


def run(model, *exts, shape=(1, 4, 16, 24), steps=6, cfg=5.0, sampler="euler"):  # noqa: F811
    for ext in exts:
        model = model.with_extension(ext)
    pos, neg = prompts()
    scheduler = make_scheduler(sampler, "normal", model.scheduler_config)
    return sample(model, scheduler, pos, neg, Latent(torch.zeros(shape)),
                  SamplingParams(seed=2, steps=steps, cfg=cfg))


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize(("start", "end"), [(1.0, 1.0), (0.0, 0.0), (0.9, 0.2)])
def test_an_empty_window_is_the_plain_run(model, cache, start, end):  # noqa: F811
    calls = Calls()
    assert torch.equal(run(model, cache(3.0, start, end), calls), run(model))
    assert len(calls.steps) == 6


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("shape", [(2, 4, 16, 24), (1, 4, 8, 8), (1, 4, 24, 8)])
def test_batches_and_latents_smaller_than_the_subsample_step(model, cache, shape):  # noqa: F811
    calls = Calls()
    out = run(model, cache(3.0, 0.0, 1.0), calls, shape=shape, steps=8)
    assert out.shape == shape and torch.isfinite(out).all()
    assert len(calls.steps) < 8


@pytest.mark.parametrize("cache", CACHES)
def test_without_cfg_and_with_one_step(model, cache):  # noqa: F811
    out = run(model, cache(3.0, 0.0, 1.0), cfg=1.0, steps=8)
    assert torch.isfinite(out).all()
    assert torch.equal(run(model, cache(3.0, 0.0, 1.0), steps=1), run(model, steps=1))


@pytest.mark.parametrize("cache", CACHES)
def test_both_caches_and_a_second_order_sampler(model, cache):  # noqa: F811
    out = run(model, cache(0.5, 0.0, 1.0), EasyCache(0.5) if cache is LazyCache
              else LazyCache(0.5), sampler="heun", steps=6)
    assert torch.isfinite(out).all()


def test_compute_dtype_of_a_half_model_needs_no_copy(model):  # noqa: F811
    half = compute_dtype(model, "bf16")
    assert compute_dtype(half, "bf16") is half
    back = compute_dtype(half, "fp32")
    assert back.unet.dtype == torch.float32
    assert torch.isfinite(run(back, steps=2)).all()
