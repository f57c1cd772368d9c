"""Interrupt points inside a model's forward, so a cancel acts within one long call.

A UNet step or a VAE decode at a large size runs for a minute on a CPU, and the
sampler checks the prompt's interrupt only between steps. Each block of a model
(every composite module held in one of its ``ModuleList``s or ``Sequential``s: UNet
down/up blocks, their ResNets and transformers, VAE decoder blocks, ControlNet
blocks, an ESRGAN's RRDB blocks) checks it
before it runs, through :func:`engine.context.interrupt_point`. That is about a
hundred cheap hook calls per SD UNet pass; outside a running prompt they do nothing.
"""

from __future__ import annotations

import sys
from typing import Any

from engine.context import interrupt_point

_MARK = "_steerflow_interruptible"


def make_interruptible(module: Any) -> None:
    """Give ``module``'s blocks an interrupt point, once per module object.

    Anything that is not a torch module (a test double, None) is left alone. Copies
    made by ``copy.deepcopy`` keep the hooks.
    """
    torch = sys.modules.get("torch")  # a torch module exists only once torch is imported
    if torch is None or not isinstance(module, torch.nn.Module):
        return
    if module.__dict__.get(_MARK):
        return
    for holder in module.modules():
        if isinstance(holder, torch.nn.ModuleList | torch.nn.Sequential):
            for block in holder:
                if next(block.children(), None) is not None:  # not a bare Linear/Dropout
                    block.register_forward_pre_hook(_check_interrupt)
    module.__dict__[_MARK] = True


def _check_interrupt(module: Any, args: Any) -> None:
    if sys.modules["torch"].compiler.is_compiling():  # no side effects in a traced graph
        return
    interrupt_point()
