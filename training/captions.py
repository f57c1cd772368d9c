"""Caption → attribute labels for the text encoder's pre-training objective.

A caption names up to two shapes (size, color, shape, position each optional) and
a background; every slot gets a class index, with 0 meaning "not mentioned".
"""

from __future__ import annotations

import re

import torch

from training.shapes import BACKGROUNDS, COLORS, POSITION_PHRASES, SHAPES, SIZES

# (slot name, vocabulary); index 0 of every slot is "not mentioned".
_OBJECT_ATTRS = (("size", SIZES), ("color", tuple(COLORS)), ("shape", SHAPES),
                 ("position", tuple(POSITION_PHRASES)))
SLOTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    *((f"{attr}{k}", vocab) for k in (1, 2) for attr, vocab in _OBJECT_ATTRS),
    ("background", BACKGROUNDS),
)

_BACKGROUND = re.compile(r"(?:^| on a )(\w+) background$")
# Longest phrases first, so "at the top left" is not read as "at the top".
_PHRASES = sorted(POSITION_PHRASES.items(), key=lambda kv: -len(kv[1]))


def _object_labels(phrase: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for position, text in _PHRASES:
        if text in phrase:
            found["position"] = position
            phrase = phrase.replace(text, " ")
            break
    words = phrase.split()
    for attr, vocab in (("size", SIZES), ("color", COLORS), ("shape", SHAPES)):
        hit = [w for w in words if w in vocab]
        if hit:
            found[attr] = hit[0]
    return found


def caption_labels(caption: str) -> list[int]:
    """One class index per slot of :data:`SLOTS` (0 = not mentioned)."""
    values: dict[str, str] = {}
    text = caption.strip()
    match = _BACKGROUND.search(text)
    if match:
        values["background"] = match.group(1)
        text = text[: match.start()]
    for k, phrase in enumerate(text.split(" and ")[:2], start=1):
        for attr, value in _object_labels(phrase).items():
            values[f"{attr}{k}"] = value
    return [vocab.index(values[name]) + 1 if name in values else 0 for name, vocab in SLOTS]


def labels_tensor(captions: list[str]) -> torch.Tensor:
    """``[B, len(SLOTS)]`` long labels of a batch of captions."""
    return torch.tensor([caption_labels(c) for c in captions], dtype=torch.long)


class CaptionHeads(torch.nn.Module):
    """One linear classifier per slot on the text encoder's pooled output."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(
            torch.nn.Linear(hidden_size, len(vocab) + 1) for _, vocab in SLOTS)

    def forward(self, pooled: torch.Tensor) -> list[torch.Tensor]:
        return [head(pooled) for head in self.heads]

    def loss(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over slots."""
        logits = self(pooled)
        return sum(torch.nn.functional.cross_entropy(lg, labels[:, i])
                   for i, lg in enumerate(logits)) / len(logits)

    @torch.no_grad()
    def accuracy(self, pooled: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of captions with every slot right."""
        preds = torch.stack([lg.argmax(-1) for lg in self(pooled)], dim=1)
        return float((preds == labels).all(dim=1).float().mean())
