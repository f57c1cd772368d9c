"""Checks the sampler makes before it runs: parts of different models are named as such."""

from types import SimpleNamespace

import pytest
import torch

from nodes.diffusion.handles import CondEntry, Conditioning
from nodes.diffusion.sampling import check_context_width


def unet(**config):
    return SimpleNamespace(config=SimpleNamespace(**{"encoder_hid_dim": None, **config}))


def cond(width: int) -> Conditioning:
    return Conditioning((CondEntry(torch.zeros(1, 77, width)),))


def test_a_prompt_of_another_width_names_the_text_encoder():
    with pytest.raises(ValueError, match="negative prompt's embeddings are 64 wide but this "
                                         "model's UNet takes 48"):
        check_context_width(unet(cross_attention_dim=48), cond(48), cond(64))
    with pytest.raises(ValueError, match="another model"):
        check_context_width(unet(cross_attention_dim=(48, 48, 48)), cond(64), cond(48))


def test_matching_widths_and_projected_contexts_pass():
    check_context_width(unet(cross_attention_dim=48), cond(48), cond(48))
    # a projection in front of the cross-attention (encoder_hid_dim) decides the width
    check_context_width(unet(cross_attention_dim=48, encoder_hid_dim=64), cond(64), cond(64))
    # per-block widths that differ, or a stub without a config: nothing to check here
    check_context_width(unet(cross_attention_dim=(32, 48)), cond(64), cond(64))
    check_context_width(SimpleNamespace(config=SimpleNamespace()), cond(64), cond(8))


def test_progress_counts_sampler_steps_as_comfyui():
    """5 Heun steps are 9 UNet calls; the user (and ComfyUI's progress bar) sees 5."""
    from nodes.diffusion.sampling import progress_counter

    heun = SimpleNamespace(order=2)
    assert [progress_counter(heun, 9)(i) for i in range(9)] == [
        (0, 5), (1, 5), (1, 5), (2, 5), (2, 5), (3, 5), (3, 5), (4, 5), (5, 5)]
    seeds_3 = SimpleNamespace(order=3)
    assert [progress_counter(seeds_3, 13)(i)[0] for i in range(13)][-4:] == [3, 3, 4, 5]
    assert progress_counter(SimpleNamespace(order=1), 6)(5) == (6, 6)
    assert progress_counter(SimpleNamespace(), 3)(0) == (1, 3)


def test_a_too_small_latent_is_told_the_size_that_passes():
    """Levels of one channel per group at scales 1, 2, 4 (as steerflow-shapes): the
    advice is the deepest level's, so following it passes."""
    from nodes.diffusion.sampling import check_latent_size

    model = unet(block_out_channels=[16, 32, 32], norm_num_groups=32)
    for size in ((1, 1), (2, 1), (1, 4)):
        with pytest.raises(ValueError, match="at least 5 pixels on one side"):
            check_latent_size(model, size)
    check_latent_size(model, (5, 1))
    check_latent_size(model, (1, 5))
