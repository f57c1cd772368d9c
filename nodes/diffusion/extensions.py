"""The sampler's extension API: techniques attach to MODEL, CONDITIONING or LATENT and
the one sampling loop calls them at fixed phases.

Phases, in the order one step runs them:

==================  ==========================================================
``setup``           once per run: per-run state (momentum, stored features)
``extra_conditions``once per run: extra batch entries after ``[uncond, cond]``
``attention``       once per run: hooks on chosen attention layers (one store,
                    :mod:`nodes.diffusion.attention`; the others keep SDPA)
``denoise``         once per run: wrap how a step denoises the latents (the UNet
                    pass with ``unet_inputs``, ``predictions``, ``guidance``, then
                    ``scheduler.step``): MultiDiffusion runs it on windows, averaged
``pre_step``        change latents before the UNet (may use autograd)
``unet_inputs``     add residuals / channels / kwargs to this step's UNet call
``unet_forward``    wrap the main pass's UNet call: run it, or stand in
                    for it (EasyCache's reuse, Torch Compile's compiled
                    UNet); extension passes (SAG's) call the UNet directly
``predictions``     replace the uncond/cond predictions (e.g. average combined prompts)
``guidance``        change the guidance term given every noise prediction
(scheduler step)    ``scheduler.step`` also gets ``step.scheduler_kwargs``, which
                    any phase above may fill (LEDITS++ replays its inversion's
                    noise maps as ``variance_noise``)
``post_step``       blend latents after ``scheduler.step`` (masks, trajectories)
``results``         once per run, after the last step: named tensors the sampler
                    hands on with its LATENT (LEDITS++'s edit region)
``teardown``        once per run, always (even on error or interrupt)
==================  ==========================================================

An extension object is immutable configuration shared through the cache; anything
that changes during a run lives in ``run.state[extension]``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class Step:
    """Where the loop is: step ``index`` of ``total`` at ``timestep``."""

    index: int
    total: int
    timestep: torch.Tensor
    #: the step's guided noise prediction, set before ``scheduler.step`` (for post_step)
    prediction: torch.Tensor | None = None
    #: extra ``scheduler.step`` arguments for this step (e.g. ``variance_noise``); they
    #: override the sampler's own (``eta``, ``generator``)
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    #: the UNet's input for this step, one batch role's rows (the scaled latents, in VP
    #: space): with :func:`nodes.diffusion.denoised.step_x0_coefficients`, the x̂₀ of a
    #: prediction, for extensions that work on it (CFGNorm, LatentApplyOperationCFG)
    model_input: torch.Tensor | None = None


#: ``denoise(run, step, latents) -> next latents``: one step's UNet pass with every
#: extension's ``unet_inputs``/``predictions``/``guidance`` phases, then
#: ``run.scheduler.step``; sets ``step.prediction``. ``latents`` may be any spatial size and
#: a whole multiple of the run's batch (windows stacked on the batch axis).
Denoise = Callable[[Any, Step, "torch.Tensor"], "torch.Tensor"]


#: ``forward(call) -> prediction``: the main pass's UNet call, as far as it is wrapped
UNetForward = Callable[["UNetCall"], "torch.Tensor"]


@dataclass
class UNetCall:
    """One UNet forward pass, built fresh each step; extensions edit it in place.

    ``latent_input`` is the scaled latent batch before any channel concatenation
    (what a ControlNet sees); ``sample`` is what the UNet itself receives.
    """

    sample: torch.Tensor
    latent_input: torch.Tensor
    timestep: torch.Tensor
    encoder_hidden_states: torch.Tensor
    down_block_additional_residuals: list[torch.Tensor] | None = None
    mid_block_additional_residual: torch.Tensor | None = None
    down_intrablock_additional_residuals: list[torch.Tensor] | None = None
    cross_attention_kwargs: dict[str, Any] | None = None
    #: SDXL's ``{"text_embeds": pooled, "time_ids": sizes}``, one row per batch row (the
    #: sampler fills it from the conditioning; None for models without added conditioning)
    added_cond_kwargs: dict[str, torch.Tensor] | None = None
    #: a guidance-distilled UNet's (LCM's ``time_cond_proj_dim``) guidance-scale
    #: embedding, one row (the run's); None for other models
    timestep_cond: torch.Tensor | None = None

    def forward(self, unet: Any) -> torch.Tensor:
        """Run ``unet`` on this call; returns its prediction."""
        extra: dict[str, Any] = {} if self.added_cond_kwargs is None else {
            "added_cond_kwargs": self.added_cond_kwargs}
        if self.timestep_cond is not None:
            extra["timestep_cond"] = self.timestep_cond.expand(self.sample.shape[0], -1)
        return unet(
            self.sample, self.timestep, encoder_hidden_states=self.encoder_hidden_states,
            cross_attention_kwargs=self.cross_attention_kwargs,
            down_block_additional_residuals=self.down_block_additional_residuals,
            mid_block_additional_residual=self.mid_block_additional_residual,
            down_intrablock_additional_residuals=self.down_intrablock_additional_residuals,
            return_dict=False, **extra)[0]

    def add_residuals(self, down: Sequence[torch.Tensor] | None,
                      mid: torch.Tensor | None) -> None:
        """Sum ControlNet-style residuals with any already added (several ControlNets)."""
        if down is not None:
            if self.down_block_additional_residuals is None:
                self.down_block_additional_residuals = list(down)
            else:
                self.down_block_additional_residuals = [
                    a + b for a, b in zip(self.down_block_additional_residuals, down, strict=True)]
        if mid is not None:
            self.mid_block_additional_residual = (
                mid if self.mid_block_additional_residual is None
                else self.mid_block_additional_residual + mid)


@dataclass
class Predictions:
    """Noise predictions of one step, split by batch role."""

    uncond: torch.Tensor
    cond: torch.Tensor
    extra: dict[int, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    #: each side on the whole canvas where area regions fuse ``cond`` / ``uncond`` from
    #: crops (None: they are that already); see :attr:`whole_uncond`
    canvas_cond: torch.Tensor | None = None
    canvas_uncond: torch.Tensor | None = None

    @property
    def whole_uncond(self) -> torch.Tensor:
        """The unconditional prediction to set a whole-canvas row against (SEGA's
        concepts, SAG's degraded pass): with area regions, not the crops' fusion."""
        return self.uncond if self.canvas_uncond is None else self.canvas_uncond

    @property
    def whole_cond(self) -> torch.Tensor:
        """:attr:`whole_uncond`'s conditional side."""
        return self.cond if self.canvas_cond is None else self.canvas_cond

    def of(self, extension: SamplerExtension) -> tuple[torch.Tensor, ...]:
        """The predictions for the batch entries ``extension`` asked for."""
        return self.extra.get(id(extension), ())


class SamplerExtension:
    """Base class: override only the phases a technique needs."""

    #: Order among extensions of the same phase (lower first).
    priority: int = 100
    #: Also add extra entries without CFG (cfg <= 1): the batch is ``[cond, extra...]`` and
    #: ``predictions``/``guidance`` run with ``preds.uncond`` = ``preds.cond`` and a zero
    #: guidance term; the prediction is ``cond + guidance`` (e.g. PAG).
    without_cfg: bool = False
    #: ``pre_step`` only sets this step's state (a weight, a keyframe): it neither reads
    #: nor changes the latents, so windows (MultiDiffusion) and a solver between the
    #: schedule's steps (dpm_adaptive) leave it working
    step_state_only: bool = False
    #: it holds masks drawn on the whole latent (IP-Adapter's attention masks), which
    #: MultiDiffusion's windows would each take as their own
    canvas_masks: bool = False
    #: it makes a latent far above the model's native size work (windows of that size, a
    #: hidden state shrunk to it) or sets its layout (a control image), so the sampler
    #: does not warn of the size
    handles_large_latents: bool = False
    #: the technique as the user knows it, for messages (default: the class name)
    label: str = ""

    def setup(self, run: Any) -> None:
        """Prepare per-run state in ``run.state[self]``."""

    def extra_conditions(self, run: Any) -> Sequence[torch.Tensor]:
        """Embeddings ``[1, tokens, dim]`` to add to the batch (with CFG, or with
        ``without_cfg``), or ``CondEntry`` objects that bring options too (SDXL's
        ``pooled_output``); ``run.roles_of(self)`` names their batch roles afterwards."""
        return ()

    def attention_hooks(self, run: Any) -> Sequence[Any]:
        """:class:`nodes.diffusion.attention.AttentionHook` objects for this run; the
        sampler installs them on the layers they select and restores the UNet after."""
        return ()

    def denoise(self, run: Any, denoise: Denoise) -> Denoise:
        """Wrap the step's denoising (once per run, after ``setup``); return ``denoise``
        itself to leave it as it is."""
        return denoise

    def pre_step(self, run: Any, step: Step, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def unet_inputs(self, run: Any, step: Step, call: UNetCall) -> None:
        """Edit ``call`` (residuals, channels, kwargs) for this step."""

    def unet_forward(self, run: Any, step: Step, call: UNetCall,
                     forward: UNetForward) -> torch.Tensor:
        """The step's main UNet pass: ``forward(call)``, or a prediction of the same shape
        made without it. A later extension (higher ``priority``) wraps an earlier one's."""
        return forward(call)

    def predictions(self, run: Any, step: Step, preds: Predictions) -> None:
        """Edit ``preds.uncond`` / ``preds.cond`` in place before guidance is formed."""

    def guidance(self, run: Any, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        """Return the guidance term; the step's prediction is ``uncond + guidance``."""
        return guidance

    def post_step(self, run: Any, step: Step, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def noise_mask(self, run: Any, timestep: float, mask: torch.Tensor) -> torch.Tensor:
        """Reshape the LATENT's noise mask (``[B, 1, h, w]``, 1 = repaint) used where the
        latent is noised to ``timestep`` (Differential Diffusion); by default unchanged."""
        return mask

    def results(self, run: Any) -> Mapping[str, torch.Tensor]:
        """Named tensors about this run for nodes downstream (the sampled LATENT carries
        them, see ``Latent.extension_results``); called after the last step only."""
        return {}

    def teardown(self, run: Any) -> None:
        """Release per-run state; called even when the run fails."""


def forward_unet(extensions: Sequence[SamplerExtension], run: Any, step: Step,
                 call: UNetCall, unet: Any) -> torch.Tensor:
    """The main pass: ``call`` on ``unet`` through every extension's ``unet_forward``
    (the last one outermost, as with ``denoise``)."""
    def forward(c: UNetCall) -> torch.Tensor:  # the UNet itself, innermost
        return c.forward(unet)

    for ext in extensions:
        if type(ext).unet_forward is not SamplerExtension.unet_forward:
            forward = functools.partial(ext.unet_forward, run, step,  # type: ignore[assignment]
                                        forward=forward)
    return forward(call)


def unique_extensions(*groups: Sequence[SamplerExtension]) -> list[SamplerExtension]:
    """Concatenate extension lists, keeping the first of repeated objects, by priority."""
    seen: set[int] = set()
    out: list[SamplerExtension] = []
    for group in groups:
        for ext in group:
            if id(ext) not in seen:
                seen.add(id(ext))
                out.append(ext)
    return sorted(out, key=lambda e: e.priority)  # stable: attachment order within a priority
