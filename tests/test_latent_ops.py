"""Latent From Batch, Latent Batch, Rotate / Flip / Crop Latent, Latent Blend, LatentAdd,
LatentSubtract, LatentMultiply and LatentInterpolate (nodes/latent_ops.py), each checked
against a hand computation on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from engine.validation import PromptValidationError
from nodes.diffusion.handles import InpaintCondition, Latent
from nodes.latent_ops import (
    LatentAdd,
    LatentBatch,
    LatentBlend,
    LatentCrop,
    LatentFlip,
    LatentFromBatch,
    LatentInterpolate,
    LatentMultiply,
    LatentRotate,
    LatentSubtract,
)
from tests.graph_nodes import CAPTURED, run_error


def out(cls, **inputs):
    return cls(**inputs).execute(None)[0]


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def latent(batch=1, channels=2, h=2, w=2, offset=0.0, **fields) -> Latent:
    n = batch * channels * h * w
    return Latent(torch.arange(n, dtype=torch.float32).view(batch, channels, h, w) + offset,
                  **fields)


# --- Latent From Batch -------------------------------------------------------------------


def test_from_batch_picks_and_slices_the_noise_mask():
    masks = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 2, 2) / 4
    source = latent(batch=4, noise_mask=masks, assumed_downscale=8)
    result = out(LatentFromBatch, samples=source, batch_index=1, length=2)
    assert torch.equal(result.samples, source.samples[1:3])
    assert torch.equal(result.noise_mask, masks[1:3]) and result.assumed_downscale == 8
    # negative counts from the end; a length past the end takes what is there
    last = out(LatentFromBatch, samples=source, batch_index=-1, length=64)
    assert torch.equal(last.samples, source.samples[3:]) and last.noise_mask.shape[0] == 1
    # one mask for the whole batch stays one; a shorter batch of masks is cycled
    one = out(LatentFromBatch, samples=latent(batch=3, noise_mask=torch.ones(1, 2, 2)),
              batch_index=2)
    assert one.noise_mask.shape == (1, 1, 2, 2)
    two = latent(batch=4, noise_mask=t([[[0.0]], [[1.0]]]))  # [2, 1, 1] cycles: 0 1 0 1
    picked = out(LatentFromBatch, samples=two, batch_index=3, length=1)
    assert torch.equal(picked.noise_mask, t([[[[1.0]]]]))
    # the output is not a view of the input
    result.samples.add_(1)
    assert torch.equal(source.samples, latent(batch=4).samples)


def test_from_batch_slices_inpaint_inputs_and_bad_index():
    inpaint = InpaintCondition(torch.arange(3.0).view(3, 1, 1, 1), torch.zeros(3, 4, 1, 1))
    source = latent(batch=3, h=1, w=1, inpaint=inpaint)
    result = out(LatentFromBatch, samples=source, batch_index=1)
    assert torch.equal(result.inpaint.mask, t([[[[1.0]]]]))
    assert result.inpaint.masked_latents.shape == (1, 4, 1, 1)
    for index in (3, -4):
        with pytest.raises(ValueError, match=f"batch_index {index} is outside the batch of 3"):
            out(LatentFromBatch, samples=source, batch_index=index)


# --- Latent Batch ------------------------------------------------------------------------


def test_batch_joins_and_resizes_the_second():
    first = latent(batch=2, assumed_downscale=8)
    second = Latent(t([1.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 1, 1).clone())
    result = out(LatentBatch, samples1=first, samples2=second)
    assert result.samples.shape == (3, 2, 2, 2) and result.assumed_downscale == 8
    assert torch.equal(result.samples[:2], first.samples)
    # a constant 1x1 latent stretched to 2x2 stays constant per channel
    assert torch.equal(result.samples[2, 0], torch.ones(2, 2))
    assert torch.equal(result.samples[2, 1], torch.full((2, 2), 2.0))
    assert result.noise_mask is None and result.inpaint is None


def test_batch_keeps_each_latents_noise_mask():
    m1 = t([[[1.0, 0.0], [0.0, 0.0]]])  # one mask for a batch of 2
    first = latent(batch=2, noise_mask=m1)
    second = latent(batch=1, offset=100)  # no mask: repaint all
    result = out(LatentBatch, samples1=first, samples2=second)
    assert torch.equal(result.noise_mask, torch.cat((m1[:, None], m1[:, None],
                                                     torch.ones(1, 1, 2, 2))))
    # a mask at the image size (8x, 16x16 px) is brought to the latent grid first
    big = torch.zeros(1, 16, 16)
    big[:, 8:, 8:] = 1
    result = out(LatentBatch, samples1=latent(), samples2=latent(noise_mask=big))
    assert torch.equal(result.noise_mask, t([[[[1, 1], [1, 1]]], [[[0, 0], [0, 1]]]]))


def test_batch_inpaint_inputs_and_bad_inputs():
    def inpainted(batch):
        return latent(batch=batch, inpaint=InpaintCondition(torch.ones(batch, 1, 2, 2),
                                                            torch.zeros(batch, 2, 2, 2)))

    result = out(LatentBatch, samples1=inpainted(1), samples2=inpainted(2))
    assert result.inpaint.mask.shape == (3, 1, 2, 2)
    assert result.inpaint.masked_latents.shape == (3, 2, 2, 2)
    with pytest.raises(ValueError, match="only one of the latents carries inpainting"):
        out(LatentBatch, samples1=inpainted(1), samples2=latent())
    with pytest.raises(ValueError, match="samples2 has 3 channels but samples1 has 2"):
        out(LatentBatch, samples1=latent(), samples2=latent(channels=3))
    with pytest.raises(ValueError, match=r"samples1 must be a latent \[B, C, h, w\]"):
        out(LatentBatch, samples1=Latent(torch.ones(2, 2, 2)), samples2=latent())


# --- Rotate / Flip / Crop ----------------------------------------------------------------


def test_rotate_clockwise_with_mask():
    grid = t([[[[1, 2, 3], [4, 5, 6]]]])  # 1 channel, 2x3
    mask = t([[[1, 0, 0], [0, 0, 0]]])  # top-left
    source = Latent(grid, noise_mask=mask)
    r90 = out(LatentRotate, samples=source, rotation="90 degrees")
    assert torch.equal(r90.samples, t([[[[4, 1], [5, 2], [6, 3]]]]))
    assert torch.equal(r90.noise_mask, t([[[[0, 1], [0, 0], [0, 0]]]]))  # now top-right
    r180 = out(LatentRotate, samples=source, rotation="180 degrees")
    assert torch.equal(r180.samples, t([[[[6, 5, 4], [3, 2, 1]]]]))
    r270 = out(LatentRotate, samples=source, rotation="270 degrees")
    assert torch.equal(r270.samples, t([[[[3, 6], [2, 5], [1, 4]]]]))
    assert out(LatentRotate, samples=source, rotation="none") is source


def test_flip_with_mask():
    grid = t([[[[1, 2], [3, 4]]]])
    source = Latent(grid, noise_mask=t([[[1, 0], [0, 0]]]), assumed_downscale=8)
    vertical = out(LatentFlip, samples=source, flip_method="x-axis: vertically")
    assert torch.equal(vertical.samples, t([[[[3, 4], [1, 2]]]]))
    assert torch.equal(vertical.noise_mask, t([[[[0, 0], [1, 0]]]]))
    horizontal = out(LatentFlip, samples=source, flip_method="y-axis: horizontally")
    assert torch.equal(horizontal.samples, t([[[[2, 1], [4, 3]]]]))
    assert torch.equal(horizontal.noise_mask, t([[[[0, 1], [0, 0]]]]))
    assert horizontal.assumed_downscale == 8


def test_crop_in_pixels_with_mask():
    source = latent(channels=1, h=12, w=12)
    grid = source.samples[0, 0]
    result = out(LatentCrop, samples=source, width=64, height=72, x=16, y=8)
    assert torch.equal(result.samples[0, 0], grid[1:10, 2:10])  # 9 rows x 8 columns
    # x, y pulled back to leave 8 latent pixels (64 px); past the edge it is cut there
    result = out(LatentCrop, samples=source, width=512, height=64, x=96, y=1000)
    assert torch.equal(result.samples[0, 0], grid[4:12, 4:12])
    # x not a multiple of 8 is floored; a pixel-size noise mask is cropped on the grid
    big = torch.zeros(1, 96, 96)
    big[:, 8:16, 16:24] = 1  # latent cell (1, 2)
    masked = latent(channels=1, h=12, w=12, noise_mask=big)
    result = out(LatentCrop, samples=masked, width=64, height=64, x=23, y=8)
    assert result.noise_mask.shape == (1, 1, 8, 8)
    assert result.noise_mask[0, 0, 0, 0] == 1 and result.noise_mask.sum() == 1
    # a latent smaller than 64 px keeps it all
    small = latent(channels=1, h=4, w=4)
    assert torch.equal(out(LatentCrop, samples=small, width=64, height=64, x=16, y=16).samples,
                       small.samples)


# --- arithmetic --------------------------------------------------------------------------


def test_add_subtract_multiply_keep_the_first_latents_fields():
    mask = torch.ones(1, 2, 2)
    a = latent(batch=2, noise_mask=mask, assumed_downscale=8)
    b = latent(batch=1, offset=10)  # batch 1: repeated
    added = out(LatentAdd, samples1=a, samples2=b)
    assert torch.equal(added.samples, a.samples + b.samples)
    assert added.noise_mask is mask and added.assumed_downscale == 8
    assert added.samples[1, 1, 1, 1] == 15 + (7 + 10)  # one value by hand
    assert torch.equal(out(LatentSubtract, samples1=a, samples2=b).samples,
                       a.samples - b.samples)
    times = out(LatentMultiply, samples=a, multiplier=-0.5)
    assert torch.equal(times.samples, a.samples * -0.5) and times.noise_mask is mask


def test_add_stretches_the_second_latent():
    a = latent()
    b = Latent(torch.full((1, 2, 1, 1), 3.0))
    assert torch.equal(out(LatentAdd, samples1=a, samples2=b).samples, a.samples + 3)


def test_arithmetic_bad_inputs():
    with pytest.raises(ValueError, match="3 channels but samples1 has 2"):
        out(LatentAdd, samples1=latent(), samples2=latent(channels=3))
    with pytest.raises(ValueError, match="samples2 has a batch of 2 and samples1 of 3"):
        out(LatentSubtract, samples1=latent(batch=3), samples2=latent(batch=2))
    with pytest.raises(ValueError, match=r"samples must be a latent"):
        out(LatentMultiply, samples=Latent(torch.ones(1, 2, 0, 2)), multiplier=2.0)
    # a batch that divides the first's is repeated
    result = out(LatentAdd, samples1=latent(batch=4), samples2=latent(batch=2))
    assert torch.equal(result.samples[2:], latent(batch=4).samples[2:]
                       + latent(batch=2).samples)


def test_blend():
    a, b = latent(), latent(offset=8)
    result = out(LatentBlend, samples1=a, samples2=b, blend_factor=0.25)
    assert torch.allclose(result.samples, a.samples * 0.25 + b.samples * 0.75)
    assert result.samples[0, 0, 0, 0] == 6.0  # 0 * .25 + 8 * .75
    # another size: stretched (bicubic) first; a constant stays constant
    c = Latent(torch.full((1, 2, 4, 4), 4.0))
    result = out(LatentBlend, samples1=a, samples2=c, blend_factor=0.5)
    assert torch.allclose(result.samples, a.samples * 0.5 + 2.0)


def test_interpolate_mixes_directions_and_lengths():
    a = Latent(t([3.0, 0.0]).view(1, 2, 1, 1))  # length 3 along channel 0
    b = Latent(t([0.0, 1.0]).view(1, 2, 1, 1))  # length 1 along channel 1
    result = out(LatentInterpolate, samples1=a, samples2=b, ratio=0.5).samples.flatten()
    # direction (0.5, 0.5) normalised, length 0.5 * 3 + 0.5 * 1 = 2
    assert torch.allclose(result, t([2 / math.sqrt(2), 2 / math.sqrt(2)]))
    assert torch.allclose(out(LatentInterpolate, samples1=a, samples2=b, ratio=1.0).samples,
                          a.samples)
    assert torch.allclose(out(LatentInterpolate, samples1=a, samples2=b, ratio=0.0).samples,
                          b.samples)
    # a zero vector has no direction: only the other's direction, at the mixed length
    zero = Latent(torch.zeros(1, 2, 1, 1))
    result = out(LatentInterpolate, samples1=a, samples2=zero, ratio=0.25).samples.flatten()
    assert torch.allclose(result, t([0.75, 0.0]))
    both = out(LatentInterpolate, samples1=zero, samples2=zero, ratio=0.5).samples
    assert torch.equal(both, torch.zeros(1, 2, 1, 1))


# --- through a session: an API-format prompt with these class types ----------------------


def prompt() -> dict:
    return {
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 128,
                                                               "batch_size": 1}},
        "one": {"class_type": "LatentMultiply", "inputs": {"samples": ["empty", 0],
                                                           "multiplier": 1.0}},
        "ones": {"class_type": "LatentAdd", "inputs": {"samples1": ["empty", 0],
                                                       "samples2": ["plus", 0]}},
        "plus": {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["empty", 0],
                                                               "amount": 1}},
        "batch": {"class_type": "LatentBatch", "inputs": {"samples1": ["empty", 0],
                                                          "samples2": ["rot", 0]}},
        "rot": {"class_type": "LatentRotate", "inputs": {"samples": ["empty", 0],
                                                         "rotation": "90 degrees"}},
        "pick": {"class_type": "LatentFromBatch", "inputs": {"samples": ["batch", 0],
                                                             "batch_index": 1,
                                                             "length": 1}},
        "flip": {"class_type": "LatentFlip", "inputs": {"samples": ["pick", 0],
                                                        "flip_method": "y-axis: horizontally"}},
        "crop": {"class_type": "LatentCrop", "inputs": {"samples": ["flip", 0], "width": 64,
                                                        "height": 64, "x": 0, "y": 8}},
        "mix": {"class_type": "LatentInterpolate", "inputs": {"samples1": ["crop", 0],
                                                              "samples2": ["ones", 0],
                                                              "ratio": 0.5}},
        "blend": {"class_type": "LatentBlend", "inputs": {"samples1": ["mix", 0],
                                                          "samples2": ["one", 0],
                                                          "blend_factor": 0.5}},
        "c_batch": {"class_type": "TestCapture", "inputs": {"value": ["batch", 0],
                                                            "key": "latent_ops_batch"}},
        "c_blend": {"class_type": "TestCapture", "inputs": {"value": ["blend", 0],
                                                            "key": "latent_ops_blend"}},
    }


def test_api_prompt_validates_and_runs(session):
    graph = prompt()
    session.validate(graph)
    result = session.run(graph)
    assert result.ok, result.run.error
    batch = CAPTURED.pop("latent_ops_batch").samples
    assert batch.shape == (2, 4, 16, 8)  # the rotated 16x8 one stretched back to 8x16
    blend = CAPTURED.pop("latent_ops_blend").samples
    assert blend.shape == (1, 4, 8, 8)  # cropped to 64x64 px, the rest stretched to it
    assert torch.equal(blend, torch.zeros(1, 4, 8, 8))  # zeros all the way through


def test_bad_values_are_validation_or_run_errors(session):
    graph = prompt()
    graph["rot"]["inputs"]["rotation"] = "45 degrees"
    with pytest.raises(PromptValidationError):
        session.validate(graph)
    graph = prompt()
    graph["crop"]["inputs"]["width"] = 32  # under ComfyUI's minimum of 64
    with pytest.raises(PromptValidationError):
        session.validate(graph)
    graph = prompt()
    graph["one"]["inputs"]["multiplier"] = 11.0  # past ComfyUI's 10
    with pytest.raises(PromptValidationError):
        session.validate(graph)
    graph = prompt()
    graph["pick"]["inputs"]["batch_index"] = 2  # the batch has 2 latents
    assert "batch_index 2 is outside the batch of 2" in run_error(session, graph)


# --- batch_index: a latent taken out of a batch keeps its noise ---------------------------


def test_batch_index_follows_from_batch_repeat_batch_and_seed_behavior():
    from nodes.latent_ops import LatentBatchSeedBehavior
    from nodes.model_merging import RepeatLatentBatch

    four = latent(batch=4)
    (picked,) = LatentFromBatch(samples=four, batch_index=1, length=2).execute(None)
    assert picked.batch_index == (1, 2)
    (again,) = LatentFromBatch(samples=picked, batch_index=1, length=1).execute(None)
    assert again.batch_index == (2,)
    (repeated,) = RepeatLatentBatch(samples=picked, amount=3).execute(None)
    assert repeated.batch_index == (1, 2, 3, 4, 5, 6)  # ComfyUI's offsets
    (joined,) = LatentBatch(samples1=picked, samples2=latent(batch=2)).execute(None)
    assert joined.batch_index == (1, 2, 0, 1)
    assert LatentBatch(samples1=four, samples2=four).execute(None)[0].batch_index is None
    (fixed,) = LatentBatchSeedBehavior(samples=picked, seed_behavior="fixed").execute(None)
    assert fixed.batch_index == (1, 1)
    (rand,) = LatentBatchSeedBehavior(samples=picked, seed_behavior="random").execute(None)
    assert rand.batch_index is None


def batch_prompt() -> dict:
    def sampler(latent: list, key: str) -> dict:
        return {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": 5, "steps": 3, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": latent, "denoise": 1.0}}

    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red square",
                                                           "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage",
                  "inputs": {"width": 48, "height": 32, "batch_size": 4}},
        "one": {"class_type": "LatentFromBatch",
                "inputs": {"samples": ["empty", 0], "batch_index": 2, "length": 1}},
        "same": {"class_type": "LatentBatchSeedBehavior",
                 "inputs": {"samples": ["empty", 0], "seed_behavior": "fixed"}},
        "ks_all": sampler(["empty", 0], "all"),
        "ks_one": sampler(["one", 0], "one"),
        "ks_same": sampler(["same", 0], "same"),
    }
    for name in ("all", "one", "same"):
        prompt[f"c_{name}"] = {"class_type": "TestCapture",
                               "inputs": {"value": [f"ks_{name}", 0], "key": f"bi_{name}"}}
    return prompt


def test_an_image_taken_out_of_a_batch_samples_as_it_did_inside(session):
    result = session.run(batch_prompt())
    assert result.ok, result.run.error
    whole, one, same = (CAPTURED.pop(f"bi_{k}").samples for k in ("all", "one", "same"))
    assert one.shape[0] == 1 and torch.allclose(one[0], whole[2], atol=1e-5)
    assert torch.allclose(same, whole[:1].expand_as(same), atol=1e-5)  # every row: item 0
    assert not torch.allclose(whole[0], whole[1], atol=1e-3)


def test_pixel_sizes_use_the_downscale_the_latent_knows():
    from nodes.upscale import LatentComposite, LatentUpscale

    four = latent(channels=1, h=32, w=32, downscale=4)  # a 128x128 picture on a 4x VAE
    up = out(LatentUpscale, samples=four, width=128, height=96)
    assert up.samples.shape[-2:] == (24, 32) and up.downscale == 4
    # unknown: SD's 8 (ComfyUI's rule); assumed by an Empty Latent Image: that one
    assert out(LatentUpscale, samples=latent(channels=1, h=8, w=8), width=128,
               height=96).samples.shape[-2:] == (12, 16)
    assumed = latent(channels=1, h=8, w=8, assumed_downscale=8)
    assert out(LatentUpscale, samples=assumed, width=128, height=96).samples.shape[-2:] == (
        12, 16)
    assert out(LatentCrop, samples=four, width=64, height=96).samples.shape[-2:] == (24, 16)
    pasted = out(LatentComposite, samples_to=four, samples_from=latent(channels=1, h=2, w=2),
                 x=8, y=4)
    assert torch.equal(pasted.samples[0, 0, 1:3, 2:4], t([[0, 1], [2, 3]]))
