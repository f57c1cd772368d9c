"""Load Hypernetwork through the graph: strength 0 is the plain model, strength 1 equals
diffusers' StableDiffusionPipeline whose attention layers feed their key/value
projections the context transformed by the MLPs, written out here by hand."""

from __future__ import annotations

import uuid
from collections import OrderedDict

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from engine import PromptValidationError
from engine.session import Session
from nodes.diffusion.hypernetwork import build_mlp, save_hypernetwork
from tests.graph_nodes import CAPTURED, reference_pipeline, registry_with_capture, run_error

PROMPT = "a red circle at the top left"
NEGATIVE = "blurry"
STEPS = 4
#: the tiny UNet's attention widths: 32 and 64 channels in self-attention, a 32-wide
#: text context in cross-attention
DIMS = (32, 64)


def random_pair(dim: int, seed: int) -> tuple[OrderedDict, OrderedDict]:
    """AUTOMATIC1111's layer structure 1, 2, 1 (``linear.0``, ReLU, ``linear.2``) for k, v."""
    g = torch.Generator().manual_seed(seed)
    pair = []
    for _ in range(2):
        pair.append(OrderedDict([
            ("linear.0.weight", torch.randn(2 * dim, dim, generator=g) * 0.3),
            ("linear.0.bias", torch.randn(2 * dim, generator=g) * 0.1),
            ("linear.2.weight", torch.randn(dim, 2 * dim, generator=g) * 0.3),
            ("linear.2.bias", torch.randn(dim, generator=g) * 0.1)]))
    return pair[0], pair[1]


WEIGHTS = {dim: random_pair(dim, seed) for seed, dim in enumerate(DIMS)}


@pytest.fixture(scope="module")
def files(models_dir):
    folder = models_dir / "hypernetworks"
    folder.mkdir(exist_ok=True)
    save_hypernetwork(folder / "tiny-hn.safetensors", WEIGHTS, activation_func="relu",
                      is_layer_norm=False)
    # AUTOMATIC1111's pickle: int keys, a [k, v] list of state dicts, options beside them
    torch.save({**{dim: list(pair) for dim, pair in WEIGHTS.items()},
                "activation_func": "relu", "is_layer_norm": False, "use_dropout": False,
                "layer_structure": [1, 2, 1], "name": "tiny-hn", "step": 10},
               folder / "tiny-hn.pt")
    save_hypernetwork(folder / "sd15-hn.safetensors",
                      {768: random_pair(768, 5)}, activation_func="relu")
    save_hypernetwork(folder / "odd-act.safetensors", {32: WEIGHTS[32]},
                      activation_func="gelu-ish")
    return folder


@pytest.fixture(scope="module")
def pickle_session(models_dir, files, tmp_path_factory):
    return Session(tmp_path_factory.mktemp("hn-pickle"), models_dir=models_dir, device="cpu",
                   allow_pickle=True, registry=registry_with_capture())


def hn_prompt(name: str | None = "tiny-hn.safetensors", strength: float = 1.0, seed: int = 3):
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                            "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": STEPS, "cfg": 7.5,
            "sampler_name": "ddim", "scheduler": "normal", "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["8", 0],
                                                       "key": uuid.uuid4().hex}},
    }
    if name is not None:
        prompt["20"] = {"class_type": "HypernetworkLoader", "inputs": {
            "model": ["4", 0], "hypernetwork_name": name, "strength": strength}}
        prompt["3"]["inputs"]["model"] = ["20", 0]
    return prompt


def run_image(session, prompt) -> np.ndarray:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["10"]["inputs"]["key"]).numpy()


def mlp_by_hand(x: torch.Tensor, weights: OrderedDict) -> torch.Tensor:
    """linear.2(relu(linear.0(x))), in float32."""
    h = x.float() @ weights["linear.0.weight"].T + weights["linear.0.bias"]
    return torch.relu(h) @ weights["linear.2.weight"].T + weights["linear.2.bias"]


class HandHypernetworkProcessor:
    """diffusers' classic ``AttnProcessor`` with the key/value inputs changed by hand."""

    def __init__(self, strength: float):
        self.strength = strength

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        assert attn.spatial_norm is None and attn.group_norm is None and hidden_states.ndim == 3
        residual = hidden_states
        batch, tokens, _ = (hidden_states if encoder_hidden_states is None
                            else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key_input = value_input = context
        if context.shape[-1] in WEIGHTS:
            wk, wv = WEIGHTS[context.shape[-1]]
            key_input = context + self.strength * mlp_by_hand(context, wk)
            value_input = context + self.strength * mlp_by_hand(context, wv)
        key = attn.head_to_batch_dim(attn.to_k(key_input))
        value = attn.head_to_batch_dim(attn.to_v(value_input))
        probs = attn.get_attention_scores(query, key, attention_mask)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@pytest.fixture(scope="module")
def reference(tiny_model_paths):
    pipe = reference_pipeline(StableDiffusionPipeline, tiny_model_paths["diffusers"])

    def run(strength: float, seed: int = 3) -> np.ndarray:
        pipe.unet.set_attn_processor(HandHypernetworkProcessor(strength))
        return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                    guidance_scale=7.5, height=64, width=64, output_type="np",
                    generator=torch.Generator("cpu").manual_seed(seed)).images
    return run


def test_strength_zero_is_the_plain_model(session, files):
    plain = run_image(session, hn_prompt(None))
    assert np.array_equal(run_image(session, hn_prompt(strength=0.0)), plain)


def test_strength_one_equals_the_hand_written_reference(session, files, reference):
    got = run_image(session, hn_prompt(strength=1.0))
    want = reference(1.0)
    assert np.abs(got - want).max() <= 1e-4
    plain = run_image(session, hn_prompt(None))
    assert np.abs(got - plain).max() > 0.05  # the hypernetwork changes the picture


def test_negative_strength_matches_too(session, files, reference):
    got = run_image(session, hn_prompt(strength=-0.5, seed=5))
    assert np.abs(got - reference(-0.5, seed=5)).max() <= 1e-4


def test_pickle_file_needs_the_opt_in_and_matches_safetensors(session, pickle_session, files):
    with pytest.raises(PromptValidationError, match="pickle"):
        session.run(hn_prompt("tiny-hn.pt"))
    from_pickle = run_image(pickle_session, hn_prompt("tiny-hn.pt", strength=0.7))
    from_safetensors = run_image(pickle_session, hn_prompt(strength=0.7))
    assert np.array_equal(from_pickle, from_safetensors)


def test_mismatched_or_unsupported_files_are_clear_errors(session, files):
    message = run_error(session, hn_prompt("sd15-hn.safetensors"))
    assert "widths [768]" in message and "another model family" in message
    message = run_error(session, hn_prompt("odd-act.safetensors"))
    assert "activation 'gelu-ish' is not supported" in message


def comfyui_mlp(w: OrderedDict, activation, is_layer_norm: bool, activate_output: bool):
    """ComfyUI's layer order (comfy_extras/nodes_hypernetwork.py), restated: walk the
    ``.weight`` names; "last layer" is the last name, LayerNorms included; each Linear is
    followed by the activation (unless last and not activate_output), then its LayerNorm."""
    names = [k[:-len(".weight")] for k in w if k.endswith(".weight")]

    def run(x):
        i = 0
        while i < len(names):
            x = x @ w[f"{names[i]}.weight"].T + w[f"{names[i]}.bias"]
            if i != len(names) - 1 or activate_output:
                x = activation(x)
            if is_layer_norm:
                i += 1
                x = torch.nn.functional.layer_norm(x, x.shape[-1:], w[f"{names[i]}.weight"],
                                                   w[f"{names[i]}.bias"])
            i += 1
        return x
    return run


def test_layer_norm_and_activate_output_follow_comfyui():
    g = torch.Generator().manual_seed(0)
    w = OrderedDict([
        ("linear.0.weight", torch.randn(8, 4, generator=g)), ("linear.0.bias", torch.randn(8)),
        ("linear.2.weight", torch.randn(8, generator=g)), ("linear.2.bias", torch.randn(8)),
        ("linear.3.weight", torch.randn(4, 8, generator=g)), ("linear.3.bias", torch.randn(4)),
        ("linear.5.weight", torch.randn(4, generator=g)), ("linear.5.bias", torch.randn(4))])
    plain = OrderedDict((k, v) for k, v in w.items() if k.startswith(("linear.0.", "linear.3.")))
    x = torch.randn(3, 5, 4, generator=g)
    for activate_output in (False, True):
        mlp = build_mlp(w, 4, "tanh", is_layer_norm=True, activate_output=activate_output)
        torch.testing.assert_close(mlp(x), comfyui_mlp(w, torch.tanh, True, activate_output)(x))
        # with layer norm ComfyUI activates the last Linear either way (AUTOMATIC1111 only
        # with activate_output): the corner where the two differ
        mlp = build_mlp(plain, 4, "tanh", is_layer_norm=False, activate_output=activate_output)
        torch.testing.assert_close(mlp(x), comfyui_mlp(plain, torch.tanh, False,
                                                       activate_output)(x))
    with_ln = build_mlp(w, 4, "tanh", is_layer_norm=True, activate_output=False)
    h = torch.tanh(x @ w["linear.0.weight"].T + w["linear.0.bias"])
    h = torch.nn.functional.layer_norm(h, (8,), w["linear.2.weight"], w["linear.2.bias"])
    h = torch.tanh(h @ w["linear.3.weight"].T + w["linear.3.bias"])  # activated, as ComfyUI
    h = torch.nn.functional.layer_norm(h, (4,), w["linear.5.weight"], w["linear.5.bias"])
    torch.testing.assert_close(with_ln(x), h)
