"""LEDITS++ (Brack et al. 2024): edit-friendly inversion of a real image, then SEGA's
semantic guidance with implicit masks, replaying the inversion's noise.

Inversion (:func:`edit_friendly_invert`, diffusers' ``LEditsPPPipelineStableDiffusion.invert``):
the last ``n`` steps of an ``int(n·(1 + skip))``-step schedule. The clean latent is
noised to every one of those timesteps with *independent* noise (seeded); then at each
step, from the noisiest down, the UNet's guided prediction at x_t gives the sampler's
mean μ_t, and the noise map ``z_t = (x_{t-1} − μ_t) / σ_t`` is what makes the stochastic
step land exactly on the pre-noised x_{t-1} (DDIM with η = 1, i.e. edit-friendly DDPM;
or DPM-Solver++ 2M SDE). The loop is the sampler's own: a scheduler stand-in turns each
step into that computation, so ControlNet, LoRA and other extensions act during it.

Editing (:class:`LEditsPPGuidance`) samples the same timesteps from the noisiest
pre-noised latent, handing each step its ``z_t`` as ``variance_noise``: without guidance,
and with the inversion's prompt and guidance, this reproduces the input latent (the
pipeline edits with the empty prompt alone, also after a guided inversion). One
departure: the pipeline's ``invert`` swaps its prompts and guides *away* from the source
prompt (ε(src) + s·(ε(∅) − ε(src))); here the source prompt guides as in CFG (wire the
prompts the other way round for the pipeline's). Each edit concept adds SEGA's term
``s_e (ε(z_t, c_e) − ε(z_t))`` (:mod:`nodes.diffusion.sega`'s shared pieces), masked by

- the noise mask M²: the concept's strongest ``1 − threshold`` fraction of latent pixels
  (|γ| summed over channels; SEGA thresholds each channel instead);
- the cross-attention mask M¹: the concept's cross-attention (attention store, up and
  down blocks at 1/4 of the latent size), Gaussian-smoothed, above its ``threshold``
  quantile;
- their intersection (the pipeline's default; M¹ alone while t > 800), and an optional
  user mask.

Math, order of operations and constants follow the pipeline so results match it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodes.diffusion.attention import AttentionRecorder
from nodes.diffusion.extensions import Predictions, SamplerExtension, Step
from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel, Latent, Tensor
from nodes.diffusion.sega import (
    SegaConcept,
    concept_conditions,
    concept_guidance,
    quantile_mask,
    stops_at,
)

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.sampling import SamplingRun, StepCallback

#: sampler names (nodes.diffusion.schedulers) whose stochastic step LEDITS++ can invert
SAMPLERS = ("dpmpp_2m_sde", "ddim")
#: the pipeline uses only the cross-attention mask at noisier timesteps than this
INTERSECT_FROM_T = 800
#: the name of the edit region in the sampled LATENT's ``extension_results``
EDIT_REGION = "ledits_pp.edit_region"


@dataclass(frozen=True)
class LEditsInversion:
    """LEDITS_INVERSION: what the edit replays. ``zs[i]`` ``[B, C, h, w]`` is the noise
    map of step ``i`` of ``timesteps`` (steps ``start_at_step``… of a ``steps``-step
    ``sampler_name``/``scheduler`` schedule)."""

    zs: Tensor  # node inputs' types: pydantic resolves them (see handles.Tensor)
    timesteps: Tensor
    steps: int
    start_at_step: int
    sampler_name: str
    scheduler: str
    scheduler_class: str  # the diffusers class the names build

    def how_to_sample(self) -> str:
        return (f"sample it with KSamplerAdvanced: sampler_name {self.sampler_name}, "
                f"scheduler {self.scheduler}, steps {self.steps}, start_at_step "
                f"{self.start_at_step}, add_noise disable, on the LATENT of the same "
                "LEDITS++ Inversion")


def inversion_schedule(num_inversion_steps: int, skip: float) -> tuple[int, int]:
    """(steps of the whole schedule, the first inverted step): the pipeline's
    ``int(n·(1 + skip))`` and its last ``n`` steps."""
    steps = int(num_inversion_steps * (1 + skip))
    return steps, steps - num_inversion_steps


def _is_ddim(scheduler: Any) -> bool:
    return type(scheduler).__name__ == "DDIMScheduler"


def _ddim_noise(scheduler: Any, prev_latents: torch.Tensor, latents: torch.Tensor,
                timestep: torch.Tensor, noise_pred: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, x_{t-1}) of a DDIM step with η = 1 that lands on ``prev_latents``."""
    import torch

    prev_timestep = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_prod_t = scheduler.alphas_cumprod[timestep]
    alpha_prod_t_prev = (scheduler.alphas_cumprod[prev_timestep] if prev_timestep >= 0
                         else scheduler.final_alpha_cumprod)
    beta_prod_t = 1 - alpha_prod_t
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        pred_original = (latents - beta_prod_t ** 0.5 * noise_pred) / alpha_prod_t ** 0.5
        pred_epsilon = noise_pred
    elif kind == "v_prediction":
        pred_original = alpha_prod_t ** 0.5 * latents - beta_prod_t ** 0.5 * noise_pred
        pred_epsilon = alpha_prod_t ** 0.5 * noise_pred + beta_prod_t ** 0.5 * latents
    else:
        raise ValueError(f"LEDITS++ with DDIM needs an epsilon or v-prediction model, not "
                         f"{kind!r}; use sampler dpmpp_2m_sde")
    if scheduler.config.clip_sample:
        pred_original = torch.clamp(pred_original, -1, 1)
    variance = scheduler._get_variance(timestep, prev_timestep)
    std_dev_t = variance ** 0.5
    direction = (1 - alpha_prod_t_prev - std_dev_t ** 2) ** 0.5 * pred_epsilon
    mean = alpha_prod_t_prev ** 0.5 * pred_original + direction
    if variance <= 0.0:
        return torch.zeros_like(latents), mean
    noise = (prev_latents - mean) / std_dev_t
    return noise, mean + std_dev_t * noise


def _dpm_sde_noise(scheduler: Any, prev_latents: torch.Tensor, latents: torch.Tensor,
                   timestep: torch.Tensor, noise_pred: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, x_{t-1}) of a DPM-Solver++ 2M SDE step that lands on ``prev_latents``; advances
    the scheduler's history as its ``step`` would (first order, then second order)."""
    import torch

    s = scheduler
    if s.step_index is None:
        s._init_step_index(timestep)
    model_output = s.convert_model_output(model_output=noise_pred, sample=latents)
    for i in range(s.config.solver_order - 1):
        s.model_outputs[i] = s.model_outputs[i + 1]
    s.model_outputs[-1] = model_output
    alpha_t, sigma_t = s._sigma_to_alpha_sigma_t(s.sigmas[s.step_index + 1])
    alpha_s0, sigma_s0 = s._sigma_to_alpha_sigma_t(s.sigmas[s.step_index])
    h = (torch.log(alpha_t) - torch.log(sigma_t)) - (torch.log(alpha_s0) - torch.log(sigma_s0))
    if s.lower_order_nums < 1:
        mean = s.dpm_solver_first_order_update(model_output=model_output, sample=latents,
                                               noise=torch.zeros_like(latents))
    else:
        alpha_s1, sigma_s1 = s._sigma_to_alpha_sigma_t(s.sigmas[s.step_index - 1])
        h_0 = (torch.log(alpha_s0) - torch.log(sigma_s0)) - (
            torch.log(alpha_s1) - torch.log(sigma_s1))
        m0, m1 = s.model_outputs[-1], s.model_outputs[-2]
        d0, d1 = m0, (1.0 / (h_0 / h)) * (m0 - m1)
        mean = ((sigma_t / sigma_s0 * torch.exp(-h)) * latents
                + (alpha_t * (1 - torch.exp(-2.0 * h))) * d0
                + 0.5 * (alpha_t * (1 - torch.exp(-2.0 * h))) * d1)
    sigma = sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h))
    if s.lower_order_nums < s.config.solver_order:
        s.lower_order_nums += 1
    s._step_index += 1
    if not sigma > 0.0:
        # the last step to σ = 0 adds no noise (its second-order mean is inf · 0 there)
        return torch.zeros_like(latents), prev_latents
    noise = (prev_latents - mean) / sigma
    return noise, mean + sigma * noise


class _InversionStepper:
    """Stands in for the scheduler in the sampler's loop during the inversion: each
    ``step`` records the noise map that takes x_t to the pre-noised x_{t-1} and returns
    that x_{t-1} (recomputed from the map, so errors do not accumulate)."""

    order = 1

    def __init__(self, scheduler: Any, xts: torch.Tensor):
        self.scheduler = scheduler
        self.xts = xts  # [n + 1, B, C, h, w]: the clean latent, then noisier
        self.zs: list[torch.Tensor] = []
        self.noise = _ddim_noise if _is_ddim(scheduler) else _dpm_sde_noise

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    @property
    def config(self) -> Any:
        return self.scheduler.config

    def set_timesteps(self, steps: int, device: Any = None) -> None:
        self.scheduler.set_timesteps(steps, device=device)

    def set_begin_index(self, index: int = 0) -> None:
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(index)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        return self.scheduler.scale_model_input(sample, timestep)

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
             return_dict: bool = False, **_: Any) -> tuple[torch.Tensor]:
        target = self.xts[len(self.xts) - 2 - len(self.zs)]
        z, landed = self.noise(self.scheduler, target, sample, timestep, model_output)
        self.zs.append(z)
        return (landed,)


def twin_problem(sampler_name: str, schedule: str) -> str | None:
    """Why the inversion cannot run ``schedule``: its noise formula is written for
    diffusers' DDIM and DPM-Solver schedulers, and this pair runs the σ-space twin."""
    from nodes.diffusion.schedulers import runs_twin

    if not runs_twin(sampler_name, schedule):
        return None
    return (f"LEDITS++ inverts with diffusers' {sampler_name} scheduler, and the {schedule!r} "
            f"schedule runs its σ-space form instead: use normal, karras (dpmpp samplers), "
            f"ddim_uniform, simple, sgm_uniform or linspace")


def make_inversion_scheduler(model: DiffusionModel, sampler_name: str, schedule: str) -> Any:
    from nodes.diffusion.schedulers import make_scheduler

    if sampler_name not in SAMPLERS:
        raise ValueError(f"LEDITS++ inverts the {' or '.join(SAMPLERS)} sampler, not "
                         f"{sampler_name!r}")
    problem = twin_problem(sampler_name, schedule)
    if problem:
        raise ValueError(problem)
    return make_scheduler(sampler_name, schedule, model.scheduler_config)


def edit_friendly_invert(model: DiffusionModel, negative: Conditioning,
                         source: Conditioning | None, latent: Latent, num_inversion_steps: int,
                         skip: float, source_guidance_scale: float, seed: int,
                         sampler_name: str = "dpmpp_2m_sde", schedule: str = "ddim_uniform",
                         callback: StepCallback | None = None
                         ) -> tuple[torch.Tensor, LEditsInversion]:
    """Invert a clean latent (UNet space); returns the noisiest pre-noised latent, where the
    edit starts, and the inversion. ``negative`` is the unconditional prompt (the pipeline's
    empty one); ``source`` describes the image and guides with ``source_guidance_scale``
    (None: no source prompt, the unconditional prediction alone)."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from nodes.diffusion.sampling import SamplingParams, sample

    if num_inversion_steps < 1 or not 0.0 <= skip < 1.0:
        raise ValueError("LEDITS++ needs num_inversion_steps >= 1 and 0 <= skip < 1")
    scheduler = make_inversion_scheduler(model, sampler_name, schedule)
    steps, start = inversion_schedule(num_inversion_steps, skip)
    device, dtype = model.device, model.dtype
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps[start:]
    # a standard layout (VAE Encode's latents are channels-last): the UNet's convolutions
    # then take the same kernels as the pipeline's, here and while editing
    x0 = latent.samples.to(device=device, dtype=dtype).contiguous()
    generator = torch.Generator("cpu").manual_seed(seed)
    # independent noise per timestep, drawn from the least noisy up (the pipeline's order)
    xts = [x0]
    for t in reversed(timesteps):
        noise = randn_tensor(tuple(x0.shape), generator=generator, device=device, dtype=dtype)
        xts.append(scheduler.add_noise(x0, noise, t.reshape(1)))
    stepper = _InversionStepper(scheduler, torch.stack(xts))
    guided = source is not None and source_guidance_scale > 1.0
    params = SamplingParams(seed=seed, steps=steps, cfg=source_guidance_scale if guided else 1.0,
                            start_step=start, add_noise=False)
    # a noise mask would blend in the input latent, which the inversion must not see
    start_latent = Latent(xts[-1], inpaint=latent.inpaint)
    sample(model, stepper, source if guided else negative, negative, start_latent, params,
           callback=callback)
    return xts[-1], LEditsInversion(torch.stack(stepper.zs).cpu(), timesteps.cpu(), steps,
                                    start, sampler_name, schedule, type(scheduler).__name__)


def gaussian_kernel(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The pipeline's 3x3 smoothing kernel, σ 0.5 (its exponent is ((x − μ)/2σ)²)."""
    import torch

    size, std = 3, 0.5
    kernel = torch.ones(())
    grids = torch.meshgrid([torch.arange(size, dtype=torch.float32)] * 2, indexing="ij")
    for grid in grids:
        mean = (size - 1) / 2
        kernel = kernel * (1 / (std * math.sqrt(2 * math.pi))
                           * torch.exp(-(((grid - mean) / (2 * std)) ** 2)))
    kernel = kernel / torch.sum(kernel)
    return kernel.view(1, 1, size, size).to(device=device, dtype=dtype)


@dataclass
class _State:
    zs: torch.Tensor
    user_mask: torch.Tensor | None
    #: where any concept's masked guidance acted at any step so far ``[B, 1, h, w]``
    edit_region: torch.Tensor
    recorder: AttentionRecorder | None = None
    kernel: torch.Tensor | None = None


class LEditsPPGuidance(SamplerExtension):
    """LEDITS++ editing: replays an inversion's noise maps and adds each concept's
    masked semantic guidance (works without CFG: the batch is ``[uncond, concepts...]``
    when the positive prompt is the unconditional one and cfg ≤ 1, as in the pipeline)."""

    priority = 200
    without_cfg = True
    label = "LEDITS++"

    def __init__(self, concepts: Sequence[SegaConcept], inversion: LEditsInversion,
                 use_cross_attn_mask: bool = False, use_intersect_mask: bool = True,
                 user_mask: torch.Tensor | None = None):
        if not concepts:
            raise ValueError("LEDITS++ needs at least one edit concept (SEGA Concept)")
        self.concepts = tuple(concepts)
        self.inversion = inversion
        # the intersection needs the cross-attention mask (as in the pipeline)
        self.use_cross_attn_mask = use_cross_attn_mask or use_intersect_mask
        self.use_intersect_mask = use_intersect_mask
        self.user_mask = user_mask

    def setup(self, run: SamplingRun) -> None:
        import torch

        from nodes.diffusion.masking import mask_to_latent, match_batch

        inv = self.inversion
        if isinstance(run.scheduler, _InversionStepper):
            raise ValueError("LEDITS++ Inversion needs the model without Apply LEDITS++ "
                             "(invert first, then apply the edit to the model you sample)")
        same = (type(run.scheduler).__name__ == inv.scheduler_class
                and getattr(run.scheduler.config, "algorithm_type", None)
                in (None, "sde-dpmsolver++")
                and len(run.timesteps) == len(inv.timesteps)
                and bool((run.timesteps.cpu() == inv.timesteps).all()))
        if not same or run.params.add_noise:
            raise ValueError("this LEDITS++ inversion must be replayed on its own timesteps: "
                             + inv.how_to_sample())
        latents = run.init_latents
        if tuple(latents.shape) != tuple(inv.zs.shape[1:]):
            raise ValueError(f"the latent is {tuple(latents.shape)} but the inversion's noise "
                             f"maps are {tuple(inv.zs.shape[1:])}; " + inv.how_to_sample())
        user_mask = None
        if self.user_mask is not None:
            user_mask = mask_to_latent(self.user_mask, tuple(latents.shape[-2:]))
            user_mask = match_batch(user_mask, latents.shape[0], "user mask")
            user_mask = user_mask.to(device=run.device, dtype=run.dtype)
        zs = inv.zs.to(device=run.device, dtype=run.dtype)
        run.state[self] = _State(zs, user_mask, torch.zeros_like(zs[0][:, :1]),
                                 kernel=gaussian_kernel(run.dtype, run.device))

    def extra_conditions(self, run: SamplingRun) -> Sequence[CondEntry]:
        return concept_conditions(self.concepts)

    def attention_hooks(self, run: SamplingRun) -> Sequence[Any]:
        if not self.use_cross_attn_mask:
            return ()
        # the pipeline reads the up and down blocks' cross-attention (not the mid block's)
        recorder = AttentionRecorder(places=("down", "up"), cross=True,
                                     roles=run.roles_of(self))
        run.state[self].recorder = recorder
        return (recorder,)

    def pre_step(self, run: SamplingRun, step: Step, latents: torch.Tensor) -> torch.Tensor:
        # the step's noise is the inversion's (DDIM refuses a generator alongside it)
        step.scheduler_kwargs.update(variance_noise=run.state[self].zs[step.index],
                                     generator=None)
        if _is_ddim(run.scheduler):
            step.scheduler_kwargs["eta"] = 1.0  # the stochastic DDIM step zs was made for
        return latents

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        import torch

        state: _State = run.state[self]
        i = step.index
        total = torch.zeros_like(guidance)
        roles = run.roles_of(self)
        for c, (concept, pred) in enumerate(zip(self.concepts, preds.of(self), strict=True)):
            if i < concept.warmup_steps or i >= stops_at(concept, i):
                continue
            edit = concept_guidance(concept, pred, preds.whole_uncond)
            # the mask this concept's guidance gets at this step (0/1, [B, 1, h, w])
            region = (torch.ones_like(edit[:, :1]) if state.user_mask is None
                      else state.user_mask.expand_as(edit[:, :1]))
            if state.user_mask is not None:
                edit = edit * state.user_mask
            attn_mask = None
            if self.use_cross_attn_mask:
                attn_mask = self.attention_mask(run, roles[c], concept.threshold,
                                                tuple(edit.shape[-2:]))
                if not self.use_intersect_mask:
                    edit = edit * attn_mask
                    region = region * attn_mask
            if self.use_intersect_mask and attn_mask is not None:
                if step.timestep <= INTERSECT_FROM_T:
                    noise_mask = quantile_mask(edit.abs().sum(dim=1, keepdim=True),
                                               concept.threshold)
                    edit = edit * (noise_mask.to(edit.dtype) * attn_mask)
                    region = region * noise_mask.to(edit.dtype) * attn_mask
                else:
                    edit = edit * attn_mask
                    region = region * attn_mask
            elif not self.use_cross_attn_mask:
                noise_mask = quantile_mask(edit.abs().sum(dim=1, keepdim=True),
                                           concept.threshold)
                edit = torch.where(noise_mask, edit, torch.zeros_like(edit))
                region = region * noise_mask.to(edit.dtype)
            # (MultiDiffusion, whose windows would see a crop of it, refuses LEDITS++)
            torch.maximum(state.edit_region, region, out=state.edit_region)
            total = total + edit
        return guidance + total

    def results(self, run: SamplingRun) -> dict[str, torch.Tensor]:
        """``EDIT_REGION``: where the edit's masked guidance acted at any step (0/1,
        ``[B, 1, h, w]``), for pasting the edit back onto the original image."""
        return {EDIT_REGION: run.state[self].edit_region}

    def attention_mask(self, run: SamplingRun, role: str, threshold: float,
                       size: tuple[int, int]) -> torch.Tensor:
        """M¹ ``[B, 1, h, w]`` (0/1) at the latent ``size`` from this step's cross-attention
        of ``role``: maps at the chosen resolution averaged over layers and heads, summed
        over every token after the start token, smoothed, above the ``threshold``
        quantile."""
        import torch
        import torch.nn.functional as F

        state: _State = run.state[self]
        assert state.recorder is not None and state.kernel is not None
        entries = state.recorder.maps(run, role)
        tokens = mask_tokens(run, size, {m.shape[1] for _, m, _ in entries})
        chosen = [(m, heads) for _, m, heads in entries if m.shape[1] == tokens]
        maps = sum(m * heads for m, heads in chosen) / sum(heads for _, heads in chosen)
        h, w = run.attention.sizes[tokens]
        keys = maps.shape[-1]
        # The pipeline counts its concept's tokens on a padded encoding, so it sums every
        # token between the start token and the last one.
        attn = maps.reshape(maps.shape[0], h, w, keys)[..., 1:keys - 1].sum(dim=3)
        attn = F.conv2d(F.pad(attn.unsqueeze(1), (1, 1, 1, 1),
                              mode="reflect" if min(h, w) > 1 else "replicate"),
                        weight=state.kernel)
        cutoff = torch.quantile(attn.flatten(start_dim=1).float(), threshold, dim=1)
        mask = torch.where(attn >= cutoff.to(attn.dtype)[:, None, None, None], 1.0, 0.0)
        return F.interpolate(mask.to(attn.dtype), size)

    def teardown(self, run: SamplingRun) -> None:
        state = run.state.pop(self, None)
        if state is not None and state.recorder is not None:
            run.state.pop(state.recorder, None)


def mask_tokens(run: SamplingRun, size: tuple[int, int], recorded: set[int]) -> int:
    """The query-token count of the maps M¹ reads: 1/4 of the latent size (the pipeline's;
    16x16 for SD at 512 px), else the recorded resolution nearest to it (the tiny test
    UNet has cross-attention only at the latent size)."""
    if not recorded:
        raise ValueError("LEDITS++'s cross-attention mask found no cross-attention in the "
                         "UNet's down or up blocks; set use_cross_attn_mask and "
                         "use_intersect_mask off")
    want = (size[0] // 4) * (size[1] // 4)
    if want in recorded and run.attention.sizes.get(want) == (size[0] // 4, size[1] // 4):
        return want
    return min(sorted(recorded), key=lambda n: abs(math.log(n / max(want, 1))))
