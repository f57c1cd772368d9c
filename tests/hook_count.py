"""Counting the hooks a technique leaves on a model, apart from the interrupt points
every loaded model's blocks carry (nodes/diffusion/interrupt_hooks.py)."""

from __future__ import annotations

from typing import Any

from nodes.diffusion.interrupt_hooks import _check_interrupt


def added_hooks(module: Any) -> int:
    """Forward and forward-pre hooks in ``module``'s tree, the interrupt points aside."""
    return sum(len(m._forward_hooks)
               + sum(h is not _check_interrupt for h in m._forward_pre_hooks.values())
               for m in module.modules())
