"""Per-token key weights in cross-attention, and what a ControlNet reads as text.

Apply Style Model appends image tokens to a prompt (77 + 8 tokens). Two things follow
that a plain CONDITIONING cannot say, so its entries carry them as options:

- ``key_weights`` (:data:`KEY_WEIGHTS`): a float tensor ``[tokens]``, one weight per
  token of the entry, multiplying that key's ``exp(score)`` in every cross-attention of
  the UNet: a weight ``w`` is an attention bias ``log(w)`` (ComfyUI's ``attn_bias``
  strength type), 0 masks the key out. Tokens past the tensor's end weigh 1.
- Padding: the sampler batches the negative and positive prompts together by repeating
  each to a common token count (long prompts: several 77-token windows), which 85
  tokens and 77 cannot share. So the entry is zero-padded to a multiple of 77 and the
  padding gets weight 0: cross-attention then equals attention over the 85 tokens alone
  (ComfyUI runs such conditionings in separate batches; the result is the same).

:class:`KeyWeights` applies the weights through the sampler's one attention store
(:mod:`nodes.diffusion.attention`) on the rows of each batch role whose entry has them:
probabilities times the weights, renormalised (exactly ``softmax(scores + log w)``).

A ControlNet runs its own cross-attention, which no hook reaches: :func:`controlnet_contexts`
gives it each role's text without the masked tokens, or the text ``CLIP Text Encode
(Controlnet)`` stored as ``cross_attn_controlnet`` (:data:`CONTROLNET_TEXT`, ComfyUI's key),
running one ControlNet pass per stretch of rows whose texts have one length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodes.diffusion.attention import AttentionCall, AttentionHook, AttentionLayer
from nodes.diffusion.extensions import SamplerExtension

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.handles import CondEntry

#: CondEntry option: per-token key weights ``[tokens]`` (float32, CPU)
KEY_WEIGHTS = "key_weights"
#: CondEntry options of CLIP Text Encode (Controlnet): the ControlNet's text and pooled output
CONTROLNET_TEXT = "cross_attn_controlnet"
CONTROLNET_POOLED = "pooled_output_controlnet"
#: the token unit entries are padded to (CLIP's context length)
WINDOW = 77


def entry_weights(entry: CondEntry | None, tokens: int | None = None) -> torch.Tensor | None:
    """The entry's key weights fitted to ``tokens`` (default: its own token count): cut,
    or continued with ones; None when it has none."""
    import torch

    if entry is None or entry.options.get(KEY_WEIGHTS) is None:
        return None
    weights = entry.options[KEY_WEIGHTS].to(torch.float32).flatten()
    count = int(entry.embeds.shape[1]) if tokens is None else tokens
    if weights.numel() >= count:
        return weights[:count]
    return torch.cat((weights, weights.new_ones(count - weights.numel())))


def weights_for_keys(entry: CondEntry | None, keys: int) -> torch.Tensor | None:
    """Weights of ``keys`` key tokens made from the entry's embeddings repeated whole (the
    sampler's :func:`match_token_lengths`); None where it has none or they do not fit."""
    weights = entry_weights(entry)
    if weights is None or keys % weights.numel():
        return None
    return weights.repeat(keys // weights.numel())


def append_tokens(entry: CondEntry, tokens: torch.Tensor, weight: float) -> CondEntry:
    """``entry`` with ``tokens`` ``[1, n, dim]`` after its own (its batch repeats them),
    the new tokens' key weight ``weight``; masked tokens of the entry (padding) are dropped
    first and the result is padded to a multiple of :data:`WINDOW` tokens again."""
    import torch

    from nodes.diffusion.handles import CondEntry

    embeds = entry.embeds
    weights = entry_weights(entry)
    if weights is None:
        weights = torch.ones(embeds.shape[1])
    keep = weights > 0
    if bool(keep.all()):
        own, own_weights = embeds, weights
    else:
        own, own_weights = embeds[:, keep.to(embeds.device)], weights[keep]
    added = tokens.to(device=embeds.device, dtype=embeds.dtype).expand(embeds.shape[0], -1, -1)
    joined = torch.cat((own, added), dim=1)
    joined_weights = torch.cat((own_weights, torch.full((tokens.shape[1],), float(weight))))
    pad = -joined.shape[1] % WINDOW
    if pad:
        joined = torch.cat((joined, joined.new_zeros(joined.shape[0], pad, joined.shape[2])),
                           dim=1)
        joined_weights = torch.cat((joined_weights, joined_weights.new_zeros(pad)))
    options = dict(entry.options)
    if bool((joined_weights == 1).all()):
        options.pop(KEY_WEIGHTS, None)
    else:
        options[KEY_WEIGHTS] = joined_weights
        extensions = options.get("extensions", ())
        if not any(ext is KEY_WEIGHTS_EXTENSION for ext in extensions):
            options["extensions"] = (*extensions, KEY_WEIGHTS_EXTENSION)
    return CondEntry(joined, options)


@dataclass(eq=False)
class _KeyWeightHook(AttentionHook):
    """Multiplies each role's cross-attention probabilities by its entry's key weights."""

    def selects(self, layer: AttentionLayer) -> bool:
        return layer.cross

    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        import torch

        own = call.key_tokens or probs.shape[-1]
        rows = []
        found = False
        per_role = call.batch // max(len(call.roles), 1)
        for role in call.roles:
            weights = weights_for_keys(call.run.entries.get(role), own)
            found = found or weights is not None
            if weights is None:
                weights = torch.ones(own)
            if probs.shape[-1] > own:  # keys a hook appended (not this entry's)
                weights = torch.cat((weights, weights.new_ones(probs.shape[-1] - own)))
            rows.append(weights[None].expand(per_role, -1))
        if not found or per_role * len(call.roles) != probs.shape[0]:
            return probs
        weights = torch.cat(rows).to(device=probs.device, dtype=probs.dtype)
        weighted = probs * weights[:, None, :]
        total = weighted.sum(dim=-1, keepdim=True)
        return torch.where(total > 0, weighted / total.clamp_min(1e-30), probs)


class KeyWeights(SamplerExtension):
    """Applies the conditionings' key weights in the UNet's cross-attention (one shared
    instance, so entries that carry it on both sides act once)."""

    def __init__(self) -> None:
        self.hook = _KeyWeightHook()

    def attention_hooks(self, run: Any) -> tuple[AttentionHook, ...]:
        return (self.hook,)

    def __cache_nbytes__(self) -> dict[str, int]:
        return {}


KEY_WEIGHTS_EXTENSION = KeyWeights()


# --- the ControlNet's text ----------------------------------------------------------------


def _controlnet_text(entry: CondEntry, rows: int, width: int) -> torch.Tensor:
    text = entry.options[CONTROLNET_TEXT]
    if text.dim() != 3 or text.shape[-1] != width:
        raise ValueError(
            f"CLIP Text Encode (Controlnet)'s text states have shape {tuple(text.shape)}; "
            f"this model's ControlNet reads {width}-wide text: encode it with this "
            "model's CLIP")
    if rows % text.shape[0]:
        raise ValueError(f"CLIP Text Encode (Controlnet)'s text has a batch of {text.shape[0]}"
                         f" for {rows} rows: give a single prompt")
    return text.repeat(rows // text.shape[0], 1, 1)


def controlnet_contexts(run: Any, call: Any, lo: int, hi: int
                        ) -> list[tuple[int, int, torch.Tensor]]:
    """``(first, end, text states)`` covering the rows ``[lo, hi)`` a ControlNet runs on:
    each role's own text without its masked tokens, or its entry's ``cross_attn_controlnet``
    (CLIP Text Encode (Controlnet)); neighbouring roles whose texts have one length share a
    stretch. Without either, one stretch with the UNet's own text states."""
    import torch

    states = call.encoder_hidden_states
    plain = [(lo, hi, states[lo:hi])]
    roles = tuple(run.attention.roles)
    total = states.shape[0]
    if not roles or total % len(roles):
        return plain
    per_role = total // len(roles)
    stretches: list[tuple[int, int, torch.Tensor]] = []
    changed = False
    for k, role in enumerate(roles):
        first, end = max(lo, k * per_role), min(hi, (k + 1) * per_role)
        if first >= end:
            continue
        entry = run.entries.get(role)
        text = states[first:end]
        if entry is not None and entry.options.get(CONTROLNET_TEXT) is not None:
            text = _controlnet_text(entry, end - first, states.shape[-1])
            changed = True
        else:
            weights = weights_for_keys(entry, text.shape[1])
            if weights is not None and not bool((weights > 0).all()):
                text = text[:, (weights > 0).to(text.device)]
                changed = True
        if stretches and stretches[-1][1] == first and stretches[-1][2].shape[1] == text.shape[1]:
            start, _, before = stretches[-1]
            stretches[-1] = (start, end, torch.cat((before, text.to(before))))
        else:
            stretches.append((first, end, text))
    return stretches if changed else plain
