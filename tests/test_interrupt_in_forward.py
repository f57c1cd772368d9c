"""An interrupt acts inside one long model call (a UNet step, a VAE decode), not only
between a sampler's steps: each block of a model checks it before it runs."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.context import Interrupted, InterruptFlag, interrupt_point, running_prompt
from nodes.diffusion.interrupt_hooks import make_interruptible
from tests.test_txt2img import txt2img_prompt


def _interrupt_at(session, prompt_id: str, when):
    """Record every module that runs; interrupt ``prompt_id`` after a module ``when``
    accepts has run."""
    ran: list[torch.nn.Module] = []

    def hook(module, args, output):
        ran.append(module)
        if when(module):
            session.executor.interrupt(prompt_id)

    return ran, torch.nn.modules.module.register_module_forward_hook(hook)


@pytest.mark.parametrize("stage", ["unet", "vae"])
def test_interrupt_inside_a_forward_stops_before_the_next_block(session, stage):
    prompt = txt2img_prompt("steerflow-tiny", "euler", steps=3, seed=9191 + len(stage))
    if stage == "unet":
        def when(m):
            return type(m).__name__ == "UNetMidBlock2DCrossAttn"
    else:
        def when(m):
            return type(m).__name__ == "UNetMidBlock2D"  # the VAE decoder's
    ran, handle = _interrupt_at(session, "cut-" + stage, when)
    progress: list[int] = []
    try:
        result = session.run(prompt, prompt_id="cut-" + stage,
                             on_event=lambda n, d: n == "progress" and progress.append(1))
    finally:
        handle.remove()
    assert result.run.status == "interrupted"
    mid = next(i for i, m in enumerate(ran) if when(m))
    after = {type(m).__name__ for m in ran[mid + 1:]}
    # the block after the mid block never started: only its hook ran, which raised
    assert not after & {"CrossAttnUpBlock2D", "UpBlock2D", "UpDecoderBlock2D", "ResnetBlock2D"}
    if stage == "unet":
        assert progress == []  # not one sampler step finished
    else:
        assert len(progress) == 3  # the sampler finished; the decode was cut


def test_interrupt_points_do_nothing_outside_a_run_and_survive_copies():
    block = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([block, torch.nn.Linear(2, 2)])
    make_interruptible(model)
    make_interruptible(model)  # once per module: one hook, not two
    assert len(block._forward_pre_hooks) == 1
    assert not model.blocks[1]._forward_pre_hooks  # a bare layer gets none
    x = torch.ones(1, 2)
    model.blocks[0](x)  # no prompt running: nothing to check
    flag = InterruptFlag()
    twin = copy.deepcopy(model)
    with running_prompt("p", flag):
        twin.blocks[0](x)
        flag.set()
        with pytest.raises(Interrupted):
            twin.blocks[0](x)
        with pytest.raises(Interrupted):
            interrupt_point()
    interrupt_point()  # the run is over: its flag is no longer consulted
    make_interruptible(None)
    make_interruptible(object())
