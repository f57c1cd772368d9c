"""Pivotal tuning: a concept word's embedding trained together with the weights that
learn the concept (a LoRA, or a DreamBooth fine-tune), as diffusers' advanced
DreamBooth-LoRA script's ``--train_text_encoder_ti``.

The word's rows live apart from the embedding table (:class:`TokenRows`), swapped in by a
forward hook on the embedding, with their own learning rate in the run's optimiser.
One mechanism for every training node that offers it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.handles import TextEncoder


@dataclass(frozen=True)
class PivotSpec:
    """What to train: ``token`` is a word the tokenizer has as one token (its row is
    trained, from ``initializer``'s when given) or a new placeholder of ``num_vectors``
    tokens (from ``initializer``, default "shape"); its rows have their own
    ``learning_rate`` (the run's schedule); the first ``ti_steps`` steps train the rows
    alone."""

    token: str
    initializer: str = ""
    num_vectors: int = 1
    learning_rate: float = 5e-3
    ti_steps: int = 0


@dataclass
class TokenRows:
    """The pivot's trainable embedding rows, apart from the table: AdamW on the whole
    ``[vocab, dim]`` table (textual inversion's way, other rows restored after each step)
    updates these rows the same, element by element, but costs a dense step over the
    vocabulary; here a hook on the embedding swaps the rows in."""

    table: torch.Tensor  # the copied table (its rows at ``ids`` hold the start values)
    ids: list[int]
    rows: torch.Tensor  # [len(ids), dim], trained

    @classmethod
    def create(cls, table: torch.Tensor, ids: list[int]) -> TokenRows:
        return cls(table, ids, table.detach()[ids].clone().float().requires_grad_(True))

    @contextmanager
    def hooked(self, embedding: Any) -> Iterator[None]:
        import torch

        ids = torch.tensor(self.ids, device=self.table.device)

        def hook(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            match = (args[0].unsqueeze(-1) == ids).to(output.dtype)  # [B, L, n]
            return output + match @ (self.rows - self.table.detach()[ids]).to(output.dtype)

        handle = embedding.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def write(self) -> None:
        """Put the trained rows into the copied table (the handle the run returns)."""
        import torch

        with torch.no_grad():
            self.table[self.ids] = self.rows.detach().to(self.table.dtype)


def pivot_clip(clip: TextEncoder, pivot: PivotSpec) -> tuple[TextEncoder, list[int]]:
    """The run's CLIP handle (a copy of the table, and of the tokenizer for a new
    placeholder; every other weight shared) and the rows the pivot trains."""
    from nodes.diffusion.train_textual_inversion import token_clip

    return token_clip(clip, pivot.token, pivot.initializer, pivot.num_vectors)


def attach(stack: ExitStack, encoder: Any, ids: torch.Tensor, token_ids: list[int],
           pivot: PivotSpec, optimizer: Any) -> TokenRows:
    """Train ``token_ids``' rows of ``encoder``'s (copied) table for the duration of
    ``stack``: the captions' ``ids`` must hold them; the rows join ``optimizer`` at the
    pivot's learning rate and are written into the table when the stack closes."""
    if not any(set(token_ids) <= set(row) for row in ids.tolist()):
        raise ValueError(f"no caption holds {pivot.token!r} (within the tokens the "
                         "text encoder reads): write it where the concept goes")
    embedding = encoder.get_input_embeddings()
    rows = TokenRows.create(embedding.weight, token_ids)
    stack.callback(rows.write)  # the returned handle gets the trained rows
    stack.enter_context(rows.hooked(embedding))
    optimizer.add_param_group({"params": [rows.rows], "lr": pivot.learning_rate})
    return rows


def hold_back(params: list[Any], pivot: PivotSpec | None, steps_done: int) -> None:
    """In the pivot's first ``ti_steps`` steps only the rows train: the other parameters'
    gradients are dropped (AdamW skips a parameter without one)."""
    if pivot is not None and steps_done < pivot.ti_steps:
        for p in params:
            p.grad = None


def pivot_vectors(clip: TextEncoder, token: str) -> torch.Tensor:
    """``[n, dim]``: the trained embedding of a pivot ``token`` in ``clip`` (the handle a
    run returned; a new placeholder's own vectors, or a vocabulary word's row)."""
    ids = clip.tokenizer(token, add_special_tokens=False)["input_ids"]
    return clip.text_encoder.get_input_embeddings().weight.detach()[ids].clone().cpu()
