"""Attend-and-Excite (Chefer et al. 2023) as a sampler extension.

Before each of the first ``max_iter_to_alter`` steps, the latent is nudged so that
every excited subject token gets a strong cross-attention peak somewhere in the
image: one UNet pass on the prompt alone, with autograd, records the
cross-attention maps at ``attn_res`` (averaged over heads and over the down, mid
and up layers); per token, the maps over the text tokens (start and last token
left out; with ``normalize_eot``, the original implementation's option, the
prompt's own tokens only) are softmaxed at temperature 1/100, smoothed with a 3x3 Gaussian
(σ 0.5, reflect padding) and their maximum taken. The loss is
``max(0, max_k (1 − max_attention_k))`` and the latent moves by
``−step_size · ∂loss/∂latent``, ``step_size = scale_factor · sqrt(linspace(1, 0.5,
steps))[i]``. At the steps of ``thresholds`` ({step: threshold}) the update is
repeated (at most ``max_refinement_steps`` times) until every token's maximum
reaches the threshold. The math follows diffusers'
``StableDiffusionAttendAndExcitePipeline`` step for step, so results match it.

The maps are those of the layers at ``attn_res``'s UNet level. Where a technique
changes that level's resolution in a pass (Deep Shrink), each layer's map is resized
to ``attn_res`` (bilinear, on the autograd graph) before the maps are averaged.

One departure, which changes nothing for variance-preserving samplers (DDIM,
PNDM, DPM-Solver, UniPC, ...): the A&E pass gives the UNet the latent scaled as
the sampler's own pass does (``scale_model_input``); the pipeline passes it
unscaled, which for σ-space samplers (Euler, Heun, LMS) is not what the UNet
expects.

The words to excite are found in the prompt's tokens by :func:`token_indices`
(index 0 is the start token, as in the pipeline's ``token_indices``). It tokenizes
with the CLIP BPE of the text encoder at run time; :func:`light_tokenizer` builds
the same tokenizer from the shipped vocabulary with the ``tokenizers`` library
alone, so validation finds a missing or ambiguous word without importing
transformers or torch.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodes.diffusion.attention import AttentionCall, AttentionLayer, AttentionRecorder
from nodes.diffusion.extensions import SamplerExtension, Step
from nodes.diffusion.prompt_weighting import (
    WINDOW,
    EmbeddingLookup,
    parse_prompt_weights,
    tokenize_weighted,
)

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.sampling import SamplingRun

#: the pipeline's default iterative-refinement thresholds {step index: threshold}
DEFAULT_THRESHOLDS: dict[int, float] = {0: 0.05, 10: 0.5, 20: 0.8}
#: the pipeline's default attn_res (16x16 maps): ``attn_res`` 0 picks the UNet's
#: cross-attention resolution closest to it
PIPELINE_ATTN_RES = 16
_END_OF_WORD = "</w>"


# --- words → token indices -----------------------------------------------------------------

class _Tokenized:
    def __init__(self, input_ids: list[int]):
        self.input_ids = input_ids


class LightTokenizer:
    """The CLIP BPE tokenizer as transformers' ``CLIPTokenizer`` builds it (the same
    ``tokenizers`` pipeline), without importing transformers: for validation."""

    def __init__(self, folder: Any):
        from pathlib import Path

        from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        folder = Path(folder)
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines
                  if line.strip() and not line.startswith("#version")]
        tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None,
                            continuing_subword_prefix="", end_of_word_suffix=_END_OF_WORD,
                            fuse_unk=False, unk_token="<|endoftext|>"))
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
             normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(
                r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                r"""[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
        self._tok = tok

    def __call__(self, text: str, **_: Any) -> _Tokenized:
        return _Tokenized(self._tok.encode(text, add_special_tokens=False).ids)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tok.id_to_token(i) or "?" for i in ids]


@functools.cache
def light_tokenizer() -> LightTokenizer:
    """The shipped CLIP vocabulary's tokenizer (loaded once)."""
    from pathlib import Path

    return LightTokenizer(Path(__file__).resolve().parent.parent / "assets" / "clip_tokenizer")


@dataclass(frozen=True)
class PromptToken:
    """One token of the prompt: its index in the encoder's sequence and its text."""

    index: int
    text: str
    word_start: bool  # the first token of a word (after a word end, or the first token)


def prompt_tokens(tokenizer: Any, text: str, embeddings: EmbeddingLookup | None = None
                  ) -> tuple[list[int], list[PromptToken]]:
    """The prompt's token ids as the text encoder sees them, and each token's index in
    the encoded sequence: window ``w``'s token ``k`` (from 0) is at ``77 w + 1 + k``
    (index 0 is the start token, as in the pipeline's ``token_indices``).

    Weight syntax is read as Encode Prompt reads it; ``embedding:name`` takes as many
    tokens as the embedding has vectors (one when ``embeddings`` is None).
    """
    spans = parse_prompt_weights(text)
    if embeddings is None:
        embeddings = _one_vector
    tokens = tokenize_weighted(tokenizer, spans, embeddings)
    names = tokenizer.convert_ids_to_tokens(tokens.ids)
    out: list[PromptToken] = []
    previous_ends_word = True
    for k, name in enumerate(names):
        if k in tokens.vectors:
            name, ends_word = "<embedding>", True
        else:
            ends_word = name.endswith(_END_OF_WORD)
            name = name.removesuffix(_END_OF_WORD)
        out.append(PromptToken((WINDOW + 2) * (k // WINDOW) + 1 + k % WINDOW, name,
                               previous_ends_word))
        previous_ends_word = ends_word
    return tokens.ids, out


def _one_vector(name: str) -> list[None]:
    return [None]


def split_words(words: str) -> list[str]:
    """``"circle, blue square"`` → ``["circle", "blue square"]``."""
    return [w.strip() for w in words.split(",") if w.strip()]


def describe_tokens(tokens: Sequence[PromptToken]) -> str:
    return " ".join(f"{t.index}:{t.text}" for t in tokens)


def token_indices(tokenizer: Any, text: str, words: str,
                  embeddings: EmbeddingLookup | None = None) -> tuple[list[int], list[str]]:
    """Token indices of ``words`` (comma-separated words or phrases of the prompt) and the
    problems found: a word missing from the prompt, or present several times.

    A phrase or a word the tokenizer splits gives all its tokens. Matches start at a
    word boundary, so "cat" is not found in "cats".
    """
    ids, tokens = prompt_tokens(tokenizer, text, embeddings)
    problems: list[str] = []
    found: list[int] = []
    items = split_words(words)
    if not items:
        problems.append("name at least one word of the prompt to excite")
    for item in items:
        want = tokenizer(item, add_special_tokens=False).input_ids
        if not want:
            problems.append(f"{item!r} has no tokens")
            continue
        starts = [k for k in range(len(ids) - len(want) + 1)
                  if ids[k:k + len(want)] == want and tokens[k].word_start
                  and all(k + j not in _embedding_slots(tokens) for j in range(len(want)))]
        if not starts:
            problems.append(f"{item!r} is not in the prompt; its tokens are "
                            f"{describe_tokens(tokens)}" if tokens else
                            f"{item!r} is not in the prompt: the prompt is empty (write the "
                            "prompt whose words to excite)")
        elif len(starts) > 1:
            where = ", ".join(str(tokens[k].index) for k in starts)
            before = tokens[starts[0] - 1].text if starts[0] > 0 else ""
            hint = (f" (e.g. {before + ' ' + item!r})"
                    if before and re.fullmatch(r"\w+", before) else "")
            problems.append(f"{item!r} appears {len(starts)} times (tokens {where}): name one "
                            f"with a longer phrase{hint}; the prompt's tokens are "
                            f"{describe_tokens(tokens)}")
        else:
            found.extend(tokens[starts[0] + j].index for j in range(len(want)))
    return list(dict.fromkeys(found)), problems


def _embedding_slots(tokens: Sequence[PromptToken]) -> set[int]:
    return {k for k, t in enumerate(tokens) if t.text == "<embedding>"}


def parse_thresholds(text: str) -> dict[int, float]:
    """``"0:0.05, 10:0.5, 20:0.8"`` → ``{0: 0.05, 10: 0.5, 20: 0.8}`` (empty: none)."""
    out: dict[int, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*:\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)", part)
        if match is None:
            raise ValueError(f"thresholds: {part!r} is not 'step:threshold' "
                             "(e.g. '0:0.05, 10:0.5, 20:0.8')")
        step, value = int(match.group(1)), float(match.group(2))
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"thresholds: {value} at step {step} is not within 0..1")
        if step in out:
            raise ValueError(f"thresholds: step {step} is given twice")
        out[step] = value
    return out


# --- attention resolutions -----------------------------------------------------------------

def cross_attention_sizes(unet_config: Any, height: int, width: int
                          ) -> dict[tuple[int, int], list[str]]:
    """The (h, w) of the UNet's cross-attention maps for an ``height x width`` latent, and
    the places (down, mid, up) that have them, finest first."""
    levels = len(unet_config.block_out_channels)
    sizes = [(height, width)]
    for _ in range(levels):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))  # stride-2 conv with padding 1
    out: dict[tuple[int, int], list[str]] = {}

    def add(level: int, place: str) -> None:
        places = out.setdefault(sizes[level], [])
        if place not in places:
            places.append(place)

    for i, kind in enumerate(unet_config.down_block_types):
        if "CrossAttn" in kind:
            add(i, "down")
    mid = getattr(unet_config, "mid_block_type", "UNetMidBlock2DCrossAttn") or ""
    if "CrossAttn" in mid:
        add(levels - 1, "mid")
    for j, kind in enumerate(unet_config.up_block_types):
        if "CrossAttn" in kind:
            add(levels - 1 - j, "up")
    return dict(sorted(out.items(), key=lambda item: -item[0][0] * item[0][1]))


def choose_attn_res(sizes: dict[tuple[int, int], list[str]], attn_res: int,
                    latent: tuple[int, int]) -> tuple[int, int]:
    """The maps of height ``attn_res`` (0: the size closest to the pipeline's 16x16)."""
    if not sizes:
        raise ValueError("Attend-and-Excite: this UNet has no cross-attention layers")
    listed = "; ".join(f"{h}x{w} ({', '.join(places)})" for (h, w), places in sizes.items())
    if attn_res == 0:
        usable = [s for s in sizes if min(s) >= 2] or list(sizes)
        choice = min(usable, key=lambda s: (abs(s[0] - PIPELINE_ATTN_RES), -s[0]))
    else:
        matches = [s for s in sizes if s[0] == attn_res]
        if not matches:
            raise ValueError(
                f"Attend-and-Excite: attn_res {attn_res} is not a cross-attention resolution "
                f"of this UNet for a {latent[0]}x{latent[1]} latent; its cross-attention maps "
                f"are {listed} (attn_res is the maps' height; 0 picks the one closest to "
                f"{PIPELINE_ATTN_RES})")
        choice = matches[0]
    if min(choice) < 2:
        raise ValueError(f"Attend-and-Excite: {choice[0]}x{choice[1]} attention maps are too "
                         f"small to smooth (at least 2x2); this UNet has {listed}")
    return choice


# --- the pipeline's math -------------------------------------------------------------------

@functools.cache
def _gaussian_kernel(kernel_size: int = 3, sigma: float = 0.5) -> Any:
    """The pipeline's ``GaussianSmoothing`` kernel, exactly as it builds it (its exponent
    divides by 2σ, not σ√2: kept for parity)."""
    import torch

    grids = torch.meshgrid([torch.arange(kernel_size, dtype=torch.float32)] * 2, indexing="ij")
    kernel = 1
    for grid in grids:
        mean = (kernel_size - 1) / 2
        kernel = kernel * (1 / (sigma * math.sqrt(2 * math.pi))
                           * torch.exp(-(((grid - mean) / (2 * sigma)) ** 2)))
    kernel = kernel / torch.sum(kernel)
    return kernel.view(1, 1, kernel_size, kernel_size)


def max_attention_per_index(attention_maps: torch.Tensor, indices: Sequence[int],
                            text_tokens: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Per index, the maximum of its smoothed attention map; ``attention_maps``
    ``[h, w, text tokens]`` (the pipeline's ``_compute_max_attention_per_index``).

    The softmax runs over ``text_tokens`` (token indices), by default every token but
    the start and the last one, as in the pipeline; the original implementation's
    ``normalize_eot`` passes the prompt's own tokens (no end token, no padding).
    """
    import torch
    import torch.nn.functional as F

    if text_tokens is None:
        text = attention_maps[:, :, 1:-1]
        position = {index: index - 1 for index in indices}  # the start token was removed
    else:
        text = attention_maps[:, :, list(text_tokens)]
        position = {index: list(text_tokens).index(index) for index in indices}
    text = torch.nn.functional.softmax(text * 100, dim=-1)
    kernel = _gaussian_kernel().to(device=attention_maps.device, dtype=text.dtype)
    out = []
    for index in indices:
        image = text[:, :, position[index]]
        padded = F.pad(image[None, None], (1, 1, 1, 1), mode="reflect")
        out.append(F.conv2d(padded, weight=kernel, groups=1)[0, 0].max())
    return out


def attend_excite_loss(max_attention: Sequence[torch.Tensor]) -> torch.Tensor | int:
    """``max_k max(0, 1 − max_attention_k)`` (the pipeline's ``_compute_loss``; 0 stays
    the int 0 when every token is above 1, as there)."""
    return max(max(0, 1.0 - value) for value in max_attention)


# --- the extension -------------------------------------------------------------------------

def level_of(layer_name: str, levels: int) -> int | None:
    """The UNet resolution level (0: the latent's own) of an attention layer, from its
    processor name: ``down_blocks.i`` is level i, the mid block the deepest, and
    ``up_blocks.j`` level ``levels − 1 − j``."""
    match = re.match(r"(down|up)_blocks\.(\d+)\.", layer_name)
    if match is not None:
        index = int(match.group(2))
        return index if match.group(1) == "down" else levels - 1 - index
    return levels - 1 if layer_name.startswith("mid_block.") else None


@dataclass(eq=False)
class LevelRecorder(AttentionRecorder):
    """The recorder of the cross-attention layers at one UNet level, whose maps are
    resized to ``size`` wherever a pass runs that level at another resolution (Deep
    Shrink), so that the layers' maps can be averaged over one grid.

    It records only while ``recording`` (Attend-and-Excite's own whole-canvas pass): the
    sampler's passes, and the passes of area / mask-bounds regions on a crop of the
    latent, whose grid is not the canvas's, are none of its business."""

    level: int = 0
    levels: int = 1
    size: tuple[int, int] = (1, 1)
    recording: bool = False

    def selects(self, layer: AttentionLayer) -> bool:
        return super().selects(layer) and level_of(layer.name, self.levels) == self.level

    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        import dataclasses

        import torch.nn.functional as F

        if not self.recording:
            return probs
        h, w = self.size
        if call.query_tokens == h * w:
            return super().on_probs(call, probs)
        if call.size is None:
            raise RuntimeError(f"Attend-and-Excite: no grid known for the "
                               f"{call.query_tokens}-token maps of {call.layer.name}")
        rows, _, keys = probs.shape
        grid = probs.transpose(1, 2).reshape(rows, keys, *call.size)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
        resized = grid.reshape(rows, keys, h * w).transpose(1, 2)
        super().on_probs(dataclasses.replace(call, query_tokens=h * w, size=(h, w)), resized)
        return probs


@dataclass
class _RunState:
    recorder: LevelRecorder
    size: tuple[int, int]
    step_sizes: Any  # numpy float64, one per step: the pipeline's schedule
    embeds: torch.Tensor


class AttendAndExcite(SamplerExtension):
    """Attend-and-Excite: strengthen the cross-attention of subject tokens by updating
    the latent before the first ``max_iter_to_alter`` steps (see the module doc)."""

    priority = 50  # latent updates first: every other extension sees the excited latent

    def __init__(self, embeds: torch.Tensor, indices: Sequence[int], *,
                 max_iter_to_alter: int = 25, thresholds: dict[int, float] | None = None,
                 scale_factor: float = 20.0, attn_res: int = 0,
                 max_refinement_steps: int = 20, text_tokens: Sequence[int] | None = None,
                 label: str = ""):
        if not indices:
            raise ValueError("Attend-and-Excite needs at least one token index")
        self.embeds = embeds
        self.indices = tuple(int(i) for i in indices)
        self.max_iter_to_alter = max_iter_to_alter
        self.thresholds = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
        self.scale_factor = scale_factor
        self.attn_res = attn_res
        self.max_refinement_steps = max_refinement_steps
        #: the tokens the softmax runs over (None: the pipeline's all but first and last)
        self.text_tokens = None if text_tokens is None else tuple(text_tokens)
        if self.text_tokens is not None and not set(self.indices) <= set(self.text_tokens):
            raise ValueError("Attend-and-Excite: the excited tokens must be among text_tokens")
        self.label = f"Attend-and-Excite ({label})" if label else "Attend-and-Excite"

    def setup(self, run: SamplingRun) -> None:
        import numpy as np

        if not any(ext is self for entry in run.positive.entries
                   for ext in entry.options.get("extensions", ())):
            raise ValueError("Attend-and-Excite's conditioning must be the sampler's positive "
                             "prompt (it excites that prompt's words)")
        unet = run.model.unet
        if unet.config.in_channels != run.init_latents.shape[1]:
            raise ValueError("Attend-and-Excite needs a UNet that takes the latents alone "
                             f"({unet.config.in_channels} input channels for "
                             f"{run.init_latents.shape[1]}-channel latents: an inpainting UNet?)")
        latent = tuple(int(s) for s in run.init_latents.shape[-2:])
        size = choose_attn_res(cross_attention_sizes(unet.config, *latent), self.attn_res,
                               latent)
        if max(self.indices) >= self.embeds.shape[1] - 1:
            raise ValueError(f"Attend-and-Excite: token index {max(self.indices)} is past the "
                             f"prompt's {self.embeds.shape[1]} tokens")
        # every layer whose keys are the text, as the pipeline's store (is_cross = the
        # call had encoder_hidden_states): attn1 too in only_cross_attention blocks; the
        # layers of the level that has maps of this size (the pipeline picks them by
        # size), whatever size a pass gives them
        levels = len(unet.config.block_out_channels)
        chain = [latent]
        for _ in range(levels - 1):
            chain.append((math.ceil(chain[-1][0] / 2), math.ceil(chain[-1][1] / 2)))
        recorder = LevelRecorder(places=("up", "down", "mid"), cross=True, by_keys=True,
                                 roles=("cond",), keep_grad=True, level=chain.index(size),
                                 levels=levels, size=size)
        # the pipeline's step size schedule, from the original repository
        scale_range = np.linspace(1.0, 0.5, run.schedule_length)
        run.state[self] = _RunState(recorder, size, self.scale_factor * np.sqrt(scale_range),
                                    self.embeds.to(device=run.device, dtype=run.dtype))

    def attention_hooks(self, run: SamplingRun) -> Sequence[Any]:
        return (run.state[self].recorder,)

    def pre_step(self, run: SamplingRun, step: Step, latents: torch.Tensor) -> torch.Tensor:
        import torch

        i = run.schedule_index(step)
        threshold = self.thresholds.get(i)
        if i >= self.max_iter_to_alter and threshold is None:
            return latents  # the pipeline's pass here changes nothing
        state: _RunState = run.state[self]
        step_size = float(state.step_sizes[i])
        with torch.enable_grad():
            latents = latents.clone().detach().requires_grad_(True)
            updated = []
            for latent in latents:  # one image at a time, as the pipeline
                latent = latent.unsqueeze(0)
                loss = self._loss(run, state, latent, step.timestep)
                if threshold is not None and loss > 1.0 - threshold:
                    loss, latent = self._refine(run, state, latent, loss, threshold, step_size,
                                                step.timestep)
                if i < self.max_iter_to_alter and loss != 0:
                    latent = _update_latent(latent, loss, step_size)
                updated.append(latent.detach())
        state.recorder.clear(run)  # frees the maps' autograd graph
        return torch.cat(updated)

    def _loss(self, run: SamplingRun, state: _RunState, latent: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor | int:
        """One UNet pass on the prompt alone (its attention keeps the autograd graph)."""
        from nodes.diffusion.sampling import model_input_scale

        state.recorder.clear(run)
        state.recorder.recording = True
        try:
            with run.attention.roles_for(["cond"]):
                added = run.added_cond_kwargs(state.embeds, ["cond"])  # SDXL's pooled/sizes
                run.model.unet(latent * model_input_scale(run.scheduler, t), t,
                               encoder_hidden_states=state.embeds, return_dict=False,
                               **({} if added is None else {"added_cond_kwargs": added}))
        finally:
            state.recorder.recording = False
        h, w = state.size
        maps = state.recorder.average(run, "cond")[0].reshape(h, w, -1)
        return attend_excite_loss(max_attention_per_index(maps, self.indices, self.text_tokens))

    def _refine(self, run: SamplingRun, state: _RunState, latent: torch.Tensor,
                loss: torch.Tensor | int, threshold: float, step_size: float,
                t: torch.Tensor) -> tuple[torch.Tensor | int, torch.Tensor]:
        """The pipeline's iterative refinement: update until every token's maximum reaches
        ``threshold`` (or ``max_refinement_steps`` updates), then measure once more."""
        iteration = 0
        target_loss = max(0, 1.0 - threshold)
        while loss > target_loss:
            iteration += 1
            latent = latent.clone().detach().requires_grad_(True)
            loss = self._loss(run, state, latent, t)
            if loss != 0:
                latent = _update_latent(latent, loss, step_size)
            if iteration >= self.max_refinement_steps:
                break
        latent = latent.clone().detach().requires_grad_(True)
        return self._loss(run, state, latent, t), latent

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)


def _update_latent(latent: torch.Tensor, loss: torch.Tensor | int, step_size: float
                   ) -> torch.Tensor:
    import torch

    grad = torch.autograd.grad(loss, [latent], retain_graph=True)[0]
    return latent - step_size * grad
