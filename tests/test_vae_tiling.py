"""Large images through the VAE: whole when they fit, image by image or tiled when not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from engine.session import Session
from nodes.diffusion import vae_codec
from nodes.diffusion.handles import Vae
from nodes.diffusion.tiny import VAE_CONFIG, _seeded
from nodes.diffusion.vae_codec import Plan, Tiling, decode_raw, encode_raw, estimate_bytes, plan
from nodes.latent import decode
from tests.graph_nodes import CAPTURED, registry_with_capture

TILING_ATTRS = ("use_slicing", "use_tiling", "tile_sample_min_size", "tile_latent_min_size",
                "tile_overlap_factor")


@pytest.fixture(scope="module")
def vae() -> Vae:
    return Vae(_seeded(1, lambda: AutoencoderKL(**VAE_CONFIG)).eval())


def settings(model) -> dict:
    return {name: getattr(model, name) for name in TILING_ATTRS}


def test_estimate_grows_with_pixels_batch_and_channels(vae):
    model = vae.vae
    one = estimate_bytes(model, 512, 512, 1, "decode")
    assert estimate_bytes(model, 1024, 1024, 1, "decode") == pytest.approx(4 * one, rel=1e-6)
    assert estimate_bytes(model, 512, 512, 3, "decode") == pytest.approx(3 * one, rel=1e-6)
    sd = AutoencoderKL(block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
                       down_block_types=("DownEncoderBlock2D",) * 4,
                       up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1)
    # SD's VAE decodes 1024² with about 4 GB of float32 activations (measured: 3.9 GB).
    assert 3.5e9 < estimate_bytes(sd, 1024, 1024, 1, "decode") < 5.5e9


def test_plan_whole_sliced_tiled(vae):
    model = vae.vae
    one = estimate_bytes(model, 256, 256, 1, "decode")
    assert plan(model, 256, 256, 4, "decode", budget=4 * one) == Plan()
    assert plan(model, 256, 256, 4, "decode", budget=2 * one) == Plan(sliced=True)
    tiled = plan(model, 256, 256, 4, "decode", budget=one // 2)
    assert tiled.sliced and tiled.tiling is not None
    assert estimate_bytes(model, tiled.tiling.tile, tiled.tiling.tile, 1, "decode") <= one // 2
    assert plan(model, 64, 64, 1, "decode", Tiling(32, 8)) == Plan(False, Tiling(32, 8))


def test_fitting_sizes_decode_exactly_as_before(vae):
    latents = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = vae.vae.decode(latents / vae.scaling_factor, return_dict=False)[0]
    image = decode(vae, latents)
    assert torch.equal(image, (expected / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1))


def test_tiled_decode_and_encode_equal_diffusers_tiling(vae):
    """Forced tiles equal diffusers' own enable_tiling() at the same tile settings, and
    the VAE's settings are restored afterwards (the model is cached and shared)."""
    model = vae.vae
    before = settings(model)
    latents = torch.randn(1, 4, 20, 28, generator=torch.Generator().manual_seed(1))
    ours = decode_raw(vae, latents, Tiling(64, 16))
    assert settings(model) == before
    reference = AutoencoderKL(**VAE_CONFIG).eval()
    reference.load_state_dict(model.state_dict())
    reference.enable_tiling()
    reference.tile_sample_min_size, reference.tile_latent_min_size = 64, 8
    reference.tile_overlap_factor = 0.25
    with torch.no_grad():
        expected = reference.decode(latents, return_dict=False)[0]
        assert (ours - expected).abs().max().item() <= 1e-6
        pixels = torch.rand(1, 3, 160, 224, generator=torch.Generator().manual_seed(2)) * 2 - 1
        mode = encode_raw(vae, pixels, Tiling(64, 16)).mode()
        assert (mode - reference.encode(pixels).latent_dist.mode()).abs().max().item() <= 1e-6
    assert settings(model) == before
    assert ours.shape == (1, 3, 160, 224)


def test_memory_pressure_switches_to_tiles(vae, monkeypatch):
    """With little memory free, a decode that would not fit runs in tiles, not whole."""
    calls = []
    model = vae.vae
    original = model.tiled_decode
    monkeypatch.setattr(model, "tiled_decode",
                        lambda z, **kw: calls.append(z.shape) or original(z, **kw))
    need = estimate_bytes(model, 256, 256, 1, "decode")
    monkeypatch.setattr(vae_codec, "available_bytes", lambda device: need // 4)
    image = decode(vae, torch.randn(1, 4, 32, 32))
    assert image.shape == (1, 256, 256, 3) and calls
    assert not model.use_tiling  # restored
    calls.clear()
    monkeypatch.setattr(vae_codec, "available_bytes", lambda device: need * 8)
    decode(vae, torch.randn(1, 4, 32, 32))
    assert not calls


def test_restored_on_error(vae, monkeypatch):
    model = vae.vae
    before = settings(model)

    def fail(*args, **kwargs):
        raise RuntimeError("decode failed")
    # (a latent of the wrong channels is refused before the settings change)
    monkeypatch.setattr(model, "decode", fail)
    with pytest.raises(RuntimeError, match="decode failed"):
        decode_raw(vae, torch.randn(1, 4, 8, 8), Tiling(32, 8))
    assert settings(model) == before


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    (home / "input").mkdir()
    y, x = np.mgrid[0:64, 0:96]
    picture = np.stack([x / 95, y / 63, 0.5 + 0 * x], axis=-1)
    Image.fromarray((picture * 255).astype(np.uint8)).save(home / "input" / "picture.png")
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


def test_tiled_nodes_in_a_graph(session):
    """VAE Encode (Tiled) → VAE Decode (Tiled) with ComfyUI's inputs; the defaults (tiles of
    512) on a small image equal the plain nodes."""
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "img": {"class_type": "LoadImage", "inputs": {"image": "picture.png"}},
        "enc": {"class_type": "VAEEncodeTiled",
                "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2], "tile_size": 64,
                           "overlap": 32, "temporal_size": 64, "temporal_overlap": 8}},
        "dec": {"class_type": "VAEDecodeTiled",
                "inputs": {"samples": ["enc", 0], "vae": ["ckpt", 2], "tile_size": 64,
                           "overlap": 32, "temporal_size": 64, "temporal_overlap": 8}},
        "plain_enc": {"class_type": "VAEEncode",
                      "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}},
        "plain_dec": {"class_type": "VAEDecode",
                      "inputs": {"samples": ["plain_enc", 0], "vae": ["ckpt", 2]}},
        "dec512": {"class_type": "VAEDecodeTiled",
                   "inputs": {"samples": ["plain_enc", 0], "vae": ["ckpt", 2]}},
        "cap512": {"class_type": "TestCapture", "inputs": {"value": ["dec512", 0],
                                                           "key": "cap512"}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["dec", 0], "key": "cap"}},
        "cap_plain": {"class_type": "TestCapture",
                      "inputs": {"value": ["plain_dec", 0], "key": "cap_plain"}},
    }
    CAPTURED.clear()
    session.run(prompt)
    tiled, plain = CAPTURED["cap"], CAPTURED["cap_plain"]
    assert tiled.shape == plain.shape == (1, 64, 96, 3)
    assert not torch.equal(tiled, plain)  # 64-pixel tiles on a 96-pixel image: really tiled
    assert torch.equal(CAPTURED["cap512"], plain)  # one 512-pixel tile: the whole image

    bad = {**prompt, "dec": {**prompt["dec"], "inputs": {**prompt["dec"]["inputs"],
                                                           "tile_size": 8}}}
    with pytest.raises(Exception, match="tile_size"):
        session.run(bad)
