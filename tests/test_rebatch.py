"""Rebatch Latents / Rebatch Images: regrouping, masks and seeds kept, sizes never mixed,
and the list they output mapped over by the nodes after them."""

from __future__ import annotations

import pytest
import torch

from engine.session import Session
from nodes.diffusion.handles import Latent
from nodes.rebatch import RebatchImages, RebatchLatents
from tests.graph_nodes import registry_with_capture


def test_rebatch_latents_regroups_in_order_with_masks_and_seeds():
    a = Latent(torch.arange(3.0).view(3, 1, 1, 1).expand(3, 4, 2, 2).clone(),
               noise_mask=torch.full((3, 2, 2), 0.5), batch_index=(7, 8, 9))
    b = Latent(torch.full((2, 4, 2, 2), 5.0))  # no mask, no index
    c = Latent(torch.zeros(1, 4, 3, 2))  # another size: its own batch
    (out,) = RebatchLatents.model_construct(latents=[a, b, c], batch_size=[2]).execute(None)
    assert [tuple(x.samples.shape) for x in out] == [(2, 4, 2, 2), (2, 4, 2, 2),
                                                     (1, 4, 2, 2), (1, 4, 3, 2)]
    assert [x.batch_index for x in out] == [(7, 8), (9, 0), (1,), (0,)]
    assert out[0].samples[:, 0, 0, 0].tolist() == [0.0, 1.0]
    assert out[1].samples[:, 0, 0, 0].tolist() == [2.0, 5.0]
    # the second batch mixes a masked item and an unmasked one: full mask for the latter
    assert out[1].noise_mask[:, 0, 0, 0].tolist() == [0.5, 1.0]
    assert out[2].noise_mask is None and out[3].noise_mask is None


def test_rebatch_images_and_errors():
    images = [torch.rand(3, 8, 8, 3), torch.rand(2, 8, 8, 3), torch.rand(1, 4, 8, 3)]
    (out,) = RebatchImages.model_construct(images=images, batch_size=[4]).execute(None)
    assert [tuple(x.shape) for x in out] == [(4, 8, 8, 3), (1, 8, 8, 3), (1, 4, 8, 3)]
    assert torch.equal(out[0][3], images[1][0])
    with pytest.raises(ValueError, match="not an IMAGE"):
        RebatchImages.model_construct(images=[torch.rand(8, 8)], batch_size=[1]).execute(None)


def test_rebatch_feeds_the_nodes_after_it_once_per_batch(models_dir, tmp_path):
    session = Session(tmp_path, models_dir=models_dir, device="cpu",
                      registry=registry_with_capture())
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "lat": {"class_type": "EmptyLatentImage",
                "inputs": {"width": 32, "height": 32, "batch_size": 5}},
        "re": {"class_type": "RebatchLatents", "inputs": {"latents": ["lat", 0],
                                                          "batch_size": 2}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["re", 0],
                                                      "vae": ["ckpt", 2]}},
        "ri": {"class_type": "RebatchImages", "inputs": {"images": ["dec", 0],
                                                         "batch_size": 4}},
        "save": {"class_type": "PreviewImage", "inputs": {"images": ["ri", 0]}},
    }
    result = session.run(prompt)
    assert result.ok, result.run.error
    assert len(result.run.outputs["save"]["images"]) == 5
