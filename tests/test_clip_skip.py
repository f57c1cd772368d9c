"""CLIP Set Last Layer ("clip skip") through the graph equals diffusers' ``clip_skip``."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch

from nodes.conditioning import CLIPSetLastLayer, encode_text
from nodes.diffusion.handles import TextEncoder
from nodes.diffusion.loading import load_components
from tests.graph_nodes import CAPTURED, reference_pipeline

PROMPT = "a red circle at the top left"
NEGATIVE = "blurry"
STEPS = 5


@pytest.fixture(scope="module")
def pipe(tiny_model_paths):
    pipe = reference_pipeline(diffusers.StableDiffusionPipeline, tiny_model_paths["diffusers"])
    encoder = pipe.text_encoder
    # diffusers 0.42 reads ``text_encoder.text_model.final_layer_norm`` for clip_skip, a
    # level transformers >= 5.6 removed; point it at the same layer norm (set without
    # registering a submodule, so the model's state dict is unchanged).
    object.__setattr__(encoder, "text_model",
                       SimpleNamespace(final_layer_norm=encoder.final_layer_norm))
    return pipe


def graph(layer: int | None, *, ckpt="steerflow-tiny", width=64, height=64, seed=5,
          negative_too: bool = True) -> dict:
    clip: list = ["ckpt", 1]
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": clip}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": clip}},
        "lat": {"class_type": "EmptyLatentImage",
                "inputs": {"width": width, "height": height, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": seed, "steps": STEPS, "cfg": 7.5,
            "sampler_name": "ddim", "scheduler": "normal", "positive": ["pos", 0],
            "negative": ["neg", 0], "latent_image": ["lat", 0], "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["ckpt", 2]}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["dec", 0],
                                                        "key": uuid.uuid4().hex}},
    }
    if layer is not None:
        prompt["skip"] = {"class_type": "CLIPSetLastLayer",
                          "inputs": {"clip": ["ckpt", 1], "stop_at_clip_layer": layer}}
        prompt["pos"]["inputs"]["clip"] = ["skip", 0]
        if negative_too:
            prompt["neg"]["inputs"]["clip"] = ["skip", 0]
    return prompt


def run(session, prompt) -> np.ndarray:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["cap"]["inputs"]["key"]).numpy()


def reference(pipe, clip_skip, *, width=64, height=64, seed=5, negative_too=False
              ) -> np.ndarray:
    """The pipeline's image. Its ``clip_skip`` applies to the prompt only (diffusers encodes
    the negative prompt from the last layer); ComfyUI's CLIP, and ours, encode every
    prompt through the chosen layer, which ``negative_too`` reproduces with
    ``encode_prompt(clip_skip=...)`` for both."""
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.base_config)
    kwargs: dict = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "clip_skip": clip_skip}
    if negative_too:
        def embed(text):
            return pipe.encode_prompt(text, "cpu", 1, False, clip_skip=clip_skip)[0]
        kwargs = {"prompt_embeds": embed(PROMPT), "negative_prompt_embeds": embed(NEGATIVE)}
    return pipe(num_inference_steps=STEPS, guidance_scale=7.5, width=width, height=height,
                output_type="np", generator=torch.Generator("cpu").manual_seed(seed),
                **kwargs).images


@pytest.mark.parametrize(("ckpt", "width", "height"), [
    ("steerflow-tiny", 64, 64),
    ("steerflow-tiny.safetensors", 64, 64),
    ("steerflow-tiny", 64, 40),
])
def test_penultimate_layer_matches_diffusers_clip_skip_1(session, pipe, ckpt, width, height):
    # Only the prompt through CLIP Set Last Layer: exactly the pipeline's clip_skip=1 call.
    ours = run(session, graph(-2, ckpt=ckpt, width=width, height=height, negative_too=False))
    ref = reference(pipe, 1, width=width, height=height)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4
    # ... and clip skip changes the image (the test would pass vacuously otherwise).
    assert np.abs(ours - reference(pipe, None, width=width, height=height)).max() > 1e-3
    # Both prompts through it (the usual wiring, ComfyUI's semantics).
    both = run(session, graph(-2, ckpt=ckpt, width=width, height=height))
    ref = reference(pipe, 1, width=width, height=height, negative_too=True)
    assert np.abs(both - ref).max() <= 1e-4


def test_last_layer_is_the_plain_encoding(session, pipe):
    ours = run(session, graph(-1))
    assert np.abs(ours - reference(pipe, None)).max() <= 1e-4
    assert np.abs(ours - run(session, graph(None))).max() == 0


def test_layer_past_the_encoders_depth_falls_back_to_the_last_as_comfyui(
        tiny_model_paths, caplog):
    loaded = load_components(tiny_model_paths["diffusers"])
    clip = TextEncoder(loaded.text_encoder, loaded.tokenizer)
    plain = encode_text(clip, PROMPT)
    deep = CLIPSetLastLayer(clip=clip, stop_at_clip_layer=-24).execute(None)[0]
    assert torch.equal(encode_text(deep, PROMPT), plain)
    assert "past the text encoder's 2 layers" in caplog.text


def test_the_node_returns_a_new_handle_and_weights_follow_the_layer(tiny_model_paths):
    loaded = load_components(tiny_model_paths["diffusers"])
    clip = TextEncoder(loaded.text_encoder, loaded.tokenizer)
    skipped = CLIPSetLastLayer(clip=clip, stop_at_clip_layer=-2).execute(None)[0]
    assert clip.stop_at_clip_layer is None and skipped.stop_at_clip_layer == -2
    assert skipped.text_encoder is clip.text_encoder
    enc = loaded.text_encoder
    with torch.no_grad():
        ids = loaded.tokenizer(PROMPT, padding="max_length", max_length=77,
                               return_tensors="pt").input_ids
        hidden = enc(ids, output_hidden_states=True).hidden_states[-2]
        expected = enc.final_layer_norm(hidden)
    assert torch.allclose(encode_text(skipped, PROMPT), expected, atol=1e-6)
    # Weighted prompts take their empty-prompt reference from the same layer.
    weighted = encode_text(skipped, "(red:1.3) circle")
    assert torch.isfinite(weighted).all()
    assert not torch.allclose(weighted, encode_text(clip, "(red:1.3) circle"))


def test_bounds_are_comfyuis(session):
    from engine.validation import PromptValidationError

    for bad in (0, -25):
        with pytest.raises(PromptValidationError, match="stop_at_clip_layer"):
            session.validate(graph(bad))
