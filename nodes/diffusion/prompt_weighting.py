"""Prompt weighting as people type it in A1111 and ComfyUI, and prompts longer than 77 tokens.

Syntax (A1111's, which ComfyUI reads too): ``(text)`` multiplies the attention
weight of ``text`` by 1.1, ``[text]`` divides it by 1.1, ``(text:1.3)`` sets the
factor to 1.3; nested groups multiply. ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\:``
``\\\\`` are literal characters. A group left open applies to the rest of the
prompt; a closing bracket with no open group is literal text. Weights are
per token: every token of a weighted span carries the span's weight.

Long prompts are split into windows of 75 tokens (hard boundaries), each
wrapped in BOS ... EOS and padded to 77, encoded separately and concatenated along
the token axis: 200 tokens give ``[1, 3 * 77, dim]``.

Weighting math (:func:`apply_weights`), a documented choice:

* ``"comfy"`` (the default, ComfyUI's): for each token whose weight ``w`` is not 1,
  ``z = z_empty + (z - z_empty) * w`` where ``z_empty`` is the encoding of the empty
  prompt at the same position; tokens of weight 1 are left untouched bit for bit.
* ``"a1111"``: ``z *= w`` per token, then each window is rescaled so its mean
  equals the unweighted mean (A1111's "emphasis: original").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1
WINDOW = 75  # tokens per window between BOS and EOS (CLIP's 77 positions)
#: bounds on one prompt: its text, checked when a prompt is validated, and its 75-token
#: windows, when it is encoded (each window is a CLIP pass and 77 more keys for every
#: cross-attention: a 4 MiB text took 3 GiB before any sampling)
MAX_PROMPT_CHARS = 100_000
MAX_PROMPT_WINDOWS = 128
WEIGHTINGS = ("comfy", "a1111")

_ESCAPABLE = "()[]:\\"
# ``:1.3)`` closing a round group: an explicit weight (A1111 allows spaces and signs).
_EXPLICIT_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")


@dataclass(frozen=True)
class WeightedText:
    """A span of prompt text and the weight every one of its tokens gets."""

    text: str
    weight: float = 1.0


def parse_prompt_weights(prompt: str) -> list[WeightedText]:
    """Split a prompt into spans with weights; adjacent spans of equal weight are merged.

    ``"a (red:1.5) [cat]"`` gives ``a `` 1.0, ``red`` 1.5, `` `` 1.0, ``cat`` 1/1.1.
    """
    spans: list[list] = []  # [text, weight]; weights change as groups close
    buf: list[str] = []
    round_open: list[int] = []  # index into spans where each open group starts
    square_open: list[int] = []

    def flush() -> None:
        if buf:
            spans.append(["".join(buf), 1.0])
            buf.clear()

    def scale_from(start: int, factor: float) -> None:
        for span in spans[start:]:
            span[1] *= factor

    i, n = 0, len(prompt)
    while i < n:
        ch = prompt[i]
        if ch == "\\" and i + 1 < n and prompt[i + 1] in _ESCAPABLE:
            buf.append(prompt[i + 1])
            i += 2
            continue
        if ch == "(":
            flush()
            round_open.append(len(spans))
        elif ch == "[":
            flush()
            square_open.append(len(spans))
        elif ch == ":" and round_open and (m := _EXPLICIT_WEIGHT.match(prompt, i)):
            flush()
            scale_from(round_open.pop(), float(m.group(1)))
            i = m.end()
            continue
        elif ch == ")" and round_open:
            flush()
            scale_from(round_open.pop(), ROUND_FACTOR)
        elif ch == "]" and square_open:
            flush()
            scale_from(square_open.pop(), SQUARE_FACTOR)
        else:
            buf.append(ch)
        i += 1
    flush()
    for start in round_open:
        scale_from(start, ROUND_FACTOR)
    for start in square_open:
        scale_from(start, SQUARE_FACTOR)
    merged: list[WeightedText] = []
    for text, weight in spans:
        if not text:
            continue
        if merged and merged[-1].weight == weight:
            merged[-1] = WeightedText(merged[-1].text + text, weight)
        else:
            merged.append(WeightedText(text, weight))
    return merged or [WeightedText("", 1.0)]


# --- tokens -------------------------------------------------------------------------------

# An embedding lookup returns the vectors ``[n, dim]`` for ``embedding:name``.
EmbeddingLookup = Callable[[str], "torch.Tensor"]
EMBEDDING_PATTERN = re.compile(r"embedding:([^\s,;:()\[\]{}]+)")


@dataclass
class PromptTokens:
    """Token ids with per-token weights; ``vectors[i]`` replaces token ``i``'s embedding."""

    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    vectors: dict[int, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_weighted(tokenizer, spans: Sequence[WeightedText],
                      embeddings: EmbeddingLookup | None = None,
                      placeholder_id: int = 0) -> PromptTokens:
    """Tokenize each span on its own (no BOS/EOS); ``embedding:name`` becomes its vectors.

    Embedding vectors sit on ``placeholder_id`` tokens, an ordinary id below EOS so
    CLIP's pooled output (argmax over ids, or the first EOS) still finds the real EOS.
    """
    out = PromptTokens()
    for span in spans:
        pieces = EMBEDDING_PATTERN.split(span.text) if embeddings is not None else [span.text]
        for k, piece in enumerate(pieces):
            if k % 2 == 1:  # a captured embedding name
                for vector in embeddings(piece):
                    out.vectors[len(out.ids)] = vector
                    out.ids.append(placeholder_id)
                    out.weights.append(span.weight)
                continue
            if not piece:
                continue
            ids = tokenizer(piece, add_special_tokens=False, truncation=False,
                            verbose=False).input_ids
            out.ids.extend(ids)
            out.weights.extend([span.weight] * len(ids))
    return out


@dataclass
class Window:
    """One encoder call's worth: ids ``[77]``, weights ``[77]``, vectors by position."""

    ids: list[int]
    weights: list[float]
    vectors: dict[int, torch.Tensor]
    length: int  # BOS + tokens + EOS (the attention mask's ones)


def split_windows(tokens: PromptTokens, *, bos: int, eos: int, pad: int,
                  window: int = WINDOW) -> list[Window]:
    """Cut tokens into ``window``-sized pieces, each wrapped in BOS/EOS and padded.

    An empty prompt still gives one window (``[BOS, EOS, pad...]``), as diffusers does.
    """
    size = window + 2
    count = -(-max(len(tokens), 1) // window)
    if count > MAX_PROMPT_WINDOWS:
        raise ValueError(f"the prompt is {len(tokens)} tokens, {count} windows of {window}; "
                         f"at most {MAX_PROMPT_WINDOWS} windows ({MAX_PROMPT_WINDOWS * window} "
                         "tokens) are encoded: shorten it")
    out: list[Window] = []
    for start in range(0, max(len(tokens), 1), window):
        ids = tokens.ids[start:start + window]
        weights = tokens.weights[start:start + window]
        vectors = {i - start + 1: v for i, v in tokens.vectors.items()
                   if start <= i < start + window}
        length = len(ids) + 2
        out.append(Window(
            ids=[bos, *ids, eos] + [pad] * (size - length),
            weights=[1.0, *weights, 1.0] + [1.0] * (size - length),
            vectors=vectors, length=length))
    return out


# --- weighting math -----------------------------------------------------------------------

def apply_weights(z: torch.Tensor, weights: torch.Tensor, *, z_empty: torch.Tensor | None,
                  method: str = "comfy") -> torch.Tensor:
    """Weight encoder outputs ``z [n, 77, dim]`` by ``weights [n, 77]`` (see module doc).

    ``z_empty [1, 77, dim]`` is the empty prompt's encoding, needed by ``"comfy"``.
    """
    import torch

    weights = weights.to(device=z.device, dtype=z.dtype)
    if method == "comfy":
        if z_empty is None:
            raise ValueError("comfy weighting needs the empty prompt's encoding")
        w = weights.unsqueeze(-1)
        weighted = z_empty + (z - z_empty) * w
        return torch.where(w != 1, weighted, z)  # weight-1 tokens stay bit-exact
    if method == "a1111":
        original_mean = z.mean(dim=(1, 2), keepdim=True)
        scaled = z * weights.unsqueeze(-1)
        return scaled * (original_mean / scaled.mean(dim=(1, 2), keepdim=True))
    raise ValueError(f"unknown prompt weighting {method!r}; expected one of {WEIGHTINGS}")


def match_token_lengths(embeds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Repeat conditionings ``[B, tokens, dim]`` along the token axis to one common length.

    A long prompt has several 77-token windows; the negative prompt usually has
    fewer, and classifier-free guidance batches them together. Repeating a
    sequence k times leaves cross-attention's output unchanged (each key's softmax
    weight is split evenly over its k copies), so this pads without changing what
    either prompt says (ComfyUI does the same); empty-prompt padding would not.
    """
    lengths = [int(e.shape[1]) for e in embeds]
    target = math.lcm(*lengths)
    if target > 16 * max(lengths):
        raise ValueError(f"conditionings of {sorted(set(lengths))} tokens cannot be batched "
                         "together (their common length would be too long)")
    return [e if e.shape[1] == target else e.repeat(1, target // e.shape[1], 1)
            for e in embeds]
