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


class LoudFailure(Node):
    """Fails with a 100k-character message."""

    TYPE = "TestLoudFailure"
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        raise ValueError("bad: " + "y" * 100_000)


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory):
    registry = registry_with_capture()
    registry.register(FuzzTensor)
    registry.register(FuzzLatent)
    registry.register(LoudFailure)
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
    assert error["exception_type"] == "ValueError", error["exception_message"]
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


# --- sampling: a batch whose UNet activations cannot fit ------------------------------

def _sample(node: str, batch: int, size: int, seed: int) -> dict[str, Any]:
    common = {"model": ["4", 0], "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
              "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0], "steps": 1}
    if node == "KSampler":
        inputs = {**common, "seed": seed, "denoise": 1.0}
    else:
        inputs = {**common, "noise_seed": seed, "add_noise": "enable", "start_at_step": 0,
                  "end_at_step": 10000, "return_with_leftover_noise": "disable"}
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": size, "height": size, "batch_size": batch, "vae": ["4", 2]}},
        "1": {"class_type": node, "inputs": inputs},
        "2": capture(["1", 0])}


@pytest.mark.parametrize("node", ["KSampler", "KSamplerAdvanced"])
def test_sampling_a_batch_too_big_for_memory_is_refused(session, free_memory, node):
    # EmptyLatentImage 512x512 batch_size=4096 on the tiny model raised a raw
    # "DefaultCPUAllocator: can't allocate memory" in the UNet's first layer; the same
    # check at a size that runs in a test: 2 latents of 8x8, 4 UNet rows with CFG, need
    # ~160 KiB of activations, and 64 KiB are "free" (the latents themselves fit)
    free_memory(64 << 10)
    message = fails(session, _sample(node, batch=2, size=64, seed=11))
    assert "sampling 2 latents of 8x8 latent pixels (4 UNet rows" in message
    assert "lower batch_size, width or height" in message


def test_unet_activation_estimate_passes_normal_sizes():
    from types import SimpleNamespace

    from nodes.diffusion.sampling import unet_activation_bytes

    sd15 = SimpleNamespace(dtype=torch.float32, config=SimpleNamespace(
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2))
    # 512x512 batch 4 with CFG: 8 rows of 64x64 latents, well under a GiB (a lower bound)
    assert unet_activation_bytes(sd15, 8, 64, 64) < 256 << 20
    # 4096 latents of 512x512 with CFG: far beyond any machine
    assert unet_activation_bytes(sd15, 8192, 64, 64) > 100 << 30


@pytest.mark.parametrize(("raised", "expected"), [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                  "can't allocate memory: you tried to allocate 4294967296 bytes."),
     "ValueError"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB"),
     "ValueError"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "RuntimeError"),
])
def test_sampling_out_of_memory_becomes_a_clear_error(session, monkeypatch, raised, expected):
    # the second line: an estimate only bounds the UNet's peak from below
    from nodes.diffusion import extensions

    def fail(self, unet):
        raise raised
    monkeypatch.setattr(extensions.UNetCall, "forward", fail)
    result = session.run(_sample("KSampler", batch=1, size=64, seed=12 + len(str(raised))))
    error = result.run.error
    assert error["exception_type"] == expected, error["exception_message"]
    if expected == "ValueError":
        message = error["exception_message"]
        assert "sampling 1 latents of 8x8 latent pixels ran out of memory" in message
        assert "lower batch_size, width or height" in message
    else:
        assert "cannot be multiplied" in error["exception_message"]


# --- the rest of the nodes: file names, odd latents and images, long prompts ----------

class FuzzLatent(Node):
    """A LATENT of any shape (``"1,4,8,8"``), filled with ``fill`` (a float's text)."""

    TYPE = "TestFuzzLatent"
    OUTPUTS = (Output("LATENT"),)
    shape: str = Input("1,4,8,8")
    fill: str = Input("0.5")

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        from nodes.diffusion.handles import Latent

        shape = tuple(int(s) for s in self.shape.split(","))
        return (Latent(torch.full(shape, float(self.fill))),)


def _node_errors(session: Session, prompt: dict[str, Any]) -> list[Any]:
    from engine.validation import PromptValidationError

    with pytest.raises(PromptValidationError) as info:
        session.run(prompt)
    return [i for i in info.value.issues if i.kind == "node_error"]


@pytest.mark.parametrize(("prefix", "expected"), [
    ("a" * 300, "at most 236"),  # was OSError "File name too long" with the whole path
    ("cats/" + "b" * 256, "at most 236"),
    ("a\x00b", "NUL"),  # was ValueError "embedded null byte"
])
def test_save_image_prefix_that_cannot_name_a_file(session, prefix, expected):
    (issue,) = _node_errors(session, {
        "1": tensor((1, 8, 8, 3)),
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                    "filename_prefix": prefix}}})
    assert issue.input_name == "filename_prefix" and expected in issue.message
    assert len(issue.message) < 200


def test_save_image_of_a_3d_tensor_is_refused(session):
    # a [H, W, C] tensor saved each of its 64 rows as a 64x3 grey image
    message = fails(session, {
        "1": tensor((64, 64, 3)),
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                    "filename_prefix": "fuzz3d"}}})
    assert "IMAGE [B, H, W, C]" in message and "(64, 64, 3)" in message


def test_training_save_name_too_long_is_a_validation_error(session):
    (issue,) = _node_errors(session, {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "1": tensor((1, 64, 64, 3)),
        "2": {"class_type": "TrainLoRA", "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2], "images": ["1", 0],
            "captions": "a red circle", "steps": 1, "resolution": 64,
            "save_name": "a" * 300}},
        "3": capture(["2", 2])})
    assert issue.input_name == "save_name" and "shorten it" in issue.message


@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (1, 16, 8, 8), (4, 8, 8), (0, 4, 8, 8)])
@pytest.mark.parametrize("node", ["VAEDecode", "VAEDecodeTiled", "VAEDecodeCircular"])
def test_vae_decode_of_a_latent_it_cannot_take(session, node, shape):
    # was torch's "expected input[1, 1, 8, 8] to have 4 channels" / "num_groups=32"
    message = fails(session, {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "1": {"class_type": "TestFuzzLatent", "inputs": {"shape": ",".join(map(str, shape))}},
        "2": {"class_type": node, "inputs": {"samples": ["1", 0], "vae": ["4", 2]}},
        "3": capture(["2", 0])})
    assert ("decodes latents [B, 4, H, W]" in message if 0 not in shape
            else "the latent is empty" in message)


def test_diffedit_mask_of_an_empty_image(session):
    # was "cannot reshape tensor of 0 elements into shape [0, -1, 1, 64]"
    message = fails(session, {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "b", "clip": ["4", 1]}},
        "1": tensor((0, 64, 64, 3)),
        "2": {"class_type": "DiffEditMask", "inputs": {
            "model": ["4", 0], "vae": ["4", 2], "image": ["1", 0], "source": ["6", 0],
            "target": ["7", 0], "negative": ["6", 0], "steps": 2, "num_maps_per_mask": 1}},
        "3": capture(["2", 0])})
    assert "the image is empty" in message


def test_time_edit_with_a_source_longer_than_the_destination(session):
    # a source prompt of more tokens than the destination's mapped past the 77 positions:
    # RuntimeError "The size of tensor a (84) must match the size of tensor b (77)"
    result = session.run({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "1": {"class_type": "TIMEModelEdit", "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "source_prompt": "../../etc/passwd",
            "destination_prompt": "a square"}},
        "2": capture(["1", 0])})
    assert result.ok, result.run.error


@pytest.mark.parametrize(("shape", "fill", "expected"), [
    ((1, 64, 64, 3), float("nan"), "NaN or infinite"),  # was "lower the learning rate"
    ((1, 0, 64, 3), 0.5, "is empty"),  # was a ZeroDivisionError
])
def test_training_images_checked_up_front(shape, fill, expected):
    from nodes.diffusion.train_common import prepare_pixels

    with pytest.raises(ValueError, match=expected):
        prepare_pixels(torch.full(shape, fill), 64)


def test_messages_quoting_a_huge_input_are_cut(session):
    """A message that quotes what the user typed keeps its head and tail, not 100k chars:
    in validation (PAG's layer ids) and at run time (the initializer, which needs the
    tokenizer)."""
    (issue,) = _node_errors(session, {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "1": {"class_type": "PerturbedAttentionGuidance", "inputs": {
            "model": ["4", 0], "layers": "(" + "x" * 100_000}},
        "3": capture(["1", 0])})
    message = fails(session, {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "5": tensor((1, 64, 64, 3)),
        "2": {"class_type": "TrainTextualInversion", "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2], "images": ["5", 0],
            "captions": "a <p>", "steps": 1, "resolution": 64,
            "placeholder_token": "<p>", "initializer_token": "circle square " * 10_000}},
        "6": capture(["2", 0])})
    for text in (issue.message, message):
        assert len(text) <= 2100 and "characters cut" in text, text[:300]
    assert issue.input_name == "layers" and issue.message.startswith("layer id '(xxx")
    assert message.endswith("(e.g. shape, dog, style)")


def test_execution_error_messages_are_cut(session):
    from engine.outputs import MESSAGE_CHARS

    message = fails(session, {"1": {"class_type": "TestLoudFailure", "inputs": {}},
                              "2": capture(["1", 0])})
    assert len(message) < MESSAGE_CHARS + 50 and message.startswith("bad: yyy")


@pytest.mark.parametrize("node", ["KSampler", "KSamplerAdvanced"])
def test_sampling_nan_latents_warns_once(session, node):
    """A NaN input latent (img2img) would come out black without a word: it warns, once,
    naming the step and what to change."""
    inputs = {"model": ["4", 0], "positive": ["5", 0], "negative": ["5", 0],
              "latent_image": ["1", 0], "steps": 3, "cfg": 2.0}
    if node == "KSampler":
        inputs |= {"seed": 0, "denoise": 0.5}
    else:
        inputs |= {"noise_seed": 0, "add_noise": "enable", "start_at_step": 1,
                   "end_at_step": 3, "return_with_leftover_noise": "disable"}
    result = session.run({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "x"}},
        "1": {"class_type": "TestFuzzLatent", "inputs": {"shape": "1,4,8,8", "fill": "nan"}},
        "2": {"class_type": node, "inputs": inputs},
        "3": capture(["2", 0])}, keep_events=True)
    assert result.ok, result.run.error
    warnings = [d["message"] for name, d in result.events if name == "node_warning"]
    assert len(warnings) == 1 and warnings[0].startswith("the latents became NaN or infinite "
                                                         "at step 1 of "), warnings
    assert "--dtype" in warnings[0]


@pytest.mark.parametrize("cfg", [1.0, 7.0])
def test_a_latent_the_unet_shrinks_to_one_pixel_is_a_clear_error(session, cfg):
    """The tiny UNet (one channel per norm group) cannot normalise a 1x1 level: a
    16x16 image (a 2x2 latent) is refused by name, whatever the batch; 16x64 runs."""
    from tests.graph_nodes import run_error, tiny_txt2img

    message = run_error(session, tiny_txt2img(size=(16, 16), cfg=cfg))
    assert "shrinks it to one pixel" in message and "2x2" in message
    assert session.run(tiny_txt2img(size=(16, 64), cfg=cfg)).ok
