"""Prompt encoding: text → CONDITIONING with the checkpoint's CLIP text encoder.

A prompt may weight its words (``(red:1.3)``, ``(red)``, ``[red]``; see
:mod:`nodes.diffusion.prompt_weighting`), use learned embeddings
(``embedding:name``; see :mod:`nodes.diffusion.embeddings`) and run past 77
tokens (encoded in 75-token windows). A prompt with none of these gives exactly
diffusers' ``encode_prompt`` result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.embeddings import (
    EmbeddingLibrary,
    embedding_names,
    embedding_problems,
    find_embedding,
    injected_vectors,
)
from nodes.diffusion.handles import CondEntry, Conditioning, TextEncoder
from nodes.diffusion.lora import patched
from nodes.diffusion.prompt_weighting import (
    EmbeddingLookup,
    PromptTokens,
    Window,
    apply_weights,
    parse_prompt_weights,
    split_windows,
    tokenize_weighted,
)

if TYPE_CHECKING:
    import torch


def _windows(tokenizer: Any, tokens: PromptTokens) -> list[Window]:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return split_windows(tokens, bos=tokenizer.bos_token_id, eos=eos, pad=pad,
                         window=tokenizer.model_max_length - 2)


def _encode_windows(encoder: Any, windows: list[Window]) -> torch.Tensor:
    """Last hidden states ``[windows, 77, dim]``, embedding vectors injected."""
    import torch

    device = encoder.device
    ids = torch.tensor([w.ids for w in windows], dtype=torch.long, device=device)
    attention_mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        attention_mask = (torch.arange(ids.shape[1], device=device)[None, :]
                          < torch.tensor([w.length for w in windows], device=device)[:, None]
                          ).long()
    slots = [(b, pos, vec) for b, w in enumerate(windows) for pos, vec in w.vectors.items()]
    positions = torch.tensor([(b, pos) for b, pos, _ in slots], dtype=torch.long,
                             device=device).reshape(-1, 2)
    vectors = torch.stack([vec for _, _, vec in slots]) if slots else torch.empty(0)
    with injected_vectors(encoder, positions, vectors):
        return encoder(ids, attention_mask=attention_mask)[0]


def encode_text(clip: TextEncoder, text: str, embeddings: EmbeddingLookup | None = None, *,
                weighting: str = "comfy") -> torch.Tensor:
    """Embeddings ``[1, 77 * windows, dim]`` of a prompt (weights, embeddings, long prompts).

    Without weights or embeddings and within 75 tokens this is diffusers'
    ``encode_prompt``. ``embeddings`` resolves ``embedding:name`` (None: plain text);
    ``weighting`` is ``"comfy"`` or ``"a1111"`` (see ``apply_weights``).
    """
    import torch

    tokenizer, encoder = clip.tokenizer, clip.text_encoder
    tokens = tokenize_weighted(tokenizer, parse_prompt_weights(text), embeddings)
    windows = _windows(tokenizer, tokens)
    with torch.no_grad(), patched(encoder, clip.patches):
        z = _encode_windows(encoder, windows)
        weights = torch.tensor([w.weights for w in windows])
        if bool((weights != 1).any()):
            z_empty = (_encode_windows(encoder, _windows(tokenizer, PromptTokens()))
                       if weighting == "comfy" else None)
            z = apply_weights(z, weights, z_empty=z_empty, method=weighting)
    return z.reshape(1, -1, z.shape[-1])


class CLIPTextEncode(Node):
    """Encode a prompt into conditioning for the sampler.

    ``(word:1.3)``, ``(word)`` (x1.1) and ``[word]`` (/1.1) weight words (ComfyUI's
    math); ``\\(`` is a literal bracket; ``embedding:name`` uses a textual-inversion
    embedding from models/embeddings; prompts past 75 tokens are encoded in windows.
    """

    TYPE = "CLIPTextEncode"
    DISPLAY_NAME = "Encode Prompt"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    text: str = Input("", multiline=True, description="The prompt")
    clip: TextEncoder = Input(type="CLIP")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        text = inputs.get("text")
        return [("text", p) for p in embedding_problems(env, text)] if isinstance(text, str) else []

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        from nodes.models import path_fingerprint

        text = inputs.get("text")
        if not isinstance(text, str):
            return None
        paths = [find_embedding(env, name) for name in embedding_names(text)]
        return [path_fingerprint(p) for p in paths if p is not None] or None

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        dim = int(self.clip.text_encoder.get_input_embeddings().weight.shape[1])
        embeds = encode_text(self.clip, self.text, EmbeddingLibrary(ctx.env, dim))
        return (Conditioning((CondEntry(embeds),)),)


class ConditioningCombine(Node):
    """Combine two conditionings: the sampler averages their noise predictions
    (composable diffusion's AND; each entry weighted by its strength, default 1)."""

    TYPE = "ConditioningCombine"
    DISPLAY_NAME = "Conditioning Combine"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning_1: Conditioning = Input(type="CONDITIONING")
    conditioning_2: Conditioning = Input(type="CONDITIONING")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        return (Conditioning((*self.conditioning_1.entries, *self.conditioning_2.entries)),)


class ConditioningSetStrength(Node):
    """Set the weight of a conditioning's entries when they are combined with others."""

    TYPE = "ConditioningSetStrength"
    DISPLAY_NAME = "Conditioning Set Strength"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning: Conditioning = Input(type="CONDITIONING")
    strength: float = Input(1.0, min=0.0, max=10.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        entries = tuple(CondEntry(e.embeds, {**e.options, "strength": self.strength})
                        for e in self.conditioning.entries)
        return (Conditioning(entries),)


NODE_CLASSES = (CLIPTextEncode, ConditioningCombine, ConditioningSetStrength)
