"""Regressions found by fuzzing the older weight-free node modules (masks, upscale,
inpaint's pixel nodes, ...) with extreme but in-bounds inputs: each must give a result or
a clear ValueError, never a raw torch error, wasted work or an allocation that can't fit."""

from __future__ import annotations

import pytest
import torch

from nodes.diffusion import vae_codec
from nodes.diffusion.handles import Latent
from nodes.inpaint import ImageCompositeMasked
from nodes.masks import GrowMask
from nodes.upscale import LatentComposite, LatentUpscale, LatentUpscaleBy


def out(cls, **inputs):
    return cls(**inputs).execute(None)[0]


@pytest.mark.parametrize("tapered", [False, True])
def test_grow_mask_by_the_maximum_stops_once_the_mask_is_settled(monkeypatch, tapered):
    import torch.nn.functional as F

    calls = []
    real_pad = F.pad

    def counting_pad(*args, **kwargs):
        calls.append(1)
        return real_pad(*args, **kwargs)

    monkeypatch.setattr(F, "pad", counting_pad)
    mask = torch.zeros(1, 6, 5)
    mask[0, 0, 0] = 1.0
    grown = out(GrowMask, mask=mask, expand=16384, tapered_corners=tapered)
    assert torch.equal(grown, torch.ones(1, 6, 5))
    assert len(calls) <= 6 + 5
    shrunk = out(GrowMask, mask=mask, expand=-16384, tapered_corners=tapered)
    assert torch.equal(shrunk, torch.zeros(1, 6, 5))


@pytest.mark.parametrize(("to", "src", "x", "y"), [
    ((1, 4, 8, 8), (1, 4, 1, 1), 8, 8),
    ((1, 4, 1, 9), (1, 4, 8, 8), 8, 0),
    ((2, 4, 8, 8), (2, 4, 3, 5), 8, 0),
])
def test_latent_composite_feather_wider_than_the_pasted_latent(to, src, x, y):
    result = out(LatentComposite, samples_to=Latent(torch.randn(*to)),
                 samples_from=Latent(torch.randn(*src)), x=x, y=y, feather=16384)
    assert result.samples.shape == to and bool(result.samples.isfinite().all())


def test_latent_composite_feather_still_ramps_inner_edges():
    result = out(LatentComposite, samples_to=Latent(torch.zeros(1, 1, 8, 8)),
                 samples_from=Latent(torch.ones(1, 1, 4, 4)), x=16, y=16, feather=16)
    # feather 2 latent pixels: top-left edges ramp 1/2, 1; bottom-right ones too
    assert result.samples[0, 0, 2, 2:6].tolist() == [0.25, 0.5, 0.5, 0.25]
    assert result.samples[0, 0, 3, 3].item() == 1.0


@pytest.mark.parametrize("cls", [LatentUpscale, LatentUpscaleBy])
@pytest.mark.parametrize("shape", [(4, 8, 8), (1, 4, 0, 5)])
def test_latent_upscale_of_a_malformed_latent(cls, shape):
    inputs = {"width": 512, "height": 0} if cls is LatentUpscale else {"scale_by": 1.5}
    with pytest.raises(ValueError, match=r"latent \[B, C, h, w\]"):
        out(cls, samples=Latent(torch.zeros(*shape)), upscale_method="bislerp", **inputs)


def test_latent_composite_of_a_malformed_latent():
    with pytest.raises(ValueError, match="samples_from must be a latent"):
        out(LatentComposite, samples_to=Latent(torch.zeros(1, 4, 8, 8)),
            samples_from=Latent(torch.zeros(4, 8, 8)))


def test_bislerp_upscale_counts_its_temporaries(monkeypatch):
    # bislerp peaks near 11x its result: 2048x2048 latent pixels of 4 channels is 64 MiB
    # out, about 700 MiB at the peak; refuse it with 256 MiB free instead of trying.
    monkeypatch.setattr(vae_codec, "available_bytes", lambda device: 256 << 20)
    samples = Latent(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="free on the CPU"):
        out(LatentUpscale, samples=samples, upscale_method="bislerp", width=16384,
            height=16384)
    assert out(LatentUpscale, samples=samples, upscale_method="bilinear", width=16384,
               height=16384).samples.shape == (1, 4, 2048, 2048)


@pytest.mark.parametrize("resize", [False, True])
@pytest.mark.parametrize(("dest", "source"), [((1, 0, 4, 3), (3, 8, 8, 3)),
                                              ((1, 1, 9, 3), (1, 0, 4, 3))])
def test_composite_masked_with_an_empty_image(dest, source, resize):
    with pytest.raises(ValueError, match="is empty"):
        out(ImageCompositeMasked, destination=torch.rand(*dest), source=torch.rand(*source),
            x=0, y=0, resize_source=resize, mask=torch.rand(1, 4, 4))
