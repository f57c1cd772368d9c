"""Apply Style Model, its key weights and CLIP Text Encode (Controlnet)'s ControlNet text with
extreme but in-bounds inputs: a result or a clear ValueError, never a raw torch error."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nodes.diffusion.clip_vision import ClipVisionOutput
from nodes.diffusion.handles import CondEntry, Conditioning
from nodes.diffusion.style_adapter import MAX_STYLE_IMAGES, StyleAdapter, StyleModel, apply_style
from nodes.diffusion.token_weights import (
    CONTROLNET_TEXT,
    KEY_WEIGHTS,
    KeyWeights,
    controlnet_contexts,
    entry_weights,
)
from nodes.style_model import StyleModelApply


def style_model() -> StyleModel:
    torch.manual_seed(0)
    return StyleModel(StyleAdapter(width=16, context_dim=8, layers=1, tokens=8).eval(), "tiny")


def output(images: int, tokens: int = 5, width: int = 16) -> ClipVisionOutput:
    hidden = torch.randn(images, tokens, width)
    return ClipVisionOutput(torch.zeros(images, 4), hidden, hidden)


def apply(cond: Conditioning, strength: float, strength_type: str, images: int = 1
          ) -> Conditioning:
    return StyleModelApply(conditioning=cond, style_model=style_model(),
                           clip_vision_output=output(images), strength=strength,
                           strength_type=strength_type).execute(None)[0]


@pytest.mark.parametrize("strength_type", ["multiply", "attn_bias"])
@pytest.mark.parametrize("strength", [0.0, 0.001, 10.0])
def test_any_strength_gives_finite_tokens_and_weights(strength, strength_type):
    (entry,) = apply(Conditioning((CondEntry(torch.randn(1, 77, 8)),)), strength,
                     strength_type).entries
    assert entry.embeds.shape == (1, 154, 8) and bool(entry.embeds.isfinite().all())
    weights = entry.options[KEY_WEIGHTS]
    want = strength if strength_type == "attn_bias" else 1.0
    assert torch.allclose(weights[77:85], torch.full((8,), want))
    assert not weights[85:].any()


def test_a_long_prompt_with_a_batch_of_images_and_rows():
    cond = Conditioning((CondEntry(torch.randn(2, 154, 8).half()),))
    (entry,) = apply(cond, 1.0, "multiply", images=3).entries
    assert entry.embeds.shape == (2, 231, 8) and entry.embeds.dtype == torch.float16
    assert torch.equal(entry.embeds[0, 154:178], entry.embeds[1, 154:178])


def test_one_token_images_and_too_many_images():
    model = style_model()
    assert model.get_cond(output(1, tokens=1)).shape == (1, 8, 8)
    with pytest.raises(ValueError, match="at most"):
        model.get_cond(output(MAX_STYLE_IMAGES + 1, tokens=1))


def test_bad_strength_type_and_empty_conditioning():
    with pytest.raises(ValueError, match="strength_type"):
        apply_style(Conditioning((CondEntry(torch.zeros(1, 77, 8)),)), torch.zeros(1, 8, 8),
                    1.0, "add")
    with pytest.raises(ValueError, match="conditioning is empty"):
        apply(Conditioning(()), 1.0, "multiply")


def test_weights_shorter_or_longer_than_the_tokens():
    short = CondEntry(torch.zeros(1, 10, 8), {KEY_WEIGHTS: torch.tensor([0.5, 0.0])})
    assert entry_weights(short).tolist() == [0.5, 0.0] + [1.0] * 8
    long = CondEntry(torch.zeros(1, 2, 8), {KEY_WEIGHTS: torch.tensor([0.5, 0.0, 2.0])})
    assert entry_weights(long).tolist() == [0.5, 0.0]


def test_a_row_whose_keys_are_all_masked_keeps_its_attention():
    from nodes.diffusion.attention import AttentionCall, AttentionLayer

    entry = CondEntry(torch.zeros(1, 4, 8), {KEY_WEIGHTS: torch.zeros(4)})
    run = SimpleNamespace(entries={"cond": entry})
    call = AttentionCall(AttentionLayer.parse("down_blocks.0.attn2.processor"), run, ("cond",),
                         heads=2, query_tokens=3, key_tokens=4, _rows=2)
    probs = torch.softmax(torch.randn(2, 3, 4), dim=-1)
    out = KeyWeights().hook.on_probs(call, probs)
    assert torch.equal(out, probs)


def test_a_controlnet_text_batch_that_does_not_fit_the_rows():
    entry = CondEntry(torch.zeros(1, 77, 8), {CONTROLNET_TEXT: torch.zeros(3, 77, 8)})
    run = SimpleNamespace(attention=SimpleNamespace(roles=("cond",)), entries={"cond": entry})
    call = SimpleNamespace(encoder_hidden_states=torch.zeros(2, 77, 8))
    with pytest.raises(ValueError, match="batch of 3 for 2 rows"):
        controlnet_contexts(run, call, 0, 2)


@pytest.mark.parametrize(("change", "words"), [
    ({"style_embedding": torch.zeros(1, 100_000, 16)}, "tokens is 100000"),
    ({"style_embedding": torch.zeros(1, 0, 16)}, "tokens is 0"),
    ({"proj": torch.full((16, 8), float("nan"))}, "not finite"),
    ({"proj": torch.zeros(16, 8, dtype=torch.int8)}, "not finite floating-point"),
])
def test_hostile_style_model_files_are_refused_on_load(tmp_path, change, words):
    """Sizes a file declares are bounded and its weights must be finite floats: a
    100 000-token file once loaded and then asked for 320 GB."""
    from safetensors.torch import save_file

    from nodes.diffusion.style_adapter import load_style_model

    state = {k: v.contiguous() for k, v in style_model().model.state_dict().items()}
    save_file({**state, **change}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=words):
        load_style_model(tmp_path / "bad.safetensors")
