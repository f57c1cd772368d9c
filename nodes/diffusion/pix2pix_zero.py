"""Pix2Pix-Zero (Parmar et al. 2023) as a sampler extension: edit an image along a
direction in text-embedding space while its cross-attention keeps the structure.

**Edit direction.** Many source sentences ("a cat ...") and target sentences ("a dog
...") are encoded; the direction is the mean target embedding minus the mean source
embedding, ``[1, 77, dim]`` (the pipeline's ``get_embeds`` and ``construct_direction``).
The edited prompt is the source prompt's embedding plus the direction (on every
77-token window of a long prompt).

**Cross-attention guidance.** Two trajectories run side by side from the same start
latent: the *reference* samples the source prompt (plain classifier-free guidance) and
records every cross-attention map ``[images × heads, pixels, tokens]`` of each step;
the *edit* samples the edited prompt. Before each edit step the UNet input ``x`` (both
CFG halves) takes one gradient step ``x ← x − λ ∇ₓ L`` with λ =
``cross_attention_guidance_amount`` and ``L = Σ_layers mean_rows Σ (A_edit − A_ref)²``,
so the edit keeps the reference's layout while the direction changes what is drawn.
The step then predicts the noise at the updated input (each CFG half at its own) and
steps from the unconditional half, exactly as diffusers'
``StableDiffusionPix2PixZeroPipeline``: results match it.

Departures, none of which changes a DDIM run of one image with CFG (the pipeline's
use, and the parity tests):

- Memory: the pipeline first runs the whole reference loop and keeps every step's
  maps; here the reference runs in lockstep, one UNet pass per step just before the
  edit's (its own copy of the scheduler, and a copy of the sampler's generator taken
  before the first step, so stochastic samplers draw the reference's noise as the
  pipeline does). The edit's stochastic draws then repeat the reference's instead of
  following them (no difference for DDIM with eta 0, the paper's sampler).
- The pipeline adds the direction to row 1 of its prompt batch: for several images
  that is the second *negative* prompt, and without CFG there is no row 1 (no edit).
  Here every image's positive prompt gets it.
- The pipeline steps from the scaled UNet input; here it is unscaled first (the same
  for variance-preserving samplers; right for σ-space ones such as Euler).

Both passes use the attention store: a :class:`CrossAttentionGuidanceHook` on every
cross-attention layer reads the reference pass (roles ``p2pz:source...``) and adds the
loss in the edit's guidance pass (roles ``p2pz:edit...``); the sampler's own pass
(roles ``uncond``/``cond``) is left alone.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nodes.diffusion.attention import AttentionCall, AttentionHook, AttentionLayer
from nodes.diffusion.extensions import SamplerExtension, Step, UNetCall
from nodes.diffusion.handles import Tensor

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.handles import TextEncoder
    from nodes.diffusion.prompt_weighting import EmbeddingLookup
    from nodes.diffusion.sampling import SamplingRun

#: batch roles of the reference pass and of the edit's guidance pass (with CFG; without
#: it only the second of each)
REFERENCE_ROLES = ("p2pz:source_uncond", "p2pz:source")
GUIDED_ROLES = ("p2pz:edit_uncond", "p2pz:edit")
WINDOW_TOKENS = 77  # one CLIP window: start, 75 tokens, end


# --- the edit direction --------------------------------------------------------------------

@dataclass(frozen=True)
class EditDirection:
    """EDIT_DIRECTION: ``target − source`` mean text embedding, ``[1, 77, dim]``."""

    direction: Tensor
    sources: int
    targets: int


def sentences(text: str) -> list[str]:
    """One sentence per non-blank line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def get_embeds(clip: TextEncoder, lines: Sequence[str],
               embeddings: EmbeddingLookup | None = None) -> torch.Tensor:
    """The mean of the sentences' encodings ``[1, 77, dim]`` (the pipeline's ``get_embeds``:
    each sentence padded or cut to one 77-token window)."""
    import torch

    from nodes.conditioning import encode_text

    if not lines:
        raise ValueError("no sentences to encode (one per line)")
    # A sentence past 75 tokens is cut, as the pipeline's tokenizer truncates: its first
    # window is encoded on its own, so it equals the truncated encoding.
    encoded = [encode_text(clip, line, embeddings)[:, :WINDOW_TOKENS] for line in lines]
    return torch.cat(encoded, dim=0).mean(0)[None]


def construct_direction(embs_source: torch.Tensor, embs_target: torch.Tensor) -> torch.Tensor:
    """The pipeline's ``construct_direction``: mean target minus mean source."""
    return (embs_target.mean(0) - embs_source.mean(0)).unsqueeze(0)


def edit_embeds(source: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``source`` (``[B, 77 k, dim]``) plus the direction on each of its 77-token windows."""
    if direction.shape[-1] != source.shape[-1]:
        raise ValueError(f"the edit direction is {direction.shape[-1]}-wide but the prompt's "
                         f"embeddings are {source.shape[-1]}-wide: make the direction with "
                         "the same model's CLIP")
    windows, rest = divmod(source.shape[1], direction.shape[1])
    if rest:
        raise ValueError(f"a {source.shape[1]}-token prompt is not whole {direction.shape[1]}-"
                         "token windows: Pix2Pix-Zero needs a CLIP text encoding")
    return source + direction.to(source).repeat(1, windows, 1)


# --- attention -----------------------------------------------------------------------------

@dataclass
class _HookState:
    reference: dict[str, torch.Tensor] = field(default_factory=dict)
    loss: Any = 0.0  # float 0 until the first layer adds a tensor, as the pipeline


@dataclass(eq=False)  # hashed by identity: its per-run state is keyed by the hook
class CrossAttentionGuidanceHook(AttentionHook):
    """Keeps the reference pass's cross-attention maps (per layer, every head and row) and
    adds ``mean_rows Σ (A − A_ref)²`` of the guidance pass to the loss (the pipeline's
    ``Pix2PixZeroAttnProcessor`` and ``Pix2PixZeroL2Loss``)."""

    def selects(self, layer: AttentionLayer) -> bool:
        return layer.cross

    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        if call.roles[-1] == REFERENCE_ROLES[-1]:
            self.state(call.run).reference[call.layer.name] = probs.detach()
        elif call.roles[-1] == GUIDED_ROLES[-1]:
            state = self.state(call.run)
            reference = state.reference.pop(call.layer.name)
            state.loss = state.loss + ((probs - reference) ** 2).sum((1, 2)).mean(0)
        return probs

    def state(self, run: Any) -> _HookState:
        return run.state.setdefault(self, _HookState())


# --- the extension -------------------------------------------------------------------------

@dataclass
class _RunState:
    reference_embeds: torch.Tensor  # [neg, source] (or [source] without CFG)
    edit_embeds: torch.Tensor  # [neg, source + direction]
    scheduler: Any  # the reference trajectory's own scheduler
    step_kwargs: dict[str, Any]
    reference_latents: torch.Tensor | None = None
    #: this step's guided UNet input (every CFG half), for the sampler's own pass
    guided_input: torch.Tensor | None = None


class Pix2PixZero(SamplerExtension):
    """Cross-attention guidance of an edited prompt towards its source's maps (module doc).

    ``source`` is the source prompt's embedding ``[1, tokens, dim]``; ``edited`` the
    sampler's positive embedding (source plus direction), which this extension must
    ride on.
    """

    priority = 60  # latents first; before a ControlNet (100) reads the UNet input
    label = "Pix2Pix-Zero"

    def __init__(self, source: torch.Tensor, edited: torch.Tensor,
                 cross_attention_guidance_amount: float = 0.1):
        if tuple(source.shape) != tuple(edited.shape):
            raise ValueError("Pix2Pix-Zero: source and edited embeddings differ in shape")
        self.source = source
        self.edited = edited
        self.amount = float(cross_attention_guidance_amount)
        self.hook = CrossAttentionGuidanceHook()

    def __cache_nbytes__(self) -> dict[str, int]:
        from engine.cache import value_nbytes

        return value_nbytes((self.source, self.edited))

    def setup(self, run: SamplingRun) -> None:
        import torch

        from nodes.diffusion.handles import CondEntry, Conditioning
        from nodes.diffusion.sampling import guidance_embeds, step_kwargs

        first = run.positive.entries[0]
        if not any(ext is self for ext in first.options.get("extensions", ())):
            raise ValueError("Pix2Pix-Zero's conditioning must be the sampler's positive "
                             "prompt (first of a Conditioning Combine): it edits that prompt")
        if not self.amount:
            return
        batch = run.init_latents.shape[0]

        def embeds(e: torch.Tensor) -> torch.Tensor:
            return guidance_embeds(Conditioning((CondEntry(e),)), run.negative, batch,
                                   run.do_cfg, run.device, run.dtype)

        # The reference's scheduler steps on its own (multistep history, step index) and
        # draws its noise from a copy of the generator as it stands before the first step.
        generator = torch.Generator(run.generator.device)
        generator.set_state(run.generator.get_state())
        scheduler = copy.deepcopy(run.scheduler)
        run.state[self] = _RunState(embeds(self.source), embeds(self.edited), scheduler,
                                    step_kwargs(scheduler, generator, run.params.eta))

    def attention_hooks(self, run: SamplingRun) -> Sequence[AttentionHook]:
        return (self.hook,) if self.amount else ()

    def pre_step(self, run: SamplingRun, step: Step, latents: torch.Tensor) -> torch.Tensor:
        import torch

        from nodes.diffusion.sampling import model_input_scale

        if not self.amount:
            return latents
        state: _RunState = run.state[self]
        if state.reference_latents is None:
            state.reference_latents = latents.clone()
        self._reference_step(run, step, state)
        t = step.timestep
        copies = 2 if run.do_cfg else 1
        x_in = run.scheduler.scale_model_input(torch.cat([latents] * copies), t)
        x_in = x_in.detach().clone().requires_grad_(True)
        hook_state = self.hook.state(run)
        hook_state.loss = 0.0
        with torch.enable_grad():
            self._unet(run, step, x_in, state.edit_embeds, GUIDED_ROLES[-copies:])
            loss = hook_state.loss
            if not isinstance(loss, torch.Tensor):
                raise ValueError("Pix2Pix-Zero needs a UNet with cross-attention layers")
            (grad,) = torch.autograd.grad(loss, [x_in])
        hook_state.loss = 0.0  # frees the graph
        # the pipeline's SGD step (lr = the guidance amount) on the UNet input
        guided = x_in.detach() - self.amount * grad
        state.guided_input = guided
        # the pipeline steps from the unconditional half (its x_in.chunk(2)[0])
        return guided[:latents.shape[0]] / model_input_scale(run.scheduler, t)

    def _reference_step(self, run: SamplingRun, step: Step, state: _RunState) -> None:
        """One step of the source prompt's trajectory; the hook keeps its maps."""
        import torch

        t = step.timestep
        latents = state.reference_latents
        assert latents is not None
        copies = 2 if run.do_cfg else 1
        model_input = state.scheduler.scale_model_input(torch.cat([latents] * copies), t)
        noise_pred = self._unet(run, step, model_input, state.reference_embeds,
                                REFERENCE_ROLES[-copies:])
        if run.do_cfg:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + run.params.cfg * (cond - uncond)
        state.reference_latents = state.scheduler.step(
            noise_pred, t, latents, **state.step_kwargs, return_dict=False)[0]

    def _unet(self, run: SamplingRun, step: Step, sample: torch.Tensor, embeds: torch.Tensor,
              roles: Sequence[str]) -> torch.Tensor:
        """One UNet pass of this extension: other extensions fill its inputs (a
        ControlNet's residuals, an inpainting UNet's channels) as for the sampler's."""
        return run.extension_pass(self, step, sample, embeds, roles)

    def unet_inputs(self, run: SamplingRun, step: Step, call: UNetCall) -> None:
        import torch

        state: _RunState | None = run.state.get(self)
        if state is None or state.guided_input is None or run.attention.roles != run.roles:
            return  # off, or another extension's own pass
        # The sampler's pass sees each CFG half at its own guided input, as the pipeline's.
        guided, state.guided_input = state.guided_input, None
        rows, channels = guided.shape[0], guided.shape[1]
        latent_input = torch.cat([guided, call.latent_input[rows:]])
        if call.sample is call.latent_input:
            call.sample = latent_input
        else:  # extra channels already concatenated (an inpainting UNet)
            call.sample = torch.cat([latent_input, call.sample[:, channels:]], dim=1)
        call.latent_input = latent_input

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)
        run.state.pop(self.hook, None)
