"""SDXL's conditioning: two text encoders, the pooled embedding and size conditioning.

Prompt encoding follows diffusers' ``StableDiffusionXLPipeline.encode_prompt`` (and
ComfyUI's SDXL CLIP): each encoder's *penultimate* hidden state, without the final
layer norm, concatenated on the feature axis (CLIP-L first, then OpenCLIP bigG); the
pooled embedding is bigG's projected output. The refiner has only bigG.

The UNet also takes ``added_cond_kwargs``: ``text_embeds`` (the pooled embedding) and
``time_ids``, six numbers for the base model (original height, width, crop top, left,
target height, width) or five for the refiner (height, width, crop top, left,
aesthetic score). The conditioning carries them as options under ComfyUI's names
(``pooled_output``, ``width``, ``height``, ``crop_w``, ``crop_h``, ``target_width``,
``target_height``, ``aesthetic_score``); :class:`AddedConditioning` turns them into the
UNet's tensors for every pass, the sampler's and the extensions' own, row by row.

Defaults are diffusers' (and ComfyUI's, for SD's 8x VAEs): a size not given is the
image's, the latent's size times the VAE's downscale (ComfyUI: x 8 whatever the VAE),
the target size is the size, crops are 0, the refiner's aesthetic score is 6 for the
positive and 2.5 for the negative prompt. A missing pooled output is zeros.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel, TextEncoder

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: ``embeddings_for(width)``: the ``embedding:name`` lookup for an encoder of that width
EmbeddingsFor = Callable[[int], Any]

SDXL_FAMILIES = ("sdxl", "sdxl_refiner")
#: diffusers' ``aesthetic_score`` / ``negative_aesthetic_score`` defaults (ComfyUI's too)
POSITIVE_AESTHETIC_SCORE = 6.0
NEGATIVE_AESTHETIC_SCORE = 2.5

def is_sdxl(family: str) -> bool:
    return family in SDXL_FAMILIES


def uses_added_conditioning(unet: Any) -> bool:
    """Whether the UNet takes SDXL's ``text_embeds`` and ``time_ids``."""
    return getattr(getattr(unet, "config", None), "addition_embed_type", None) == "text_time"


def require_sd_unet(unet: Any, what: str) -> None:
    """Refuse an SDXL UNet where ``what`` (a node's name) works on SD 1.x / 2.x only: it
    would fail deep inside diffusers, or blame the wiring."""
    if uses_added_conditioning(unet):
        raise ValueError(f"{what} works on SD 1.x / 2.x models; this is an SDXL model (two "
                         "text encoders and added size conditioning), which it does not "
                         "support yet")


# --- prompt encoding -------------------------------------------------------------------------

def hidden_layer(encoder: Any, stop_at_clip_layer: int | None) -> tuple[int, bool]:
    """``(hidden-states index, final layer norm?)`` of the layer SDXL reads, as ComfyUI.

    Without CLIP Set Last Layer (None) the penultimate layer's raw output, SDXL's own
    (diffusers' default). CLIP Set Last Layer picks a layer's raw output, counted from
    the end: -1 the last layer, -2 the penultimate (the default again), -3 and below
    earlier ones (diffusers' ``clip_skip`` = -2 - value). Past an encoder's depth
    ComfyUI falls back to the encoder's final output, the last layer through the final
    layer norm (CLIP-L has 12 layers, bigG 32).
    """
    if stop_at_clip_layer is None:
        return -2, False
    layers = int(encoder.config.num_hidden_layers)
    if -layers <= stop_at_clip_layer <= -1:
        return stop_at_clip_layer, False
    logger.warning("stop_at_clip_layer %d is past the text encoder's %d layers; using its "
                   "final output, as ComfyUI does", stop_at_clip_layer, layers)
    return -1, True


def _encode_one(encoder: Any, tokenizer: Any, text: str, clip: TextEncoder,
                embeddings_for: EmbeddingsFor | None, weighting: str, windows_min: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One encoder's hidden states ``[windows, 77, dim]``, its pooled output ``[1, dim']``
    (the first window's, as ComfyUI) and its window count."""
    from nodes.diffusion.prompt_weighting import parse_prompt_weights, tokenize_weighted

    embeddings = None if embeddings_for is None else embeddings_for(
        int(encoder.get_input_embeddings().weight.shape[1]))
    tokens = tokenize_weighted(tokenizer, parse_prompt_weights(text), embeddings)
    return encode_tokens(encoder, tokenizer, tokens, clip, weighting, windows_min)


def encode_tokens(encoder: Any, tokenizer: Any, tokens: Any, clip: TextEncoder,
                  weighting: str = "comfy", windows_min: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`_encode_one` of prepared tokens (``PromptTokens``: PhotoMaker's, say)."""
    import torch

    from nodes.conditioning import _windows, encode_windows
    from nodes.diffusion.prompt_weighting import PromptTokens, apply_weights

    windows = _windows(tokenizer, tokens)
    empty = _windows(tokenizer, PromptTokens())
    # CLIPTextEncodeSDXL pads the shorter of text_g / text_l with empty windows (ComfyUI)
    windows += empty * max(windows_min - len(windows), 0)
    layer, final_norm = hidden_layer(encoder, clip.stop_at_clip_layer)
    z, pooled = encode_windows(encoder, windows, layer, final_layer_norm=final_norm)
    weights = torch.tensor([w.weights for w in windows])
    if bool((weights != 1).any()):
        z_empty = (encode_windows(encoder, empty, layer, final_layer_norm=final_norm)[0]
                   if weighting == "comfy" else None)
        z = apply_weights(z, weights, z_empty=z_empty, method=weighting)
    return z, pooled[:1], len(windows)


def encode_sdxl(clip: TextEncoder, text_g: str, text_l: str | None = None,
                embeddings_for: EmbeddingsFor | None = None, *, weighting: str = "comfy"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeds [1, 77 * windows, dim_l + dim_g], pooled [1, proj])`` of a prompt.

    ``text_l`` (CLIP-L's prompt) defaults to ``text_g``; the refiner's CLIP ignores it.
    Weights, ``embedding:`` names and long prompts work as in CLIP Text Encode;
    ``embeddings_for(width)`` gives the ``embedding:name`` lookup of an encoder (an SDXL
    embedding file's ``clip_l`` vectors fit CLIP-L only: bigG refuses them clearly).
    """
    import torch

    from nodes.diffusion.lora import patched

    if clip.text_encoder_2 is None:
        raise ValueError("this CLIP is not an SDXL text encoder (it has no OpenCLIP bigG)")
    encoder_g, tokenizer_g = clip.text_encoder_2, clip.tokenizer_2
    with torch.no_grad(), patched(encoder_g, clip.patches_2):
        if clip.text_encoder is None:  # the refiner
            z_g, pooled, _ = _encode_one(encoder_g, tokenizer_g, text_g, clip, embeddings_for,
                                         weighting)
            return z_g.reshape(1, -1, z_g.shape[-1]), pooled
        text_l = text_g if text_l is None else text_l
        with patched(clip.text_encoder, clip.patches):
            z_l, _, n_l = _encode_one(clip.text_encoder, clip.tokenizer, text_l, clip,
                                      embeddings_for, weighting)
        z_g, pooled, n_g = _encode_one(encoder_g, tokenizer_g, text_g, clip, embeddings_for,
                                       weighting, windows_min=n_l)
        if n_g > n_l:
            with patched(clip.text_encoder, clip.patches):
                z_l, _, _ = _encode_one(clip.text_encoder, clip.tokenizer, text_l, clip,
                                        embeddings_for, weighting, windows_min=n_g)
    z = torch.cat([z_l.to(z_g.dtype), z_g], dim=-1)
    return z.reshape(1, -1, z.shape[-1]), pooled


def sdxl_conditioning(clip: TextEncoder, text_g: str, text_l: str | None = None,
                      embeddings_for: EmbeddingsFor | None = None,
                      **sizes: float) -> Conditioning:
    """CONDITIONING for an SDXL prompt: embeds, pooled output and size options."""
    embeds, pooled = encode_sdxl(clip, text_g, text_l, embeddings_for)
    return Conditioning((CondEntry(embeds, {"pooled_output": pooled, **sizes}),))


# --- the UNet's added conditioning --------------------------------------------------------------

def time_ids(options: Mapping[str, Any], refiner: bool, image_size: tuple[int, int],
             negative: bool) -> list[float]:
    """SDXL's micro-conditioning numbers for one conditioning entry (ComfyUI's defaults;
    ``image_size`` (height, width) in pixels stands in for missing sizes)."""
    height = float(options.get("height", image_size[0]))
    width = float(options.get("width", image_size[1]))
    crop = [float(options.get("crop_h", 0)), float(options.get("crop_w", 0))]
    if refiner:
        default = NEGATIVE_AESTHETIC_SCORE if negative else POSITIVE_AESTHETIC_SCORE
        return [height, width, *crop, float(options.get("aesthetic_score", default))]
    return [height, width, *crop, float(options.get("target_height", height)),
            float(options.get("target_width", width))]


@dataclass
class _Row:
    embeds: torch.Tensor  # on the run's device/dtype, for matching extension passes' rows
    source: torch.Tensor  # the entry's own tensor, for matching by identity
    text_embeds: torch.Tensor  # [1, pooled]
    time_ids: torch.Tensor  # [1, 5 or 6]


@dataclass
class AddedConditioning:
    """The UNet's ``added_cond_kwargs`` for each conditioning entry of one sampling run.

    A chunk of a UNet pass takes the row of the entry whose prompt embeddings it holds
    (an extension's own pass: SAG's, a region's crop); where several entries hold the
    same embeddings, or none (extensions that bring prompts of their own: SEGA's
    concepts, LEDITS++'s edits), its batch role decides: ``cond`` is the positive's
    first entry, ``uncond`` the negative's, ``extra:<n>`` the entry an extension added
    (its own row when it brings its own pooled output, see :meth:`bind`); any other role
    takes the positive prompt's row.
    """

    rows: list[_Row]
    by_role: dict[str, int] = field(default_factory=dict)

    def bind(self, role: str, embeds: torch.Tensor, pooled: torch.Tensor | None = None
             ) -> None:
        """Name the row of an extension's extra batch entry (its tensor or an equal one).

        With its own ``pooled`` output (a SEGA or LEDITS++ concept encoded on SDXL) the
        entry gets a row of its own: that pooled output and the positive's size
        conditioning, as ``LEditsPPPipelineStableDiffusionXL`` gives its edit concepts.
        """
        if pooled is not None:
            cond = self.rows[self.by_role["cond"]]
            pooled = pooled.reshape(1, -1)
            if pooled.shape[-1] != cond.text_embeds.shape[-1]:
                raise ValueError(f"a concept's pooled output is {pooled.shape[-1]} wide but "
                                 f"this UNet expects {cond.text_embeds.shape[-1]}: encode "
                                 "it with this checkpoint's CLIP")
            self.rows.append(_Row(embeds=embeds.to(cond.embeds), source=embeds,
                                  text_embeds=pooled.to(cond.text_embeds),
                                  time_ids=cond.time_ids))
            self.by_role[role] = len(self.rows) - 1
            return
        for k, row in enumerate(self.rows):
            if embeds is row.source:
                self.by_role[role] = k
                return
        self.by_role[role] = self._match(embeds, self.by_role["cond"])

    def _match(self, embeds: torch.Tensor, preferred: int) -> int:
        from nodes.diffusion.entry_rows import match_entry

        return match_entry([row.embeds for row in self.rows], embeds, preferred)

    def kwargs(self, embeds: torch.Tensor, roles: Sequence[str]) -> dict[str, torch.Tensor]:
        """``added_cond_kwargs`` for a UNet pass whose batch is ``roles`` in equal chunks of
        ``embeds`` rows."""
        import torch

        chunks = embeds.chunk(len(roles)) if len(roles) > 1 else (embeds,)
        text, ids = [], []
        for role, chunk in zip(roles, chunks, strict=True):
            row = self.rows[self._match(chunk, self.by_role.get(role, self.by_role["cond"]))]
            text.append(row.text_embeds.expand(chunk.shape[0], -1))
            ids.append(row.time_ids.expand(chunk.shape[0], -1))
        return {"text_embeds": torch.cat(text), "time_ids": torch.cat(ids)}


def added_conditioning(model: DiffusionModel, positive: Conditioning, negative: Conditioning,
                       latent_size: tuple[int, int], device: torch.device,
                       dtype: torch.dtype, downscale: int | None = None
                       ) -> AddedConditioning | None:
    """The run's :class:`AddedConditioning`, or None when the UNet takes none (SD 1.x/2.x).
    ``downscale``: the latent's VAE factor (default: that of the VAE loaded with the
    model, else 8), which makes the default image size.

    Raises ValueError with advice when the conditioning does not fit the model (e.g. the
    base model's prompt on the refiner).
    """

    unet = model.unet
    if not uses_added_conditioning(unet):
        return None
    config = unet.config
    refiner = _reads_as_refiner(model.family == "sdxl_refiner", config, positive, negative)
    n_ids = 5 if refiner else 6
    pooled_dim = int(config.projection_class_embeddings_input_dim) - n_ids * int(
        config.addition_time_embed_dim)
    context = int(config.cross_attention_dim)
    if downscale is None:
        from nodes.latent import downscale_of

        downscale = downscale_of(None, None, unet)
    image_size = (latent_size[0] * downscale, latent_size[1] * downscale)
    rows: list[_Row] = []
    for cond, is_negative in ((positive, False), (negative, True)):
        for entry in cond.entries:
            rows.append(_row(entry, is_negative, refiner, image_size, pooled_dim, context,
                             device, dtype))
    by_role = {"cond": 0, "uncond": len(positive.entries)}
    return AddedConditioning(rows, by_role)


def _reads_as_refiner(refiner: bool, config: Any, positive: Conditioning,
                      negative: Conditioning) -> bool:
    """Whether the UNet takes the refiner's 5 size ids (else the base's 6).

    A UNet's config tells them apart only through its pooled width, read as bigG's
    hidden width (so a UNet loaded alone whose bigG projects to another width than it is
    wide reads as the other kind). Where the prompt's pooled output fits the other
    reading exactly, and not the config's, that is the one meant."""
    pooled = next((e.options.get("pooled_output") for cond in (positive, negative)
                   for e in cond.entries if e.options.get("pooled_output") is not None), None)
    if pooled is None:
        return refiner
    width, total = int(pooled.shape[-1]), int(config.projection_class_embeddings_input_dim)
    step = int(config.addition_time_embed_dim)
    read, other = (total - (5 if refiner else 6) * step, total - (6 if refiner else 5) * step)
    return (not refiner) if width == other and width != read else refiner


def _row(entry: CondEntry, negative: bool, refiner: bool, image_size: tuple[int, int],
         pooled_dim: int, context: int, device: torch.device, dtype: torch.dtype) -> _Row:
    import torch

    width = int(entry.embeds.shape[-1])
    if width != context:
        model = "SDXL refiner" if refiner else "SDXL"
        raise ValueError(
            f"the prompt's embeddings are {width} wide but this {model} UNet expects "
            f"{context}: encode the prompt with the same checkpoint's CLIP (the refiner and "
            "the base model each need their own CLIP Text Encode nodes)")
    pooled = entry.options.get("pooled_output")
    if pooled is None:
        pooled = torch.zeros(1, pooled_dim)
    pooled = pooled.reshape(1, -1)
    if pooled.shape[-1] != pooled_dim:
        raise ValueError(f"the prompt's pooled output is {pooled.shape[-1]} wide but this UNet "
                         f"expects {pooled_dim}: encode it with this checkpoint's CLIP")
    ids = torch.tensor([time_ids(entry.options, refiner, image_size, negative)])
    return _Row(embeds=entry.embeds.to(device=device, dtype=dtype), source=entry.embeds,
                text_embeds=pooled.to(device=device, dtype=dtype),
                time_ids=ids.to(device=device, dtype=dtype))
