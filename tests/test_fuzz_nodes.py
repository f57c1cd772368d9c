"""Regressions from a systematic input fuzz of every node: values inside the declared
bounds, and tensors of odd shapes, get a clear ValueError that names what to change,
never a raw torch/numpy error or an allocation the machine cannot make."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine import ExecutionContext, Input, Node, Output
from engine.session import Session
from nodes.diffusion import vae_codec
from tests.graph_nodes import registry_with_capture

TINY = "steerflow-tiny"


class FuzzTensor(Node):
    """An IMAGE of any shape (``"1,64,64,3"``), filled with 0.5."""

    TYPE = "TestFuzzTensor"
    OUTPUTS = (Output("IMAGE"),)
    shape: str = Input("1,64,64,3")

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        return (torch.full(tuple(int(s) for s in self.shape.split(",")), 0.5),)


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory):
    registry = registry_with_capture()
    registry.register(FuzzTensor)
    return Session(tmp_path_factory.mktemp("fuzz"), models_dir=models_dir, device="cpu",
                   registry=registry)


@pytest.fixture
def free_memory(monkeypatch):
    """Pretend the device has ``n`` bytes free (what every up-front check reads)."""
    def set_free(n: int) -> None:
        monkeypatch.setattr(vae_codec, "available_bytes", lambda device: n)
    return set_free


def capture(src: list[Any]) -> dict[str, Any]:
    return {"class_type": "TestCapture", "inputs": {"value": src, "key": "fuzz"}}


def tensor(shape: tuple[int, ...]) -> dict[str, Any]:
    return {"class_type": "TestFuzzTensor", "inputs": {"shape": ",".join(map(str, shape))}}


def fails(session: Session, prompt: dict[str, Any]) -> str:
    """Run ``prompt``, which must fail with a ValueError (the user-error path, no raw
    torch/numpy exception); returns its message."""
    result = session.run(prompt)
    assert result.run.status == "error", "expected the run to fail"
    error = result.run.error
    assert error["exception_type"] == "builtins.ValueError", error["exception_message"]
    return error["exception_message"]


# --- memory: sizes inside ComfyUI's bounds that no machine holds are refused up front ----

def test_empty_latent_too_big_for_memory_is_refused(session, free_memory):
    # 4096 latents for 16384x16384 px: 256 GiB, every value within the declared bounds
    free_memory(8 << 30)
    message = fails(session, {
        "1": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 16384, "height": 16384, "batch_size": 4096}},
        "2": capture(["1", 0])})
    assert "256.0 GiB" in message and "batch_size" in message
    assert "8.0 GiB free" in message


def test_empty_latent_that_fits_still_runs(session, free_memory):
    free_memory(8 << 30)
    result = session.run({
        "1": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "2": capture(["1", 0])})
    assert result.ok, result.run.error


def test_empty_image_too_big_for_memory_is_refused(session, free_memory):
    free_memory(64 << 20)  # 4096x4096 RGB float32 is 192 MiB
    message = fails(session, {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 4096, "height": 4096, "batch_size": 1}},
        "2": capture(["1", 0])})
    assert "4096x4096" in message and "batch_size" in message


def test_image_scale_of_a_batch_too_big_for_memory_is_refused(session, free_memory):
    free_memory(64 << 20)  # two 2048x2048 RGB results (+ their working copy): 192 MiB
    message = fails(session, {
        "1": tensor((2, 16, 16, 3)),
        "2": {"class_type": "ImageScale", "inputs": {
            "image": ["1", 0], "upscale_method": "nearest-exact", "width": 2048,
            "height": 2048, "crop": "disabled"}},
        "3": capture(["2", 0])})
    assert "2048x2048" in message and "smaller" in message


def test_latent_upscale_by_too_big_for_memory_is_refused(session, free_memory):
    free_memory(64 << 10)
    message = fails(session, {
        "1": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "2": {"class_type": "LatentUpscaleBy", "inputs": {
            "samples": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 8.0}},
        "3": capture(["2", 0])})
    assert "64x64 latent pixels" in message


# --- DDIM inversion at its declared maximum of steps ---------------------------------

def test_ddim_inversion_with_as_many_steps_as_timesteps_is_refused(session):
    # steps=1000 is within DDIMInvert's bounds, but the inverse schedule's last step
    # would index the model's 1000 timesteps out of range (an IndexError at the end)
    message = fails(session, {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1, "vae": ["4", 2]}},
        "1": {"class_type": "DDIMInvert", "inputs": {
            "model": ["4", 0], "positive": ["6", 0], "latent": ["5", 0], "steps": 1000}},
        "2": capture(["1", 0])})
    assert "at most 999 steps" in message


def test_inverse_steps_check_accepts_one_less():
    from nodes.diffusion.inversion import check_inverse_steps, inverse_scheduler
    from nodes.diffusion.tiny import SCHEDULER_CONFIG

    scheduler = inverse_scheduler(dict(SCHEDULER_CONFIG))
    check_inverse_steps(scheduler, 999)
    with pytest.raises(ValueError, match="at most 999"):
        check_inverse_steps(scheduler, 1000)


# --- images of odd shapes: a clear message naming the input ---------------------------

def _encode(shape):
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "1": tensor(shape),
        "2": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["4", 2]}},
        "3": capture(["2", 0])}


@pytest.mark.parametrize(("shape", "expected"), [
    ((1, 64, 64, 1), "C in (3, 4)"),  # was torch's "expected input ... to have 3 channels"
    ((0, 64, 64, 3), "is empty"),  # was "cannot reshape tensor of 0 elements"
    ((64, 64, 3), "IMAGE [B, H, W, C]"),
])
def test_vae_encode_odd_image_shapes(session, shape, expected):
    message = fails(session, _encode(shape))
    assert "image to encode" in message and expected in message


@pytest.mark.parametrize(("node", "inputs"), [
    ("ImageScale", {"upscale_method": "nearest-exact", "width": 32, "height": 32,
                    "crop": "disabled"}),
    ("ImageScaleBy", {"upscale_method": "nearest-exact", "scale_by": 2.0}),
    ("ImageScaleToTotalPixels", {"upscale_method": "nearest-exact", "megapixels": 0.01,
                                 "resolution_steps": 1}),
    ("Canny", {"low_threshold": 0.4, "high_threshold": 0.8}),
])
@pytest.mark.parametrize(("shape", "expected"), [
    ((64, 64, 3), "IMAGE [B, H, W, C]"),  # was "spatial dimensions" / "unpack"
    ((0, 64, 64, 3), "is empty"),  # was "need at least one array to stack"
    ((1, 0, 64, 3), "is empty"),  # was a ZeroDivisionError (Scale Image to Total Pixels)
])
def test_image_nodes_odd_image_shapes(session, node, inputs, shape, expected):
    message = fails(session, {
        "1": tensor(shape),
        "2": {"class_type": node, "inputs": {"image": ["1", 0], **inputs}},
        "3": capture(["2", 0])})
    assert "the image" in message and expected in message


def test_image_batch_of_a_3d_image(session):
    message = fails(session, {
        "1": tensor((1, 64, 64, 3)),
        "2": tensor((64, 64, 3)),
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": capture(["3", 0])})
    assert "image2" in message and "IMAGE [B, H, W, C]" in message
