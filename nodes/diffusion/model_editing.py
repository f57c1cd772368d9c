"""TIME (Orgad et al. 2023): edit the UNet's cross-attention K/V projections in closed form.

For every cross-attention layer (the projections that read the text encoder's
states), TIME solves

    W' = argmin  Σ_i ‖W' k_i − v*_i‖² + λ ‖W' − W‖²
       = (λ W + Σ_i v*_i k_iᵀ) (λ I + Σ_i k_i k_iᵀ)⁻¹

where ``k_i`` are the token embeddings of the source prompt (and its augmented
copies "A photo of ..."), ``v*_i = W k*_i`` the projections of the aligned
destination tokens. After the edit the source words project like the destination
words in *every* prompt that uses them. This reproduces diffusers'
``StableDiffusionModelEditingPipeline.edit_model`` (sentences, augmentations,
token alignment, the ``an`` → ``a`` rule, the solve), with two documented
generalisations:

* layers are the UNet's cross-attention modules whose ``to_v`` reads the text
  encoder's width (the pipeline looks for a class named ``CrossAttention``, gone from
  diffusers, and hard-codes SD 1.x's 768);
* token alignment: when the destination holds the source's tokens in order (the
  pipeline's case, "a pack of roses" → "a pack of blue roses") the pipeline's greedy
  match is used unchanged; otherwise (where the pipeline fails with an IndexError,
  e.g. "a circle" → "a square") runs of differing tokens are matched right-aligned
  (a replaced word maps onto the destination run's last, head, words; surplus
  source words onto the run's first word). Only a source word with no counterpart
  at all (deleted) is refused.

The edit never touches the model: the result is a dense weight update ``ΔW = W' − W``
carried as a patch on a new MODEL handle and applied per run, like a LoRA
(:func:`nodes.diffusion.lora.patched`). ``W`` is the model *with its patches applied*,
so a LoRA'd (or already edited) model can be edited.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from nodes.diffusion.handles import DiffusionModel, TextEncoder
from nodes.diffusion.lora import patched

if TYPE_CHECKING:
    import torch

AUGS_CONST: tuple[str, ...] = ("A photo of ", "An image of ", "A picture of ")  # the pipeline's
_BLOCK_PREFIXES = ("down_blocks.", "up_blocks.", "mid_block.")


@dataclass(frozen=True, eq=False)
class DenseDelta:
    """A full weight update ``ΔW`` (float32), duck-typed like ``LoraWeight``.

    ``edited`` keeps the solved weight itself: ``W + ΔW`` rounds differently from it by
    an ulp, and a further edit on top (``restart_params`` off) amplifies that through
    its ill-conditioned solve (1e-4 on the tiny model); starting from ``edited`` keeps
    stacked edits equal to the pipeline's.
    """

    value: torch.Tensor
    edited: torch.Tensor | None = None

    def delta(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        import torch

        return self.value.to(device=device, dtype=torch.float32).reshape(shape)


@dataclass(frozen=True, eq=False)
class TimeEdit:
    """One TIME edit as a model patch (the ``LoraPatch`` shape that ``patched`` applies)."""

    name: str
    strength: float
    weights: tuple[tuple[str, DenseDelta], ...]
    source: str
    destination: str


# --- sentences and token alignment -----------------------------------------------------------

def parse_augmentations(text: str) -> tuple[str, ...]:
    """One augmentation prefix per line ("A photo of"); each gets its trailing space back."""
    return tuple(line.strip() + " " for line in text.splitlines() if line.strip())


def edit_sentences(source: str, destination: str, augmentations: Sequence[str]
                   ) -> list[tuple[str, str]]:
    """The (old, new) sentence pairs, as the pipeline builds them: the prompts themselves,
    then each augmentation + the prompt with a leading capital "A" lowered."""
    pairs = [(source, destination)]
    old_base = source if source[0:1] != "A" else "a" + source[1:]
    new_base = destination if destination[0:1] != "A" else "a" + destination[1:]
    pairs += [(aug + old_base, aug + new_base) for aug in augmentations]
    return pairs


class AlignmentError(ValueError):
    """Source tokens with no counterpart in the destination prompt."""


def _words(tokenizer: Any, ids: Sequence[int]) -> str:
    return " ".join(tokenizer.convert_ids_to_tokens(list(ids))).replace("</w>", "")


def _greedy(a: Sequence[int], b: Sequence[int]) -> list[int] | None:
    """The pipeline's alignment: each source token to the next equal destination token;
    None where it would run off the destination (the pipeline's IndexError)."""
    idx, j = [], 0
    for token in a:
        while j < len(b) and b[j] != token:
            j += 1
        if j == len(b):
            return None
        idx.append(j)
        j += 1
    return idx


def _by_runs(tokenizer: Any, a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Equal runs map one to one; a replaced run maps right-aligned onto its counterpart
    (surplus source tokens onto the counterpart's first token); deletions are refused."""
    idx: list[int] = []
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            idx += range(j1, j2)
        elif tag == "replace":
            k, m = i2 - i1, j2 - j1
            idx += [j1] * max(0, k - m) + list(range(j2 - min(k, m), j2))
        elif tag == "delete":
            raise AlignmentError(
                f"the destination prompt has nothing in place of {_words(tokenizer, a[i1:i2])!r} "
                "of the source prompt; TIME maps every source word to a destination word — "
                "keep the word, or replace it by another, in the destination")
    return idx


def align_tokens(tokenizer: Any, old_text: str, new_text: str) -> list[int]:
    """``idxs_replace``: for each of the source's padded token positions, the destination
    position whose embedding it should project like (the pipeline's loop, generalised)."""
    length = int(tokenizer.model_max_length)
    a_id = tokenizer.encode("a ")[1]

    def ids(text: str) -> list[int]:
        tokens = tokenizer(text).input_ids
        return [a_id if tokenizer.decode(t) == "an" else t for t in tokens]

    a, b = ids(old_text), ids(new_text)
    for text, tokens in ((old_text, a), (new_text, b)):
        if len(tokens) > length:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise ValueError(f"{shown!r} has {len(tokens) - 2} tokens; TIME edits with prompts "
                             f"of at most {length - 2} tokens — shorten it")
    idx = _greedy(a, b)
    if idx is None:
        try:
            idx = _by_runs(tokenizer, a, b)
        except AlignmentError as exc:
            raise AlignmentError(f"{exc} (source tokens: {_words(tokenizer, a[1:-1])}; "
                                 f"destination tokens: {_words(tokenizer, b[1:-1])})") from None
    # Positions after the source's end token follow the destination's, as in the pipeline.
    # A source longer than the destination maps past it: keep one index per position.
    idx += range(idx[-1] + 1, length)
    return (idx + [length - 1] * (length - len(idx)))[:length]


# --- the layers and the solve ----------------------------------------------------------------

def cross_attention_projections(unet: Any, hidden_size: int, with_to_k: bool) -> list[str]:
    """Parameter names of the edited projections: every cross-attention ``to_v`` reading
    ``hidden_size``-wide text states, then (``with_to_k``) their ``to_k``, the pipeline's order."""
    layers = [name for name, module in unet.named_modules()
              if name.startswith(_BLOCK_PREFIXES) and getattr(module, "is_cross_attention", False)
              and module.to_v.in_features == hidden_size]
    names = [f"{name}.to_v.weight" for name in layers]
    if with_to_k:
        names += [f"{name}.to_k.weight" for name in layers]
    return names


def cross_attention_dims(unet: Any) -> set[int]:
    return {int(m.to_v.in_features) for name, m in unet.named_modules()
            if name.startswith(_BLOCK_PREFIXES) and getattr(m, "is_cross_attention", False)}


def text_states(clip: TextEncoder, pairs: Sequence[tuple[str, str]]) -> list[tuple[Any, Any]]:
    """Last hidden states ``[77, dim]`` of each (old, new) pair, as the pipeline encodes them."""
    import torch

    tokenizer, encoder = clip.tokenizer, clip.text_encoder
    out = []
    with torch.no_grad(), patched(encoder, clip.patches):
        for old, new in pairs:
            ids = tokenizer([old, new], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(encoder.device)
            old_emb, new_emb = encoder(ids)[0].float()
            out.append((old_emb, new_emb))
    return out


def key_inverse(contexts: Sequence[torch.Tensor], lamb: float) -> torch.Tensor:
    """``(λI + Σ k kᵀ)⁻¹``: the same for every layer, so solved once."""
    import torch

    dim = contexts[0].shape[1]
    mat2 = lamb * torch.eye(dim, device=contexts[0].device, dtype=contexts[0].dtype)
    for context in contexts:
        # Summed outer products in the pipeline's order: the inverse is poorly conditioned
        # for small λ, and a plain matmul's different rounding shows at 1e-4.
        mat2 = mat2 + (context[:, :, None] @ context[:, None, :]).sum(dim=0)
    return torch.inverse(mat2)


def closed_form(weight: torch.Tensor, bias: torch.Tensor | None, contexts: Sequence[torch.Tensor],
                targets: Sequence[torch.Tensor], lamb: float, inverse: torch.Tensor
                ) -> torch.Tensor:
    """``(λW + Σ v kᵀ)(λI + Σ k kᵀ)⁻¹`` with ``v = W k* (+ b)``: the paper's equation 5."""
    mat1 = lamb * weight
    for context, target in zip(contexts, targets, strict=True):
        values = target @ weight.T
        if bias is not None:  # the pipeline projects with the layer, bias included
            values = values + bias
        mat1 = mat1 + (values[:, :, None] @ context[:, None, :]).sum(dim=0)
    return mat1 @ inverse


def time_edit(model: DiffusionModel, clip: TextEncoder, source: str, destination: str, *,
              lamb: float = 0.1, with_to_k: bool = True,
              augmentations: Sequence[str] = AUGS_CONST, restart_params: bool = True
              ) -> DiffusionModel:
    """A new MODEL handle whose cross-attention maps ``source`` onto ``destination``.

    ``restart_params`` drops earlier TIME edits of this handle first (the pipeline's
    default); off, edits accumulate. Raises ValueError on prompts that cannot be aligned
    and on a CLIP whose width no cross-attention layer of the model reads.
    """
    import torch

    if not source.strip() or not destination.strip():
        raise ValueError("TIME needs a source and a destination prompt")
    hidden = int(clip.text_encoder.config.hidden_size)
    names = cross_attention_projections(model.unet, hidden, with_to_k)
    if not names:
        dims = sorted(cross_attention_dims(model.unet))
        raise ValueError(f"the model's cross-attention reads {dims or 'no'}-wide text states but "
                         f"the CLIP gives {hidden}-wide ones: connect the CLIP of the same "
                         "checkpoint as the MODEL")
    pairs = edit_sentences(source, destination, augmentations)
    aligned = [align_tokens(clip.tokenizer, old, new) for old, new in pairs]
    states = text_states(clip, pairs)
    kept = tuple(p for p in model.patches if not (restart_params and isinstance(p, TimeEdit)))
    params = dict(model.unet.named_parameters())
    device = model.unet.device
    contexts = [old.to(device) for old, _ in states]
    targets = [new.to(device)[idx] for (_, new), idx in zip(states, aligned, strict=True)]
    latest = {}  # parameter → the last patch that touches it
    for patch in kept:
        for param_name, update in patch.weights:
            latest[param_name] = update
    updates = []
    with torch.no_grad(), patched(model.unet, kept):
        inverse = key_inverse(contexts, lamb)
        for name in names:
            previous = getattr(latest.get(name), "edited", None)
            weight = params[name].detach().float() if previous is None else previous
            bias = params.get(name.removesuffix("weight") + "bias")
            bias = None if bias is None else bias.detach().float()
            edited = closed_form(weight, bias, contexts, targets, lamb, inverse)
            updates.append((name, DenseDelta(edited - weight, edited)))
    patch = TimeEdit(f"TIME: {source} → {destination}", 1.0, tuple(updates), source,
                     destination)
    return replace(model, patches=(*kept, patch))
