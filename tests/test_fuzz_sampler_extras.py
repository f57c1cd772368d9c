"""GITSScheduler, SamplerLCMUpscale and SamplerDPMAdaptative with extreme but in-bounds
inputs: each gives a sound result or a clear ValueError, never a raw torch error or a
run that never ends."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nodes.diffusion.dpm_adaptive import AdaptiveOptions, dpm_adaptive
from nodes.diffusion.gits import noise_levels
from nodes.diffusion.lcm_upscale import UpscaleOptions, check_sizes
from nodes.sampler_extras import GITSScheduler, SamplerDPMAdaptative, SamplerLCMUpscale


@pytest.mark.parametrize("coeff", [float(k) for k in noise_levels()])
@pytest.mark.parametrize("steps", [2, 19, 20, 21, 1000])
@pytest.mark.parametrize("denoise", [0.0, 0.01, 0.5, 1.0])
def test_gits_lists_are_sound(coeff, steps, denoise):
    schedule = GITSScheduler(coeff=coeff, steps=steps, denoise=denoise).execute(None)[0]
    kept = steps if denoise == 1.0 else round(steps * denoise)
    assert len(schedule) == kept
    levels = schedule.sigma_list
    assert len(levels) == steps + 1 and levels[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(levels))
    assert levels[0] == pytest.approx(14.61464119) and math.isfinite(sum(levels))


def gaussian(shape=(1, 4, 3, 3)):
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(shape, generator=gen)
    x = torch.randn(shape, generator=gen) * 14.6
    return x, lambda x, sigma: mu + (x - mu) / (1 + sigma ** 2)


@pytest.mark.parametrize("settings", [
    {"h_init": 100.0}, {"h_init": 0.001}, {"accept_safety": 0.0}, {"pcoeff": 100.0},
    {"dcoeff": 100.0}, {"icoeff": 0.0}, {"icoeff": 100.0}, {"rtol": 100.0, "atol": 100.0},
    {"rtol": 0.0}, {"atol": 0.0}, {"eta": 100.0}, {"eta": 1.0, "s_noise": 100.0},
    {"accept_safety": 100.0}, {"rtol": 1e-9, "atol": 1e-9}, {"pcoeff": 100.0, "dcoeff": 100.0},
    {"order": 2, "dcoeff": 100.0, "accept_safety": 0.0}])
def test_dpm_adaptive_ends_or_refuses(settings):
    x, denoise = gaussian()
    gen = torch.Generator().manual_seed(1)

    def noise(like):
        return torch.randn(like.shape, generator=gen)

    try:
        out, solver = dpm_adaptive(x, 14.6, 0.03, denoise, AdaptiveOptions(**settings),
                                   noise=noise, max_calls=300)
    except ValueError as exc:
        assert any(part in str(exc) for part in ("model calls", "controller broke down",
                                                  "not finite"))
        return
    assert solver.calls <= 300 and out.shape == x.shape


@pytest.mark.parametrize(("inputs", "message"), [
    ({"h_init": 0.0}, "h_init"), ({"rtol": 0.0, "atol": 0.0}, "both 0")])
def test_dpm_adaptive_node_refuses_settings_that_never_move(inputs, message):
    with pytest.raises(ValueError, match=message):
        SamplerDPMAdaptative(**inputs).execute(None)


def test_lcm_upscale_extremes_are_refused_before_sampling():
    from diffusers import UNet2DConditionModel

    from nodes.diffusion.tiny import UNET_CONFIG

    unet = UNet2DConditionModel(**UNET_CONFIG)
    latent = torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match="each side must be 1 to 2048"):
        check_sizes(unet, latent, UpscaleOptions(0.1).sizes(4, 4, 2), 2)
    with pytest.raises(ValueError, match="each side must be 1 to 2048"):
        check_sizes(unet, torch.zeros(1, 4, 128, 128), UpscaleOptions(20.0).sizes(128, 128, 2),
                    2)
    options = SamplerLCMUpscale(scale_ratio=20.0, scale_steps=1000).execute(None)[0].options
    assert dict(options)["scale_steps"] == 1000
    assert len(UpscaleOptions(20.0, 1000).sizes(4, 4, 3)) == 3
