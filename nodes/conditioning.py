"""Prompt encoding: text → CONDITIONING with the checkpoint's CLIP text encoder.

A prompt may weight its words (``(red:1.3)``, ``(red)``, ``[red]``; see
:mod:`nodes.diffusion.prompt_weighting`), use learned embeddings
(``embedding:name``; see :mod:`nodes.diffusion.embeddings`) and run past 77
tokens (encoded in 75-token windows). A prompt with none of these gives exactly
diffusers' ``encode_prompt`` result.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.embeddings import (
    EmbeddingLibrary,
    embedding_fingerprint,
    injected_vectors,
    prompt_problems,
)
from nodes.diffusion.handles import CondEntry, Conditioning, Tensor, TextEncoder, Vae
from nodes.diffusion.lora import patched
from nodes.diffusion.prompt_weighting import (
    EmbeddingLookup,
    PromptTokens,
    Window,
    apply_weights,
    parse_prompt_weights,
    split_windows,
    tokenize_weighted,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def _windows(tokenizer: Any, tokens: PromptTokens) -> list[Window]:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return split_windows(tokens, bos=tokenizer.bos_token_id, eos=eos, pad=pad,
                         window=tokenizer.model_max_length - 2)


def clip_layer_index(encoder: Any, stop_at_clip_layer: int | None) -> int:
    """The hidden-states index (-1: last layer) for ComfyUI's ``stop_at_clip_layer``
    (None, no CLIP Set Last Layer: the last).

    As ComfyUI, a layer past the encoder's depth falls back to the last layer (with a
    warning): SD 1.x CLIP has 12 layers, the shipped small models 2.
    """
    if stop_at_clip_layer is None:
        return -1
    layers = int(encoder.config.num_hidden_layers)
    if -layers <= stop_at_clip_layer <= -1:
        return stop_at_clip_layer
    logger.warning("stop_at_clip_layer %d is past the text encoder's %d layers; using the "
                   "last layer, as ComfyUI does", stop_at_clip_layer, layers)
    return -1


def _encode_windows(encoder: Any, windows: list[Window], layer: int = -1) -> torch.Tensor:
    """Hidden states ``[windows, 77, dim]`` of encoder layer ``layer`` (-1: the last)
    after the final layer norm, embedding vectors injected."""
    return encode_windows(encoder, windows, layer)[0]


def encode_windows(encoder: Any, windows: list[Window], layer: int = -1, *,
                   final_layer_norm: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden states [windows, 77, dim], pooled [windows, dim'])`` of layer ``layer``.

    ``final_layer_norm`` False gives an earlier layer's raw output (SDXL's penultimate
    layer). The pooled output is the projected one for encoders with a projection
    (SDXL's OpenCLIP bigG), else CLIP's pooler output.
    """
    import torch

    device = encoder.device
    ids = torch.tensor([w.ids for w in windows], dtype=torch.long, device=device)
    attention_mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        attention_mask = (torch.arange(ids.shape[1], device=device)[None, :]
                          < torch.tensor([w.length for w in windows], device=device)[:, None]
                          ).long()
    slots = [(b, pos, vec) for b, w in enumerate(windows) for pos, vec in w.vectors.items()]
    positions = torch.tensor([(b, pos) for b, pos, _ in slots], dtype=torch.long,
                             device=device).reshape(-1, 2)
    vectors = torch.stack([vec for _, _, vec in slots]) if slots else torch.empty(0)
    with injected_vectors(encoder, positions, vectors):
        out = encoder(ids, attention_mask=attention_mask,
                      output_hidden_states=layer != -1 or not final_layer_norm)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    if layer == -1 and final_layer_norm:
        return out.last_hidden_state, pooled
    hidden = out.hidden_states[layer]
    # diffusers' clip_skip: an earlier layer's output through the final layer norm.
    return (encoder.final_layer_norm(hidden) if final_layer_norm else hidden), pooled


def encode_text(clip: TextEncoder, text: str, embeddings: EmbeddingLookup | None = None, *,
                weighting: str = "comfy") -> torch.Tensor:
    """Embeddings ``[1, 77 * windows, dim]`` of a prompt (weights, embeddings, long prompts).

    Without weights or embeddings and within 75 tokens this is diffusers'
    ``encode_prompt``. ``embeddings`` resolves ``embedding:name`` (None: plain text);
    ``weighting`` is ``"comfy"`` or ``"a1111"`` (see ``apply_weights``).

    On SDXL's CLIP this is both encoders' embeddings (``encode_sdxl``: CLIP-L and bigG
    side by side, bigG alone on the refiner), so techniques that encode prompts of their
    own (SEGA's concepts, FABRIC's empty prompt) fit the UNet; the pooled output is
    dropped here (:func:`encode_text_pooled` keeps it).
    """
    return encode_text_pooled(clip, text, embeddings, weighting=weighting)[0]


def encode_text_pooled(clip: TextEncoder, text: str, embeddings: EmbeddingLookup | None = None,
                       *, weighting: str = "comfy") -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`encode_text` and, on SDXL, the pooled output ``[1, dim]`` (else None)."""
    import torch

    if clip.text_encoder_2 is not None:
        from nodes.diffusion.sdxl import encode_sdxl

        return encode_sdxl(clip, text, None, _embeddings_by_width(embeddings),
                           weighting=weighting)
    tokenizer, encoder = clip.tokenizer, clip.text_encoder
    tokens = tokenize_weighted(tokenizer, parse_prompt_weights(text), embeddings)
    windows = _windows(tokenizer, tokens)
    layer = clip_layer_index(encoder, clip.stop_at_clip_layer)
    with torch.no_grad(), patched(encoder, clip.patches):
        z = _encode_windows(encoder, windows, layer)
        weights = torch.tensor([w.weights for w in windows])
        if bool((weights != 1).any()):
            z_empty = (_encode_windows(encoder, _windows(tokenizer, PromptTokens()), layer)
                       if weighting == "comfy" else None)
            z = apply_weights(z, weights, z_empty=z_empty, method=weighting)
    return z.reshape(1, -1, z.shape[-1]), None


def _embeddings_by_width(embeddings: EmbeddingLookup | None) -> Any:
    """``embeddings_for(width)`` from one encoder's lookup: an ``EmbeddingLibrary`` is
    re-made for the other encoder's width; any other lookup serves only its own width."""
    if embeddings is None:
        return None
    env, dim = getattr(embeddings, "env", None), getattr(embeddings, "dim", None)

    def embeddings_for(width: int) -> Any:
        if env is None or width == dim:
            return embeddings
        from nodes.diffusion.embeddings import EmbeddingLibrary

        return EmbeddingLibrary(env, width)

    return embeddings_for


class CLIPTextEncode(Node):
    """Encode a prompt into conditioning for the sampler.

    ``(word:1.3)``, ``(word)`` (x1.1) and ``[word]`` (/1.1) weight words (ComfyUI's
    math); ``\\(`` is a literal bracket; ``embedding:name`` uses a textual-inversion
    embedding from models/embeddings; prompts past 75 tokens are encoded in windows.
    """

    TYPE = "CLIPTextEncode"
    DISPLAY_NAME = "Encode Prompt"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    text: str = Input("", multiline=True, dynamic_prompts=True, description="The prompt")
    clip: TextEncoder = Input(type="CLIP")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        text = inputs.get("text")
        if not isinstance(text, str):
            return []
        return [("text", message, severity) for severity, message in prompt_problems(env, text)]

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return embedding_fingerprint(env, inputs.get("text"))

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        return (encode_hooked(self.clip, lambda clip: self._encode(ctx, clip)),)

    def _encode(self, ctx: ExecutionContext, clip: TextEncoder) -> Conditioning:
        if clip.text_encoder_2 is not None:  # SDXL: both encoders, sizes from the latent
            from nodes.diffusion.sdxl import sdxl_conditioning

            return sdxl_conditioning(clip, self.text,
                                     embeddings_for=lambda dim: EmbeddingLibrary(ctx.env, dim))
        dim = int(clip.text_encoder.get_input_embeddings().weight.shape[1])
        embeds = encode_text(clip, self.text, EmbeddingLibrary(ctx.env, dim))
        return Conditioning((CondEntry(embeds),))


def encode_hooked(clip: TextEncoder, encode: Any) -> Conditioning:
    """``encode(clip)`` with Set CLIP Hooks' effects: once per scheduled stretch (each entry
    for its timestep range), and the CLIP's hooks on every entry."""
    from nodes.diffusion.combine import TIMESTEP_RANGE

    if clip.clip_schedule:
        entries: list[CondEntry] = []
        for span, stretch in clip.clip_schedule:
            for entry in encode(stretch).entries:
                entries.append(CondEntry(entry.embeds, {**entry.options,
                                                        TIMESTEP_RANGE: tuple(span)}))
        conditioning = Conditioning(tuple(entries))
    else:
        conditioning = encode(clip)
    if clip.cond_hooks is None:
        return conditioning
    return Conditioning(tuple(
        CondEntry(e.embeds, {**e.options, "hooks": clip.cond_hooks if e.options.get("hooks")
                             is None else e.options["hooks"].combined(clip.cond_hooks)})
        for e in conditioning.entries))


class ConditioningCombine(Node):
    """Combine two conditionings: the sampler averages their noise predictions
    (composable diffusion's AND; each entry weighted by its strength, default 1)."""

    TYPE = "ConditioningCombine"
    DISPLAY_NAME = "Conditioning Combine"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning_1: Conditioning = Input(type="CONDITIONING")
    conditioning_2: Conditioning = Input(type="CONDITIONING")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        return (Conditioning((*self.conditioning_1.entries, *self.conditioning_2.entries)),)


class ConditioningSetStrength(Node):
    """Set the weight of a conditioning's entries when they are combined with others."""

    TYPE = "ConditioningSetStrength"
    DISPLAY_NAME = "Conditioning Set Strength"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning: Conditioning = Input(type="CONDITIONING")
    strength: float = Input(1.0, min=0.0, max=10.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        entries = tuple(CondEntry(e.embeds, {**e.options, "strength": self.strength})
                        for e in self.conditioning.entries)
        return (Conditioning(entries),)


MAX_RESOLUTION = 16384  # ComfyUI's


def _with_options(conditioning: Conditioning, **options: Any) -> Conditioning:
    return Conditioning(tuple(CondEntry(e.embeds, {**e.options, **options})
                              for e in conditioning.entries))


class ConditioningSetArea(Node):
    """Region prompt: this conditioning speaks only for a rectangle of the image.
    Combine it (Conditioning Combine) with others — one per region, optionally a prompt
    for the whole image — and the sampler predicts it on the latent cropped to the
    rectangle, so the prompt composes a whole picture there, and blends the predictions
    by weight, ramped down near the area's inner edges (ComfyUI's and MultiDiffusion's
    region prompts). Each region is guided against the negative prompt on its own crop,
    so areas alone, without a whole-image prompt, work too.

    Sizes are image pixels, divided by the VAE's downscale and rounded down (ComfyUI's
    //8): the linked VAE's, else (when sampling) the one the latent knows or the VAE the
    checkpoint was loaded with (4 on steerflow-shapes), else SD's 8. Areas past the
    right or bottom edge are clipped; an area outside the image or under one latent
    pixel is an error. ``strength`` weighs it against overlapping prompts (1: equal).
    Areas of the model's native size work best (64 px on the default model): there
    "a large red circle in the center on a beige background" for the left half and
    another shape for the right half of a 128x64 image put both shapes right in 88% of
    100 held-out cases, the right colour on each side in all (README). Cost: one UNet pass
    on the crop per area per step (with its negative twin).
    """

    TYPE = "ConditioningSetArea"
    DISPLAY_NAME = "Conditioning Set Area"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning: Conditioning = Input(type="CONDITIONING")
    width: int = Input(64, min=8, max=MAX_RESOLUTION, step=4)
    height: int = Input(64, min=8, max=MAX_RESOLUTION, step=4)
    x: int = Input(0, min=0, max=MAX_RESOLUTION, step=4)
    y: int = Input(0, min=0, max=MAX_RESOLUTION, step=4)
    strength: float = Input(1.0, min=0.0, max=10.0, step=0.01)
    vae: Vae | None = Input(type="VAE", optional=True,
                            description="The model's VAE, for its downscale; unlinked: "
                            "that of the sampled latent's or model's VAE, else 8")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        if not self.vae:  # divided when sampling, by the downscale the run knows
            area: tuple = ("pixels", self.height, self.width, self.y, self.x)
            return (_with_options(self.conditioning, area=area, strength=self.strength,
                                  set_area_to_bounds=False),)
        factor = self.vae.downscale
        if self.width < factor or self.height < factor:
            raise ValueError(f"the area is {self.width}x{self.height} px, under one latent "
                             f"pixel ({factor} px): make it larger")
        area = (self.height // factor, self.width // factor, self.y // factor,
                self.x // factor)
        return (_with_options(self.conditioning, area=area, strength=self.strength,
                              set_area_to_bounds=False),)


class ConditioningSetAreaPercentage(Node):
    """Conditioning Set Area with the rectangle as fractions of the image (0..1), so it
    fits any image size and needs no VAE: ``x`` 0.5, ``width`` 0.5 is the right half.
    Rounded to latent pixels as ComfyUI (at least one); ``x + width`` and ``y + height``
    must stay within 1. See Conditioning Set Area for how regions combine.
    """

    TYPE = "ConditioningSetAreaPercentage"
    DISPLAY_NAME = "Conditioning Set Area (Percentage)"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning: Conditioning = Input(type="CONDITIONING")
    width: float = Input(1.0, min=0.0, max=1.0, step=0.01)
    height: float = Input(1.0, min=0.0, max=1.0, step=0.01)
    x: float = Input(0.0, min=0.0, max=1.0, step=0.01)
    y: float = Input(0.0, min=0.0, max=1.0, step=0.01)
    strength: float = Input(1.0, min=0.0, max=10.0, step=0.01)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        for size, start in (("width", "x"), ("height", "y")):
            extent, offset = inputs.get(size), inputs.get(start)
            if isinstance(extent, int | float) and extent <= 0:
                problems.append((size, f"the area's {size} is 0: give it a fraction above 0"))
            if (isinstance(extent, int | float) and isinstance(offset, int | float)
                    and offset + extent > 1.0 + 1e-6):
                problems.append((start, f"{start} + {size} = {offset + extent:g} passes the "
                                        "image's edge (1.0)"))
        return problems

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        area = ("percentage", self.height, self.width, self.y, self.x)
        return (_with_options(self.conditioning, area=area, strength=self.strength,
                              set_area_to_bounds=False),)


class ConditioningSetMask(Node):
    """Region prompt by mask: this conditioning speaks where the MASK is (weighted by its
    values x ``strength``). Combine it with others (Conditioning Combine). ``set_cond_area``
    "default" predicts it on the whole image and keeps the masked part (the object may be
    drawn elsewhere and cut off); "mask bounds" predicts it on the crop to the mask's
    bounding box, like Conditioning Set Area (the object is composed inside the box).

    The mask should be at the image size (another size is resized bilinearly, as
    ComfyUI; another aspect ratio is stretched, with a warning), with a batch of 1 or
    the latent's. Mask regions also work in
    MultiDiffusion panoramas (cropped per window). Cost: one batch entry ("default") or
    one UNet pass on the crop ("mask bounds") per mask per step.
    """

    TYPE = "ConditioningSetMask"
    DISPLAY_NAME = "Conditioning Set Mask"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning: Conditioning = Input(type="CONDITIONING")
    mask: Tensor = Input(type="MASK")
    strength: float = Input(1.0, min=0.0, max=10.0, step=0.01)
    set_cond_area: str = Input("default", choices=("default", "mask bounds"))

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        mask = self.mask
        if mask.dim() == 2:
            mask = mask[None]
        if mask.dim() != 3:
            raise ValueError(f"a region mask must be a MASK [B, H, W], got {tuple(mask.shape)}")
        return (_with_options(self.conditioning, mask=mask,
                              set_area_to_bounds=self.set_cond_area != "default",
                              mask_strength=self.strength),)


class CLIPSetLastLayer(Node):
    """Encode prompts with an earlier layer of the text encoder ("clip skip"): -1 is the
    last layer (the default), -2 the one before it, which many SD 1.x fine-tunes (anime
    models especially) were trained with — use what the model card says. Wire it between
    the checkpoint's CLIP and every Encode Prompt. Costs nothing. -2 here equals
    diffusers' ``clip_skip=1``. A layer past the encoder's depth falls back to the last,
    as in ComfyUI. SD 2.x checkpoints already end at the penultimate layer (diffusers'
    layout), so there -1 is what SD 2 was trained with. SDXL reads its encoders' raw
    penultimate layer without this node; here -2 is the same and -1 the last layer, as
    in ComfyUI."""

    TYPE = "CLIPSetLastLayer"
    DISPLAY_NAME = "CLIP Set Last Layer"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CLIP"),)

    clip: TextEncoder = Input(type="CLIP")
    stop_at_clip_layer: int = Input(-1, min=-24, max=-1, step=1)

    def execute(self, ctx: ExecutionContext) -> tuple[TextEncoder]:
        return (replace(self.clip, stop_at_clip_layer=self.stop_at_clip_layer),)


NODE_CLASSES = (CLIPTextEncode, ConditioningCombine, ConditioningSetStrength,
                ConditioningSetArea, ConditioningSetAreaPercentage, ConditioningSetMask,
                CLIPSetLastLayer)
