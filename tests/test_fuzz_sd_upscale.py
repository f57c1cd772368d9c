"""SD_4XUpscale_Conditioning with extreme but in-bounds inputs: a result or a clear
ValueError, never a raw torch error."""

from __future__ import annotations

import pytest
import torch

from nodes.diffusion.handles import Conditioning
from nodes.sd_upscale import SD_4XUpscale_Conditioning

EMPTY = Conditioning(())


def run(images: torch.Tensor, scale_ratio: float = 4.0, noise_augmentation: float = 0.0):
    return SD_4XUpscale_Conditioning(images=images, positive=EMPTY, negative=EMPTY,
                                     scale_ratio=scale_ratio,
                                     noise_augmentation=noise_augmentation).execute(None)


@pytest.mark.parametrize(("shape", "ratio", "latent"), [
    ((1, 1, 1, 3), 4.0, (1, 4, 1, 1)),      # one pixel: one latent
    ((2, 5, 7, 1), 4.0, (2, 4, 5, 7)),      # grey, odd sides
    ((1, 6, 10, 4), 2.0, (1, 4, 3, 5)),     # RGBA, shrunk first
    ((1, 8, 40, 3), 0.5, (1, 4, 1, 5)),     # a thin strip
    ((1, 8, 8, 3), 10.0, (1, 4, 20, 20)),
])
def test_sizes(shape, ratio, latent):
    _, _, out = run(torch.rand(shape), ratio, 1.0)
    assert tuple(out.samples.shape) == latent


def test_one_object_rides_on_both_and_replaces_an_earlier_one():
    from nodes.diffusion.handles import CondEntry
    from nodes.diffusion.sd_upscale import X4Upscale

    cond = Conditioning((CondEntry(torch.zeros(1, 2, 4)), CondEntry(torch.ones(1, 2, 4))))
    node = SD_4XUpscale_Conditioning(images=torch.rand(1, 4, 4, 3), positive=cond,
                                     negative=cond, scale_ratio=4.0, noise_augmentation=0.1)
    positive, negative, _ = node.execute(None)
    exts = {id(e) for c in (positive, negative) for entry in c.entries
            for e in entry.options["extensions"]}
    assert len(exts) == 1
    node.positive = positive
    again, _, _ = node.execute(None)
    assert all(len([e for e in entry.options["extensions"] if isinstance(e, X4Upscale)]) == 1
               for entry in again.entries)


@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.1])
def test_too_small_output_is_refused(ratio):
    with pytest.raises(ValueError, match="scale_ratio"):
        run(torch.rand(1, 8, 8, 3), ratio)


def test_too_large_output_is_refused():
    with pytest.raises(ValueError, match="lower scale_ratio"):
        run(torch.rand(1, 1700, 2, 3), 10.0)


def test_output_over_free_memory_is_refused(monkeypatch):
    from nodes.diffusion import vae_codec

    monkeypatch.setattr(vae_codec, "available_bytes", lambda device: 1 << 20)
    with pytest.raises(ValueError, match="lower scale_ratio"):
        run(torch.rand(4, 64, 64, 3), 4.0)


@pytest.mark.parametrize("images", [torch.rand(0, 8, 8, 3), torch.rand(1, 8, 8, 2),
                                    torch.rand(8, 8, 3)])
def test_bad_images_are_refused(images):
    with pytest.raises(ValueError, match="images"):
        run(images)
