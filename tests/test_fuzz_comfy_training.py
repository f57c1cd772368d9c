"""Fuzzing ComfyUI's training nodes with extreme but in-bounds inputs: each gives a result
or a clear ValueError, never a raw torch error."""

from __future__ import annotations

import pytest
import torch

from nodes.comfy_training import loss_graph
from nodes.diffusion import comfy_train as ct
from nodes.diffusion.comfy_lora_layers import existing_steps
from nodes.diffusion.handles import CondEntry, Conditioning, Latent
from nodes.diffusion.lora import kohya_keys
from nodes.diffusion.training_shards import shard_content
from nodes.training_dataset import ResolutionBucket


def test_loss_graph_extremes():
    assert loss_graph([1e30, -1e30, 0.0]).shape == (1, 520, 840, 3)
    assert loss_graph([5.0] * 3).shape == (1, 520, 840, 3)  # flat: no division by zero
    assert loss_graph([float(i % 7) for i in range(100_000)]).isfinite().all()
    with pytest.raises(ValueError, match="NaN or infinite"):
        loss_graph([1.0, float("inf")])


def test_bucket_of_one_pixel_latents_and_counts():
    node = ResolutionBucket.model_construct(
        latents=[Latent(torch.zeros(2, 4, 1, 1)), Latent(torch.zeros(1, 4, 1, 1))],
        conditioning=[Conditioning((CondEntry(torch.zeros(1, 77, 8)),)),
                      Conditioning((CondEntry(torch.ones(1, 77, 8)),))])
    latents, conds = node.execute(None)
    assert [lat.samples.shape for lat in latents] == [(3, 4, 1, 1)]
    assert len(conds[0].entries) == 3
    bad = ResolutionBucket.model_construct(
        latents=[Latent(torch.zeros(3, 4, 2, 2))],
        conditioning=[Conditioning((CondEntry(torch.zeros(1, 77, 8)),) * 2)])
    with pytest.raises(ValueError, match="2 entries for 3 images"):
        bad.execute(None)
    with pytest.raises(ValueError, match="1 latents but 2 conditionings"):
        ResolutionBucket.model_construct(latents=[Latent(torch.zeros(1, 4, 2, 2))],
                                         conditioning=[bad.conditioning[0]] * 2).execute(None)
    with pytest.raises(ValueError, match="at least one sample"):
        ResolutionBucket.model_construct(latents=[Latent(torch.zeros(0, 4, 2, 2))],
                                         conditioning=bad.conditioning).execute(None)


def test_prompts_of_other_lengths_and_too_long():
    short, long = torch.zeros(1, 77, 8), torch.zeros(1, 154, 8)
    assert ct.stacked_contexts([short, long]).shape == (2, 154, 8)
    odd = [torch.zeros(1, n, 8) for n in (77 * 61, 77 * 63, 77 * 64)]
    with pytest.raises(ValueError, match="batch_size 1"):
        ct.stacked_contexts(odd)


def test_conditioning_options_that_cannot_be_saved():
    cond = Conditioning((CondEntry(torch.zeros(1, 77, 8), {"strength": 1.0,
                                                           "hook": object()}),))
    with pytest.raises(ValueError, match="option 'hook'"):
        shard_content([Latent(torch.zeros(1, 4, 2, 2))], [cond], 0)
    ok = Conditioning((CondEntry(torch.zeros(1, 77, 8), {"pooled_output": torch.zeros(1, 8),
                                                         "width": 1024}),))
    tensors, meta = shard_content([Latent(torch.zeros(1, 4, 2, 2))], [ok], 0)
    assert "0.cond.0.option.pooled_output" in tensors and "width" in next(iter(meta.values()))


def test_file_names_and_keys_that_are_not_comfyuis():
    assert existing_steps("x_steps_.safetensors") == 0
    assert existing_steps("a_99999999999_steps_00001_.safetensors") == 0  # absurd: ignored
    assert kohya_keys({"diffusion_model.out.2.weight": 1}) == {"diffusion_model.out.2.weight": 1}
    assert kohya_keys({"diffusion_model.out.2.lora_up.weight": 1}) == {
        "lora_unet_out_2.lora_up.weight": 1}


def test_dataset_shapes_refused_clearly():
    class Unet:
        class config:  # a stand-in for a diffusers config
            in_channels = 4
            cross_attention_dim = 8
            block_out_channels = (32,)
            norm_num_groups = 32

    cond = [Conditioning((CondEntry(torch.zeros(1, 77, 8)),))]
    with pytest.raises(ValueError, match="3 channels but this UNet takes 4"):
        ct.build_dataset([Latent(torch.zeros(1, 3, 4, 4))], cond, False, Unet())
    with pytest.raises(ValueError, match="NaN"):
        ct.build_dataset([Latent(torch.full((1, 4, 4, 4), float("nan")))], cond, False, Unet())
    with pytest.raises(ValueError, match=r"not a prompt embedding \[1, T, 8\]"):
        ct.build_dataset([Latent(torch.zeros(1, 4, 4, 4))],
                         [Conditioning((CondEntry(torch.zeros(1, 77, 16)),))], False, Unet())
    with pytest.raises(ValueError, match="latents is empty"):
        ct.build_dataset([], cond, False, Unet())
    data = ct.build_dataset([Latent(torch.zeros(2, 4, 4, 4)), Latent(torch.zeros(1, 4, 2, 2))],
                            cond, False, Unet())
    assert data.mode == "multires" and data.count == 3 and len(data.contexts) == 3
