"""Prompt weighting syntax, its math, and prompts longer than 77 tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.session import Session, Workflow
from nodes.conditioning import encode_text
from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel, Latent, TextEncoder
from nodes.diffusion.prompt_weighting import (
    WeightedText,
    match_token_lengths,
    parse_prompt_weights,
)
from nodes.diffusion.tiny import build_tiny_pipeline

W = WeightedText
WORKFLOW = Path("workflows/prompt_weighting.json")


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


@pytest.fixture(scope="module")
def clip(pipe) -> TextEncoder:
    return TextEncoder(pipe.text_encoder, pipe.tokenizer)


def approx(spans: list[WeightedText]) -> list[tuple[str, float]]:
    return [(s.text, round(s.weight, 6)) for s in spans]


@pytest.mark.parametrize(("prompt", "expected"), [
    ("a cat", [("a cat", 1.0)]),
    ("a (red:1.5) cat", [("a ", 1.0), ("red", 1.5), (" cat", 1.0)]),
    ("( red : 0.5 )", [(" red ", 0.5)]),
    ("(red)", [("red", 1.1)]),
    ("((red))", [("red", 1.21)]),
    ("[red]", [("red", round(1 / 1.1, 6))]),
    ("[[red]]", [("red", round(1 / 1.21, 6))]),
    ("(a [b]:2)", [("a ", 2.0), ("b", round(2 / 1.1, 6))]),
    ("((a:1.5) b)", [("a", 1.65), (" b", 1.1)]),
    ("(a:-1)", [("a", -1.0)]),
    (r"\(a\) \[b\]", [("(a) [b]", 1.0)]),
    (r"(a\):2)", [("a)", 2.0)]),
    (r"a \\ b", [("a \\ b", 1.0)]),
    ("a) b]", [("a) b]", 1.0)]),  # closers without an open group are text
    ("(open", [("open", 1.1)]),  # an open group runs to the end
    ("(a:x)", [("a:x", 1.1)]),  # not a number: the colon is text
    ("(embedding:glow:1.2)", [("embedding:glow", 1.2)]),
    ("(a:1.0) b", [("a b", 1.0)]),  # equal neighbours merge
    ("", [("", 1.0)]),
])
def test_parser(prompt, expected):
    assert approx(parse_prompt_weights(prompt)) == expected


def test_plain_prompts_equal_diffusers_encode_prompt(pipe, clip):
    for text in ("a red circle at the top left on a white background", "", "blurry, 4k"):
        ref, _ = pipe.encode_prompt(text, "cpu", 1, False)
        assert torch.equal(encode_text(clip, text), ref), text
    ref, _ = pipe.encode_prompt("a red circle on a white background", "cpu", 1, False)
    assert torch.equal(encode_text(clip, "a (red:1.0) circle on a (white) background".replace(
        "(white)", "(white:1)")), ref)


def _ids(pipe, text: str) -> list[int]:
    return pipe.tokenizer(text, add_special_tokens=False).input_ids


def _encode_ids(pipe, ids: list[int]) -> torch.Tensor:
    tok = pipe.tokenizer
    padded = [tok.bos_token_id, *ids, tok.eos_token_id]
    padded += [tok.pad_token_id] * (77 - len(padded))
    with torch.no_grad():
        return pipe.text_encoder(torch.tensor([padded]))[0]


def test_weight_math_against_a_hand_written_reference(pipe, clip):
    head, word, tail = _ids(pipe, "a photo of "), _ids(pipe, "word"), _ids(pipe, ", bright")
    z = _encode_ids(pipe, head + word + tail)[0]
    z_empty = _encode_ids(pipe, [])[0]
    start = 1 + len(head)  # after BOS
    expected = z.clone()
    for j in range(start, start + len(word)):
        expected[j] = z_empty[j] + (z[j] - z_empty[j]) * 1.5  # ComfyUI's rule
    ours = encode_text(clip, "a photo of (word:1.5), bright")[0]
    assert torch.allclose(ours, expected, atol=1e-6, rtol=0)
    untouched = [j for j in range(77) if not start <= j < start + len(word)]
    assert torch.equal(ours[untouched], z[untouched])  # weight-1 tokens bit for bit

    weights = torch.ones(77)
    weights[start:start + len(word)] = 1.5
    scaled = z * weights[:, None]
    a1111 = scaled * (z.mean() / scaled.mean())  # A1111: scale, then restore the mean
    ours = encode_text(clip, "a photo of (word:1.5), bright", weighting="a1111")[0]
    assert torch.allclose(ours, a1111, atol=1e-6, rtol=0)


def test_long_prompt_is_encoded_in_75_token_windows(pipe, clip):
    words = ["red", "green", "blue", "cat", "dog", "house", "tree", "sky"]
    assert all(len(_ids(pipe, w)) == 1 for w in words)
    text = " ".join(words[i % len(words)] for i in range(200))
    ids = _ids(pipe, text)
    assert len(ids) == 200
    ours = encode_text(clip, text)
    assert ours.shape == (1, 3 * 77, 32)
    for k, (a, b) in enumerate([(0, 75), (75, 150), (150, 200)]):
        window = ours[:, 77 * k:77 * (k + 1)]
        assert torch.allclose(window, _encode_ids(pipe, ids[a:b]), atol=1e-6, rtol=0), k
    # diffusers truncates to the first window, which is exactly ours.
    ref, _ = pipe.encode_prompt(text, "cpu", 1, False)
    assert torch.equal(ours[:, :77], ref)


def test_shorter_conditioning_is_repeated_without_changing_the_result(pipe, clip):
    from nodes.diffusion.sampling import SamplingParams, sample
    from nodes.diffusion.schedulers import make_scheduler

    model = DiffusionModel(pipe.unet, dict(pipe.scheduler.config))
    pos = encode_text(clip, "a red circle")
    neg = encode_text(clip, "blurry")
    a, b = match_token_lengths([pos.repeat(1, 3, 1), neg.repeat(1, 2, 1)])
    assert a.shape == b.shape == (1, 6 * 77, 32)
    assert torch.equal(b[:, :77], neg) and torch.equal(b[:, 77 * 5:], neg)

    def image(p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return sample(model, make_scheduler("euler", "normal", model.scheduler_config),
                      Conditioning((CondEntry(p),)), Conditioning((CondEntry(n),)),
                      Latent(torch.zeros(1, 4, 8, 8)), SamplingParams(seed=1, steps=3, cfg=7.5))

    base = image(pos, neg)
    repeated = image(pos.repeat(1, 2, 1), neg)  # 154 vs 77 tokens
    # Equal up to float rounding (latents are ~20 in size here).
    assert (repeated - base).abs().max() <= 1e-5 * base.abs().max()


def test_weighted_prompt_workflow_runs(models_dir, tmp_path):
    session = Session(tmp_path, models_dir=models_dir, device="cpu")
    wf = Workflow.load(WORKFLOW)
    session.validate(wf)
    prompt = json.loads(json.dumps(wf.prompt))
    positive = prompt["6"]["inputs"]["text"]
    assert {round(s.weight, 2) for s in parse_prompt_weights(positive)} > {1.0}
    prompt["3"]["inputs"]["steps"] = 2
    result = session.run(prompt)
    assert result.ok, result.run.error
    assert result.image_paths


def test_prompts_are_bounded_when_validated_and_when_encoded(tmp_path):
    """A 4 MiB prompt took the worker to 3 GiB before sampling (a drill's 20 MiB one
    made the host run out of memory): text and windows are bounded, with the fix named."""
    from engine import Environment
    from nodes.diffusion.embeddings import prompt_problems
    from nodes.diffusion.prompt_weighting import (
        MAX_PROMPT_CHARS,
        MAX_PROMPT_WINDOWS,
        PromptTokens,
        split_windows,
    )

    env = Environment.create(tmp_path, device="cpu")
    [(severity, message)] = prompt_problems(env, "a " * (MAX_PROMPT_CHARS // 2 + 1))
    assert severity == "error" and "shorten it" in message
    assert prompt_problems(env, "a red circle") == []
    many = MAX_PROMPT_WINDOWS * 75
    tokens = PromptTokens(ids=[7] * many, weights=[1.0] * many, vectors={})
    assert len(split_windows(tokens, bos=1, eos=2, pad=2)) == MAX_PROMPT_WINDOWS
    tokens = PromptTokens(ids=[7] * (many + 1), weights=[1.0] * (many + 1), vectors={})
    with pytest.raises(ValueError, match="at most 128 windows"):
        split_windows(tokens, bos=1, eos=2, pad=2)
