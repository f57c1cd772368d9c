"""Schedules at their edges: repeated first timesteps (beta at 32+ steps) and more steps
than the model has noise levels."""

from __future__ import annotations

import pytest
import torch

from nodes.diffusion.sampling import prepare_timesteps
from nodes.diffusion.schedulers import make_scheduler
from nodes.diffusion.tiny import SCHEDULER_CONFIG


def run_through(sampler: str, schedule: str, steps: int) -> int:
    """Every step of the schedule on a stand-in latent (the model's output is noise);
    returns how many ran."""
    scheduler = make_scheduler(sampler, schedule, dict(SCHEDULER_CONFIG), seed=0)
    timesteps, _ = prepare_timesteps(scheduler, steps, 1.0, torch.device("cpu"))
    x = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for t in timesteps:
        scheduler.scale_model_input(x, t)
        x = scheduler.step(torch.randn_like(x), t, x).prev_sample
    assert torch.isfinite(x).all()
    return len(timesteps)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "uni_pc", "deis", "dpmpp_2m_sde"])
def test_beta_schedule_with_a_repeated_first_timestep_runs_to_the_end(sampler):
    """At 32+ steps beta's first two timesteps round alike (998, 998); diffusers then
    began at the second and ran one σ past its table (IndexError at the last step)."""
    scheduler = make_scheduler(sampler, "beta", dict(SCHEDULER_CONFIG), seed=0)
    scheduler.set_timesteps(40)
    assert scheduler.timesteps[0] == scheduler.timesteps[1]
    assert run_through(sampler, "beta", 40) == 40


@pytest.mark.parametrize(("sampler", "schedule", "steps"), [
    ("euler", "simple", 1001), ("ddim", "normal", 1000), ("res_multistep", "simple", 1001),
    ("dpmpp_2m", "ddim_uniform", 1000), ("ddim", "normal", 10000), ("lcm", "simple", 1001)])
def test_more_steps_than_noise_levels_is_refused_before_the_first_step(sampler, schedule,
                                                                       steps):
    with pytest.raises(ValueError, match="this model has 1000 noise levels"):
        run_through(sampler, schedule, steps)


@pytest.mark.parametrize(("schedule", "steps"), [("karras", 1500), ("kl_optimal", 1500),
                                                 ("normal", 999)])
def test_schedules_not_tied_to_timesteps_run_any_count(schedule, steps):
    assert run_through("euler", schedule, steps) == steps
