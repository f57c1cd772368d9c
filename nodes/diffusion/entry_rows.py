"""Which conditioning entry a chunk of a UNet pass belongs to.

Per-entry data the UNet needs besides the prompt embeddings (SDXL's pooled output and
size ids, unCLIP's class labels) must follow each chunk of every pass, also the passes
extensions run themselves (SAG's, a region's crop, PAG's rows). A chunk takes the row of
the entry whose prompt embeddings it holds; where several entries hold the same
embeddings, or none does (an extension's own prompts), the chunk's batch role decides.

Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def holds_prompt(prompt: torch.Tensor, embeds: torch.Tensor) -> bool:
    """Whether the chunk ``embeds`` (``[..., T', D]``) holds ``prompt`` (``[1, T, D]``):
    its first row's first T tokens are the prompt's (a chunk padded to a longer prompt's
    windows holds a multiple of T tokens)."""
    tokens = prompt.shape[1]
    if embeds.shape[-1] != prompt.shape[-1] or embeds.shape[-2] % tokens:
        return False
    first = embeds.reshape(-1, *embeds.shape[-2:])[0, :tokens]
    return bool((first.to(prompt) == prompt[0]).all())


def match_entry(prompts: Sequence[torch.Tensor], embeds: torch.Tensor, preferred: int) -> int:
    """The index of the entry whose prompt ``embeds`` holds: ``preferred`` (the role's
    entry) when it does, else the first that does, else ``preferred``."""
    if holds_prompt(prompts[preferred], embeds):
        return preferred
    return next((k for k, prompt in enumerate(prompts) if holds_prompt(prompt, embeds)),
                preferred)
